//! `FakeServer` (the in-memory server of the engine's simulations,
//! `dovecote::testing`) behind HTTP, so that the conformance kit holds it to
//! the same text as the real server and it cannot drift.
//!
//! This adapter is only the HTTP edge the fake leaves out: it parses JSON
//! (`400 bad_request`, or `unsupported_protocol` for another version, like
//! the reference server's edge), signs users in (DEV-ONLY style tokens),
//! answers `401`, `404` and `405`, and turns the fake's
//! `TransportFailure::Status` into the `ErrorBody` it stands for. Every rule
//! of the protocol itself is the fake's. The fake is single-threaded
//! (`Rc<RefCell<..>>`), so it lives on a thread of its own and the HTTP
//! handlers send it closures.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::mpsc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use dovecote::core::model::{ThreadId, UserId};
use dovecote::core::outbox::TransportFailure;
use dovecote::core::sync::{
    ErrorBody, ErrorDetail, PullRequest, PushRequest, SessionRequest, SessionResponse,
};
use dovecote::testing::FakeServer;

type Job = Box<dyn FnOnce(&FakeServer) + Send>;

#[derive(Clone)]
struct Shared {
    jobs: mpsc::Sender<Job>,
    /// Keys the tokens' check value: a token names its user and cannot be
    /// changed into another user's without it.
    key: RandomState,
}

impl Shared {
    /// Runs `f` on the fake's thread, with the fake's clock set to now (it
    /// stamps `server_ts`, expires invites, and judges ids from the future).
    async fn call<T: Send + 'static>(&self, f: impl FnOnce(&FakeServer) -> T + Send + 'static) -> T {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |server| {
            server.set_now(crate::now_ms());
            let _ = tx.send(f(server));
        });
        self.jobs.send(job).expect("the fake's thread runs");
        rx.await.expect("the fake's thread answers")
    }

    fn check_value(&self, user: &str) -> u64 {
        self.key.hash_one(user)
    }

    fn token(&self, user: &UserId) -> String {
        let hex: String = user.as_str().bytes().map(|b| format!("{b:02x}")).collect();
        format!("fake1.{hex}.{:016x}", self.check_value(user.as_str()))
    }

    /// The token's user; `None` answers `401`.
    fn user(&self, headers: &HeaderMap) -> Option<UserId> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))?;
        let mut parts = token.split('.');
        let (Some("fake1"), Some(hex), Some(check), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect();
        let user = bytes.and_then(|b| String::from_utf8(b).ok())?;
        if format!("{:016x}", self.check_value(&user)) != check {
            return None;
        }
        UserId::parse(&user).ok()
    }
}

fn error(status: u16, code: &str, message: impl Into<String>) -> Response {
    let body = ErrorBody { error: ErrorDetail { code: code.to_owned(), message: message.into() } };
    json(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &body)
}

fn unauthorized() -> Response {
    error(401, "unauthorized", "missing, invalid or expired token")
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    let body = serde_json::to_vec(value).expect("answers serialize");
    (status, [("content-type", "application/json")], body).into_response()
}

/// The fake's answer as HTTP.
fn answer<T: serde::Serialize>(result: Result<T, TransportFailure>) -> Response {
    match result {
        Ok(value) => json(StatusCode::OK, &value),
        Err(TransportFailure::Status { status, error: Some(detail), .. }) => {
            error(status, &detail.code, detail.message)
        }
        Err(other) => error(500, "internal", format!("{other:?}")),
    }
}

fn bad_request(e: impl std::fmt::Display) -> Response {
    error(400, "bad_request", e.to_string())
}

async fn session(State(shared): State<Shared>, body: Bytes) -> Response {
    match serde_json::from_slice::<SessionRequest>(&body) {
        Ok(request) => {
            let token = shared.token(&request.user);
            json(
                StatusCode::OK,
                &SessionResponse { token, user: request.user, expires_at: crate::now_ms() + 86_400_000 },
            )
        }
        Err(e) => bad_request(e),
    }
}

async fn push(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(user) = shared.user(&headers) else { return unauthorized() };
    let request: PushRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            // Another version may have another shape: say so, not "malformed".
            let probe: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
            return match probe.as_ref().and_then(|v| v.get("protocol")) {
                Some(v) if *v != 1 => error(400, "unsupported_protocol", format!("protocol {v}")),
                _ => bad_request(e),
            };
        }
    };
    answer(shared.call(move |server| server.push(&user, &request)).await)
}

/// `GET /v1/pull` parameters as the reference server reads them.
#[derive(serde::Deserialize)]
struct PullParams {
    cursor: Option<u64>,
    limit: Option<u32>,
    thread: Option<String>,
}

async fn pull(State(shared): State<Shared>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let Some(user) = shared.user(&headers) else { return unauthorized() };
    let params: PullParams = match axum::extract::Query::try_from_uri(
        &format!("/?{}", query.unwrap_or_default()).parse().expect("a path and query"),
    ) {
        Ok(axum::extract::Query(params)) => params,
        Err(e) => return bad_request(e.body_text()),
    };
    let thread = match params.thread.map(|t| t.parse::<ThreadId>()) {
        None => None,
        Some(Ok(thread)) => Some(thread),
        // A malformed id names no thread of the caller's.
        Some(Err(_)) => return error(404, "not_found", "not found"),
    };
    let request =
        PullRequest { cursor: params.cursor.unwrap_or(0), limit: params.limit.unwrap_or(500), thread };
    answer(shared.call(move |server| server.pull(&user, &request)).await)
}

// Bodies are ignored but read (`_body`): answering before the body is read
// makes hyper close the connection, which a client reusing it sees as a failure.
async fn create_invite(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    _body: Bytes,
) -> Response {
    let Some(user) = shared.user(&headers) else { return unauthorized() };
    let Ok(thread) = id.parse::<ThreadId>() else { return error(404, "not_found", "not found") };
    answer(shared.call(move |server| server.create_invite(&user, thread)).await)
}

async fn accept_invite(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let Some(user) = shared.user(&headers) else { return unauthorized() };
    answer(shared.call(move |server| server.accept_invite(&user, &token)).await)
}

/// A `FakeServer` served over HTTP on 127.0.0.1, until dropped.
pub struct FakeHttp {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeHttp {
    /// Starts a fresh fake with the reference server's limits.
    pub fn start() -> std::io::Result<Self> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        std::thread::Builder::new().name("fake-server".into()).spawn(move || {
            let server = FakeServer::new();
            for job in inbox {
                job(&server);
            }
        })?;
        let shared = Shared { jobs, key: RandomState::new() };
        let router = Router::new()
            .route("/healthz", get(|| async { json(StatusCode::OK, &serde_json::json!({"ok": true})) }))
            .route("/v1/session", post(session))
            .route("/v1/push", post(push))
            .route("/v1/pull", get(pull))
            .route("/v1/threads/{id}/invites", post(create_invite))
            .route("/v1/invites/{token}/accept", post(accept_invite))
            .method_not_allowed_fallback(|| async { error(405, "method_not_allowed", "method not allowed") })
            .fallback(|| async { error(404, "not_found", "not found") })
            // The fake measures push bodies itself; this only bounds reading.
            .layer(axum::extract::DefaultBodyLimit::max(16 << 20))
            .with_state(shared);
        let std_listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        std_listener.set_nonblocking(true)?;
        let url = format!("http://{}", std_listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("fake-http".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("the listener");
                let _ = axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await;
            });
        })?;
        Ok(FakeHttp { url, stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
