// Shared pieces of the benchmark page: statistics, interleaving, fresh
// databases, raw IndexedDB helpers and the records the references store.

/** Median, p95 (nearest rank), mean and count of a list of numbers. */
export function stats(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const rank = (q) => s[Math.min(s.length - 1, Math.max(0, Math.ceil(s.length * q) - 1))];
  return { median: rank(0.5), p95: rank(0.95), mean: s.reduce((a, b) => a + b, 0) / s.length, n: s.length };
}

/** The contenders in a different order each round, so drift and caches favour none. */
export function rotate(list, round) {
  const k = round % list.length;
  return [...list.slice(k), ...list.slice(0, k)];
}

/** Resolves after the browser had a chance to run other tasks (GC, IDB housekeeping). */
export const settle = () => new Promise((resolve) => setTimeout(resolve, 0));

let dbCounter = 0;
/** A database name never used before in this browser profile. */
export function freshName(prefix) {
  dbCounter += 1;
  return `bench-${prefix}-${Date.now().toString(36)}-${dbCounter}-${Math.random().toString(36).slice(2, 8)}`;
}

/** Deletes a database, waiting until it is gone. */
export function deleteDb(name) {
  return new Promise((resolve, reject) => {
    const request = indexedDB.deleteDatabase(name);
    request.onsuccess = () => resolve();
    request.onerror = () => reject(request.error);
    // Blocked only while a closed connection finishes its last transaction.
    request.onblocked = () => {};
  });
}

/** Text of `len` characters (ASCII, so also bytes). */
export function text(len, n = 0) {
  let s = `message ${n}: `;
  while (s.length < len) s += "the quick brown fox jumps over the lazy dog ";
  return s.slice(0, len);
}

/** Waits for a request's result. */
export function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

/** Waits for a transaction to complete. */
export function complete(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new Error("transaction aborted"));
  });
}

/**
 * Opens a raw database with the references' schema: `messages` keyed by id
 * with an index on [threadId, order], as dovecote's `by_thread_order`.
 * Transactions opened on it name no durability, like dovecote's and Dexie's.
 * `withOutbox` adds an outbox store with generated keys, like dovecote's.
 */
export function openRaw(name, withOutbox = false) {
  const req = indexedDB.open(name, 1);
  req.onupgradeneeded = () => {
    const messages = req.result.createObjectStore("messages", { keyPath: "id" });
    messages.createIndex("by_thread_order", ["threadId", "order"]);
    if (withOutbox) req.result.createObjectStore("outbox", { keyPath: "mutationId", autoIncrement: true });
  };
  return request(req);
}

/** One put in its own readwrite transaction, resolved when it completes. */
export function rawPut(db, record, options) {
  const tx = db.transaction("messages", "readwrite", options);
  tx.objectStore("messages").put(record);
  return complete(tx);
}

/** Dexie's schema for the same records. */
export function dexieSchema(db) {
  db.version(1).stores({ messages: "id, [threadId+order]" });
  return db;
}

let idCounter = 0;
/** A time-ordered id string like dovecote's (26 characters). */
export function newId() {
  idCounter += 1;
  return (Date.now().toString(36) + idCounter.toString(36).padStart(6, "0") + Math.random().toString(36).slice(2)).padEnd(26, "0").slice(0, 26);
}

/**
 * A pending message record as a JS app would store it: the same fields as
 * dovecote's, with `body` bytes as long as dovecote's envelope for the text
 * (version + key id + nonce + ciphertext + tag). The references store it
 * unencrypted unless the workload says otherwise: they do less than dovecote.
 */
export function pendingRecord(threadId, textLen, order) {
  const now = Date.now();
  return {
    id: newId(), threadId, sender: "alice", body: new Uint8Array(1 + 8 + 12 + textLen + 16),
    seq: null, clientTs: now, serverTs: null, edited: false, deleted: false,
    status: { state: "pending" }, order,
  };
}

/** The AAD a JS app would bind a message's ciphertext to. */
export function aadFor(threadId, id) {
  return new TextEncoder().encode(`dovecote/v1|${threadId}|${id}|alice|send`);
}

/** A sent message sealed with SubtleCrypto AES-256-GCM, as a JS app would store it. */
export async function sealedRecord(key, threadId, seq, body) {
  const id = newId();
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const ct = await crypto.subtle.encrypt({ name: "AES-GCM", iv, additionalData: aadFor(threadId, id) }, key, new TextEncoder().encode(body));
  return {
    id, threadId, sender: "alice", iv, body: ct, seq, clientTs: 1_700_000_000_000 + seq,
    serverTs: 1_700_000_000_000 + seq, edited: false, deleted: false, status: { state: "sent" }, order: seq,
  };
}

/** Opens stored records into messages as dovecote delivers them (oldest first). */
export async function openRecords(key, rows) {
  const decoder = new TextDecoder();
  const out = await Promise.all(rows.map(async (r) => {
    const plain = await crypto.subtle.decrypt({ name: "AES-GCM", iv: r.iv, additionalData: aadFor(r.threadId, r.id) }, key, r.body);
    return {
      id: r.id, threadId: r.threadId, sender: r.sender, body: decoder.decode(plain), undecryptable: null,
      seq: r.seq, clientTs: r.clientTs, serverTs: r.serverTs, edited: r.edited, deleted: r.deleted, status: r.status,
    };
  }));
  return out.reverse();
}

export const aesKey = () => crypto.subtle.generateKey({ name: "AES-GCM", length: 256 }, false, ["encrypt", "decrypt"]);

/** Summaries of each contender's samples and the ratio of dovecote's median to each reference's. */
export function summarize(samples, unit, extra = {}) {
  const contenders = Object.fromEntries(Object.entries(samples).map(([name, xs]) => [name, stats(xs)]));
  const base = contenders.dovecote;
  const ratios = {};
  const spread = {};
  for (const [name, s] of Object.entries(contenders)) {
    if (name === "dovecote" || !base) continue;
    ratios[name] = base.median / s.median;
    // Samples with the same index ran next to each other: their ratios show
    // how much the ratio itself moves with the machine's noise.
    const ours = samples.dovecote;
    const theirs = samples[name];
    if (ours.length === theirs.length) {
      const paired = ours.map((x, i) => x / theirs[i]).sort((a, b) => a - b);
      const q = (p) => paired[Math.min(paired.length - 1, Math.floor(paired.length * p))];
      spread[name] = [q(0.25), q(0.75)];
    }
  }
  return { unit, contenders, ratios, pairedRatioIqr: spread, ...extra };
}

/**
 * Brackets a timed part for `bench/run.mjs --profile`, which then samples
 * only between "start" and "stop"; does nothing in a normal run.
 */
export async function profileMark(command) {
  if (window.benchProfile) await window.benchProfile(command);
}

/**
 * The reference sync server, started and stopped by bench/run.mjs on the
 * page's request: `start()` gives `{ id, url }` (a new server with a new
 * SQLite file on a free loopback port), `log(id)` and `stop(id)` its request
 * tally `{ "POST /v1/push 200": { count, handlerMs }, ... }`. `available`
 * is false when the runner could not build the server.
 */
export const syncServer = {
  get available() {
    return typeof window.benchServer === "function";
  },
  start: () => window.benchServer("start"),
  log: (id) => window.benchServer("log", id),
  stop: (id) => window.benchServer("stop", id),
};

/** Signs in as `user` with the server's dev-only session endpoint; the token. */
export async function signIn(url, user) {
  const response = await fetch(`${url}/v1/session`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user }),
  });
  if (!response.ok) throw new Error(`sign-in as ${user}: ${response.status}`);
  return (await response.json()).token;
}

/**
 * The page's fetches so far whose URL contains `part`, oldest first, as
 * resource timing entries (startTime = fetch() called, responseEnd = last
 * byte in; both on performance.now()'s clock). Call `resetRequests()` first.
 */
export function requests(part) {
  return performance.getEntriesByType("resource").filter((e) => e.name.includes(part)).sort((a, b) => a.startTime - b.startTime);
}

/** Forgets earlier resource timing entries and makes room for many. */
export function resetRequests() {
  performance.setResourceTimingBufferSize(100_000);
  performance.clearResourceTimings();
}
