//! The real binary: startup, clean shutdown on signals, secrets that outlive
//! restarts, logs without secrets, and durability across SIGKILL.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use dovecote::core::model::MessageId;
use dovecote::core::sync::{Change, PushRequest};
use hyper::{Method, StatusCode};

#[tokio::test]
async fn the_binary_starts_fast_serves_and_stops_cleanly_on_sigterm_and_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("server.db");
    let mut server = ServerProcess::start(&db, &[]);
    eprintln!("startup on an empty database: {:?}", server.startup);
    assert!(server.startup < Duration::from_secs(3), "{:?}", server.startup);
    let http = server.http.clone();
    assert_eq!(http.get("/healthz", None).await.status, StatusCode::OK);
    let alice = http.session("alice").await;
    let thread = thread_id();
    http.push_ok(
        &alice,
        &push_request(device_id(), vec![create_thread(1, thread, &[]), send(2, thread, message_id(), "hi")]),
    )
    .await;
    let invite = http.post(&format!("/v1/threads/{thread}/invites"), Some(&alice), "").await.json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob = http.session("bob").await;
    assert_eq!(
        http.post(&format!("/v1/invites/{invite}/accept"), Some(&bob), "").await.status,
        StatusCode::OK
    );
    // An open WebSocket must not hold shutdown up.
    let (_socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/events?token={alice}", server.addr))
            .await
            .unwrap();

    let status = server.signal_and_wait("TERM");
    assert!(status.success(), "{status:?}");
    let log = server.stderr();
    assert!(log.contains("DEV-ONLY"), "{log}");
    assert!(log.contains("POST /v1/push 200"), "{log}");
    assert!(log.contains("GET /v1/events 101"), "{log}");
    for secret in [&alice, &bob, &invite] {
        assert!(!log.contains(secret.as_str()), "a token leaked into the log:\n{log}");
    }

    // Restart on the existing file: quick, and the secret (so the token) survived.
    let mut server = ServerProcess::start(&db, &[]);
    eprintln!("startup on an existing database: {:?}", server.startup);
    assert!(server.startup < Duration::from_secs(3));
    let pages = server.http.pull_all(&alice, 0, 500, None).await;
    assert_eq!(pages[0].changes.len(), 2);
    let status = server.signal_and_wait("INT");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_bad_flag_or_unusable_database_fails_fast_with_a_message() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dovecote-server"))
        .args(["--addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--db"));
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dovecote-server"))
        .arg("--db")
        .arg(dir.path()) // a directory is not a database
        .args(["--addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "never claims to listen");
}

/// What one pushing client saw before the kill.
#[derive(Default)]
struct Seen {
    /// Acked sends: message -> seq.
    acked: HashMap<MessageId, u64>,
    /// The push in flight when the server died, if any.
    unanswered: Option<PushRequest>,
}

#[tokio::test]
async fn every_acked_mutation_survives_sigkill_and_none_is_half_applied() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("server.db");
    let mut server = ServerProcess::start(&db, &[]); // default durability: synchronous=FULL
    let http = server.http.clone();
    let alice = http.session("alice").await;
    let thread = thread_id();
    http.push_ok(&alice, &push_request(device_id(), vec![create_thread(1, thread, &[])])).await;

    let clients = 8;
    let seen: Vec<Arc<Mutex<Seen>>> = (0..clients).map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    for seen in &seen {
        let (http, alice, seen) = (http.clone(), alice.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            let device = device_id();
            for batch in 0..10_000u64 {
                let mutations: Vec<_> =
                    (1..=5).map(|i| send(batch * 5 + i, thread, message_id(), "m")).collect();
                let request = push_request(device, mutations);
                seen.lock().unwrap().unanswered = Some(request.clone());
                let body = serde_json::to_vec(&request).unwrap();
                let Ok(reply) = http.try_request(Method::POST, "/v1/push", Some(&alice), Some(body)).await
                else {
                    return; // killed mid-request: stays unanswered
                };
                let response: dovecote::core::sync::PushResponse = reply.parse();
                let mut seen = seen.lock().unwrap();
                for (m, ack) in request.mutations.iter().zip(&response.acks) {
                    assert_eq!(m.mutation_id, ack.mutation_id);
                    seen.acked.insert(m.body.message_id().unwrap(), ack.seq);
                }
                seen.unanswered = None;
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.iter().map(|s| s.lock().unwrap().acked.len()).sum::<usize>() < 1000
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task).await.expect("clients stop").unwrap();
    }
    let acked: usize = seen.iter().map(|s| s.lock().unwrap().acked.len()).sum();
    assert!(acked >= 1000, "only {acked} acks before the deadline");

    // Restart on the same file: every ack is there, with its seq.
    let server = ServerProcess::start(&db, &[]);
    let http = server.http.clone();
    let stored: HashMap<MessageId, u64> = http
        .pull_all(&alice, 0, 1000, Some(thread))
        .await
        .iter()
        .flat_map(|p| &p.changes)
        .filter_map(|c| match c {
            Change::Message { message, .. } => Some((message.id, message.seq)),
            Change::Thread { .. } => None,
        })
        .collect();
    for s in &seen {
        for (id, seq) in &s.lock().unwrap().acked {
            assert_eq!(stored.get(id), Some(seq), "acked message {id} lost or moved");
        }
    }
    // The push in flight at the kill was applied wholly or not at all; a
    // retry completes it exactly once.
    let mut retried = 0;
    for s in &seen {
        let Some(request) = s.lock().unwrap().unanswered.take() else { continue };
        let before =
            request.mutations.iter().filter(|m| stored.contains_key(&m.body.message_id().unwrap())).count();
        assert!(before == 0 || before == request.mutations.len(), "half-applied push: {before} of 5");
        let response = http.push_ok(&alice, &request).await;
        assert_eq!(response.acks.len(), request.mutations.len());
        retried += request.mutations.len() - before;
    }
    let after =
        http.pull_all(&alice, 0, 1000, Some(thread)).await.iter().map(|p| p.changes.len()).sum::<usize>();
    assert_eq!(after, stored.len() + 1 + retried, "each message once (plus the thread)");
    eprintln!("{acked} acked before SIGKILL; {} stored; {retried} completed by retries", stored.len());

    // In the file: each device keeps the results of its last push (older
    // ones are pruned: it will not ask again), with no gap, and its
    // high-water mark matches the results it stored.
    let db = rusqlite::Connection::open(&db).unwrap();
    let gappy: i64 = db
        .query_row(
            "SELECT count(*) FROM (SELECT device_id, count(*) AS n, max(mutation_id) - min(mutation_id) + 1 AS span
               FROM mutation_results GROUP BY device_id) WHERE n != span OR n > 5",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(gappy, 0);
    let mismatched: i64 = db
        .query_row(
            "SELECT count(*) FROM devices d WHERE d.last_mutation_id !=
               (SELECT coalesce(max(mutation_id), 0) FROM mutation_results r WHERE r.device_id = d.id)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(mismatched, 0);
}
