//! The benchmark's own checks: a small run against the in-memory
//! FakeServer passes, and `verify` catches each fault it counts (a check
//! that cannot fail would make the benchmark's zeros worthless).

use std::collections::HashSet;

use dovecote::core::envelope::Envelope;
use dovecote::core::model::{MessageId, ThreadId, UserId};
use dovecote::core::sync::{Change, ServerMessage};
use dovecote_conformance::fake::FakeHttp;
use dovecote_load::{run, verify, Options, Seen, Sent, Verdict};

#[test]
fn a_small_run_against_the_fake_passes_with_every_push_checked() {
    let fake = FakeHttp::start().expect("the fake starts");
    let options = Options { urls: vec![fake.url.clone()], clients: 4, pushes: 25, pullers: 2, page: 7 };
    let report = run(&options).expect("the run completes");
    assert!(report.passed(), "{report:#?}");
    assert_eq!((report.acked, report.planned), (100, 100));
    assert_eq!(report.latencies.len(), 100);
    // The thread's creation and 100 messages.
    assert_eq!(report.feed_len, 101);
    assert!(report.pulls >= 2 * (101 / 7));
}

fn user(n: u32) -> UserId {
    UserId(format!("u{n}"))
}

fn message_id(n: u8) -> MessageId {
    let mut random = [0; 10];
    random[9] = n;
    MessageId::from_parts(1_767_225_600_000, random)
}

/// Two senders, two pushes each, acked at seqs 2..=5; the feed as it
/// should be (thread at 1), and a puller that saw all of it.
fn world() -> (Vec<Vec<Sent>>, Vec<Change>, Vec<Seen>) {
    let thread = ThreadId::from_parts(1_767_225_600_000, [0xff; 10]);
    let mut sent = vec![Vec::new(), Vec::new()];
    let mut feed = vec![Change::Thread {
        seq: 1,
        thread: dovecote::core::sync::ServerThread {
            id: thread,
            title: Envelope(b"t".to_vec()),
            members: vec![user(0), user(1)],
            created_by: user(0),
            created_at: 1,
        },
    }];
    for seq in 2..=5u64 {
        let sender = (seq % 2) as usize;
        let body = format!("u{sender}#{seq}").into_bytes();
        let message = message_id(seq as u8);
        sent[sender].push(Sent { sender: user(sender as u32), message, body: body.clone(), seq });
        feed.push(Change::Message {
            seq,
            message: ServerMessage {
                id: message,
                thread_id: thread,
                sender: user(sender as u32),
                body: Some(Envelope(body)),
                seq,
                client_ts: 1,
                server_ts: 2,
                edited: false,
                deleted: false,
            },
        });
    }
    let seen = Seen { seqs: (1..=5).collect(), cursor: 5, ..Seen::default() };
    (sent, feed, vec![seen])
}

#[test]
fn verify_passes_the_right_feed_and_counts_each_fault() {
    let (sent, feed, seen) = world();
    assert!(verify(&sent, &feed, &seen).is_clean());

    let mut lost = feed.clone();
    lost.remove(2);
    let verdict = verify(&sent, &lost, &seen);
    assert_eq!(verdict, Verdict { lost: 1, ..Verdict::default() });

    // The same message again at a later seq, and a copy under a new id.
    let mut twice = feed.clone();
    let Change::Message { message, .. } = feed[1].clone() else { unreachable!() };
    twice.push(Change::Message { seq: 6, message: ServerMessage { seq: 6, ..message.clone() } });
    twice.push(Change::Message { seq: 7, message: ServerMessage { id: message_id(77), seq: 7, ..message } });
    let verdict = verify(&sent, &twice, &seen);
    assert_eq!(verdict.duplicated, 2, "{verdict:?}");
    assert!(!verdict.is_clean());

    // One sender's two pushes acked in the wrong order.
    let mut swapped = sent.clone();
    swapped[0].swap(0, 1);
    assert_eq!(verify(&swapped, &feed, &seen), Verdict { out_of_order: 1, ..Verdict::default() });

    // A puller whose cursor passed seq 3 without getting it.
    let skipped = vec![Seen { seqs: HashSet::from([1, 2, 4, 5]), cursor: 5, ..Seen::default() }];
    assert_eq!(verify(&sent, &feed, &skipped), Verdict { skipped: 1, ..Verdict::default() });
    // Not yet at 3 is not a skip.
    let behind = vec![Seen { seqs: HashSet::from([1, 2]), cursor: 2, ..Seen::default() }];
    assert!(verify(&sent, &feed, &behind).is_clean());

    // Acked at another seq than the feed says.
    let mut moved = sent.clone();
    moved[1][0].seq = 42;
    assert_eq!(verify(&moved, &feed, &seen), Verdict { mismatched: 1, ..Verdict::default() });
}
