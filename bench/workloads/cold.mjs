// Workload 1, cold start: load the library, open a new database and store
// the first message. dovecote: import the glue, instantiate the wasm,
// ChatClient.open (device record, device key), createThread (thread key,
// wrapped) and send. Dexie 4: import, open (schema made), put. Raw
// IndexedDB: open (schema made), put. Each library is imported under a new
// URL each time, so each run gets a new module instance; the browser's
// in-memory code caches stay warm after the first (warm-up) run, as on a
// returning visit. The first, truly cold run of each is reported apart.
import { profileMark, deleteDb, freshName, openRaw, pendingRecord, rawPut, rotate, settle, summarize, text } from "../lib.mjs";

const ROUNDS = 30;
let loadCount = 0;

async function dovecote(split) {
  split = split.dovecote ?? [];
  const name = freshName("cold-dc");
  const t0 = performance.now();
  const sdk = await import(`../pkg/dovecote.js?load=${++loadCount}`);
  await sdk.default();
  const t1 = performance.now();
  const client = await sdk.ChatClient.open({ dbName: name, userId: "alice" });
  const t2 = performance.now();
  const thread = await client.createThread({ title: "Lunch" });
  const t3 = performance.now();
  await client.send(thread.id, text(100));
  const t4 = performance.now();
  client.close();
  split.push([t1 - t0, t2 - t1, t3 - t2, t4 - t3]);
  await deleteDb(name);
  return t4 - t0;
}

async function dexie(split) {
  const name = freshName("cold-dx");
  const t0 = performance.now();
  const { Dexie } = await import(`/node_modules/dexie/dist/dexie.mjs?load=${++loadCount}`);
  split.dexieImport?.push(performance.now() - t0);
  const db = new Dexie(name);
  db.version(1).stores({ messages: "id, [threadId+order]" });
  await db.open();
  await db.messages.put(pendingRecord("t1", 100, 1));
  const t1 = performance.now();
  db.close();
  await deleteDb(name);
  return t1 - t0;
}

async function raw() {
  const name = freshName("cold-raw");
  const t0 = performance.now();
  const db = await openRaw(name);
  await rawPut(db, pendingRecord("t1", 100, 1));
  const t1 = performance.now();
  db.close();
  await deleteDb(name);
  return t1 - t0;
}

export async function run() {
  const contenders = { dovecote, dexie, raw };
  const samples = { dovecote: [], dexie: [], raw: [] };
  const first = {};
  const split = { dovecote: [], dexieImport: [] };
  for (const [name, fn] of Object.entries(contenders)) first[name] = await fn({}); // warm-up: the truly cold run
  await profileMark("start");
  for (let round = 0; round < ROUNDS; round++) {
    for (const name of rotate(Object.keys(contenders), round)) {
      samples[name].push(await contenders[name](split));
      await settle();
    }
  }
  await profileMark("stop");
  const parts = ["import + init", "ChatClient.open", "createThread", "send"];
  const splitMedians = Object.fromEntries(parts.map((p, i) => [p, median(split.dovecote.map((s) => s[i]))]));
  return [{
    id: "1", title: "Cold start: load, open a new database, first message stored", ...summarize(samples, "ms"),
    goal: { against: "dexie", max: 1.2 },
    details: { firstRunMs: first, dovecoteSplitMedianMs: splitMedians, dexieImportMedianMs: median(split.dexieImport) },
  }];
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
