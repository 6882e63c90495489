//! The load benchmark of issue 15: many clients push one message per push
//! into one shared thread, spread round-robin over the instances of one
//! deployment, while pullers pull the same feed from every instance. It
//! measures pushes per second and push latency, and checks what a user
//! would notice under load:
//!
//! - **lost**: an acked message that is not in the final feed;
//! - **duplicated**: a message in the feed twice (by id, or by sender and
//!   body, which would catch a copy stored under a new id);
//! - **order**: a sender's messages whose seqs are not in its push order;
//! - **skipped**: a seq a puller's cursor passed without the puller ever
//!   getting it (a change that committed after a higher seq was visible;
//!   docs/protocol.md §5, "No gaps under concurrency");
//! - every push answered `200` with exactly its one ack, and every
//!   instance's full pull the same;
//! - **exactly once across instances**: after the timed part, each client
//!   sends its last push again, to another instance than the first time;
//!   the answer must be the stored one (same seq and `server_ts`), and the
//!   final feed (pulled after) must not hold a second copy.
//!
//! One shared thread, because that is the hardest case for the feed: every
//! push takes the feed lock, and every push also touches the same thread's
//! rows and per-thread feed index. Each client has one device and numbers
//! its mutations 1, 2, 3… as the SDK's outbox does; a push that gets no
//! answer is retried with the same mutation id on the next instance, so a
//! retry tests exactly-once across instances.
//!
//! Blocking threads and the conformance kit's [`Kit`] (one per client: its
//! agent keeps one keep-alive connection per instance, like one browser per
//! user). The caller bounds the run in time (`main` has a watchdog).

#![deny(missing_docs)]

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use dovecote::core::envelope::Envelope;
use dovecote::core::model::{DeviceId, MessageId, ThreadId, UserId};
use dovecote::core::sync::{
    Change, MutationBody, PullResponse, PushMutation, PushRequest, PushResponse, PROTOCOL_VERSION,
};
use dovecote_conformance::{fresh_id, now_ms, Kit, Reply};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Server URLs: one server, or instances on one database.
    pub urls: Vec<String>,
    /// Concurrent pushing clients (one user and device each).
    pub clients: usize,
    /// Pushes per client, one message each, one after another.
    pub pushes: u64,
    /// Concurrent pullers (one user each, members of the thread).
    pub pullers: usize,
    /// The pullers' page size (small pages: more pulls between commits).
    pub page: u32,
}

/// Attempts per push before a client gives up (transport errors, 5xx, 429).
const ATTEMPTS: u32 = 10;
/// Error texts kept for the report (every error is counted).
const KEEP_ERRORS: usize = 10;

/// One acked push, in the client's push order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The pushing user.
    pub sender: UserId,
    /// The message's id.
    pub message: MessageId,
    /// The body pushed (`sender#n`).
    pub body: Vec<u8>,
    /// The acked seq.
    pub seq: u64,
}

/// What one puller saw.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Every seq it was given.
    pub seqs: HashSet<u64>,
    /// Its cursor at the end.
    pub cursor: u64,
    /// Pulls answered.
    pub pulls: u64,
    /// Pages that broke the page rules of §5 (order, cursor).
    pub page_errors: Vec<String>,
    /// Pulls that failed (non-200, transport).
    pub errors: Vec<String>,
}

/// The correctness counts. All zero (and `feeds_differ` false) is a pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Acked messages missing from the feed.
    pub lost: u64,
    /// Feed entries that repeat a message (same id, or same sender and body).
    pub duplicated: u64,
    /// Pairs of one sender's consecutive pushes whose seqs are not increasing.
    pub out_of_order: u64,
    /// Seqs below a puller's final cursor that the puller never got, summed.
    pub skipped: u64,
    /// Feed messages whose seq or sender differ from the ack and the token.
    pub mismatched: u64,
    /// Feed messages nobody here acked.
    pub unknown: u64,
    /// Pages that broke the page rules, summed over pullers.
    pub page_errors: u64,
    /// Repeated last pushes whose answer was not the original one.
    pub repeats_differ: u64,
    /// Whether the instances' full pulls differed.
    pub feeds_differ: bool,
}

impl Verdict {
    /// Whether every check passed.
    pub fn is_clean(&self) -> bool {
        *self == Verdict::default()
    }
}

/// The figures and counts of one run.
#[derive(Debug, Clone)]
pub struct Report {
    /// How many server URLs.
    pub instances: usize,
    /// Pushes asked for (clients × pushes).
    pub planned: u64,
    /// Pushes acked.
    pub acked: u64,
    /// From the first push to the last answer.
    pub elapsed: Duration,
    /// Each acked push's latency (first attempt to answer), sorted.
    pub latencies: Vec<Duration>,
    /// Non-200 answers and transport errors while pushing or pulling.
    pub errors: u64,
    /// The first few of them.
    pub error_samples: Vec<String>,
    /// Push answers that were not exactly the one ack expected.
    pub bad_answers: u64,
    /// Pulls answered, over all pullers.
    pub pulls: u64,
    /// Changes in the final feed.
    pub feed_len: usize,
    /// The correctness counts.
    pub verdict: Verdict,
}

impl Report {
    /// Acked pushes per second.
    pub fn pushes_per_second(&self) -> f64 {
        self.acked as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p`-quantile (0..=1) of push latency, nearest rank.
    pub fn latency(&self, p: f64) -> Duration {
        let n = self.latencies.len();
        if n == 0 {
            return Duration::ZERO;
        }
        self.latencies[((n as f64 * p).ceil() as usize).clamp(1, n) - 1]
    }

    /// Whether the run is correct: everything acked, every answer as
    /// expected, no errors, every check of [`Verdict`] clean.
    pub fn passed(&self) -> bool {
        self.acked == self.planned && self.bad_answers == 0 && self.errors == 0 && self.verdict.is_clean()
    }
}

struct Client {
    kit: Kit,
    user: String,
    token: String,
}

fn sign_in(urls: &[String], name: &str) -> Result<Client, String> {
    let kit = Kit::new(urls.to_vec());
    let (user, token) = kit.session(name)?;
    Ok(Client { kit, user, token })
}

fn fresh<T: FromStr>() -> T
where
    T::Err: Debug,
{
    fresh_id().parse().expect("the kit's ids parse")
}

fn short(reply: &Reply) -> String {
    format!("{} {}", reply.status, reply.body.chars().take(200).collect::<String>())
}

/// Runs the benchmark: sets up the thread, runs clients and pullers to the
/// end, pulls the whole feed from every instance and checks it.
pub fn run(options: &Options) -> Result<Report, String> {
    let urls = &options.urls;
    if urls.is_empty() || options.clients == 0 || options.pushes == 0 {
        return Err("nothing to run: give at least one URL, client and push".into());
    }
    let clients: Vec<Client> =
        (0..options.clients).map(|i| sign_in(urls, &format!("load{i}"))).collect::<Result<_, _>>()?;
    let readers: Vec<Client> =
        (0..options.pullers).map(|i| sign_in(urls, &format!("reader{i}"))).collect::<Result<_, _>>()?;

    // One thread, created by client 0 with everyone else as a member (on a
    // device of its own, so that the clients' devices all start at 1).
    let thread: ThreadId = fresh();
    let owner = &clients[0];
    let members = clients[1..].iter().chain(&readers).map(|c| UserId(c.user.clone())).collect();
    let create = PushRequest {
        protocol: PROTOCOL_VERSION,
        device_id: fresh(),
        mutations: vec![PushMutation {
            mutation_id: 1,
            body: MutationBody::CreateThread {
                thread_id: thread,
                title: Envelope(b"load".to_vec()),
                members,
                created_at: now_ms(),
            },
        }],
    };
    let reply = owner.kit.request(0, "POST", "/v1/push", Some(&owner.token), Some(&to_json(&create)));
    let created: PushResponse = reply.ok().map_err(|e| format!("creating the thread: {e}"))?;
    if created.acks.len() != 1 {
        return Err(format!("creating the thread: {created:?}"));
    }

    let done = AtomicBool::new(false);
    let start = Barrier::new(clients.len() + 1);
    let (logs, seen, elapsed) = std::thread::scope(|s| {
        let pullers: Vec<_> = readers
            .iter()
            .enumerate()
            .map(|(k, reader)| {
                // Half the pullers read the main feed, half the thread's feed.
                let only = (k % 2 == 1).then_some(thread);
                let done = &done;
                s.spawn(move || pull_loop(reader, k, only, options.page, done))
            })
            .collect();
        let pushers: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(i, client)| {
                let start = &start;
                s.spawn(move || push_loop(client, i, thread, options.pushes, start))
            })
            .collect();
        start.wait();
        let began = Instant::now();
        let logs: Vec<ClientLog> =
            pushers.into_iter().map(|p| p.join().expect("a pusher panicked")).collect();
        let elapsed = began.elapsed();
        done.store(true, Ordering::Release);
        let seen: Vec<Seen> = pullers.into_iter().map(|p| p.join().expect("a puller panicked")).collect();
        (logs, seen, elapsed)
    });

    // Exactly once: each client's last push again, on the next instance.
    let mut repeats_differ = 0;
    for (i, (client, log)) in clients.iter().zip(&logs).enumerate() {
        let Some((request, original)) = &log.last else { continue };
        let at = i + options.pushes as usize + 1;
        let reply = client.kit.request(at, "POST", "/v1/push", Some(&client.token), Some(request));
        if reply.ok::<PushResponse>().as_ref() != Ok(original) {
            repeats_differ += 1;
        }
    }

    // The whole feed from every instance; they must agree.
    let mut feeds = Vec::new();
    for at in 0..urls.len() {
        feeds.push(pull_all(&owner.kit, at, &owner.token)?);
    }
    let feeds_differ = feeds.windows(2).any(|w| w[0] != w[1]);
    let feed = feeds.swap_remove(0);

    let sent: Vec<Vec<Sent>> = logs.iter().map(|l| l.sent.clone()).collect();
    let mut verdict = verify(&sent, &feed, &seen);
    verdict.feeds_differ = feeds_differ;
    verdict.repeats_differ = repeats_differ;

    let mut latencies: Vec<Duration> = logs.iter().flat_map(|l| l.latencies.iter().copied()).collect();
    latencies.sort();
    let mut error_samples: Vec<String> = logs.iter().flat_map(|l| l.errors.iter().cloned()).collect();
    error_samples.extend(seen.iter().flat_map(|s| s.errors.iter().chain(&s.page_errors).cloned()));
    error_samples.truncate(KEEP_ERRORS);
    Ok(Report {
        instances: urls.len(),
        planned: options.clients as u64 * options.pushes,
        acked: sent.iter().map(|s| s.len() as u64).sum(),
        elapsed,
        latencies,
        errors: logs.iter().map(|l| l.error_count).sum::<u64>()
            + seen.iter().map(|s| s.errors.len() as u64).sum::<u64>(),
        error_samples,
        bad_answers: logs.iter().map(|l| l.bad_answers).sum(),
        pulls: seen.iter().map(|s| s.pulls).sum(),
        feed_len: feed.len(),
        verdict,
    })
}

fn to_json(request: &PushRequest) -> Vec<u8> {
    serde_json::to_vec(request).expect("push requests serialize")
}

#[derive(Default)]
struct ClientLog {
    sent: Vec<Sent>,
    latencies: Vec<Duration>,
    error_count: u64,
    errors: Vec<String>,
    bad_answers: u64,
    /// The last push and its answer, to send again.
    last: Option<(Vec<u8>, PushResponse)>,
}

fn push_loop(client: &Client, index: usize, thread: ThreadId, pushes: u64, start: &Barrier) -> ClientLog {
    let mut log = ClientLog::default();
    let device: DeviceId = fresh();
    start.wait();
    for n in 1..=pushes {
        let message: MessageId = fresh();
        let body = format!("{}#{n}", client.user).into_bytes();
        let request = to_json(&PushRequest {
            protocol: PROTOCOL_VERSION,
            device_id: device,
            mutations: vec![PushMutation {
                mutation_id: n,
                body: MutationBody::Send {
                    thread_id: thread,
                    message_id: message,
                    body: Envelope(body.clone()),
                    client_ts: now_ms(),
                },
            }],
        });
        let began = Instant::now();
        // Round-robin: consecutive pushes of one client, and the clients'
        // first pushes, alternate between instances; a retry goes to the
        // next one.
        let mut answer = None;
        for attempt in 0..ATTEMPTS {
            let at = index + n as usize + attempt as usize;
            let reply = client.kit.request(at, "POST", "/v1/push", Some(&client.token), Some(&request));
            if reply.status == 200 {
                answer = Some(reply);
                break;
            }
            log.error_count += 1;
            if log.errors.len() < KEEP_ERRORS {
                log.errors.push(format!("push {n} of {}: {}", client.user, short(&reply)));
            }
            let wait = reply.retry_after.as_deref().and_then(|s| s.parse().ok()).unwrap_or(0.05);
            std::thread::sleep(Duration::from_secs_f64(wait * f64::from(attempt + 1)));
        }
        let Some(reply) = answer else {
            // Given up: the rest of this client's pushes are not acked.
            return log;
        };
        log.latencies.push(began.elapsed());
        match reply.ok::<PushResponse>() {
            Ok(r)
                if r.rejected.is_empty()
                    && r.acks.len() == 1
                    && r.acks[0].mutation_id == n
                    && r.last_mutation_id == n =>
            {
                log.sent.push(Sent {
                    sender: UserId(client.user.clone()),
                    message,
                    body,
                    seq: r.acks[0].seq,
                });
                log.last = Some((request, r));
            }
            other => {
                log.bad_answers += 1;
                if log.errors.len() < KEEP_ERRORS {
                    log.errors.push(format!("push {n} of {}: unexpected answer {other:?}", client.user));
                }
                return log;
            }
        }
    }
    log
}

/// Pulls from cursor 0 until the pushers are done and the feed is drained,
/// alternating instances, checking each page's rules as it goes.
fn pull_loop(reader: &Client, k: usize, only: Option<ThreadId>, page: u32, done: &AtomicBool) -> Seen {
    let mut seen = Seen::default();
    let filter = only.map(|t| format!("&thread={t}")).unwrap_or_default();
    for n in k.. {
        // Read before the pull: a pull that starts after every ack sees
        // every acked change (§5), so the last empty page is the end.
        let finishing = done.load(Ordering::Acquire);
        let path = format!("/v1/pull?cursor={}&limit={page}{filter}", seen.cursor);
        let reply = reader.kit.get(n, &path, Some(&reader.token));
        let answer: PullResponse = match reply.ok() {
            Ok(answer) => answer,
            Err(e) => {
                seen.errors.push(format!("puller {k}: {e}"));
                if seen.errors.len() > KEEP_ERRORS {
                    return seen;
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        seen.pulls += 1;
        let mut last = seen.cursor;
        for change in &answer.changes {
            if change.seq() <= last {
                seen.page_errors.push(format!("puller {k}: seq {} after {last}", change.seq()));
            }
            last = last.max(change.seq());
            seen.seqs.insert(change.seq());
        }
        if answer.cursor != last {
            seen.page_errors.push(format!("puller {k}: cursor {} is not the last seq {last}", answer.cursor));
        }
        seen.cursor = seen.cursor.max(answer.cursor);
        if !answer.has_more {
            if finishing {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    seen
}

/// Every change of the owner's main feed, in pages of 1000 from `at`.
fn pull_all(kit: &Kit, at: usize, token: &str) -> Result<Vec<Change>, String> {
    let (mut cursor, mut feed) = (0, Vec::new());
    loop {
        let reply = kit.get(at, &format!("/v1/pull?cursor={cursor}&limit=1000"), Some(token));
        let page: PullResponse = reply.ok().map_err(|e| format!("final pull from instance {at}: {e}"))?;
        feed.extend(page.changes);
        if !page.has_more {
            return Ok(feed);
        }
        if page.cursor <= cursor {
            return Err(format!("final pull from instance {at}: has_more without progress at {cursor}"));
        }
        cursor = page.cursor;
    }
}

/// Checks the final `feed` against what was acked (`sent`, each client's
/// pushes in order) and what each puller saw.
pub fn verify(sent: &[Vec<Sent>], feed: &[Change], seen: &[Seen]) -> Verdict {
    let mut verdict = Verdict::default();
    let acked: HashMap<MessageId, &Sent> = sent.iter().flatten().map(|s| (s.message, s)).collect();
    let mut stored: HashMap<MessageId, u64> = HashMap::new();
    let mut bodies: HashSet<(&UserId, &[u8])> = HashSet::new();
    let mut last_seq = 0;
    for change in feed {
        if change.seq() <= last_seq {
            verdict.page_errors += 1;
        }
        last_seq = change.seq();
        let Change::Message { seq, message } = change else { continue };
        let body = message.body.as_ref().map_or(&[][..], |b| &b.0[..]);
        let again_id = stored.insert(message.id, *seq).is_some();
        let again_body = !bodies.insert((&message.sender, body));
        if again_id || again_body {
            verdict.duplicated += 1;
        }
        match acked.get(&message.id) {
            None => verdict.unknown += 1,
            Some(s)
                if s.seq != *seq || s.sender != message.sender || s.body != body || message.seq != *seq =>
            {
                verdict.mismatched += 1;
            }
            Some(_) => {}
        }
    }
    for pushes in sent {
        let seqs: Vec<Option<u64>> = pushes.iter().map(|s| stored.get(&s.message).copied()).collect();
        verdict.lost += seqs.iter().filter(|s| s.is_none()).count() as u64;
        let kept: Vec<u64> = seqs.into_iter().flatten().collect();
        verdict.out_of_order += kept.windows(2).filter(|w| w[0] >= w[1]).count() as u64;
    }
    for puller in seen {
        verdict.page_errors += puller.page_errors.len() as u64;
        verdict.skipped +=
            feed.iter().map(Change::seq).filter(|s| *s <= puller.cursor && !puller.seqs.contains(s)).count()
                as u64;
    }
    verdict
}
