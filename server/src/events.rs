//! Pokes over WebSocket (`GET /v1/events`): after a commit, every open socket
//! of every member of a changed thread gets `{"type":"poke","cursor":C}`.
//!
//! One broadcast channel carries every poke; each socket keeps those for its
//! user. That is O(sockets) work per poke, fine for a reference server. A
//! socket that falls behind gets one poke at the newest seq instead of the
//! ones it missed: a poke only says "pull", so nothing is lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket};
use dovecote::core::model::UserId;
use dovecote::core::sync::ServerEvent;
use tokio::sync::{broadcast, watch};

use crate::storage::Poke;

/// Pokes waiting per socket before it counts as lagging.
const CHANNEL_CAPACITY: usize = 1024;

/// Fans pokes out to sockets.
#[derive(Debug)]
pub struct Hub {
    pokes: broadcast::Sender<Arc<Poke>>,
    newest: AtomicU64,
    closing: watch::Sender<bool>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            pokes: broadcast::channel(CHANNEL_CAPACITY).0,
            newest: AtomicU64::new(0),
            closing: watch::channel(false).0,
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

    /// Runs one socket for `user` until either side closes it.
    pub async fn serve_socket(self: Arc<Self>, mut socket: WebSocket, user: UserId, mut sub: Subscription) {
        loop {
            let cursor = tokio::select! {
                poke = sub.pokes.recv() => match poke {
                    Ok(poke) if poke.users.contains(&user) => poke.cursor,
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => self.newest.load(Ordering::Relaxed),
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                incoming = socket.recv() => match incoming {
                    // Clients have nothing to say; pings are answered by the library.
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                },
                _ = sub.closing.wait_for(|closing| *closing) => break,
            };
            let text = serde_json::to_string(&ServerEvent::Poke { cursor }).expect("events serialize");
            if socket.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
        let _ = socket.send(Message::Close(None)).await;
    }
}
