//! The background sync loop in the browser: runs the engine's sync rounds
//! (DESIGN.md §5) when something may have changed — a local write, a poke on
//! the event socket, `online`, the tab becoming visible, `syncNow()` — and
//! otherwise sleeps until the outbox's next row falls due, or a slow poll.
//!
//! Only the sync leader among a user's tabs runs rounds and keeps the socket
//! (see `tabs`); a follower's loop sleeps until it is made leader. The loop
//! signs in with the server's dev-only session endpoint when the app gave no
//! token, and again when the server says the token expired (401), so a
//! queue never fails for an expired session. Dropping the [`SyncDriver`]
//! stops the loop, the socket and the listeners.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use wasm_bindgen_futures::spawn_local;

use crate::core::model::{Millis, UserId};
use crate::core::outbox::Backoff;
use crate::core::sync::ServerEvent;
use crate::engine::{ClientEvent, ErrorInfo, SyncState};
use crate::ports::Clock;
use crate::web::bindings::BrowserClient;
use crate::web::http::{sign_in, HttpTransport, ServerUrl};
use crate::web::timers::{BrowserEvent, BrowserEvents, Trigger};
use crate::web::ws::{PokeSocket, SocketEvent};
use crate::web::BrowserClock;

/// With nothing due and no poke, pull anyway this often (pokes can be lost).
const POLL_MS: Millis = 60_000;

/// Where the session token comes from.
pub enum Session {
    /// The app gave a token; on 401 the loop waits for a new one.
    Token(String),
    /// Sign in as this user with the dev-only endpoint, again on 401.
    DevSignIn(UserId),
}

struct Shared {
    client: Rc<BrowserClient>,
    transport: HttpTransport,
    sign_in_as: Option<UserId>,
    has_token: Cell<bool>,
    trigger: Trigger,
    /// The next round first makes rows waiting out a backoff due.
    urgent: Cell<bool>,
    leader: Cell<bool>,
    stopped: Cell<bool>,
    socket: RefCell<Option<PokeSocket>>,
}

/// The running loop; dropping it stops everything.
pub struct SyncDriver {
    shared: Rc<Shared>,
    _events: BrowserEvents,
}

impl SyncDriver {
    /// Starts the loop for `client` against `server`. It runs rounds only
    /// while [`set_leader`](Self::set_leader) says this tab leads.
    pub fn start(client: Rc<BrowserClient>, server: ServerUrl, session: Session, leader: bool) -> SyncDriver {
        let (token, sign_in_as) = match session {
            Session::Token(token) => (token, None),
            Session::DevSignIn(user) => (String::new(), Some(user)),
        };
        let shared = Rc::new(Shared {
            client,
            has_token: Cell::new(!token.is_empty()),
            transport: HttpTransport::new(server, token),
            sign_in_as,
            trigger: Trigger::new(),
            urgent: Cell::new(true),
            leader: Cell::new(leader),
            stopped: Cell::new(false),
            socket: RefCell::default(),
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
        let Some(user) = &self.sign_in_as else {
            let why =
                ErrorInfo { code: "unauthorized".into(), message: "the session token was refused".into() };
            self.client.set_sync_state(SyncState::Error, Some(why.clone()));
            return Err(why);
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
        let socket = PokeSocket::connect(self.transport.events_url(), move |event| {
            let Some(shared) = weak.upgrade() else { return };
            match event {
                // Whatever happened while the socket was down: pull now.
                SocketEvent::Connected | SocketEvent::Server(ServerEvent::Poke { .. }) => shared.wake(true),
                SocketEvent::Disconnected { .. } => {}
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
                    if why.code == "unauthorized" && shared.sign_in_as.is_some() {
                        // Sign in again on the next turn, with a fresh socket.
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
