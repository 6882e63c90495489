//! Bearer JWTs from the app's own identity provider (docs/security.md).
//!
//! The `jsonwebtoken` crate parses and checks signatures; this module only
//! picks the key and the rules:
//!
//! - HS256 with a shared secret (`--jwt-hs256-secret[-file]`), and/or
//! - RS256 / ES256 with public keys from a JWKS (`--jwks FILE|URL`), chosen
//!   by the token's `kid` (a token without `kid` is tried against the one key
//!   of a one-key set only). The set is re-read every `--jwks-refresh` seconds
//!   and, at most once per [`UNKNOWN_KID_COOLDOWN`], when a token names a `kid`
//!   the cached set lacks (the IdP rotated its keys).
//! - Each key accepts only its own algorithm, so an RSA public key can never
//!   be used as an HMAC secret, and `alg: none` is not an algorithm here.
//! - `exp` is required; `exp`, `nbf`, and (when configured) `iss` and `aud`
//!   are checked with a small clock leeway (`--jwt-leeway`, default
//!   [`LEEWAY_SECS`]).
//! - The user id is the string claim `--jwt-user-claim` (default `sub`), held
//!   to the same rules as every user id ([`UserId::parse`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use dovecote::core::model::{Millis, UserId};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// Default clock leeway for `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;
/// Least time between two JWKS reloads caused by an unknown `kid`.
pub const UNKNOWN_KID_COOLDOWN: Duration = Duration::from_secs(30);
/// Largest JWKS document read, in bytes.
const MAX_JWKS_BYTES: u64 = 1 << 20;

/// Where the JWKS comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A file, re-read on refresh.
    File(PathBuf),
    /// An `http://` or `https://` URL, fetched on refresh.
    Url(String),
}

impl JwksSource {
    /// `http(s)://...` is a URL, anything else a path.
    pub fn parse(value: &str) -> Self {
        if value.starts_with("https://") || value.starts_with("http://") {
            JwksSource::Url(value.to_owned())
        } else {
            JwksSource::File(PathBuf::from(value))
        }
    }
}

/// How to verify JWTs (part of [`crate::config::Config`]).
#[derive(Clone, Default)]
pub struct JwtConfig {
    /// HS256 shared secret, if any.
    pub hs256_secret: Option<Vec<u8>>,
    /// The JWKS for RS256/ES256, if any.
    pub jwks: Option<JwksSource>,
    /// How often the JWKS is re-read.
    pub jwks_refresh: Duration,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud` (one of the token's), if set.
    pub audience: Option<String>,
    /// The claim holding the user id.
    pub user_claim: String,
    /// Clock leeway for `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("hs256_secret", &self.hs256_secret.as_ref().map(|_| "(set)")) // never the secret
            .field("jwks", &self.jwks)
            .field("jwks_refresh", &self.jwks_refresh)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("user_claim", &self.user_claim)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

impl JwtConfig {
    /// The defaults: no keys (so no JWT is accepted), user id in `sub`.
    pub fn new() -> Self {
        JwtConfig {
            jwks_refresh: Duration::from_secs(300),
            user_claim: "sub".into(),
            leeway_secs: LEEWAY_SECS,
            ..Default::default()
        }
    }

    /// Whether any JWT can be accepted.
    pub fn enabled(&self) -> bool {
        self.hs256_secret.is_some() || self.jwks.is_some()
    }
}

/// Why a JWT was refused. Answered as 401 whatever it is; the variants are
/// for tests and the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// Not a JWT, or an algorithm we do not take (`none` included).
    #[error("malformed token or unsupported algorithm")]
    Malformed,
    /// No configured key for this token (`kid` unknown, or no key of its type).
    #[error("no key for this token")]
    NoKey,
    /// Signature, expiry, not-before, issuer or audience check failed.
    #[error("token refused: {0}")]
    Invalid(String),
    /// The user claim is missing, not a string, or not a valid user id.
    #[error("token has no valid user id in its {0:?} claim")]
    BadUser(String),
}

/// Why the JWKS could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// Reading the file or fetching the URL failed.
    #[error("cannot read the JWKS: {0}")]
    Read(String),
    /// The document is not a JWKS.
    #[error("not a JWKS: {0}")]
    Parse(String),
    /// It holds no key this server can use (RS256 or ES256 signing keys).
    #[error("the JWKS holds no RS256 or ES256 signing key")]
    Empty,
}

/// A verified token: who, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The user id from the configured claim.
    pub user: UserId,
    /// `exp`, in ms since the epoch.
    pub expires_at: Millis,
}

#[derive(Clone)]
struct Key {
    algorithm: Algorithm,
    key: DecodingKey,
}

#[derive(Default)]
struct KeySet {
    /// By `kid`; keys without a `kid` under "".
    keys: HashMap<String, Key>,
}

/// Checks JWTs under a [`JwtConfig`]; keeps the JWKS cached.
pub struct JwtVerifier {
    config: JwtConfig,
    hs256: Option<DecodingKey>,
    jwks: RwLock<Arc<KeySet>>,
    last_forced_reload: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier").field("config", &self.config).finish_non_exhaustive()
    }
}

fn read_jwks(source: &JwksSource) -> Result<KeySet, JwksError> {
    let text = match source {
        JwksSource::File(path) => {
            std::fs::read_to_string(path).map_err(|e| JwksError::Read(format!("{}: {e}", path.display())))?
        }
        JwksSource::Url(url) => {
            use std::io::Read as _;
            let response = ureq::get(url)
                .timeout(Duration::from_secs(10))
                .call()
                .map_err(|e| JwksError::Read(format!("{url}: {e}")))?;
            let mut text = String::new();
            response
                .into_reader()
                .take(MAX_JWKS_BYTES)
                .read_to_string(&mut text)
                .map_err(|e| JwksError::Read(format!("{url}: {e}")))?;
            text
        }
    };
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| JwksError::Parse(e.to_string()))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        // Encryption keys (`use: enc`) are not for verifying signatures.
        if matches!(jwk.common.public_key_use, Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)) {
            continue;
        }
        let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                if ec.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            _ => continue, // another algorithm: not one we take
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
        keys.insert(jwk.common.key_id.clone().unwrap_or_default(), Key { algorithm, key });
    }
    if keys.is_empty() {
        return Err(JwksError::Empty);
    }
    Ok(KeySet { keys })
}

impl JwtVerifier {
    /// A verifier; loads the JWKS once (a blocking read: call at startup).
    pub fn new(config: JwtConfig) -> Result<Self, JwksError> {
        let jwks = match &config.jwks {
            Some(source) => read_jwks(source)?,
            None => KeySet::default(),
        };
        Ok(JwtVerifier {
            hs256: config.hs256_secret.as_deref().map(DecodingKey::from_secret),
            config,
            jwks: RwLock::new(Arc::new(jwks)),
            last_forced_reload: Mutex::new(None),
        })
    }

    /// Whether any JWT can be accepted.
    pub fn enabled(&self) -> bool {
        self.config.enabled()
    }

    /// Re-reads the JWKS (blocking). A failed reload keeps the old keys, so
    /// an IdP hiccup does not sign everyone out.
    pub fn reload(&self) -> Result<(), JwksError> {
        let Some(source) = &self.config.jwks else { return Ok(()) };
        let set = read_jwks(source)?;
        *self.jwks.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        Ok(())
    }

    /// The configured refresh interval.
    pub fn jwks_refresh(&self) -> Duration {
        self.config.jwks_refresh
    }

    fn jwks_key(&self, kid: Option<&str>) -> Option<Key> {
        let set = self.jwks.read().unwrap_or_else(|p| p.into_inner()).clone();
        match kid {
            Some(kid) => set.keys.get(kid).cloned(),
            None if set.keys.len() == 1 => set.keys.values().next().cloned(),
            None => None,
        }
    }

    /// Whether a token naming `kid` should trigger a reload now (the set
    /// lacks it and the last forced reload is older than the cooldown).
    pub fn wants_reload_for(&self, token: &str) -> bool {
        if self.config.jwks.is_none() {
            return false;
        }
        let Ok(header) = jsonwebtoken::decode_header(token) else { return false };
        let Some(kid) = header.kid else { return false };
        if header.alg == Algorithm::HS256 || self.jwks_key(Some(&kid)).is_some() {
            return false;
        }
        let mut last = self.last_forced_reload.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|at| at.elapsed() < UNKNOWN_KID_COOLDOWN) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Checks `token` by the current clock.
    pub fn verify(&self, token: &str) -> Result<Verified, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        let key = match header.alg {
            Algorithm::HS256 => self
                .hs256
                .clone()
                .map(|key| Key { algorithm: Algorithm::HS256, key })
                .ok_or(JwtError::NoKey)?,
            Algorithm::RS256 | Algorithm::ES256 => {
                self.jwks_key(header.kid.as_deref()).ok_or(JwtError::NoKey)?
            }
            _ => return Err(JwtError::Malformed),
        };
        if key.algorithm != header.alg {
            return Err(JwtError::NoKey);
        }
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = self.config.leeway_secs;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match &self.config.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &self.config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key.key, &validation)
                .map_err(|e| JwtError::Invalid(e.to_string()))?;
        let claim = &self.config.user_claim;
        let user = data
            .claims
            .get(claim)
            .and_then(serde_json::Value::as_str)
            .and_then(|s| UserId::parse(s).ok())
            .ok_or_else(|| JwtError::BadUser(claim.clone()))?;
        let exp = data.claims.get("exp").and_then(serde_json::Value::as_u64).unwrap_or(0);
        // The socket of a token closes when the server stops accepting it.
        let expires_at = exp.saturating_add(self.config.leeway_secs).saturating_mul(1000);
        Ok(Verified { user, expires_at })
    }
}
