// Envelope v2 against the real server, in headless Chromium: what the server
// stores of a body is a size bucket (PADMÉ, docs/security.md §1), never the
// exact length, and a compressible 60 KiB body is stored under 10 KiB.
import { test } from "node:test";
import assert from "node:assert/strict";
import { startServer, launchBrowser, serverMessages, sdkPage } from "./harness.mjs";

/** PADMÉ with a 32-byte floor, written again here from the paper, not from the Rust. */
function bucket(len) {
  const l = Math.max(len, 32);
  const e = Math.floor(Math.log2(l));
  const s = Math.floor(Math.log2(e)) + 1;
  const mask = 2 ** (e - s) - 1;
  return Math.ceil(l / (mask + 1)) * (mask + 1);
}
/** Header (21) and tag (16) around the padded inner. */
const OVERHEAD = 37;

test("the server stores each body as a padded bucket, large compressible ones compressed", async () => {
  const server = await startServer();
  const browser = await launchBrowser();
  try {
    const { page, errors } = await sdkPage(browser, server);
    const sent = await page.evaluate(async (url) => {
      const { ChatClient } = window.dovecote;
      const alice = await ChatClient.open({ dbName: "alice", userId: "alice", serverUrl: url, devSignIn: true });
      const thread = await alice.createThread({ title: "Sizes" });
      // Random letters: LZ4 (no entropy coding) cannot shrink them.
      const noise = (n) => Array.from(crypto.getRandomValues(new Uint8Array(n)), (b) => String.fromCharCode(97 + (b % 26))).join("");
      let paste = "";
      for (let n = 0; paste.length < 60 * 1024; n++) paste += `> ${n}: Are we still on for lunch tomorrow? I can book the place by the river at 12:30.\n`;
      const bodies = ["k", "ok", "see you at 8", noise(27), noise(28), noise(100), noise(101), noise(1000), noise(5000), noise(20000), paste];
      for (const body of bodies) await alice.send(thread.id, body);
      for (let i = 0; i < 100 && (await alice.outbox()).length > 0; i++) {
        await alice.syncNow();
        await new Promise((r) => setTimeout(r, 50));
      }
      const mine = await alice.messages(thread.id, { limit: 100 });
      alice.close();
      return { lengths: bodies.map((b) => new TextEncoder().encode(b).length), readBack: mine.map((m) => m.body).join("") === bodies.join("") };
    }, server.url);
    assert.ok(sent.readBack, "alice reads back every body");

    const held = await serverMessages(server.url, "alice");
    assert.equal(held.length, sent.lengths.length);
    const stored = held.map((m) => Buffer.from(m.body, "base64url"));
    for (const [i, bytes] of stored.entries()) {
      assert.equal(bytes[0], 2, "envelope v2");
      const inner = bytes.length - OVERHEAD;
      assert.equal(bucket(inner), inner, `message ${i}: ${inner} is not a bucket`);
    }
    const sizes = stored.map((b) => b.length);
    // Bodies below 10 KiB: the bucket of 5 + the length, exactly.
    sent.lengths.slice(0, -2).forEach((len, i) => assert.equal(sizes[i], OVERHEAD + bucket(5 + len), `body of ${len} bytes`));
    assert.equal(new Set(sizes.slice(0, 4)).size, 1, "1, 2, 12 and 27 bytes of text look alike");
    assert.equal(sizes[5], sizes[6], "100 and 101 bytes look alike");
    assert.ok(sizes.at(-2) >= 20000, "random text is not compressed");
    assert.ok(sizes.at(-1) < 10 * 1024, `60 KiB paste stored as ${sizes.at(-1)} bytes`);
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    await server.stop();
  }
});
