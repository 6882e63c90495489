//! The browser network adapters (`web::http`, `web::ws`, `web::timers`) in
//! headless Chrome against the real `dovecote-server`, cross-origin as in
//! production (CORS, preflights, exposed headers).
//!
//! `scripts/test` starts the servers and passes their URLs at compile time:
//! `DOVECOTE_TEST_SERVER` (the sync server), `DOVECOTE_TEST_LIMITED` (one
//! request per user per minute), `DOVECOTE_TEST_STALL` (accepts connections
//! and never answers) and `DOVECOTE_TEST_CLOSED` (nobody listens). A test
//! whose server is not given says so on the console and checks nothing.
#![cfg(target_arch = "wasm32")]

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use dovecote::core::envelope::Envelope;
use dovecote::core::model::{DeviceId, MessageId, Millis, ThreadId, UserId};
use dovecote::core::outbox::{Backoff, TransportFailure};
use dovecote::core::sync::{
    Change, Incoming, MutationBody, PullRequest, PushMutation, PushRequest, ServerEvent, PROTOCOL_VERSION,
};
use dovecote::ports::Transport;
use dovecote::web::http::{sign_in, HttpTransport, ServerUrl};
use dovecote::web::timers::{self, sleep, BrowserEvent, BrowserEvents, Timeout, Trigger, Wakeup};
use dovecote::web::ws::{PokeSocket, SocketEvent, SocketOptions};
use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

fn configured(name: &str, value: Option<&'static str>) -> Option<&'static str> {
    if value.is_none() {
        console_log!("SKIPPED: {name} is not set at compile time (scripts/test sets it)");
    }
    value
}

fn server() -> Option<ServerUrl> {
    configured("DOVECOTE_TEST_SERVER", option_env!("DOVECOTE_TEST_SERVER"))
        .map(|u| ServerUrl::parse(u).unwrap())
}

fn now() -> Millis {
    js_sys::Date::now() as Millis
}

fn random10() -> [u8; 10] {
    let mut bytes = [0; 10];
    getrandom::fill(&mut bytes).unwrap();
    bytes
}

fn thread_id() -> ThreadId {
    ThreadId::from_parts(now(), random10())
}

fn message_id() -> MessageId {
    MessageId::from_parts(now(), random10())
}

fn device_id() -> DeviceId {
    DeviceId::from_parts(now(), random10())
}

/// A user of its own for each test, so tests share nothing on the server.
fn user(name: &str) -> UserId {
    UserId::parse(&format!("{name}-{}", hex(&random10()))).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn signed_in(server: &ServerUrl, name: &str) -> (UserId, HttpTransport) {
    let user = user(name);
    let session = sign_in(server, &user).await.expect("sign-in");
    assert_eq!(session.user, user);
    assert!(!session.token.is_empty());
    assert!(session.expires_at > now(), "a fresh token is not expired");
    (user, HttpTransport::new(server.clone(), session.token))
}

fn create_thread(thread: ThreadId, members: Vec<UserId>) -> MutationBody {
    MutationBody::CreateThread {
        thread_id: thread,
        title: Envelope(vec![0xde, 0xad]),
        members,
        created_at: now(),
    }
}

fn send(thread: ThreadId, message: MessageId, body: &[u8]) -> MutationBody {
    MutationBody::Send {
        thread_id: thread,
        message_id: message,
        body: Envelope(body.to_vec()),
        client_ts: now(),
    }
}

fn push_request(device: DeviceId, mutations: Vec<(u64, MutationBody)>) -> PushRequest {
    PushRequest {
        protocol: PROTOCOL_VERSION,
        device_id: device,
        mutations: mutations
            .into_iter()
            .map(|(mutation_id, body)| PushMutation { mutation_id, body })
            .collect(),
    }
}

fn all(cursor: u64) -> PullRequest {
    PullRequest { cursor, limit: 100, thread: None }
}

fn status(failure: Result<impl std::fmt::Debug, TransportFailure>) -> (u16, String) {
    match failure {
        Err(TransportFailure::Status { status, error, .. }) => (status, error.expect("an error body").code),
        other => panic!("expected an HTTP error status, got {other:?}"),
    }
}

#[wasm_bindgen_test]
async fn pushed_mutations_are_acked_pulled_back_byte_for_byte_and_applied_exactly_once() {
    let Some(server) = server() else { return };
    let (alice, transport) = signed_in(&server, "alice").await;
    let (device, thread, message) = (device_id(), thread_id(), message_id());
    let body = b"\x00opaque ciphertext\xff".to_vec();
    let request =
        push_request(device, vec![(1, create_thread(thread, vec![])), (2, send(thread, message, &body))]);

    let first = transport.push(&request).await.expect("push");
    assert_eq!(first.protocol, PROTOCOL_VERSION);
    assert_eq!(first.acks.iter().map(|a| a.mutation_id).collect::<Vec<_>>(), [1, 2]);
    assert!(first.acks[0].seq < first.acks[1].seq);
    assert!(first.rejected.is_empty(), "{:?}", first.rejected);
    assert_eq!(first.last_mutation_id, 2);

    let pulled = transport.pull(&all(0)).await.expect("pull");
    assert!(!pulled.has_more);
    assert_eq!(pulled.cursor, first.acks[1].seq);
    match &pulled.changes[..] {
        [Incoming::Valid(Change::Thread { thread: t, .. }, _), Incoming::Valid(Change::Message { seq, message: m }, _)] =>
        {
            assert_eq!((t.id, &t.title.0, &t.created_by), (thread, &vec![0xde, 0xad], &alice));
            assert_eq!((m.id, m.thread_id, &m.sender), (message, thread, &alice));
            assert_eq!(m.body.as_ref().map(|b| &b.0), Some(&body));
            assert_eq!(*seq, first.acks[1].seq);
        }
        other => panic!("expected the thread and the message, got {other:?}"),
    }
    let one_thread =
        transport.pull(&PullRequest { cursor: 0, limit: 1, thread: Some(thread) }).await.unwrap();
    assert_eq!(one_thread.changes.len(), 1, "limit is honoured");
    assert!(one_thread.has_more);

    // The answer to a push can be lost; its retry gets the same acks and
    // changes nothing.
    let again = transport.push(&request).await.expect("repeated push");
    assert_eq!(again, first);
    let after = transport.pull(&all(pulled.cursor)).await.unwrap();
    assert!(after.changes.is_empty(), "a repeated push applied something: {:?}", after.changes);
    assert_eq!(after.cursor, pulled.cursor);
}

#[wasm_bindgen_test]
async fn invites_are_for_members_and_a_join_push_brings_the_thread() {
    let Some(server) = server() else { return };
    let (_, alice) = signed_in(&server, "alice").await;
    let (bob_id, bob) = signed_in(&server, "bob").await;
    let thread = thread_id();
    alice.push(&push_request(device_id(), vec![(1, create_thread(thread, vec![]))])).await.unwrap();

    assert_eq!(status(bob.create_invite(thread).await), (404, "not_found".into()));
    let invite = alice.create_invite(thread).await.expect("a member gets an invite");
    assert!(invite.expires_at > now());

    let join = MutationBody::Join { thread_id: thread, invite: invite.token };
    let joined = bob.push(&push_request(device_id(), vec![(1, join)])).await.unwrap();
    assert_eq!(joined.acks.len(), 1, "{joined:?}");
    let pulled = bob.pull(&all(0)).await.unwrap();
    match &pulled.changes[..] {
        [Incoming::Valid(Change::Thread { thread: t, .. }, _)] => {
            assert!(t.id == thread && t.members.contains(&bob_id))
        }
        other => panic!("expected the joined thread, got {other:?}"),
    }
}

#[wasm_bindgen_test]
async fn a_bad_token_is_a_401_unauthorized_and_changes_nothing() {
    let Some(server) = server() else { return };
    let (_, alice) = signed_in(&server, "alice").await;
    let forged = HttpTransport::new(server.clone(), "s1.forged.token");
    let thread = thread_id();
    let request = push_request(device_id(), vec![(1, create_thread(thread, vec![]))]);
    assert_eq!(status(forged.push(&request).await), (401, "unauthorized".into()));
    assert_eq!(status(forged.pull(&all(0)).await), (401, "unauthorized".into()));
    assert_eq!(status(forged.create_invite(thread).await), (401, "unauthorized".into()));

    // A new token on the same transport works at once.
    let token = sign_in(&server, &user("carol")).await.unwrap().token;
    forged.set_token(token);
    assert_eq!(forged.push(&request).await.unwrap().acks.len(), 1);
    assert!(alice.pull(&all(0)).await.unwrap().changes.is_empty(), "alice sees nothing of carol's");
}

#[wasm_bindgen_test]
async fn an_oversized_push_is_a_413_too_large() {
    let Some(server) = server() else { return };
    let (_, alice) = signed_in(&server, "alice").await;
    let thread = thread_id();
    // 300 KB of envelope is 400 KB of base64: over the 256 KiB body limit.
    let big = vec![7; 300_000];
    let request = push_request(
        device_id(),
        vec![(1, create_thread(thread, vec![])), (2, send(thread, message_id(), &big))],
    );
    assert_eq!(status(alice.push(&request).await), (413, "too_large".into()));
    assert!(alice.pull(&all(0)).await.unwrap().changes.is_empty(), "a refused push stores nothing");
}

#[wasm_bindgen_test]
async fn rate_limiting_comes_with_retry_after_in_milliseconds() {
    let Some(url) = configured("DOVECOTE_TEST_LIMITED", option_env!("DOVECOTE_TEST_LIMITED")) else { return };
    let (_, limited) = signed_in(&ServerUrl::parse(url).unwrap(), "alice").await;
    limited.pull(&all(0)).await.expect("the first request of the minute");
    match limited.pull(&all(0)).await {
        Err(TransportFailure::Status { status: 429, error: Some(e), retry_after: Some(ms) }) => {
            assert_eq!(e.code, "rate_limited");
            // The server says when in whole seconds, at most the bucket's minute.
            assert!((1000..=60_000).contains(&ms) && ms % 1000 == 0, "retry_after {ms}");
        }
        other => panic!("expected 429 with Retry-After, got {other:?}"),
    }
}

#[wasm_bindgen_test]
async fn a_server_that_is_not_there_is_a_network_failure() {
    let Some(url) = configured("DOVECOTE_TEST_CLOSED", option_env!("DOVECOTE_TEST_CLOSED")) else { return };
    let server = ServerUrl::parse(url).unwrap();
    let transport = HttpTransport::new(server.clone(), "t");
    assert_eq!(transport.pull(&all(0)).await, Err(TransportFailure::Network));
    assert_eq!(sign_in(&server, &user("alice")).await, Err(TransportFailure::Network));
}

#[wasm_bindgen_test]
async fn a_server_that_never_answers_times_out_when_configured_to() {
    let Some(url) = configured("DOVECOTE_TEST_STALL", option_env!("DOVECOTE_TEST_STALL")) else { return };
    let transport = HttpTransport::new(ServerUrl::parse(url).unwrap(), "t").with_timeout(300);
    let started = now();
    assert_eq!(transport.pull(&all(0)).await, Err(TransportFailure::Timeout));
    let took = now() - started;
    assert!((299..3000).contains(&took), "timed out after {took} ms");
}

/// Records what a socket reports and wakes the test on each report.
#[derive(Clone, Default)]
struct Recorder {
    events: Rc<RefCell<Vec<(Millis, SocketEvent)>>>,
    trigger: Trigger,
}

impl Recorder {
    fn callback(&self) -> impl FnMut(SocketEvent) + 'static {
        let this = self.clone();
        move |event| {
            this.events.borrow_mut().push((now(), event));
            this.trigger.fire();
        }
    }

    /// Waits up to `ms` for a report that `matches`.
    async fn until(&self, ms: Millis, matches: impl Fn(&SocketEvent) -> bool) -> Option<SocketEvent> {
        let deadline = now() + ms;
        loop {
            if let Some((_, event)) = self.events.borrow().iter().find(|(_, e)| matches(e)) {
                return Some(event.clone());
            }
            let left = deadline.saturating_sub(now());
            if left == 0 {
                return None;
            }
            self.trigger.wait(Some(left)).await;
        }
    }

    fn count(&self) -> usize {
        self.events.borrow().len()
    }
}

#[wasm_bindgen_test]
async fn a_push_pokes_the_socket_of_a_member_and_a_dropped_socket_stays_silent() {
    let Some(server) = server() else { return };
    let (_, alice) = signed_in(&server, "alice").await;
    let device = device_id();
    let thread = thread_id();
    alice.push(&push_request(device, vec![(1, create_thread(thread, vec![]))])).await.unwrap();

    let recorder = Recorder::default();
    let socket = PokeSocket::connect(alice.events_url(), recorder.callback());
    assert!(recorder.until(5000, |e| *e == SocketEvent::Connected).await.is_some(), "no connection");
    assert!(socket.is_connected());

    let sent = alice.push(&push_request(device, vec![(2, send(thread, message_id(), b"hi"))])).await.unwrap();
    let seq = sent.acks[0].seq;
    let poke = recorder.until(5000, |e| matches!(e, SocketEvent::Server(_))).await;
    assert_eq!(poke, Some(SocketEvent::Server(ServerEvent::Poke { cursor: seq })));

    drop(socket);
    let seen = recorder.count();
    alice.push(&push_request(device, vec![(3, send(thread, message_id(), b"again"))])).await.unwrap();
    sleep(500).await;
    assert_eq!(recorder.count(), seen, "a dropped socket reported {:?}", &recorder.events.borrow()[seen..]);
}

#[wasm_bindgen_test]
async fn a_socket_with_nobody_to_talk_to_retries_with_growing_jittered_backoff_until_dropped() {
    let Some(url) = configured("DOVECOTE_TEST_CLOSED", option_env!("DOVECOTE_TEST_CLOSED")) else { return };
    let events_url = ServerUrl::parse(url).unwrap().events("t");
    let backoff = Backoff { base_ms: 10, factor: 2, cap_ms: 640 };
    let options = SocketOptions { backoff, ..SocketOptions::DEFAULT };
    let recorder = Recorder::default();
    let socket = PokeSocket::connect_with(events_url, options, recorder.callback());
    let attempts = 8;
    let done = recorder.until(10_000, |_| recorder.count() >= attempts).await;
    assert!(done.is_some(), "only {} attempts in 10 s", recorder.count());
    drop(socket);
    let events = recorder.events.borrow().clone();
    let mut waits = Vec::new();
    for (attempt, (_, event)) in events.iter().enumerate() {
        match event {
            SocketEvent::Disconnected { retry_in_ms } => {
                assert!(*retry_in_ms <= backoff.ceiling(attempt as u32), "attempt {attempt}: {retry_in_ms}");
                waits.push(*retry_in_ms);
            }
            other => panic!("attempt {attempt}: {other:?}"),
        }
    }
    // Full jitter: each wait is uniform up to a ceiling that doubles, so
    // the later ones all staying within the first ceiling (10 ms) would
    // happen about once in a million runs, unless the ceiling did not grow.
    assert!(waits[4..attempts].iter().any(|&w| w > backoff.base_ms), "the backoff did not grow: {waits:?}");
    // Each attempt started only after the previous wait.
    for pair in events.windows(2) {
        let (at, SocketEvent::Disconnected { retry_in_ms }) = &pair[0] else { unreachable!() };
        assert!(pair[1].0 + 1 >= at + retry_in_ms, "{pair:?}");
    }
    sleep(400).await;
    assert_eq!(recorder.count(), events.len(), "the dropped socket kept retrying");
}

#[wasm_bindgen_test]
async fn reconnect_now_cuts_a_backoff_short_and_leaves_an_open_socket_alone() {
    let Some(url) = configured("DOVECOTE_TEST_CLOSED", option_env!("DOVECOTE_TEST_CLOSED")) else { return };
    let minute = Backoff { base_ms: 60_000, factor: 1, cap_ms: 60_000 };
    let options = SocketOptions { backoff: minute, ..SocketOptions::DEFAULT };
    let recorder = Recorder::default();
    let socket =
        PokeSocket::connect_with(ServerUrl::parse(url).unwrap().events("t"), options, recorder.callback());
    let mut long_waits = 0;
    for round in 1..=5 {
        assert!(recorder.until(5000, |_| recorder.count() >= round).await.is_some(), "round {round}");
        let (at, event) = recorder.events.borrow()[round - 1].clone();
        let SocketEvent::Disconnected { retry_in_ms } = event else { panic!("{event:?}") };
        socket.reconnect_now();
        assert!(recorder.until(5000, |_| recorder.count() > round).await.is_some(), "round {round}");
        let next = recorder.events.borrow()[round].0;
        // A wait drawn under a second proves nothing; five in a row would
        // be about one run in ten million.
        if retry_in_ms > 1000 {
            long_waits += 1;
            assert!(next < at + retry_in_ms, "round {round}: waited out {retry_in_ms} ms");
        }
    }
    assert!(long_waits > 0);
    drop(socket);

    let Some(server) = server() else { return };
    let (_, alice) = signed_in(&server, "alice").await;
    let recorder = Recorder::default();
    let socket = PokeSocket::connect(alice.events_url(), recorder.callback());
    assert!(recorder.until(5000, |e| *e == SocketEvent::Connected).await.is_some());
    socket.reconnect_now();
    sleep(300).await;
    assert!(socket.is_connected());
    assert_eq!(recorder.count(), 1, "{:?}", recorder.events.borrow());
}

#[wasm_bindgen_test]
async fn a_socket_that_cannot_open_in_time_gives_up_and_retries() {
    let Some(url) = configured("DOVECOTE_TEST_STALL", option_env!("DOVECOTE_TEST_STALL")) else { return };
    let options = SocketOptions { connect_timeout_ms: 200, ..SocketOptions::DEFAULT };
    let recorder = Recorder::default();
    let started = now();
    let _socket =
        PokeSocket::connect_with(ServerUrl::parse(url).unwrap().events("t"), options, recorder.callback());
    let first = recorder.until(3000, |_| true).await;
    assert!(matches!(first, Some(SocketEvent::Disconnected { .. })), "{first:?}");
    let took = recorder.events.borrow()[0].0 - started;
    assert!((199..2000).contains(&took), "gave up after {took} ms");
}

#[wasm_bindgen_test]
async fn sleep_waits_and_a_dropped_timeout_never_fires() {
    let started = now();
    sleep(60).await;
    assert!(now() - started >= 59, "slept {} ms", now() - started);

    let fired = Rc::new(Cell::new(0));
    let kept = Timeout::new(10, {
        let fired = fired.clone();
        move || fired.set(fired.get() + 1)
    });
    let dropped = Timeout::new(10, {
        let fired = fired.clone();
        move || fired.set(fired.get() + 100)
    });
    drop(dropped);
    // Were its timer left running, it would call a freed closure: an
    // uncaught error on the page even though the callback never runs.
    let errors = count_page_errors();
    sleep(80).await;
    assert_eq!(fired.get(), 1, "only the kept timeout fires");
    assert_eq!(errors(), 0, "errors on the page");
    drop(kept);

    let started = now();
    assert_eq!(timers::timeout(30, sleep(5_000)).await, None);
    assert!(now() - started < 1000);
    assert_eq!(timers::timeout(5_000, async { 7 }).await, Some(7));
}

#[wasm_bindgen_test]
async fn a_trigger_wakes_before_the_deadline_and_coalesces_fires() {
    let trigger = Trigger::new();
    let started = now();
    assert_eq!(trigger.wait(Some(40)).await, Wakeup::Deadline);
    assert!(now() - started >= 39);

    // Fired while nobody waited: the next wait returns at once, once.
    for _ in 0..3 {
        trigger.fire();
    }
    let started = now();
    assert_eq!(trigger.wait(Some(5_000)).await, Wakeup::Fired);
    assert!(now() - started < 1000);
    assert_eq!(trigger.wait(Some(30)).await, Wakeup::Deadline);

    let later = Timeout::new(20, {
        let trigger = trigger.clone();
        move || trigger.fire()
    });
    let started = now();
    assert_eq!(trigger.wait(None).await, Wakeup::Fired);
    assert!(now() - started < 1000);
    drop(later);
}

/// Counts uncaught errors on the page from now on.
fn count_page_errors() -> impl Fn() -> u32 {
    let count = js_sys::Function::new_no_args(
        "let n = 0; addEventListener('error', () => { n += 1; }); return () => n;",
    )
    .call0(&wasm_bindgen::JsValue::UNDEFINED)
    .unwrap();
    let count: js_sys::Function = count.into();
    move || count.call0(&wasm_bindgen::JsValue::UNDEFINED).unwrap().as_f64().unwrap() as u32
}

fn dispatch(target: &str, event: &str) {
    js_sys::Function::new_no_args(&format!("{target}.dispatchEvent(new Event('{event}'))"))
        .call0(&wasm_bindgen::JsValue::UNDEFINED)
        .unwrap();
}

#[wasm_bindgen_test]
fn browser_events_reach_the_callback_until_dropped() {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let events = BrowserEvents::listen({
        let seen = seen.clone();
        move |e| seen.borrow_mut().push(e)
    });
    dispatch("window", "offline");
    dispatch("window", "online");
    dispatch("document", "visibilitychange");
    let visibility = if timers::is_visible() { BrowserEvent::Visible } else { BrowserEvent::Hidden };
    assert_eq!(*seen.borrow(), [BrowserEvent::Offline, BrowserEvent::Online, visibility]);
    drop(events);
    dispatch("window", "online");
    dispatch("document", "visibilitychange");
    assert_eq!(seen.borrow().len(), 3, "a dropped listener was called");
}
