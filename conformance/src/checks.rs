//! The checks, one per rule, named by their section of docs/protocol.md.

use std::collections::BTreeSet;

use dovecote::core::envelope::Envelope;
use dovecote::core::sync::{InviteResponse, PullResponse, PushResponse};
use serde_json::{json, Value};

use crate::{fresh_id, fresh_id_at, now_ms, Check, Kit, Outcome, Reply};

macro_rules! ensure {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            return Err(format!($($why)+));
        }
    };
}

/// Every check, in the order of docs/protocol.md.
pub(crate) static ALL: &[Check] = &[
    Check { name: "1 every error is an ErrorBody; unknown paths are 404 not_found", run: unknown_path },
    Check { name: "1 a wrong method on a known route is 405 method_not_allowed", run: wrong_method },
    Check { name: "1 unknown request fields are ignored", run: unknown_fields_ignored },
    Check { name: "2 no, malformed or forged token: 401 unauthorized, nothing changes", run: unauthorized },
    Check { name: "2 the sender is the token's user, never a body field", run: sender_from_token },
    Check {
        name: "4.1 bad JSON, wrong types, unknown kind, bad ids or envelopes: 400 bad_request",
        run: bad_requests,
    },
    Check {
        name: "4.1 another protocol version: 400 unsupported_protocol, whatever the shape",
        run: unsupported_protocol,
    },
    Check {
        name: "4.1 too many mutations or too large a body: 413 too_large, nothing stored",
        run: too_large_pushes,
    },
    Check { name: "4.1 mutation ids not strictly increasing: 400, nothing stored", run: ids_not_increasing },
    Check { name: "4.1 a device id is bound to its first user: 403 forbidden", run: device_binding },
    Check {
        name: "4.2 a retried push gets the stored acks, same seq and server_ts",
        run: retry_gets_stored_acks,
    },
    Check { name: "4.2 concurrent copies of one push apply once", run: concurrent_copies },
    Check {
        name: "4.2 an id at or below the mark never processed: out_of_order, not stored",
        run: out_of_order,
    },
    Check { name: "4.2 a refusal is stored and repeated like an ack", run: refusal_is_final },
    Check { name: "4.2 results below a push's first id are pruned (then out_of_order)", run: pruning },
    Check { name: "4.2 an empty push reports the mark; gaps in ids are allowed", run: empty_push_and_gaps },
    Check {
        name: "4.2 mutation ids and cursors past 2^63 keep u64 order (stored acks, pruning, pulls)",
        run: past_i64_max,
    },
    Check {
        name: "4.3 create_thread: creator is a member; repeat acked with the original seq",
        run: create_thread,
    },
    Check { name: "4.3 an unusable id gets one answer: conflict, whatever the reason", run: unusable_ids },
    Check { name: "4.3 membership comes first and reveals nothing: not_member", run: not_member },
    Check {
        name: "4.3 a send repeated under a new mutation id is acked with the original seq",
        run: send_repeat,
    },
    Check {
        name: "4.3 edit: not_found, not_sender; an edit shows once, at its seq, with the new body",
        run: edits,
    },
    Check { name: "4.3 delete wins: tombstone, edit_deleted, idempotent delete", run: delete_wins },
    Check {
        name: "4.3 an oversized envelope fails alone (too_large), the rest goes on",
        run: oversized_envelope,
    },
    Check {
        name: "4.3 create_thread with over 256 members: invalid; a malformed user id: 400",
        run: invalid_members,
    },
    Check { name: "5 pull: limit 0 or not a number is 400; paging by cursor and has_more", run: paging },
    Check {
        name: "5 one global strictly increasing seq; one entry per entity at its latest change",
        run: one_entry_per_entity,
    },
    Check { name: "5 a pull shows only threads the caller belongs to now", run: pull_membership },
    Check {
        name: "5 thread pull: 404 for a non-member, whether or not the thread exists",
        run: thread_pull_404,
    },
    Check {
        name: "5 page bytes: a page stops at the byte limit, one larger change goes alone",
        run: page_bytes,
    },
    Check { name: "5 joining makes a thread change at a fresh seq; thread pull catches up", run: joining },
    Check { name: "7 invites: members only (404 otherwise), accept idempotent, bad token 403", run: invites },
    Check { name: "7 the join mutation: ack, idempotent, invite_invalid for a bad one", run: join_mutation },
    Check { name: "7 a thread with 256 members is full: thread_full", run: thread_full },
    Check { name: "11 envelopes are stored and returned byte for byte", run: envelopes_byte_for_byte },
];

// --- builders -------------------------------------------------------------

fn envelope(bytes: &[u8]) -> Value {
    serde_json::to_value(Envelope(bytes.to_vec())).expect("envelopes serialize")
}

fn create(id: u64, thread: &str, members: &[&str]) -> Value {
    json!({"mutation_id": id, "kind": "create_thread", "thread_id": thread, "title": envelope(b"title"),
           "members": members, "created_at": now_ms()})
}

fn send(id: u64, thread: &str, message: &str, text: &str) -> Value {
    json!({"mutation_id": id, "kind": "send", "thread_id": thread, "message_id": message,
           "body": envelope(text.as_bytes()), "client_ts": now_ms()})
}

fn edit(id: u64, thread: &str, message: &str, text: &str) -> Value {
    json!({"mutation_id": id, "kind": "edit", "thread_id": thread, "message_id": message,
           "body": envelope(text.as_bytes())})
}

fn delete(id: u64, thread: &str, message: &str) -> Value {
    json!({"mutation_id": id, "kind": "delete", "thread_id": thread, "message_id": message})
}

fn join(id: u64, thread: &str, invite: &str) -> Value {
    json!({"mutation_id": id, "kind": "join", "thread_id": thread, "invite": invite})
}

fn push_body(device: &str, mutations: Vec<Value>) -> Value {
    json!({"protocol": 1, "device_id": device, "mutations": mutations})
}

fn push(kit: &Kit, at: usize, token: &str, device: &str, mutations: Vec<Value>) -> Reply {
    kit.post(at, "/v1/push", Some(token), &push_body(device, mutations))
}

fn push_ok(
    kit: &Kit,
    at: usize,
    token: &str,
    device: &str,
    mutations: Vec<Value>,
) -> Result<PushResponse, String> {
    let response: PushResponse = push(kit, at, token, device, mutations).ok()?;
    ensure!(response.protocol == 1, "a push answer without protocol 1");
    Ok(response)
}

/// The seq of the single ack of a push of one mutation.
fn acked(response: &PushResponse) -> Result<u64, String> {
    ensure!(response.acks.len() == 1 && response.rejected.is_empty(), "expected one ack, got {response:?}");
    Ok(response.acks[0].seq)
}

/// The code of the single rejection of a push of one mutation.
fn rejected(response: &PushResponse) -> Result<String, String> {
    ensure!(
        response.rejected.len() == 1 && response.acks.is_empty(),
        "expected one rejection, got {response:?}"
    );
    Ok(response.rejected[0].code.clone())
}

fn pull(kit: &Kit, at: usize, token: &str, query: &str) -> Result<PullResponse, String> {
    let page: PullResponse = kit.get(at, &format!("/v1/pull?{query}"), Some(token)).ok()?;
    ensure!(page.protocol == 1, "a pull answer without protocol 1");
    Ok(page)
}

/// Every change after `cursor`, page by page (bounded), with the page rules checked.
fn pull_all(
    kit: &Kit,
    at: usize,
    token: &str,
    cursor: u64,
    limit: u32,
    thread: Option<&str>,
) -> Result<Vec<Value>, String> {
    let mut cursor = cursor;
    let mut out = Vec::new();
    for page_no in 0..10_000 {
        let thread = thread.map(|t| format!("&thread={t}")).unwrap_or_default();
        let reply =
            kit.get(at + page_no, &format!("/v1/pull?cursor={cursor}&limit={limit}{thread}"), Some(token));
        let page: PullResponse = reply.ok()?;
        let raw = reply.json();
        let mut last = cursor;
        for change in &page.changes {
            ensure!(
                change.seq() > last,
                "pull changes not in increasing seq after cursor {cursor}: {}",
                change.seq()
            );
            last = change.seq();
        }
        ensure!(page.changes.len() <= limit as usize, "a page of {} over limit {limit}", page.changes.len());
        ensure!(page.cursor == last, "cursor {} is not the last seq returned ({last})", page.cursor);
        out.extend(raw["changes"].as_array().cloned().unwrap_or_default());
        cursor = page.cursor;
        if !page.has_more {
            return Ok(out);
        }
        ensure!(!page.changes.is_empty(), "has_more with an empty page");
    }
    Err("the pull never finished".into())
}

/// The messages among changes, by id: `(seq of the change, message JSON)`.
fn messages(changes: &[Value]) -> Vec<(u64, Value)> {
    changes
        .iter()
        .filter(|c| c["type"] == "message")
        .map(|c| (c["seq"].as_u64().unwrap_or(0), c["message"].clone()))
        .collect()
}

fn thread_changes(changes: &[Value], thread: &str) -> Vec<Value> {
    changes.iter().filter(|c| c["type"] == "thread" && c["thread"]["id"] == thread).cloned().collect()
}

/// A thread of `owner`'s with `members`: its id.
fn new_thread(kit: &Kit, token: &str, members: &[&str]) -> Result<String, String> {
    let thread = fresh_id();
    let response = push_ok(kit, 0, token, &fresh_id(), vec![create(1, &thread, members)])?;
    acked(&response)?;
    Ok(thread)
}

/// The newest seq `token` can see (its main feed's end).
fn feed_end(kit: &Kit, token: &str) -> Result<u64, String> {
    let changes = pull_all(kit, 0, token, 0, 1000, None)?;
    Ok(changes.last().and_then(|c| c["seq"].as_u64()).unwrap_or(0))
}

// --- 1, 2 -----------------------------------------------------------------

fn unknown_path(kit: &Kit) -> Outcome {
    kit.get(0, "/v1/nowhere", None).expect_error(404, "not_found")?;
    let (_, token) = kit.session("alice")?;
    kit.get(1, "/v1/nowhere", Some(&token)).expect_error(404, "not_found")
}

fn wrong_method(kit: &Kit) -> Outcome {
    let (_, token) = kit.session("alice")?;
    kit.get(0, "/v1/push", Some(&token)).expect_error(405, "method_not_allowed")?;
    kit.request(1, "POST", "/v1/pull", Some(&token), Some(b"{}")).expect_error(405, "method_not_allowed")
}

fn unknown_fields_ignored(kit: &Kit) -> Outcome {
    let (_, token) = kit.session("alice")?;
    let thread = fresh_id();
    let mut body = push_body(&fresh_id(), vec![create(1, &thread, &[])]);
    body["future_field"] = json!({"x": 1});
    body["mutations"][0]["also_new"] = json!(true);
    acked(&kit.post(0, "/v1/push", Some(&token), &body).ok()?)?;
    Ok(())
}

fn unauthorized(kit: &Kit) -> Outcome {
    let (_, token) = kit.session("alice")?;
    let device = fresh_id();
    let body = push_body(&device, vec![create(1, &fresh_id(), &[])]);
    kit.post(0, "/v1/push", None, &body).expect_error(401, "unauthorized")?;
    kit.post(1, "/v1/push", Some("not-a-token"), &body).expect_error(401, "unauthorized")?;
    // A token with one character changed is forged.
    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ASCII");
    kit.post(0, "/v1/push", Some(&forged), &body).expect_error(401, "unauthorized")?;
    kit.get(1, "/v1/pull", Some(&forged)).expect_error(401, "unauthorized")?;
    kit.get(0, "/v1/pull", None).expect_error(401, "unauthorized")?;
    // Nothing changed: the device is still free (its mark is 0).
    let response = push_ok(kit, 1, &token, &device, vec![])?;
    ensure!(response.last_mutation_id == 0, "a refused push moved the device's mark");
    Ok(())
}

fn sender_from_token(kit: &Kit) -> Outcome {
    let (alice, token) = kit.session("alice")?;
    let thread = new_thread(kit, &token, &[])?;
    let message = fresh_id();
    let mut m = send(1, &thread, &message, "hi");
    m["sender"] = json!("mallory");
    let mut c = create(2, &fresh_id(), &[]);
    c["created_by"] = json!("mallory");
    let response = push_ok(kit, 0, &token, &fresh_id(), vec![m, c])?;
    ensure!(response.acks.len() == 2, "{response:?}");
    let changes = pull_all(kit, 1, &token, 0, 1000, None)?;
    let sent = messages(&changes)
        .into_iter()
        .find(|(_, m)| m["id"] == message)
        .ok_or("the message is not in the feed")?;
    ensure!(sent.1["sender"] == alice, "sender is {} not the token's user", sent.1["sender"]);
    ensure!(
        changes.iter().filter(|c| c["type"] == "thread").all(|c| c["thread"]["created_by"] == alice),
        "created_by taken from the body"
    );
    Ok(())
}

// --- 4.1 ------------------------------------------------------------------

fn bad_requests(kit: &Kit) -> Outcome {
    let (_, token) = kit.session("alice")?;
    let device = fresh_id();
    let thread = fresh_id();
    let raw =
        |at: usize, body: &str| kit.request(at, "POST", "/v1/push", Some(&token), Some(body.as_bytes()));
    raw(0, "{not json").expect_error(400, "bad_request")?;
    raw(1, r#"{"protocol":1,"mutations":[]}"#).expect_error(400, "bad_request")?; // no device_id
    raw(0, &json!({"protocol": 1, "device_id": device, "mutations": "no"}).to_string())
        .expect_error(400, "bad_request")?;
    let mut unknown_kind = create(1, &thread, &[]);
    unknown_kind["kind"] = json!("teleport");
    kit.post(1, "/v1/push", Some(&token), &push_body(&device, vec![unknown_kind]))
        .expect_error(400, "bad_request")?;
    kit.post(0, "/v1/push", Some(&token), &push_body(&device, vec![create(1, "0190", &[])]))
        .expect_error(400, "bad_request")?;
    let mut bad_envelope = create(1, &thread, &[]);
    bad_envelope["title"] = json!("not base64url!");
    kit.post(0, "/v1/push", Some(&token), &push_body(&device, vec![bad_envelope]))
        .expect_error(400, "bad_request")?;
    let mut padded = create(1, &thread, &[]);
    padded["title"] = json!("AQI=");
    kit.post(1, "/v1/push", Some(&token), &push_body(&device, vec![padded]))
        .expect_error(400, "bad_request")?;
    // Nothing stored: the device's mark is 0 and the thread is unknown.
    let response = push_ok(kit, 0, &token, &device, vec![])?;
    ensure!(response.last_mutation_id == 0, "a refused push moved the mark");
    ensure!(
        thread_changes(&pull_all(kit, 1, &token, 0, 1000, None)?, &thread).is_empty(),
        "a refused push stored a thread"
    );
    Ok(())
}

fn unsupported_protocol(kit: &Kit) -> Outcome {
    let (_, token) = kit.session("alice")?;
    let mut body = push_body(&fresh_id(), vec![create(1, &fresh_id(), &[])]);
    body["protocol"] = json!(2);
    kit.post(0, "/v1/push", Some(&token), &body).expect_error(400, "unsupported_protocol")?;
    // Even if the rest has another shape.
    let other = json!({"protocol": 2, "batch": [{"op": "x"}]});
    kit.post(1, "/v1/push", Some(&token), &other).expect_error(400, "unsupported_protocol")
}

fn too_large_pushes(kit: &Kit) -> Outcome {
    let (_, token) = kit.session("alice")?;
    let device = fresh_id();
    let thread = new_thread(kit, &token, &[])?;
    let many: Vec<Value> = (1..=501).map(|i| delete(i, &thread, &fresh_id())).collect();
    push(kit, 0, &token, &device, many).expect_error(413, "too_large")?;
    // Three envelopes of 90 KiB: each under the envelope limit, the body over 256 KiB.
    let big = vec![7u8; 90 * 1024];
    let bodies: Vec<Value> = (1..=3)
        .map(|i| {
            json!({"mutation_id": i, "kind": "send", "thread_id": thread, "message_id": fresh_id(),
                         "body": envelope(&big), "client_ts": 1})
        })
        .collect();
    push(kit, 1, &token, &device, bodies).expect_error(413, "too_large")?;
    let response = push_ok(kit, 0, &token, &device, vec![])?;
    ensure!(response.last_mutation_id == 0, "a refused push moved the mark");
    ensure!(
        messages(&pull_all(kit, 1, &token, 0, 1000, None)?).is_empty(),
        "a refused push stored a message"
    );
    Ok(())
}

fn ids_not_increasing(kit: &Kit) -> Outcome {
    let (_, token) = kit.session("alice")?;
    let device = fresh_id();
    let (a, b) = (fresh_id(), fresh_id());
    push(kit, 0, &token, &device, vec![create(2, &a, &[]), create(2, &b, &[])])
        .expect_error(400, "bad_request")?;
    push(kit, 1, &token, &device, vec![create(3, &a, &[]), create(1, &b, &[])])
        .expect_error(400, "bad_request")?;
    push(kit, 0, &token, &device, vec![create(0, &a, &[])]).expect_error(400, "bad_request")?;
    let response = push_ok(kit, 1, &token, &device, vec![])?;
    ensure!(response.last_mutation_id == 0, "a refused push moved the mark");
    let changes = pull_all(kit, 0, &token, 0, 1000, None)?;
    ensure!(
        thread_changes(&changes, &a).is_empty() && thread_changes(&changes, &b).is_empty(),
        "a refused push stored a thread"
    );
    Ok(())
}

fn device_binding(kit: &Kit) -> Outcome {
    let (_, alice) = kit.session("alice")?;
    let (_, bob) = kit.session("bob")?;
    let device = fresh_id();
    acked(&push_ok(kit, 0, &alice, &device, vec![create(1, &fresh_id(), &[])])?)?;
    let stolen = fresh_id();
    push(kit, 1, &bob, &device, vec![create(2, &stolen, &[])]).expect_error(403, "forbidden")?;
    push(kit, 0, &bob, &device, vec![]).expect_error(403, "forbidden")?;
    ensure!(
        thread_changes(&pull_all(kit, 1, &bob, 0, 1000, None)?, &stolen).is_empty(),
        "the forbidden push stored a thread"
    );
    let response = push_ok(kit, 1, &alice, &device, vec![])?;
    ensure!(response.last_mutation_id == 1, "the owner's mark moved: {}", response.last_mutation_id);
    Ok(())
}

// --- 4.2 ------------------------------------------------------------------

fn retry_gets_stored_acks(kit: &Kit) -> Outcome {
    let (_, token) = kit.session("alice")?;
    let device = fresh_id();
    let thread = fresh_id();
    let message = fresh_id();
    let batch = vec![create(1, &thread, &[]), send(2, &thread, &message, "once")];
    let first = push_ok(kit, 0, &token, &device, batch.clone())?;
    ensure!(first.acks.len() == 2 && first.last_mutation_id == 2, "{first:?}");
    for at in 1..=kit.instances().max(2) {
        let again = push_ok(kit, at, &token, &device, batch.clone())?;
        ensure!(again.acks == first.acks, "a retry got other acks: {:?} then {:?}", first.acks, again.acks);
        ensure!(again.last_mutation_id == 2, "mark {}", again.last_mutation_id);
    }
    let sent = messages(&pull_all(kit, 1, &token, 0, 1000, None)?);
    ensure!(
        sent.iter().filter(|(_, m)| m["id"] == message).count() == 1,
        "the message is not in the feed once"
    );
    Ok(())
}

fn concurrent_copies(kit: &Kit) -> Outcome {
    let (_, token) = kit.session("alice")?;
    let thread = new_thread(kit, &token, &[])?;
    let device = fresh_id();
    let batch: Vec<Value> = (1..=5).map(|i| send(i, &thread, &fresh_id(), "copy")).collect();
    let body = push_body(&device, batch);
    let answers: Vec<Reply> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|at| {
                s.spawn({
                    let (body, token) = (&body, &token);
                    move || kit.post(at, "/v1/push", Some(token), body)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("no panic")).collect()
    });
    let mut first: Option<PushResponse> = None;
    for answer in &answers {
        let response: PushResponse = answer.ok()?;
        ensure!(response.acks.len() == 5, "a copy got {response:?}");
        match &first {
            None => first = Some(response),
            Some(f) => ensure!(
                f.acks == response.acks,
                "copies answered differently: {:?} vs {:?}",
                f.acks,
                response.acks
            ),
        }
    }
    let count = messages(&pull_all(kit, 1, &token, 0, 1000, Some(&thread))?).len();
    ensure!(count == 5, "{count} messages stored for 5 sends pushed 6 times at once");
    Ok(())
}

fn out_of_order(kit: &Kit) -> Outcome {
    let (_, token) = kit.session("alice")?;
    let thread = new_thread(kit, &token, &[])?;
    let device = fresh_id();
    acked(&push_ok(kit, 0, &token, &device, vec![send(5, &thread, &fresh_id(), "five")])?)?;
    let skipped = fresh_id();
    for at in 0..2 {
        let response = push_ok(kit, at, &token, &device, vec![send(3, &thread, &skipped, "three")])?;
        ensure!(rejected(&response)? == "out_of_order", "{response:?}");
        ensure!(response.last_mutation_id == 5, "mark {}", response.last_mutation_id);
    }
    let sent = messages(&pull_all(kit, 1, &token, 0, 1000, Some(&thread))?);
    ensure!(!sent.iter().any(|(_, m)| m["id"] == skipped), "an out_of_order mutation was applied");
    Ok(())
}

fn refusal_is_final(kit: &Kit) -> Outcome {
    let (_, alice) = kit.session("alice")?;
    let (bob_id, bob) = kit.session("bob")?;
    let thread = new_thread(kit, &alice, &[])?;
    let device = fresh_id();
    let message = fresh_id();
    let first = push_ok(kit, 0, &bob, &device, vec![send(1, &thread, &message, "early")])?;
    ensure!(rejected(&first)? == "not_member", "{first:?}");
    // Bob becomes a member; the retry still gets the stored refusal.
    let invite: InviteResponse =
        kit.post(1, &format!("/v1/threads/{thread}/invites"), Some(&alice), &json!({})).ok()?;
    let _: Value =
        kit.post(0, &format!("/v1/invites/{}/accept", invite.token), Some(&bob), &json!({})).ok()?;
    let again = push_ok(kit, 1, &bob, &device, vec![send(1, &thread, &message, "early")])?;
    ensure!(again.rejected == first.rejected, "the retry got {again:?}, first {first:?}");
    let _ = bob_id;
    ensure!(
        messages(&pull_all(kit, 0, &bob, 0, 1000, Some(&thread))?).is_empty(),
        "the refused send was applied"
    );
    Ok(())
}

fn pruning(kit: &Kit) -> Outcome {
    let (_, token) = kit.session("alice")?;
    let thread = new_thread(kit, &token, &[])?;
    let device = fresh_id();
    let (m1, m2, m3) = (fresh_id(), fresh_id(), fresh_id());
    push_ok(kit, 0, &token, &device, vec![send(1, &thread, &m1, "1"), send(2, &thread, &m2, "2")])?;
    let third = push_ok(kit, 1, &token, &device, vec![send(3, &thread, &m3, "3")])?;
    // The push from 3 says 1 and 2 will never be asked about again.
    let late = push_ok(kit, 0, &token, &device, vec![send(1, &thread, &m1, "1")])?;
    ensure!(rejected(&late)? == "out_of_order", "a pruned id: {late:?}");
    let retry = push_ok(kit, 1, &token, &device, vec![send(3, &thread, &m3, "3")])?;
    ensure!(retry.acks == third.acks, "the latest push's results must be kept: {retry:?}");
    Ok(())
}

fn empty_push_and_gaps(kit: &Kit) -> Outcome {
    let (_, token) = kit.session("alice")?;
    let thread = new_thread(kit, &token, &[])?;
    let device = fresh_id();
    let empty = push_ok(kit, 0, &token, &device, vec![])?;
    ensure!(empty.last_mutation_id == 0 && empty.acks.is_empty() && empty.rejected.is_empty(), "{empty:?}");
    let gaps = push_ok(
        kit,
        1,
        &token,
        &device,
        vec![
            send(1, &thread, &fresh_id(), "a"),
            send(5, &thread, &fresh_id(), "b"),
            send(9, &thread, &fresh_id(), "c"),
        ],
    )?;
    ensure!(gaps.acks.len() == 3 && gaps.last_mutation_id == 9, "{gaps:?}");
    let mark = push_ok(kit, 0, &token, &device, vec![])?;
    ensure!(mark.last_mutation_id == 9, "{mark:?}");
    Ok(())
}

// --- 4.3 ------------------------------------------------------------------

// Found in both reference backends (tests/openapi/run, and a reading of
// the code): ids and cursors are u64, and a database column of i64 must
// neither clamp them nor compare them signed.
fn past_i64_max(kit: &Kit) -> Outcome {
    let (_, token) = kit.session("alice")?;
    let (device, thread) = (fresh_id(), fresh_id());
    let high = 1u64 << 63;
    let batch = vec![create(high, &thread, &[]), send(high + 1, &thread, &fresh_id(), "hi")];
    let first = push_ok(kit, 0, &token, &device, batch.clone())?;
    ensure!(first.acks.len() == 2 && first.last_mutation_id == high + 1, "{first:?}");
    for cursor in [high, u64::MAX] {
        let page = pull(kit, 1, &token, &format!("cursor={cursor}"))?;
        ensure!(
            page.changes.is_empty() && page.cursor == cursor,
            "nothing is after cursor {cursor}: {page:?}"
        );
    }
    // An id below the mark is refused and prunes nothing above it, so a
    // retry of the first push still gets its acks...
    let low = push_ok(kit, 1, &token, &device, vec![send(5, &thread, &fresh_id(), "late")])?;
    ensure!(rejected(&low)? == "out_of_order", "{low:?}");
    let again = push_ok(kit, 0, &token, &device, batch.clone())?;
    ensure!(again.acks == first.acks, "the retry got other acks: {:?} then {:?}", first.acks, again.acks);
    // ...and a push starting past both prunes both.
    let next = push_ok(kit, 1, &token, &device, vec![delete(high + 2, &thread, &fresh_id())])?;
    ensure!(rejected(&next)? == "not_found" && next.last_mutation_id == high + 2, "{next:?}");
    let pruned = push_ok(kit, 0, &token, &device, batch)?;
    ensure!(
        pruned.acks.is_empty() && pruned.rejected.iter().all(|r| r.code == "out_of_order"),
        "ids below a pushed id were not pruned: {pruned:?}"
    );
    Ok(())
}

fn create_thread(kit: &Kit) -> Outcome {
    let (alice_id, alice) = kit.session("alice")?;
    let bob_id = kit.user("bob");
    let thread = fresh_id();
    let first = push_ok(kit, 0, &alice, &fresh_id(), vec![create(1, &thread, &[&bob_id])])?;
    let seq = acked(&first)?;
    let changes = pull_all(kit, 1, &alice, 0, 1000, None)?;
    let made = thread_changes(&changes, &thread);
    ensure!(made.len() == 1 && made[0]["seq"] == seq, "the thread change: {made:?}");
    let members: BTreeSet<String> = made[0]["thread"]["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect();
    ensure!(members == BTreeSet::from([alice_id.clone(), bob_id]), "members {members:?}");
    ensure!(made[0]["thread"]["created_by"] == alice_id, "created_by");
    // The same creator again, from another device: the original seq.
    let again = push_ok(kit, 1, &alice, &fresh_id(), vec![create(1, &thread, &[])])?;
    ensure!(acked(&again)? == seq, "a repeat acked with {:?}, not the creation seq {seq}", again.acks);
    ensure!(
        thread_changes(&pull_all(kit, 0, &alice, 0, 1000, None)?, &thread).len() == 1,
        "a repeat made a change"
    );
    Ok(())
}

fn unusable_ids(kit: &Kit) -> Outcome {
    let (_, alice) = kit.session("alice")?;
    let (_, bob) = kit.session("bob")?;
    let thread = new_thread(kit, &alice, &[])?;
    let message = fresh_id();
    acked(&push_ok(kit, 0, &alice, &fresh_id(), vec![send(1, &thread, &message, "mine")])?)?;
    let bobs_thread = new_thread(kit, &bob, &[])?;
    // Another user's thread id; another message's id (another sender, or
    // another thread); ids stamped more than a day ahead.
    let future = now_ms() + 2 * 24 * 3600 * 1000;
    let attempts = [
        (&bob, create(1, &thread, &[])),
        (&bob, send(1, &bobs_thread, &message, "taken")),
        (&alice, send(1, &new_thread(kit, &alice, &[])?, &message, "other thread")),
        (&alice, create(1, &fresh_id_at(future), &[])),
        (&alice, send(1, &thread, &fresh_id_at(future), "future")),
    ];
    let mut answers = BTreeSet::new();
    for (i, (token, m)) in attempts.into_iter().enumerate() {
        let response = push_ok(kit, i, token, &fresh_id(), vec![m])?;
        ensure!(rejected(&response)? == "conflict", "attempt {i}: {response:?}");
        answers.insert(response.rejected[0].message.clone());
    }
    ensure!(answers.len() == 1, "different texts tell the reasons apart: {answers:?}");
    ensure!(answers.contains("this id cannot be used; make a new one"), "the text is {answers:?}");
    Ok(())
}

fn not_member(kit: &Kit) -> Outcome {
    let (_, alice) = kit.session("alice")?;
    let (_, eve) = kit.session("eve")?;
    let thread = new_thread(kit, &alice, &[])?;
    let message = fresh_id();
    acked(&push_ok(kit, 0, &alice, &fresh_id(), vec![send(1, &thread, &message, "secret")])?)?;
    let nowhere = fresh_id();
    let mut texts = BTreeSet::new();
    for (i, m) in [
        send(1, &thread, &fresh_id(), "in"),
        send(1, &nowhere, &fresh_id(), "in"),
        edit(1, &thread, &message, "changed"),
        edit(1, &nowhere, &message, "changed"),
        delete(1, &thread, &message),
        delete(1, &nowhere, &fresh_id()),
    ]
    .into_iter()
    .enumerate()
    {
        let response = push_ok(kit, i, &eve, &fresh_id(), vec![m])?;
        ensure!(rejected(&response)? == "not_member", "attempt {i}: {response:?}");
        texts.insert(response.rejected[0].message.clone());
    }
    ensure!(texts.len() == 1, "an existing and a missing thread answered differently: {texts:?}");
    let body = messages(&pull_all(kit, 1, &alice, 0, 1000, Some(&thread))?);
    ensure!(
        body.len() == 1 && body[0].1["body"] == envelope(b"secret"),
        "a refused mutation changed the message"
    );
    Ok(())
}

fn send_repeat(kit: &Kit) -> Outcome {
    let (_, token) = kit.session("alice")?;
    let thread = new_thread(kit, &token, &[])?;
    let message = fresh_id();
    let first = push_ok(kit, 0, &token, &fresh_id(), vec![send(1, &thread, &message, "hi")])?;
    let again = push_ok(kit, 1, &token, &fresh_id(), vec![send(7, &thread, &message, "hi")])?;
    ensure!(again.acks.len() == 1, "{again:?}");
    ensure!(
        (again.acks[0].seq, again.acks[0].server_ts) == (first.acks[0].seq, first.acks[0].server_ts),
        "a repeated send was acked {:?}, not like the original {:?}",
        again.acks[0],
        first.acks[0]
    );
    ensure!(messages(&pull_all(kit, 0, &token, 0, 1000, Some(&thread))?).len() == 1, "stored twice");
    Ok(())
}

fn edits(kit: &Kit) -> Outcome {
    let (_, alice) = kit.session("alice")?;
    let (_, bob) = kit.session("bob")?;
    let bob_id = kit.user("bob");
    let thread = new_thread(kit, &alice, &[&bob_id])?;
    let other = new_thread(kit, &alice, &[])?;
    let message = fresh_id();
    let sent = acked(&push_ok(kit, 0, &alice, &fresh_id(), vec![send(1, &thread, &message, "v1")])?)?;
    let code = |token: &str, m: Value| -> Result<String, String> {
        rejected(&push_ok(kit, 1, token, &fresh_id(), vec![m])?)
    };
    ensure!(code(&alice, edit(1, &thread, &fresh_id(), "x"))? == "not_found", "edit of a missing message");
    ensure!(code(&alice, edit(1, &other, &message, "x"))? == "not_found", "edit naming another thread");
    ensure!(code(&bob, edit(1, &thread, &message, "x"))? == "not_sender", "edit by another member");
    ensure!(code(&bob, delete(1, &thread, &message))? == "not_sender", "delete by another member");
    let edited = acked(&push_ok(kit, 0, &alice, &fresh_id(), vec![edit(1, &thread, &message, "v2")])?)?;
    ensure!(edited > sent, "the edit's seq {edited} is not after the send's {sent}");
    let all = messages(&pull_all(kit, 1, &bob, 0, 1000, Some(&thread))?);
    ensure!(all.len() == 1, "an edited message appears {} times", all.len());
    let (seq, m) = &all[0];
    ensure!(*seq == edited, "the entry is at {seq}, not the edit's seq {edited}");
    ensure!(m["seq"] == sent, "the message's own seq must stay its send's");
    ensure!(m["body"] == envelope(b"v2") && m["edited"] == true, "not the new state: {m}");
    // A puller past the send sees the edit.
    let after = messages(&pull_all(kit, 0, &bob, sent, 1000, None)?);
    ensure!(after.iter().any(|(s, _)| *s == edited), "a pull after the send misses the edit");
    Ok(())
}

fn delete_wins(kit: &Kit) -> Outcome {
    let (_, alice) = kit.session("alice")?;
    let thread = new_thread(kit, &alice, &[])?;
    let message = fresh_id();
    let device = fresh_id();
    push_ok(kit, 0, &alice, &device, vec![send(1, &thread, &message, "soon gone")])?;
    let deleted = acked(&push_ok(kit, 1, &alice, &device, vec![delete(2, &thread, &message)])?)?;
    let after = push_ok(
        kit,
        0,
        &alice,
        &device,
        vec![edit(3, &thread, &message, "back"), delete(4, &thread, &message)],
    )?;
    ensure!(after.rejected.len() == 1 && after.rejected[0].code == "edit_deleted", "{after:?}");
    ensure!(
        after.acks.len() == 1 && after.acks[0].seq == deleted,
        "a second delete is acked with the delete's seq: {after:?}"
    );
    let all = messages(&pull_all(kit, 1, &alice, 0, 1000, Some(&thread))?);
    ensure!(all.len() == 1, "the tombstone appears {} times", all.len());
    let (seq, m) = &all[0];
    ensure!(
        *seq == deleted && m["deleted"] == true && m["body"].is_null(),
        "not a tombstone at {deleted}: {m}"
    );
    Ok(())
}

fn oversized_envelope(kit: &Kit) -> Outcome {
    let (_, token) = kit.session("alice")?;
    let thread = new_thread(kit, &token, &[])?;
    let (big, small) = (fresh_id(), fresh_id());
    let huge = vec![1u8; 96 * 1024 + 1];
    let m = json!({"mutation_id": 1, "kind": "send", "thread_id": thread, "message_id": big,
                   "body": envelope(&huge), "client_ts": 1});
    let response = push_ok(kit, 0, &token, &fresh_id(), vec![m, send(2, &thread, &small, "fits")])?;
    ensure!(
        response.rejected.len() == 1
            && response.rejected[0].code == "too_large"
            && response.rejected[0].mutation_id == 1,
        "{response:?}"
    );
    ensure!(response.acks.len() == 1 && response.acks[0].mutation_id == 2, "{response:?}");
    let stored = messages(&pull_all(kit, 1, &token, 0, 1000, Some(&thread))?);
    ensure!(stored.len() == 1 && stored[0].1["id"] == small, "{stored:?}");
    // Exactly at the limit fits.
    let fits = json!({"mutation_id": 1, "kind": "send", "thread_id": thread, "message_id": fresh_id(),
                      "body": envelope(&huge[1..]), "client_ts": 1});
    acked(&push_ok(kit, 1, &token, &fresh_id(), vec![fits])?)?;
    Ok(())
}

fn invalid_members(kit: &Kit) -> Outcome {
    let (_, token) = kit.session("alice")?;
    let crowd: Vec<String> = (0..256).map(|i| kit.user(&format!("m{i}"))).collect();
    let crowd: Vec<&str> = crowd.iter().map(String::as_str).collect();
    let too_many = push_ok(kit, 0, &token, &fresh_id(), vec![create(1, &fresh_id(), &crowd)])?;
    ensure!(rejected(&too_many)? == "invalid", "256 members plus the creator: {too_many:?}");
    let exactly = push_ok(kit, 1, &token, &fresh_id(), vec![create(1, &fresh_id(), &crowd[..255])])?;
    acked(&exactly)?;
    // A malformed user id is a malformed request (the id type is checked
    // when the body is read), like a malformed thread id.
    let device = fresh_id();
    for bad in ["", "a\u{0}b", "x\u{202e}y", &"u".repeat(129)] {
        push(kit, 0, &token, &device, vec![create(1, &fresh_id(), &[bad])])
            .expect_error(400, "bad_request")?;
    }
    ensure!(push_ok(kit, 1, &token, &device, vec![])?.last_mutation_id == 0, "a refused push moved the mark");
    Ok(())
}

// --- 5 --------------------------------------------------------------------

fn paging(kit: &Kit) -> Outcome {
    let (_, token) = kit.session("alice")?;
    kit.get(0, "/v1/pull?limit=0", Some(&token)).expect_error(400, "bad_request")?;
    kit.get(1, "/v1/pull?limit=lots", Some(&token)).expect_error(400, "bad_request")?;
    kit.get(0, "/v1/pull?cursor=-1", Some(&token)).expect_error(400, "bad_request")?;
    let thread = new_thread(kit, &token, &[])?;
    let batch: Vec<Value> = (1..=12).map(|i| send(i, &thread, &fresh_id(), &format!("m{i}"))).collect();
    push_ok(kit, 0, &token, &fresh_id(), batch)?;
    let mut cursor = 0;
    let mut sizes = Vec::new();
    let mut seqs = Vec::new();
    loop {
        let page = pull(kit, sizes.len(), &token, &format!("thread={thread}&cursor={cursor}&limit=5"))?;
        sizes.push(page.changes.len());
        seqs.extend(page.changes.iter().map(|c| c.seq()));
        let expected = page.changes.last().map_or(cursor, |c| c.seq());
        ensure!(page.cursor == expected, "cursor {} not the last seq {expected}", page.cursor);
        cursor = page.cursor;
        if !page.has_more {
            break;
        }
        ensure!(sizes.len() < 10, "paging does not end");
    }
    ensure!(sizes == [5, 5, 3], "pages of {sizes:?} for 13 changes at limit 5");
    ensure!(seqs.windows(2).all(|w| w[0] < w[1]), "not in increasing seq");
    // Past the end: no changes, the cursor stays.
    let end = pull(kit, 1, &token, &format!("thread={thread}&cursor={cursor}"))?;
    ensure!(end.changes.is_empty() && end.cursor == cursor && !end.has_more, "{end:?}");
    // Defaults: cursor 0, and a limit over 1000 is accepted (lowered).
    let all = pull(kit, 0, &token, &format!("thread={thread}&limit=5000"))?;
    ensure!(all.changes.len() == 13 && !all.has_more, "{} changes", all.changes.len());
    Ok(())
}

fn one_entry_per_entity(kit: &Kit) -> Outcome {
    let (_, token) = kit.session("alice")?;
    let before = feed_end(kit, &token)?;
    let thread = new_thread(kit, &token, &[])?;
    let device = fresh_id();
    let (a, b) = (fresh_id(), fresh_id());
    let r = push_ok(
        kit,
        1,
        &token,
        &device,
        vec![
            send(1, &thread, &a, "a"),
            send(2, &thread, &b, "b"),
            edit(3, &thread, &a, "a2"),
            edit(4, &thread, &a, "a3"),
        ],
    )?;
    let seqs: Vec<u64> = r.acks.iter().map(|a| a.seq).collect();
    ensure!(
        seqs.windows(2).all(|w| w[0] < w[1]) && seqs[0] > before,
        "acks not strictly increasing: {seqs:?}"
    );
    let all = messages(&pull_all(kit, 0, &token, before, 1000, None)?);
    ensure!(all.len() == 2, "{} entries for two messages", all.len());
    ensure!(
        all[0].1["id"] == b && all[1].1["id"] == a && all[1].0 == seqs[3],
        "entries not at the latest change: {all:?}"
    );
    ensure!(all[1].1["body"] == envelope(b"a3"), "not the current state");
    Ok(())
}

fn pull_membership(kit: &Kit) -> Outcome {
    let (_, alice) = kit.session("alice")?;
    let (_, bob) = kit.session("bob")?;
    let bob_id = kit.user("bob");
    let private = new_thread(kit, &alice, &[])?;
    let shared = new_thread(kit, &alice, &[&bob_id])?;
    push_ok(
        kit,
        0,
        &alice,
        &fresh_id(),
        vec![send(1, &private, &fresh_id(), "p"), send(2, &shared, &fresh_id(), "s")],
    )?;
    let seen = pull_all(kit, 1, &bob, 0, 1000, None)?;
    ensure!(thread_changes(&seen, &private).is_empty(), "bob sees a thread he is not in");
    ensure!(
        !messages(&seen).iter().any(|(_, m)| m["thread_id"] == private),
        "bob sees a message of a thread he is not in"
    );
    ensure!(
        thread_changes(&seen, &shared).len() == 1 && messages(&seen).len() == 1,
        "bob misses his thread: {seen:?}"
    );
    Ok(())
}

fn thread_pull_404(kit: &Kit) -> Outcome {
    let (_, alice) = kit.session("alice")?;
    let (_, eve) = kit.session("eve")?;
    let thread = new_thread(kit, &alice, &[])?;
    let existing = kit.get(0, &format!("/v1/pull?thread={thread}"), Some(&eve));
    let missing = kit.get(1, &format!("/v1/pull?thread={}", fresh_id()), Some(&eve));
    let malformed = kit.get(0, "/v1/pull?thread=nope", Some(&eve));
    existing.expect_error(404, "not_found")?;
    missing.expect_error(404, "not_found")?;
    malformed.expect_error(404, "not_found")?;
    ensure!(existing.body == missing.body, "the 404s differ: {} vs {}", existing.body, missing.body);
    Ok(())
}

fn page_bytes(kit: &Kit) -> Outcome {
    // The default page limit is 4 MiB of JSON: 48 envelopes of 95 KiB
    // (about 127 KiB each as base64) are over it.
    let (_, token) = kit.session("alice")?;
    let thread = new_thread(kit, &token, &[])?;
    let device = fresh_id();
    let big = vec![9u8; 95 * 1024];
    for i in 0..24u64 {
        let batch = (1..=2)
            .map(|j| json!({"mutation_id": i * 2 + j, "kind": "send", "thread_id": thread, "message_id": fresh_id(),
                            "body": envelope(&big), "client_ts": 1}))
            .collect();
        let response = push_ok(kit, i as usize, &token, &device, batch)?;
        ensure!(response.acks.len() == 2, "{response:?}");
    }
    let reply = kit.get(0, &format!("/v1/pull?thread={thread}&limit=1000"), Some(&token));
    let page: PullResponse = reply.ok()?;
    ensure!(page.has_more, "49 changes of ~127 KiB in one page: no byte limit");
    ensure!(reply.body.len() <= 4 * 1024 * 1024 + 64 * 1024, "a page of {} bytes", reply.body.len());
    ensure!(page.changes.len() >= 30, "only {} changes under 4 MiB", page.changes.len());
    let rest = pull_all(kit, 1, &token, page.cursor, 1000, Some(&thread))?;
    ensure!(page.changes.len() + rest.len() == 49, "{} + {} changes, not 49", page.changes.len(), rest.len());
    Ok(())
}

fn joining(kit: &Kit) -> Outcome {
    let (_, alice) = kit.session("alice")?;
    let (bob_id, bob) = kit.session("bob")?;
    let thread = new_thread(kit, &alice, &[])?;
    push_ok(kit, 0, &alice, &fresh_id(), vec![send(1, &thread, &fresh_id(), "before")])?;
    let bob_cursor = feed_end(kit, &bob)?;
    let invite: InviteResponse =
        kit.post(1, &format!("/v1/threads/{thread}/invites"), Some(&alice), &json!({})).ok()?;
    let accepted: Value =
        kit.post(0, &format!("/v1/invites/{}/accept", invite.token), Some(&bob), &json!({})).ok()?;
    ensure!(accepted["thread_id"] == thread, "{accepted}");
    let news = pull_all(kit, 1, &bob, bob_cursor, 1000, None)?;
    let change = thread_changes(&news, &thread);
    ensure!(change.len() == 1, "no thread change after joining: {news:?}");
    let members = change[0]["thread"]["members"].as_array().cloned().unwrap_or_default();
    ensure!(members.contains(&json!(bob_id)), "the thread change lacks the joiner");
    ensure!(change[0]["seq"].as_u64() > Some(bob_cursor), "the join is not at a fresh seq");
    let history = messages(&pull_all(kit, 0, &bob, 0, 1000, Some(&thread))?);
    ensure!(history.len() == 1, "the catch-up pull shows {} messages", history.len());
    Ok(())
}

// --- 7 --------------------------------------------------------------------

fn invites(kit: &Kit) -> Outcome {
    let (_, alice) = kit.session("alice")?;
    let (_, bob) = kit.session("bob")?;
    let (_, eve) = kit.session("eve")?;
    let thread = new_thread(kit, &alice, &[])?;
    let not_yours = kit.post(0, &format!("/v1/threads/{thread}/invites"), Some(&eve), &json!({}));
    let nowhere = kit.post(1, &format!("/v1/threads/{}/invites", fresh_id()), Some(&eve), &json!({}));
    not_yours.expect_error(404, "not_found")?;
    nowhere.expect_error(404, "not_found")?;
    ensure!(not_yours.body == nowhere.body, "the 404s differ");
    let invite: InviteResponse =
        kit.post(0, &format!("/v1/threads/{thread}/invites"), Some(&alice), &json!({})).ok()?;
    ensure!(invite.expires_at > now_ms(), "an invite that has expired already");
    kit.post(1, "/v1/invites/garbage/accept", Some(&bob), &json!({})).expect_error(403, "invite_invalid")?;
    let mut forged = invite.token.clone();
    forged.push('x');
    kit.post(0, &format!("/v1/invites/{forged}/accept"), Some(&bob), &json!({}))
        .expect_error(403, "invite_invalid")?;
    kit.post(1, &format!("/v1/invites/{}/accept", invite.token), None, &json!({}))
        .expect_error(401, "unauthorized")?;
    let _: Value =
        kit.post(0, &format!("/v1/invites/{}/accept", invite.token), Some(&bob), &json!({})).ok()?;
    let end = feed_end(kit, &bob)?;
    let _: Value =
        kit.post(1, &format!("/v1/invites/{}/accept", invite.token), Some(&bob), &json!({})).ok()?;
    ensure!(pull_all(kit, 0, &bob, end, 1000, None)?.is_empty(), "accepting again made a change");
    Ok(())
}

fn join_mutation(kit: &Kit) -> Outcome {
    let (_, alice) = kit.session("alice")?;
    let (_, bob) = kit.session("bob")?;
    let thread = new_thread(kit, &alice, &[])?;
    let other = new_thread(kit, &alice, &[])?;
    let invite: InviteResponse =
        kit.post(0, &format!("/v1/threads/{thread}/invites"), Some(&alice), &json!({})).ok()?;
    let device = fresh_id();
    let wrong =
        push_ok(kit, 1, &bob, &device, vec![join(1, &other, &invite.token), join(2, &thread, "i1.bogus")])?;
    ensure!(
        wrong.rejected.len() == 2 && wrong.rejected.iter().all(|r| r.code == "invite_invalid"),
        "{wrong:?}"
    );
    let joined = acked(&push_ok(kit, 0, &bob, &device, vec![join(3, &thread, &invite.token)])?)?;
    let again = acked(&push_ok(kit, 1, &bob, &fresh_id(), vec![join(1, &thread, &invite.token)])?)?;
    ensure!(again == joined, "a member's join is acked with the thread's latest seq {joined}, got {again}");
    acked(&push_ok(kit, 0, &bob, &device, vec![send(4, &thread, &fresh_id(), "in")])?)?;
    Ok(())
}

fn thread_full(kit: &Kit) -> Outcome {
    let (_, alice) = kit.session("alice")?;
    let (_, late) = kit.session("late")?;
    let crowd: Vec<String> = (0..255).map(|i| kit.user(&format!("f{i}"))).collect();
    let crowd: Vec<&str> = crowd.iter().map(String::as_str).collect();
    let thread = new_thread(kit, &alice, &crowd)?;
    let invite: InviteResponse =
        kit.post(0, &format!("/v1/threads/{thread}/invites"), Some(&alice), &json!({})).ok()?;
    kit.post(1, &format!("/v1/invites/{}/accept", invite.token), Some(&late), &json!({}))
        .expect_error(403, "thread_full")?;
    let response = push_ok(kit, 0, &late, &fresh_id(), vec![join(1, &thread, &invite.token)])?;
    ensure!(rejected(&response)? == "thread_full", "{response:?}");
    Ok(())
}

fn envelopes_byte_for_byte(kit: &Kit) -> Outcome {
    let (_, token) = kit.session("alice")?;
    let thread = fresh_id();
    let mut bytes: Vec<u8> = (0..=255u8).collect();
    bytes.extend((0..1000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let mut c = create(1, &thread, &[]);
    c["title"] = envelope(&bytes[..77]);
    let message = fresh_id();
    let m = json!({"mutation_id": 2, "kind": "send", "thread_id": thread, "message_id": message,
                   "body": envelope(&bytes), "client_ts": 1});
    let empty = json!({"mutation_id": 3, "kind": "send", "thread_id": thread, "message_id": fresh_id(),
                       "body": envelope(&[]), "client_ts": 1});
    push_ok(kit, 0, &token, &fresh_id(), vec![c, m, empty])?;
    let all = pull_all(kit, 1, &token, 0, 1000, Some(&thread))?;
    let title = thread_changes(&all, &thread).first().ok_or("no thread change")?["thread"]["title"].clone();
    ensure!(title == envelope(&bytes[..77]), "the title changed");
    let stored = messages(&all);
    let body = &stored.iter().find(|(_, m)| m["id"] == message).ok_or("no message")?.1["body"];
    ensure!(*body == envelope(&bytes), "the body changed");
    ensure!(stored.iter().any(|(_, m)| m["body"] == envelope(&[])), "the empty envelope changed");
    Ok(())
}
