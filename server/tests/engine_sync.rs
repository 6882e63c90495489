//! The SDK's engine syncing with the real server (in process, over loopback
//! HTTP, SQLite on disk): acks, pulls, invites and catch-up, edits and
//! deletes, conflicts, permanent failures, lost answers. The browser's
//! transport is tested against the same server in headless Chromium; here
//! the engine's rules are checked fast and natively.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use common::*;
use dovecote::core::keys::Kek;
use dovecote::core::model::{MessageStatus, UserId};
use dovecote::core::outbox::TransportFailure;
use dovecote::core::sync::{
    Change, ErrorBody, InviteResponse, PullPage, PullRequest, PushRequest, PushResponse,
};
use dovecote::engine::{Client, ClientEvent, Message, SyncState};
use dovecote::ports::{Store, Traffic, Transport};
use dovecote::testing::{ManualClock, MemoryStore};
use hyper::Method;

type TestClient = Client<MemoryStore, ManualClock, Kek>;

/// A transport on the test HTTP client, which can lose answers on purpose.
struct Net {
    http: Http,
    token: RefCell<String>,
    /// The next this many pushes reach the server, but their answers are lost.
    lose_answers: Cell<u32>,
    /// The server is "down": every request fails before it leaves.
    down: Cell<bool>,
    traffic: Cell<Traffic>,
}

impl Net {
    async fn new(http: &Http, user: &str) -> Self {
        Net {
            http: http.clone(),
            token: RefCell::new(http.session(user).await),
            lose_answers: Cell::new(0),
            down: Cell::new(false),
            traffic: Cell::default(),
        }
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, TransportFailure> {
        if self.down.get() {
            return Err(TransportFailure::Network);
        }
        let token = self.token.borrow().clone();
        let up = body.as_ref().map_or(0, |b| b.len() as u64);
        let traffic = self.traffic.get();
        self.traffic.set(Traffic { up: traffic.up + up, ..traffic });
        let reply = self
            .http
            .try_request(method, path, Some(&token), body)
            .await
            .map_err(|_| TransportFailure::Network)?;
        let traffic = self.traffic.get();
        self.traffic.set(Traffic { down: traffic.down + reply.body.len() as u64, ..traffic });
        if !reply.status.is_success() {
            let retry_after = reply
                .headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .map(|s| s * 1000);
            return Err(TransportFailure::Status {
                status: reply.status.as_u16(),
                error: serde_json::from_slice::<ErrorBody>(&reply.body).ok().map(|b| b.error),
                retry_after,
            });
        }
        serde_json::from_slice(&reply.body).map_err(|e| TransportFailure::Protocol(e.to_string()))
    }
}

impl Transport for Net {
    async fn push(&self, request: &PushRequest) -> Result<PushResponse, TransportFailure> {
        let answer = self.call(Method::POST, "/v1/push", Some(serde_json::to_vec(request).unwrap())).await;
        if answer.is_ok() && self.lose_answers.get() > 0 {
            self.lose_answers.set(self.lose_answers.get() - 1);
            return Err(TransportFailure::Network);
        }
        answer
    }

    async fn pull(&self, request: &PullRequest) -> Result<PullPage, TransportFailure> {
        let thread = request.thread.map(|t| format!("&thread={t}")).unwrap_or_default();
        let path = format!("/v1/pull?cursor={}&limit={}{thread}", request.cursor, request.limit);
        self.call(Method::GET, &path, None).await
    }

    async fn create_invite(
        &self,
        thread: dovecote::core::model::ThreadId,
    ) -> Result<InviteResponse, TransportFailure> {
        self.call(Method::POST, &format!("/v1/threads/{thread}/invites"), Some(Vec::new())).await
    }

    fn traffic(&self) -> Traffic {
        self.traffic.get()
    }
}

async fn open(store: &MemoryStore, user: &str) -> TestClient {
    Client::open(
        store.clone(),
        ManualClock::new(1_700_000_000_000),
        Kek::from_bytes(&[7; 32]),
        UserId::parse(user).unwrap(),
        None,
    )
    .await
    .unwrap()
}

async fn all_messages(client: &TestClient, thread: dovecote::core::model::ThreadId) -> Vec<Message> {
    client.messages(thread, None, 1000).await.unwrap()
}

fn bodies(messages: &[Message]) -> Vec<String> {
    messages.iter().map(|m| m.body.clone().unwrap_or_else(|| "<none>".into())).collect()
}

/// Every message of the server's feed for `token`'s user.
async fn server_messages(http: &Http, token: &str) -> Vec<dovecote::core::sync::ServerMessage> {
    http.pull_all(token, 0, 1000, None)
        .await
        .into_iter()
        .flat_map(|p| p.changes)
        .filter_map(|c| match c {
            Change::Message { message, .. } => Some(message),
            Change::Thread { .. } => None,
        })
        .collect()
}

#[tokio::test]
async fn sends_become_sent_in_place_and_an_invited_device_catches_up_on_the_history() {
    let server = TestServer::start().await;
    let alice_net = Net::new(&server.http, "alice").await;
    let alice = open(&MemoryStore::new(), "alice").await;
    let events: Rc<RefCell<Vec<ClientEvent>>> = Rc::default();
    let seen = events.clone();
    alice.on_event(move |e| seen.borrow_mut().push(e.clone()));

    let thread = alice.create_thread("Lunch", &[]).await.unwrap();
    let mut sent = Vec::new();
    for n in 0..5 {
        sent.push(alice.send(thread.id, &format!("m{n}")).await.unwrap());
    }
    let report = alice.sync_round(&alice_net).await.unwrap();
    assert_eq!(report.failure, None);
    assert_eq!(report.pushed, 6, "create_thread and 5 sends, in one push");
    assert_eq!(report.pushes, 1);
    assert_eq!(report.next_wake, None, "nothing left to push");
    assert!(alice.outbox().await.unwrap().is_empty());

    let page = all_messages(&alice, thread.id).await;
    assert_eq!(bodies(&page), ["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(page.iter().map(|m| m.id).collect::<Vec<_>>(), sent.iter().map(|m| m.id).collect::<Vec<_>>());
    assert!(page.iter().all(|m| m.status == MessageStatus::Sent && m.seq.is_some() && m.server_ts.is_some()));
    assert!(page.windows(2).all(|w| w[0].seq < w[1].seq), "server order");
    assert_eq!(alice.sync_state(), SyncState::Idle);
    {
        let events = events.borrow();
        let sent_events = events
            .iter()
            .filter(|e| matches!(e, ClientEvent::Status { message } if message.status == MessageStatus::Sent))
            .count();
        assert_eq!(sent_events, 5, "one `sent` status event per message: {events:?}");
        assert!(matches!(events.first(), Some(ClientEvent::Threads)), "creating a thread says so");
        let states: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Sync { state, .. } => Some(*state),
                _ => None,
            })
            .collect();
        assert_eq!(states, [SyncState::Syncing, SyncState::Idle]);
    }

    // Bob joins by invite: the thread, its title and its history arrive.
    let token = alice_net.create_invite(thread.id).await.unwrap().token;
    let code = alice.export_thread_invite(thread.id, Some(token)).unwrap();
    let bob_net = Net::new(&server.http, "bob").await;
    let bob_store = MemoryStore::new();
    let bob = open(&bob_store, "bob").await;
    let joined = bob.import_thread_invite(&format!("#k={code}")).await.unwrap();
    assert_eq!(joined, thread.id);
    let report = bob.sync_round(&bob_net).await.unwrap();
    assert_eq!(report.failure, None);
    let threads = bob.threads().await.unwrap();
    assert_eq!(threads.len(), 1);
    assert_eq!(threads[0].title.as_deref(), Some("Lunch"));
    assert_eq!(threads[0].members, vec![UserId::parse("alice").unwrap(), UserId::parse("bob").unwrap()]);
    let bobs = all_messages(&bob, thread.id).await;
    assert_eq!(bobs, page, "bob sees exactly alice's messages, decrypted, in the same order");
    assert_eq!(bob_store.meta("catchup").await.unwrap().as_deref(), Some("{}"), "catch-up done");

    // Bob answers; alice pulls it; nothing is duplicated anywhere.
    bob.send(thread.id, "on my way").await.unwrap();
    bob.sync_round(&bob_net).await.unwrap();
    alice.sync_round(&alice_net).await.unwrap();
    let page = all_messages(&alice, thread.id).await;
    assert_eq!(bodies(&page), ["m0", "m1", "m2", "m3", "m4", "on my way"]);
    assert_eq!(page.last().unwrap().sender, UserId::parse("bob").unwrap());
    assert_eq!(all_messages(&bob, thread.id).await, page);
    let token = alice_net.token.borrow().clone();
    assert_eq!(server_messages(&server.http, &token).await.len(), 6);
}

#[tokio::test]
async fn a_lost_answer_is_retried_and_the_server_holds_the_message_once() {
    let server = TestServer::start().await;
    let net = Net::new(&server.http, "alice").await;
    let store = MemoryStore::new();
    let alice = open(&store, "alice").await;
    let thread = alice.create_thread("T", &[]).await.unwrap();
    alice.send(thread.id, "exactly once").await.unwrap();

    net.lose_answers.set(1);
    let report = alice.sync_round(&net).await.unwrap();
    assert_eq!(report.failure.as_ref().map(|f| f.code.as_str()), Some("network"));
    assert_eq!(alice.sync_state(), SyncState::Offline);
    let entry = &alice.outbox().await.unwrap()[1];
    assert_eq!((entry.state, entry.attempts), ("queued", 1), "in doubt, waiting to retry");

    // A restart in between: the new client asks again under the same id.
    drop(alice);
    let alice = open(&store, "alice").await;
    alice.wake_outbox().await.unwrap();
    let report = alice.sync_round(&net).await.unwrap();
    assert_eq!(report.failure, None, "{report:?}");
    let page = all_messages(&alice, thread.id).await;
    assert_eq!(bodies(&page), ["exactly once"]);
    assert_eq!(page[0].status, MessageStatus::Sent);
    let token = net.token.borrow().clone();
    assert_eq!(server_messages(&server.http, &token).await.len(), 1);
}

#[tokio::test]
async fn a_message_refused_for_good_fails_alone_and_can_be_cancelled_or_retried() {
    // An envelope limit small enough that one long message is refused.
    let server = TestServer::start_with(|c| c.envelope_limit = 2_000).await;
    let net = Net::new(&server.http, "alice").await;
    let alice = open(&MemoryStore::new(), "alice").await;
    let thread = alice.create_thread("T", &[]).await.unwrap();
    alice.send(thread.id, "before").await.unwrap();
    let big = alice.send(thread.id, &"x".repeat(3_000)).await.unwrap();
    alice.send(thread.id, "after").await.unwrap();
    let report = alice.sync_round(&net).await.unwrap();
    assert_eq!(report.failure, None);

    let page = all_messages(&alice, thread.id).await;
    let status: Vec<_> =
        page.iter().map(|m| (m.body.clone().unwrap()[..5].to_owned(), m.status.clone())).collect();
    assert_eq!(status[0], ("befor".into(), MessageStatus::Sent));
    assert_eq!(status[1].0, "after");
    assert_eq!(status[1].1, MessageStatus::Sent, "later messages still go");
    assert!(
        matches!(&status[2].1, MessageStatus::Failed { code, recoverable: false, .. } if code == "too_large"),
        "{status:?}"
    );
    let outbox = alice.outbox().await.unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].state, "failed");
    assert_eq!(outbox[0].error.as_ref().unwrap().code, "too_large");

    // Retry fails again (still too large); an edit to something shorter goes.
    alice.retry(big.id).await.unwrap();
    alice.sync_round(&net).await.unwrap();
    assert!(matches!(
        alice.messages(thread.id, None, 10).await.unwrap()[2].status,
        MessageStatus::Failed { .. }
    ));
    alice.edit(big.id, "shorter").await.unwrap();
    alice.sync_round(&net).await.unwrap();
    let page = all_messages(&alice, thread.id).await;
    assert_eq!(bodies(&page), ["before", "after", "shorter"]);
    assert!(page.iter().all(|m| m.status == MessageStatus::Sent));
    assert!(!page[2].edited, "never sent before: the send was rewritten, not edited");

    // A cancelled message is never sent.
    let gone = alice.send(thread.id, &"y".repeat(3_000)).await.unwrap();
    alice.sync_round(&net).await.unwrap();
    alice.cancel(gone.id).await.unwrap();
    assert!(alice.outbox().await.unwrap().is_empty());
    assert_eq!(alice.messages(thread.id, None, 10).await.unwrap()[3].status, MessageStatus::Cancelled);
    let token = net.token.borrow().clone();
    assert_eq!(server_messages(&server.http, &token).await.len(), 3);
}

#[tokio::test]
async fn edits_and_deletes_sync_and_a_remote_delete_wins_over_a_pending_edit() {
    let server = TestServer::start().await;
    let net = Net::new(&server.http, "alice").await;
    let laptop = open(&MemoryStore::new(), "alice").await;
    let thread = laptop.create_thread("T", &[]).await.unwrap();
    let m = laptop.send(thread.id, "first").await.unwrap();
    laptop.sync_round(&net).await.unwrap();

    // A second device of alice's, with the key by invite.
    let phone_net = Net::new(&server.http, "alice").await;
    let phone = open(&MemoryStore::new(), "alice").await;
    let code = laptop.export_thread_invite(thread.id, None).unwrap();
    phone.import_thread_invite(&code).await.unwrap();
    phone.sync_round(&phone_net).await.unwrap();
    assert_eq!(bodies(&all_messages(&phone, thread.id).await), ["first"]);

    laptop.edit(m.id, "first, edited").await.unwrap();
    laptop.sync_round(&net).await.unwrap();
    phone.sync_round(&phone_net).await.unwrap();
    let seen = all_messages(&phone, thread.id).await;
    assert_eq!(bodies(&seen), ["first, edited"]);
    assert!(seen[0].edited);

    // The phone edits while offline; the laptop deletes; delete wins.
    let conflicts: Rc<RefCell<Vec<ClientEvent>>> = Rc::default();
    let sink = conflicts.clone();
    phone.on_event(move |e| {
        if matches!(e, ClientEvent::Conflict { .. }) {
            sink.borrow_mut().push(e.clone())
        }
    });
    phone_net.down.set(true);
    phone.edit(m.id, "phone edit").await.unwrap();
    phone.sync_round(&phone_net).await.unwrap();
    assert_eq!(phone.sync_state(), SyncState::Offline);
    assert_eq!(
        bodies(&all_messages(&phone, thread.id).await),
        ["phone edit"],
        "the local edit shows at once"
    );
    laptop.delete(m.id).await.unwrap();
    laptop.sync_round(&net).await.unwrap();
    phone_net.down.set(false);
    phone.wake_outbox().await.unwrap();
    phone.sync_round(&phone_net).await.unwrap();
    phone.sync_round(&phone_net).await.unwrap();

    for client in [&phone, &laptop] {
        let page = all_messages(client, thread.id).await;
        assert_eq!(page.len(), 1);
        assert!(page[0].deleted && page[0].body.is_none(), "{page:?}");
    }
    assert_eq!(conflicts.borrow().len(), 1, "the phone's UI is told once");
    let outbox = phone.outbox().await.unwrap();
    assert!(outbox.iter().all(|e| e.state != "queued"), "nothing left to retry: {outbox:?}");
}

#[tokio::test]
async fn joining_a_thread_older_than_the_cursor_catches_up_on_its_history_once() {
    let server = TestServer::start().await;
    let alice_net = Net::new(&server.http, "alice").await;
    let alice = open(&MemoryStore::new(), "alice").await;
    let old = alice.create_thread("Old news", &[]).await.unwrap();
    for n in 0..30 {
        alice.send(old.id, &format!("old {n}")).await.unwrap();
    }
    alice.sync_round(&alice_net).await.unwrap();

    // Bob has been syncing his own thread: his cursor is past alice's history.
    let bob_net = Net::new(&server.http, "bob").await;
    let bob_store = MemoryStore::new();
    let bob = open(&bob_store, "bob").await;
    let own = bob.create_thread("Bob's", &[]).await.unwrap();
    bob.send(own.id, "mine").await.unwrap();
    bob.sync_round(&bob_net).await.unwrap();
    let cursor: u64 = bob_store.meta("cursor").await.unwrap().unwrap().parse().unwrap();
    assert!(cursor > 31, "bob's cursor {cursor} is past alice's 31 changes");

    let token = alice_net.create_invite(old.id).await.unwrap().token;
    let code = alice.export_thread_invite(old.id, Some(token)).unwrap();
    bob.import_thread_invite(&code).await.unwrap();
    alice.send(old.id, "new 0").await.unwrap();
    alice.sync_round(&alice_net).await.unwrap();
    let report = bob.sync_round(&bob_net).await.unwrap();
    assert_eq!(report.failure, None);
    let page = all_messages(&bob, old.id).await;
    let mut expected: Vec<String> = (0..30).map(|n| format!("old {n}")).collect();
    expected.push("new 0".into());
    assert_eq!(bodies(&page), expected, "the whole history, in order, once");
    assert!(page.iter().all(|m| m.status == MessageStatus::Sent && m.undecryptable.is_none()));
    assert_eq!(bob_store.meta("catchup").await.unwrap().as_deref(), Some("{}"), "catch-up done");
    assert!(report.pulled < 31 + 31 + 10, "history pulled about once, not twice: {report:?}");
}
