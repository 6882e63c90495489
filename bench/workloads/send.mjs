// Workload 2, send latency: from calling send() to the local echo reaching
// a subscriber, and to the message being durable (its transaction
// complete, when send() resolves), against one raw IndexedDB put in its
// own readwrite transaction (the goal's reference), and, to show what the
// engine adds, the same two records a send stores (the message and an
// outbox row) in one raw transaction. They take turns one by one on fresh
// databases each round.
import init, { ChatClient } from "../pkg/dovecote.js";
import { profileMark, complete, deleteDb, freshName, openRaw, pendingRecord, rawPut, rotate, settle, summarize, text } from "../lib.mjs";

const ROUNDS = 10;
const PER_ROUND = 60;
const WARMUP = 10;

export async function run() {
  await init();
  const echo = [];
  const durable = [];
  const rawTimes = [];
  const raw2Times = [];
  let echoBeforeDurable = 0;
  for (let round = 0; round < ROUNDS + 1; round++) {
    const dcName = freshName("send-dc");
    const rawName = freshName("send-raw");
    const client = await ChatClient.open({ dbName: dcName, userId: "alice" });
    const thread = await client.createThread({ title: "Lunch" });
    let echoAt = 0;
    const stop = client.subscribe(thread.id, () => { if (!echoAt) echoAt = performance.now(); });
    const db = await openRaw(rawName, true);
    const body = text(100);
    await profileMark("start");
    for (let i = 0; i < PER_ROUND; i++) {
      const measure = round > 0 && i >= WARMUP; // round 0 warms up
      const dc = async () => {
        echoAt = 0;
        const t0 = performance.now();
        await client.send(thread.id, body);
        const t1 = performance.now();
        if (measure) {
          echo.push(echoAt - t0);
          durable.push(t1 - t0);
          if (echoAt && echoAt <= t1) echoBeforeDurable += 1;
        }
      };
      const rw = async () => {
        const record = pendingRecord(thread.id, 100, i);
        const t0 = performance.now();
        await rawPut(db, record);
        const t1 = performance.now();
        if (measure) rawTimes.push(t1 - t0);
      };
      // The same work as a send without the engine: the message and an
      // outbox row (key generated) in one transaction.
      const rw2 = async () => {
        const record = pendingRecord(thread.id, 100, i);
        const row = { kind: "send", threadId: thread.id, messageId: record.id, body: record.body, state: "queued", attempts: 0 };
        const t0 = performance.now();
        const tx = db.transaction(["messages", "outbox"], "readwrite");
        tx.objectStore("messages").put(record);
        tx.objectStore("outbox").add(row);
        await complete(tx);
        const t1 = performance.now();
        if (measure) raw2Times.push(t1 - t0);
      };
      for (const step of rotate([dc, rw, rw2], i)) await step();
    }
    await profileMark("stop");
    stop();
    client.close();
    db.close();
    await settle();
    await deleteDb(dcName);
    await deleteDb(rawName);
  }
  return [
    {
      id: "2a", title: "Send: call to local echo at the subscriber", unit: "ms",
      contenders: { dovecote: summarize({ dovecote: echo }, "ms").contenders.dovecote }, ratios: {},
      goal: { absoluteMax: 1000 / 60, what: "under one frame (16.7 ms), before any IndexedDB await" },
      details: { echoBeforeDurable: `${echoBeforeDurable} of ${echo.length}` },
    },
    {
      id: "2b", title: "Send: call to durable (transaction complete) vs one raw single-put transaction",
      ...summarize({ dovecote: durable, raw: rawTimes, "raw message + outbox row": raw2Times }, "ms"), goal: { against: "raw", max: 1.3 },
    },
  ];
}
