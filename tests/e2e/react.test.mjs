// The React example (examples/react/, on dovecote/react) as a user meets
// it: built with Vite (production build, the package's files from pkg/),
// served from its own origin, rendered in headless Chromium against the
// real server. Sends a message and watches it go pending -> sent, pages back
// with loadOlder, goes offline and back, and checks that components do not
// re-render when a sync round changes nothing; then the same app in Vite's
// dev server, as `npm run example:react` serves it. Run `scripts/build` first.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { extname, join, normalize } from "node:path";
import { build, createServer as createViteServer } from "vite";
import { startServer, launchBrowser, serverMessages } from "./harness.mjs";

const root = new URL("../../", import.meta.url).pathname;
const PAGE = 10;

let out;
let site;
let server;
let browser;
let context;
let page;
const problems = [];

before(async () => {
  out = mkdtempSync(join(tmpdir(), "dovecote-react-"));
  await build({
    configFile: join(root, "examples/react/vite.config.js"),
    logLevel: "error",
    build: { outDir: out, emptyOutDir: true },
  });
  site = await serveStatic(out);
  server = await startServer();
  browser = await launchBrowser();
  context = await browser.newContext();
  page = await context.newPage();
  page.on("pageerror", (e) => problems.push(e.message));
  // Requests the browser refuses while the test has it offline are expected.
  page.on("console", (m) => m.type() === "error" && !/ERR_INTERNET_DISCONNECTED/.test(m.text()) && problems.push(m.text()));
  page.on("response", (r) => r.status() >= 400 && problems.push(`${r.status()} ${r.url()}`));
});

after(async () => {
  await context?.close();
  await browser?.close();
  await server?.stop();
  await new Promise((resolve) => (site ? site.server.close(resolve) : resolve()));
  if (out) rmSync(out, { recursive: true, force: true });
});

const exampleUrl = (user) => `${site.url}/?user=${user}&limit=${PAGE}&server=${encodeURIComponent(server.url)}`;
const bodies = () => page.$$eval("#messages li.message .body", (els) => els.map((e) => e.textContent));

/** Types `text` into the composer and sends it. */
async function send(text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
  await page.waitForFunction(
    (text) => [...document.querySelectorAll("#messages .body")].some((e) => e.textContent === text),
    text,
  );
}

/** Records every status a message shows, by body text, from now on. */
async function watchStatuses() {
  await page.evaluate(() => {
    window.seen = {};
    const note = (li) => {
      const text = li.querySelector(".body")?.textContent;
      if (!text) return;
      const list = (window.seen[text] ??= []);
      if (list.at(-1) !== li.dataset.status) list.push(li.dataset.status);
    };
    new MutationObserver((records) => {
      for (const r of records) {
        const li = r.target.closest?.("li.message") ?? null;
        if (li) note(li);
        for (const n of r.addedNodes) if (n.matches?.("li.message")) note(n);
      }
    }).observe(document.getElementById("messages"), { subtree: true, childList: true, attributes: true, attributeFilter: ["data-status"] });
  });
}

test("a message sent in the React example shows pending, then sent, and reaches the server", async () => {
  await page.goto(exampleUrl("alice"));
  await page.click("#new-thread");
  await page.waitForSelector("#messages[data-loading=false]");
  await page.waitForSelector("#sync[data-state=online], #sync[data-state=idle]");
  await watchStatuses();
  await send("first from React");
  await page.waitForFunction(() => document.querySelector("#messages li.message")?.dataset.status === "sent", null, {
    timeout: 20_000,
  });
  const seen = await page.evaluate(() => window.seen["first from React"]);
  assert.equal(seen[0], "pending", `statuses shown: ${seen}`);
  assert.equal(seen.at(-1), "sent", `statuses shown: ${seen}`);
  assert.deepEqual(seen.filter((s) => !["pending", "sending", "sent"].includes(s)), []);
  await page.waitForSelector("#outbox[data-count='0']");

  const held = await serverMessages(server.url, "alice");
  assert.equal(held.length, 1, "the server holds the message");
  assert.equal(held[0].sender, "alice");
  assert.deepEqual(problems, []);
});

test("offline: a message waits in the outbox, and goes out when the browser is back online", async () => {
  /**
   * Queued and not sent: pending, sending (an attempt in flight, which the
   * offline network fails), or failed and being retried (a transient failure).
   */
  const waiting = (li) =>
    li.status === "pending" || li.status === "sending" || (li.status === "failed" && li.recoverable === "true");
  const shown = () =>
    page.$$eval("#messages li.message", (els) =>
      els.map((e) => ({ body: e.querySelector(".body").textContent, status: e.dataset.status, recoverable: e.dataset.recoverable })),
    );
  await context.setOffline(true);
  try {
    await page.waitForSelector("#sync[data-state=offline]", { timeout: 10_000 });
    await send("written offline");
    await page.waitForSelector("#outbox[data-count='1']");
    for (let i = 0; i < 4; i++) {
      const message = (await shown()).find((m) => m.body === "written offline");
      assert.ok(waiting(message), `while offline the message is queued: ${JSON.stringify(message)}`);
      await page.waitForTimeout(250);
    }
    assert.equal((await serverMessages(server.url, "alice")).length, 1, "nothing reached the server");
  } finally {
    await context.setOffline(false);
  }
  await page.waitForFunction(
    () => [...document.querySelectorAll("#messages li.message")].at(-1)?.dataset.status === "sent",
    null,
    { timeout: 20_000 },
  );
  await page.waitForSelector("#outbox[data-count='0']");
  assert.notEqual(await page.getAttribute("#sync", "data-state"), "offline");
  const held = await serverMessages(server.url, "alice");
  assert.equal(held.length, 2, "the server got the message written offline");
  assert.deepEqual(problems, []);
});

test("history pages back with loadOlder until hasOlder is false, in order, without duplicates", async () => {
  // 23 more: 25 in all, so pages of 10 are 10, 10 and 5.
  const texts = ["first from React", "written offline"];
  for (let i = 1; i <= 23; i++) {
    texts.push(`message ${i}`);
    await send(`message ${i}`);
  }
  await page.waitForFunction(
    (n) => [...document.querySelectorAll("#messages li.message")].filter((e) => e.dataset.status === "sent").length === n,
    texts.length,
    { timeout: 30_000 },
  );

  // A new mount (a reload) starts from the newest page.
  await page.reload();
  await page.click("#threads button.thread");
  await page.waitForSelector("#messages[data-loading=false]");
  assert.deepEqual(await bodies(), texts.slice(-10));
  assert.equal(await page.getAttribute("#messages", "data-has-older"), "true");

  await page.click("#load-older");
  await page.waitForFunction(() => document.querySelectorAll("#messages li.message").length === 20);
  assert.deepEqual(await bodies(), texts.slice(-20));
  assert.equal(await page.getAttribute("#messages", "data-has-older"), "true");

  await page.click("#load-older");
  await page.waitForFunction(() => document.querySelectorAll("#messages li.message").length === 25);
  assert.deepEqual(await bodies(), texts);
  assert.equal(await page.getAttribute("#messages", "data-has-older"), "false");
  assert.equal(await page.$("#load-older"), null, "no button once everything is shown");

  // A message sent now lands at the end of the paged list.
  await send("after paging");
  assert.deepEqual(await bodies(), [...texts, "after paging"]);
  const held = (await serverMessages(server.url, "alice")).length;
  assert.ok(held >= 25, `the server holds ${held} messages`);
  assert.deepEqual(problems, []);
});

test("a sync round that changes nothing re-renders neither the message list nor the outbox", async () => {
  await page.waitForFunction(() => [...document.querySelectorAll("#messages li.message")].at(-1)?.dataset.status === "sent", null, { timeout: 20_000 });
  await page.waitForSelector("#outbox[data-count='0']");
  await page.waitForTimeout(500); // let the last round's events settle
  const before = await page.evaluate(() => ({ ...document.body.dataset }));
  // Count sync events: the round must have happened for the check to mean anything.
  const states = [];
  await page.exposeFunction("noteSync", (s) => states.push(s));
  await page.evaluate(() => {
    new MutationObserver(() => window.noteSync(document.getElementById("sync").dataset.state)).observe(
      document.getElementById("sync"),
      { attributes: true },
    );
  });
  for (let i = 0; i < 3; i++) {
    await page.click("#sync-now");
    await page.waitForTimeout(300);
  }
  await page.waitForTimeout(500);
  const after = await page.evaluate(() => ({ ...document.body.dataset }));
  assert.ok(states.includes("syncing"), `the header showed the rounds: ${states}`);
  assert.equal(after.rendersMessages, before.rendersMessages, "Messages re-rendered");
  assert.equal(after.rendersOutbox, before.rendersOutbox, "Outbox re-rendered");
  assert.deepEqual(problems, []);
});

test("in Vite's dev server (what npm run example:react serves, StrictMode on) a message goes out without errors", async () => {
  const vite = await createViteServer({
    configFile: join(root, "examples/react/vite.config.js"),
    logLevel: "error",
    server: { host: "127.0.0.1", port: 0 },
  });
  await vite.listen();
  const devContext = await browser.newContext();
  try {
    const dev = await devContext.newPage();
    const devProblems = [];
    dev.on("pageerror", (e) => devProblems.push(e.message));
    dev.on("console", (m) => m.type() === "error" && devProblems.push(m.text()));
    await dev.goto(`${vite.resolvedUrls.local[0]}?user=dora&server=${encodeURIComponent(server.url)}`);
    await dev.click("#new-thread", { timeout: 30_000 });
    await dev.fill("#text", "from the dev server");
    await dev.press("#text", "Enter");
    await dev.waitForFunction(() => document.querySelector("#messages li.message")?.dataset.status === "sent", null, {
      timeout: 20_000,
    });
    assert.deepEqual(
      (await serverMessages(server.url, "dora")).map((m) => m.sender),
      ["dora"],
      "the server holds it",
    );
    assert.deepEqual(devProblems, []);
  } finally {
    await devContext.close();
    await vite.close();
  }
});

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".css": "text/css" };

/** Serves the built example on a loopback port of its own. */
async function serveStatic(dir) {
  const http = createServer((req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname));
    const file = join(dir, path.endsWith("/") ? `${path}index.html` : path);
    try {
      const bytes = readFileSync(file);
      res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream" });
      res.end(bytes);
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise((resolve) => http.listen(0, "127.0.0.1", resolve));
  return { server: http, url: `http://127.0.0.1:${http.address().port}` };
}
