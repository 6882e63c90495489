//! A real PostgreSQL for the tests that need one: the cluster named by
//! `DOVECOTE_TEST_PG` (an admin URL, `postgres://postgres@127.0.0.1:PORT/postgres`;
//! scripts/test starts one and exports it), or else a private cluster that
//! `scripts/pg` starts for this test process and stops when it exits.
//! Each test gets a database of its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The admin URL of the cluster.
pub fn admin_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("DOVECOTE_TEST_PG") {
            return url;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg");
        let out = std::process::Command::new("bash")
            .args([script, "start", "--until-exit-of", &std::process::id().to_string()])
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("bash runs scripts/pg");
        assert!(out.status.success(), "scripts/pg start failed (is PostgreSQL installed? scripts/bootstrap)");
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines().last().expect("scripts/pg prints the URL").to_owned()
    })
}

/// A fresh, empty database on the cluster: its URL.
pub async fn fresh_database() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = format!("t{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    let (client, connection) = tokio_postgres::connect(admin_url(), tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    drop(client);
    let _ = driver.await;
    let base = admin_url().rsplit_once('/').expect("a URL with a database").0;
    format!("{base}/{name}")
}

/// A client on `url`, its connection driven in the background.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}
