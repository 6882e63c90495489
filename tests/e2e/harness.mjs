// Shared pieces of the end-to-end tests: start the real server on a free
// loopback port (a temporary SQLite file, or a PostgreSQL database), and a
// headless Debian Chromium.
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const root = new URL("../../", import.meta.url).pathname;

/**
 * Starts dovecote-server serving the repo root; resolves with
 * { url, port, dir, child, stop }. `dir` (a data folder to reuse) and `port`
 * let a test restart the same server: `stop({ keepData: true })`, then start
 * again with both. `db` (a postgres:// URL) replaces the SQLite file in `dir`.
 */
export async function startServer({ dir, port = 0, args = [], devSignIn = true, db } = {}) {
  dir ??= mkdtempSync(join(tmpdir(), "dovecote-e2e-"));
  const target = process.env.CARGO_TARGET_DIR ?? join(root, "target");
  const bin = process.env.DOVECOTE_SERVER_BIN ?? join(target, "debug/dovecote-server");
  const addr = `127.0.0.1:${port}`;
  // --dev-sign-in (loopback only): the pages sign in by name; a JWT test passes its own flags too.
  const base = ["--db", db ?? join(dir, "db.sqlite3"), "--addr", addr, "--static", root];
  const auth = devSignIn ? ["--dev-sign-in", "--ip-rate-limit", "100000"] : [];
  const child = spawn(bin, [...base, ...auth, ...args], {
    stdio: ["ignore", "pipe", process.env.DOVECOTE_SERVER_LOG ? "inherit" : "ignore"],
  });
  // A test file that ends by process.exit() (engines.test.mjs, when a
  // browser's clean-up hangs) must not leave its server running.
  const reap = () => child.kill("SIGKILL");
  process.on("exit", reap);
  child.once("exit", () => process.off("exit", reap));
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("server did not start in 10 s")), 10_000);
    child.once("exit", (code) => reject(new Error(`server exited with ${code}`)));
    child.stdout.on("data", (chunk) => {
      const match = /listening on (http:\/\/\S+)/.exec(chunk.toString());
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
  });
  const stop = async ({ keepData = false, signal = "SIGTERM" } = {}) => {
    child.kill(signal);
    await new Promise((resolve) => (child.exitCode !== null ? resolve() : child.once("exit", resolve)));
    if (!keepData) rmSync(dir, { recursive: true, force: true });
  };
  return { url, port: Number(new URL(url).port), dir, child, stop };
}

/** Debian's Chromium, headless, with no network of its own. */
export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
}

/** Every message the server holds for `user` (dev sign-in, whole feed), in server order. */
export async function serverMessages(url, user) {
  const { token } = await fetch(`${url}/v1/session`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user }),
  }).then((r) => r.json());
  const messages = [];
  for (let cursor = 0, more = true; more; ) {
    const page = await fetch(`${url}/v1/pull?cursor=${cursor}&limit=1000`, {
      headers: { authorization: `Bearer ${token}` },
    }).then((r) => r.json());
    messages.push(...page.changes.filter((c) => c.type === "message").map((c) => c.message));
    cursor = page.cursor;
    more = page.has_more;
  }
  return messages.sort((a, b) => a.seq - b.seq);
}

/** A fresh context and page of `browser` with the SDK test page loaded from `server`; `errors` collects uncaught page errors. */
export async function sdkPage(browser, server) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`${server.url}/tests/e2e/sdk.html`);
  await page.waitForSelector("body[data-ready=true]", { state: "attached" });
  return { page, errors };
}

/**
 * A fresh database on a real PostgreSQL: the cluster of `DOVECOTE_TEST_PG`
 * (scripts/test starts one for the run), or else a private one that
 * scripts/pg starts for this process and stops when it exits. Its URL.
 */
export function postgresDatabase() {
  const pg = join(root, "scripts/pg");
  const admin =
    process.env.DOVECOTE_TEST_PG ??
    (process.env.DOVECOTE_TEST_PG = execFileSync("bash", [pg, "start", "--until-exit-of", `${process.pid}`])
      .toString()
      .trim()
      .split("\n")
      .at(-1));
  const name = `e2e_${process.pid}_${++databases}`;
  return execFileSync("bash", [pg, "db", admin, name]).toString().trim();
}
let databases = 0;
