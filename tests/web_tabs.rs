//! Tab coordination in headless Chrome: leader election on Web Locks and on
//! the IndexedDB lease fallback, and the BroadcastChannel between tabs. Two
//! candidates in one page stand for two tabs: locks, leases and channels
//! behave the same between them as between pages.
#![cfg(target_arch = "wasm32")]

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use dovecote::core::model::MessageId;
use dovecote::engine::LocalChanges;
use dovecote::web::tabs::{
    scope_name, Backend, LeaderElection, TabChannel, TabMessage, LEASE_EXPIRY_MS, LEASE_POLL_MS,
    LEASE_RENEW_MS,
};
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsValue;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &js_sys::Function, ms: u32) -> JsValue;
}

async fn sleep(ms: u32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        set_timeout(&resolve, ms);
    });
    wasm_bindgen_futures::JsFuture::from(promise).await.unwrap();
}

fn now() -> f64 {
    js_sys::Date::now()
}

/// Polls `done` every 10 ms; the milliseconds it took, or None after `limit`.
async fn within(limit: u32, done: impl Fn() -> bool) -> Option<f64> {
    let start = now();
    while now() - start < f64::from(limit) {
        if done() {
            return Some(now() - start);
        }
        sleep(10).await;
    }
    done().then(|| now() - start)
}

/// A name no earlier run has used, so no lock or lease is left over.
fn unique(what: &str) -> String {
    scope_name(&format!("tabs-{what}-{}", js_sys::Math::random()), "alice")
}

/// An election whose `on_change` calls are recorded.
fn candidate(name: &str, backend: Backend) -> (LeaderElection, Rc<RefCell<Vec<bool>>>) {
    let changes: Rc<RefCell<Vec<bool>>> = Rc::default();
    let log = changes.clone();
    let election =
        LeaderElection::start_with(name, backend, move |leader| log.borrow_mut().push(leader)).unwrap();
    (election, changes)
}

#[wasm_bindgen_test]
fn the_name_covers_database_and_user() {
    assert_eq!(scope_name("chat", "alice"), "dovecote:chat:alice");
    assert_ne!(scope_name("chat", "alice"), scope_name("chat", "bob"));
}

#[wasm_bindgen_test]
fn chrome_gets_web_locks_by_default() {
    let election = LeaderElection::start(&unique("default"), |_| {});
    assert_eq!(election.backend(), Backend::WebLocks);
}

async fn one_leader_then_handover(backend: Backend, handover_limit: u32) -> f64 {
    let name = unique("handover");
    let (a, a_changes) = candidate(&name, backend);
    assert!(within(2_000, || a.is_leader()).await.is_some(), "the only candidate leads");
    let (b, b_changes) = candidate(&name, backend);

    // Past a lease renewal: the lead stays where it is.
    let watch = now();
    while now() - watch < f64::from(LEASE_RENEW_MS + 500) {
        assert!(a.is_leader() && !b.is_leader(), "exactly one leader");
        sleep(50).await;
    }
    assert_eq!(*a_changes.borrow(), [true]);
    assert!(b_changes.borrow().is_empty(), "a follower is not told anything");

    drop(a);
    let took = within(handover_limit, || b.is_leader()).await;
    let took = took.unwrap_or_else(|| panic!("{backend:?}: no hand-over within {handover_limit} ms"));
    assert_eq!(*b_changes.borrow(), [true]);
    assert_eq!(*a_changes.borrow(), [true], "a dropped election calls back no more");
    took
}

#[wasm_bindgen_test]
async fn web_locks_one_leader_and_handover_within_a_second() {
    let took = one_leader_then_handover(Backend::WebLocks, 1_000).await;
    // Releasing a Web Lock hands it over in the next tasks, not on a timer.
    assert!(took < 200.0, "hand-over took {took} ms");
}

#[wasm_bindgen_test]
async fn lease_one_leader_and_handover_at_the_next_poll() {
    let took = one_leader_then_handover(Backend::Lease, LEASE_POLL_MS + 1_000).await;
    assert!(took <= f64::from(LEASE_POLL_MS) + 500.0, "hand-over took {took} ms");
}

#[wasm_bindgen_test]
async fn lease_of_a_crashed_leader_passes_on_after_expiry_and_never_to_two() {
    let name = unique("crash");
    let (a, _) = candidate(&name, Backend::Lease);
    assert!(within(2_000, || a.is_leader()).await.is_some());
    let (b, _) = candidate(&name, Backend::Lease);
    // Let a renew once, so the crash comes mid-lease.
    sleep(LEASE_RENEW_MS + 300).await;
    assert!(a.is_leader() && !b.is_leader());

    // Crash a: it stops renewing and does not let go. Its `is_leader` must
    // still turn false by the lease's end, on its own.
    a.crash_for_test();
    let both = Cell::new(false);
    let took = within(LEASE_EXPIRY_MS + LEASE_POLL_MS + 1_000, || {
        if a.is_leader() && b.is_leader() {
            both.set(true);
        }
        b.is_leader()
    })
    .await
    .expect("the lease passes on after it expires");
    assert!(!both.get(), "two leaders at once");
    // a renewed about LEASE_RENEW_MS + 300 ms after it first led, so its
    // last lease had some 3 s left at the crash.
    let earliest = f64::from(LEASE_EXPIRY_MS - LEASE_RENEW_MS) - 400.0;
    assert!(took >= earliest, "taken over {took} ms after the crash, before the lease ran out");
    assert!(took <= f64::from(LEASE_EXPIRY_MS + LEASE_POLL_MS) + 500.0, "taken over after {took} ms");
}

#[wasm_bindgen_test]
async fn three_lease_candidates_have_one_leader_at_every_moment() {
    let name = unique("three");
    let candidates: Vec<_> = (0..3).map(|_| candidate(&name, Backend::Lease)).collect();
    let count = || candidates.iter().filter(|(c, _)| c.is_leader()).count();
    assert!(within(2_000, || count() == 1).await.is_some());
    let watch = now();
    while now() - watch < 3_000.0 {
        assert_eq!(count(), 1);
        sleep(25).await;
    }
    let total: usize = candidates.iter().map(|(_, changes)| changes.borrow().len()).sum();
    assert_eq!(total, 1, "the lead never moved while its holder lived");
}

fn listener(name: &str) -> (TabChannel, Rc<RefCell<Vec<TabMessage>>>) {
    let got: Rc<RefCell<Vec<TabMessage>>> = Rc::default();
    let log = got.clone();
    (TabChannel::open(name, move |m| log.borrow_mut().push(m)).unwrap(), got)
}

#[wasm_bindgen_test]
async fn channel_reaches_the_other_tabs_of_its_name_only() {
    let name = unique("channel");
    let (a, a_got) = listener(&name);
    let (_b, b_got) = listener(&name);
    let (_c, c_got) = listener(&unique("elsewhere"));

    let message: MessageId = "01890a5d-ac96-7b7c-8a3e-1b2c3d4e5f61".parse().unwrap();
    let sent = [
        TabMessage::Wake,
        TabMessage::Changed {
            changes: LocalChanges { messages: vec![message], threads: true, ..LocalChanges::default() },
        },
        TabMessage::Changed { changes: LocalChanges { keys: true, ..LocalChanges::default() } },
        TabMessage::Leader { tab: "t1".into() },
    ];
    for m in &sent {
        a.post(m).unwrap();
    }
    assert!(within(1_000, || b_got.borrow().len() == sent.len()).await.is_some());
    assert_eq!(*b_got.borrow(), sent);
    sleep(100).await;
    assert!(a_got.borrow().is_empty(), "a channel does not hear itself");
    assert!(c_got.borrow().is_empty(), "another database's channel hears nothing");
}

#[wasm_bindgen_test]
async fn channel_ignores_garbage_and_stops_on_drop() {
    let name = unique("garbage");
    let (b, b_got) = listener(&name);
    let raw = web_sys::BroadcastChannel::new(&name).unwrap();
    for junk in [
        JsValue::from_str("not json"),
        JsValue::from_str(r#"{"type":"from_a_newer_version"}"#),
        JsValue::from_str(r#"{"type":"changed","threads":["not an id"]}"#),
        JsValue::from_f64(7.0),
        js_sys::Object::new().into(),
        JsValue::NULL,
    ] {
        raw.post_message(&junk).unwrap();
    }
    raw.post_message(&r#"{"type":"changed"}"#.into()).unwrap();
    raw.post_message(&r#"{"type":"wake"}"#.into()).unwrap();
    // Messages arrive in order: once the wake is in, the junk was seen.
    assert!(within(1_000, || b_got.borrow().len() >= 2).await.is_some());
    assert_eq!(*b_got.borrow(), [TabMessage::Changed { changes: LocalChanges::default() }, TabMessage::Wake]);

    drop(b);
    raw.post_message(&r#"{"type":"wake"}"#.into()).unwrap();
    sleep(100).await;
    assert_eq!(b_got.borrow().len(), 2, "a dropped channel delivers nothing");
    raw.close();
}
