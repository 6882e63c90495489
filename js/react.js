// dovecote/react: React hooks over a ChatClient. Each hook reads an
// external store (useSyncExternalStore) that listens to the client only
// while some component is mounted with it, and whose snapshot is a new
// object only when what it shows changed: a refresh that reads the same
// threads, messages or outbox again keeps the old snapshot (and the old
// objects of unchanged records), so React does not re-render.
//
// Plain ES module, no build step; React is an optional peer dependency
// (only this subpath imports it).
import { useMemo, useSyncExternalStore } from "react";

/** A frozen empty list, shared by every empty snapshot. */
const NONE = Object.freeze([]);

/** Whether two JSON-like values (as the client returns them) are equal. */
function same(a, b) {
  if (Object.is(a, b)) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const keys = Object.keys(a);
  if (keys.length !== Object.keys(b).length) return false;
  return keys.every((k) => Object.hasOwn(b, k) && same(a[k], b[k]));
}

/**
 * `next`, with the records that equal one of `prev` (by `key`) replaced by
 * that old object; `prev` itself when nothing differs.
 */
function reuse(prev, next, key) {
  const old = new Map(prev.map((r) => [key(r), r]));
  let changed = prev.length !== next.length;
  const out = next.map((record, i) => {
    const before = old.get(key(record));
    const kept = before !== undefined && same(before, record) ? before : record;
    if (kept !== prev[i]) changed = true;
    return kept;
  });
  return changed ? Object.freeze(out) : prev;
}

/**
 * The part every store shares: listeners, the snapshot, and start/stop
 * around the first and last listener (StrictMode's mount, unmount, mount
 * included: a restart reads again). `epoch` changes on every stop, so the
 * answer of a read started before it is dropped.
 */
class Store {
  constructor(snapshot) {
    this.snapshot = snapshot;
    this.listeners = new Set();
    this.epoch = 0;
    this.subscribe = (listener) => {
      this.listeners.add(listener);
      if (this.listeners.size === 1) this.start();
      return () => {
        if (!this.listeners.delete(listener) || this.listeners.size > 0) return;
        this.epoch += 1;
        this.stop();
      };
    };
    this.getSnapshot = () => this.snapshot;
  }

  /** Replaces fields of the snapshot; a new snapshot only if one differs. */
  update(fields) {
    if (Object.keys(fields).every((k) => Object.is(this.snapshot[k], fields[k]))) return;
    this.snapshot = Object.freeze({ ...this.snapshot, ...fields });
    for (const listener of [...this.listeners]) listener();
  }

  /** Whether a read started at `epoch` may still change the snapshot. */
  live(epoch) {
    return epoch === this.epoch && this.listeners.size > 0;
  }

  start() {}
  stop() {}
}

/**
 * A store that shows one list the client reads whole (`threads()`,
 * `outbox()`) and reads again on some of its events: at most one read in
 * flight, and one more after it if events came meanwhile.
 */
class ListStore extends Store {
  constructor(client, { read, field, key, refreshOn }) {
    super(Object.freeze({ [field]: NONE, loading: true, error: null }));
    this.client = client;
    this.read = read;
    this.field = field;
    this.key = key;
    this.refreshOn = refreshOn;
    this.reading = false;
    this.again = false;
  }

  start() {
    this.off = this.client.onEvent((event) => {
      if (this.refreshOn.includes(event.type)) this.refresh();
    });
    this.refresh();
  }

  stop() {
    this.off?.();
    this.off = undefined;
    this.reading = false;
    this.again = false;
  }

  async refresh() {
    if (this.reading) {
      this.again = true;
      return;
    }
    const epoch = this.epoch;
    this.reading = true;
    try {
      do {
        this.again = false;
        let list;
        try {
          list = await this.client[this.read]();
        } catch (error) {
          if (this.live(epoch)) this.update({ loading: false, error });
          continue;
        }
        if (!this.live(epoch)) return;
        this.update({ [this.field]: reuse(this.snapshot[this.field], list, this.key), loading: false, error: null });
      } while (this.again && this.live(epoch));
    } finally {
      if (epoch === this.epoch) this.reading = false;
    }
  }
}

/** Display order, as the client's pages have it: sent by seq, then pending as written. */
const PENDING_BASE = 2 ** 52;
function byDisplayOrder(a, b) {
  const oa = a.seq ?? PENDING_BASE + a.clientTs;
  const ob = b.seq ?? PENDING_BASE + b.clientTs;
  return oa - ob || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

/**
 * One thread's messages: the newest page, older pages on `loadOlder()`, and
 * every change the client reports (`subscribe`) merged in by id, kept in
 * display order.
 */
class MessagesStore extends Store {
  constructor(client, threadId, limit) {
    super(null);
    this.client = client;
    this.threadId = threadId;
    this.limit = limit;
    this.loadOlder = () => this.older();
    this.snapshot = this.initial();
  }

  initial() {
    return Object.freeze({
      messages: NONE,
      hasOlder: false,
      loading: true,
      loadingOlder: false,
      error: null,
      loadOlder: this.loadOlder,
    });
  }

  start() {
    const epoch = this.epoch;
    // The oldest message read from a page: the next page ends there (a
    // change may bring a message older than it, which is not a page).
    this.oldest = null;
    this.snapshot = this.initial();
    // Subscribed before the read, so nothing falls between; changes that
    // come before the page are applied after it, in order, being newer.
    let early = [];
    this.off = this.client.subscribe(this.threadId, ({ messages }) => {
      if (early) early.push(...messages);
      else this.merge(messages, true);
    });
    this.client.messages(this.threadId, { limit: this.limit }).then(
      (page) => {
        if (!this.live(epoch)) return;
        this.oldest = page[0]?.id ?? null;
        this.merge(page, true, { hasOlder: page.length === this.limit, loading: false, error: null });
        const changes = early;
        early = null;
        if (changes.length > 0) this.merge(changes, true);
      },
      (error) => {
        if (!this.live(epoch)) return;
        early = null;
        this.update({ loading: false, error });
      },
    );
  }

  stop() {
    this.off?.();
    this.off = undefined;
  }

  /**
   * Merges `records` by id: with `override`, a record replaces the one
   * held (a change is newer than what a page read); without, a page's
   * record only fills in what is not held yet.
   */
  merge(records, override, fields = {}) {
    const prev = this.snapshot.messages;
    const at = new Map(prev.map((m, i) => [m.id, i]));
    const next = [...prev];
    for (const record of records) {
      if (record.threadId !== this.threadId) continue;
      const i = at.get(record.id);
      if (i === undefined) {
        at.set(record.id, next.length);
        next.push(record);
      } else if (override && !same(next[i], record)) {
        next[i] = record;
      }
    }
    next.sort(byDisplayOrder);
    const changed = next.length !== prev.length || next.some((m, i) => m !== prev[i]);
    this.update({ ...fields, ...(changed ? { messages: Object.freeze(next) } : {}) });
  }

  async older() {
    const s = this.snapshot;
    if (this.listeners.size === 0 || s.loading || s.loadingOlder || !s.hasOlder || this.oldest === null) return;
    const epoch = this.epoch;
    this.update({ loadingOlder: true });
    try {
      const page = await this.client.messages(this.threadId, { before: this.oldest, limit: this.limit });
      if (!this.live(epoch)) return;
      if (page.length > 0) this.oldest = page[0].id;
      this.merge(page, false, { hasOlder: page.length === this.limit, loadingOlder: false, error: null });
    } catch (error) {
      if (this.live(epoch)) this.update({ loadingOlder: false, error });
    }
  }
}

/** Sync state from `syncState` and the client's `sync` events. */
class SyncStatusStore extends Store {
  constructor(client) {
    super(Object.freeze({ state: client.syncState, error: null }));
    this.client = client;
  }

  start() {
    this.off = this.client.onEvent((event) => {
      if (event.type !== "sync") return;
      const error = same(this.snapshot.error, event.error) ? this.snapshot.error : event.error;
      this.update({ state: event.state, error });
    });
    this.update({ state: this.client.syncState });
  }

  stop() {
    this.off?.();
    this.off = undefined;
  }
}

/** What the hooks return for a missing client (not opened yet). */
const IDLE = {
  threads: Object.freeze({ threads: NONE, loading: false, error: null }),
  outbox: Object.freeze({ entries: NONE, loading: false, error: null }),
  messages: Object.freeze({
    messages: NONE,
    hasOlder: false,
    loading: false,
    loadingOlder: false,
    error: null,
    loadOlder: () => Promise.resolve(),
  }),
  sync: Object.freeze({ state: "idle", error: null }),
};
const NO_STORE = { subscribe: () => () => {}, getSnapshot: () => null };

function useStore(store, idle) {
  const s = store ?? NO_STORE;
  const snapshot = useSyncExternalStore(s.subscribe, s.getSnapshot, s.getSnapshot);
  return snapshot ?? idle;
}

/** Every thread on the device, read again when the client says the list changed. */
export function useThreads(client) {
  const store = useMemo(
    () => client && new ListStore(client, { read: "threads", field: "threads", key: (t) => t.id, refreshOn: ["threads"] }),
    [client],
  );
  return useStore(store, IDLE.threads);
}

/**
 * A thread's messages, oldest first: the newest `limit` (50 by default),
 * older pages with `loadOlder()` while `hasOlder`, and every change as it
 * happens (local echo, status, edits, messages from sync and other tabs).
 */
export function useMessages(client, threadId, { limit = 50 } = {}) {
  const store = useMemo(
    () => client && threadId ? new MessagesStore(client, threadId, limit) : null,
    [client, threadId, limit],
  );
  return useStore(store, IDLE.messages);
}

/** Where background sync stands: `{ state, error }`. */
export function useSyncStatus(client) {
  const store = useMemo(() => client && new SyncStatusStore(client), [client]);
  return useStore(store, IDLE.sync);
}

/**
 * What waits to be sent, read again when the outbox may have changed: a
 * local write (`outbox` event), a status change, a sync round, a thread.
 */
export function useOutbox(client) {
  const store = useMemo(
    () =>
      client &&
      new ListStore(client, {
        read: "outbox",
        field: "entries",
        key: (e) => e.mutationId,
        refreshOn: ["outbox", "status", "sync", "threads"],
      }),
    [client],
  );
  return useStore(store, IDLE.outbox);
}
