//! The sync server over HTTP: [`HttpTransport`] implements the engine's
//! [`Transport`] port with `fetch` (docs/protocol.md §3–§8), and [`sign_in`]
//! is the server's dev-only sign-in.
//!
//! Every failure is a [`TransportFailure`] that
//! [`classify`](crate::core::outbox::classify) sorts:
//!
//! - the request did not complete (offline, DNS, refused connection, CORS):
//!   [`Network`](TransportFailure::Network);
//! - no complete answer within the timeout (30 s by default): the request is
//!   aborted, [`Timeout`](TransportFailure::Timeout);
//! - an HTTP error status: [`Status`](TransportFailure::Status) with the
//!   server's `{"error": {code, message}}` body when it sent one and its
//!   `Retry-After` in milliseconds. A `401` (`unauthorized`) means the token
//!   is missing, expired or forged: the engine pauses and signs in again
//!   ([`HttpTransport::set_token`]) rather than failing mutations;
//! - a success status whose body is not a protocol v1 answer:
//!   [`Protocol`](TransportFailure::Protocol).
//!
//! So `Ok` always means a well-formed v1 answer. Dropping a request's future
//! aborts the request.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;

use serde::de::DeserializeOwned;
use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use crate::core::model::{Millis, ThreadId, UserId};
use crate::core::outbox::TransportFailure;
use crate::core::sync::{
    ErrorBody, InviteResponse, PullPage, PullRequest, PushRequest, PushResponse, SessionRequest,
    SessionResponse, PROTOCOL_VERSION,
};
use crate::ports::{Traffic, Transport};
use crate::web::timers;

/// How long a request may take, from sending to the last byte of the answer,
/// unless [`HttpTransport::with_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT_MS: Millis = 30_000;

#[wasm_bindgen]
extern "C" {
    // The global `fetch`, which workers have too (`Window::fetch` needs a window).
    #[wasm_bindgen(js_name = fetch)]
    fn fetch_with_init(url: &str, init: &web_sys::RequestInit) -> js_sys::Promise;
}

/// A server base URL that is not an absolute `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an http(s) server URL: \"{0}\"")]
pub struct InvalidServerUrl(pub String);

/// The base URL of a dovecote server, e.g. `https://chat.example.com` or
/// `http://127.0.0.1:8080/api` (routes are appended to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl(String);

impl ServerUrl {
    /// Checks that `base` is an absolute http(s) URL with a host and no
    /// query or fragment; a trailing `/` is dropped.
    pub fn parse(base: &str) -> Result<ServerUrl, InvalidServerUrl> {
        let invalid = || InvalidServerUrl(base.to_owned());
        let trimmed = base.trim().trim_end_matches('/');
        let lower = trimmed.to_ascii_lowercase();
        let rest =
            lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://")).ok_or_else(invalid)?;
        let host = rest.split('/').next().unwrap_or_default();
        if host.is_empty() || trimmed.contains(['?', '#']) || trimmed.chars().any(char::is_whitespace) {
            return Err(invalid());
        }
        Ok(ServerUrl(trimmed.to_owned()))
    }

    /// The base URL, without a trailing `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The WebSocket URL of the poke feed for `token`: `ws://` for an
    /// `http://` base, `wss://` for `https://` (docs/protocol.md §6).
    pub fn events(&self, token: &str) -> String {
        let (scheme, rest) = self.0.split_once("://").expect("checked by parse");
        let ws = if scheme.eq_ignore_ascii_case("https") { "wss" } else { "ws" };
        format!("{ws}://{rest}/v1/events?token={}", encode_query(token))
    }

    fn route(&self, path: &str) -> String {
        format!("{}{path}", self.0)
    }

    fn pull(&self, request: &PullRequest) -> String {
        let mut url = self.route(&format!("/v1/pull?cursor={}&limit={}", request.cursor, request.limit));
        if let Some(thread) = request.thread {
            let _ = write!(url, "&thread={thread}");
        }
        url
    }
}

impl std::fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// The sync server's push, pull and invites over `fetch`, as one user
/// (a bearer token).
#[derive(Debug)]
pub struct HttpTransport {
    server: ServerUrl,
    // The token is replaced after a new sign-in, while the transport is shared.
    token: RefCell<String>,
    timeout_ms: Millis,
    traffic: Cell<Traffic>,
}

impl HttpTransport {
    /// A transport to `server` that authenticates with `token`.
    pub fn new(server: ServerUrl, token: impl Into<String>) -> HttpTransport {
        HttpTransport {
            server,
            token: RefCell::new(token.into()),
            timeout_ms: DEFAULT_TIMEOUT_MS,
            traffic: Cell::default(),
        }
    }

    /// The same transport with another request timeout.
    pub fn with_timeout(mut self, ms: Millis) -> HttpTransport {
        self.timeout_ms = ms;
        self
    }

    /// Uses `token` from the next request on (after a 401 and a new sign-in).
    pub fn set_token(&self, token: impl Into<String>) {
        *self.token.borrow_mut() = token.into();
    }

    /// The server.
    pub fn server(&self) -> &ServerUrl {
        &self.server
    }

    /// The WebSocket URL of the poke feed, with the current token.
    pub fn events_url(&self) -> String {
        self.server.events(&self.token.borrow())
    }

    /// One authenticated exchange; not generic, so that it is compiled once.
    async fn send(&self, method: &str, url: &str, body: Option<String>) -> Result<Answer, TransportFailure> {
        let token = self.token.borrow().clone();
        let up = body.as_ref().map_or(0, |b| b.len() as u64);
        let answer = exchange(method, url, Some(&token), body, self.timeout_ms).await;
        let down = answer.as_ref().map_or(0, |a| a.body.len() as u64);
        let Traffic { up: sent, down: received } = self.traffic.get();
        self.traffic.set(Traffic { up: sent + up, down: received + down });
        answer
    }
}

impl Transport for HttpTransport {
    async fn push(&self, request: &PushRequest) -> Result<PushResponse, TransportFailure> {
        let answer = self.send("POST", &self.server.route("/v1/push"), Some(json(request))).await?;
        let response: PushResponse = answer.read()?;
        check_protocol(response.protocol)?;
        Ok(response)
    }

    async fn pull(&self, request: &PullRequest) -> Result<PullPage, TransportFailure> {
        let response: PullPage = self.send("GET", &self.server.pull(request), None).await?.read()?;
        check_protocol(response.protocol)?;
        Ok(response)
    }

    async fn create_invite(&self, thread: ThreadId) -> Result<InviteResponse, TransportFailure> {
        let url = self.server.route(&format!("/v1/threads/{thread}/invites"));
        self.send("POST", &url, None).await?.read()
    }

    fn traffic(&self) -> Traffic {
        self.traffic.get()
    }
}

/// Signs in as `user` with the server's **dev-only** `POST /v1/session`,
/// which trusts the caller (docs/protocol.md §2). A real deployment issues
/// tokens through its own identity provider instead.
pub async fn sign_in(server: &ServerUrl, user: &UserId) -> Result<SessionResponse, TransportFailure> {
    let body = json(&SessionRequest { user: user.clone() });
    exchange("POST", &server.route("/v1/session"), None, Some(body), DEFAULT_TIMEOUT_MS).await?.read()
}

fn json(body: &impl Serialize) -> String {
    serde_json::to_string(body).expect("protocol types serialize")
}

fn check_protocol(protocol: u32) -> Result<(), TransportFailure> {
    if protocol == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(TransportFailure::Protocol(format!("protocol version {protocol} instead of {PROTOCOL_VERSION}")))
    }
}

/// Aborts a fetch when dropped: on timeout, or when the caller drops the
/// request's future (the client closed). Aborting a finished fetch is a no-op.
struct AbortOnDrop(web_sys::AbortController);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A complete HTTP answer, of any status.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: String,
    /// When it arrived, for a `Retry-After` date.
    at: Millis,
}

impl Answer {
    /// The body of a 2xx as `T`; anything else as a [`TransportFailure::Status`].
    fn read<T: DeserializeOwned>(&self) -> Result<T, TransportFailure> {
        if (200..300).contains(&self.status) {
            return serde_json::from_str(&self.body).map_err(|e| TransportFailure::Protocol(e.to_string()));
        }
        Err(TransportFailure::Status {
            status: self.status,
            error: serde_json::from_str::<ErrorBody>(&self.body).ok().map(|b| b.error),
            retry_after: self.retry_after.as_deref().and_then(|value| parse_retry_after(value, self.at)),
        })
    }
}

/// One HTTP exchange with a JSON body, if any: the complete answer, or the
/// failure to get one.
async fn exchange(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<String>,
    timeout_ms: Millis,
) -> Result<Answer, TransportFailure> {
    let network = |_| TransportFailure::Network;
    let controller = web_sys::AbortController::new().map_err(network)?;
    let init = web_sys::RequestInit::new();
    init.set_method(method);
    init.set_signal(Some(&controller.signal()));
    let abort = AbortOnDrop(controller);
    let headers = web_sys::Headers::new().map_err(network)?;
    if let Some(token) = token {
        headers.append("Authorization", &format!("Bearer {token}")).map_err(network)?;
    }
    if let Some(body) = body {
        headers.append("Content-Type", "application/json").map_err(network)?;
        init.set_body(&JsValue::from_str(&body));
    }
    init.set_headers(&headers);

    let answer = async {
        let response = JsFuture::from(fetch_with_init(url, &init)).await.map_err(fetch_error)?;
        let response: web_sys::Response = response.dyn_into().map_err(network)?;
        let retry_after = response.headers().get("Retry-After").ok().flatten();
        let text = response.text().map_err(network)?;
        let text = JsFuture::from(text).await.map_err(fetch_error)?;
        let at = js_sys::Date::now() as Millis;
        Ok(Answer { status: response.status(), retry_after, body: text.as_string().unwrap_or_default(), at })
    };
    let answer = timers::timeout(timeout_ms, answer).await;
    drop(abort);
    answer.ok_or(TransportFailure::Timeout)?
}

/// A rejected `fetch` or body read: an abort (only ours) or a network error.
fn fetch_error(error: JsValue) -> TransportFailure {
    match error.dyn_ref::<web_sys::DomException>() {
        Some(e) if e.name() == "AbortError" || e.name() == "TimeoutError" => TransportFailure::Timeout,
        _ => TransportFailure::Network,
    }
}

/// A `Retry-After` header in milliseconds from `now`: either seconds, or an
/// HTTP date (RFC 9110 §10.2.3; a date in the past means now). `None` when
/// it is neither.
pub fn parse_retry_after(value: &str, now: Millis) -> Option<Millis> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than u64 holds is still "a very long time".
        return Some(value.parse::<u64>().unwrap_or(u64::MAX).saturating_mul(1000));
    }
    parse_http_date(value).map(|at| at.saturating_sub(now))
}

/// An HTTP date in milliseconds since the epoch, in any of the three forms
/// recipients must accept (RFC 9110 §5.6.7): `Sun, 06 Nov 1994 08:49:37 GMT`,
/// `Sunday, 06-Nov-94 08:49:37 GMT`, `Sun Nov  6 08:49:37 1994`.
fn parse_http_date(value: &str) -> Option<Millis> {
    const MONTHS: [&str; 12] =
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
    let mut month = None;
    let mut time = None;
    let mut numbers = Vec::new();
    for token in value.split([' ', ',', '-']).filter(|t| !t.is_empty()) {
        if token.contains(':') {
            let parts: Vec<u32> = token.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
            let [h, m, s] = parts[..] else { return None };
            if h > 23 || m > 59 || s > 60 {
                return None;
            }
            time = Some(h * 3600 + m * 60 + s);
        } else if token.bytes().all(|b| b.is_ascii_digit()) {
            numbers.push((token.parse::<u32>().ok()?, token.len()));
        } else if let Some(i) = MONTHS.iter().position(|m| token.eq_ignore_ascii_case(m)) {
            month = Some(i as u32 + 1);
        }
        // Week days and "GMT" carry nothing more.
    }
    let [(day, _), (year, year_digits)] = numbers[..] else { return None };
    let year = match year_digits {
        // RFC 850's two-digit years: the closest century is a fine guess.
        2 if year < 70 => 2000 + year,
        2 => 1900 + year,
        4 => year,
        _ => return None,
    };
    if !(1..=31).contains(&day) || year < 1970 {
        return None;
    }
    let days = days_from_civil(i64::from(year), month?, day);
    let seconds = u64::try_from(days).ok()? * 86_400 + u64::from(time?);
    Some(seconds * 1000)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * i64::from((month + 9) % 12) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

    const NOV_6_1994: Millis = 784_111_777_000;

    #[wasm_bindgen_test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("120", 0), Some(120_000));
        assert_eq!(parse_retry_after(" 0 ", 5), Some(0));
        assert_eq!(parse_retry_after("99999999999999999999999", 0), Some(u64::MAX));
        for date in
            ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"]
        {
            assert_eq!(parse_retry_after(date, NOV_6_1994 - 1500), Some(1500), "{date}");
        }
        // A date already past means "now", not "never".
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", NOV_6_1994 + 10), Some(0));
        assert_eq!(parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", 0), Some(0));
        assert_eq!(parse_retry_after("Tue, 29 Feb 2028 23:59:60 GMT", 0), Some(1_835_481_600_000));
        for junk in [
            "",
            "-5",
            "1.5",
            "soon",
            "Sun, 06 Nov 1994 25:00:00 GMT",
            "Sun, 06 Xyz 1994 08:49:37 GMT",
            "06 Nov",
        ] {
            assert_eq!(parse_retry_after(junk, 0), None, "{junk:?}");
        }
    }

    #[wasm_bindgen_test]
    fn error_answers_keep_the_servers_code_and_retry_after() {
        let answer = |status, retry_after: Option<&str>, body: &str| Answer {
            status,
            retry_after: retry_after.map(str::to_owned),
            body: body.to_owned(),
            at: 0,
        };
        let body = r#"{"error":{"code":"rate_limited","message":"slow down"}}"#;
        match answer(429, Some("3"), body).read::<PushResponse>() {
            Err(TransportFailure::Status { status: 429, error: Some(e), retry_after: Some(3000) }) => {
                assert_eq!((e.code.as_str(), e.message.as_str()), ("rate_limited", "slow down"));
            }
            other => panic!("{other:?}"),
        }
        // A proxy's HTML error page is still a status, just without details.
        assert_eq!(
            answer(502, None, "<html>Bad gateway</html>").read::<PushResponse>(),
            Err(TransportFailure::Status { status: 502, error: None, retry_after: None })
        );
        assert!(matches!(
            answer(200, None, "<html>portal</html>").read::<PushResponse>(),
            Err(TransportFailure::Protocol(_))
        ));
        assert_eq!(
            check_protocol(2),
            Err(TransportFailure::Protocol("protocol version 2 instead of 1".into()))
        );
    }

    #[wasm_bindgen_test]
    fn server_urls_and_the_routes_built_on_them() {
        let server = ServerUrl::parse(" https://chat.example.com/api/ ").unwrap();
        assert_eq!(server.as_str(), "https://chat.example.com/api");
        assert_eq!(
            server.events("s1.a+b/c=="),
            "wss://chat.example.com/api/v1/events?token=s1.a%2Bb%2Fc%3D%3D"
        );
        let local = ServerUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(local.events("t"), "ws://127.0.0.1:8080/v1/events?token=t");
        let thread = ThreadId::from_parts(1, [1; 10]);
        assert_eq!(
            local.pull(&PullRequest { cursor: 7, limit: 500, thread: Some(thread) }),
            format!("http://127.0.0.1:8080/v1/pull?cursor=7&limit=500&thread={thread}")
        );
        assert_eq!(
            local.pull(&PullRequest { cursor: 0, limit: 1, thread: None }),
            "http://127.0.0.1:8080/v1/pull?cursor=0&limit=1"
        );
        for bad in
            ["", "ftp://x", "//host", "http://", "https:///path", "http://h/?q", "http://h/#f", "http://a b"]
        {
            assert_eq!(ServerUrl::parse(bad), Err(InvalidServerUrl(bad.to_owned())), "{bad:?}");
        }
    }
}
