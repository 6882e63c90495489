// Workload 4, ingest: 500 pulled messages (~1 KB envelopes) in one call,
// from the pull response's JSON text to durable. dovecote: the engine's
// apply-pulled-page step as sync runs it (parse, merge against the outbox,
// one store write with the cursor), through a second client on a database
// made by ChatClient.open. Dexie 4: JSON.parse, map to records, bulkPut.
// Raw IndexedDB: JSON.parse, map, 500 puts in one readwrite transaction.
// Fresh databases each round; contenders take turns.
import init, { BenchClient, ChatClient, benchPullPage } from "../pkg/dovecote.js";
import { Dexie } from "/node_modules/dexie/dist/dexie.mjs";
import { complete, deleteDb, dexieSchema, freshName, openRaw, profileMark, rotate, settle, summarize } from "../lib.mjs";

const ROUNDS = 20;
const COUNT = 500;
const BODY = 970; // plaintext bytes; the envelope is ~1 KB

/** What a JS app would store for a pulled message. */
const toRecords = (json) => JSON.parse(json).changes.map(({ message: m }) => ({
  id: m.id, threadId: m.thread_id, sender: m.sender, body: m.body, seq: m.seq, clientTs: m.client_ts,
  serverTs: m.server_ts, edited: m.edited, deleted: m.deleted, status: { state: "sent" }, order: m.seq,
}));

const contenders = {
  async dovecote(json) {
    const name = freshName("ingest-dc");
    // ChatClient.open makes the database as an app's would (device key, device record).
    (await ChatClient.open({ dbName: name, userId: "alice" })).close();
    const client = await BenchClient.open(name, "alice");
    const t0 = performance.now();
    const applied = await client.applyPull(json);
    const t1 = performance.now();
    if (applied !== COUNT) throw new Error(`applied ${applied} changes`);
    client.close();
    client.free();
    return [t1 - t0, name];
  },
  async dexie(json) {
    const name = freshName("ingest-dx");
    const db = dexieSchema(new Dexie(name));
    await db.open();
    const t0 = performance.now();
    await db.messages.bulkPut(toRecords(json));
    const t1 = performance.now();
    db.close();
    return [t1 - t0, name];
  },
  async raw(json) {
    const name = freshName("ingest-raw");
    const db = await openRaw(name);
    const t0 = performance.now();
    const tx = db.transaction("messages", "readwrite");
    const store = tx.objectStore("messages");
    for (const r of toRecords(json)) store.put(r);
    await complete(tx);
    const t1 = performance.now();
    db.close();
    return [t1 - t0, name];
  },
};

export async function run() {
  await init();
  const json = benchPullPage(COUNT, "bob", BODY);
  const samples = { dovecote: [], dexie: [], raw: [] };
  const splits = [];
  for (let round = 0; round < ROUNDS + 1; round++) {
    for (const name of rotate(Object.keys(contenders), round)) {
      if (round > 0) await profileMark("start");
      const [ms, dbName] = await contenders[name](json);
      if (round > 0) await profileMark("stop");
      if (round > 0) samples[name].push(ms); // round 0 warms up
      await settle();
      await deleteDb(dbName);
    }
    // Where dovecote's time goes, on one more fresh database, outside the timed turns.
    if (round > 0) {
      const name = freshName("ingest-split");
      (await ChatClient.open({ dbName: name, userId: "alice" })).close();
      const client = await BenchClient.open(name, "alice");
      const t0 = performance.now();
      const [parse, apply] = await client.applyPullSplit(json);
      splits.push([performance.now() - t0, parse, apply]);
      client.close();
      client.free();
      await settle();
      await deleteDb(name);
    }
  }
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  return [{
    id: "4", title: `Ingest ${COUNT} pulled messages (~1 KB envelopes) in one call, JSON text to durable`,
    ...summarize(samples, "ms"), goal: [{ against: "raw", max: 1.3 }, { against: "dexie", max: 0.8 }],
    details: {
      pullResponseBytes: json.length,
      dovecoteSplitMedianMs: {
        "JSON text into wasm": median(splits.map((s) => s[0] - s[1] - s[2])),
        "serde_json parse": median(splits.map((s) => s[1])),
        "Client::apply_page (outbox read, merge, records to JS, one write)": median(splits.map((s) => s[2])),
      },
    },
  }];
}
