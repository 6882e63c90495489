// Several tabs of one user on one database (issue 6 acceptance), in pages of
// one browser context against the real server: one sync leader at a time
// (Web Locks), every tab writes, every tab sees, nothing is sent twice.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { startServer, launchBrowser, serverMessages } from "./harness.mjs";

const output = new URL("../../test-output/", import.meta.url).pathname;
let browser;
let server;
before(async () => {
  mkdirSync(output, { recursive: true });
  browser = await launchBrowser();
  server = await startServer();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

/** A tab with the SDK and an open client on `dbName`, tracking what it is shown. */
async function openTab(context, dbName) {
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`${server.url}/tests/e2e/sdk.html`);
  await page.waitForSelector("body[data-ready=true]", { state: "attached" });
  await page.evaluate(
    async ({ url, dbName }) => {
      const { ChatClient } = window.dovecote;
      window.leader = false;
      window.versionChanged = false;
      window.shown = new Map(); // message id -> latest state, from subscriptions
      window.client = await ChatClient.open({ dbName, userId: "alice", serverUrl: url, devSignIn: true });
      window.client.onEvent((e) => {
        if (e.type === "leader") window.leader = e.leader;
        if (e.type === "version_change") window.versionChanged = true;
      });
    },
    { url: server.url, dbName },
  );
  return { page, errors };
}

async function watch(tab, threadId) {
  await tab.page.evaluate((threadId) => {
    window.client.subscribe(threadId, (change) => {
      for (const m of change.messages) window.shown.set(m.id, m);
    });
  }, threadId);
}

async function leaderOf(tabs) {
  for (let i = 0; i < 200; i++) {
    const flags = await Promise.all(tabs.map((t) => t.page.evaluate(() => window.leader)));
    const leaders = tabs.filter((_, i) => flags[i]);
    assert.ok(leaders.length <= 1, "never two leaders");
    if (leaders.length === 1) return leaders[0];
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error("no leader after 10 s");
}

async function waitUntil(what, check, ms = 60_000) {
  const end = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test("3 tabs send 100 messages each while the leader is closed twice: 300 on the server once, in order, shown once in every tab", async () => {
  const context = await browser.newContext();
  const db = "alice-tabs";
  let tabs = [await openTab(context, db), await openTab(context, db), await openTab(context, db)];
  const threadId = await tabs[0].page.evaluate(async () => (await window.client.createThread({ title: "Tabs" })).id);
  for (const tab of tabs) await watch(tab, threadId);
  const original = new Set(tabs);

  // Two random rounds (of 10) after which the current leader tab is closed.
  const rounds = 10;
  const closeAfter = new Set();
  while (closeAfter.size < 2) closeAfter.add(1 + Math.floor(Math.random() * (rounds - 2)));
  let closed = 0;
  for (let round = 0; round < rounds; round++) {
    await Promise.all(
      tabs.map((tab, sender) =>
        tab.page.evaluate(
          async ({ threadId, sender, round }) => {
            for (let n = round * 10; n < round * 10 + 10; n++) await window.client.send(threadId, `s${sender}-${n}`);
          },
          { threadId, sender, round },
        ),
      ),
    );
    if (closeAfter.has(round)) {
      const leader = await leaderOf(tabs);
      const sender = tabs.indexOf(leader);
      await leader.page.close(); // mid-sync, most likely
      closed++;
      const replacement = await openTab(context, db);
      await watch(replacement, threadId);
      tabs[sender] = replacement;
    }
  }
  assert.equal(closed, 2);

  await waitUntil("the outbox to drain", async () => (await tabs[0].page.evaluate(() => window.client.outbox())).length === 0);
  const held = await serverMessages(server.url, "alice");
  assert.equal(held.length, 300, "the server holds 300 messages");
  assert.equal(new Set(held.map((m) => m.id)).size, 300, "each once");
  assert.equal(new Set(held.map((m) => m.body)).size, 300);
  held.sort((a, b) => a.seq - b.seq);
  // Per-sender order: read the decrypted bodies in server order in one tab.
  const bodies = await tabs[0].page.evaluate(
    async (threadId) => (await window.client.messages(threadId, { limit: 1000 })).map((m) => [m.body, m.status.state]),
    threadId,
  );
  assert.equal(bodies.length, 300);
  assert.ok(bodies.every(([, state]) => state === "sent"));
  for (let sender = 0; sender < 3; sender++) {
    const ns = bodies.map(([b]) => b).filter((b) => b.startsWith(`s${sender}-`)).map((b) => Number(b.split("-")[1]));
    assert.deepEqual(ns, Array.from({ length: 100 }, (_, n) => n), `sender ${sender}'s order`);
  }

  // Every open tab shows all 300 exactly once, as sent.
  for (const tab of tabs) {
    const seen = await waitUntil("every tab to show 300 sent messages", () =>
      tab.page.evaluate(async (threadId) => {
        const page = await window.client.messages(threadId, { limit: 1000 });
        const ids = new Set(page.map((m) => m.id));
        const sent = page.every((m) => m.status.state === "sent");
        return page.length === 300 && ids.size === 300 && sent ? page.length : null;
      }, threadId),
    );
    assert.equal(seen, 300);
    assert.deepEqual(tab.errors, []);
  }
  // The tab open from the start learned every message and status by subscription.
  const survivor = tabs.find((t) => original.has(t)); // 3 tabs, 2 closed: one is left
  const shown = await waitUntil("subscriptions to report all 300 sent", () =>
    survivor.page.evaluate(() => {
      const all = [...window.shown.values()];
      return all.length === 300 && all.every((m) => m.status.state === "sent") ? all.length : null;
    }),
  );
  assert.equal(shown, 300);
  await context.close();
});

test("a follower tab's message is delivered while only the leader tab has a network", async () => {
  const context = await browser.newContext();
  const db = "alice-offline-follower";
  const first = await openTab(context, db);
  const leader = await leaderOf([first]);
  const follower = await openTab(context, db);
  assert.equal(await follower.page.evaluate(() => window.leader), false);
  const threadId = await leader.page.evaluate(async () => (await window.client.createThread({ title: "Relay" })).id);
  await watch(follower, threadId);

  const cdp = await context.newCDPSession(follower.page);
  await cdp.send("Network.enable");
  await cdp.send("Network.emulateNetworkConditions", { offline: true, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
  assert.equal(await follower.page.evaluate(() => navigator.onLine), false);
  let followerRequests = 0;
  follower.page.on("request", (r) => r.url().includes("/v1/") && followerRequests++);

  await follower.page.evaluate((threadId) => window.client.send(threadId, "sent by the offline tab"), threadId);
  const state = await waitUntil("the follower's message to read sent", () =>
    follower.page.evaluate(() => {
      const m = [...window.shown.values()].find((m) => m.body === "sent by the offline tab");
      return m?.status.state === "sent" ? m.status.state : null;
    }),
  );
  assert.equal(state, "sent");
  assert.equal(followerRequests, 0, "the follower never talks to the network");
  const held = await serverMessages(server.url, "alice");
  assert.equal(held.filter((m) => m.thread_id === threadId).length, 1);
  await context.close();
});

test("leader handover: close the leader, the next tab pushes (20 handovers, timed)", async () => {
  const context = await browser.newContext();
  const db = "alice-handover";
  const tabs = [await openTab(context, db), await openTab(context, db)];
  const threadId = await tabs[0].page.evaluate(async () => (await window.client.createThread({ title: "Handover" })).id);
  const times = [];
  for (let i = 0; i < 20; i++) {
    const leader = await leaderOf(tabs);
    const next = tabs.find((t) => t !== leader);
    await waitUntil("a quiet outbox", async () => (await next.page.evaluate(() => window.client.outbox())).length === 0);
    const pushed = new Promise((resolve) =>
      next.page.on("request", (r) => r.url().endsWith("/v1/push") && resolve(performance.now())),
    );
    // Something to push, queued by the tab that is about to lead; the old
    // leader has no network, so the push can only come from the new one.
    const cdp = await context.newCDPSession(leader.page);
    await cdp.send("Network.enable");
    await cdp.send("Network.emulateNetworkConditions", { offline: true, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
    await next.page.evaluate((args) => window.client.send(args.threadId, `handover ${args.i}`), { threadId, i });
    const start = performance.now();
    await leader.page.close();
    const at = await Promise.race([pushed, new Promise((r) => setTimeout(() => r(null), 15_000))]);
    assert.ok(at, `handover ${i}: the new leader pushed`);
    times.push(at - start);
    tabs[tabs.indexOf(leader)] = await openTab(context, db);
  }
  await waitUntil("all handover messages on the server", async () =>
    (await serverMessages(server.url, "alice")).filter((m) => m.thread_id === threadId).length === 20,
  );
  times.sort((a, b) => a - b);
  const result = { handovers: times.length, median_ms: +times[10].toFixed(1), worst_ms: +times[19].toFixed(1) };
  writeFileSync(`${output}handover.json`, JSON.stringify({ ...result, times_ms: times.map((t) => +t.toFixed(1)) }, null, 2));
  console.log(`# leader handover: median ${result.median_ms} ms, worst ${result.worst_ms} ms over 20`);
  await context.close();
});

test("a schema upgrade with an old tab open completes, and the old tab is told to reload", async () => {
  const context = await browser.newContext();
  const db = "alice-upgrade";
  const old = await openTab(context, db);
  await old.page.evaluate(async () => {
    const t = await window.client.createThread({ title: "Before the upgrade" });
    await window.client.send(t.id, "kept");
  });
  const newer = await context.newPage();
  await newer.goto(`${server.url}/tests/e2e/sdk.html`);
  // A newer app version opens the database one schema version up.
  const upgraded = await newer.evaluate(
    (db) =>
      new Promise((resolve, reject) => {
        const probe = indexedDB.open(db);
        probe.onsuccess = () => {
          const version = probe.result.version;
          probe.result.close();
          const request = indexedDB.open(db, version + 1);
          request.onblocked = () => reject(new Error("blocked by the old tab"));
          request.onsuccess = () => {
            const stores = [...request.result.objectStoreNames];
            request.result.close();
            resolve({ from: version, to: version + 1, stores });
          };
          request.onerror = () => reject(request.error);
        };
      }),
    db,
  );
  assert.equal(upgraded.to, upgraded.from + 1);
  assert.ok(upgraded.stores.includes("messages"), "data stores kept");
  const notice = await waitUntil("the old tab's version_change event", () => old.page.evaluate(() => window.versionChanged), 10_000);
  assert.equal(notice, true);
  const code = await old.page.evaluate(async () => {
    try {
      await window.client.threads();
      return "no error";
    } catch (e) {
      return e.code;
    }
  });
  assert.equal(code, "version_change", "the old tab refuses work instead of hanging");
  await context.close();
});
