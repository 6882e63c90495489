//! Pokes over WebSocket (`GET /v1/events`): after a commit, every open socket
//! of every member of a changed thread gets `{"type":"poke","cursor":C}`.
//!
//! One broadcast channel carries every poke; each socket keeps those for its
//! user. That is O(sockets) work per poke, fine for a reference server. A
//! socket that falls behind gets one poke at the newest seq instead of the
//! ones it missed: a poke only says "pull", so nothing is lost.
//!
//! Limits (docs/protocol.md, "Events"): a client message larger than
//! `ws_max_message` closes that socket (axum's limit, enforced as frames
//! arrive); at most `ws_max_sockets` per user, the oldest closed first; a
//! WebSocket ping every `ws_ping_interval`, and a close after
//! `ws_idle_timeout` without any frame from the client (a pong, a ping or a
//! text `{"type":"ping"}`, which is answered with `{"type":"pong"}` so that a
//! browser, which cannot see protocol pings, can tell a live socket from a
//! silent one); and a close when the socket's token expires.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use dovecote::core::model::{Millis, UserId};
use dovecote::core::sync::ServerEvent;
use tokio::sync::{broadcast, watch, Notify};
use tokio::time::Instant;

use crate::storage::Poke;

/// Pokes waiting per socket before it counts as lagging.
const CHANNEL_CAPACITY: usize = 1024;

/// Close code 1008 (policy violation): the token expired, or too many sockets.
const CLOSE_POLICY: u16 = 1008;
/// Close code 1001 (going away): the server shuts down, or the client went silent.
const CLOSE_GOING_AWAY: u16 = 1001;

/// Per-socket limits, from the config.
#[derive(Debug, Clone, Copy)]
pub struct SocketLimits {
    /// Open sockets per user.
    pub max_sockets: usize,
    /// Ping interval.
    pub ping_interval: Duration,
    /// Close after this long without a client frame.
    pub idle_timeout: Duration,
}

/// An open socket's id and its "close now" signal.
type OpenSocket = (u64, Arc<Notify>);

/// Fans pokes out to sockets.
#[derive(Debug)]
pub struct Hub {
    pokes: broadcast::Sender<Arc<Poke>>,
    newest: AtomicU64,
    closing: watch::Sender<bool>,
    /// Open sockets per user, oldest first, each with its "close now" signal.
    open: Mutex<HashMap<UserId, VecDeque<OpenSocket>>>,
    next_socket: AtomicU64,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            pokes: broadcast::channel(CHANNEL_CAPACITY).0,
            newest: AtomicU64::new(0),
            closing: watch::channel(false).0,
            open: Mutex::new(HashMap::new()),
            next_socket: AtomicU64::new(1),
        }
    }
}

/// One socket's subscription, taken before the upgrade so that no poke sent
/// after the client sees the handshake can be missed.
#[derive(Debug)]
pub struct Subscription {
    pokes: broadcast::Receiver<Arc<Poke>>,
    closing: watch::Receiver<bool>,
}

/// Removes a socket from [`Hub::open`] however its task ends.
struct Registered<'a> {
    hub: &'a Hub,
    user: UserId,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut open = self.hub.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = open.get_mut(&self.user) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                open.remove(&self.user);
            }
        }
    }
}

/// Sends within `limit`: a peer that stopped reading must not hold the task
/// (and its timers) up until TCP gives up.
async fn send(socket: &mut WebSocket, message: Message, limit: Duration) -> bool {
    matches!(tokio::time::timeout(limit, socket.send(message)).await, Ok(Ok(())))
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
}

impl Hub {
    /// Sends pokes for a committed change (no-op without sockets).
    pub fn publish(&self, pokes: Vec<Poke>) {
        for poke in pokes {
            self.newest.fetch_max(poke.cursor, Ordering::Relaxed);
            let _ = self.pokes.send(Arc::new(poke)); // Err only means no sockets.
        }
    }

    /// A new socket's subscription.
    pub fn subscribe(&self) -> Subscription {
        Subscription { pokes: self.pokes.subscribe(), closing: self.closing.subscribe() }
    }

    /// Closes every socket, for shutdown (open sockets would otherwise hold
    /// graceful shutdown up forever).
    pub fn close_all(&self) {
        self.closing.send_replace(true);
    }

    /// How many sockets `user` has open.
    pub fn open_sockets(&self, user: &UserId) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).get(user).map_or(0, VecDeque::len)
    }

    /// Registers a socket of `user`, telling the oldest ones over `max` to close.
    fn register(&self, user: &UserId, max: usize) -> (Registered<'_>, Arc<Notify>) {
        let id = self.next_socket.fetch_add(1, Ordering::Relaxed);
        let kick = Arc::new(Notify::new());
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let list = open.entry(user.clone()).or_default();
        list.push_back((id, kick.clone()));
        while list.len() > max.max(1) {
            if let Some((_, oldest)) = list.pop_front() {
                oldest.notify_one(); // a stored permit: seen even if not yet waiting
            }
        }
        (Registered { hub: self, user: user.clone(), id }, kick)
    }

    /// Runs one socket for `user` until either side closes it, a limit
    /// closes it, or its token expires at `expires_at` (ms since the epoch).
    pub async fn serve_socket(
        self: Arc<Self>,
        mut socket: WebSocket,
        user: UserId,
        expires_at: Millis,
        limits: SocketLimits,
        mut sub: Subscription,
    ) {
        let (_registered, kick) = self.register(&user, limits.max_sockets);
        let now_ms = crate::routes::now_ms();
        let expiry = Instant::now() + Duration::from_millis(expires_at.saturating_sub(now_ms));
        let mut ping = tokio::time::interval(limits.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await; // the first tick is immediate
        let mut last_heard = Instant::now();
        let goodbye = loop {
            let reply = tokio::select! {
                poke = sub.pokes.recv() => match poke {
                    Ok(poke) if poke.users.contains(&user) => ServerEvent::Poke { cursor: poke.cursor },
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        ServerEvent::Poke { cursor: self.newest.load(Ordering::Relaxed) }
                    }
                    Err(broadcast::error::RecvError::Closed) => break None,
                },
                incoming = socket.recv() => match incoming {
                    // Over the size limit, a protocol error, or the peer went away.
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break None,
                    Some(Ok(Message::Text(text))) => {
                        last_heard = Instant::now();
                        let pong = || Message::Text(r#"{"type":"pong"}"#.into());
                        if text.as_str().contains("\"ping\"")
                            && !send(&mut socket, pong(), limits.idle_timeout).await
                        {
                            break None;
                        }
                        continue;
                    }
                    // Pongs to our pings, and pings (answered by the library).
                    Some(Ok(_)) => {
                        last_heard = Instant::now();
                        continue;
                    }
                },
                _ = ping.tick() => {
                    if !send(&mut socket, Message::Ping(Default::default()), limits.idle_timeout).await {
                        break None;
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(last_heard + limits.idle_timeout) => {
                    break Some(close(CLOSE_GOING_AWAY, "no frame from the client in time"));
                }
                _ = tokio::time::sleep_until(expiry) => break Some(close(CLOSE_POLICY, "token expired")),
                _ = kick.notified() => break Some(close(CLOSE_POLICY, "too many sockets for this user")),
                _ = async { drop(sub.closing.wait_for(|closing| *closing).await) } => {
                    break Some(close(CLOSE_GOING_AWAY, "server shutting down"));
                }
            };
            let text = serde_json::to_string(&reply).expect("events serialize");
            if !send(&mut socket, Message::Text(text.into()), limits.idle_timeout).await {
                break None;
            }
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            socket.send(goodbye.unwrap_or(Message::Close(None))),
        )
        .await;
    }
}
