//! The poke socket: a WebSocket to the server's `GET /v1/events?token=T`
//! (docs/protocol.md §6) that tells the sync loop when to pull, and keeps
//! itself connected.
//!
//! A poke only means "something new, pull now"; pokes can be lost, so the
//! loop also pulls on [`SocketEvent::Connected`] (whatever happened while the
//! socket was down) and on its own schedule. Frames that are not a
//! [`ServerEvent`] are ignored: a lost poke costs latency only.
//!
//! After a failed attempt or a lost connection the socket tries again after
//! exponential backoff with full jitter ([`Backoff`]); the backoff starts over
//! once a connection has stayed up for [`SocketOptions::stable_after_ms`], so
//! a server that accepts and at once drops connections is not hammered. An
//! attempt that is not open within [`SocketOptions::connect_timeout_ms`] is
//! abandoned and counts as failed.
//!
//! While open, the socket sends `{"type":"ping"}` every
//! [`SocketOptions::heartbeat_ms`]; the server answers `{"type":"pong"}`. A
//! socket that heard nothing (no pong, no poke) during a whole interval is
//! taken for dead (a proxy or a sleeping network can drop a connection
//! without either end seeing a close): it is closed and reconnected with
//! backoff, like a lost connection.
//!
//! Dropping the [`PokeSocket`] stops it for good: the socket is closed, timers
//! are cancelled, and no callback runs afterwards.
//!
//! A bad or expired token gets a `401` and no upgrade, which a browser reports
//! only as a closed socket: the socket keeps retrying with backoff. The HTTP
//! requests see the 401; after a new sign-in, make a new socket.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{MessageEvent, WebSocket};

use crate::core::model::Millis;
use crate::core::outbox::Backoff;
use crate::core::sync::ServerEvent;
use crate::web::timers::Timeout;

/// What the socket reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketEvent {
    /// The socket is open. Pokes sent while it was down are lost: pull now.
    Connected,
    /// An attempt failed or the connection was lost; the next attempt starts
    /// in `retry_in_ms`. Reported after every failed attempt.
    Disconnected {
        /// The backoff before the next attempt.
        retry_in_ms: Millis,
    },
    /// A frame from the server.
    Server(ServerEvent),
}

/// How the socket reconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOptions {
    /// The waits between attempts.
    pub backoff: Backoff,
    /// A connection open this long resets the backoff.
    pub stable_after_ms: Millis,
    /// An attempt not open after this long is closed and counts as failed.
    pub connect_timeout_ms: Millis,
    /// Ping interval while open; a whole interval without a frame from the
    /// server closes the socket (and reconnects).
    pub heartbeat_ms: Millis,
}

impl SocketOptions {
    /// [`Backoff::DEFAULT`] (500 ms doubling to 60 s), stable after 10 s,
    /// connect timeout 15 s, heartbeat 25 s (the server closes sockets
    /// silent for 120 s).
    pub const DEFAULT: SocketOptions = SocketOptions {
        backoff: Backoff::DEFAULT,
        stable_after_ms: 10_000,
        connect_timeout_ms: 15_000,
        heartbeat_ms: 25_000,
    };
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions::DEFAULT
    }
}

type Callback = Rc<RefCell<dyn FnMut(SocketEvent)>>;

/// A self-reconnecting poke socket; dropping it closes it for good.
#[must_use = "dropping the PokeSocket closes it"]
pub struct PokeSocket {
    inner: Rc<RefCell<Inner>>,
}

impl std::fmt::Debug for PokeSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.borrow();
        f.debug_struct("PokeSocket")
            .field("connected", &inner.connected)
            .field("failures", &inner.failures)
            .finish()
    }
}

struct Inner {
    url: String,
    options: SocketOptions,
    /// Failed attempts since the last stable connection: the backoff exponent.
    failures: u32,
    connected: bool,
    socket: Option<Live>,
    /// The connect timeout while connecting, the stability timer while
    /// open, the backoff while waiting to reconnect.
    timer: Option<Timeout>,
    /// The next heartbeat check, while open.
    heartbeat: Option<Timeout>,
    /// Whether a frame came since the last heartbeat check.
    heard: bool,
    on_event: Callback,
}

/// An open or opening WebSocket with its handlers, which it owns: dropping
/// it unhooks them (so nothing fires afterwards) and closes the socket.
struct Live {
    socket: WebSocket,
    _on_open: Closure<dyn FnMut()>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut()>,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.socket.set_onopen(None);
        self.socket.set_onmessage(None);
        self.socket.set_onclose(None);
        // Harmless if it is already closing or closed.
        let _ = self.socket.close();
    }
}

impl PokeSocket {
    /// Connects to `url` (see [`HttpTransport::events_url`]) with the default
    /// options, and calls `on_event` until dropped.
    ///
    /// [`HttpTransport::events_url`]: crate::web::http::HttpTransport::events_url
    pub fn connect(url: impl Into<String>, on_event: impl FnMut(SocketEvent) + 'static) -> PokeSocket {
        PokeSocket::connect_with(url, SocketOptions::DEFAULT, on_event)
    }

    /// [`connect`](PokeSocket::connect) with other options.
    pub fn connect_with(
        url: impl Into<String>,
        options: SocketOptions,
        on_event: impl FnMut(SocketEvent) + 'static,
    ) -> PokeSocket {
        let inner = Rc::new(RefCell::new(Inner {
            url: url.into(),
            options,
            failures: 0,
            connected: false,
            socket: None,
            timer: None,
            heartbeat: None,
            heard: false,
            on_event: Rc::new(RefCell::new(on_event)),
        }));
        open(&inner);
        PokeSocket { inner }
    }

    /// Whether the socket is open now.
    pub fn is_connected(&self) -> bool {
        self.inner.borrow().connected
    }

    /// If the socket is waiting out a backoff, tries at once (say, on the
    /// browser's `online` event). Does nothing while connecting or open.
    pub fn reconnect_now(&self) {
        let waiting = self.inner.borrow().socket.is_none();
        if waiting {
            open(&self.inner);
        }
    }
}

impl Drop for PokeSocket {
    fn drop(&mut self) {
        // Take them out first: their drops must not run under the borrow.
        let (socket, timer, heartbeat) = {
            let mut inner = self.inner.borrow_mut();
            (inner.socket.take(), inner.timer.take(), inner.heartbeat.take())
        };
        drop((socket, timer, heartbeat));
    }
}

/// Starts an attempt; a socket that cannot even be made counts as failed.
fn open(this: &Rc<RefCell<Inner>>) {
    let url = this.borrow().url.clone();
    let socket = match WebSocket::new(&url) {
        Ok(socket) => socket,
        Err(_) => return on_closed(this),
    };
    let weak = Rc::downgrade(this);
    let on_open = handler(&weak, |this| on_opened(&this));
    let on_close = handler(&weak, |this| on_closed(&this));
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new({
        let weak = weak.clone();
        move |message: MessageEvent| {
            let Some(this) = weak.upgrade() else { return };
            this.borrow_mut().heard = true;
            let Some(text) = message.data().as_string() else { return };
            if let Ok(event) = serde_json::from_str::<ServerEvent>(&text) {
                emit(&this, SocketEvent::Server(event));
            }
        }
    });
    socket.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    socket.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    // `error` is always followed by `close`, which is all that matters here.
    socket.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    let timeout = this.borrow().options.connect_timeout_ms;
    let abandon = Timeout::new(timeout, {
        let socket = socket.clone();
        // Closing a connecting socket fires `close`, hence a retry.
        move || {
            let _ = socket.close();
        }
    });
    let previous = {
        let mut inner = this.borrow_mut();
        let live = Live { socket, _on_open: on_open, _on_message: on_message, _on_close: on_close };
        (inner.socket.replace(live), inner.timer.replace(abandon))
    };
    drop(previous);
}

fn handler(weak: &Weak<RefCell<Inner>>, f: fn(Rc<RefCell<Inner>>)) -> Closure<dyn FnMut()> {
    let weak = weak.clone();
    Closure::new(move || {
        if let Some(this) = weak.upgrade() {
            f(this);
        }
    })
}

fn on_opened(this: &Rc<RefCell<Inner>>) {
    let stable = this.borrow().options.stable_after_ms;
    let weak = Rc::downgrade(this);
    let reset = Timeout::new(stable, move || {
        if let Some(this) = weak.upgrade() {
            this.borrow_mut().failures = 0;
        }
    });
    let previous = {
        let mut inner = this.borrow_mut();
        inner.connected = true;
        inner.timer.replace(reset)
    };
    drop(previous);
    schedule_heartbeat(this);
    emit(this, SocketEvent::Connected);
}

/// Pings now and checks at the end of the interval that something came back.
fn schedule_heartbeat(this: &Rc<RefCell<Inner>>) {
    let interval = this.borrow().options.heartbeat_ms;
    let weak = Rc::downgrade(this);
    let check = Timeout::new(interval, move || {
        let Some(this) = weak.upgrade() else { return };
        let heard = std::mem::take(&mut this.borrow_mut().heard);
        if heard {
            schedule_heartbeat(&this);
        } else {
            on_closed(&this); // silent: drop it and reconnect with backoff
        }
    });
    let previous = {
        let mut inner = this.borrow_mut();
        inner.heard = false;
        if let Some(live) = &inner.socket {
            let _ = live.socket.send_with_str(r#"{"type":"ping"}"#);
        }
        inner.heartbeat.replace(check)
    };
    drop(previous);
}

fn on_closed(this: &Rc<RefCell<Inner>>) {
    let (backoff, attempt) = {
        let inner = this.borrow();
        (inner.options.backoff, inner.failures)
    };
    let retry_in_ms = backoff.delay(attempt, jitter());
    let weak = Rc::downgrade(this);
    let retry = Timeout::new(retry_in_ms, move || {
        if let Some(this) = weak.upgrade() {
            open(&this);
        }
    });
    let previous = {
        let mut inner = this.borrow_mut();
        inner.connected = false;
        inner.failures = inner.failures.saturating_add(1);
        (inner.socket.take(), inner.timer.replace(retry), inner.heartbeat.take())
    };
    // Drops the closure that is running now; wasm-bindgen frees it only
    // once it returns.
    drop(previous);
    emit(this, SocketEvent::Disconnected { retry_in_ms });
}

/// Calls the callback without holding any borrow of the state, so that the
/// callback may drop the socket (the drop then cancels what was scheduled).
fn emit(this: &Rc<RefCell<Inner>>, event: SocketEvent) {
    let callback = Rc::clone(&this.borrow().on_event);
    // A callback re-entered synchronously is skipped rather than panicking.
    if let Ok(mut callback) = callback.try_borrow_mut() {
        callback(event);
    };
}

/// Uniform over 53 bits, which is plenty for a jitter.
fn jitter() -> u64 {
    (js_sys::Math::random() * (1u64 << 53) as f64) as u64
}
