// Two server instances on one real PostgreSQL (issue 15): Alice's browser
// talks to instance A, Bob's to instance B. Messages and pokes flow both
// ways across instances; A is killed with SIGKILL while Alice's messages
// stream out and started again: every message acked before the kill is
// there, and nothing is applied twice.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, launchBrowser, serverMessages, sdkPage, postgresDatabase } from "./harness.mjs";

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

const COUNT = 60;

test("two instances on one PostgreSQL: pokes cross instances; SIGKILL of one loses no acked message and applies none twice", async () => {
  const db = postgresDatabase();
  const servers = { a: await startServer({ db }), b: await startServer({ db }) };
  try {
    await acrossInstances(servers, db);
  } finally {
    await Promise.all(Object.values(servers).map((s) => s.stop()));
  }
});

async function acrossInstances(servers, db) {
  const alice = await sdkPage(browser, servers.a);
  const bob = await sdkPage(browser, servers.b);
  const invite = await alice.page.evaluate(async (url) => {
    const { ChatClient } = window.dovecote;
    window.client = await ChatClient.open({ dbName: "alice", userId: "alice", serverUrl: url, devSignIn: true });
    window.thread = await window.client.createThread({ title: "Two instances" });
    return window.client.exportThreadInvite(window.thread.id);
  }, servers.a.url);
  await bob.page.evaluate(
    async ({ url, invite }) => {
      const { ChatClient } = window.dovecote;
      window.client = await ChatClient.open({ dbName: "bob", userId: "bob", serverUrl: url, devSignIn: true });
      window.thread = { id: (await window.client.importThreadInvite(`#k=${invite}`)).threadId };
      await window.client.syncNow();
    },
    { url: servers.b.url, invite },
  );

  // Each side sees the other's message by the poke alone (no syncNow on the
  // receiving side): the push lands on one instance, the socket is on the other.
  const pokedThrough = async (from, to, body) => {
    const seen = to.page.evaluate(
      (body) =>
        new Promise((resolve) => {
          const stop = window.client.subscribe(window.thread.id, (change) => {
            const m = change.messages.find((m) => m.body === body);
            if (m) {
              stop();
              resolve(m.status.state);
            }
          });
          setTimeout(() => resolve("timeout"), 15_000);
        }),
      body,
    );
    await from.page.evaluate((body) => window.client.send(window.thread.id, body), body);
    return seen;
  };
  assert.equal(await pokedThrough(alice, bob, "hello from A"), "sent", "A's push pokes B's socket");
  assert.equal(await pokedThrough(bob, alice, "hello from B"), "sent", "B's push pokes A's socket");

  // Alice streams messages, one every 20 ms; once some are acked, A dies.
  await alice.page.evaluate((count) => {
    window.streamed = (async () => {
      for (let n = 0; n < count; n++) {
        await window.client.send(window.thread.id, `m${n}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
  }, COUNT);
  const sentIds = () =>
    alice.page.evaluate(async () =>
      (await window.client.messages(window.thread.id, { limit: 1000 }))
        .filter((m) => m.body?.startsWith("m") && m.status.state === "sent")
        .map((m) => m.id),
    );
  for (let i = 0; i < 300 && (await sentIds()).length < 10; i++) await new Promise((r) => setTimeout(r, 20));
  const { port } = servers.a;
  await servers.a.stop({ keepData: true, signal: "SIGKILL" });
  const acked = await sentIds();
  console.log(`${acked.length} of ${COUNT} acked when A was killed`);
  assert.ok(acked.length >= 10 && acked.length < COUNT, `killed mid-stream: ${acked.length} of ${COUNT} acked`);

  servers.a = await startServer({ db, port });
  const final = await alice.page.evaluate(async () => {
    await window.streamed;
    for (let i = 0; i < 300 && (await window.client.outbox()).length > 0; i++) {
      await window.client.syncNow();
      await new Promise((r) => setTimeout(r, 100));
    }
    return { outbox: (await window.client.outbox()).length };
  });
  assert.deepEqual(final, { outbox: 0 });

  // The server's view, read through B: each message once, acked ones all
  // there, in Alice's order.
  const held = (await serverMessages(servers.b.url, "alice")).filter((m) => m.sender === "alice");
  const ids = held.map((m) => m.id);
  assert.equal(new Set(ids).size, ids.length, "no message applied twice");
  assert.equal(held.length, COUNT + 1, "hello from A and every streamed message");
  for (const id of acked) assert.ok(ids.includes(id), `acked ${id} is on the server`);

  // Bob, on B, ends with every message in Alice's order.
  const bodies = await bob.page.evaluate(async (count) => {
    for (let i = 0; i < 100; i++) {
      const page = await window.client.messages(window.thread.id, { limit: 1000 });
      if (page.length === count + 2) break;
      await window.client.syncNow();
      await new Promise((r) => setTimeout(r, 100));
    }
    return (await window.client.messages(window.thread.id, { limit: 1000 })).map((m) => m.body);
  }, COUNT);
  assert.deepEqual(bodies.filter((b) => /^m\d+$/.test(b)), Array.from({ length: COUNT }, (_, n) => `m${n}`));
  assert.deepEqual(alice.errors, []);
  assert.deepEqual(bob.errors, []);
  await alice.page.evaluate(() => window.client.close());
  await bob.page.evaluate(() => window.client.close());
}
