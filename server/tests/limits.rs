//! Limits that hold against abuse: WebSocket size, count, liveness and
//! token expiry; byte-capped pull pages; pruned push results; MAX_MEMBERS on
//! join; one answer for every unusable id. And (ignored by default, run with
//! `cargo test -p dovecote-server --release --test limits -- --ignored
//! --nocapture`) the main-feed pull cost over 1,000 vs 1,000,000 changes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use dovecote::core::envelope::Envelope;
use dovecote::core::model::{MessageId, MAX_MEMBERS};
use dovecote::core::sync::{Change, InviteResponse, MutationBody, PushMutation};
use futures_util::{SinkExt as _, StreamExt as _};
use hyper::StatusCode;
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn socket(server: &TestServer, token: &str) -> Socket {
    let url = format!("ws://{}/v1/events?token={token}", server.addr);
    tokio_tungstenite::connect_async(url).await.expect("socket opens").0
}

/// The next text frame within `limit`: `Ok(text)`, or `Err(what ended it)`.
async fn next_text(socket: &mut Socket, limit: Duration) -> Result<String, String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => return Err("timeout".into()),
            Ok(None) => return Err("ended".into()),
            Ok(Some(Err(e))) => return Err(format!("error: {e}")),
            Ok(Some(Ok(Message::Text(text)))) => return Ok(text.to_string()),
            Ok(Some(Ok(Message::Close(frame)))) => return Err(format!("closed: {frame:?}")),
            Ok(Some(Ok(_))) => continue, // pings
        }
    }
}

/// A thread of alice's with bob in it; returns a push that pokes both.
async fn poke_both(server: &TestServer, alice: &str) -> u64 {
    let thread = thread_id();
    let r = server
        .http
        .push_ok(
            alice,
            &push_request(
                device_id(),
                vec![create_thread(1, thread, &["bob"]), send(2, thread, message_id(), "x")],
            ),
        )
        .await;
    r.acks[1].seq
}

async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

#[tokio::test]
async fn fifty_sockets_of_one_user_leave_the_newest_five_open() {
    let server = TestServer::start().await;
    let alice = server.http.session("alice").await;
    let mut sockets = Vec::new();
    for _ in 0..50 {
        sockets.push(socket(&server, &alice).await);
    }
    let alice_id = user("alice");
    assert!(
        wait_until(Duration::from_secs(5), || server.app.hub.open_sockets(&alice_id) <= 5).await,
        "{} open",
        server.app.hub.open_sockets(&alice_id)
    );
    // The 45 oldest were told why and closed; the 5 newest get the next poke.
    for (i, s) in sockets.iter_mut().enumerate().take(45) {
        let end = next_text(s, Duration::from_secs(5)).await.unwrap_err();
        assert!(end.contains("Policy") || end.contains("1008"), "socket {i}: {end}");
    }
    let seq = poke_both(&server, &alice).await;
    for s in sockets.iter_mut().skip(45) {
        let text = next_text(s, Duration::from_secs(5)).await.expect("a poke");
        assert!(text.contains(&format!("\"cursor\":{seq}")), "{text}");
    }
    assert_eq!(server.app.hub.open_sockets(&alice_id), 5);
    server.stop().await;
}

#[tokio::test]
async fn a_one_mib_client_frame_closes_that_socket_and_nothing_else() {
    let server = TestServer::start().await;
    let (alice, bob) = (server.http.session("alice").await, server.http.session("bob").await);
    let mut big = socket(&server, &bob).await;
    let mut other = socket(&server, &bob).await;
    let mut alices = socket(&server, &alice).await;
    let _ = big.send(Message::Text("x".repeat(1 << 20).into())).await;
    let end = next_text(&mut big, Duration::from_secs(5)).await.unwrap_err();
    assert_ne!(end, "timeout", "the oversized socket is closed");
    let seq = poke_both(&server, &alice).await;
    for s in [&mut other, &mut alices] {
        let text = next_text(s, Duration::from_secs(5)).await.expect("the others still get pokes");
        assert!(text.contains(&format!("\"cursor\":{seq}")), "{text}");
    }
    // Small frames are fine, and a text ping is answered.
    other.send(Message::Text(r#"{"type":"ping"}"#.into())).await.unwrap();
    assert_eq!(next_text(&mut other, Duration::from_secs(5)).await.unwrap(), r#"{"type":"pong"}"#);
    assert_eq!(server.app.hub.open_sockets(&user("bob")), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_socket_that_stops_answering_pings_is_closed_within_the_timeout() {
    let server = TestServer::start_with(|c| {
        c.ws_ping_interval = Duration::from_millis(200);
        c.ws_idle_timeout = Duration::from_millis(800);
    })
    .await;
    let alice = server.http.session("alice").await;
    let alice_id = user("alice");
    // A live client: reading answers pings (tungstenite sends the pongs).
    let mut live = socket(&server, &alice).await;
    // A silent one: never read, so never a pong.
    let silent = socket(&server, &alice).await;
    assert_eq!(server.app.hub.open_sockets(&alice_id), 2);
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        let got = next_text(&mut live, Duration::from_millis(2500)).await;
        (live, got)
    });
    assert!(wait_until(Duration::from_secs(3), || server.app.hub.open_sockets(&alice_id) == 1).await);
    let closed_after = started.elapsed();
    assert!(closed_after >= Duration::from_millis(700), "closed too early: {closed_after:?}");
    assert!(closed_after < Duration::from_millis(2000), "closed too late: {closed_after:?}");
    let (_live, got) = reader.await.unwrap();
    assert_eq!(got.unwrap_err(), "timeout", "the live socket stayed open throughout");
    assert_eq!(server.app.hub.open_sockets(&alice_id), 1);
    drop(silent);
    server.stop().await;
}

#[tokio::test]
async fn a_socket_closes_when_its_token_expires() {
    let server = TestServer::start_with(|c| c.token_ttl_secs = 1).await;
    let alice = server.http.session("alice").await;
    let mut s = socket(&server, &alice).await;
    let started = Instant::now();
    let end = next_text(&mut s, Duration::from_secs(4)).await.unwrap_err();
    assert!(end.contains("token expired"), "{end}");
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
    server.stop().await;
}

fn big_send(id: u64, thread: dovecote::core::model::ThreadId, size: usize) -> PushMutation {
    PushMutation {
        mutation_id: id,
        body: MutationBody::Send {
            thread_id: thread,
            message_id: message_id(),
            body: Envelope(vec![7u8; size]),
            client_ts: 1,
        },
    }
}

#[tokio::test]
async fn pages_of_large_messages_stay_under_the_byte_cap_and_a_larger_one_goes_alone() {
    let cap = 200_000;
    let server = TestServer::start_with(|c| c.page_bytes = cap).await;
    let http = &server.http;
    let alice = http.session("alice").await;
    let (device, thread) = (device_id(), thread_id());
    http.push_ok(&alice, &push_request(device, vec![create_thread(1, thread, &[])])).await;
    for i in 0..12 {
        // 60 KB envelopes, 80 KB as base64: two fit a page, three do not.
        http.push_ok(&alice, &push_request(device, vec![big_send(2 + i, thread, 60_000)])).await;
    }
    for thread_pull in [None, Some(thread)] {
        let mut cursor = 0;
        let mut seen = 0;
        loop {
            let q = thread_pull.map(|t| format!("&thread={t}")).unwrap_or_default();
            let reply = http.pull(&alice, &format!("cursor={cursor}&limit=500{q}")).await;
            assert!(reply.body.len() <= cap, "a page of {} bytes", reply.body.len());
            let page: dovecote::core::sync::PullResponse = reply.parse();
            assert!(!page.changes.is_empty() || !page.has_more);
            seen += page.changes.len();
            cursor = page.cursor;
            if !page.has_more {
                break;
            }
        }
        assert_eq!(seen, 13, "every change once (thread + 12)");
    }
    // A cap below one change: each page holds one, and the feed still moves.
    let server = TestServer::start_with(|c| c.page_bytes = 10_000).await;
    let http = &server.http;
    let alice = http.session("alice").await;
    let (device, thread) = (device_id(), thread_id());
    http.push_ok(&alice, &push_request(device, vec![create_thread(1, thread, &[])])).await;
    for i in 0..3 {
        http.push_ok(&alice, &push_request(device, vec![big_send(2 + i, thread, 60_000)])).await;
    }
    let pages = http.pull_all(&alice, 0, 500, None).await;
    assert_eq!(pages.iter().map(|p| p.changes.len()).collect::<Vec<_>>(), vec![1, 1, 1, 1]);
    server.stop().await;
}

#[tokio::test]
async fn stored_push_results_are_pruned_below_the_first_id_of_a_devices_latest_push() {
    let server = TestServer::start().await;
    let http = &server.http;
    let alice = http.session("alice").await;
    let (device, thread) = (device_id(), thread_id());
    let first = push_request(
        device,
        vec![
            create_thread(1, thread, &[]),
            send(2, thread, message_id(), "a"),
            send(3, thread, message_id(), "b"),
        ],
    );
    let acked = http.push_ok(&alice, &first).await;
    assert_eq!(http.push_ok(&alice, &first).await, acked, "the device may still ask about 1..3");
    let results = |server: &TestServer| -> Vec<i64> {
        let db = rusqlite::Connection::open(&server.app.config.db).unwrap();
        let mut stmt =
            db.prepare("SELECT mutation_id FROM mutation_results WHERE device_id = ?1 ORDER BY 1").unwrap();
        stmt.query_map([device.to_string()], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    assert_eq!(results(&server), vec![1, 2, 3]);
    // A push starting at 3 (2 was answered and dropped by the client): 1 and 2 go.
    let second =
        push_request(device, vec![send(3, thread, message_id(), "b"), send(4, thread, message_id(), "c")]);
    let answer = http.push_ok(&alice, &second).await;
    assert_eq!(answer.acks[0], acked.acks[2], "3 answered from its stored result");
    assert_eq!(results(&server), vec![3, 4]);
    // A repeat of the latest push still gets its original answer.
    assert_eq!(http.push_ok(&alice, &second).await, answer);
    // Asking about a pruned id is out of order, and changes nothing.
    let dump = server.dump();
    let late = http.push_ok(&alice, &push_request(device, vec![send(1, thread, message_id(), "?")])).await;
    assert_eq!(late.rejected[0].code, "out_of_order");
    assert_eq!(server.dump(), dump);
    server.stop().await;
}

#[tokio::test]
async fn a_full_thread_refuses_a_join_by_invite_and_by_push() {
    let server = TestServer::start().await;
    let http = &server.http;
    let alice = http.session("alice").await;
    let thread = thread_id();
    let named: Vec<String> = (1..MAX_MEMBERS).map(|i| format!("member{i}")).collect();
    let refs: Vec<&str> = named.iter().map(String::as_str).collect();
    // One over: refused whole.
    let mut over = refs.clone();
    over.push("one-too-many");
    let r =
        http.push_ok(&alice, &push_request(device_id(), vec![create_thread(1, thread_id(), &over)])).await;
    assert_eq!(r.rejected[0].code, "invalid");
    // Exactly MAX_MEMBERS with alice.
    http.push_ok(&alice, &push_request(device_id(), vec![create_thread(1, thread, &refs)])).await;
    let invite: InviteResponse =
        http.post(&format!("/v1/threads/{thread}/invites"), Some(&alice), "").await.parse();
    let bob = http.session("bob").await;
    let reply = http.post(&format!("/v1/invites/{}/accept", invite.token), Some(&bob), "").await;
    assert_eq!((reply.status, reply.code().as_str()), (StatusCode::FORBIDDEN, "thread_full"));
    let join =
        PushMutation { mutation_id: 1, body: MutationBody::Join { thread_id: thread, invite: invite.token } };
    let device = device_id();
    let r = http.push_ok(&bob, &push_request(device, vec![join])).await;
    assert_eq!(r.rejected[0].code, "thread_full");
    // bob is not in: he sees nothing of it.
    assert_eq!(http.pull(&bob, &format!("thread={thread}")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(http.pull_all(&bob, 0, 500, None).await[0].changes.len(), 0);
    server.stop().await;
}

#[tokio::test]
async fn someone_elses_thread_or_message_id_answers_like_any_unusable_id() {
    let server = TestServer::start().await;
    let http = &server.http;
    let (alice, bob) = (http.session("alice").await, http.session("bob").await);
    let (thread, message) = (thread_id(), message_id());
    http.push_ok(
        &alice,
        &push_request(device_id(), vec![create_thread(1, thread, &[]), send(2, thread, message, "a")]),
    )
    .await;
    let bobs = thread_id();
    http.push_ok(&bob, &push_request(device_id(), vec![create_thread(1, bobs, &[])])).await;
    // An id stamped far in the future is not usable by anyone; it gets the same answer.
    let future = dovecote::core::model::ThreadId(dovecote::core::model::Id::from_parts(
        dovecote_server::routes::now_ms() + 10 * 24 * 3600 * 1000,
        [9; 10],
    ));
    let future_message = MessageId(dovecote::core::model::Id::from_parts(
        dovecote_server::routes::now_ms() + 10 * 24 * 3600 * 1000,
        [8; 10],
    ));
    let r = http
        .push_ok(
            &bob,
            &push_request(
                device_id(),
                vec![
                    create_thread(1, thread, &[]),
                    create_thread(2, future, &[]),
                    send(3, bobs, message, "taken"),
                    send(4, bobs, future_message, "future"),
                ],
            ),
        )
        .await;
    assert_eq!(r.rejected.len(), 4, "{r:?}");
    let answers: Vec<_> = r.rejected.iter().map(|x| (x.code.clone(), x.message.clone())).collect();
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(answers[0].0, "conflict");
    server.stop().await;
}

#[tokio::test]
async fn the_main_feed_merged_from_many_threads_is_every_visible_change_once_in_seq_order() {
    let server = TestServer::start().await;
    let http = &server.http;
    let (alice, bob) = (http.session("alice").await, http.session("bob").await);
    let threads: Vec<_> = (0..40).map(|_| thread_id()).collect();
    let da = device_id();
    let mut next = 1u64;
    // 40 threads, bob in every other one; sends interleaved across them, in
    // uneven runs, some edited later (an edited message moves to its new seq).
    let creates: Vec<_> = threads
        .iter()
        .enumerate()
        .map(|(i, t)| create_thread(i as u64 + 1, *t, if i.is_multiple_of(2) { &["bob"] } else { &[] }))
        .collect();
    next += creates.len() as u64;
    http.push_ok(&alice, &push_request(da, creates)).await;
    let mut sent = Vec::new();
    for round in 0..30u64 {
        let mut batch = Vec::new();
        for (i, t) in threads.iter().enumerate() {
            if (round + i as u64).is_multiple_of(3) || i.is_multiple_of(7) {
                let m = message_id();
                batch.push(send(next, *t, m, "m"));
                next += 1;
                sent.push((*t, m));
            }
        }
        http.push_ok(&alice, &push_request(da, batch)).await;
    }
    let edits: Vec<_> = sent
        .iter()
        .step_by(11)
        .map(|(t, m)| {
            next += 1;
            edit(next - 1, *t, *m, "edited")
        })
        .collect();
    http.push_ok(&alice, &push_request(da, edits)).await;
    for (token, limit) in [(&alice, 7u32), (&alice, 1000), (&bob, 13)] {
        let main: Vec<u64> = http
            .pull_all(token, 0, limit, None)
            .await
            .iter()
            .flat_map(|p| p.changes.iter().map(Change::seq))
            .collect();
        assert!(main.windows(2).all(|w| w[0] < w[1]), "strictly increasing, so no repeats");
        // The same set as the union of the per-thread feeds the user can see.
        let mut union = Vec::new();
        for t in &threads {
            if http.pull(token, &format!("thread={t}")).await.status == StatusCode::OK {
                union.extend(
                    http.pull_all(token, 0, 1000, Some(*t))
                        .await
                        .iter()
                        .flat_map(|p| p.changes.iter().map(Change::seq)),
                );
            }
        }
        union.sort();
        assert_eq!(main, union, "limit {limit}");
        assert!(!main.is_empty());
        // From a cursor in the middle, the rest.
        let mid = main[main.len() / 2];
        let rest: Vec<u64> = http
            .pull_all(token, mid, limit, None)
            .await
            .iter()
            .flat_map(|p| p.changes.iter().map(Change::seq))
            .collect();
        assert_eq!(rest, main.iter().copied().filter(|&s| s > mid).collect::<Vec<_>>());
    }
    server.stop().await;
}

/// Not a timed test: a measurement. Fills the change table with 1,000 and
/// then 1,000,000 changes in threads of other users, and times a main-feed
/// pull by a user with no threads (and one with one small thread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (about a minute in release); run with --ignored --nocapture"]
async fn measure_main_feed_pull_over_1k_and_1m_changes() {
    for total in [1_000u64, 1_000_000] {
        let server = TestServer::start().await;
        let http = &server.http;
        let carol = http.session("carol").await;
        let mine = thread_id();
        http.push_ok(&carol, &push_request(device_id(), vec![create_thread(1, mine, &[])])).await;
        http.push_ok(&carol, &push_request(device_id(), vec![send(1, mine, message_id(), "hi")])).await;
        {
            // Bulk rows straight into the file: the shape pushes make, much faster.
            let mut db = rusqlite::Connection::open(&server.app.config.db).unwrap();
            let tx = db.transaction().unwrap();
            {
                let mut change = tx
                    .prepare("INSERT INTO changes (entity, thread_id, message_id, server_ts) VALUES (?1, ?2, ?3, 1)")
                    .unwrap();
                let mut member =
                    tx.prepare("INSERT INTO members (thread_id, user_id) VALUES (?1, 'dave')").unwrap();
                let mut thread = String::new();
                for i in 0..total {
                    if i % 1000 == 0 {
                        thread = thread_id().to_string();
                        member.execute([&thread]).unwrap();
                    }
                    let m = message_id().to_string();
                    change.execute(rusqlite::params![format!("m:{m}"), thread, m]).unwrap();
                }
            }
            tx.commit().unwrap();
        }
        let nobody = http.session("nobody").await;
        for (who, token) in [("no threads", &nobody), ("one thread", &carol)] {
            let mut times = Vec::new();
            for _ in 0..20 {
                let t = Instant::now();
                let reply = http.pull(token, "cursor=0&limit=500").await;
                times.push(t.elapsed());
                assert_eq!(reply.status, StatusCode::OK);
            }
            times.sort();
            let page: dovecote::core::sync::PullResponse =
                http.pull(token, "cursor=0&limit=500").await.parse();
            let n = page.changes.iter().filter(|c| matches!(c, Change::Message { .. })).count();
            eprintln!(
                "{total} changes, user with {who}: median {:?}, max {:?} per pull ({n} messages)",
                times[10], times[19]
            );
        }
        // For comparison, the query the server used before (a scan of the
        // global feed filtered by membership), on the same file.
        let db = rusqlite::Connection::open(&server.app.config.db).unwrap();
        let t = Instant::now();
        let n: i64 = db
            .query_row(
                "SELECT count(*) FROM (SELECT c.seq FROM changes c WHERE c.seq > 0 AND EXISTS
                   (SELECT 1 FROM members m WHERE m.thread_id = c.thread_id AND m.user_id = 'nobody')
                 ORDER BY c.seq LIMIT 501)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        eprintln!(
            "{total} changes, the old membership-filtered scan, user with no threads: {:?} ({n} rows)",
            t.elapsed()
        );
        server.stop().await;
    }
}
