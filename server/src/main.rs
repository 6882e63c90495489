//! `dovecote-server --db PATH --addr 127.0.0.1:PORT [--static DIR] ...`
//!
//! Prints `listening on http://ADDR` to stdout once bound (scripts and tests
//! read the port from it); logs go to stderr.

use std::io::Write as _;
use std::process::ExitCode;

use dovecote_server::config::{Config, Durability};
use dovecote_server::routes::App;
use dovecote_server::storage::sqlite::SqliteStorage;

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    eprintln!("shutting down");
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_args(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    if let Err(message) = config.check() {
        eprintln!("{message}");
        return ExitCode::from(2);
    }
    let storage = match SqliteStorage::open(&config.db, config.durability) {
        Ok(storage) => storage,
        Err(e) => {
            eprintln!("cannot open database {}: {e}", config.db.display());
            return ExitCode::FAILURE;
        }
    };
    // Loads the JWKS before binding: a server that cannot check tokens must not listen.
    let app = match App::try_new(storage, config) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("cannot load the JWKS: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(app.config.addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", app.config.addr);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().expect("a bound listener has an address");
    if app.config.dev_sign_in {
        eprintln!(
            "WARNING: --dev-sign-in: POST /v1/session is a DEV-ONLY sign-in: anyone can sign in as anyone{}",
            if addr.ip().is_loopback() { "" } else { " (and this address is not loopback)" }
        );
    }
    if app.config.jwt.enabled() {
        eprintln!(
            "accepting JWTs:{}{}{}{} (user id from {:?})",
            if app.config.jwt.hs256_secret.is_some() { " HS256" } else { "" },
            app.config.jwt.jwks.as_ref().map(|j| format!(" RS256/ES256 from {j:?}")).unwrap_or_default(),
            app.config.jwt.issuer.as_ref().map(|i| format!(", iss {i:?}")).unwrap_or_default(),
            app.config.jwt.audience.as_ref().map(|a| format!(", aud {a:?}")).unwrap_or_default(),
            app.config.jwt.user_claim
        );
    }
    eprintln!(
        "database {} (WAL, synchronous={}){}",
        app.config.db.display(),
        if app.config.durability == Durability::Full { "FULL" } else { "NORMAL" },
        app.config.static_dir.as_ref().map(|d| format!(", serving {}", d.display())).unwrap_or_default()
    );
    println!("listening on http://{addr}");
    let _ = std::io::stdout().flush();
    match dovecote_server::serve(app, listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("server error: {e}");
            ExitCode::FAILURE
        }
    }
}
