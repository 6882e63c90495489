//! The HTTP surface of protocol v1 (docs/protocol.md): routing, auth,
//! request checks, CORS and the request log. Storage does the rest.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, Query, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use dovecote::core::model::{Millis, ThreadId, UserId, MAX_MEMBERS};
use dovecote::core::sync::{
    AcceptResponse, InviteResponse, MutationBody, PushRequest, SessionRequest, SessionResponse,
    PROTOCOL_VERSION,
};
use serde::Deserialize;

use crate::auth::{random_string, InviteClaims, Signer};
use crate::config::Config;
use crate::error::{json_response, ApiError};
use crate::events::{Hub, SocketLimits};
use crate::jwt::{JwksError, JwtError, JwtVerifier};
use crate::limits::RateLimiter;
use crate::statics;
use crate::storage::{self, IncomingMutation, PullQuery, Refusal, Storage};

/// Default and largest page of a pull.
pub const DEFAULT_PULL_LIMIT: u32 = 500;
/// Largest page of a pull; larger limits are lowered to this.
pub const MAX_PULL_LIMIT: u32 = 1000;

/// Everything the handlers share.
#[derive(Debug)]
pub struct App<S> {
    /// The database.
    pub storage: S,
    /// Signs and checks tokens.
    pub signer: Signer,
    /// Limits and paths.
    pub config: Config,
    /// Requests per user per minute.
    pub limiter: RateLimiter,
    /// Sign-ins and failed authentications per client IP per minute.
    pub ip_limiter: RateLimiter,
    /// Checks the identity provider's JWTs.
    pub jwt: JwtVerifier,
    /// WebSocket fan-out.
    pub hub: Arc<Hub>,
}

impl<S: Storage> App<S> {
    /// Shared state for `storage` under `config`; loads the JWKS if one is
    /// configured (a blocking read).
    pub fn try_new(storage: S, config: Config) -> Result<Arc<Self>, JwksError> {
        Ok(Arc::new(App {
            signer: Signer::new(storage.token_secret()),
            limiter: RateLimiter::new(config.rate_limit),
            ip_limiter: RateLimiter::new(config.ip_rate_limit),
            jwt: JwtVerifier::new(config.jwt.clone())?,
            storage,
            config,
            hub: Arc::new(Hub::default()),
        }))
    }

    /// [`App::try_new`] for a configuration without a JWKS to load.
    ///
    /// # Panics
    /// If the configured JWKS cannot be loaded.
    pub fn new(storage: S, config: Config) -> Arc<Self> {
        Self::try_new(storage, config).expect("the JWKS loads")
    }
}

/// Milliseconds since the epoch, by the server clock.
pub fn now_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as Millis)
}

/// The router for `app`.
pub fn router<S: Storage>(app: Arc<App<S>>) -> Router {
    let sign_in = if app.config.dev_sign_in {
        post(session::<S>)
    } else {
        // Not mounted: the same 404 as any unknown path, for every method.
        axum::routing::any(|| async { ApiError::NotFound })
    };
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/session", sign_in)
        .route("/v1/push", post(push::<S>))
        .route("/v1/pull", get(pull::<S>))
        .route("/v1/events", get(events::<S>))
        .route("/v1/threads/{id}/invites", post(create_invite::<S>))
        .route("/v1/invites/{token}/accept", post(accept_invite::<S>))
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed });
    router = match app.config.static_dir.clone() {
        Some(dir) => {
            // The database exists by now (storage opened it), so this resolves.
            let db = std::fs::canonicalize(&app.config.db).unwrap_or_else(|_| app.config.db.clone());
            let paths = Arc::new((dir, db));
            router.fallback(move |method: Method, uri: axum::http::Uri| {
                let paths = paths.clone();
                async move { statics::serve(&paths.0, &paths.1, &method, uri.path()).await }
            })
        }
        None => router.fallback(|| async { ApiError::NotFound }),
    };
    router
        .layer(DefaultBodyLimit::max(app.config.body_limit))
        .layer(middleware::from_fn(edge))
        .with_state(app)
}

/// CORS and the request log, around every request.
async fn edge(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = request.method().clone();
    let path = loggable_path(request.uri().path());
    let (parts, body) = request.into_parts();
    let read = Arc::new(AtomicBool::new(http_body::Body::is_end_stream(&body)));
    let request =
        Request::from_parts(parts, axum::body::Body::new(Tracked { inner: body, read: read.clone() }));
    let mut response = if method == Method::OPTIONS {
        // Preflight: answered here, before auth, for any path.
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    if !read.load(Ordering::Relaxed) {
        // Answered before the body was read (a 401, a route that ignores
        // bodies, a 413 past the drain bound): hyper then closes the
        // connection, and without this header a client that reuses it
        // sees its next request fail (found by the conformance kit).
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    // Any origin: auth is a bearer header, never a cookie, so a foreign page
    // gains nothing it could not do with its own fetch.
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type"),
    );
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("retry-after"));
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    // Never the query string (it carries the events token) nor bodies.
    eprintln!(
        "{method} {path} {} {:.1}ms",
        response.status().as_u16(),
        start.elapsed().as_secs_f64() * 1000.0
    );
    response
}

/// A request body that notes when it has been read to its end.
struct Tracked {
    inner: axum::body::Body,
    read: Arc<AtomicBool>,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The path as it may be logged: invite tokens in the path are redacted.
fn loggable_path(path: &str) -> String {
    if path.starts_with("/v1/invites/") {
        "/v1/invites/{token}/accept".to_owned()
    } else {
        path.chars().take(200).collect()
    }
}

/// The signed-in user of a request, from `Authorization: Bearer`, after the
/// rate limit.
#[derive(Debug, Clone)]
pub struct Authed(pub UserId);

/// A verified bearer token.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who.
    pub user: UserId,
    /// Until when (ms since the epoch); sockets close then.
    pub expires_at: Millis,
}

fn rate_limited(wait: std::time::Duration) -> ApiError {
    ApiError::RateLimited { retry_after: wait.as_secs_f64().ceil().max(1.0) as u64 }
}

/// The client's IP: the TCP peer (a proxy in front must be trusted to limit
/// by its own means; `X-Forwarded-For` is not believed).
fn client_ip(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |ConnectInfo(addr)| addr.ip())
}

/// Checks a bearer token: the dev sign-in's own tokens when that is on, else
/// (and also) the identity provider's JWTs. A failure costs the client IP one
/// request of its budget, so guessing tokens is rate-limited too.
async fn authenticate<S: Storage>(
    app: &Arc<App<S>>,
    token: Option<&str>,
    ip: IpAddr,
) -> Result<Session, ApiError> {
    match verify_token(app, token).await {
        Some(session) => {
            app.limiter.check(session.user.as_str(), Instant::now()).map_err(rate_limited)?;
            Ok(session)
        }
        None => {
            app.ip_limiter.check(&ip.to_string(), Instant::now()).map_err(rate_limited)?;
            Err(ApiError::Unauthorized)
        }
    }
}

async fn verify_token<S: Storage>(app: &Arc<App<S>>, token: Option<&str>) -> Option<Session> {
    let token = token?;
    if app.config.dev_sign_in && token.starts_with("s1.") {
        let claims = app.signer.verify_session(token, now_ms()).ok()?;
        return Some(Session { user: claims.user, expires_at: claims.expires_at });
    }
    if !app.jwt.enabled() {
        return None;
    }
    let mut verified = app.jwt.verify(token);
    if verified == Err(JwtError::NoKey) && app.jwt.wants_reload_for(token) {
        // The IdP may have rotated its keys: re-read the JWKS once (rate-limited).
        reload_jwks(app).await;
        verified = app.jwt.verify(token);
    }
    verified.ok().map(|v| Session { user: v.user, expires_at: v.expires_at })
}

/// Re-reads the JWKS off the async threads; a failure keeps the old keys.
pub async fn reload_jwks<S: Storage>(app: &Arc<App<S>>) {
    let app = app.clone();
    let reloaded = tokio::task::spawn_blocking(move || app.jwt.reload()).await;
    if let Ok(Err(e)) = reloaded {
        eprintln!("warning: JWKS reload failed, keeping the previous keys: {e}");
    }
}

impl<S: Storage> FromRequestParts<Arc<App<S>>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App<S>>) -> Result<Self, ApiError> {
        let ip = client_ip(parts);
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        authenticate(app, token, ip).await.map(|s| Authed(s.user))
    }
}

/// The client IP of a request, as an extractor.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(parts)))
    }
}

/// The request body, within the body limit.
fn body(body: Result<Bytes, axum::extract::rejection::BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge("request body over the size limit".into())
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    })
}

/// How much of a body over the limit is still read before the 413 goes
/// out, in multiples of the limit.
const DRAIN_FACTOR: usize = 16;

/// A push body, within the body limit. Over it, the rest is still read (up
/// to `DRAIN_FACTOR` times the limit) and dropped before the 413 goes out:
/// a server that answers and closes while the browser is still uploading
/// makes WebKit report a network error instead of the answer (seen in
/// WebKitGTK 2.50), and the client would retry, as transient, a push that
/// can never fit. Past that bound the connection is just closed.
async fn read_body(mut body: axum::body::Body, limit: usize) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::BadRequest(format!("could not read the body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len());
        if seen <= limit {
            kept.extend_from_slice(&data);
        } else if seen > limit.saturating_mul(DRAIN_FACTOR) {
            break;
        }
    }
    if seen > limit {
        return Err(ApiError::TooLarge("request body over the size limit".into()));
    }
    Ok(kept.into())
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, &serde_json::json!({ "ok": true }))
}

/// DEV-ONLY sign-in: anyone may sign in as anyone. Replace for production.
async fn session<S: Storage>(
    State(app): State<Arc<App<S>>>,
    ClientIp(ip): ClientIp,
    raw: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    app.ip_limiter.check(&ip.to_string(), Instant::now()).map_err(rate_limited)?;
    let request: SessionRequest =
        serde_json::from_slice(&body(raw)?).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let user = UserId::parse(request.user.as_str()).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let expires_at = now_ms().saturating_add(app.config.token_ttl_secs.saturating_mul(1000));
    let token = app.signer.session_token(&user, expires_at);
    Ok(json_response(StatusCode::OK, &SessionResponse { token, user, expires_at }))
}

/// Just enough of a push to tell an unknown protocol from malformed JSON.
#[derive(Deserialize)]
struct ProtocolProbe {
    protocol: Option<serde_json::Value>,
}

fn parse_push(bytes: &[u8]) -> Result<PushRequest, ApiError> {
    let unsupported =
        |v: &serde_json::Value| ApiError::UnsupportedProtocol(v.to_string().chars().take(20).collect());
    match serde_json::from_slice::<PushRequest>(bytes) {
        Ok(request) if request.protocol == PROTOCOL_VERSION => Ok(request),
        Ok(request) => Err(unsupported(&serde_json::Value::from(request.protocol))),
        Err(e) => match serde_json::from_slice::<ProtocolProbe>(bytes) {
            // A future version may change the shape: say so, not "malformed".
            Ok(ProtocolProbe { protocol: Some(v) }) if v != PROTOCOL_VERSION => Err(unsupported(&v)),
            _ => Err(ApiError::BadRequest(e.to_string())),
        },
    }
}

/// Refusals that need no database: sizes, shapes, invite signatures.
fn precheck<S: Storage>(app: &App<S>, user: &UserId, body: &MutationBody, now: Millis) -> Option<Refusal> {
    let limit = app.config.envelope_limit;
    let too_large = |what: &str, len: usize| {
        (len > limit)
            .then(|| Refusal::new("too_large", format!("{what} is {len} bytes, over the limit of {limit}")))
    };
    match body {
        MutationBody::Send { body, .. } | MutationBody::Edit { body, .. } => {
            too_large("message envelope", body.0.len())
        }
        MutationBody::CreateThread { title, members, .. } => too_large("title envelope", title.0.len())
            .or_else(|| {
                // The creator counts, once, whether named or not.
                let total = members
                    .iter()
                    .chain(std::iter::once(user))
                    .collect::<std::collections::BTreeSet<_>>()
                    .len();
                // (A malformed member id never gets here: UserId's
                // Deserialize refuses it, and the whole request is a 400.)
                (total > MAX_MEMBERS).then(|| {
                    Refusal::new("invalid", format!("{total} members, over the limit of {MAX_MEMBERS}"))
                })
            }),
        MutationBody::Delete { .. } => None,
        MutationBody::Join { thread_id, invite } => match app.signer.verify_invite(invite, now) {
            Ok(claims) if claims.thread_id == *thread_id => None,
            _ => Some(Refusal::new("invite_invalid", "the invite is invalid, expired or for another thread")),
        },
    }
}

async fn push<S: Storage>(
    State(app): State<Arc<App<S>>>,
    Authed(user): Authed,
    raw: axum::body::Body,
) -> Result<Response, ApiError> {
    let request = parse_push(&read_body(raw, app.config.body_limit).await?)?;
    if request.mutations.len() > app.config.max_mutations {
        return Err(ApiError::TooLarge(format!(
            "{} mutations in one push, over the limit of {}",
            request.mutations.len(),
            app.config.max_mutations
        )));
    }
    let mut previous = 0;
    for m in &request.mutations {
        if m.mutation_id <= previous {
            return Err(ApiError::BadRequest(format!(
                "mutation ids must be positive and strictly increasing within a push ({} after {previous})",
                m.mutation_id
            )));
        }
        previous = m.mutation_id;
    }
    let now = now_ms();
    let mutations = request
        .mutations
        .into_iter()
        .map(|m| IncomingMutation {
            mutation_id: m.mutation_id,
            precheck: precheck(&app, &user, &m.body, now),
            body: m.body,
        })
        .collect();
    let outcome = app.storage.push(user, request.device_id, mutations, now).await.map_err(|e| match e {
        storage::Error::DeviceForbidden => ApiError::Forbidden {
            code: "forbidden",
            message: "this device id belongs to another user".into(),
        },
        e => ApiError::Internal(e),
    })?;
    app.hub.publish(outcome.pokes);
    Ok(json_response(StatusCode::OK, &outcome.response))
}

/// `GET /v1/pull` parameters, as sent.
#[derive(Debug, Deserialize)]
struct PullParams {
    cursor: Option<u64>,
    limit: Option<u32>,
    thread: Option<String>,
}

async fn pull<S: Storage>(
    State(app): State<Arc<App<S>>>,
    Authed(user): Authed,
    params: Result<Query<PullParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = params.limit.unwrap_or(DEFAULT_PULL_LIMIT);
    if limit == 0 {
        return Err(ApiError::BadRequest("limit must be at least 1".into()));
    }
    let thread = match params.thread {
        // A malformed id cannot name a thread of the caller's: same 404.
        Some(id) => Some(id.parse::<ThreadId>().map_err(|_| ApiError::NotFound)?),
        None => None,
    };
    let query = PullQuery {
        cursor: params.cursor.unwrap_or(0),
        limit: limit.min(MAX_PULL_LIMIT),
        thread,
        max_bytes: app.config.page_bytes,
    };
    match app.storage.pull(user, query).await? {
        Some(page) => Ok(json_response(StatusCode::OK, &page)),
        None => Err(ApiError::NotFound),
    }
}

async fn create_invite<S: Storage>(
    State(app): State<Arc<App<S>>>,
    Authed(user): Authed,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let thread_id = id.parse::<ThreadId>().map_err(|_| ApiError::NotFound)?;
    if !app.storage.is_member(user.clone(), thread_id).await? {
        return Err(ApiError::NotFound);
    }
    let expires_at = now_ms().saturating_add(app.config.invite_ttl_secs.saturating_mul(1000));
    let token = app.signer.invite_token(&InviteClaims {
        thread_id,
        created_by: user,
        expires_at,
        nonce: random_string(12),
    });
    Ok(json_response(StatusCode::OK, &InviteResponse { token, expires_at }))
}

async fn accept_invite<S: Storage>(
    State(app): State<Arc<App<S>>>,
    Authed(user): Authed,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let invalid =
        || ApiError::Forbidden { code: "invite_invalid", message: "the invite is invalid or expired".into() };
    let now = now_ms();
    let claims = app.signer.verify_invite(&token, now).map_err(|_| invalid())?;
    let joined = match app.storage.join(user, claims.thread_id, now).await? {
        Ok(joined) => joined,
        Err(refusal) if refusal.code == "thread_full" => {
            return Err(ApiError::Forbidden { code: "thread_full", message: refusal.message });
        }
        Err(_) => return Err(invalid()),
    };
    app.hub.publish(joined.pokes);
    Ok(json_response(StatusCode::OK, &AcceptResponse { thread_id: claims.thread_id }))
}

/// `GET /v1/events?token=...`: browsers cannot set headers on a WebSocket,
/// so the token comes in the query (which is never logged).
async fn events<S: Storage>(
    State(app): State<Arc<App<S>>>,
    ClientIp(ip): ClientIp,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let token = query.as_deref().and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .map(|t| percent_encoding::percent_decode_str(t).decode_utf8_lossy().into_owned())
    });
    let session = authenticate(&app, token.as_deref(), ip).await?;
    let upgrade = upgrade.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let subscription = app.hub.subscribe();
    let hub = app.hub.clone();
    let limits = SocketLimits {
        max_sockets: app.config.ws_max_sockets,
        ping_interval: app.config.ws_ping_interval,
        idle_timeout: app.config.ws_idle_timeout,
    };
    Ok(upgrade
        .max_message_size(app.config.ws_max_message)
        .max_frame_size(app.config.ws_max_message)
        .on_upgrade(move |socket| {
            hub.serve_socket(socket, session.user, session.expires_at, limits, subscription)
        }))
}
