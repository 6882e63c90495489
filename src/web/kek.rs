//! The device key-encryption key (KEK) in WebCrypto, which wraps thread keys
//! for storage (DESIGN.md §4). Two kinds, chosen when the database is made:
//!
//! - **Device key** (default): a random non-extractable AES-GCM key kept in
//!   IndexedDB (`meta`, key `kek`). Script on the page can use it to unwrap
//!   keys while the page runs, but no one can read its bytes, from the page
//!   or from the database files.
//! - **Passphrase**: a non-extractable AES-GCM key derived with
//!   PBKDF2-SHA256 ([`PBKDF2_ITERATIONS`] iterations, 16-byte random salt)
//!   each time the database is opened. Only the parameters are stored
//!   (`meta`, key `kek_params`, JSON), with a key check: the AES-GCM sealing,
//!   under the derived key, of 32 zero bytes with AAD `dovecote/kek-check/v1`.
//!   Opening with another passphrase fails that check, so a wrong passphrase
//!   is told apart at once (`wrong_passphrase`) and nothing is written.
//!
//! A database keeps the kind it was made with: one made with a passphrase
//! refuses to open without one (`passphrase_required`), and one made without
//! refuses a passphrase (`invalid_input`), since silently ignoring it would
//! let a user believe their data is protected by it.

use js_sys::{Object, Reflect, Uint8Array};
use serde::{Deserialize, Serialize};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{AesGcmParams, AesKeyGenParams, CryptoKey, SubtleCrypto};

use crate::core::keys::{
    kek_aad, KeyError, KeyId, ThreadKey, KEY_LEN, NONCE_LEN, TAG_LEN, WRAPPED_KEY_LEN, WRAP_VERSION,
};
use crate::core::model::ThreadId;
use crate::engine::Error;
use crate::ports::{KeyWrapper, StoreError};
use crate::web::idb::IdbStore;

const KEK_META_KEY: &str = "kek";
/// The `meta` key of a passphrase database's KDF parameters and key check.
pub const KEK_PARAMS_META_KEY: &str = "kek_params";
/// PBKDF2-SHA256 iterations for new passphrase databases (OWASP's 2023
/// figure). Stored with the salt, so it can be raised later for new ones.
pub const PBKDF2_ITERATIONS: u32 = 600_000;
/// Fewer stored iterations than this are refused: someone with write access
/// to the database must not be able to weaken the derivation.
const MIN_ITERATIONS: u32 = PBKDF2_ITERATIONS;
/// More than this is refused too, so a doctored record cannot hang the page.
const MAX_ITERATIONS: u32 = 100_000_000;
const SALT_LEN: usize = 16;
const CHECK_AAD: &[u8] = b"dovecote/kek-check/v1";
const CHECK_PLAINTEXT: [u8; 32] = [0; 32];

/// What `kek_params` holds, as JSON.
#[derive(Serialize, Deserialize)]
struct PassphraseParams {
    /// Always "PBKDF2" for now; another KDF (Argon2id) would get another name.
    kdf: String,
    hash: String,
    iterations: u32,
    #[serde(with = "crate::core::base64url")]
    salt: Vec<u8>,
    /// `nonce (12) ‖ AES-GCM(32 zero bytes) ‖ tag (16)` under the derived key.
    #[serde(with = "crate::core::base64url")]
    check: Vec<u8>,
}

/// The device KEK in WebCrypto.
pub struct WebCryptoKek {
    subtle: SubtleCrypto,
    key: CryptoKey,
}

fn subtle() -> Result<SubtleCrypto, KeyError> {
    let crypto = Reflect::get(&js_sys::global(), &"crypto".into()).map_err(|_| KeyError::UnwrapFailed)?;
    let crypto: web_sys::Crypto = crypto.dyn_into().map_err(|_| KeyError::UnwrapFailed)?;
    Ok(crypto.subtle())
}

/// A WebCrypto failure. Its text names the step only: WebCrypto's own
/// messages say nothing secret, but nothing here passes key material along.
fn crypto_error(step: &str, error: JsValue) -> Error {
    let name = Reflect::get(&error, &"name".into()).ok().and_then(|n| n.as_string()).unwrap_or_default();
    Error::Seal(format!("{step} failed ({name})"))
}

fn corrupt(reason: &str) -> Error {
    StoreError::Corrupt { store: "meta", reason: format!("{KEK_PARAMS_META_KEY}: {reason}") }.into()
}

impl WebCryptoKek {
    /// Loads the database's KEK, making it on first use. Two tabs racing to
    /// make it end up with the same one.
    ///
    /// With `passphrase`, the KEK is derived from it (see the module docs):
    /// a database made without one is refused (`invalid_input`), and a
    /// wrong passphrase gives [`Error::WrongPassphrase`] having written
    /// nothing. Without, a database made with one gives
    /// [`Error::PassphraseRequired`].
    pub async fn load_or_create(store: &IdbStore, passphrase: Option<&str>) -> Result<Self, Error> {
        let subtle = subtle()?;
        let device_key = store.raw_meta(KEK_META_KEY).await?;
        let params = store.raw_meta(KEK_PARAMS_META_KEY).await?;
        let Some(passphrase) = passphrase else {
            if params.is_some() {
                return Err(Error::PassphraseRequired);
            }
            return Self::load_or_create_device_key(subtle, store, device_key).await;
        };
        if passphrase.is_empty() {
            return Err(Error::PassphraseRefused("the passphrase is empty"));
        }
        if device_key.is_some() {
            return Err(Error::PassphraseRefused("this database does not use a passphrase"));
        }
        let stored = match params {
            Some(json) => json,
            None => {
                // First open: make the parameters and the key check, then
                // store them unless another tab got there first.
                let mut salt = vec![0u8; SALT_LEN];
                getrandom::fill(&mut salt).map_err(KeyError::Random)?;
                let mut params = PassphraseParams {
                    kdf: "PBKDF2".into(),
                    hash: "SHA-256".into(),
                    iterations: PBKDF2_ITERATIONS,
                    salt,
                    check: Vec::new(),
                };
                let key = derive(&subtle, passphrase, &params).await?;
                params.check = seal_check(&subtle, &key).await?;
                let json = serde_json::to_string(&params).expect("KEK parameters serialize");
                let stored = store.raw_meta_insert(KEK_PARAMS_META_KEY, &JsValue::from_str(&json)).await?;
                if stored.as_string().as_deref() == Some(json.as_str()) {
                    return Ok(WebCryptoKek { subtle, key });
                }
                stored
            }
        };
        let json = stored.as_string().ok_or_else(|| corrupt("not a string"))?;
        let params: PassphraseParams = serde_json::from_str(&json).map_err(|e| corrupt(&e.to_string()))?;
        if params.kdf != "PBKDF2" || params.hash != "SHA-256" {
            return Err(corrupt("unknown key derivation"));
        }
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&params.iterations) {
            return Err(corrupt("iteration count out of range"));
        }
        if params.salt.len() < SALT_LEN || params.check.len() != NONCE_LEN + CHECK_PLAINTEXT.len() + TAG_LEN {
            return Err(corrupt("salt or key check has the wrong length"));
        }
        let key = derive(&subtle, passphrase, &params).await?;
        if !open_check(&subtle, &key, &params.check).await {
            return Err(Error::WrongPassphrase);
        }
        Ok(WebCryptoKek { subtle, key })
    }

    async fn load_or_create_device_key(
        subtle: SubtleCrypto,
        store: &IdbStore,
        stored: Option<JsValue>,
    ) -> Result<Self, Error> {
        if let Some(key) = stored {
            if let Ok(key) = key.dyn_into::<CryptoKey>() {
                return Ok(WebCryptoKek { subtle, key });
            }
        }
        let params = AesKeyGenParams::new("AES-GCM", 256);
        let usages = js_sys::Array::of2(&"encrypt".into(), &"decrypt".into());
        let promise = subtle
            .generate_key_with_object(&params, false, &usages)
            .map_err(|e| crypto_error("making the device key", e))?;
        let key = JsFuture::from(promise).await.map_err(|e| crypto_error("making the device key", e))?;
        let stored = store.raw_meta_insert(KEK_META_KEY, &key).await?;
        let key = stored
            .dyn_into::<CryptoKey>()
            .map_err(|_| Error::Seal("the stored device key is not a CryptoKey".into()))?;
        Ok(WebCryptoKek { subtle, key })
    }

    fn params(nonce: &[u8], aad: &[u8]) -> AesGcmParams {
        let params = AesGcmParams::new("AES-GCM", &Uint8Array::from(nonce));
        params.set_additional_data(&Uint8Array::from(aad));
        params
    }
}

/// Derives the non-extractable AES-256-GCM KEK from a passphrase (its UTF-8
/// bytes, as given: normalizing is the app's choice).
async fn derive(
    subtle: &SubtleCrypto,
    passphrase: &str,
    params: &PassphraseParams,
) -> Result<CryptoKey, Error> {
    let step = "deriving the key from the passphrase";
    let secret = Uint8Array::from(passphrase.as_bytes());
    let imported =
        subtle.import_key_with_str("raw", &secret, "PBKDF2", false, &js_sys::Array::of1(&"deriveKey".into()));
    let base = match imported {
        Ok(promise) => JsFuture::from(promise).await,
        Err(e) => Err(e),
    };
    // The copy handed to JS is wiped as soon as WebCrypto has it.
    secret.fill(0, 0, secret.length());
    let base: CryptoKey = base.map_err(|e| crypto_error(step, e))?.unchecked_into();

    let algorithm = Object::new();
    for (name, value) in [
        ("name", JsValue::from_str(&params.kdf)),
        ("hash", JsValue::from_str(&params.hash)),
        ("iterations", JsValue::from(params.iterations)),
        ("salt", Uint8Array::from(params.salt.as_slice()).into()),
    ] {
        Reflect::set(&algorithm, &name.into(), &value).map_err(|e| crypto_error(step, e))?;
    }
    let target = AesKeyGenParams::new("AES-GCM", 256);
    let usages = js_sys::Array::of2(&"encrypt".into(), &"decrypt".into());
    let promise = subtle
        .derive_key_with_object_and_object(&algorithm, &base, &target, false, &usages)
        .map_err(|e| crypto_error(step, e))?;
    let key = JsFuture::from(promise).await.map_err(|e| crypto_error(step, e))?;
    Ok(key.unchecked_into())
}

/// Seals the key check: `nonce ‖ AES-GCM(32 zero bytes)`.
async fn seal_check(subtle: &SubtleCrypto, key: &CryptoKey) -> Result<Vec<u8>, Error> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(KeyError::Random)?;
    let params = WebCryptoKek::params(&nonce, CHECK_AAD);
    let promise = subtle
        .encrypt_with_object_and_u8_array(&params, key, &CHECK_PLAINTEXT)
        .map_err(|e| crypto_error("sealing the key check", e))?;
    let sealed = JsFuture::from(promise).await.map_err(|e| crypto_error("sealing the key check", e))?;
    let mut check = nonce.to_vec();
    check.extend_from_slice(&Uint8Array::new(&sealed).to_vec());
    Ok(check)
}

/// Whether the key check opens under `key` to the expected zero bytes.
async fn open_check(subtle: &SubtleCrypto, key: &CryptoKey, check: &[u8]) -> bool {
    let (nonce, sealed) = check.split_at(NONCE_LEN);
    let params = WebCryptoKek::params(nonce, CHECK_AAD);
    let Ok(promise) = subtle.decrypt_with_object_and_u8_array(&params, key, sealed) else {
        return false;
    };
    match JsFuture::from(promise).await {
        Ok(plain) => Uint8Array::new(&plain).to_vec() == CHECK_PLAINTEXT,
        Err(_) => false,
    }
}

impl KeyWrapper for WebCryptoKek {
    async fn wrap(&self, thread: ThreadId, key: &ThreadKey) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(KeyError::Random)?;
        let params = Self::params(&nonce, &kek_aad(thread, key.id()));
        let data = Uint8Array::from(&key.secret_bytes()[..]);
        let promise = self
            .subtle
            .encrypt_with_object_and_buffer_source(&params, &self.key, &data)
            .map_err(|_| KeyError::UnwrapFailed)?;
        let sealed = JsFuture::from(promise).await.map_err(|_| KeyError::UnwrapFailed)?;
        // The plaintext copy handed to JS is wiped as soon as it is used.
        data.fill(0, 0, KEY_LEN as u32);
        let mut wrapped = Vec::with_capacity(WRAPPED_KEY_LEN);
        wrapped.push(WRAP_VERSION);
        wrapped.extend_from_slice(&nonce);
        wrapped.extend_from_slice(&Uint8Array::new(&sealed).to_vec());
        Ok(wrapped)
    }

    async fn unwrap(&self, thread: ThreadId, key_id: KeyId, wrapped: &[u8]) -> Result<ThreadKey, KeyError> {
        let (&version, rest) = wrapped.split_first().ok_or(KeyError::WrappedTruncated)?;
        if version != WRAP_VERSION {
            return Err(KeyError::WrappedVersion(version));
        }
        if wrapped.len() != WRAPPED_KEY_LEN {
            return Err(KeyError::WrappedTruncated);
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let params = Self::params(nonce, &kek_aad(thread, key_id));
        let promise = self
            .subtle
            .decrypt_with_object_and_u8_array(&params, &self.key, sealed)
            .map_err(|_| KeyError::UnwrapFailed)?;
        let plain = JsFuture::from(promise).await.map_err(|_| KeyError::UnwrapFailed)?;
        let plain = Uint8Array::new(&plain);
        let mut secret = zeroize::Zeroizing::new([0u8; KEY_LEN]);
        if plain.length() as usize != KEY_LEN {
            return Err(KeyError::UnwrapFailed);
        }
        plain.copy_to(&mut secret[..]);
        plain.fill(0, 0, KEY_LEN as u32);
        Ok(ThreadKey::from_parts(key_id, *secret))
    }
}
