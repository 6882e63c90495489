//! `dovecote-server --db PATH|postgres://... --addr 127.0.0.1:PORT [--static DIR] ...`
//!
//! Prints `listening on http://ADDR` to stdout once bound (scripts and tests
//! read the port from it); logs go to stderr.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use dovecote_server::config::{Config, Durability};
use dovecote_server::routes::App;
use dovecote_server::storage::postgres::{is_postgres_url, PostgresStorage};
use dovecote_server::storage::sqlite::SqliteStorage;
use dovecote_server::storage::Storage;

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
    let db = config.db.to_string_lossy().into_owned();
    if is_postgres_url(&db) {
        let storage = match PostgresStorage::connect(&db, config.db_pool).await {
            Ok(storage) => storage,
            Err(e) => {
                // The URL may hold a password: say which database by its error only.
                eprintln!("cannot open the PostgreSQL database: {e}");
                return ExitCode::FAILURE;
            }
        };
        run(storage, config, "PostgreSQL".into(), async |app: &Arc<App<PostgresStorage>>| {
            // Other instances' pokes for this instance's sockets.
            let hub = app.hub.clone();
            app.storage.listen_for_pokes(move |pokes| hub.publish(pokes)).await.map(drop)
        })
        .await
    } else {
        let storage = match SqliteStorage::open(&config.db, config.durability) {
            Ok(storage) => storage,
            Err(e) => {
                eprintln!("cannot open database {}: {e}", config.db.display());
                return ExitCode::FAILURE;
            }
        };
        let described = format!(
            "{} (WAL, synchronous={})",
            config.db.display(),
            if config.durability == Durability::Full { "FULL" } else { "NORMAL" }
        );
        run(storage, config, described, async |_: &Arc<App<SqliteStorage>>| Ok(())).await
    }
}

/// Serves on `storage` until a signal; `start` runs before the server
/// binds (the PostgreSQL backend's poke listener).
async fn run<S: Storage>(
    storage: S,
    config: Config,
    described: String,
    start: impl AsyncFnOnce(&Arc<App<S>>) -> Result<(), dovecote_server::storage::Error>,
) -> ExitCode {
    // Loads the JWKS before binding: a server that cannot check tokens must not listen.
    let app = match App::try_new(storage, config) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("cannot load the JWKS: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = start(&app).await {
        eprintln!("cannot start: {e}");
        return ExitCode::FAILURE;
    }
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
        "database {described}{}",
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
