//! The PostgreSQL backend with several instances of the real binary on one
//! database: gap-free cursors under concurrent pushes, pokes across
//! instances, migrations, and a SIGKILL mid-stream. (The protocol's rules
//! themselves are checked by the conformance kit, `conformance/`, which
//! scripts/test runs against two PostgreSQL instances.)

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use dovecote::core::sync::{Change, PullResponse};
use tokio_tungstenite::tungstenite::Message;

fn instance(url: &str) -> ServerProcess {
    ServerProcess::start(Path::new(url), &["--rate-limit", "1000000"])
}

/// Writers push one message per push, concurrently, through three instances
/// in turn; pullers on each instance keep pulling with small pages. A
/// puller must end up with every seq of the final feed: a seq below its
/// cursor that committed after it passed (the sequence-gap trap) would be
/// missing from what it saw. Checked to fail with the feed lock removed
/// (`lock_feed` a no-op): pullers then miss seqs within a few hundred pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_puller_skips_a_seq_under_concurrent_pushes_across_instances() {
    const WRITERS: usize = 16;
    const PUSHES: u64 = 40;
    let url = pg::fresh_database().await;
    let instances: Vec<ServerProcess> = (0..3).map(|_| instance(&url)).collect();
    let https: Vec<Http> = instances.iter().map(|s| s.http.clone()).collect();

    // Each writer owns a thread that the watcher belongs to.
    let watcher = https[0].session("watcher").await;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let http = &https[w % https.len()];
        let token = http.session(&format!("writer{w}")).await;
        let thread = thread_id();
        let device = device_id();
        http.push_ok(&token, &push_request(device, vec![create_thread(1, thread, &["watcher"])])).await;
        writers.push((token, thread, device));
    }

    let done = Arc::new(AtomicBool::new(false));
    let mut pullers = Vec::new();
    for http in &https {
        let (http, token, done) = (http.clone(), watcher.clone(), done.clone());
        pullers.push(tokio::spawn(async move {
            let mut cursor = 0;
            let mut seen = BTreeSet::new();
            loop {
                // Read before the pull: a pull after the last ack sees everything.
                let finished = done.load(Ordering::SeqCst);
                let page: PullResponse = http.pull(&token, &format!("cursor={cursor}&limit=7")).await.parse();
                for change in &page.changes {
                    assert!(change.seq() > cursor, "a page went backwards");
                    seen.insert(change.seq());
                }
                cursor = page.cursor;
                if finished && !page.has_more {
                    return seen;
                }
            }
        }));
    }

    let mut tasks = Vec::new();
    for (w, (token, thread, device)) in writers.into_iter().enumerate() {
        let https = https.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..PUSHES {
                let http = &https[(w + i as usize) % https.len()];
                let response = http
                    .push_ok(&token, &push_request(device, vec![send(i + 2, thread, message_id(), "m")]))
                    .await;
                assert!(response.rejected.is_empty(), "{response:?}");
                acked.push(response.acks[0].seq);
            }
            acked
        }));
    }
    let mut acked = BTreeSet::new();
    for task in tasks {
        let seqs = tokio::time::timeout(Duration::from_secs(120), task).await.expect("bounded").unwrap();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "one writer's seqs increase");
        acked.extend(seqs);
    }
    done.store(true, Ordering::SeqCst);

    let pages = https[1].pull_all(&watcher, 0, 1000, None).await;
    let feed: BTreeSet<u64> = pages.iter().flat_map(|p| p.changes.iter().map(Change::seq)).collect();
    assert_eq!(feed.len(), WRITERS * (PUSHES as usize + 1), "every thread and message once");
    assert!(acked.is_subset(&feed), "every acked seq is in the feed");
    for (p, puller) in pullers.into_iter().enumerate() {
        let seen = tokio::time::timeout(Duration::from_secs(60), puller).await.expect("bounded").unwrap();
        let skipped: Vec<_> = feed.difference(&seen).collect();
        assert!(skipped.is_empty(), "puller {p} skipped seqs {skipped:?}");
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn socket(server: &ServerProcess, token: &str) -> Socket {
    let url = format!("ws://{}/v1/events?token={token}", server.addr);
    tokio_tungstenite::connect_async(url).await.expect("socket opens").0
}

/// The next poke's cursor within 10 s.
async fn next_poke(socket: &mut Socket) -> u64 {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let frame = tokio::time::timeout_at(deadline, socket.next()).await.expect("a poke in time");
        if let Some(Ok(Message::Text(text))) = frame {
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            if value["type"] == "poke" {
                return value["cursor"].as_u64().unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_on_one_instance_pokes_sockets_on_the_other() {
    let url = pg::fresh_database().await;
    let (a, b) = (instance(&url), instance(&url));
    let alice = a.http.session("alice").await;
    let bob = b.http.session("bob").await;
    let mut bob_socket = socket(&b, &bob).await;
    let mut alice_socket = socket(&a, &alice).await;
    let thread = thread_id();
    let created =
        a.http.push_ok(&alice, &push_request(device_id(), vec![create_thread(1, thread, &["bob"])])).await;
    assert_eq!(next_poke(&mut bob_socket).await, created.acks[0].seq, "B's socket, poked from A");
    assert_eq!(next_poke(&mut alice_socket).await, created.acks[0].seq, "A's own socket");
    let sent =
        b.http.push_ok(&bob, &push_request(device_id(), vec![send(1, thread, message_id(), "hi")])).await;
    assert_eq!(next_poke(&mut alice_socket).await, sent.acks[0].seq, "A's socket, poked from B");
    assert_eq!(next_poke(&mut bob_socket).await, sent.acks[0].seq);
}

#[tokio::test]
async fn migrations_are_applied_once_and_a_newer_schema_is_refused() {
    let url = pg::fresh_database().await;
    // Two instances starting at once migrate once (the migration lock).
    let (a, b) = (instance(&url), instance(&url));
    let db = pg::connect(&url).await;
    let versions: Vec<i64> = db
        .query("SELECT version FROM schema_migrations ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        versions,
        (1..=dovecote_server::storage::postgres::MIGRATIONS.len() as i64).collect::<Vec<_>>()
    );
    // Both sign with the one secret in the database: a token from A works on B.
    let token = a.http.session("alice").await;
    assert_eq!(b.http.pull(&token, "").await.status, 200);
    drop((a, b));

    db.execute("INSERT INTO schema_migrations VALUES (99, 0)", &[]).await.unwrap();
    let binary = env!("CARGO_BIN_EXE_dovecote-server");
    let out = std::process::Command::new(binary)
        .args(["--db", &url, "--addr", "127.0.0.1:0", "--dev-sign-in"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "it never listened");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("schema version 99 is newer"), "{stderr}");
}

#[tokio::test]
async fn a_bad_database_url_is_a_clear_error() {
    let binary = env!("CARGO_BIN_EXE_dovecote-server");
    let out = std::process::Command::new(binary)
        .args([
            "--db",
            "postgres://nobody@127.0.0.1:1/none?connect_timeout=2",
            "--addr",
            "127.0.0.1:0",
            "--dev-sign-in",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot open the PostgreSQL database"), "{stderr}");
}

/// Instance A is SIGKILLed while clients push through it; they retry their
/// unanswered pushes on B, then on A restarted. Every acked mutation is in
/// the feed, with the seq of its ack, and none is there twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_one_instance_mid_stream_loses_nothing_acked_and_applies_nothing_twice() {
    const CLIENTS: usize = 6;
    const PUSHES: u64 = 60;
    let url = pg::fresh_database().await;
    let mut a = instance(&url);
    let b = instance(&url);
    let owner = b.http.session("owner").await;
    let thread = thread_id();
    let names: Vec<String> = (0..CLIENTS).map(|i| format!("c{i}")).collect();
    let members: Vec<&str> = names.iter().map(String::as_str).collect();
    b.http.push_ok(&owner, &push_request(device_id(), vec![create_thread(1, thread, &members)])).await;

    let a_http = a.http.clone();
    let b_http = b.http.clone();
    // Acks through A so far; A is killed when there are enough of them.
    let through_a = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let enough = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for name in names.clone() {
        let (a_http, b_http) = (a_http.clone(), b_http.clone());
        let (through_a, enough) = (through_a.clone(), enough.clone());
        tasks.push(tokio::spawn(async move {
            let token = b_http.session(&name).await;
            let device = device_id();
            let mut acked = HashMap::new();
            for i in 1..=PUSHES {
                let message = message_id();
                let body =
                    serde_json::to_vec(&push_request(device, vec![send(i, thread, message, "x")])).unwrap();
                // Through A while it lives; a failed request is retried
                // (the same push) on B, as a client behind a balancer would.
                let mut reply = a_http
                    .try_request(hyper::Method::POST, "/v1/push", Some(&token), Some(body.clone()))
                    .await;
                if reply.as_ref().map_or(true, |r| r.status != 200) {
                    reply =
                        b_http.try_request(hyper::Method::POST, "/v1/push", Some(&token), Some(body)).await;
                } else if through_a.fetch_add(1, Ordering::SeqCst) + 1 == (CLIENTS as u64 * PUSHES) / 4 {
                    enough.notify_one();
                }
                let response: dovecote::core::sync::PushResponse = reply.unwrap().parse();
                assert_eq!(response.acks.len(), 1, "{response:?}");
                acked.insert(message, response.acks[0].seq);
            }
            acked
        }));
    }
    // Kill A mid-stream: a quarter of all pushes went through it.
    tokio::time::timeout(Duration::from_secs(60), enough.notified()).await.expect("pushes reach A");
    a.kill();
    let mut acked = HashMap::new();
    for task in tasks {
        acked.extend(tokio::time::timeout(Duration::from_secs(120), task).await.expect("bounded").unwrap());
    }
    let a2 = instance(&url);
    let pages = a2.http.pull_all(&owner, 0, 1000, None).await;
    let mut stored = HashMap::new();
    for change in pages.iter().flat_map(|p| &p.changes) {
        if let Change::Message { message, .. } = change {
            assert!(stored.insert(message.id, message.seq).is_none(), "a message twice in the feed");
        }
    }
    assert_eq!(stored.len(), CLIENTS * PUSHES as usize);
    assert_eq!(stored, acked, "every acked message, at its acked seq");
}

/// The PostgreSQL side of `ids_and_cursors_past_i64_max_keep_their_order`
/// (server/tests/api.rs): mutation ids clamped to i64::MAX made two ids past
/// it one row, and the push failed with a 500.
#[tokio::test]
async fn ids_and_cursors_past_i64_max_keep_their_order() {
    let url = pg::fresh_database().await;
    let server = instance(&url);
    let http = &server.http;
    let alice = http.session("alice").await;
    let (device, thread) = (device_id(), thread_id());
    let high = 1u64 << 63;
    let mut thread_mutation = create_thread(high, thread, &[]);
    if let dovecote::core::sync::MutationBody::CreateThread { created_at, .. } = &mut thread_mutation.body {
        *created_at = u64::MAX;
    }
    let request = push_request(device, vec![thread_mutation, send(high + 1, thread, message_id(), "hi")]);
    let first = http.push_ok(&alice, &request).await;
    assert_eq!((first.acks.len(), first.last_mutation_id), (2, high + 1), "{first:?}");

    for query in [format!("cursor={}", u64::MAX), format!("cursor={high}&thread={thread}")] {
        let page: PullResponse = http.pull(&alice, &query).await.parse();
        assert!(page.changes.is_empty(), "{query}: nothing is after the cursor: {page:?}");
    }
    let all: PullResponse = http.pull(&alice, "cursor=0").await.parse();
    assert_eq!(all.changes.len(), 2);
    assert!(
        matches!(&all.changes[0], Change::Thread { thread: t, .. } if t.created_at == u64::MAX),
        "times are kept as sent: {all:?}"
    );

    let low = http.push_ok(&alice, &push_request(device, vec![send(5, thread, message_id(), "late")])).await;
    assert_eq!(low.rejected[0].code, "out_of_order", "{low:?}");
    assert_eq!(http.push_ok(&alice, &request).await, first, "a retry gets the original acks");
}
