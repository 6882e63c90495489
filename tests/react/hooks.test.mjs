// dovecote/react's hooks under React (react-test-renderer, in Node) over a
// scripted client: the rules the browser test cannot see from outside.
// Listeners are attached only while mounted and removed on unmount (also
// through StrictMode's second mount); a refresh that reads the same data
// does not re-render; changes that arrive before the first page are not
// lost; pages and changes merge by id, in display order; loadOlder stops
// when a page is short. The browser test (tests/e2e/react.test.mjs) runs the
// same hooks on the real client and server.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createElement, StrictMode } from "react";
import TestRenderer from "react-test-renderer";
import { useMessages, useOutbox, useSyncStatus, useThreads } from "../../js/react.js";

globalThis.IS_REACT_ACT_ENVIRONMENT = true;
const { act } = TestRenderer;

/** A client whose answers the test controls; it records who listens. */
class ScriptedClient {
  constructor() {
    this.syncState = "idle";
    this.eventListeners = new Set();
    this.threadListeners = new Map();
    this.calls = [];
    this.threadList = [];
    this.outboxList = [];
    this.pages = new Map(); // `${threadId}:${before ?? ""}` -> messages, or a promise of them
  }
  onEvent(callback) {
    this.eventListeners.add(callback);
    return () => this.eventListeners.delete(callback);
  }
  subscribe(threadId, callback) {
    const set = this.threadListeners.get(threadId) ?? new Set();
    set.add(callback);
    this.threadListeners.set(threadId, set);
    return () => set.delete(callback);
  }
  listeners() {
    return this.eventListeners.size + [...this.threadListeners.values()].reduce((n, s) => n + s.size, 0);
  }
  emit(event) {
    for (const l of [...this.eventListeners]) l(event);
  }
  change(threadId, messages) {
    for (const l of [...(this.threadListeners.get(threadId) ?? [])]) l({ threadId, messages });
  }
  async threads() {
    this.calls.push("threads");
    return structuredClone(this.threadList);
  }
  async outbox() {
    this.calls.push("outbox");
    return structuredClone(this.outboxList);
  }
  async messages(threadId, { before, limit }) {
    this.calls.push(`messages ${before ?? "newest"} ${limit}`);
    const page = await this.pages.get(`${threadId}:${before ?? ""}`);
    return structuredClone(page ?? []);
  }
}

const message = (n, fields = {}) => ({
  id: `m${String(n).padStart(3, "0")}`,
  threadId: "t1",
  sender: "alice",
  body: `text ${n}`,
  undecryptable: null,
  seq: n,
  clientTs: 1000 + n,
  serverTs: 2000 + n,
  edited: false,
  deleted: false,
  status: { state: "sent" },
  ...fields,
});

/** Renders `useHook(...args)`; returns every value the component rendered with. */
async function mount(useHook, args, { strict = false } = {}) {
  const renders = [];
  function Probe({ args }) {
    renders.push(useHook(...args));
    return null;
  }
  let root;
  await act(async () => {
    const probe = createElement(Probe, { args });
    root = TestRenderer.create(strict ? createElement(StrictMode, null, probe) : probe);
  });
  return {
    renders,
    last: () => renders.at(-1),
    update: (next) => act(async () => root.update(createElement(Probe, { args: next }))),
    unmount: () => act(async () => root.unmount()),
  };
}

const settle = () => act(async () => new Promise((resolve) => setTimeout(resolve, 0)));

test("useThreads reads on mount, again on threads events, and not again once unmounted", async () => {
  const client = new ScriptedClient();
  client.threadList = [{ id: "t1", title: "Lunch" }];
  const view = await mount(useThreads, [client]);
  assert.deepEqual(view.last().threads, [{ id: "t1", title: "Lunch" }]);
  assert.equal(view.last().loading, false);
  assert.equal(client.listeners(), 1);

  client.threadList.push({ id: "t2", title: "Dinner" });
  await act(async () => client.emit({ type: "threads" }));
  await settle();
  assert.deepEqual(view.last().threads.map((t) => t.title), ["Lunch", "Dinner"]);

  // Other events do not make it read.
  const reads = client.calls.length;
  await act(async () => client.emit({ type: "sync", state: "syncing", error: null }));
  assert.equal(client.calls.length, reads);

  await view.unmount();
  assert.equal(client.listeners(), 0, "unmount removes the listener");
  await act(async () => client.emit({ type: "threads" }));
  assert.equal(client.calls.length, reads, "no read after unmount");
});

test("a refresh that reads the same list keeps the snapshot, and unchanged records keep their identity", async () => {
  const client = new ScriptedClient();
  client.threadList = [{ id: "t1", title: "Lunch" }, { id: "t2", title: "Dinner" }];
  const view = await mount(useThreads, [client]);
  const before = view.renders.length;
  const snapshot = view.last();
  await act(async () => client.emit({ type: "threads" }));
  await settle();
  assert.equal(view.renders.length, before, "no re-render for the same data");
  assert.equal(view.last(), snapshot);

  client.threadList[1].title = "Supper";
  await act(async () => client.emit({ type: "threads" }));
  await settle();
  assert.equal(view.renders.length, before + 1);
  assert.equal(view.last().threads[0], snapshot.threads[0], "the unchanged thread is the same object");
  assert.notEqual(view.last().threads[1], snapshot.threads[1]);
  assert.ok(Object.isFrozen(view.last()) && Object.isFrozen(view.last().threads));
  await view.unmount();
});

test("StrictMode's mount, unmount, mount leaves one listener, removed on unmount", async () => {
  const client = new ScriptedClient();
  client.pages.set("t1:", [message(1)]);
  const messages = await mount(useMessages, [client, "t1", { limit: 5 }], { strict: true });
  const status = await mount(useSyncStatus, [client], { strict: true });
  const outbox = await mount(useOutbox, [client], { strict: true });
  assert.equal(client.listeners(), 3, "one subscription and two event listeners");
  assert.deepEqual(messages.last().messages.map((m) => m.id), ["m001"]);
  await messages.unmount();
  await status.unmount();
  await outbox.unmount();
  assert.equal(client.listeners(), 0);
});

test("useMessages: changes before the first page are kept, pages and changes merge by id in display order", async () => {
  const client = new ScriptedClient();
  let answer;
  client.pages.set("t1:", new Promise((resolve) => (answer = resolve)));
  const view = await mount(useMessages, [client, "t1", { limit: 3 }]);
  assert.equal(view.last().loading, true);

  // A local echo while the page is still being read, then the page, which
  // was read before the send and so does not have it.
  const pending = message(99, { seq: null, serverTs: null, clientTs: 5000, status: { state: "pending" } });
  await act(async () => client.change("t1", [pending]));
  await act(async () => answer([message(4), message(5), message(6)]));
  await settle();
  assert.deepEqual(view.last().messages.map((m) => m.id), ["m004", "m005", "m006", "m099"]);
  assert.equal(view.last().hasOlder, true);
  assert.equal(view.last().loading, false);

  // The send is acked (seq 7), another member's message arrives, and a
  // message of another thread is ignored.
  await act(async () =>
    client.change("t1", [{ ...pending, seq: 7, status: { state: "sent" } }, message(8, { sender: "bob" }), message(9, { threadId: "t2" })]),
  );
  assert.deepEqual(view.last().messages.map((m) => [m.id, m.status.state]), [
    ["m004", "sent"],
    ["m005", "sent"],
    ["m006", "sent"],
    ["m099", "sent"],
    ["m008", "sent"],
  ]);

  // Older pages: before the oldest page message; a short page ends it.
  client.pages.set("t1:m004", [message(1), message(2), message(3)]);
  client.pages.set("t1:m001", [message(0)]);
  const loadOlder = view.last().loadOlder;
  await act(() => view.last().loadOlder());
  assert.deepEqual(view.last().messages.map((m) => m.id).slice(0, 4), ["m001", "m002", "m003", "m004"]);
  assert.equal(view.last().hasOlder, true);
  await act(() => view.last().loadOlder());
  assert.equal(view.last().messages[0].id, "m000");
  assert.equal(view.last().hasOlder, false);
  assert.equal(view.last().loadOlder, loadOlder, "loadOlder is stable");
  const reads = client.calls.length;
  await act(() => view.last().loadOlder());
  assert.equal(client.calls.length, reads, "no read once hasOlder is false");
  assert.deepEqual(client.calls.filter((c) => c.startsWith("messages")), ["messages newest 3", "messages m004 3", "messages m001 3"]);

  // The same change again re-renders nothing.
  const renders = view.renders.length;
  await act(async () => client.change("t1", [message(8, { sender: "bob" })]));
  assert.equal(view.renders.length, renders);
  await view.unmount();
  assert.equal(client.listeners(), 0);
});

test("useMessages starts over when the thread changes, and a late page of the old thread is dropped", async () => {
  const client = new ScriptedClient();
  let late;
  client.pages.set("t1:", new Promise((resolve) => (late = resolve)));
  client.pages.set("t2:", [message(1, { threadId: "t2", id: "x1" })]);
  const view = await mount(useMessages, [client, "t1", {}]);
  await view.update([client, "t2", {}]);
  await settle();
  assert.deepEqual(view.last().messages.map((m) => m.id), ["x1"]);
  assert.equal(client.threadListeners.get("t1").size, 0, "the old thread's subscription ended");
  await act(async () => late([message(5)]));
  await settle();
  assert.deepEqual(view.last().messages.map((m) => m.id), ["x1"]);
  assert.ok(client.calls.includes("messages newest 50"), "the default page is 50");
  await view.unmount();
});

test("useSyncStatus follows sync events; useOutbox reads again on outbox, status and sync events; errors show", async () => {
  const client = new ScriptedClient();
  client.syncState = "online";
  const status = await mount(useSyncStatus, [client]);
  assert.deepEqual(status.last(), { state: "online", error: null });
  const error = { code: "network", message: "the browser is offline" };
  await act(async () => client.emit({ type: "sync", state: "offline", error }));
  assert.deepEqual(status.last(), { state: "offline", error });
  const renders = status.renders.length;
  await act(async () => client.emit({ type: "sync", state: "offline", error: { ...error } }));
  assert.equal(status.renders.length, renders, "the same state again does not re-render");

  const outbox = await mount(useOutbox, [client]);
  assert.deepEqual(outbox.last().entries, []);
  client.outboxList = [{ mutationId: 1, kind: "send", state: "queued" }];
  await act(async () => client.emit({ type: "outbox" }));
  await settle();
  assert.equal(outbox.last().entries.length, 1);
  client.outboxList = [];
  await act(async () => client.emit({ type: "status", message: message(1) }));
  await settle();
  assert.equal(outbox.last().entries.length, 0);

  client.outbox = async () => {
    throw Object.assign(new Error("the client is closed"), { name: "DovecoteError", code: "closed" });
  };
  await act(async () => client.emit({ type: "sync", state: "idle", error: null }));
  await settle();
  assert.equal(outbox.last().error?.code, "closed");
  await status.unmount();
  await outbox.unmount();
  assert.equal(client.listeners(), 0);
});

test("without a client the hooks show an empty state and listen to nothing", async () => {
  const view = await mount(useMessages, [null, "t1"]);
  assert.deepEqual(view.last().messages, []);
  assert.equal(view.last().loading, false);
  await view.last().loadOlder();
  const threads = await mount(useThreads, [undefined]);
  assert.deepEqual(threads.last(), { threads: [], loading: false, error: null });
  await view.unmount();
  await threads.unmount();
});
