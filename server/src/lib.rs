//! dovecote-server: the reference sync server for dovecote protocol v1
//! (DESIGN.md §3, §6; docs/protocol.md is the contract).
//!
//! - [`config`]: command-line flags and limits.
//! - [`auth`]: signed session (DEV-ONLY sign-in) and invite tokens.
//! - [`storage`]: the [`storage::Storage`] trait and its SQLite backend.
//! - [`routes`]: the HTTP API, CORS and the request log.
//! - [`events`]: WebSocket pokes.
//! - [`limits`]: per-user rate limiting.
//! - [`statics`]: `--static` file serving for the demo.
//!
//! The server never decrypts anything: envelopes (message bodies, thread
//! titles) are stored as BLOBs exactly as received and only their size is
//! checked.

#![deny(missing_docs)]

pub mod auth;
pub mod config;
pub mod error;
pub mod events;
pub mod limits;
pub mod routes;
pub mod statics;
pub mod storage;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::routes::App;
use crate::storage::Storage;

/// Serves `app` on `listener` until `shutdown` completes, then closes open
/// WebSockets and waits for in-flight requests.
pub async fn serve<S: Storage>(
    app: Arc<App<S>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let hub = app.hub.clone();
    let router = routes::router(app);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            hub.close_all();
        })
        .await
}
