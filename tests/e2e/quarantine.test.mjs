// One bad change cannot stall sync (issue 16), in headless Chromium against
// the real server: Bob's first pull page is altered in flight, one message
// change with a field of the wrong JSON type, one of a type this build does
// not know, one with a body of random bytes, between valid ones. The valid
// ones are applied, the random body shows as undecryptable, the two others
// are in quarantine() with their reasons, the cursor moved past them, and
// later messages keep arriving, each once.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, launchBrowser, sdkPage } from "./harness.mjs";

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

test("a pulled page with bad changes: the rest applies, the bad ones are quarantined, sync goes on", async () => {
  const server = await startServer();
  try {
    const alice = await sdkPage(browser, server);
    const invite = await alice.page.evaluate(async (url) => {
      const { ChatClient } = window.dovecote;
      window.client = await ChatClient.open({ dbName: "alice-q", userId: "alice", serverUrl: url, devSignIn: true });
      window.thread = await window.client.createThread({ title: "Quarantine" });
      for (let n = 0; n < 6; n++) await window.client.send(window.thread.id, `v${n}`);
      for (let i = 0; i < 100 && (await window.client.outbox()).length > 0; i++) await window.client.syncNow();
      return window.client.exportThreadInvite(window.thread.id);
    }, server.url);

    const bob = await sdkPage(browser, server);
    // The first page with messages in it is altered; every later one passes.
    let altered = null;
    await bob.page.route("**/v1/pull*", async (route) => {
      const response = await route.fetch();
      const page = await response.json();
      const messages = page.changes.filter((c) => c.type === "message");
      if (altered || messages.length < 6) return route.fulfill({ response, json: page });
      messages[1].message.client_ts = "soon"; // a field of the wrong JSON type
      messages[2].message.body = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJ"; // random bytes as a body
      messages[3].type = "reaction"; // a type this build does not know
      altered = { wrongType: messages[1].seq, random: messages[2].seq, unknown: messages[3].seq, cursor: page.cursor };
      return route.fulfill({ response, json: page });
    });
    const seen = await bob.page.evaluate(async ({ url, invite }) => {
      const { ChatClient } = window.dovecote;
      window.client = await ChatClient.open({ dbName: "bob-q", userId: "bob", serverUrl: url, devSignIn: true });
      window.events = [];
      window.client.onEvent((e) => window.events.push(e));
      window.thread = { id: (await window.client.importThreadInvite(`#k=${invite}`)).threadId };
      for (let i = 0; i < 50 && (await window.client.messages(window.thread.id)).length < 4; i++) {
        await window.client.syncNow();
        await new Promise((r) => setTimeout(r, 50));
      }
      const shown = (await window.client.messages(window.thread.id)).map((m) => m.body ?? `undecryptable:${m.undecryptable}`);
      const quarantine = await window.client.quarantine();
      return {
        shown,
        quarantine: quarantine.entries.map((e) => ({ seq: e.seq, reason: e.reason })),
        events: window.events.filter((e) => e.type === "quarantined").map((e) => e.count),
      };
    }, { url: server.url, invite });
    assert.ok(altered, "a page was altered");
    // Random bytes read as an envelope of some other version, or tampered.
    assert.deepEqual(seen.shown.map((b) => b.replace(/^undecryptable:(unknown_version|tampered)$/, "undecryptable")), [
      "v0",
      "undecryptable",
      "v4",
      "v5",
    ]);
    assert.deepEqual(
      seen.quarantine.map((q) => q.seq),
      [altered.wrongType, altered.unknown],
      JSON.stringify(seen.quarantine),
    );
    assert.match(seen.quarantine[0].reason, /client_ts|invalid type/);
    assert.match(seen.quarantine[1].reason, /reaction|unknown variant/);
    assert.ok(seen.events.length > 0, "a quarantined event");

    // Sync goes on: a later message arrives, once.
    await alice.page.evaluate(() => window.client.send(window.thread.id, "after"));
    const later = await bob.page.evaluate(async () => {
      for (let i = 0; i < 100; i++) {
        const bodies = (await window.client.messages(window.thread.id)).map((m) => m.body);
        if (bodies.includes("after")) return bodies;
        await window.client.syncNow();
        await new Promise((r) => setTimeout(r, 50));
      }
      return (await window.client.messages(window.thread.id)).map((m) => m.body);
    });
    assert.deepEqual(later, ["v0", null, "v4", "v5", "after"]);
    assert.deepEqual(alice.errors, []);
    assert.deepEqual(bob.errors, []);
    await bob.page.unrouteAll({ behavior: "ignoreErrors" });
    await alice.page.evaluate(() => window.client.close());
    await bob.page.evaluate(() => window.client.close());
  } finally {
    await server.stop();
  }
});
