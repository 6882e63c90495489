// Workload 3: 50 sends in a row, each durable before the next, against a
// Dexie put loop and a raw put loop (one readwrite transaction per put),
// on fresh databases each round; contenders take turns.
import init, { ChatClient } from "../pkg/dovecote.js";
import { Dexie } from "/node_modules/dexie/dist/dexie.mjs";
import { profileMark, deleteDb, dexieSchema, freshName, openRaw, pendingRecord, rawPut, rotate, settle, summarize, text } from "../lib.mjs";

const ROUNDS = 30;
const SENDS = 50;

const contenders = {
  async dovecote() {
    const name = freshName("burst-dc");
    const client = await ChatClient.open({ dbName: name, userId: "alice" });
    const thread = await client.createThread({ title: "Lunch" });
    const body = text(100);
    const t0 = performance.now();
    for (let i = 0; i < SENDS; i++) await client.send(thread.id, body);
    const t1 = performance.now();
    client.close();
    return [t1 - t0, name];
  },
  async dexie() {
    const name = freshName("burst-dx");
    const db = dexieSchema(new Dexie(name));
    await db.open();
    const records = Array.from({ length: SENDS }, (_, i) => pendingRecord("t1", 100, i));
    const t0 = performance.now();
    for (const r of records) await db.messages.put(r);
    const t1 = performance.now();
    db.close();
    return [t1 - t0, name];
  },
  async raw() {
    const name = freshName("burst-raw");
    const db = await openRaw(name);
    const records = Array.from({ length: SENDS }, (_, i) => pendingRecord("t1", 100, i));
    const t0 = performance.now();
    for (const r of records) await rawPut(db, r);
    const t1 = performance.now();
    db.close();
    return [t1 - t0, name];
  },
};

export async function run() {
  await init();
  const samples = { dovecote: [], dexie: [], raw: [] };
  await profileMark("start");
  for (let round = 0; round < ROUNDS + 1; round++) {
    for (const name of rotate(Object.keys(contenders), round)) {
      const [ms, dbName] = await contenders[name]();
      if (round > 0) samples[name].push(ms); // round 0 warms up
      await settle();
      await deleteDb(dbName);
    }
  }
  await profileMark("stop");
  return [{
    id: "3", title: `${SENDS} sends in a row, each durable before the next`, ...summarize(samples, "ms"),
    goal: { against: "dexie", max: 0.8 },
  }];
}
