//! dovecote-server: the reference sync server for dovecote protocol v1
//! (DESIGN.md §3, §6; docs/protocol.md is the contract).
//!
//! - [`config`]: command-line flags and limits.
//! - [`auth`]: signed session (DEV-ONLY sign-in) and invite tokens.
//! - [`jwt`]: the app's identity provider's JWTs (HS256, RS256/ES256 by JWKS).
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
pub mod jwt;
pub mod limits;
pub mod routes;
pub mod statics;
pub mod storage;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::routes::App;
use crate::storage::Storage;

/// Serves `app` on `listener` until `shutdown` completes, then closes open
/// WebSockets and waits for in-flight requests. Re-reads the JWKS (if any)
/// every refresh interval meanwhile.
pub async fn serve<S: Storage>(
    app: Arc<App<S>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let hub = app.hub.clone();
    let refresher = app.config.jwt.jwks.is_some().then(|| {
        let app = app.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(app.jwt.jwks_refresh()).await;
                let app = app.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    if let Err(e) = app.jwt.reload() {
                        eprintln!("warning: JWKS refresh failed, keeping the previous keys: {e}");
                    }
                })
                .await;
            }
        })
    });
    let router = routes::router(app);
    let served = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            shutdown.await;
            hub.close_all();
        })
        .await;
    if let Some(refresher) = refresher {
        refresher.abort();
    }
    served
}
