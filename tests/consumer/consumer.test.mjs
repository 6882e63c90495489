// The npm package as a user meets it: `npm pack` the built pkg/, install the
// tarball into a fresh app outside this repo, load that app's page (an
// import map points the bare `dovecote` at node_modules, no bundler) in
// headless Chromium from its own origin, and send a message through the real
// server. Run `scripts/build` first (`npm test` does).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { extname, join, normalize } from "node:path";
import { startServer, launchBrowser } from "../e2e/harness.mjs";

const root = new URL("../../", import.meta.url).pathname;
const fixture = new URL("./app/", import.meta.url).pathname;

// Exactly what a user gets: the glue (with the DovecoteError class), its
// types, the wasm and its types, the React hooks (plain JS and types), the
// README, the licences and the manifest. Nothing from src/, tests or the dev project.
const EXPECTED_FILES = [
  "LICENSE-APACHE",
  "LICENSE-MIT",
  "README.md",
  "dovecote.d.ts",
  "dovecote.js",
  "dovecote_bg.wasm",
  "dovecote_bg.wasm.d.ts",
  "package.json",
  "react.d.ts",
  "react.js",
];

let work;
let tarball;
let packed;
let app;
let site;
let server;
let browser;

const npm = (args, cwd) => execFileSync("npm", args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });

before(async () => {
  if (!existsSync(join(root, "pkg/package.json"))) throw new Error("pkg/package.json is missing: run scripts/build first");
  work = mkdtempSync(join(tmpdir(), "dovecote-consumer-"));
  [packed] = JSON.parse(npm(["pack", join(root, "pkg"), "--pack-destination", work, "--json"], root));
  tarball = join(work, packed.filename);

  app = join(work, "app");
  cpSync(fixture, app, { recursive: true });
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "consumer-app", private: true, type: "module" }));
  // A local tarball without dependencies needs no registry.
  npm(["install", tarball, "--offline", "--no-audit", "--no-fund", "--loglevel=error"], app);

  site = await serveStatic(app);
  server = await startServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  await new Promise((resolve) => (site ? site.server.close(resolve) : resolve()));
  if (work) rmSync(work, { recursive: true, force: true });
});

test("the tarball holds only what a user needs, with exports a resolver follows", () => {
  assert.equal(packed.name, "dovecote");
  assert.deepEqual(packed.files.map((f) => f.path).sort(), EXPECTED_FILES);

  const installed = JSON.parse(readFileSync(join(app, "node_modules/dovecote/package.json"), "utf8"));
  assert.equal(installed.type, "module");
  assert.equal(installed.version, packed.version);
  const manifest = JSON.parse(readFileSync(join(app, "package.json"), "utf8"));
  assert.match(manifest.dependencies.dovecote, /^file:.*\.tgz$/, "installed from the tarball, not linked to the source tree");

  // Node's resolver follows `exports` as bundlers do: the entry point and
  // the wasm subpath resolve inside the installed copy.
  const resolve = (specifier) =>
    execFileSync(process.execPath, ["--input-type=module", "-e", `console.log(import.meta.resolve(${JSON.stringify(specifier)}))`], {
      cwd: app,
      encoding: "utf8",
    }).trim();
  assert.equal(resolve("dovecote"), `file://${app}/node_modules/dovecote/dovecote.js`);
  assert.equal(resolve("dovecote/dovecote_bg.wasm"), `file://${app}/node_modules/dovecote/dovecote_bg.wasm`);
  assert.equal(resolve("dovecote/react"), `file://${app}/node_modules/dovecote/react.js`);
  // React is an optional peer: installing the package did not bring it.
  assert.equal(existsSync(join(app, "node_modules/react")), false);
});

test("a page importing the installed package stores a sent message locally as pending", async () => {
  const { context, page, problems, wasmFetches } = await openPage(`${site.url}/?db=consumer-local&user=alice&text=local+only`);
  await page.waitForFunction(() => document.body.dataset.message || document.getElementById("error").textContent);
  assert.equal(await page.textContent("#error"), "");
  assert.equal(await page.textContent("#body"), "local only");
  assert.equal(await page.textContent("#status"), "pending");
  // The error the wasm threw is a DovecoteError to the package's exports.
  assert.deepEqual(JSON.parse(await page.getAttribute("body", "data-refused")), {
    code: "invalid_input",
    instance: true,
    guard: true,
    guardCode: true,
    otherCode: false,
    plainError: false,
  });
  assert.deepEqual(wasmFetches, [`${site.url}/node_modules/dovecote/dovecote_bg.wasm`]);
  assert.deepEqual(problems, []);
  await context.close();
});

test("a message sent from the installed package reaches the real server, encrypted, and turns sent", async () => {
  const text = "Hello through the server from the npm package";
  const url = `${site.url}/?db=consumer-sync&user=alice&server=${encodeURIComponent(server.url)}&text=${encodeURIComponent(text)}`;
  const { context, page, problems } = await openPage(url);
  await page.waitForFunction(() => document.body.dataset.message || document.getElementById("error").textContent);
  assert.equal(await page.textContent("#error"), "");
  // On a timeout, the assertion below says which status the message is stuck in.
  await page
    .waitForFunction(() => ["sent", "failed"].includes(document.getElementById("status").textContent), null, {
      timeout: 20_000,
    })
    .catch(() => {});
  assert.equal(await page.textContent("#status"), "sent");
  assert.match(await page.getAttribute("body", "data-seq"), /^[1-9]\d*$/);
  const threadId = await page.getAttribute("body", "data-thread");
  const messageId = await page.getAttribute("body", "data-message");

  // Bob, the other member, sees it on the server: sent by alice, as
  // ciphertext that does not contain the text.
  const session = await fetchJson(`${server.url}/v1/session`, { method: "POST", body: JSON.stringify({ user: "bob" }) });
  const pulled = await fetchJson(`${server.url}/v1/pull?cursor=0`, { headers: { authorization: `Bearer ${session.token}` } });
  const thread = pulled.changes.find((c) => c.type === "thread" && c.thread.id === threadId)?.thread;
  const message = pulled.changes.find((c) => c.type === "message" && c.message.id === messageId)?.message;
  assert.ok(thread, "bob pulls the thread");
  assert.deepEqual([...thread.members].sort(), ["alice", "bob"]);
  assert.ok(message, "bob pulls the message");
  assert.equal(message.sender, "alice");
  assert.equal(message.thread_id, threadId);
  const sealed = Buffer.from(message.body, "base64url");
  assert.ok(sealed.length > text.length, "the envelope carries the text and a tag");
  assert.equal(sealed.indexOf(text), -1, "the server holds no plaintext");
  assert.equal(Buffer.from(thread.title, "base64url").indexOf("From the npm package"), -1, "nor the title");
  assert.deepEqual(problems, []);
  await context.close();
});

/** Opens `url` in a fresh context; collects page errors, console errors and wasm fetches. */
async function openPage(url) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const problems = [];
  const wasmFetches = [];
  page.on("pageerror", (e) => problems.push(e.message));
  page.on("console", (m) => m.type() === "error" && problems.push(m.text()));
  page.on("request", (r) => r.url().endsWith(".wasm") && wasmFetches.push(r.url()));
  await page.goto(url);
  return { context, page, problems, wasmFetches };
}

async function fetchJson(url, init = {}) {
  const response = await fetch(url, { ...init, headers: { "content-type": "application/json", ...init.headers } });
  assert.equal(response.status, 200, `${init.method ?? "GET"} ${url}: ${response.status}`);
  return response.json();
}

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json" };

/** Serves `dir` on a loopback port of its own: the app's origin is not the sync server's. */
async function serveStatic(dir) {
  const server = createServer((req, res) => {
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
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { server, url: `http://127.0.0.1:${server.address().port}` };
}
