//! Command-line configuration: every limit and path the server takes.
//!
//! Hand-rolled instead of clap to keep the server's compile time and
//! dependency set small; the flag set is tiny and flat.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::jwt::{JwksSource, JwtConfig};

/// How hard SQLite works to keep a committed transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: the WAL is fsynced on every commit, so an ack
    /// survives power loss as well as a process crash. The default.
    Full,
    /// `synchronous=NORMAL`: in WAL mode a commit survives a process crash
    /// (SIGKILL) but the last commits may be lost on power loss or an OS crash.
    Normal,
}

/// Everything the server is started with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The SQLite database file (created if missing), or a
    /// `postgres://` URL (PostgreSQL backend).
    pub db: PathBuf,
    /// PostgreSQL connections per instance.
    pub db_pool: usize,
    /// Where to listen; port 0 picks a free port.
    pub addr: SocketAddr,
    /// A directory to serve as static files (the demo), if any.
    pub static_dir: Option<PathBuf>,
    /// Largest request body, in bytes.
    pub body_limit: usize,
    /// Largest envelope (message body or thread title), in decoded bytes.
    pub envelope_limit: usize,
    /// Most mutations in one push.
    pub max_mutations: usize,
    /// Requests per user per minute before 429.
    pub rate_limit: u32,
    /// How long a session token is accepted, in seconds.
    pub token_ttl_secs: u64,
    /// How long an invite token is accepted, in seconds.
    pub invite_ttl_secs: u64,
    /// SQLite durability level.
    pub durability: Durability,
    /// Whether the DEV-ONLY `POST /v1/session` sign-in is mounted.
    pub dev_sign_in: bool,
    /// Whether dev sign-in may run on a non-loopback address.
    pub dev_sign_in_anywhere: bool,
    /// How bearer JWTs from the app's identity provider are checked.
    pub jwt: JwtConfig,
    /// Sign-ins and failed authentications per client IP per minute.
    pub ip_rate_limit: u32,
    /// Largest WebSocket message (and frame) a client may send, in bytes.
    pub ws_max_message: usize,
    /// Open sockets per user; the oldest is closed when one more opens.
    pub ws_max_sockets: usize,
    /// How often the server pings each socket.
    pub ws_ping_interval: Duration,
    /// A socket with no frame from the client for this long is closed.
    pub ws_idle_timeout: Duration,
    /// Largest pull page, in bytes of envelopes (a larger single change still goes alone).
    pub page_bytes: usize,
}

impl Config {
    /// The defaults, for a database file and an address.
    pub fn new(db: impl Into<PathBuf>, addr: SocketAddr) -> Self {
        Config {
            db: db.into(),
            db_pool: crate::storage::postgres::DEFAULT_POOL_SIZE,
            addr,
            static_dir: None,
            body_limit: 256 * 1024,
            envelope_limit: 96 * 1024,
            max_mutations: 500,
            rate_limit: 6000,
            token_ttl_secs: 24 * 3600,
            invite_ttl_secs: 7 * 24 * 3600,
            durability: Durability::Full,
            dev_sign_in: false,
            dev_sign_in_anywhere: false,
            jwt: JwtConfig::new(),
            ip_rate_limit: 120,
            ws_max_message: 4096,
            ws_max_sockets: 5,
            ws_ping_interval: Duration::from_secs(30),
            ws_idle_timeout: Duration::from_secs(120),
            page_bytes: 4 * 1024 * 1024,
        }
    }

    /// Refuses settings that must not run: dev sign-in on a public address
    /// without `--dev-sign-in-anywhere`, or no way to sign in at all.
    pub fn check(&self) -> Result<(), String> {
        if self.dev_sign_in && !self.addr.ip().is_loopback() && !self.dev_sign_in_anywhere {
            return Err(format!(
                "refusing to start: --dev-sign-in lets anyone sign in as anyone, and {} is not a loopback \
                 address; add --dev-sign-in-anywhere if you really mean it",
                self.addr
            ));
        }
        if !self.dev_sign_in && !self.jwt.enabled() {
            return Err(format!(
                "no way to sign in: give --jwt-hs256-secret-file, --jwks, or (for development) --dev-sign-in\n\n{USAGE}"
            ));
        }
        if self.jwt.hs256_secret.as_ref().is_some_and(|s| s.len() < 32) {
            // RFC 7518 §3.2: an HS256 key must be at least as long as the hash.
            return Err("the HS256 secret must be at least 32 bytes".into());
        }
        if self.ws_idle_timeout <= self.ws_ping_interval {
            return Err("--ws-idle-timeout must be longer than --ws-ping-interval".into());
        }
        Ok(())
    }

    /// Parses the command line (without the program name).
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut db = None;
        let mut addr: SocketAddr = ([127, 0, 0, 1], 8787).into();
        let mut rest = Vec::new();
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            if flag == "--help" || flag == "-h" {
                return Err(USAGE.to_owned());
            }
            if BOOLEAN_FLAGS.contains(&flag.as_str()) {
                rest.push((flag, String::new()));
                continue;
            }
            let (name, value) = match flag.split_once('=') {
                Some((n, v)) => (n.to_owned(), v.to_owned()),
                None => {
                    let v = args.next().ok_or_else(|| format!("{flag} needs a value\n\n{USAGE}"))?;
                    (flag, v)
                }
            };
            match name.as_str() {
                "--db" => db = Some(PathBuf::from(value)),
                "--addr" => addr = value.parse().map_err(|e| format!("--addr {value:?}: {e}"))?,
                _ => rest.push((name, value)),
            }
        }
        let db = db.ok_or_else(|| format!("--db is required\n\n{USAGE}"))?;
        let mut config = Config::new(db, addr);
        for (name, value) in rest {
            let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{name} {v:?}: {e}"));
            let secs = |v: &str| {
                v.parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| format!("{name} {v:?}: not a positive number of seconds"))
            };
            match name.as_str() {
                "--static" => config.static_dir = Some(PathBuf::from(value)),
                "--body-limit" => config.body_limit = num(&value)? as usize,
                "--envelope-limit" => config.envelope_limit = num(&value)? as usize,
                "--max-mutations" => config.max_mutations = num(&value)? as usize,
                "--rate-limit" => config.rate_limit = num(&value)?.clamp(1, u32::MAX as u64) as u32,
                "--token-ttl" => config.token_ttl_secs = num(&value)?,
                "--invite-ttl" => config.invite_ttl_secs = num(&value)?,
                "--dev-sign-in" => config.dev_sign_in = true,
                "--dev-sign-in-anywhere" => config.dev_sign_in_anywhere = true,
                "--jwt-hs256-secret" => config.jwt.hs256_secret = Some(value.into_bytes()),
                "--jwt-hs256-secret-file" => {
                    let secret = std::fs::read(&value).map_err(|e| format!("{name} {value:?}: {e}"))?;
                    // A trailing newline from `echo > file` is not part of the secret.
                    let end = secret.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
                    config.jwt.hs256_secret = Some(secret[..end].to_vec());
                }
                "--jwks" => config.jwt.jwks = Some(JwksSource::parse(&value)),
                "--jwks-refresh" => config.jwt.jwks_refresh = secs(&value)?,
                "--jwt-issuer" => config.jwt.issuer = Some(value),
                "--jwt-audience" => config.jwt.audience = Some(value),
                "--jwt-user-claim" => config.jwt.user_claim = value,
                "--jwt-leeway" => config.jwt.leeway_secs = num(&value)?.min(600),
                "--ip-rate-limit" => config.ip_rate_limit = num(&value)?.clamp(1, u32::MAX as u64) as u32,
                "--ws-max-message" => config.ws_max_message = num(&value)?.max(64) as usize,
                "--ws-max-sockets" => config.ws_max_sockets = num(&value)?.max(1) as usize,
                "--ws-ping-interval" => config.ws_ping_interval = secs(&value)?,
                "--ws-idle-timeout" => config.ws_idle_timeout = secs(&value)?,
                "--db-pool" => config.db_pool = num(&value)?.clamp(1, 1000) as usize,
                "--page-bytes" => config.page_bytes = num(&value)?.max(1) as usize,
                "--synchronous" => {
                    config.durability = match value.to_ascii_lowercase().as_str() {
                        "full" => Durability::Full,
                        "normal" => Durability::Normal,
                        _ => return Err(format!("--synchronous must be full or normal, not {value:?}")),
                    }
                }
                _ => return Err(format!("unknown flag {name}\n\n{USAGE}")),
            }
        }
        Ok(config)
    }
}

/// Flags that take no value.
const BOOLEAN_FLAGS: &[&str] = &["--dev-sign-in", "--dev-sign-in-anywhere"];

/// The `--help` text.
pub const USAGE: &str = "\
usage: dovecote-server --db PATH [--addr 127.0.0.1:8787] [options]

  --db PATH|URL          SQLite database file (created if missing), or
                         postgres://USER@HOST:PORT/DB for PostgreSQL (several
                         instances may share one database)
  --db-pool N            PostgreSQL connections per instance (default 16)
  --addr HOST:PORT       listen address; port 0 picks a free port (default 127.0.0.1:8787)
  --static DIR           also serve DIR as static files (the demo)
  --body-limit BYTES     largest request body (default 262144)
  --envelope-limit BYTES largest envelope, decoded (default 98304)
  --max-mutations N      most mutations per push (default 500)
  --rate-limit N         requests per user per minute (default 6000)
  --token-ttl SECS       session token lifetime (default 86400)
  --invite-ttl SECS      invite token lifetime (default 604800)
  --synchronous full|normal  SQLite durability (default full; PostgreSQL's
                         is its own synchronous_commit setting)
  --page-bytes BYTES     largest pull page by envelope bytes (default 4194304)

Authentication (at least one of these):
  --jwt-hs256-secret-file PATH  HS256 shared secret with the identity provider
  --jwt-hs256-secret SECRET     the same inline (visible to `ps`: prefer the file)
  --jwks FILE|URL        RS256/ES256 public keys (JWKS), chosen by `kid`
  --jwks-refresh SECS    re-read the JWKS this often (default 300)
  --jwt-issuer ISS       required `iss` claim
  --jwt-audience AUD     required `aud` claim
  --jwt-user-claim NAME  claim holding the user id (default sub)
  --jwt-leeway SECS      clock leeway for exp and nbf (default 30, at most 600)
  --dev-sign-in          mount the DEV-ONLY POST /v1/session: anyone can sign in
                         as anyone; loopback addresses only unless also
  --dev-sign-in-anywhere

Abuse limits:
  --ip-rate-limit N      sign-ins and failed authentications per IP per minute (default 120)
  --ws-max-message BYTES largest WebSocket message from a client (default 4096)
  --ws-max-sockets N     open sockets per user; the oldest closes (default 5)
  --ws-ping-interval SECS  server ping interval (default 30)
  --ws-idle-timeout SECS close a socket silent this long (default 120)";

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn flags_parse_with_space_or_equals() {
        let c = Config::from_args(args("--db x.db --addr=127.0.0.1:0 --rate-limit 5 --static www")).unwrap();
        assert_eq!(c.db, PathBuf::from("x.db"));
        assert_eq!(c.addr.port(), 0);
        assert_eq!(c.rate_limit, 5);
        assert_eq!(c.static_dir, Some(PathBuf::from("www")));
        assert_eq!(c.body_limit, 256 * 1024);
        assert_eq!(c.durability, Durability::Full);
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(Config::from_args(args("--addr 127.0.0.1:0")).is_err());
        assert!(Config::from_args(args("--db x --bogus 1")).is_err());
        assert!(Config::from_args(args("--db x --rate-limit lots")).is_err());
        assert!(Config::from_args(args("--db")).is_err());
    }

    #[test]
    fn dev_sign_in_is_opt_in_and_loopback_only_unless_told() {
        let c = Config::from_args(args("--db x")).unwrap();
        assert!(!c.dev_sign_in);
        assert!(c.check().unwrap_err().contains("no way to sign in"));
        let c = Config::from_args(args("--db x --dev-sign-in --addr 127.0.0.1:0")).unwrap();
        assert!(c.dev_sign_in);
        c.check().unwrap();
        let c = Config::from_args(args("--db x --dev-sign-in --addr [::1]:0")).unwrap();
        c.check().unwrap();
        let c = Config::from_args(args("--db x --dev-sign-in --addr 0.0.0.0:8080")).unwrap();
        assert!(c.check().unwrap_err().contains("--dev-sign-in-anywhere"));
        let c = Config::from_args(args("--db x --addr 0.0.0.0:8080 --dev-sign-in --dev-sign-in-anywhere"))
            .unwrap();
        c.check().unwrap();
        let secret = "0123456789abcdef0123456789abcdef";
        let c = Config::from_args(args(&format!("--db x --addr 0.0.0.0:8080 --jwt-hs256-secret {secret}")))
            .unwrap();
        c.check().unwrap();
        assert!(format!("{c:?}").contains("(set)") && !format!("{c:?}").contains(secret), "{c:?}");
        let c = Config::from_args(args("--db x --jwt-hs256-secret short")).unwrap();
        assert!(c.check().unwrap_err().contains("32 bytes"));
    }
}
