//! The background sync loop in the browser: runs the engine's sync rounds
//! (DESIGN.md §5) when something may have changed — a local write, a poke on
//! the event socket, `online`, the tab becoming visible, `syncNow()` — and
//! otherwise sleeps until the outbox's next row falls due, or a slow poll.
//!
//! Only the sync leader among a user's tabs runs rounds and keeps the socket
//! (see `tabs`); a follower's loop sleeps until it is made leader. The loop
//! gets a token from the app's `getToken` (or, when asked for, the server's
//! dev-only session endpoint) at start and again whenever the server says
//! the token is no good (401); while that fails it waits with backoff. A 401
//! is never a mutation's rejection, so a queue never fails for an expired
//! session: it waits for the next token. Dropping the [`SyncDriver`] stops
//! the loop, the socket and the listeners.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use js_sys::{Function, Promise};
use wasm_bindgen::{JsCast as _, JsValue};
use wasm_bindgen_futures::{spawn_local, JsFuture};

use crate::core::model::{Millis, UserId};
use crate::core::outbox::Backoff;
use crate::core::sync::ServerEvent;
use crate::engine::{ClientEvent, ErrorInfo, SyncState};
use crate::ports::Clock;
use crate::web::bindings::BrowserClient;
use crate::web::http::{sign_in, HttpTransport, ServerUrl};
use crate::web::timers::{BrowserEvent, BrowserEvents, Trigger};
use crate::web::ws::{PokeSocket, SocketEvent, SocketOptions};
use crate::web::BrowserClock;

/// With nothing due and no poke, pull anyway this often (pokes can be lost).
const POLL_MS: Millis = 60_000;

/// Where the session token comes from.
pub enum Session {
    /// The app gave a token; on 401 the loop waits for `setToken`.
    Token(String),
    /// The app's `getToken`: called at start (unless a first token is given)
    /// and on every 401.
    GetToken {
        /// A first token, if the app gave one.
        token: Option<String>,
        /// `() => Promise<string>`.
        get: Function,
    },
    /// Sign in as this user with the dev-only endpoint, again on 401.
    DevSignIn(UserId),
}

/// How a refused or missing token is replaced.
enum Refresh {
    GetToken(Function),
    DevSignIn(UserId),
}

/// Calls the app's `getToken` and waits for its promise: the token, or
/// `None` if it threw, rejected or gave no non-empty string.
async fn call_get_token(get: &Function) -> Option<String> {
    let value = get.call0(&JsValue::NULL).ok()?;
    let value = match value.dyn_into::<Promise>() {
        Ok(promise) => JsFuture::from(promise).await.ok()?,
        Err(value) => value,
    };
    value.as_string().filter(|t| !t.is_empty())
}

struct Shared {
    client: Rc<BrowserClient>,
    transport: HttpTransport,
    refresh: Option<Refresh>,
    socket_options: SocketOptions,
    has_token: Cell<bool>,
    trigger: Trigger,
    /// The next round first makes rows waiting out a backoff due.
    urgent: Cell<bool>,
    leader: Cell<bool>,
    stopped: Cell<bool>,
    socket: RefCell<Option<PokeSocket>>,
    /// Whether the socket was open at its last report.
    socket_up: Cell<bool>,
}

/// The running loop; dropping it stops everything.
pub struct SyncDriver {
    shared: Rc<Shared>,
    _events: BrowserEvents,
}

impl SyncDriver {
    /// Starts the loop for `client` against `server`. It runs rounds only
    /// while [`set_leader`](Self::set_leader) says this tab leads.
    /// `heartbeat_ms` overrides the socket's heartbeat interval.
    pub fn start(
        client: Rc<BrowserClient>,
        server: ServerUrl,
        session: Session,
        heartbeat_ms: Option<Millis>,
        leader: bool,
    ) -> SyncDriver {
        let (token, refresh) = match session {
            Session::Token(token) => (token, None),
            Session::GetToken { token, get } => (token.unwrap_or_default(), Some(Refresh::GetToken(get))),
            Session::DevSignIn(user) => (String::new(), Some(Refresh::DevSignIn(user))),
        };
        let mut socket_options = SocketOptions::DEFAULT;
        if let Some(ms) = heartbeat_ms {
            socket_options.heartbeat_ms = ms;
        }
        let shared = Rc::new(Shared {
            client,
            has_token: Cell::new(!token.is_empty()),
            transport: HttpTransport::new(server, token),
            refresh,
            socket_options,
            trigger: Trigger::new(),
            urgent: Cell::new(true),
            leader: Cell::new(leader),
            stopped: Cell::new(false),
            socket: RefCell::default(),
            socket_up: Cell::new(false),
        });
        let weak = Rc::downgrade(&shared);
        let events = BrowserEvents::listen(move |event| {
            let Some(shared) = weak.upgrade() else { return };
            match event {
                BrowserEvent::Online => {
                    if let Some(socket) = shared.socket.borrow().as_ref() {
                        socket.reconnect_now();
                    }
                    shared.wake(true);
                }
                BrowserEvent::Offline => shared.client.set_sync_state(
                    SyncState::Offline,
                    Some(ErrorInfo { code: "network".into(), message: "the browser is offline".into() }),
                ),
                BrowserEvent::Visible => shared.wake(true),
                BrowserEvent::Hidden => {}
            }
        });
        spawn_local(run(shared.clone()));
        SyncDriver { shared, _events: events }
    }

    /// Something was written locally: push it soon.
    pub fn wake(&self) {
        self.shared.wake(false);
    }

    /// Whether this tab runs the rounds.
    pub fn is_leader(&self) -> bool {
        self.shared.leader.get()
    }

    /// This tab became (or stopped being) the sync leader.
    pub fn set_leader(&self, leader: bool) {
        if self.shared.leader.replace(leader) == leader {
            return;
        }
        if leader {
            self.shared.client.became_leader();
            self.shared.wake(true);
        } else {
            self.shared.socket.borrow_mut().take();
        }
        self.shared.client.emit(&ClientEvent::Leader { leader });
    }

    /// Uses a new token (after the app's own sign-in) and syncs with it.
    pub fn set_token(&self, token: &str) {
        self.shared.transport.set_token(token);
        self.shared.has_token.set(true);
        self.shared.socket.borrow_mut().take();
        self.shared.wake(true);
    }

    /// The transport, for calls outside rounds (invites).
    pub async fn transport(&self) -> Result<&HttpTransport, ErrorInfo> {
        if !self.shared.has_token.get() {
            self.shared.sign_in().await?;
        }
        Ok(&self.shared.transport)
    }

    /// Runs a round now (waking rows in backoff first) and returns when it
    /// is done; in a follower tab, only wakes the leader's loop.
    pub async fn sync_now(&self) -> crate::engine::Result<()> {
        let shared = &self.shared;
        if !shared.leader.get() {
            return Ok(());
        }
        if !shared.has_token.get() && shared.sign_in().await.is_err() {
            return Ok(());
        }
        shared.client.wake_outbox().await?;
        shared.client.sync_round(&shared.transport).await?;
        Ok(())
    }
}

impl Drop for SyncDriver {
    fn drop(&mut self) {
        self.shared.stopped.set(true);
        self.shared.socket.borrow_mut().take();
        self.shared.trigger.fire();
    }
}

impl Shared {
    fn wake(&self, urgent: bool) {
        if urgent {
            self.urgent.set(true);
        }
        self.trigger.fire();
    }

    async fn sign_in(&self) -> Result<(), ErrorInfo> {
        let user = match &self.refresh {
            None => {
                let why = ErrorInfo {
                    code: "unauthorized".into(),
                    message: "the session token was refused".into(),
                };
                self.client.set_sync_state(SyncState::Error, Some(why.clone()));
                return Err(why);
            }
            Some(Refresh::GetToken(get)) => {
                return match call_get_token(get).await {
                    Some(token) => {
                        self.transport.set_token(token);
                        self.has_token.set(true);
                        Ok(())
                    }
                    None => {
                        let why = ErrorInfo {
                            code: "token_unavailable".into(),
                            message: "getToken threw, rejected or gave no token".into(),
                        };
                        self.client.set_sync_state(SyncState::Error, Some(why.clone()));
                        Err(why)
                    }
                };
            }
            Some(Refresh::DevSignIn(user)) => user,
        };
        match sign_in(self.transport.server(), user).await {
            Ok(session) => {
                self.transport.set_token(session.token);
                self.has_token.set(true);
                Ok(())
            }
            Err(failure) => {
                let why = ErrorInfo::from(&failure);
                self.client.set_sync_state(why.sync_state(), Some(why.clone()));
                Err(why)
            }
        }
    }

    fn ensure_socket(self: &Rc<Self>) {
        if self.socket.borrow().is_some() {
            return;
        }
        let weak: Weak<Shared> = Rc::downgrade(self);
        let socket =
            PokeSocket::connect_with(self.transport.events_url(), self.socket_options, move |event| {
                let Some(shared) = weak.upgrade() else { return };
                match event {
                    // Whatever happened while the socket was down: pull now.
                    SocketEvent::Connected => {
                        shared.socket_up.set(true);
                        shared.wake(true);
                    }
                    SocketEvent::Server(ServerEvent::Poke { .. }) => shared.wake(true),
                    // An open socket was lost (the server closes it when its
                    // token expires): a round tells, and on a 401 gets a new
                    // token and a new socket. Failed attempts do not wake.
                    SocketEvent::Disconnected { .. } => {
                        if shared.socket_up.replace(false) {
                            shared.wake(false);
                        }
                    }
                }
            });
        *self.socket.borrow_mut() = Some(socket);
    }
}

async fn run(shared: Rc<Shared>) {
    let mut failures: u32 = 0;
    loop {
        if shared.stopped.get() || shared.client.is_closed() {
            break;
        }
        if !shared.leader.get() {
            shared.trigger.wait(None).await;
            continue;
        }
        let retry_in =
            |failures: u32| Backoff::DEFAULT.delay(failures, u64::from_le_bytes(crate::engine::random()));
        if !shared.has_token.get() && shared.sign_in().await.is_err() {
            failures = failures.saturating_add(1);
            shared.trigger.wait(Some(retry_in(failures).max(1_000))).await;
            continue;
        }
        shared.ensure_socket();
        if shared.urgent.take() {
            let _ = shared.client.wake_outbox().await;
        }
        let wait = match shared.client.sync_round(&shared.transport).await {
            Ok(report) => match report.failure {
                None => {
                    failures = 0;
                    report.next_wake.map(|at| at.saturating_sub(BrowserClock.now()))
                }
                Some(why) => {
                    if why.code == "unauthorized" && shared.refresh.is_some() {
                        // A new token on the next turn, and a fresh socket with it.
                        shared.has_token.set(false);
                        shared.socket.borrow_mut().take();
                    }
                    failures = failures.saturating_add(1);
                    let backoff = retry_in(failures);
                    Some(
                        report
                            .next_wake
                            .map_or(backoff, |at| at.saturating_sub(BrowserClock.now()).max(backoff)),
                    )
                }
            },
            Err(_) if shared.client.is_closed() => break,
            Err(_) => {
                failures = failures.saturating_add(1);
                Some(retry_in(failures))
            }
        };
        shared.trigger.wait(Some(wait.unwrap_or(POLL_MS).min(POLL_MS))).await;
    }
    shared.socket.borrow_mut().take();
}
