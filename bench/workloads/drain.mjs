// Sync workload 9, drain: 1,000 messages queued while offline reach the
// local reference server. dovecote: a client without a server creates a
// thread and sends 1,000 messages (~100 B), each durable in its outbox, and
// closes; the server starts (new, empty); the client is opened again on the
// same database, now with `serverUrl` (a reload once the network is back),
// and its background loop signs in and drains the outbox. Timed from the
// first `/v1/push` request leaving to the 1,000th message's status turning
// `sent` (the ack applied to IndexedDB and told to the app's `onEvent`
// listener, as a UI showing "sending…" has). Pushes are counted from the
// page's resource timing and checked against the server's request log.
// Reference: a raw `fetch` loop posting the very same push bodies (captured
// from dovecote's warm-up drain), one in flight at a time like the client,
// to another new server, each answer read and parsed: the network and the
// server's share, without the client's store work. New databases (browser
// and server) every turn; the two take turns.
import init, { ChatClient } from "../pkg/dovecote.js";
import { deleteDb, freshName, profileMark, requests, resetRequests, rotate, settle, signIn, stats, summarize, syncServer, text } from "../lib.mjs";

const ROUNDS = 6;
const COUNT = 1000;
const BODY = 100;

/** A client on a new database queues a thread and COUNT messages with no server; returns the database name. */
async function queueOffline() {
  const dbName = freshName("drain-dc");
  const client = await ChatClient.open({ dbName, userId: "alice" });
  const thread = await client.createThread({ title: "Drain" });
  for (let i = 0; i < COUNT; i++) await client.send(thread.id, text(BODY, i));
  const queued = await client.outbox();
  client.close();
  if (queued.length !== COUNT + 1 || queued.some((m) => m.state !== "queued")) throw new Error(`outbox holds ${queued.length} rows, expected ${COUNT + 1} queued`);
  return dbName;
}

/** Drains a queued database into a new server; `capture` collects the push bodies. */
async function dovecote(capture) {
  const dbName = await queueOffline();
  const server = await syncServer.start();
  const realFetch = globalThis.fetch;
  if (capture) {
    // Warm-up only: the timed turns run on the untouched fetch.
    globalThis.fetch = (url, init) => {
      if (String(url).endsWith("/v1/push")) capture.push(init.body);
      return realFetch(url, init);
    };
  }
  resetRequests();
  let sent = 0;
  let ackedAt = 0;
  let idleAt = 0;
  let client;
  let stopEvents = () => {};
  try {
    await profileMark("start");
    const drained = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`drain timed out with ${sent} of ${COUNT} sent`)), 120_000);
      ChatClient.open({ dbName, userId: "alice", serverUrl: server.url, devSignIn: true }).then((c) => {
        client = c;
        stopEvents = client.onEvent((event) => {
          if (event.type === "status" && event.message.status.state === "sent") {
            sent += 1;
            if (sent === COUNT) ackedAt = performance.now();
          } else if (event.type === "status" && event.message.status.state === "failed") {
            reject(new Error(`a message failed: ${JSON.stringify(event.message.status)}`));
          } else if (event.type === "sync" && event.state === "idle" && ackedAt && !idleAt) {
            idleAt = performance.now();
            clearTimeout(timer);
            resolve();
          }
        });
      }, reject);
    });
    await drained;
    await profileMark("stop");
  } finally {
    globalThis.fetch = realFetch;
  }
  stopEvents();
  const outbox = await client.outbox();
  client.close();
  const pushes = requests("/v1/push");
  const log = await syncServer.stop(server.id);
  if (outbox.length !== 0) throw new Error(`${outbox.length} rows left in the outbox`);
  const served = log["POST /v1/push 200"]?.count ?? 0;
  if (served !== pushes.length) throw new Error(`the page made ${pushes.length} pushes, the server answered ${served}`);
  await settle();
  await deleteDb(dbName);
  const first = pushes[0].startTime;
  const last = pushes[pushes.length - 1];
  return {
    ms: ackedAt - first,
    // Where the time goes: requests out (network + server), the client's
    // work between an answer and the next request (apply the acks, prepare
    // the next batch), and after the last answer until its acks are applied.
    inFlightMs: pushes.reduce((a, e) => a + (e.responseEnd - e.startTime), 0),
    betweenMs: pushes.slice(1).reduce((a, e, i) => a + (e.startTime - pushes[i].responseEnd), 0),
    lastAckMs: ackedAt - last.responseEnd,
    pushes: pushes.length,
    lastAnswerMs: last.responseEnd - first,
    roundMs: idleAt - first,
    serverPushMs: log["POST /v1/push 200"].handlerMs,
    preflights: Object.entries(log).filter(([k]) => k.startsWith("OPTIONS")).reduce((a, [, v]) => a + v.count, 0),
  };
}

/** Posts `bodies` in order to a new server with plain fetch, one at a time. */
async function raw(bodies) {
  const server = await syncServer.start();
  // Signing in first opens the connection, as the client's sign-in does.
  const token = await signIn(server.url, "alice");
  await profileMark("start");
  let acks = 0;
  const t0 = performance.now();
  for (const body of bodies) {
    const response = await fetch(`${server.url}/v1/push`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body,
    });
    const answer = JSON.parse(await response.text());
    if (!response.ok) throw new Error(`push refused: ${response.status}`);
    acks += answer.acks.length;
  }
  const t1 = performance.now();
  await profileMark("stop");
  const log = await syncServer.stop(server.id);
  if (acks !== COUNT + 1) throw new Error(`raw pushes got ${acks} acks`);
  return { ms: t1 - t0, serverPushMs: log["POST /v1/push 200"].handlerMs };
}

export async function run() {
  if (!syncServer.available) return { skipped: "the runner could not build dovecote-server" };
  await init();
  const bodies = [];
  const samples = { dovecote: [], "raw fetch loop": [] };
  const extra = { pushes: [], lastAnswerMs: [], roundMs: [], serverPushMs: [], rawServerPushMs: [], preflights: [], inFlightMs: [], betweenMs: [], lastAckMs: [] };
  for (let round = 0; round < ROUNDS + 1; round++) {
    // Round 0 warms up, dovecote first: its pushes are the bodies the raw loop posts.
    const order = round === 0 ? ["dovecote", "raw"] : rotate(["dovecote", "raw"], round);
    for (const who of order) {
      if (who === "dovecote") {
        const r = await dovecote(round === 0 ? bodies : null);
        if (round === 0) continue;
        samples.dovecote.push(r.ms);
        for (const k of Object.keys(extra).filter((k) => k !== "rawServerPushMs")) extra[k].push(r[k]);
      } else {
        const r = await raw(bodies);
        if (round === 0) continue;
        samples["raw fetch loop"].push(r.ms);
        extra.rawServerPushMs.push(r.serverPushMs);
      }
    }
  }
  const median = (xs) => stats(xs).median;
  const rate = samples.dovecote.map((ms) => COUNT / (ms / 1000));
  const pushes = median(extra.pushes);
  return [
    {
      id: "9a", title: `Drain ${COUNT} messages (~${BODY} B) queued offline to the local server: first push to last ack applied`,
      ...summarize(samples, "ms"),
      details: {
        messagesPerSecondMedian: Math.round(median(rate)),
        pushesPerMessage: pushes / COUNT,
        pushesPerDrain: pushes,
        mutationsPerDrain: COUNT + 1,
        pushBodiesBytes: bodies.map((b) => b.length),
        dovecoteMedianMs: {
          "first push to last answer in": median(extra.lastAnswerMs),
          "pushes in flight (network + server), summed": median(extra.inFlightMs),
          "client between an answer and the next push (apply acks, next batch), summed": median(extra.betweenMs),
          "last answer to its acks applied": median(extra.lastAckMs),
          "first push to last ack applied (timed)": median(samples.dovecote),
          "first push to round done (pull of own messages included)": median(extra.roundMs),
          "server push handlers, summed": median(extra.serverPushMs),
        },
        rawServerPushHandlersMedianMs: median(extra.rawServerPushMs),
        corsPreflightsPerDrain: median(extra.preflights),
        server: "dovecote-server, cargo release profile, new SQLite file per turn (WAL, synchronous=FULL), 127.0.0.1, page on another port (CORS)",
      },
    },
    {
      id: "9b", title: `Drain throughput (${pushes} pushes for ${COUNT} messages, ${(pushes / COUNT).toFixed(3)} pushes per message)`,
      unit: "messages/s", contenders: { dovecote: stats(rate) }, ratios: {},
    },
  ];
}
