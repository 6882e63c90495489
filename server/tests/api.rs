//! Protocol v1 against the router, in process, over loopback HTTP: exactly
//! once, edit/delete rules, authorization, bad input, pagination, invites,
//! pokes, limits, CORS and static files.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use dovecote::core::sync::{
    AcceptResponse, Change, InviteResponse, MutationBody, PullResponse, PushMutation, PushResponse,
    ServerMessage,
};
use futures_util::StreamExt as _;
use hyper::{Method, StatusCode};

fn messages(pages: &[PullResponse]) -> Vec<ServerMessage> {
    pages
        .iter()
        .flat_map(|p| &p.changes)
        .filter_map(|c| match c {
            Change::Message { message, .. } => Some(message.clone()),
            Change::Thread { .. } => None,
        })
        .collect()
}

#[tokio::test]
async fn the_same_push_1_2_and_10_times_and_concurrently_is_applied_once_with_the_same_acks() {
    let server = TestServer::start().await;
    let http = &server.http;
    let alice = http.session("alice").await;
    let device = device_id();
    let thread = thread_id();
    let (m1, m2) = (message_id(), message_id());
    let request = push_request(
        device,
        vec![create_thread(1, thread, &[]), send(2, thread, m1, "one"), send(3, thread, m2, "two")],
    );

    let first = http.push_ok(&alice, &request).await;
    assert_eq!(first.acks.len(), 3, "{first:?}");
    assert!(first.rejected.is_empty());
    assert_eq!(first.last_mutation_id, 3);
    let dump = server.dump();
    assert_eq!(http.push_ok(&alice, &request).await, first, "second push answers the original acks");
    for _ in 0..10 {
        assert_eq!(http.push_ok(&alice, &request).await, first);
    }
    assert_eq!(server.dump(), dump, "repeats change nothing");

    // A new push sent 10 times at once: one applies it, the others get its results.
    let m3 = message_id();
    let request =
        push_request(device, vec![send(4, thread, m3, "three"), edit(5, thread, m1, "one, edited")]);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (http, alice, request) = (http.clone(), alice.clone(), request.clone());
            tokio::spawn(async move { http.push_ok(&alice, &request).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(answers[0].acks.len(), 2);

    // The same send under a new mutation id (second layer of dedup) gets the original seq.
    let again = http.push_ok(&alice, &push_request(device, vec![send(9, thread, m1, "one")])).await;
    assert_eq!(again.acks[0].seq, first.acks[1].seq);

    let pages = http.pull_all(&alice, 0, 500, None).await;
    let got = messages(&pages);
    assert_eq!(got.len(), 3, "each message stored once: {got:?}");
    let ids: HashSet<_> = got.iter().map(|m| m.id).collect();
    assert_eq!(ids, HashSet::from([m1, m2, m3]));
    let one = got.iter().find(|m| m.id == m1).unwrap();
    assert_eq!(
        (one.body.clone(), one.edited, one.seq),
        (Some(sealed("one, edited")), true, first.acks[1].seq)
    );
    server.stop().await;
}

#[tokio::test]
async fn edits_and_deletes_follow_the_rules_and_delete_wins() {
    let server = TestServer::start().await;
    let http = &server.http;
    let (alice, bob) = (http.session("alice").await, http.session("bob").await);
    let (dev_a, dev_b) = (device_id(), device_id());
    let thread = thread_id();
    let m = message_id();
    http.push_ok(
        &alice,
        &push_request(dev_a, vec![create_thread(1, thread, &["bob"]), send(2, thread, m, "hi")]),
    )
    .await;

    let r = http
        .push_ok(&bob, &push_request(dev_b, vec![edit(1, thread, m, "bob was here"), delete(2, thread, m)]))
        .await;
    assert_eq!(r.rejected.iter().map(|r| r.code.as_str()).collect::<Vec<_>>(), ["not_sender", "not_sender"]);
    let missing = message_id();
    let r = http.push_ok(&alice, &push_request(dev_a, vec![edit(3, thread, missing, "x")])).await;
    assert_eq!(r.rejected[0].code, "not_found");

    let r = http
        .push_ok(&alice, &push_request(dev_a, vec![edit(4, thread, m, "hi!"), delete(5, thread, m)]))
        .await;
    assert_eq!(r.acks.len(), 2);
    let delete_seq = r.acks[1].seq;
    assert!(r.acks[0].seq < delete_seq);
    let r = http
        .push_ok(&alice, &push_request(dev_a, vec![edit(6, thread, m, "too late"), delete(7, thread, m)]))
        .await;
    assert_eq!(r.rejected.len(), 1);
    assert_eq!((r.rejected[0].mutation_id, r.rejected[0].code.as_str()), (6, "edit_deleted"));
    assert_eq!(
        (r.acks[0].mutation_id, r.acks[0].seq),
        (7, delete_seq),
        "a second delete is acked idempotently"
    );

    for token in [&alice, &bob] {
        let got = messages(&http.pull_all(token, 0, 500, None).await);
        assert_eq!(got.len(), 1, "one change per message, at its latest state");
        assert_eq!((got[0].body.clone(), got[0].deleted, got[0].edited), (None, true, true));
        assert_eq!(got[0].sender, user("alice"));
    }
    server.stop().await;
}

#[tokio::test]
async fn another_user_cannot_read_write_invite_to_or_detect_a_thread() {
    let server = TestServer::start().await;
    let http = &server.http;
    let (alice, bob) = (http.session("alice").await, http.session("bob").await);
    let thread = thread_id();
    let m = message_id();
    let dev_a = device_id();
    http.push_ok(
        &alice,
        &push_request(dev_a, vec![create_thread(1, thread, &[]), send(2, thread, m, "secret")]),
    )
    .await;
    let dump = server.dump();

    // Pull: nothing in the feed; the thread, existing or not, is the same 404.
    let all = http.pull_all(&bob, 0, 500, None).await;
    assert!(all.iter().all(|p| p.changes.is_empty()));
    let theirs = http.pull(&bob, &format!("thread={thread}")).await;
    let nowhere = http.pull(&bob, &format!("thread={}", thread_id())).await;
    assert_eq!((theirs.status, &theirs.body), (StatusCode::NOT_FOUND, &nowhere.body));
    assert_eq!(theirs.code(), "not_found");

    // Invite: same 404 for a thread that exists and one that does not.
    let theirs = http.post(&format!("/v1/threads/{thread}/invites"), Some(&bob), "").await;
    let nowhere = http.post(&format!("/v1/threads/{}/invites", thread_id()), Some(&bob), "").await;
    assert_eq!((theirs.status, &theirs.body), (StatusCode::NOT_FOUND, &nowhere.body));

    // Push: the same rejection whether the thread exists or not.
    let dev_b = device_id();
    let other = thread_id();
    let r = http
        .push_ok(
            &bob,
            &push_request(
                dev_b,
                vec![
                    send(1, thread, message_id(), "let me in"),
                    send(2, other, message_id(), "let me in"),
                    edit(3, thread, m, "mine now"),
                    delete(4, thread, m),
                ],
            ),
        )
        .await;
    assert!(r.acks.is_empty());
    let rejections: Vec<_> = r.rejected.iter().map(|r| (r.code.clone(), r.message.clone())).collect();
    assert!(rejections.iter().all(|r| r == &rejections[0] && r.0 == "not_member"), "{rejections:?}");

    // Bob's device is his now; Alice's device refuses Bob.
    let r = http.push(&bob, &push_request(dev_a, vec![send(3, thread, message_id(), "as alice")])).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::FORBIDDEN, "forbidden"));

    // Only Bob's own device row and its results changed; Alice's data did not.
    let after = server.dump();
    for line in dump.lines().filter(|l| !l.contains("sqlite_sequence")) {
        assert!(after.contains(line), "changed: {line}");
    }
    let alice_view = messages(&http.pull_all(&alice, 0, 500, None).await);
    assert_eq!(alice_view.len(), 1);
    assert_eq!(alice_view[0].body, Some(sealed("secret")));
    server.stop().await;
}

#[tokio::test]
async fn sender_comes_from_the_token_never_the_body() {
    let server = TestServer::start().await;
    let http = &server.http;
    let bob = http.session("bob").await;
    let thread = thread_id();
    let m = message_id();
    let mut request = serde_json::to_value(push_request(
        device_id(),
        vec![create_thread(1, thread, &["alice"]), send(2, thread, m, "from alice, honest")],
    ))
    .unwrap();
    request["mutations"][0]["created_by"] = "alice".into();
    request["mutations"][1]["sender"] = "alice".into();
    let r: PushResponse = http.post_json("/v1/push", Some(&bob), &request).await.parse();
    assert_eq!(r.acks.len(), 2);
    let alice = http.session("alice").await;
    let pages = http.pull_all(&alice, 0, 500, None).await;
    let got = messages(&pages);
    assert_eq!(got[0].sender, user("bob"));
    let Change::Thread { thread: t, .. } = &pages[0].changes[0] else { panic!("{pages:?}") };
    assert_eq!((t.created_by.clone(), t.members.clone()), (user("bob"), vec![user("alice"), user("bob")]));
    server.stop().await;
}

#[tokio::test]
async fn expired_forged_and_missing_tokens_are_refused() {
    let server = TestServer::start().await;
    let http = &server.http;
    let alice = http.session("alice").await;
    let expired = server.app.signer.session_token(&user("alice"), 1);
    let foreign = dovecote_server::auth::Signer::new([9; 32]).session_token(&user("alice"), u64::MAX);
    let mut tampered = alice.clone();
    tampered.pop();
    tampered.push(if alice.ends_with('A') { 'B' } else { 'A' });
    let dump = server.dump();
    let request = push_request(device_id(), vec![create_thread(1, thread_id(), &[])]);
    for token in
        [Some(expired.as_str()), Some(foreign.as_str()), Some(tampered.as_str()), Some("Bearer"), None]
    {
        let push =
            http.request(Method::POST, "/v1/push", token, Some(serde_json::to_vec(&request).unwrap())).await;
        let pull = http.get("/v1/pull", token).await;
        let invite = http.post(&format!("/v1/threads/{}/invites", thread_id()), token, "").await;
        for reply in [push, pull, invite] {
            assert_eq!((reply.status, reply.code().as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"));
        }
    }
    assert_eq!(server.dump(), dump);
    assert_eq!(http.pull(&alice, "").await.status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_their_status_and_change_nothing() {
    let server = TestServer::start_with(|c| c.body_limit = 8 * 1024).await;
    let http = &server.http;
    let (alice, bob) = (http.session("alice").await, http.session("bob").await);
    let dev = device_id();
    let thread = thread_id();
    http.push_ok(&alice, &push_request(dev, vec![create_thread(1, thread, &[])])).await;
    let dump = server.dump();

    let good = serde_json::to_value(push_request(dev, vec![send(5, thread, message_id(), "x")])).unwrap();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = good.clone();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let many: Vec<PushMutation> = (1..=501).map(|i| delete(i, thread, message_id())).collect();
    let pushes: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        ("not JSON", b"{\"protocol\":1,".to_vec(), StatusCode::BAD_REQUEST, "bad_request"),
        ("empty body", Vec::new(), StatusCode::BAD_REQUEST, "bad_request"),
        ("array", b"[]".to_vec(), StatusCode::BAD_REQUEST, "bad_request"),
        (
            "id as string",
            with(&|v| v["mutations"][0]["mutation_id"] = "5".into()),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "missing device",
            with(&|v| drop(v.as_object_mut().unwrap().remove("device_id"))),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        ("bad device id", with(&|v| v["device_id"] = "nope".into()), StatusCode::BAD_REQUEST, "bad_request"),
        (
            "unknown kind",
            with(&|v| v["mutations"][0]["kind"] = "shout".into()),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "bad envelope",
            with(&|v| v["mutations"][0]["body"] = "not base64!".into()),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "negative id",
            with(&|v| v["mutations"][0]["mutation_id"] = (-1).into()),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        ("protocol 2", with(&|v| v["protocol"] = 2.into()), StatusCode::BAD_REQUEST, "unsupported_protocol"),
        (
            "protocol 2, new shape",
            br#"{"protocol":2,"ops":{}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "unsupported_protocol",
        ),
        ("protocol 0", with(&|v| v["protocol"] = 0.into()), StatusCode::BAD_REQUEST, "unsupported_protocol"),
        (
            "missing protocol",
            with(&|v| drop(v.as_object_mut().unwrap().remove("protocol"))),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "ids not increasing",
            serde_json::to_vec(&push_request(
                dev,
                vec![send(7, thread, message_id(), "a"), send(6, thread, message_id(), "b")],
            ))
            .unwrap(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "repeated id",
            serde_json::to_vec(&push_request(
                dev,
                vec![send(7, thread, message_id(), "a"), send(7, thread, message_id(), "b")],
            ))
            .unwrap(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "mutation id 0",
            serde_json::to_vec(&push_request(dev, vec![send(0, thread, message_id(), "a")])).unwrap(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "body over limit",
            with(&|v| v["pad"] = "x".repeat(9 * 1024).into()),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
    ];
    for (what, body, status, code) in &pushes {
        let reply = http.post("/v1/push", Some(&alice), body.clone()).await;
        assert_eq!((reply.status, reply.code().as_str()), (*status, *code), "{what}: {:?}", reply.body);
    }
    // 501 mutations need a larger body limit than this server's: check on a default one below.
    let others: Vec<(&str, Reply, StatusCode, &str)> = vec![
        (
            "bob on alice's device",
            http.push(&bob, &push_request(dev, vec![send(9, thread, message_id(), "x")])).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        ("pull cursor", http.pull(&alice, "cursor=abc").await, StatusCode::BAD_REQUEST, "bad_request"),
        (
            "pull negative cursor",
            http.pull(&alice, "cursor=-1").await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        ("pull limit 0", http.pull(&alice, "limit=0").await, StatusCode::BAD_REQUEST, "bad_request"),
        ("pull bad thread", http.pull(&alice, "thread=nope").await, StatusCode::NOT_FOUND, "not_found"),
        (
            "session not JSON",
            http.post("/v1/session", None, "user=alice").await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "session empty user",
            http.post("/v1/session", None, r#"{"user":""}"#).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "session user type",
            http.post("/v1/session", None, r#"{"user":7}"#).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        ("unknown route", http.get("/v1/nothing", Some(&alice)).await, StatusCode::NOT_FOUND, "not_found"),
        (
            "wrong method",
            http.get("/v1/push", Some(&alice)).await,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "bad invite",
            http.post("/v1/invites/i1.e30.AAAA/accept", Some(&alice), "").await,
            StatusCode::FORBIDDEN,
            "invite_invalid",
        ),
    ];
    for (what, reply, status, code) in &others {
        assert_eq!((reply.status, reply.code().as_str()), (*status, *code), "{what}: {:?}", reply.body);
    }
    assert_eq!(server.dump(), dump, "no refused request changed the database");
    server.stop().await;

    let server = TestServer::start().await;
    let alice = server.http.session("alice").await;
    let dump = server.dump();
    let reply = server.http.push(&alice, &push_request(device_id(), many)).await;
    assert_eq!((reply.status, reply.code().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "too_large"));
    assert_eq!(server.dump(), dump);
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_envelope_fails_alone_and_the_rest_of_the_push_proceeds() {
    let server = TestServer::start().await;
    let http = &server.http;
    let alice = http.session("alice").await;
    let (dev, thread) = (device_id(), thread_id());
    let big = "x".repeat(96 * 1024 + 1);
    let request = push_request(
        dev,
        vec![
            create_thread(1, thread, &[]),
            send(2, thread, message_id(), "before"),
            send(3, thread, message_id(), &big),
            send(4, thread, message_id(), "after"),
        ],
    );
    let r = http.push_ok(&alice, &request).await;
    assert_eq!(r.acks.iter().map(|a| a.mutation_id).collect::<Vec<_>>(), [1, 2, 4]);
    assert_eq!((r.rejected[0].mutation_id, r.rejected[0].code.as_str()), (3, "too_large"));
    assert_eq!(r.last_mutation_id, 4);
    assert_eq!(http.push_ok(&alice, &request).await, r, "the refusal is remembered like an ack");
    let at_limit = "y".repeat(96 * 1024 - 3); // sealed() adds 3 bytes
    assert_eq!(
        http.push_ok(&alice, &push_request(dev, vec![send(5, thread, message_id(), &at_limit)]))
            .await
            .acks
            .len(),
        1
    );
    server.stop().await;
}

#[tokio::test]
async fn pull_pages_over_10000_changes_return_each_exactly_once_in_order() {
    let server = TestServer::start().await;
    let http = &server.http;
    let alice = http.session("alice").await;
    let (dev, thread) = (device_id(), thread_id());
    let mut next = 1;
    let mut mutations = vec![create_thread(next, thread, &["bob"])];
    while next < 10_000 {
        next += 1;
        mutations.push(send(next, thread, message_id(), "m"));
        if mutations.len() == 500 || next == 10_000 {
            let r = http.push_ok(&alice, &push_request(dev, std::mem::take(&mut mutations))).await;
            assert!(r.rejected.is_empty());
        }
    }
    let bob = http.session("bob").await;
    for (token, limit, thread) in [(&alice, 1000, None), (&bob, 333, None), (&bob, 1000, Some(thread))] {
        let pages = http.pull_all(token, 0, limit, thread).await;
        let seqs: Vec<u64> = pages.iter().flat_map(|p| p.changes.iter().map(Change::seq)).collect();
        assert_eq!(seqs.len(), 10_000);
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "strictly increasing, so no repeats");
        assert!(pages.iter().all(|p| p.changes.len() <= limit as usize));
        assert!(pages[..pages.len() - 1].iter().all(|p| p.has_more));
        assert_eq!(pages.last().unwrap().cursor, *seqs.last().unwrap());
    }
    let default_page: PullResponse = http.pull(&alice, "").await.parse();
    assert_eq!(default_page.changes.len(), 500);
    let capped: PullResponse = http.pull(&alice, "limit=5000").await.parse();
    assert_eq!(capped.changes.len(), 1000);
    let tail: PullResponse = http.pull(&alice, "cursor=9990").await.parse();
    assert_eq!((tail.changes.len(), tail.has_more, tail.cursor), (10, false, 10_000));
    server.stop().await;
}

#[tokio::test]
async fn an_invited_user_joins_once_and_catches_up_on_history() {
    let server = TestServer::start().await;
    let http = &server.http;
    let (alice, bob, carol) =
        (http.session("alice").await, http.session("bob").await, http.session("carol").await);
    let (thread, other) = (thread_id(), thread_id());
    let dev_a = device_id();
    let mut mutations = vec![create_thread(1, thread, &[]), create_thread(2, other, &[])];
    mutations.extend((3..6).map(|i| send(i, thread, message_id(), "old news")));
    http.push_ok(&alice, &push_request(dev_a, mutations)).await;
    let bob_cursor = 5;

    let invite: InviteResponse =
        http.post(&format!("/v1/threads/{thread}/invites"), Some(&alice), "").await.parse();
    let other_invite: InviteResponse =
        http.post(&format!("/v1/threads/{other}/invites"), Some(&alice), "").await.parse();
    let accepted: AcceptResponse =
        http.post(&format!("/v1/invites/{}/accept", invite.token), Some(&bob), "").await.parse();
    assert_eq!(accepted.thread_id, thread);
    let dump = server.dump();
    let again: AcceptResponse =
        http.post(&format!("/v1/invites/{}/accept", invite.token), Some(&bob), "").await.parse();
    assert_eq!(again.thread_id, thread);
    assert_eq!(server.dump(), dump, "accepting twice changes nothing");

    let feed: PullResponse = http.pull(&bob, &format!("cursor={bob_cursor}")).await.parse();
    let [Change::Thread { thread: t, .. }] = feed.changes.as_slice() else { panic!("{feed:?}") };
    assert_eq!(t.members, vec![user("alice"), user("bob")]);
    let history = messages(&http.pull_all(&bob, 0, 500, Some(thread)).await);
    assert_eq!(history.len(), 3);
    assert!(http.pull(&bob, &format!("thread={other}")).await.status == StatusCode::NOT_FOUND);

    // The join mutation: the invite must be for the thread named.
    let dev_c = device_id();
    let join = |id, thread, invite: &str| PushMutation {
        mutation_id: id,
        body: MutationBody::Join { thread_id: thread, invite: invite.to_owned() },
    };
    let r = http
        .push_ok(
            &carol,
            &push_request(
                dev_c,
                vec![
                    join(1, thread, &other_invite.token),
                    join(2, thread, "i1.forged.x"),
                    join(3, other, &other_invite.token),
                ],
            ),
        )
        .await;
    assert_eq!(
        r.rejected.iter().map(|r| (r.mutation_id, r.code.as_str())).collect::<Vec<_>>(),
        [(1, "invite_invalid"), (2, "invite_invalid")]
    );
    assert_eq!(r.acks[0].mutation_id, 3);
    assert_eq!(http.pull_all(&carol, 0, 500, Some(other)).await[0].changes.len(), 1);
    let expired = server.app.signer.invite_token(&dovecote_server::auth::InviteClaims {
        thread_id: thread,
        created_by: user("alice"),
        expires_at: 1,
        nonce: "n".into(),
    });
    let reply = http.post(&format!("/v1/invites/{expired}/accept"), Some(&carol), "").await;
    assert_eq!((reply.status, reply.code().as_str()), (StatusCode::FORBIDDEN, "invite_invalid"));
    server.stop().await;
}

#[tokio::test]
async fn pokes_reach_every_socket_of_every_member_and_nobody_else() {
    let server = TestServer::start().await;
    let http = &server.http;
    let (alice, bob, carol) =
        (http.session("alice").await, http.session("bob").await, http.session("carol").await);
    let url = |token: &str| format!("ws://{}/v1/events?token={token}", server.addr);
    let (mut bob1, _) = tokio_tungstenite::connect_async(url(&bob)).await.unwrap();
    let (mut bob2, _) = tokio_tungstenite::connect_async(url(&bob)).await.unwrap();
    let (mut carol1, _) = tokio_tungstenite::connect_async(url(&carol)).await.unwrap();
    let refused = tokio_tungstenite::connect_async(url("s1.forged.token")).await;
    assert!(refused.is_err(), "a bad token gets no socket");

    let thread = thread_id();
    let r = http
        .push_ok(
            &alice,
            &push_request(
                device_id(),
                vec![create_thread(1, thread, &["bob"]), send(2, thread, message_id(), "hey")],
            ),
        )
        .await;
    let expected = serde_json::json!({"type": "poke", "cursor": r.acks[1].seq});
    for socket in [&mut bob1, &mut bob2] {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("poke arrives")
            .unwrap()
            .unwrap();
        let event: serde_json::Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
        assert_eq!(event, expected);
    }
    let nothing = tokio::time::timeout(Duration::from_millis(300), carol1.next()).await;
    assert!(nothing.is_err(), "carol is not a member: {nothing:?}");
    drop((bob1, bob2, carol1));
    server.stop().await;
}

#[tokio::test]
async fn requests_over_the_rate_limit_get_429_with_retry_after() {
    let server = TestServer::start_with(|c| c.rate_limit = 5).await;
    let http = &server.http;
    let alice = http.session("alice").await;
    for _ in 0..5 {
        assert_eq!(http.pull(&alice, "").await.status, StatusCode::OK);
    }
    let reply = http.pull(&alice, "").await;
    assert_eq!((reply.status, reply.code().as_str()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    let retry: u64 = reply.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=12).contains(&retry), "{retry}");
    let bob = http.session("bob").await;
    assert_eq!(http.pull(&bob, "").await.status, StatusCode::OK, "limits are per user");
    server.stop().await;
}

#[tokio::test]
async fn cors_preflight_health_and_errors_carry_the_headers() {
    let server = TestServer::start().await;
    let http = &server.http;
    let preflight = http.request(Method::OPTIONS, "/v1/push", None, None).await;
    assert_eq!(preflight.status, StatusCode::NO_CONTENT);
    let allowed = preflight.headers["access-control-allow-headers"].to_str().unwrap();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"));
    let health = http.get("/healthz", None).await;
    assert_eq!((health.status, health.json()), (StatusCode::OK, serde_json::json!({"ok": true})));
    assert_eq!(health.headers["access-control-allow-origin"], "*");
    let unauthorized = http.get("/v1/pull", None).await;
    assert_eq!(unauthorized.headers["access-control-allow-origin"], "*");
    assert_eq!(unauthorized.headers["content-type"], "application/json");
    server.stop().await;
}

#[tokio::test]
async fn static_files_are_served_with_types_and_dotfiles_are_not() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().to_owned();
    for (file, content) in [
        ("www/index.html", "<h1>demo</h1>"),
        ("www/app.js", "export {}"),
        ("pkg/dovecote_bg.wasm", "\0asm"),
        ("data/keep", ""),
        (".git/config", "secret"),
    ] {
        std::fs::create_dir_all(path.join(file).parent().unwrap()).unwrap();
        std::fs::write(path.join(file), content).unwrap();
    }
    // Serve the directory the database lives in, as the demo does.
    let server = TestServer::start_with(|c| {
        c.db = path.join("data/demo.db");
        c.static_dir = Some(path.clone());
    })
    .await;
    for db_file in ["/data/demo.db", "/data/demo.db-wal", "/data/demo.db-shm"] {
        assert_eq!(server.http.get(db_file, None).await.status, StatusCode::NOT_FOUND, "{db_file}");
    }
    let http = &server.http;
    let index = http.get("/www/", None).await;
    assert_eq!((index.status, &index.body[..]), (StatusCode::OK, &b"<h1>demo</h1>"[..]));
    assert!(index.headers["content-type"].to_str().unwrap().starts_with("text/html"));
    let redirect = http.get("/www", None).await;
    assert_eq!(redirect.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(redirect.headers["location"], "/www/");
    assert!(http.get("/www/app.js", None).await.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert_eq!(http.get("/pkg/dovecote_bg.wasm", None).await.headers["content-type"], "application/wasm");
    for hidden in ["/.git/config", "/www/../.git/config", "/www/%2e%2e/.git/config", "/nope.html"] {
        assert_eq!(http.get(hidden, None).await.status, StatusCode::NOT_FOUND, "{hidden}");
    }
    assert_eq!(http.get("/healthz", None).await.status, StatusCode::OK, "API routes still win");
    server.stop().await;
}

#[tokio::test]
async fn envelopes_are_stored_as_blobs_exactly_as_received() {
    let server = TestServer::start().await;
    let http = &server.http;
    let alice = http.session("alice").await;
    let (thread, m) = (thread_id(), message_id());
    // Arbitrary bytes: the server must neither parse nor transform them.
    let canary: Vec<u8> = (0..=255u8).rev().chain(b"CANARY-ciphertext".iter().copied()).collect();
    let request = push_request(
        device_id(),
        vec![
            create_thread(1, thread, &[]),
            PushMutation {
                mutation_id: 2,
                body: MutationBody::Send {
                    thread_id: thread,
                    message_id: m,
                    body: dovecote::core::envelope::Envelope(canary.clone()),
                    client_ts: 3,
                },
            },
        ],
    );
    http.push_ok(&alice, &request).await;
    let db = rusqlite::Connection::open(server.dir.path().join("test.db")).unwrap();
    let (stored, kind): (Vec<u8>, String) = db
        .query_row("SELECT body, typeof(body) FROM messages WHERE id = ?1", [m.to_string()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((stored, kind.as_str()), (canary.clone(), "blob"));
    let got = messages(&http.pull_all(&alice, 0, 500, None).await);
    assert_eq!(got[0].body.as_ref().unwrap().0, canary);
    server.stop().await;
}

/// Ids and cursors are u64 and SQLite's integers i64: past i64::MAX a cursor
/// read as negative and a pull returned the whole feed (found by
/// tests/openapi/run, its cursor check), and pruning compared mutation ids
/// as signed, dropping the stored answers of the latest push.
#[tokio::test]
async fn ids_and_cursors_past_i64_max_keep_their_order() {
    let server = TestServer::start().await;
    let http = &server.http;
    let alice = http.session("alice").await;
    let (device, thread) = (device_id(), thread_id());
    let high = 1u64 << 63;
    let request = push_request(
        device,
        vec![create_thread(high, thread, &[]), send(high + 1, thread, message_id(), "hi")],
    );
    let first = http.push_ok(&alice, &request).await;
    assert_eq!((first.acks.len(), first.last_mutation_id), (2, high + 1), "{first:?}");

    for query in
        [format!("cursor={high}"), format!("cursor={}", u64::MAX), format!("cursor={high}&thread={thread}")]
    {
        let page: PullResponse = http.pull(&alice, &query).await.parse();
        assert!(page.changes.is_empty(), "{query}: nothing is after the cursor: {page:?}");
        assert_eq!(
            page.cursor.to_string(),
            query[7..].split('&').next().unwrap(),
            "{query}: the cursor stays"
        );
    }
    let all: PullResponse = http.pull(&alice, "cursor=0").await.parse();
    assert_eq!(all.changes.len(), 2);

    // An id below the mark is refused and prunes nothing above it...
    let low = http.push_ok(&alice, &push_request(device, vec![send(5, thread, message_id(), "late")])).await;
    assert_eq!(low.rejected[0].code, "out_of_order", "{low:?}");
    // ...so a retry of the push whose answer was lost still gets its acks.
    assert_eq!(http.push_ok(&alice, &request).await, first);
    // A push starting past both prunes both; the next id still follows the mark.
    let next =
        http.push_ok(&alice, &push_request(device, vec![delete(high + 2, thread, message_id())])).await;
    assert_eq!((next.rejected[0].code.as_str(), next.last_mutation_id), ("not_found", high + 2), "{next:?}");
    let again = http.push_ok(&alice, &request).await;
    assert!(again.acks.is_empty() && again.rejected.iter().all(|r| r.code == "out_of_order"), "{again:?}");
}
