// Sync metrics in headless Chromium against the real server (issue 16): the
// round events and syncStats() count what the rounds did, bytes included,
// and the sync event carries the outbox counts and cursor.
import { test } from "node:test";
import assert from "node:assert/strict";
import { startServer, launchBrowser, serverMessages, sdkPage } from "./harness.mjs";

test("round events and syncStats() count sends, pulls and a compressed body", async () => {
  const server = await startServer();
  const browser = await launchBrowser();
  try {
    const { page, errors } = await sdkPage(browser, server);
    const seen = await page.evaluate(async (url) => {
      const { ChatClient } = window.dovecote;
      const alice = await ChatClient.open({ dbName: "alice", userId: "alice", serverUrl: url, devSignIn: true });
      const rounds = [];
      const syncs = [];
      alice.onEvent((e) => {
        if (e.type === "round") rounds.push(e.round);
        if (e.type === "sync") syncs.push(e);
      });
      const until = async (done) => {
        for (let i = 0; i < 200 && !done(); i++) await new Promise((r) => setTimeout(r, 25));
      };
      await until(() => alice.syncStats().roundCount > 0);
      const thread = await alice.createThread({ title: "Metrics" });
      let paste = "";
      for (let n = 0; paste.length < 60 * 1024; n++) paste += `> ${n}: Are we still on for lunch tomorrow?\n`;
      for (const body of ["one", "two", paste]) await alice.send(thread.id, body);
      for (let i = 0; i < 100 && (await alice.outbox()).length > 0; i++) await alice.syncNow();
      await alice.syncNow(); // a round with nothing to push
      const stats = alice.syncStats();
      alice.close();
      // The last round that ended (a poke may have started another since).
      return { rounds, stats, lastSync: syncs.filter((e) => e.state === "idle").at(-1) };
    }, server.url);

    const { rounds, stats, lastSync } = seen;
    assert.deepEqual(stats.rounds, rounds, "syncStats() keeps the rounds the events told");
    assert.equal(stats.roundCount, rounds.length);
    const sum = (key) => rounds.reduce((n, r) => n + r[key], 0);
    assert.equal(sum("pushed"), 4, "the thread and three messages, each once");
    assert.equal(stats.totals.pushed, 4);
    assert.equal(sum("pulled"), 4, "the four changes came back");
    assert.equal(sum("errors"), 0);
    assert.equal(sum("retries"), 0);
    assert.equal(stats.totals.bytesUp, sum("bytesUp"));
    const held = await serverMessages(server.url, "alice");
    const envelopes = held.reduce((n, m) => n + m.body.length, 0);
    assert.ok(sum("bytesUp") > envelopes, `pushed ${sum("bytesUp")} bytes carry ${envelopes} of envelopes`);
    assert.ok(sum("bytesDown") > envelopes, "and pulled them back");
    const sealing = rounds.filter((r) => r.compressionRatio !== null);
    assert.ok(sealing.length >= 1);
    assert.ok(stats.totals.compressionRatio < 0.2, `a 60 KiB paste compressed: ${stats.totals.compressionRatio}`);
    const idle = rounds.at(-1);
    assert.deepEqual([idle.pushed, idle.pulled, idle.bytesUp, idle.compressionRatio], [0, 0, 0, null]);
    assert.ok(idle.durationMs >= 0 && idle.startedAt > 1.7e12);
    assert.equal(lastSync.state, "idle");
    assert.deepEqual([lastSync.pending, lastSync.failed, lastSync.quarantined], [0, 0, 0]);
    assert.equal(lastSync.cursor, 4);
    assert.ok(lastSync.lastSyncedAt >= idle.startedAt);
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    await server.stop();
  }
});
