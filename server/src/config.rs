//! Command-line configuration: every limit and path the server takes.
//!
//! Hand-rolled instead of clap to keep the server's compile time and
//! dependency set small; the flag set is tiny and flat.

use std::net::SocketAddr;
use std::path::PathBuf;

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
    /// The SQLite database file (created if missing).
    pub db: PathBuf,
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
}

impl Config {
    /// The defaults, for a database file and an address.
    pub fn new(db: impl Into<PathBuf>, addr: SocketAddr) -> Self {
        Config {
            db: db.into(),
            addr,
            static_dir: None,
            body_limit: 256 * 1024,
            envelope_limit: 96 * 1024,
            max_mutations: 500,
            rate_limit: 6000,
            token_ttl_secs: 24 * 3600,
            invite_ttl_secs: 7 * 24 * 3600,
            durability: Durability::Full,
        }
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
            match name.as_str() {
                "--static" => config.static_dir = Some(PathBuf::from(value)),
                "--body-limit" => config.body_limit = num(&value)? as usize,
                "--envelope-limit" => config.envelope_limit = num(&value)? as usize,
                "--max-mutations" => config.max_mutations = num(&value)? as usize,
                "--rate-limit" => config.rate_limit = num(&value)?.clamp(1, u32::MAX as u64) as u32,
                "--token-ttl" => config.token_ttl_secs = num(&value)?,
                "--invite-ttl" => config.invite_ttl_secs = num(&value)?,
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

/// The `--help` text.
pub const USAGE: &str = "\
usage: dovecote-server --db PATH [--addr 127.0.0.1:8787] [options]

  --db PATH              SQLite database file (created if missing)
  --addr HOST:PORT       listen address; port 0 picks a free port (default 127.0.0.1:8787)
  --static DIR           also serve DIR as static files (the demo)
  --body-limit BYTES     largest request body (default 262144)
  --envelope-limit BYTES largest envelope, decoded (default 98304)
  --max-mutations N      most mutations per push (default 500)
  --rate-limit N         requests per user per minute (default 6000)
  --token-ttl SECS       session token lifetime (default 86400)
  --invite-ttl SECS      invite token lifetime (default 604800)
  --synchronous full|normal  SQLite durability (default full)

POST /v1/session is a DEV-ONLY sign-in: anyone can sign in as anyone.";

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
}
