// Sync in headless Chromium against the real server (issue 5 acceptance):
// 500 messages queued while the server is down survive a reopen and arrive
// exactly once, in order; a second client sees them by pull and poke; a
// request the server refuses for good fails one message alone; a lost ack
// is retried without a duplicate.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, launchBrowser, serverMessages, sdkPage as harnessSdkPage } from "./harness.mjs";

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

/** A fresh page with the SDK loaded from `server`. */
const sdkPage = (server) => harnessSdkPage(browser, server);

test("500 messages sent while the server is down arrive once, in order, after a reopen; a second client sees them", async () => {
  let server = await startServer();
  const { url, port, dir } = server;
  // Whatever fails, the server goes (a live child would keep node --test waiting).
  let stopped = false;
  try {
    await outage(server, url, port, dir, (s) => (server = s), () => (stopped = true));
  } finally {
    if (!stopped) await server.stop();
  }
});

async function outage(server, url, port, dir, restarted, stopping) {
  const { page, errors } = await sdkPage(server);

  // Alice makes a thread and an invite while online; Bob's device will join with it.
  const invite = await page.evaluate(async (url) => {
    const { ChatClient } = window.dovecote;
    const alice = await ChatClient.open({ dbName: "alice", userId: "alice", serverUrl: url, devSignIn: true });
    const thread = await alice.createThread({ title: "Outage" });
    window.threadId = thread.id;
    const invite = await alice.exportThreadInvite(thread.id);
    alice.close();
    return invite;
  }, url);

  await server.stop({ keepData: true });
  restarted({ stop: async () => {} }); // down: nothing to stop

  const queued = await page.evaluate(async (url) => {
    const { ChatClient } = window.dovecote;
    const alice = await ChatClient.open({ dbName: "alice", userId: "alice", serverUrl: url, devSignIn: true });
    for (let n = 0; n < 500; n++) await alice.send(window.threadId, `m${n}`);
    const page = await alice.messages(window.threadId, { limit: 1000 });
    const outbox = await alice.outbox();
    alice.close();
    return { count: page.length, unsent: page.filter((m) => m.status.state !== "sent").length, outbox: outbox.length };
  }, url);
  assert.deepEqual(queued, { count: 500, unsent: 500, outbox: 500 });

  // Reopen (a reload's worth: a new client on the same database), then the server comes back.
  await page.evaluate(async (url) => {
    const { ChatClient } = window.dovecote;
    window.alice = await ChatClient.open({ dbName: "alice", userId: "alice", serverUrl: url, devSignIn: true });
  }, url);
  server = await startServer({ dir, port });
  restarted(server);
  try {
    const local = await page.evaluate(async () => {
      const alice = window.alice;
      await alice.syncNow(); // the loop would get there on its own backoff; don't wait for it
      for (let i = 0; i < 600 && (await alice.outbox()).length > 0; i++) await new Promise((r) => setTimeout(r, 100));
      const page = await alice.messages(window.threadId, { limit: 1000 });
      return page.map((m) => ({ body: m.body, state: m.status.state, seq: m.seq }));
    });
    assert.equal(local.length, 500);
    assert.deepEqual(local.map((m) => m.body), Array.from({ length: 500 }, (_, n) => `m${n}`));
    assert.ok(local.every((m) => m.state === "sent"), "every local status reads sent");
    assert.ok(local.every((m, i) => i === 0 || m.seq > local[i - 1].seq), "server order = send order");

    const held = await serverMessages(server.url, "alice");
    assert.equal(held.length, 500, "the server holds each message once");
    assert.equal(new Set(held.map((m) => m.id)).size, 500);

    // Bob, another database in the same browser, joins by the invite and sees all 500.
    const bob = await page.evaluate(async ({ url, invite }) => {
      const { ChatClient } = window.dovecote;
      const bob = await ChatClient.open({ dbName: "bob", userId: "bob", serverUrl: url, devSignIn: true });
      window.bob = bob;
      const { threadId } = await bob.importThreadInvite(`#k=${invite}`);
      for (let i = 0; i < 100; i++) {
        await bob.syncNow();
        if ((await bob.messages(threadId, { limit: 1000 })).length === 500) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      const page = await bob.messages(threadId, { limit: 1000 });
      return { bodies: page.map((m) => m.body), threads: (await bob.threads()).map((t) => t.title) };
    }, { url, invite });
    assert.deepEqual(bob.threads, ["Outage"]);
    assert.deepEqual(bob.bodies, Array.from({ length: 500 }, (_, n) => `m${n}`));

    // A new message reaches Bob by the poke alone: no syncNow on his side.
    const poked = await page.evaluate(async () => {
      const seen = new Promise((resolve) => {
        const stop = window.bob.subscribe(window.threadId, (change) => {
          const m = change.messages.find((m) => m.body === "after the outage");
          if (m) {
            stop();
            resolve(m.status.state);
          }
        });
      });
      await window.alice.send(window.threadId, "after the outage");
      const timeout = new Promise((resolve) => setTimeout(() => resolve("timeout"), 15_000));
      return Promise.race([seen, timeout]);
    });
    assert.equal(poked, "sent");
    assert.deepEqual(errors, []);
  } finally {
    await page.evaluate(() => {
      window.alice?.close();
      window.bob?.close();
    });
    stopping();
    await server.stop();
  }
}

test("a push the server refuses for good fails that message alone; retry and cancel work", async () => {
  // Small enough that one long message makes a request the server refuses (413).
  const server = await startServer({ args: ["--body-limit", "8192"] });
  const { page, errors } = await sdkPage(server);
  try {
    const result = await page.evaluate(async (url) => {
      const { ChatClient } = window.dovecote;
      const alice = await ChatClient.open({ dbName: "alice-413", userId: "alice", serverUrl: url, devSignIn: true });
      const thread = await alice.createThread({ title: "Limits" });
      await alice.syncNow();
      await alice.send(thread.id, "before");
      const big = await alice.send(thread.id, "x".repeat(10_000));
      await alice.send(thread.id, "after");
      await alice.syncNow();
      const states = async () =>
        (await alice.messages(thread.id)).map((m) => [m.body?.slice(0, 6), m.status.state, m.status.code ?? null]);
      const first = await states();
      const outbox = await alice.outbox();
      await alice.retry(big.id);
      await alice.syncNow();
      const retried = await states();
      await alice.cancel(big.id);
      const cancelled = await states();
      const empty = (await alice.outbox()).length;
      let refused = null;
      try {
        await alice.cancel(big.id);
      } catch (e) {
        refused = `${e.name}:${e.code}`;
      }
      alice.close();
      return { first, outbox, retried, cancelled, empty, refused };
    }, server.url);
    assert.deepEqual(result.first, [
      ["before", "sent", null],
      ["after", "sent", null],
      ["xxxxxx", "failed", "too_large"],
    ]);
    assert.equal(result.outbox.length, 1);
    assert.equal(result.outbox[0].state, "failed");
    assert.equal(result.outbox[0].error.code, "too_large");
    assert.deepEqual(result.retried[2], ["xxxxxx", "failed", "too_large"]);
    assert.deepEqual(result.cancelled[2], ["xxxxxx", "cancelled", null]);
    assert.equal(result.empty, 0);
    assert.equal(result.refused, "DovecoteError:not_queued");
    const held = await serverMessages(server.url, "alice");
    assert.deepEqual(held.map((m) => m.id).length, 2);
    assert.deepEqual(errors, []);
  } finally {
    await server.stop();
  }
});

test("an ack lost after the server applied the push is retried and the server holds the message once", async () => {
  const server = await startServer();
  const { page, errors } = await sdkPage(server);
  try {
    await page.evaluate(async (url) => {
      const { ChatClient } = window.dovecote;
      window.alice = await ChatClient.open({ dbName: "alice-ack", userId: "alice", serverUrl: url, devSignIn: true });
      window.thread = await window.alice.createThread({ title: "Acks" });
      await window.alice.syncNow();
    }, server.url);

    // The next push reaches the server, but its answer never reaches the page.
    let lost = 0;
    await page.route("**/v1/push", async (route) => {
      if (lost === 0) {
        lost++;
        await route.fetch(); // the server applies it
        await route.abort("connectionreset");
      } else {
        await route.continue();
      }
    });
    const afterLoss = await page.evaluate(async () => {
      window.syncEvents = [];
      window.alice.onEvent((e) => e.type === "sync" && window.syncEvents.push(e));
      await window.alice.send(window.thread.id, "exactly once");
      await window.alice.syncNow();
      return window.syncEvents.map((e) => `${e.state}:${e.error?.code ?? ""}`);
    });
    assert.equal(lost, 1);
    assert.ok(afterLoss.includes("offline:network"), `the lost answer shows as offline: ${afterLoss}`);

    // The retry (by the background loop or this syncNow) asks again under the same id.
    const final = await page.evaluate(async () => {
      for (let i = 0; i < 100 && (await window.alice.outbox()).length > 0; i++) {
        await window.alice.syncNow();
        await new Promise((r) => setTimeout(r, 50));
      }
      const page = await window.alice.messages(window.thread.id);
      return { page: page.map((m) => [m.body, m.status.state]), outbox: (await window.alice.outbox()).length };
    });
    assert.deepEqual(final, { page: [["exactly once", "sent"]], outbox: 0 });
    const held = await serverMessages(server.url, "alice");
    assert.equal(held.length, 1, "one copy on the server");
    assert.deepEqual(errors, []);
  } finally {
    await page.evaluate(() => window.alice?.close());
    await server.stop();
  }
});
