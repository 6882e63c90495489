//! The conformance kit of dovecote sync protocol v1: every rule of
//! docs/protocol.md that can be seen over HTTP, as one black-box suite that
//! runs against a server URL. The reference server (SQLite, and PostgreSQL
//! with several instances) and the in-memory `FakeServer` ([`fake`]) all
//! pass it; a backend of your own is compatible if it does too:
//!
//! ```text
//! cargo run -p dovecote-conformance -- --server http://127.0.0.1:8787 [--server URL2 ...]
//! ```
//!
//! What the kit needs from the server: the DEV-ONLY sign-in
//! (`POST /v1/session`, docs/protocol.md §2) to get tokens for made-up
//! users, the default limits of §9 (those the checks probe), and a rate limit
//! that allows a few thousand requests a minute per user. With several URLs
//! (instances on one database), each check spreads its requests over them,
//! so the rules are checked across instances: a retry on another instance,
//! a pull from another than the push. Each run uses fresh user names and
//! ids, so a kit can run again on the same database.
//!
//! Not here: rules only a process owner can see (exactly-once across a
//! restart or a SIGKILL, the durability settings) and the WebSocket pokes;
//! the reference server's own tests (`server/tests/`) check those.

#![deny(missing_docs)]

mod checks;
pub mod fake;

use std::time::Duration;

use serde_json::Value;

/// One check's result: `Err` says what rule broke and how.
pub type Outcome = Result<(), String>;

/// A check: its name (section of docs/protocol.md first) and body.
pub struct Check {
    /// e.g. `4.2 exactly-once: a retry gets the stored acks`.
    pub name: &'static str,
    /// Runs the check against the servers.
    pub run: fn(&Kit) -> Outcome,
}

/// Every check, in the order of docs/protocol.md.
pub fn checks() -> &'static [Check] {
    checks::ALL
}

/// An HTTP answer, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status.
    pub status: u16,
    /// The body as text.
    pub body: String,
    /// `Retry-After`, if sent.
    pub retry_after: Option<String>,
}

impl Reply {
    /// The body as JSON (`Value::Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// Fails unless the status is `status` and, for an error, the body is an
    /// `ErrorBody` (§8) with `code`.
    pub fn expect_error(&self, status: u16, code: &str) -> Outcome {
        if self.status != status {
            return Err(format!("expected {status} {code}, got {} {}", self.status, short(&self.body)));
        }
        let body = self.json();
        let (Some(got), Some(_)) = (body["error"]["code"].as_str(), body["error"]["message"].as_str()) else {
            return Err(format!("a {status} whose body is not an ErrorBody: {}", short(&self.body)));
        };
        if got != code {
            return Err(format!("expected code {code}, got {got}"));
        }
        Ok(())
    }

    /// The body as `T`, if the status is 200.
    pub fn ok<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        if self.status != 200 {
            return Err(format!("expected 200, got {} {}", self.status, short(&self.body)));
        }
        serde_json::from_str(&self.body)
            .map_err(|e| format!("a 200 that is not the expected answer ({e}): {}", short(&self.body)))
    }
}

fn short(s: &str) -> String {
    let mut s: String = s.chars().take(300).collect();
    if s.len() == 300 {
        s.push('…');
    }
    s
}

/// The servers under test and what each check needs to reach them.
pub struct Kit {
    urls: Vec<String>,
    agent: ureq::Agent,
    run: String,
    /// The running check's number: each check has users of its own.
    check: std::sync::atomic::AtomicUsize,
}

impl Kit {
    /// A kit for `urls` (one server, or several instances on one database).
    pub fn new(urls: Vec<String>) -> Self {
        assert!(!urls.is_empty(), "at least one server URL");
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
        // Fresh names per run: a kit may run again on the same database.
        let run = format!("{:x}", now_ms() % 0xffff_ffff);
        let urls = urls.into_iter().map(|u| u.trim_end_matches('/').to_owned()).collect();
        Kit { urls, agent, run, check: Default::default() }
    }

    /// How many instances there are.
    pub fn instances(&self) -> usize {
        self.urls.len()
    }

    /// A request to instance `at` (modulo the number of instances).
    pub fn request(
        &self,
        at: usize,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> Reply {
        let url = format!("{}{path}", self.urls[at % self.urls.len()]);
        let mut request = self.agent.request(method, &url);
        if let Some(token) = token {
            request = request.set("authorization", &format!("Bearer {token}"));
        }
        let result = match body {
            Some(body) => request.set("content-type", "application/json").send_bytes(body),
            None => request.call(),
        };
        let response = match result {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(e) => {
                return Reply { status: 0, body: format!("transport error: {e}"), retry_after: None };
            }
        };
        let status = response.status();
        let retry_after = response.header("retry-after").map(str::to_owned);
        let body = response.into_string().unwrap_or_else(|e| format!("unreadable body: {e}"));
        Reply { status, body, retry_after }
    }

    /// `POST` of a JSON value.
    pub fn post(&self, at: usize, path: &str, token: Option<&str>, body: &Value) -> Reply {
        self.request(at, "POST", path, token, Some(body.to_string().as_bytes()))
    }

    /// `GET`.
    pub fn get(&self, at: usize, path: &str, token: Option<&str>) -> Reply {
        self.request(at, "GET", path, token, None)
    }

    /// A user name unique to this run and check.
    pub fn user(&self, name: &str) -> String {
        format!("{name}-{}-{}", self.run, self.check.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Signs `name` (made unique to this run) in with the dev sign-in:
    /// `(user id, token)`.
    pub fn session(&self, name: &str) -> Result<(String, String), String> {
        let user = self.user(name);
        let reply = self.post(0, "/v1/session", None, &serde_json::json!({ "user": user }));
        let session: dovecote::core::sync::SessionResponse =
            reply.ok().map_err(|e| format!("dev sign-in (POST /v1/session) failed: {e}"))?;
        Ok((user, session.token))
    }

    /// Runs `checks` (all whose name contains `filter`), printing one line
    /// each; the failures.
    pub fn run(&self, filter: &str, mut report: impl FnMut(&str, &Outcome)) -> Vec<(String, String)> {
        let mut failures = Vec::new();
        for (number, check) in checks().iter().enumerate().filter(|(_, c)| c.name.contains(filter)) {
            self.check.store(number, std::sync::atomic::Ordering::Relaxed);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (check.run)(self)))
                .unwrap_or_else(|panic| {
                    let text = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default();
                    Err(format!("panicked: {text}"))
                });
            report(check.name, &outcome);
            if let Err(why) = outcome {
                failures.push((check.name.to_owned(), why));
            }
        }
        failures
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A fresh id stamped now (UUIDv7-like, as clients make them).
pub fn fresh_id() -> String {
    fresh_id_at(now_ms())
}

/// A fresh id stamped at `millis`.
pub fn fresh_id_at(millis: u64) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Unique within a run by the counter, across processes by the pid
    // (and across runs by the time in the id).
    let mut random = [0u8; 10];
    random[..2].copy_from_slice(&(std::process::id() as u16).to_be_bytes());
    random[2..].copy_from_slice(&n.to_be_bytes());
    dovecote::core::model::Id::from_parts(millis, random).to_string()
}
