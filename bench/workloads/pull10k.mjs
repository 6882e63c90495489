// Sync workload 10, pull 10,000 messages into an empty client. Once per
// page: a new server, filled by Alice's device with a thread and 10,000
// messages (~100 B) in 100 pushes of the protocol's JSON (see seed()), and
// an invite (thread key + server invite token). Each round, a new user Bob-N on a new database
// imports the invite with no server (key stored, `join` queued), then opens
// with `serverUrl`, as after a reload: the background loop signs in and runs
// a round: pushes the join, pulls the main feed from cursor 0 (20 pages of
// 500), then, since the thread is new to the device, the thread's catch-up
// feed. Timed from the round's first request (the join push) to the round
// done (the `idle` sync event; every page and its cursor are durable by
// then), and, separately, to the end of the main feed (all 10,000 stored
// and durable: the catch-up's first pull leaves only after the main feed's
// last page is written).
// References, in the same page, taking turns:
// - raw: the very records dovecote stored (read back from a warm-up
//   database) put into a new database with dovecote's schema (same object
//   store and both indexes) in one readwrite transaction, until complete:
//   the goal is dovecote ≤ 1.5× this.
// - raw fetch + IndexedDB: what a JS app would do with the same protocol:
//   the 20 pulls of 500 in turn, each page JSON.parsed, mapped to the same
//   record shape and written with its cursor in one transaction.
import init, { ChatClient, benchInviteWithToken, benchSeedPushes, benchThreadInvite } from "../pkg/dovecote.js";
import { complete, deleteDb, freshName, profileMark, request, requests, resetRequests, rotate, settle, signIn, stats, summarize, syncServer, text } from "../lib.mjs";

const ROUNDS = 6;
const COUNT = 10_000;
const BODY = 100;
const PAGE = 500; // the engine's pull limit

/** Opens (or creates) a database with dovecote's schema for messages, plus a meta store. */
function openLikeDovecote(name) {
  const req = indexedDB.open(name, 1);
  req.onupgradeneeded = () => {
    const messages = req.result.createObjectStore("messages", { keyPath: "id" });
    messages.createIndex("by_thread_order", ["thread_id", "order", "id"]);
    messages.createIndex("by_thread_seq", ["thread_id", "seq"], { unique: false });
    req.result.createObjectStore("meta", { keyPath: "key" });
  };
  return request(req);
}

/** Every record of a store of an existing database. */
async function readAll(name, storeName) {
  const db = await request(indexedDB.open(name));
  const rows = await request(db.transaction(storeName, "readonly").objectStore(storeName).getAll());
  db.close();
  return rows;
}

/**
 * Alice's device fills the server: a thread and COUNT messages, posted as
 * the push requests her outbox would make (benchSeedPushes: same protocol
 * JSON, 100 mutations per push, envelopes sealed with the thread's key),
 * then a server invite; returns the invite code with its token, as
 * `exportThreadInvite` makes it, her token and the thread id.
 */
async function seed(url) {
  const bare = benchThreadInvite();
  const bodies = benchSeedPushes(bare, "alice", COUNT, BODY, 100);
  const threadId = JSON.parse(bodies[0]).mutations[0].thread_id;
  const token = await signIn(url, "alice");
  let acks = 0;
  for (const body of bodies) {
    const response = await fetch(`${url}/v1/push`, { method: "POST", headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" }, body });
    const answer = await response.json();
    if (!response.ok || answer.rejected.length) throw new Error(`seeding push refused: ${response.status} ${JSON.stringify(answer).slice(0, 200)}`);
    acks += answer.acks.length;
  }
  if (acks !== COUNT + 1) throw new Error(`seeding got ${acks} acks`);
  const response = await fetch(`${url}/v1/threads/${threadId}/invites`, { method: "POST", headers: { Authorization: `Bearer ${token}` } });
  if (!response.ok) throw new Error(`invite refused: ${response.status}`);
  const invite = benchInviteWithToken(bare, (await response.json()).token);
  return { invite, threadId, token };
}

let bobCounter = 0;
/** A new user on a new database joins by the invite and syncs once; the timings. */
async function dovecote(server, invite, threadId) {
  bobCounter += 1;
  const userId = `bob-${bobCounter}`;
  const dbName = freshName("pull-dc");
  let bob = await ChatClient.open({ dbName, userId });
  await bob.importThreadInvite(invite);
  bob.close();
  resetRequests();
  let idleAt = 0;
  let stopEvents = () => {};
  await profileMark("start");
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the pull round timed out")), 300_000);
    ChatClient.open({ dbName, userId, serverUrl: server.url, devSignIn: true }).then((c) => {
      bob = c;
      stopEvents = bob.onEvent((event) => {
        if (event.type !== "sync") return;
        if (event.state === "idle" && requests("/v1/pull").length > 0 && !idleAt) {
          idleAt = performance.now();
          clearTimeout(timer);
          resolve();
        } else if (event.state === "error" || event.state === "offline") {
          reject(new Error(`sync ${event.state}: ${JSON.stringify(event.error)}`));
        }
      });
    }, reject);
  });
  await profileMark("stop");
  stopEvents();
  bob.close();
  const start = requests("/v1/push")[0].startTime;
  const pulls = requests("/v1/pull");
  const catchup = pulls.filter((e) => e.name.includes("thread="));
  const main = pulls.filter((e) => !e.name.includes("thread="));
  const mainEnd = catchup[0]?.startTime ?? idleAt;
  const stored = (await readAll(dbName, "messages")).length;
  if (stored !== COUNT) throw new Error(`Bob stored ${stored} messages, expected ${COUNT}`);
  return {
    dbName,
    roundMs: idleAt - start,
    mainFeedMs: mainEnd - start,
    // The main feed's time: pulls in flight (network + server), and the
    // client's work from each answer to the next request (parse, merge,
    // write the page and its cursor), the last one up to mainEnd.
    mainInFlightMs: main.reduce((a, e) => a + (e.responseEnd - e.startTime), 0),
    mainClientMs: main.reduce((a, e, i) => a + ((main[i + 1]?.startTime ?? mainEnd) - e.responseEnd), 0),
    pulls: pulls.length,
    catchupPulls: catchup.length,
  };
}

/** The records dovecote stored, put in one transaction into a new database. */
async function raw(records) {
  const name = freshName("pull-raw");
  const db = await openLikeDovecote(name);
  await profileMark("start");
  const t0 = performance.now();
  const tx = db.transaction("messages", "readwrite");
  const store = tx.objectStore("messages");
  for (const r of records) store.put(r);
  await complete(tx);
  const t1 = performance.now();
  await profileMark("stop");
  db.close();
  await settle();
  await deleteDb(name);
  return t1 - t0;
}

/** A pulled message as dovecote stores it (`status` copied from a stored record). */
const toRecord = (m, status) => ({
  id: m.id, thread_id: m.thread_id, sender: m.sender, body: m.body, seq: m.seq, client_ts: m.client_ts,
  server_ts: m.server_ts, edited: m.edited, deleted: m.deleted, status, order: m.seq,
});

/** The same pages pulled with plain fetch, each written with its cursor in one transaction. */
async function rawFetch(url, token, threadId, status) {
  const name = freshName("pull-rawfetch");
  const db = await openLikeDovecote(name);
  let stored = 0;
  await profileMark("start");
  const t0 = performance.now();
  for (let cursor = 0, more = true; more;) {
    const response = await fetch(`${url}/v1/pull?cursor=${cursor}&limit=${PAGE}&thread=${threadId}`, { headers: { Authorization: `Bearer ${token}` } });
    if (!response.ok) throw new Error(`pull refused: ${response.status}`);
    const page = JSON.parse(await response.text());
    const tx = db.transaction(["messages", "meta"], "readwrite");
    const messages = tx.objectStore("messages");
    for (const change of page.changes) {
      if (change.type !== "message") continue;
      messages.put(toRecord(change.message, status));
      stored += 1;
    }
    tx.objectStore("meta").put({ key: "cursor", value: String(page.cursor) });
    await complete(tx);
    cursor = page.cursor;
    more = page.has_more;
  }
  const t1 = performance.now();
  await profileMark("stop");
  db.close();
  await settle();
  await deleteDb(name);
  if (stored !== COUNT) throw new Error(`the raw pull stored ${stored} messages`);
  return t1 - t0;
}

export async function run() {
  if (!syncServer.available) return { skipped: "the runner could not build dovecote-server" };
  await init();
  const server = await syncServer.start();
  try {
    const seedStart = performance.now();
    const { invite, threadId, token } = await seed(server.url);
    const seedMs = performance.now() - seedStart;

    // Warm-up: one dovecote pull, whose stored records the raw reference writes.
    const warm = await dovecote(server, invite, threadId);
    const records = await readAll(warm.dbName, "messages");
    const status = records[0].status;
    const sample = toRecord({ ...records[0] }, status);
    const keys = (o) => Object.keys(o).sort().join(",");
    if (keys(sample) !== keys(records[0])) throw new Error(`stored records have fields ${keys(records[0])}, the raw fetch maps ${keys(sample)}`);
    // The pulled bodies open with the invite's key: dovecote stored real messages.
    const check = await ChatClient.open({ dbName: warm.dbName, userId: `bob-${bobCounter}` });
    const newest = await check.messages(threadId, { limit: 50 });
    check.close();
    if (newest.length !== 50 || newest.some((m) => m.body !== text(BODY, m.seq - 2))) {
      throw new Error(`Bob's newest page does not read back: ${JSON.stringify(newest.slice(-1))}`);
    }
    await settle();
    await deleteDb(warm.dbName);
    await raw(records);
    await rawFetch(server.url, token, threadId, status);

    const samples = { dovecote: [], raw: [], "raw fetch + IndexedDB": [] };
    const mainFeed = [];
    const runs = [];
    for (let round = 0; round < ROUNDS; round++) {
      for (const who of rotate(["dovecote", "raw", "rawFetch"], round)) {
        if (who === "dovecote") {
          const r = await dovecote(server, invite, threadId);
          samples.dovecote.push(r.roundMs);
          mainFeed.push(r.mainFeedMs);
          runs.push(r);
          await settle();
          await deleteDb(r.dbName);
        } else if (who === "raw") {
          samples.raw.push(await raw(records));
        } else {
          samples["raw fetch + IndexedDB"].push(await rawFetch(server.url, token, threadId, status));
        }
      }
    }
    const log = await syncServer.log(server.id);
    const median = (xs) => stats(xs).median;
    const main = summarize({ dovecote: mainFeed, raw: samples.raw, "raw fetch + IndexedDB": samples["raw fetch + IndexedDB"] }, "ms");
    const storedBytes = records.reduce((a, r) => a + JSON.stringify(r).length, 0);
    return [
      {
        id: "10a", title: `Pull ${COUNT.toLocaleString("en")} messages (~${BODY} B) into an empty client: round start to all stored (durable), main feed`,
        ...main, goal: { against: "raw", max: 1.5 },
      },
      {
        id: "10b", title: `Pull ${COUNT.toLocaleString("en")} messages into an empty client: round start to round done (with the joined thread's catch-up feed)`,
        ...summarize(samples, "ms"), goal: { against: "raw", max: 1.5 },
        details: {
          mainFeedSplitMedianMs: {
            "pulls in flight (network + server), summed": median(runs.map((r) => r.mainInFlightMs)),
            "client from each answer to the next pull (parse, merge, write page + cursor), summed": median(runs.map((r) => r.mainClientMs)),
          },
          pullsPerRound: median(runs.map((r) => r.pulls)),
          catchupPullsPerRound: median(runs.map((r) => r.catchupPulls)),
          storedRecordsJsonBytes: storedBytes,
          seedMs: Math.round(seedMs),
          serverRequests: log,
          server: "dovecote-server, cargo release profile, one SQLite file for the page (WAL, synchronous=FULL), 127.0.0.1, page on another port (CORS; a preflight per new URL, cached 10 min: the rounds pull the same URLs, so timed rounds hardly preflight)",
        },
      },
    ];
  } finally {
    await syncServer.stop(server.id);
  }
}
