// Workload 5, open a thread: the newest 50 of 10,000 messages, decrypted and
// delivered to JS, oldest first. dovecote: client.messages(thread, {limit:
// 50}). Dexie 4: where('[threadId+order]').between(...).reverse().limit(50)
// then SubtleCrypto AES-GCM decrypt of each body (all at once). Raw
// IndexedDB: a reverse cursor on the same index, then the same decrypt.
// Each round fills three fresh databases with 10,000 sealed messages of
// ~120 bytes, then reads alternate between the contenders.
import init, { ChatClient, BenchClient, benchFill, benchThreadInvite } from "../pkg/dovecote.js";
import { Dexie } from "/node_modules/dexie/dist/dexie.mjs";
import { profileMark, aesKey, complete, request, deleteDb, dexieSchema, freshName, openRaw, openRecords, rotate, sealedRecord, settle, summarize, text } from "../lib.mjs";

const ROUNDS = 4;
const READS = 16;
const COUNT = 10_000;
const PAGE = 50;
const BODY = 120;
const RAW_GET_ALL = "getAllRecords" in IDBIndex.prototype;

async function sealedRecords(key, threadId) {
  const out = [];
  for (let start = 1; start <= COUNT; start += 1000) {
    const batch = [];
    for (let seq = start; seq < start + 1000 && seq <= COUNT; seq++) batch.push(sealedRecord(key, threadId, seq, text(BODY, seq)));
    out.push(...(await Promise.all(batch)));
  }
  return out;
}

function checkPage(page, what) {
  if (page.length !== PAGE || page.some((m) => typeof m.body !== "string" || m.body.length !== BODY)) throw new Error(`${what} read a wrong page`);
  if (page[0].seq !== COUNT - PAGE + 1 || page[PAGE - 1].seq !== COUNT) throw new Error(`${what} did not read the newest page, oldest first`);
}

async function setUp(timings) {
  const threadId = "t-bench";
  const key = await aesKey();
  const records = await sealedRecords(key, threadId);

  const dcName = freshName("open-dc");
  const invite = benchThreadInvite();
  let t = performance.now();
  await benchFill(dcName, invite, "bob", COUNT, BODY, 1000);
  timings.dovecoteFill.push(performance.now() - t);
  const client = await ChatClient.open({ dbName: dcName, userId: "alice" });
  const { threadId: dcThread } = await client.importThreadInvite(invite);

  const dxName = freshName("open-dx");
  const dx = dexieSchema(new Dexie(dxName));
  await dx.open();
  t = performance.now();
  await dx.messages.bulkPut(records);
  timings.dexieFill.push(performance.now() - t);

  const rawName = freshName("open-raw");
  const raw = await openRaw(rawName);
  t = performance.now();
  const tx = raw.transaction("messages", "readwrite");
  const store = tx.objectStore("messages");
  for (const r of records) store.put(r);
  await complete(tx);
  timings.rawFill.push(performance.now() - t);

  const contenders = {
    async dovecote() {
      const page = await client.messages(dcThread, { limit: PAGE });
      return page;
    },
    async dexie() {
      const rows = await dx.messages.where("[threadId+order]").between([threadId, Dexie.minKey], [threadId, Dexie.maxKey]).reverse().limit(PAGE).toArray();
      return openRecords(key, rows);
    },
    async raw() {
      const rtx = raw.transaction("messages", "readonly");
      const index = rtx.objectStore("messages").index("by_thread_order");
      const range = IDBKeyRange.bound([threadId], [threadId, []]);
      // The best a JS app can do: one request where the browser supports
      // getAll with a direction (IndexedDB 3, as Dexie 4 uses it), else a cursor.
      const rows = RAW_GET_ALL ? await request(index.getAll({ query: range, count: PAGE, direction: "prev" })) : await new Promise((resolve, reject) => {
        const found = [];
        const req = index.openCursor(range, "prev");
        req.onsuccess = () => {
          const cursor = req.result;
          if (!cursor) return resolve(found);
          found.push(cursor.value);
          if (found.length >= PAGE) return resolve(found);
          cursor.continue();
        };
        req.onerror = () => reject(req.error);
      });
      return openRecords(key, rows);
    },
  };
  const tearDown = async () => {
    client.close();
    dx.close();
    raw.close();
    await settle();
    await Promise.all([dcName, dxName, rawName].map(deleteDb));
  };
  return { contenders, tearDown, dcName, dcThread };
}

export async function run() {
  await init();
  const samples = { dovecote: [], dexie: [], raw: [] };
  const first = { dovecote: [], dexie: [], raw: [] };
  const timings = { dovecoteFill: [], dexieFill: [], rawFill: [] };
  const splits = [];
  for (let round = 0; round < ROUNDS + 1; round++) {
    const { contenders, tearDown, dcName, dcThread } = await setUp(timings);
    await profileMark("start");
    for (let i = 0; i < READS; i++) {
      for (const name of rotate(Object.keys(contenders), i + round)) {
        const t0 = performance.now();
        const page = await contenders[name]();
        const ms = performance.now() - t0;
        checkPage(page, name);
        if (round > 0) (i === 0 ? first : samples)[name].push(ms); // round 0 warms up
      }
    }
    await profileMark("stop");
    if (round > 0) {
      const reader = await BenchClient.open(dcName, "alice");
      for (let i = 0; i < 6; i++) splits.push(await reader.split(dcThread, PAGE));
      reader.close();
    }
    await tearDown();
  }
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  return [{
    id: "5", title: `Open a thread: newest ${PAGE} of ${COUNT.toLocaleString("en")} messages, decrypted, delivered to JS`,
    ...summarize(samples, "ms"), goal: { against: "dexie", max: 0.7 },
    details: {
      rawRead: RAW_GET_ALL ? "index.getAll({direction: \"prev\", count})" : "reverse cursor",
      firstReadAfterFillMs: Object.fromEntries(Object.entries(first).map(([k, v]) => [k, median(v)])),
      fillMedianMs: Object.fromEntries(Object.entries(timings).map(([k, v]) => [k, median(v)])),
      dovecoteSplitMedianMs: {
        "store cursor walk + records JS→Rust": median(splits.map((s) => s[0])),
        "Client::messages (walk again + open + views)": median(splits.map((s) => s[1])),
        "views Rust→JS (serde-wasm-bindgen)": median(splits.map((s) => s[2])),
      },
    },
  }];
}
