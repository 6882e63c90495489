//! Deterministic simulation of sync over the engine (issue 5, item 6), in
//! the manner of Firestore's spec tests: three devices (alice on a laptop
//! with sometimes two tabs, alice on a phone, bob) write to two shared
//! threads through [`FakeTransport`]s to one [`FakeServer`], while a seeded
//! schedule sends, edits, deletes, cancels, moves the clock, runs sync rounds,
//! breaks the network, takes the server down, restarts clients (also with a
//! push in flight), and acts while a push is in flight. Then it heals (server
//! up, faults off, the user fixes or cancels what failed for good) and checks
//! what a user would notice:
//!
//! * nothing lost: every message not withdrawn is on the server, once, and
//!   on every device, `sent` with the server's seq;
//! * nothing duplicated: no message twice in any store, nothing on the server
//!   that nobody wrote, and no send or mutation the server had to dedup by
//!   its second layer or refuse as out of order;
//! * order kept: each device's messages reach the server in the order they
//!   were written (except those the user sent again after a permanent error);
//! * convergence: every device shows the server's state, bodies decrypting
//!   to what their author last wrote, deletes winning.
//!
//! Faults (per device, switched by the schedule between none, `CHAOS` and
//! `STORM`): requests lost before the server, answers lost after it applied
//! a push, 5xx and 429 with `Retry-After`, duplicated pushes, pushes delayed
//! past the client's timeout that land later (after a retry or a pull), the
//! server down, expired sessions (401), texts the server refuses
//! (`too_large`), a server that pages small. Restarts drop the leader tab
//! (another tab takes over or a new one opens on the same store); a kill
//! drops it with a push hanging, applied or not; a pause lets the user send,
//! edit, delete and cancel while a push is in flight.
//!
//! `SEED=n cargo test --test sync_sim -- --nocapture` replays one seed and
//! prints its trace; `SEEDS=n` runs n seeds instead of the default. A failure
//! prints its seed and the end of its trace. Replays are exact up to the
//! first backoff that decides whether a row is due: the engine draws its
//! jitter (and ids) from the OS random source, not from the seed.
#![cfg(not(target_arch = "wasm32"))]

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use dovecote::core::keys::Kek;
use dovecote::core::model::{MessageId, MessageStatus, Millis, ThreadId, UserId};
use dovecote::core::outbox::Refusal;
use dovecote::engine::{Client, Error, Message};
use dovecote::ports::Clock;
use dovecote::testing::{FakeServer, FakeTransport, Faults, MemoryStore, ServerLimits, SimRng};

const T0: Millis = 1_700_000_000_000;
/// Mutations (sends, edits, deletes) per seed.
const MUTATIONS: usize = 200;
/// Seeds run by `cargo test`.
const SEEDS: u64 = 1_000;
/// The server refuses envelopes over this (a `too_large` rejection); the
/// simulation writes a few texts over it to make permanent failures.
const ENVELOPE_LIMIT: usize = 2_048;
const OVERSIZED: usize = 3_000;

/// Heavier than [`Faults::CHAOS`]: most requests misbehave.
const STORM: Faults =
    Faults { drop_request: 15, drop_answer: 20, server_error: 10, rate_limit: 5, duplicate: 10, delay: 10 };

/// A clock shared by every client and the test, moved only by the test.
#[derive(Clone)]
struct SimClock(Rc<Cell<Millis>>);

impl Clock for SimClock {
    fn now(&self) -> Millis {
        self.0.get()
    }
}

type Tab = Client<MemoryStore, SimClock, Kek>;

fn poll_once<F: Future>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

/// Runs a future that never waits: the in-memory store and the fake
/// transport answer at once (a paused or hung push is driven by hand).
fn run<F: Future>(future: F) -> F::Output {
    match poll_once(pin!(future)) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a future waited, with nothing to wake it"),
    }
}

/// One installation: a database, the network it reaches the server by, and
/// its open tabs. The first tab is the sync leader; the others only write.
struct Device {
    name: &'static str,
    user: UserId,
    kek: [u8; 32],
    store: MemoryStore,
    transport: FakeTransport,
    tabs: Vec<Rc<Tab>>,
    /// Seeds the random source of each client opened on this device.
    rng_seed: Cell<u64>,
}

impl Device {
    fn open_tab(&self, clock: &SimClock) -> Rc<Tab> {
        let open = Client::open(
            self.store.clone(),
            clock.clone(),
            Kek::from_bytes(&self.kek),
            self.user.clone(),
            None,
        );
        let tab = run(open).unwrap_or_else(|e| panic!("{} could not open: {e}", self.name));
        // Ids and backoff jitter from the seed: a failing seed replays exactly.
        let mut rng = SimRng::new(self.rng_seed.get());
        self.rng_seed.set(self.rng_seed.get().wrapping_add(1));
        tab.set_random_source(move |bytes| {
            for chunk in bytes.chunks_mut(8) {
                chunk.copy_from_slice(&rng.next_u64().to_le_bytes()[..chunk.len()]);
            }
        });
        Rc::new(tab)
    }

    fn leader(&self) -> &Tab {
        &self.tabs[0]
    }
}

/// What a user did to one message: the model the end state is checked against.
#[derive(Debug)]
struct Written {
    device: usize,
    thread: ThreadId,
    /// The text its author last gave it.
    text: String,
    deleted: bool,
    /// Withdrawn before the server saw it (cancel, or delete while queued).
    withdrawn: bool,
    /// It once had a text the server refuses, so it may have failed for
    /// good and been sent again at the tail by the user: out of the order check.
    refused: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    sent: usize,
    edits: usize,
    deletes: usize,
    withdrawn: usize,
    refused: usize,
    rounds: usize,
    restarts: usize,
    killed_mid_push: usize,
    acted_mid_push: usize,
    dependent_failures: usize,
    pushes: u64,
    dropped_answers: u64,
    duplicated: u64,
    delayed: u64,
    unauthorized: u64,
    before_retry_after: u64,
    pushes_before_retry_after: u64,
    replayed: u64,
}

struct Sim {
    seed: u64,
    rng: SimRng,
    clock: SimClock,
    server: FakeServer,
    devices: Vec<Device>,
    threads: Vec<ThreadId>,
    written: BTreeMap<MessageId, Written>,
    /// Message ids in the order they were written.
    order: Vec<MessageId>,
    mutations: usize,
    next_text: usize,
    trace: Rc<RefCell<Vec<String>>>,
    totals: Totals,
}

impl Sim {
    fn new(seed: u64, trace: Rc<RefCell<Vec<String>>>) -> Self {
        let clock = SimClock(Rc::new(Cell::new(T0)));
        // A server that pages small (3 to 40 changes) makes clients page,
        // and entities changed between pages show up again.
        let max_pull = 3 + (seed % 38) as u32;
        let limits = ServerLimits { envelope_bytes: ENVELOPE_LIMIT, max_pull, ..Default::default() };
        let server = FakeServer::with_limits(limits);
        server.set_now(T0);
        let device = |n: u64, name: &'static str, user: &str| {
            let user = UserId::parse(user).unwrap();
            let mut kek = [0u8; 32];
            kek[..8].copy_from_slice(&(seed * 8 + n).to_le_bytes());
            let transport = FakeTransport::new(&server, user.clone(), seed.wrapping_mul(31).wrapping_add(n));
            let rng_seed = Cell::new(seed.wrapping_mul(1_000_003).wrapping_add(n << 32));
            Device { name, user, kek, store: MemoryStore::new(), transport, tabs: Vec::new(), rng_seed }
        };
        let devices =
            vec![device(1, "laptop", "alice"), device(2, "phone", "alice"), device(3, "bob", "bob")];
        let mut sim = Sim {
            seed,
            rng: SimRng::new(seed),
            clock,
            server,
            devices,
            threads: Vec::new(),
            written: BTreeMap::new(),
            order: Vec::new(),
            mutations: 0,
            next_text: 0,
            trace,
            totals: Totals::default(),
        };
        for d in 0..sim.devices.len() {
            let tab = sim.devices[d].open_tab(&sim.clock);
            sim.devices[d].tabs.push(tab);
        }
        sim.set_up();
        sim
    }

    fn log(&self, line: String) {
        self.trace.borrow_mut().push(line);
    }

    fn fail(&self, why: impl std::fmt::Display) -> ! {
        panic!("seed {}: {why}", self.seed)
    }

    /// Alice's laptop makes "Lunch" (with bob) and "Plans" (alone), which
    /// bob joins through a server invite in his outbox; the phone gets both
    /// keys. Then the schedule starts, faults and all.
    fn set_up(&mut self) {
        let laptop = self.devices[0].leader();
        let lunch = run(laptop.create_thread("Lunch", &["bob".into()])).unwrap().id;
        let plans = run(laptop.create_thread("Plans", &[])).unwrap().id;
        let report = run(laptop.sync_round(&self.devices[0].transport)).unwrap();
        assert!(report.failure.is_none(), "seed {}: {report:?}", self.seed);
        let invite =
            run(dovecote::ports::Transport::create_invite(&self.devices[0].transport, plans)).unwrap();
        let lunch_code = laptop.export_thread_invite(lunch, None).unwrap();
        let plans_code = laptop.export_thread_invite(plans, Some(invite.token)).unwrap();
        let plans_key_only = laptop.export_thread_invite(plans, None).unwrap();
        run(self.devices[1].leader().import_thread_invite(&lunch_code)).unwrap();
        run(self.devices[1].leader().import_thread_invite(&plans_key_only)).unwrap();
        run(self.devices[2].leader().import_thread_invite(&lunch_code)).unwrap();
        run(self.devices[2].leader().import_thread_invite(&plans_code)).unwrap();
        self.threads = vec![lunch, plans];
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.rng.below(items.len() as u64) as usize])
    }

    fn tab(&mut self, d: usize) -> usize {
        self.rng.below(self.devices[d].tabs.len() as u64) as usize
    }

    fn text(&mut self, d: usize) -> String {
        self.next_text += 1;
        let mut text = format!("{}#{}", self.devices[d].name, self.next_text);
        if self.rng.chance(2) {
            text.push_str(&"x".repeat(OVERSIZED));
        }
        text
    }

    /// Messages of device `d` that its user may still edit or delete.
    fn editable(&self, d: usize) -> Vec<MessageId> {
        self.order
            .iter()
            .copied()
            .filter(|id| {
                let w = &self.written[id];
                w.device == d && !w.deleted && !w.withdrawn
            })
            .collect()
    }

    fn send(&mut self, d: usize) {
        let t = self.tab(d);
        let thread = self.pick(&self.threads.clone()).unwrap();
        let text = self.text(d);
        let message = run(self.devices[d].tabs[t].send(thread, &text)).unwrap_or_else(|e| self.fail(e));
        self.log(format!(
            "{} tab {t} sends {} to {thread} ({} bytes)",
            self.devices[d].name,
            message.id,
            text.len()
        ));
        let refused = text.len() > OVERSIZED;
        self.written.insert(
            message.id,
            Written { device: d, thread, text, deleted: false, withdrawn: false, refused },
        );
        self.order.push(message.id);
        self.mutations += 1;
        self.totals.sent += 1;
    }

    fn edit(&mut self, d: usize, id: MessageId, text: String) {
        let t = self.tab(d);
        self.log(format!("{} tab {t} edits {id} ({} bytes)", self.devices[d].name, text.len()));
        let view = run(self.devices[d].tabs[t].edit(id, &text)).unwrap_or_else(|e| self.fail(e));
        if view.body.as_deref() != Some(text.as_str()) {
            self.fail(format!("an edit shows {:?}", view.body));
        }
        let w = self.written.get_mut(&id).unwrap();
        w.refused |= text.len() > OVERSIZED;
        w.text = text;
        self.mutations += 1;
        self.totals.edits += 1;
    }

    fn edit_some(&mut self, d: usize) {
        let Some(id) = self.pick(&self.editable(d)) else { return };
        let text = self.text(d);
        self.edit(d, id, text);
    }

    fn delete_some(&mut self, d: usize) {
        let Some(id) = self.pick(&self.editable(d)) else { return };
        let t = self.tab(d);
        let view = run(self.devices[d].tabs[t].delete(id)).unwrap_or_else(|e| self.fail(e));
        self.log(format!("{} tab {t} deletes {id}: {:?}", self.devices[d].name, view.status));
        let w = self.written.get_mut(&id).unwrap();
        w.deleted = true;
        w.withdrawn = view.status == MessageStatus::Cancelled;
        self.mutations += 1;
        self.totals.deletes += 1;
    }

    fn cancel_some(&mut self, d: usize) {
        let Some(id) = self.pick(&self.editable(d)) else { return };
        let t = self.tab(d);
        match run(self.devices[d].tabs[t].cancel(id)) {
            Ok(()) => {
                self.log(format!("{} tab {t} cancels {id}", self.devices[d].name));
                self.written.get_mut(&id).unwrap().withdrawn = true;
            }
            // Already sent, in flight, or maybe delivered: the user sees why.
            Err(Error::Refused(_)) => {}
            Err(e) => self.fail(e),
        }
    }

    /// What a user does about messages that failed for good: shorten the
    /// text (which sends it again) or withdraw it.
    fn fix_failed(&mut self, d: usize, always: bool) {
        let mut looked_at = BTreeSet::new();
        loop {
            let entries = run(self.devices[d].leader().outbox()).unwrap_or_else(|e| self.fail(e));
            let failed: Vec<_> = entries.into_iter().filter(|e| e.state == "failed").collect();
            let Some(entry) = failed.iter().find(|e| e.message_id.is_none_or(|id| !looked_at.contains(&id)))
            else {
                return;
            };
            let Some(id) = entry.message_id else {
                self.fail(format!("a {} failed: {:?}", entry.kind, entry.error));
            };
            looked_at.insert(id);
            if !always && self.rng.chance(50) {
                continue;
            }
            let rows: Vec<_> = failed.iter().filter(|e| e.message_id == Some(id)).collect();
            let send_failed = rows.iter().any(|e| e.kind == "send");
            for row in &rows {
                let code = row.error.as_ref().map(|e| e.code.as_str());
                // Only oversized texts are refused; an edit or delete queued
                // behind a send that is then refused is refused too (the
                // server never had the message).
                let expected = code == Some("too_large") || (send_failed && code == Some("not_found"));
                if !expected {
                    self.fail(format!("the {} of {id} failed with {code:?}", row.kind));
                }
            }
            if rows.len() > 1 {
                self.totals.dependent_failures += 1;
            }
            let w = &self.written[&id];
            if w.withdrawn {
                self.fail(format!("{id} failed after the user withdrew it"));
            }
            if w.deleted && !send_failed {
                self.fail(format!("the delete of {id}, which the server has, failed"));
            }
            if w.deleted || (send_failed && self.rng.chance(40)) {
                match run(self.devices[d].leader().cancel(id)) {
                    Ok(()) => {
                        self.log(format!("{} cancels failed {id}", self.devices[d].name));
                        self.written.get_mut(&id).unwrap().withdrawn = true;
                    }
                    // A later row about it is in flight, or was when a tab
                    // died (until the next round recovers it): try later.
                    Err(Error::Refused(Refusal::InFlight)) => {}
                    Err(e) => self.fail(e),
                }
            } else {
                self.next_text += 1;
                let text = format!("{}#{} (shorter)", self.devices[d].name, self.next_text);
                self.edit(d, id, text);
            }
        }
    }

    fn advance(&mut self) {
        let by = match self.rng.below(100) {
            0..=69 => self.rng.below(2_000),
            70..=94 => self.rng.below(20_000),
            _ => 60_000 + self.rng.below(60_000),
        };
        self.set_time(self.clock.now() + by);
    }

    fn set_time(&self, now: Millis) {
        self.clock.0.set(now);
        self.server.set_now(now);
    }

    /// One sync round of device `d`; whether it finished without a failure.
    fn round(&mut self, d: usize) -> bool {
        let device = &self.devices[d];
        let report = run(device.leader().sync_round(&device.transport)).unwrap_or_else(|e| self.fail(e));
        self.log(format!(
            "{} round: {} pushes, {} pulled, failure {:?}",
            device.name,
            report.pushes,
            report.pulled,
            report.failure.as_ref().map(|f| &f.code)
        ));
        self.totals.rounds += 1;
        report.failure.is_none()
    }

    /// The leader tab goes away: closed, reloaded or crashed. Another tab
    /// takes over, or a new one opens on the same database.
    fn restart(&mut self, d: usize) {
        let name = self.devices[d].name;
        self.devices[d].tabs.remove(0);
        if self.devices[d].tabs.is_empty() || self.rng.chance(50) {
            let tab = self.devices[d].open_tab(&self.clock);
            self.devices[d].tabs.push(tab);
        }
        self.log(format!("{name} restarts ({} tabs)", self.devices[d].tabs.len()));
        self.totals.restarts += 1;
    }

    fn open_second_tab(&mut self, d: usize) {
        if self.devices[d].tabs.len() < 2 {
            let tab = self.devices[d].open_tab(&self.clock);
            self.devices[d].tabs.push(tab);
            self.log(format!("{} opens a tab", self.devices[d].name));
        }
    }

    /// A round whose push hangs: the leader dies with it in flight (the push
    /// reached the server or not), and the device restarts.
    fn kill_mid_push(&mut self, d: usize) {
        let reaches_server = self.rng.chance(50);
        let transport = self.devices[d].transport.clone();
        let leader = self.devices[d].tabs[0].clone();
        transport.hang_next_push(reaches_server);
        let pending = poll_once(pin!(leader.sync_round(&transport))).is_pending();
        if transport.clear_hang() || !pending {
            return; // nothing was due: the round ended without a push
        }
        self.log(format!("{} dies mid-push (reached server: {reaches_server})", self.devices[d].name));
        self.totals.killed_mid_push += 1;
        drop(leader);
        self.restart(d);
    }

    /// A round whose push waits while the user keeps writing (in the same
    /// tab or another one, as JS calls interleave with a pending promise),
    /// then goes on.
    fn act_mid_push(&mut self, d: usize) {
        let transport = self.devices[d].transport.clone();
        let leader = self.devices[d].tabs[0].clone();
        transport.pause_next_push();
        let mut round = pin!(leader.sync_round(&transport));
        let mut outcome = poll_once(round.as_mut());
        if outcome.is_pending() {
            assert!(transport.is_paused(), "seed {}: a round waited on nothing", self.seed);
            self.log(format!("{} push paused", self.devices[d].name));
            self.totals.acted_mid_push += 1;
            for _ in 0..1 + self.rng.below(3) {
                let who = if self.rng.chance(70) { d } else { self.rng.below(3) as usize };
                match self.rng.below(10) {
                    0..=4 => self.send(who),
                    5..=6 => self.edit_some(who),
                    7..=8 => self.delete_some(who),
                    _ => self.cancel_some(who),
                }
            }
            transport.resume();
            outcome = poll_once(round.as_mut());
        }
        transport.resume();
        match outcome {
            Poll::Ready(result) => {
                result.unwrap_or_else(|e| self.fail(e));
            }
            Poll::Pending => self.fail("a resumed round still waits"),
        }
    }

    fn step(&mut self) {
        let d = match self.rng.below(10) {
            0..=4 => 0,
            5..=6 => 1,
            _ => 2,
        };
        match self.rng.below(1000) {
            0..=379 => self.send(d),
            380..=459 => self.edit_some(d),
            460..=499 => self.delete_some(d),
            500..=519 => self.cancel_some(d),
            520..=539 => self.fix_failed(d, false),
            540..=659 => self.advance(),
            660..=819 => {
                self.round(d);
            }
            820..=849 => {
                let faults = [Faults::NONE, Faults::CHAOS, STORM][self.rng.below(3) as usize];
                self.log(format!("{} network: {faults:?}", self.devices[d].name));
                self.devices[d].transport.set_faults(faults);
            }
            850..=864 => {
                let down = !self.server.is_down();
                self.log(format!("server down: {down}"));
                self.server.set_down(down);
            }
            865..=889 => self.restart(d),
            890..=904 => self.open_second_tab(d),
            905..=929 => self.kill_mid_push(d),
            930..=969 => self.act_mid_push(d),
            970..=979 => {
                let expired = self.rng.chance(50);
                self.log(format!("{} session expired: {expired}", self.devices[d].name));
                self.devices[d].transport.set_session_expired(expired);
            }
            980..=989 => {
                run(self.devices[d].leader().wake_outbox()).unwrap_or_else(|e| self.fail(e));
            }
            _ => self.devices[d].transport.deliver_held(),
        }
    }

    /// What must hold at every moment.
    fn check_safety(&self) {
        let stats = self.server.stats();
        if stats.out_of_order > 0 {
            self.fail(format!("the server answered out_of_order {} times", stats.out_of_order));
        }
        if stats.send_repeats > 0 {
            self.fail(format!("a message was sent again under a new mutation id ({})", stats.send_repeats));
        }
    }

    /// Network and server back, the user fixing what failed for good:
    /// rounds until every outbox is empty and every device has pulled.
    fn heal(&mut self) {
        self.server.set_down(false);
        for device in &self.devices {
            device.transport.set_faults(Faults::NONE);
            device.transport.set_session_expired(false);
            device.transport.deliver_held();
        }
        for pass in 0..20 {
            for d in 0..self.devices.len() {
                self.fix_failed(d, true);
                run(self.devices[d].leader().wake_outbox()).unwrap_or_else(|e| self.fail(e));
                self.round(d);
            }
            let waiting: usize =
                self.devices.iter().map(|device| run(device.leader().outbox()).unwrap().len()).sum();
            if waiting == 0 {
                // Rounds until each device has pulled what the others pushed
                // last, in full: a round held by a Retry-After pulls nothing.
                for _ in 0..5 {
                    let mut clean = true;
                    for d in 0..self.devices.len() {
                        clean &= self.round(d);
                    }
                    if clean {
                        self.log(format!("healed after {pass} passes"));
                        return;
                    }
                    self.set_time(self.clock.now() + 61_000);
                }
                self.fail("rounds still fail after the outboxes drained".to_string());
            }
            // Past every backoff (cap 60 s) and Retry-After (at most 30 s).
            self.set_time(self.clock.now() + 61_000);
        }
        let outboxes: Vec<_> =
            self.devices.iter().map(|device| run(device.leader().outbox()).unwrap()).collect();
        self.fail(format!("the outboxes did not drain: {outboxes:#?}"));
    }

    fn check_end(&mut self) {
        self.check_safety();
        let seed = self.seed;
        let on_server: BTreeMap<MessageId, _> =
            self.server.messages().into_iter().map(|m| (m.id, m)).collect();

        // Deleted by the user while the server refused its send: the engine
        // withdraws it (nothing to deliver, nothing to delete); its device
        // must show it `cancelled` (checked below).
        let auto: Vec<MessageId> = self
            .written
            .iter()
            .filter(|(id, w)| !w.withdrawn && w.deleted && w.refused && !on_server.contains_key(*id))
            .map(|(id, _)| *id)
            .collect();
        for id in auto {
            self.written.get_mut(&id).unwrap().withdrawn = true;
        }

        // Lost or made up, on the server.
        for (id, w) in &self.written {
            match (w.withdrawn, on_server.get(id)) {
                (true, Some(_)) => self.fail(format!("withdrawn {id} reached the server")),
                (false, None) => self.fail(format!("{id} ({:?}) is lost", w)),
                (false, Some(m)) if m.deleted != w.deleted => {
                    self.fail(format!("{id}: deleted {} on the server, {} written", m.deleted, w.deleted))
                }
                _ => {}
            }
        }
        if let Some(id) = on_server.keys().find(|id| !self.written.contains_key(id)) {
            self.fail(format!("the server holds {id}, which nobody wrote"));
        }

        // Order: each device's messages reached the server in written order.
        for d in 0..self.devices.len() {
            let seqs: Vec<(MessageId, u64)> = self
                .order
                .iter()
                .filter(|id| {
                    let w = &self.written[id];
                    w.device == d && !w.withdrawn && !w.refused
                })
                .map(|id| (*id, on_server[id].seq))
                .collect();
            if let Some(pair) = seqs.windows(2).find(|p| p[0].1 >= p[1].1) {
                self.fail(format!(
                    "{}: {} (seq {}) went after {} (seq {})",
                    self.devices[d].name, pair[1].0, pair[1].1, pair[0].0, pair[0].1
                ));
            }
        }

        // Every device shows the server's state.
        for d in 0..self.devices.len() {
            let device = &self.devices[d];
            for &thread in &self.threads {
                let thread_view = run(device.leader().threads())
                    .unwrap()
                    .into_iter()
                    .find(|t| t.id == thread)
                    .unwrap_or_else(|| self.fail(format!("{} lacks thread {thread}", device.name)));
                let server_thread = self.server.thread(thread).unwrap();
                assert_eq!(thread_view.members, server_thread.members, "seed {seed}: {}", device.name);
                assert!(thread_view.title.is_some(), "seed {seed}: {} cannot read a title", device.name);

                let page = run(device.leader().messages(thread, None, 1000)).unwrap();
                let mut seen = BTreeSet::new();
                for m in &page {
                    if !seen.insert(m.id) {
                        self.fail(format!("{} shows {} twice", device.name, m.id));
                    }
                    self.check_local(d, m);
                }
                let expected: BTreeSet<MessageId> = on_server
                    .values()
                    .filter(|m| m.thread_id == thread)
                    .map(|m| m.id)
                    .chain(
                        self.written
                            .iter()
                            .filter(|(_, w)| w.withdrawn && w.device == d && w.thread == thread)
                            .map(|(id, _)| *id),
                    )
                    .collect();
                if seen != expected {
                    let missing: Vec<_> = expected.difference(&seen).collect();
                    let extra: Vec<_> = seen.difference(&expected).collect();
                    self.fail(format!("{} in {thread}: missing {missing:?}, extra {extra:?}", device.name));
                }
                let seqs: Vec<u64> = page.iter().filter_map(|m| m.seq).collect();
                if seqs.windows(2).any(|p| p[0] >= p[1]) {
                    self.fail(format!("{} shows {thread} out of server order: {seqs:?}", device.name));
                }
            }
        }

        let stats = self.server.stats();
        self.totals.replayed += stats.replayed;
        for device in &self.devices {
            let t = device.transport.stats();
            self.totals.pushes += t.pushes;
            self.totals.dropped_answers += t.dropped_answers;
            self.totals.duplicated += t.duplicated;
            self.totals.delayed += t.delayed;
            self.totals.unauthorized += t.unauthorized;
            self.totals.before_retry_after += t.before_retry_after;
            self.totals.pushes_before_retry_after += t.pushes_before_retry_after;
        }
        self.totals.withdrawn = self.written.values().filter(|w| w.withdrawn).count();
        self.totals.refused = self.written.values().filter(|w| w.refused).count();
    }

    /// One message as device `d` shows it, against the model and the server.
    fn check_local(&self, d: usize, m: &Message) {
        let name = self.devices[d].name;
        let w =
            self.written.get(&m.id).unwrap_or_else(|| self.fail(format!("{name} shows unknown {}", m.id)));
        if w.withdrawn {
            if w.device != d || m.status != MessageStatus::Cancelled {
                self.fail(format!("{name} shows withdrawn {} as {:?}", m.id, m.status));
            }
            return;
        }
        let server = self.server.message(m.id).unwrap();
        if m.status != MessageStatus::Sent || m.seq != Some(server.seq) {
            self.fail(format!(
                "{name} shows {} as {:?} seq {:?}; the server has seq {}",
                m.id, m.status, m.seq, server.seq
            ));
        }
        let expected = (!w.deleted).then(|| w.text.clone());
        if m.deleted != w.deleted || m.body != expected || m.undecryptable.is_some() {
            self.fail(format!(
                "{name} shows {}: deleted {} body {:?} ({:?}); written: deleted {} body {:?}",
                m.id,
                m.deleted,
                m.body.as_ref().map(|b| &b[..b.len().min(40)]),
                m.undecryptable,
                w.deleted,
                expected.as_ref().map(|b| &b[..b.len().min(40)])
            ));
        }
    }
}

fn simulate(seed: u64, trace: Rc<RefCell<Vec<String>>>) -> Totals {
    let mut sim = Sim::new(seed, trace);
    while sim.mutations < MUTATIONS {
        sim.step();
        sim.check_safety();
    }
    sim.heal();
    sim.check_end();
    sim.totals
}

impl Totals {
    fn add(&mut self, t: &Totals) {
        self.sent += t.sent;
        self.edits += t.edits;
        self.deletes += t.deletes;
        self.withdrawn += t.withdrawn;
        self.refused += t.refused;
        self.rounds += t.rounds;
        self.restarts += t.restarts;
        self.killed_mid_push += t.killed_mid_push;
        self.acted_mid_push += t.acted_mid_push;
        self.dependent_failures += t.dependent_failures;
        self.pushes += t.pushes;
        self.dropped_answers += t.dropped_answers;
        self.duplicated += t.duplicated;
        self.delayed += t.delayed;
        self.unauthorized += t.unauthorized;
        self.before_retry_after += t.before_retry_after;
        self.pushes_before_retry_after += t.pushes_before_retry_after;
        self.replayed += t.replayed;
    }
}

/// Runs one seed; on failure prints its trace (all of it with `full`, else
/// the end) and returns the panic message.
fn run_seed(seed: u64, full: bool) -> Result<Totals, String> {
    let trace = Rc::new(RefCell::new(Vec::new()));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| simulate(seed, trace.clone())));
    let trace = trace.borrow();
    match outcome {
        Ok(totals) => {
            if full {
                println!("{}", trace.join("\n"));
            }
            Ok(totals)
        }
        Err(panic) => {
            let keep = if full { trace.len() } else { 60 };
            let tail = &trace[trace.len().saturating_sub(keep)..];
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            eprintln!(
                "--- seed {seed}: last {} of {} steps ---\n{}\n--- {why}\n--- replay with: SEED={seed} cargo test --test sync_sim -- --nocapture",
                tail.len(),
                trace.len(),
                tail.join("\n")
            );
            Err(why)
        }
    }
}

#[test]
fn simulation_of_faults_and_restarts_loses_duplicates_and_reorders_nothing() {
    let only: Option<u64> = std::env::var("SEED").ok().map(|s| s.parse().expect("SEED is a number"));
    if let Some(seed) = only {
        if let Err(why) = run_seed(seed, true) {
            panic!("seed {seed} failed: {why}");
        }
        return;
    }
    let seeds: u64 = std::env::var("SEEDS").ok().map_or(SEEDS, |s| s.parse().expect("SEEDS is a number"));
    // Seeds are independent (each has its own clients, server and clock), so
    // they run on every core; each seed stays single-threaded and replayable.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8) as u64;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let started = Instant::now();
    let results: Vec<(Totals, Vec<(u64, String)>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                let stop = &stop;
                scope.spawn(move || {
                    let mut totals = Totals::default();
                    let mut failed = Vec::new();
                    for seed in (worker..seeds).step_by(workers as usize) {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        match run_seed(seed, false) {
                            Ok(t) => totals.add(&t),
                            Err(why) => {
                                failed.push((seed, why));
                                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                    (totals, failed)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a worker panicked outside a seed")).collect()
    });
    let mut all = Totals::default();
    let mut failed = Vec::new();
    for (totals, f) in results {
        all.add(&totals);
        failed.extend(f);
    }
    assert!(failed.is_empty(), "failing seeds (replay each with SEED=n): {failed:?}");
    println!("{seeds} seeds x {MUTATIONS} mutations in {:.1} s: {all:?}", started.elapsed().as_secs_f64());
    if seeds >= 100 {
        // The schedule really did what it claims, at scale.
        let n = seeds as usize;
        assert!(all.killed_mid_push > n / 4 && all.acted_mid_push > n / 4, "{all:?}");
        assert!(all.dropped_answers as usize > n && all.duplicated as usize > n / 2, "{all:?}");
        assert!(all.delayed as usize > n / 2 && all.replayed as usize > n, "{all:?}");
        assert!(all.unauthorized as usize > n / 2, "{all:?}");
        assert!(all.withdrawn > 0 && all.refused > 0 && all.dependent_failures > 0, "{all:?}");
    }
}
