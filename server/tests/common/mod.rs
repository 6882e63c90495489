//! Test harness: a server on 127.0.0.1 (in-process or the real binary), a
//! small HTTP client, and builders for protocol messages.

#![allow(dead_code)] // each test binary uses part of it

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use dovecote::core::envelope::Envelope;
use dovecote::core::model::{DeviceId, MessageId, ThreadId, UserId};
use dovecote::core::sync::{
    MutationBody, PullResponse, PushMutation, PushRequest, PushResponse, SessionResponse, PROTOCOL_VERSION,
};
use dovecote_server::config::{Config, Durability};
use dovecote_server::routes::App;
use dovecote_server::storage::sqlite::SqliteStorage;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub mod pg;

/// Fresh ids without randomness: a counter in the random part.
pub fn next_id() -> dovecote::core::model::Id {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut random = [0u8; 10];
    random[2..].copy_from_slice(&n.to_be_bytes());
    // Mix in the process id so two test processes on one DB never collide.
    random[0..2].copy_from_slice(&(std::process::id() as u16).to_be_bytes());
    dovecote::core::model::Id::from_parts(1_700_000_000_000, random)
}
pub fn thread_id() -> ThreadId {
    ThreadId(next_id())
}
pub fn message_id() -> MessageId {
    MessageId(next_id())
}
pub fn device_id() -> DeviceId {
    DeviceId(next_id())
}
pub fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}
/// Stand-in ciphertext: the server must store it byte for byte.
pub fn sealed(text: &str) -> Envelope {
    let mut bytes = vec![1u8, 0xff, 0x00];
    bytes.extend_from_slice(text.as_bytes());
    Envelope(bytes)
}

pub fn create_thread(id: u64, thread: ThreadId, members: &[&str]) -> PushMutation {
    PushMutation {
        mutation_id: id,
        body: MutationBody::CreateThread {
            thread_id: thread,
            title: sealed("title"),
            members: members.iter().map(|m| user(m)).collect(),
            created_at: 1,
        },
    }
}
pub fn send(id: u64, thread: ThreadId, message: MessageId, text: &str) -> PushMutation {
    PushMutation {
        mutation_id: id,
        body: MutationBody::Send { thread_id: thread, message_id: message, body: sealed(text), client_ts: 2 },
    }
}
pub fn edit(id: u64, thread: ThreadId, message: MessageId, text: &str) -> PushMutation {
    PushMutation {
        mutation_id: id,
        body: MutationBody::Edit { thread_id: thread, message_id: message, body: sealed(text) },
    }
}
pub fn delete(id: u64, thread: ThreadId, message: MessageId) -> PushMutation {
    PushMutation { mutation_id: id, body: MutationBody::Delete { thread_id: thread, message_id: message } }
}
pub fn push_request(device: DeviceId, mutations: Vec<PushMutation>) -> PushRequest {
    PushRequest { protocol: PROTOCOL_VERSION, device_id: device, mutations }
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> T {
        assert_eq!(self.status, StatusCode::OK, "{}", String::from_utf8_lossy(&self.body));
        serde_json::from_slice(&self.body).unwrap()
    }
    /// The `error.code` of an error answer.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code: {:?}", self.body))
            .to_owned()
    }
}

/// A small HTTP client bound to one server.
#[derive(Clone)]
pub struct Http {
    pub base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    pub fn new(base: &str) -> Self {
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(64).build_http();
        Http { base: base.to_owned(), client }
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Reply {
        self.try_request(method, path, token, body).await.expect("request failed")
    }

    /// A request that may fail at the transport (e.g. the server was killed).
    pub async fn try_request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, String> {
        let mut builder = Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        let request = builder.body(Full::new(Bytes::from(body.unwrap_or_default()))).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .map_err(|_| "request timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply { status, headers, body })
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.request(Method::GET, path, token, None).await
    }
    pub async fn post(&self, path: &str, token: Option<&str>, body: impl Into<Vec<u8>>) -> Reply {
        self.request(Method::POST, path, token, Some(body.into())).await
    }
    pub async fn post_json<T: serde::Serialize>(&self, path: &str, token: Option<&str>, body: &T) -> Reply {
        self.post(path, token, serde_json::to_vec(body).unwrap()).await
    }

    /// Signs in (dev sign-in) and returns the token.
    pub async fn session(&self, user: &str) -> String {
        let reply = self.post("/v1/session", None, format!(r#"{{"user":"{user}"}}"#)).await;
        reply.parse::<SessionResponse>().token
    }
    pub async fn push(&self, token: &str, request: &PushRequest) -> Reply {
        self.post_json("/v1/push", Some(token), request).await
    }
    /// A push that must succeed.
    pub async fn push_ok(&self, token: &str, request: &PushRequest) -> PushResponse {
        self.push(token, request).await.parse()
    }
    pub async fn pull(&self, token: &str, query: &str) -> Reply {
        self.get(&format!("/v1/pull?{query}"), Some(token)).await
    }
    /// Pulls every page after `cursor` (optionally one thread); bounded.
    pub async fn pull_all(
        &self,
        token: &str,
        cursor: u64,
        limit: u32,
        thread: Option<ThreadId>,
    ) -> Vec<PullResponse> {
        let mut pages = Vec::new();
        let mut cursor = cursor;
        for _ in 0..100_000 {
            let thread = thread.map(|t| format!("&thread={t}")).unwrap_or_default();
            let page: PullResponse =
                self.pull(token, &format!("cursor={cursor}&limit={limit}{thread}")).await.parse();
            cursor = page.cursor;
            let more = page.has_more;
            pages.push(page);
            if !more {
                return pages;
            }
        }
        panic!("pull did not finish");
    }
}

/// A server in this process on a temp SQLite file; stopped on drop.
pub struct TestServer {
    pub http: Http,
    pub addr: std::net::SocketAddr,
    pub storage: SqliteStorage,
    pub app: Arc<App<SqliteStorage>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path().join("test.db"), ([127, 0, 0, 1], 0).into());
        // Tests check logic, not power-loss durability; NORMAL is crash-safe.
        config.durability = Durability::Normal;
        // Most tests sign in with the dev sign-in, many users from one IP.
        config.dev_sign_in = true;
        config.ip_rate_limit = 100_000;
        configure(&mut config);
        let storage = SqliteStorage::open(&config.db, config.durability).unwrap();
        let listener = tokio::net::TcpListener::bind(config.addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = App::new(storage.clone(), config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(dovecote_server::serve(app.clone(), listener, async move {
            let _ = stopped.await;
        }));
        let task = tokio::spawn(async move {
            task.await.unwrap().unwrap();
        });
        TestServer {
            http: Http::new(&format!("http://{addr}")),
            addr,
            storage,
            app,
            stop: Some(stop),
            task: Some(task),
            dir,
        }
    }

    pub fn dump(&self) -> String {
        self.storage.dump().unwrap()
    }

    /// Stops the server and waits for it (bounded).
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), task).await.expect("server stops").unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The real binary on a database file, on 127.0.0.1 port 0; killed on drop.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub http: Http,
    pub addr: String,
    /// How long until it printed its address.
    pub startup: Duration,
    stderr: Arc<std::sync::Mutex<String>>,
}

impl ServerProcess {
    /// The binary with `--dev-sign-in` (loopback) and `extra` flags.
    pub fn start(db: &std::path::Path, extra: &[&str]) -> Self {
        let mut args = vec!["--dev-sign-in", "--ip-rate-limit", "100000"];
        args.extend_from_slice(extra);
        Self::start_bare(db, &args)
    }

    /// The binary with only `--db`, `--addr 127.0.0.1:0` and `extra`.
    pub fn start_bare(db: &std::path::Path, extra: &[&str]) -> Self {
        use std::io::{BufRead, BufReader, Read};
        use std::process::{Command, Stdio};
        let started = std::time::Instant::now();
        // DOVECOTE_SERVER_BIN runs the suite against another build (e.g. release).
        let binary = std::env::var_os("DOVECOTE_SERVER_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_dovecote-server").into());
        let mut child = Command::new(binary)
            .arg("--db")
            .arg(db)
            .args(["--addr", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("server binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("no address printed; stderr: {}", stderr.lock().unwrap());
            }
        };
        let startup = started.elapsed();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        let addr = base.strip_prefix("http://").unwrap().to_owned();
        ServerProcess { child, http: Http::new(base), addr, startup, stderr }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends `signal` (e.g. "TERM", "INT") and waits for the exit (bounded).
    pub fn signal_and_wait(&mut self, signal: &str) -> std::process::ExitStatus {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        self.wait(Duration::from_secs(10)).expect("server exits after the signal")
    }

    pub fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
