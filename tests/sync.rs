//! Engine sync, one situation per test, against the in-memory protocol
//! server (`testing::FakeServer`) through a faulty `FakeTransport`: what a
//! user of the SDK would notice. `tests/sync_sim.rs` runs the same parts
//! under random schedules.
//!
//! The tests "found by the simulation" pin engine bugs the simulation found
//! (and that are fixed), so they stay fixed.
#![cfg(not(target_arch = "wasm32"))]

use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use dovecote::core::keys::Kek;
use dovecote::core::model::{MessageId, MessageStatus, Millis, ThreadId, UserId};
use dovecote::engine::Client;
use dovecote::ports::Clock;
use dovecote::testing::{FakeServer, FakeTransport, Faults, MemoryStore, ServerLimits};

const T0: Millis = 1_700_000_000_000;
const KEK: [u8; 32] = [9; 32];
/// Envelopes over this are refused `too_large` by the server in these tests.
const LIMIT: usize = 256;

#[derive(Clone)]
struct TestClock(Rc<Cell<Millis>>);

impl Clock for TestClock {
    fn now(&self) -> Millis {
        self.0.get()
    }
}

type TestClient = Client<MemoryStore, TestClock, Kek>;

fn run<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a future waited, with nothing to wake it"),
    }
}

/// Alice's device, a server, and a thread the server already has.
struct World {
    server: FakeServer,
    clock: TestClock,
    store: MemoryStore,
    net: FakeTransport,
    alice: TestClient,
    thread: ThreadId,
}

impl World {
    fn new() -> Self {
        let server =
            FakeServer::with_limits(ServerLimits { envelope_bytes: LIMIT, ..ServerLimits::default() });
        server.set_now(T0);
        let clock = TestClock(Rc::new(Cell::new(T0)));
        let store = MemoryStore::new();
        let alice = open(&store, &clock);
        let net = FakeTransport::new(&server, UserId::parse("alice").unwrap(), 1);
        let thread = run(alice.create_thread("Lunch", &["bob".into()])).unwrap().id;
        let mut world = World { server, clock, store, net, alice, thread };
        world.round();
        world
    }

    fn round(&mut self) {
        let report = run(self.alice.sync_round(&self.net)).unwrap();
        let held = report.failure.as_ref().is_some_and(|f| f.code == "rate_limited");
        assert!(report.failure.is_none() || held || self.net.faults() != Faults::NONE, "{report:?}");
    }

    fn send(&self, text: &str) -> MessageId {
        run(self.alice.send(self.thread, text)).unwrap().id
    }

    fn status(&self, id: MessageId) -> MessageStatus {
        let page = run(self.alice.messages(self.thread, None, 1000)).unwrap();
        page.into_iter().find(|m| m.id == id).expect("the message is shown").status
    }

    fn outbox_states(&self) -> Vec<(&'static str, &'static str)> {
        run(self.alice.outbox()).unwrap().into_iter().map(|e| (e.kind, e.state)).collect()
    }

    /// The next push is applied by the server but its answer never comes.
    fn lose_next_answer(&self) {
        self.net.set_faults(Faults { drop_answer: 100, ..Faults::NONE });
    }

    fn heal(&self) {
        self.net.set_faults(Faults::NONE);
        self.clock.0.set(self.clock.0.get() + 61_000);
        self.server.set_now(self.clock.0.get());
    }
}

fn open(store: &MemoryStore, clock: &TestClock) -> TestClient {
    run(Client::open(
        store.clone(),
        clock.clone(),
        Kek::from_bytes(&KEK),
        UserId::parse("alice").unwrap(),
        None,
    ))
    .unwrap()
}

fn oversized() -> String {
    "x".repeat(LIMIT + 1)
}

#[test]
fn a_push_whose_answer_was_lost_is_on_the_server_once_and_sent_after_the_retry() {
    let mut w = World::new();
    let ids: Vec<MessageId> = (0..3).map(|n| w.send(&format!("m{n}"))).collect();
    w.lose_next_answer();
    w.round();
    assert_eq!(w.server.messages().len(), 3, "the server applied the push");
    assert!(matches!(w.status(ids[0]), MessageStatus::Failed { recoverable: true, .. }));
    w.heal();
    w.round();
    assert_eq!(w.server.messages().len(), 3, "once");
    assert_eq!(w.server.stats().replayed, 3, "the retry got the stored acks");
    for id in ids {
        assert_eq!(w.status(id), MessageStatus::Sent);
        let page = run(w.alice.messages(w.thread, None, 10)).unwrap();
        let shown = page.iter().find(|m| m.id == id).unwrap();
        assert_eq!(shown.seq, Some(w.server.message(id).unwrap().seq));
    }
    assert!(w.outbox_states().is_empty());
}

#[test]
fn a_restart_with_a_push_in_flight_sends_each_message_exactly_once() {
    for reaches_server in [false, true] {
        let mut w = World::new();
        let ids = [w.send("one"), w.send("two")];
        w.net.hang_next_push(reaches_server);
        assert!(pin!(w.alice.sync_round(&w.net)).poll(&mut Context::from_waker(Waker::noop())).is_pending());
        // The tab dies with the push in flight; the next one opens the same database.
        w.alice = open(&w.store, &w.clock);
        assert_eq!(w.status(ids[0]), MessageStatus::Sending, "as the dead tab left it");
        w.round();
        assert_eq!(w.server.messages().len(), 2, "reached the server first: {reaches_server}");
        assert_eq!(w.server.stats().send_repeats, 0);
        assert_eq!(ids.map(|id| w.status(id)), [MessageStatus::Sent, MessageStatus::Sent]);
    }
}

#[test]
fn a_refused_message_fails_alone_and_later_ones_still_go() {
    let mut w = World::new();
    let before = w.send("before");
    let big = w.send(&oversized());
    let after = w.send("after");
    w.round();
    assert!(
        matches!(w.status(big), MessageStatus::Failed { recoverable: false, ref code, .. } if code == "too_large")
    );
    assert_eq!([w.status(before), w.status(after)], [MessageStatus::Sent, MessageStatus::Sent]);
    assert_eq!(w.outbox_states(), [("send", "failed")]);

    // Retrying as is fails again; shortening the text sends it.
    run(w.alice.retry(big)).unwrap();
    w.round();
    assert!(matches!(w.status(big), MessageStatus::Failed { recoverable: false, .. }));
    run(w.alice.edit(big, "shorter")).unwrap();
    w.round();
    assert_eq!(w.status(big), MessageStatus::Sent);
    assert!(
        w.server.message(big).unwrap().seq > w.server.message(after).unwrap().seq,
        "sent again at the tail"
    );

    // Cancelling a refused message withdraws it for good.
    let refused = w.send(&oversized());
    w.round();
    run(w.alice.cancel(refused)).unwrap();
    w.round();
    assert_eq!(w.status(refused), MessageStatus::Cancelled);
    assert!(w.server.message(refused).is_none());
    assert!(w.outbox_states().is_empty());
}

/// Found by the simulation (its `dependent_failures`): the user deletes a
/// message while its send is in doubt (an answer was lost), so a Delete is
/// queued behind the Send. The server then refuses the Send for good, and
/// the Delete with `not_found` (it never had the message). The user asked
/// for the message to be gone and it never reached the server, yet it stays
/// in the outbox as two failed rows and shows `failed`; `retry` cannot help
/// (the Send is refused again) and only `cancel` clears it.
#[test]
fn deleting_a_message_whose_send_is_then_refused_leaves_nothing_failed() {
    let mut w = World::new();
    let big = w.send(&oversized());
    w.lose_next_answer();
    w.round(); // the server stored its refusal; the client does not know
    run(w.alice.delete(big)).unwrap();
    w.heal();
    w.round();
    assert!(w.server.message(big).is_none());
    assert_eq!(w.outbox_states(), [], "nothing left to do about a deleted message");
    let status = w.status(big);
    assert!(matches!(status, MessageStatus::Cancelled), "shown as {status:?}");
}

/// Found by the simulation: the user shortens a too-long message while its
/// send is in doubt, so an Edit is queued behind the Send. The server
/// refuses the Send (`too_large`) and the Edit (`not_found`). The message
/// shows `failed` with a retry button, but `retry` sends the old, too-long
/// body again (and the Edit, refused again): it can never succeed. Only
/// editing once more (which rewrites the failed Send) gets it through.
#[test]
fn retrying_a_refused_send_edited_while_in_doubt_sends_the_edited_text() {
    let mut w = World::new();
    let big = w.send(&oversized());
    w.lose_next_answer();
    w.round();
    run(w.alice.edit(big, "shorter")).unwrap();
    w.heal();
    w.round();
    assert!(matches!(w.status(big), MessageStatus::Failed { recoverable: false, .. }));
    run(w.alice.retry(big)).unwrap();
    w.round();
    assert_eq!(w.status(big), MessageStatus::Sent);
    assert_eq!(w.outbox_states(), []);
    let page = run(w.alice.messages(w.thread, None, 10)).unwrap();
    assert_eq!(page.iter().find(|m| m.id == big).unwrap().body.as_deref(), Some("shorter"));
}

/// A `429` (or `503`) with `Retry-After` on a pull: the rate limit is the
/// user's, for every request, but the engine only remembers a
/// `Retry-After` that came with a push, so the next round pushes (and
/// pulls) at once. The simulation counts such early requests
/// (`before_retry_after`); in-memory holds are also forgotten on restart.
#[test]
fn a_retry_after_on_a_pull_holds_the_next_round() {
    let mut w = World::new();
    w.net.set_faults(Faults { rate_limit: 100, ..Faults::NONE });
    w.round(); // nothing to push; the pull gets 429 with Retry-After ≥ 1 s
    w.net.set_faults(Faults::NONE);
    w.send("hello");
    w.round(); // same millisecond
    assert_eq!(w.net.stats().before_retry_after, 0, "{:?}", w.net.stats());
}

/// An edit of a message whose send was refused, made while a push carries
/// an older edit of it: the new text is stored and queued, and then the
/// automatic retry of the refused send is refused `in_flight`, so `edit`
/// reports an error for a change it did make (a UI would show the edit as
/// failed, and the user would type it again).
#[test]
fn an_edit_made_while_an_older_edit_is_in_flight_does_not_report_an_error_it_did_not_have() {
    let mut w = World::new();
    let big = w.send(&oversized());
    w.lose_next_answer();
    w.round(); // the send is in doubt
    run(w.alice.edit(big, "first")).unwrap(); // queued behind it
    w.heal();
    let mut cx = Context::from_waker(Waker::noop());
    w.net.pause_next_push();
    let mut round = pin!(w.alice.sync_round(&w.net));
    assert!(round.as_mut().poll(&mut cx).is_pending());
    run(w.alice.edit(big, "second")).unwrap(); // while the send and the first edit fly
    w.net.resume();
    w.net.pause_next_push();
    // The send is refused, the first edit dropped (superseded), and the
    // same round pushes the second edit, which waits.
    assert!(round.as_mut().poll(&mut cx).is_pending());
    assert!(matches!(w.status(big), MessageStatus::Failed { recoverable: false, .. }));
    let edited = run(w.alice.edit(big, "third"));
    w.net.resume();
    assert!(round.as_mut().poll(&mut cx).is_ready());
    let page = run(w.alice.messages(w.thread, None, 10)).unwrap();
    let shown = page.iter().find(|m| m.id == big).unwrap();
    assert_eq!(shown.body.as_deref(), Some("third"), "the edit was stored");
    assert!(edited.is_ok(), "yet edit() said {:?}", edited.err());
}

/// Issue 16 metrics: a known sequence of sends, an edit, pulls, a lost
/// answer and a refusal gives exactly these round events and totals.
#[test]
fn round_events_and_sync_stats_count_exactly_what_the_rounds_did() {
    use dovecote::engine::{ClientEvent, Ratio, RoundStats};
    use std::cell::RefCell;

    let mut w = World::new();
    let events: Rc<RefCell<Vec<ClientEvent>>> = Rc::default();
    let seen = events.clone();
    w.alice.on_event(move |e| seen.borrow_mut().push(e.clone()));
    let rounds = || -> Vec<RoundStats> {
        events
            .borrow()
            .iter()
            .filter_map(|e| if let ClientEvent::Round { round } = e { Some(round.clone()) } else { None })
            .collect()
    };
    let before = w.alice.sync_stats();
    assert_eq!(before.round_count, 1, "the round that pushed the thread");
    assert_eq!(before.rounds[0].pushed, 1);

    // Three sends and an edit of a queued one (it rewrites the send): one
    // push of 3, and the 3 changes come back.
    let ids: Vec<MessageId> = (0..3).map(|n| w.send(&format!("m{n}"))).collect();
    run(w.alice.edit(ids[0], "m0 edited")).unwrap();
    w.clock.0.set(w.clock.0.get() + 25);
    w.round();
    let r = rounds();
    assert_eq!(r.len(), 1);
    let first = &r[0];
    assert_eq!((first.pushed, first.pulled, first.retries, first.errors, first.conflicts), (3, 3, 0, 0, 0));
    assert_eq!(first.started_at, T0 + 25);
    assert!(first.bytes_up > 3 * 69 && first.bytes_down > 3 * 69, "{first:?}");
    assert_eq!(first.compression_ratio, Some(Ratio(1000)), "small bodies are not compressed");
    // An edit of a sent message: its own mutation.
    run(w.alice.edit(ids[1], "m1 edited")).unwrap();
    w.round();
    let edit = rounds()[1].clone();
    assert_eq!((edit.pushed, edit.pulled, edit.errors), (1, 1, 0));

    // Nothing to do: a pull with no body up, nothing sealed.
    w.round();
    let idle = rounds()[2].clone();
    assert_eq!((idle.pushed, idle.pulled, idle.bytes_up, idle.errors), (0, 0, 0, 0));
    assert!(idle.bytes_down > 0, "the empty page still came");
    assert_eq!(idle.compression_ratio, None);

    // A lost answer: the round fails (1 error); the retry pushes it again.
    w.send("lost answer");
    w.lose_next_answer();
    w.round();
    let lost = rounds()[3].clone();
    assert_eq!((lost.pushed, lost.pulled, lost.retries, lost.errors), (1, 0, 0, 1));
    let offline = events.borrow().iter().rev().find_map(|e| match e {
        ClientEvent::Sync { pending, failed, last_synced_at, .. } => {
            Some((*pending, *failed, *last_synced_at))
        }
        _ => None,
    });
    assert_eq!(
        offline,
        Some((1, 0, Some(T0 + 25))),
        "the sync event after the failure: one pending, last sync before it"
    );
    w.heal();
    w.round();
    let retried = rounds()[4].clone();
    assert_eq!((retried.pushed, retried.pulled, retried.retries, retried.errors), (1, 1, 1, 0));

    // A refusal: an error, a failed row, and the round itself succeeds.
    w.send(&oversized());
    w.round();
    let refused = rounds()[5].clone();
    assert_eq!((refused.pushed, refused.pulled, refused.retries, refused.errors), (1, 0, 0, 1));
    let status = run(w.alice.sync_status()).unwrap();
    assert_eq!((status.pending, status.failed, status.quarantined), (0, 1, 0));
    assert_eq!(status.cursor, w.server.last_seq());
    assert_eq!(status.last_synced_at, Some(w.clock.0.get()));

    let stats = w.alice.sync_stats();
    let all: Vec<RoundStats> = stats.rounds.iter().skip(1).cloned().collect();
    assert_eq!(all, rounds(), "syncStats() keeps the rounds the events told");
    let t = &stats.totals;
    assert_eq!((stats.round_count, stats.failed_rounds), (7, 1));
    assert_eq!((t.pushed, t.pulled, t.retries, t.errors, t.conflicts), (8, 6, 1, 2, 0));
    assert_eq!(t.started_at, T0);
    assert_eq!(t.compression_ratio, Some(Ratio(1000)));
    let up: u64 = stats.rounds.iter().map(|r| r.bytes_up).sum();
    assert_eq!(t.bytes_up, up);
}
