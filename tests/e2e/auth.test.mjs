// Deployable auth and live sockets, in headless Chromium against the real
// server (issue 13 acceptance):
// - a server without --dev-sign-in takes the app's own JWTs (HS256 here);
//   a client with `getToken` keeps sending across token expiries: every
//   message arrives once, getToken was called again, nothing failed; a
//   client with neither token, getToken nor devSignIn is refused;
// - a client whose event socket goes silent (a proxy stops passing bytes,
//   without a close) notices within its heartbeat, reconnects, and gets the
//   next poke.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { createServer, connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startServer, launchBrowser, sdkPage as harnessSdkPage } from "./harness.mjs";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

const sdkPage = (server) => harnessSdkPage(browser, server);

/** An HS256 JWT, as an identity provider would mint it. */
function jwt(claims, secret) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const signed = `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}`;
  return `${signed}.${createHmac("sha256", secret).update(signed).digest("base64url")}`;
}

test("a getToken client keeps sending across token expiries: each message arrives once, nothing fails", async () => {
  const secret = "the app's IdP and the server share this secret";
  const dir = mkdtempSync(join(tmpdir(), "dovecote-jwt-"));
  writeFileSync(join(dir, "secret"), secret);
  // No dev sign-in; no clock leeway, so a 3-second token is dead after 3 s.
  const server = await startServer({
    devSignIn: false,
    args: ["--jwt-hs256-secret-file", join(dir, "secret"), "--jwt-leeway", "0"],
  });
  try {
    const signIn = await fetch(`${server.url}/v1/session`, { method: "POST", body: '{"user":"alice"}' });
    assert.equal(signIn.status, 404, "no dev sign-in on this server");

    const { page, errors } = await sdkPage(server);
    const minted = [];
    await page.exposeFunction("mintToken", () => {
      const now = Math.floor(Date.now() / 1000);
      minted.push(now);
      return jwt({ sub: "alice", iat: now, exp: now + 3 }, secret);
    });
    const result = await page.evaluate(async (url) => {
      const { ChatClient } = window.dovecote;
      const refusal = async (options) => {
        try {
          (await ChatClient.open(options)).close();
          return null;
        } catch (e) {
          return { code: e.code, message: e.message };
        }
      };
      const refused = await refusal({ dbName: "nope", userId: "alice", serverUrl: url });
      const refusedBoth = await refusal({ dbName: "nope", userId: "alice", serverUrl: url, devSignIn: true, token: "t" });
      const badGetToken = await refusal({ dbName: "nope", userId: "alice", serverUrl: url, getToken: "not a function" });

      const client = await ChatClient.open({
        dbName: "alice-jwt",
        userId: "alice",
        serverUrl: url,
        getToken: () => window.mintToken(),
      });
      const failed = [];
      client.onEvent((e) => {
        if (e.type === "status" && e.message.status.state === "failed") failed.push(e.message.status);
      });
      const thread = await client.createThread({ title: "Across expiry" });
      const ids = [];
      // About 9 s of sending, one message every 200 ms: three token lifetimes.
      const end = Date.now() + 9000;
      while (Date.now() < end) {
        ids.push((await client.send(thread.id, `m${ids.length}`)).id);
        await new Promise((r) => setTimeout(r, 200));
      }
      for (let i = 0; i < 300 && (await client.outbox()).length > 0; i++) await new Promise((r) => setTimeout(r, 100));
      const messages = await client.messages(thread.id, { limit: 1000 });
      const outbox = (await client.outbox()).length;
      client.close();
      return { refused, refusedBoth, badGetToken, threadId: thread.id, ids, states: messages.map((m) => m.status.state), outbox, failed };
    }, server.url);

    assert.equal(result.refused?.code, "invalid_input");
    assert.match(result.refused.message, /getToken/);
    assert.match(result.refused.message, /devSignIn/);
    assert.equal(result.refusedBoth?.code, "invalid_input");
    assert.equal(result.badGetToken?.code, "invalid_input");
    assert.ok(result.ids.length >= 30, `${result.ids.length} sent`);
    assert.equal(result.outbox, 0, "everything went out");
    assert.deepEqual(result.failed, [], "nothing failed");
    assert.ok(result.states.every((s) => s === "sent"), JSON.stringify(result.states));
    assert.ok(minted.length >= 3, `getToken was called again as tokens expired (${minted.length} calls)`);

    // The server holds each message exactly once.
    const token = jwt({ sub: "alice", exp: Math.floor(Date.now() / 1000) + 60 }, secret);
    const onServer = [];
    for (let cursor = 0, more = true; more; ) {
      const page = await (await fetch(`${server.url}/v1/pull?cursor=${cursor}&thread=${result.threadId}`, {
        headers: { authorization: `Bearer ${token}` },
      })).json();
      for (const c of page.changes) if (c.type === "message") onServer.push(c.message.id);
      cursor = page.cursor;
      more = page.has_more;
    }
    assert.equal(onServer.length, result.ids.length, "no message lost or doubled");
    assert.deepEqual([...onServer].sort(), [...result.ids].sort());
    assert.deepEqual(errors, []);
  } finally {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

/**
 * A TCP proxy on 127.0.0.1 to `port`. `freezeEvents()` makes every open
 * `/v1/events` connection silent: bytes stop in both directions and neither
 * side sees a close, as when a NAT or a sleeping network drops a flow.
 */
async function startProxy(port) {
  const connections = [];
  const proxy = createServer((client) => {
    const upstream = connect(port, "127.0.0.1");
    const c = { client, upstream, events: false, frozen: false, open: true };
    connections.push(c);
    client.once("data", (first) => {
      c.events = first.toString("latin1").startsWith("GET /v1/events");
      upstream.write(first);
      client.on("data", (chunk) => c.frozen || upstream.write(chunk));
    });
    upstream.on("data", (chunk) => c.frozen || client.write(chunk));
    const close = () => {
      c.open = false;
      if (!c.frozen) {
        client.destroy();
        upstream.destroy();
      }
    };
    client.on("close", () => {
      c.open = false;
      upstream.destroy();
    });
    upstream.on("close", close);
    client.on("error", () => {});
    upstream.on("error", () => {});
  });
  await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${proxy.address().port}`,
    liveEvents: () => connections.filter((c) => c.events && c.open && !c.frozen),
    freezeEvents: () => connections.filter((c) => c.events).forEach((c) => (c.frozen = true)),
    close: async () => {
      for (const c of connections) {
        c.client.destroy();
        c.upstream.destroy();
      }
      await new Promise((resolve) => proxy.close(resolve));
    },
  };
}

async function waitFor(what, condition, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (condition()) return;
    await sleep(20);
  }
  assert.fail(`timed out waiting for ${what}`);
}

test("a client whose socket goes silent reconnects within its heartbeat and gets the next poke", async () => {
  const server = await startServer();
  const proxy = await startProxy(server.port);
  try {
    const alice = await sdkPage(server);
    const bob = await sdkPage(server);
    // Alice syncs through the proxy, with a 400 ms heartbeat; Bob directly.
    const invite = await alice.page.evaluate(async (url) => {
      const { ChatClient } = window.dovecote;
      window.client = await ChatClient.open({ dbName: "alice-silent", userId: "alice", serverUrl: url, devSignIn: true, heartbeatMs: 400 });
      const thread = await window.client.createThread({ title: "Silent socket", members: ["bob"] });
      window.threadId = thread.id;
      for (let i = 0; i < 100 && (await window.client.outbox()).length > 0; i++) await new Promise((r) => setTimeout(r, 100));
      return { threadId: thread.id, code: await window.client.exportThreadInvite(thread.id) };
    }, proxy.url);
    await bob.page.evaluate(async ({ url, code }) => {
      const { ChatClient } = window.dovecote;
      window.client = await ChatClient.open({ dbName: "bob-silent", userId: "bob", serverUrl: url, devSignIn: true });
      await window.client.importThreadInvite(code);
      for (let i = 0; i < 100 && (await window.client.outbox()).length > 0; i++) await new Promise((r) => setTimeout(r, 100));
    }, { url: server.url, code: invite.code });

    await waitFor("alice's event socket", () => proxy.liveEvents().length === 1, 5000);
    await sleep(1000); // several heartbeats: a live socket is not dropped
    assert.equal(proxy.liveEvents().length, 1, "an answering socket stays");
    proxy.freezeEvents();
    const frozenAt = Date.now();
    await waitFor("a new event socket after the old one went silent", () => proxy.liveEvents().length === 1, 5000);
    const noticed = Date.now() - frozenAt;
    await sleep(500); // its Connected pull is done: what comes next, only a poke can tell

    const sent = await bob.page.evaluate(async (threadId) => {
      const m = await window.client.send(threadId, "are you there?");
      return m.id;
    }, invite.threadId);
    const started = Date.now();
    const arrived = await alice.page.evaluate(async ({ threadId, id }) => {
      for (let i = 0; i < 100; i++) {
        const messages = await window.client.messages(threadId);
        const m = messages.find((m) => m.id === id);
        if (m) return m.body;
        await new Promise((r) => setTimeout(r, 50));
      }
      return null;
    }, { threadId: invite.threadId, id: sent });
    const latency = Date.now() - started;
    assert.equal(arrived, "are you there?");
    // Without the poke, alice would pull only on her 60 s poll.
    assert.ok(latency < 5000, `arrived after ${latency} ms`);
    console.log(`silent socket noticed and replaced after ${noticed} ms; next message in ${latency} ms`);
    assert.ok(noticed < 4000, `${noticed} ms`);
    assert.deepEqual([...alice.errors, ...bob.errors], []);
    await alice.page.evaluate(() => window.client.close());
    await bob.page.evaluate(() => window.client.close());
  } finally {
    await proxy.close();
    await server.stop();
  }
});
