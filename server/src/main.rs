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
    let storage = match SqliteStorage::open(&config.db, config.durability) {
        Ok(storage) => storage,
        Err(e) => {
            eprintln!("cannot open database {}: {e}", config.db.display());
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", config.addr);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().expect("a bound listener has an address");
    eprintln!("WARNING: POST /v1/session is a DEV-ONLY sign-in: anyone can sign in as anyone");
    eprintln!(
        "database {} (WAL, synchronous={}){}",
        config.db.display(),
        if config.durability == Durability::Full { "FULL" } else { "NORMAL" },
        config.static_dir.as_ref().map(|d| format!(", serving {}", d.display())).unwrap_or_default()
    );
    println!("listening on http://{addr}");
    let _ = std::io::stdout().flush();
    let app = App::new(storage, config);
    match dovecote_server::serve(app, listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("server error: {e}");
            ExitCode::FAILURE
        }
    }
}
