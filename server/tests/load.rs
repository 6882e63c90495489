//! Bounded load on loopback: 50 concurrent clients push 200 messages each,
//! one message per push (the chat case), against the real binary with its
//! default durability. Prints throughput and push latency percentiles.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use dovecote::core::sync::Change;

const CLIENTS: usize = 50;
const MESSAGES: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_push_200_messages_each_all_stored_once_in_strict_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("load.db"), &[]);
    let http = server.http.clone();
    let names: Vec<String> = (0..CLIENTS).map(|i| format!("user{i}")).collect();
    let others: Vec<&str> = names[1..].iter().map(String::as_str).collect();
    let thread = thread_id();
    let owner = http.session(&names[0]).await;
    http.push_ok(&owner, &push_request(device_id(), vec![create_thread(1, thread, &others)])).await;

    let started = Instant::now();
    let mut tasks = Vec::new();
    for name in &names {
        let (http, name) = (http.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            let token = http.session(&name).await;
            let device = device_id();
            let mut latencies = Vec::new();
            let mut seqs = Vec::new();
            for i in 1..=MESSAGES {
                let request = push_request(device, vec![send(i, thread, message_id(), "load")]);
                let t = Instant::now();
                let response = http.push_ok(&token, &request).await;
                latencies.push(t.elapsed());
                assert!(response.rejected.is_empty(), "{response:?}");
                assert_eq!(response.acks.len(), 1);
                seqs.push(response.acks[0].seq);
            }
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "one client's messages are in its order");
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies
            .extend(tokio::time::timeout(Duration::from_secs(120), task).await.expect("bounded").unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).min(latencies.len()) - 1];
    let total = CLIENTS as u64 * MESSAGES;
    eprintln!(
        "load: {total} pushes of 1 mutation in {elapsed:.2?} = {:.0} mutations/s; push latency p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        total as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        latencies.last().unwrap()
    );

    let pages = http.pull_all(&owner, 0, 1000, None).await;
    let seqs: Vec<u64> = pages.iter().flat_map(|p| p.changes.iter().map(Change::seq)).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq strictly increasing");
    let ids: HashSet<_> = pages
        .iter()
        .flat_map(|p| &p.changes)
        .filter_map(|c| match c {
            Change::Message { message, .. } => Some(message.id),
            Change::Thread { .. } => None,
        })
        .collect();
    assert_eq!(ids.len() as u64, total, "every message stored exactly once");
    assert_eq!(seqs.len() as u64, total + 1);
}
