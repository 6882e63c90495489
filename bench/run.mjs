// Runs the benchmarks in headless Debian Chromium and writes
// bench/results/results.{md,json}; prints the table.
//
//   node bench/run.mjs [workload ...]          (default: all)
//   node bench/run.mjs --profile <workload>    CPU profile of one workload
//
// The sync workloads (drain, pull10k) also need the reference server: this
// runner builds it (`cargo build --release -p dovecote-server`, in
// $CARGO_TARGET_DIR or target/) and lets the page start and stop copies of
// it, each on a free loopback port with a new SQLite file in a temporary
// directory (window.benchServer; see startSyncServer below).
//
// The pages are served from the repo root on 127.0.0.1, cross-origin
// isolated (COOP + COEP), which gives performance.now() 5 µs resolution
// instead of 100 µs. Chromium runs on an on-disk profile in a temporary
// directory: Playwright's default contexts are off the record, and there
// IndexedDB lives in memory, which would flatter every store alike.
// Each workload runs in a new page; within it, the contenders take turns.
// Ratio = dovecote median / reference median; lower is better.
import { execFileSync, spawn } from "node:child_process";
import { createReadStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { cpus, tmpdir } from "node:os";
import { extname, join, normalize, sep } from "node:path";
import { brotliCompressSync, constants, gzipSync } from "node:zlib";
import { chromium } from "playwright-core";

const root = new URL("../", import.meta.url).pathname;
const out = join(root, "bench/results/");
const ALL = ["cold", "send", "burst", "ingest", "open_thread", "boundary", "crypto", "drain", "pull10k"];
/** Workloads that run against the reference sync server. */
const WITH_SERVER = new Set(["drain", "pull10k"]);
const TIMEOUT_MS = 10 * 60_000;

const args = process.argv.slice(2);
const profileAt = args.indexOf("--profile");
const profile = profileAt >= 0 ? args[profileAt + 1] : null;
const chosen = profile ? [profile] : args.length ? args : ALL;
for (const name of chosen) {
  if (!ALL.includes(name)) throw new Error(`unknown workload ${name}; known: ${ALL.join(", ")}`);
}

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json", ".map": "application/json" };

/** Serves the repo root on a free loopback port, cross-origin isolated, never cached. */
function serve() {
  const server = createServer((req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname));
    const file = join(root, path);
    if (!file.startsWith(root) || path.split(sep).includes("..") || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, {
      "Content-Type": TYPES[extname(file)] ?? "application/octet-stream",
      "Cross-Origin-Opener-Policy": "same-origin",
      "Cross-Origin-Embedder-Policy": "require-corp",
      "Cache-Control": "no-store",
    });
    createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

function sizes() {
  const files = ["pkg/dovecote_bg.wasm", "pkg/dovecote.js"];
  if (!files.every((f) => existsSync(join(root, f)))) return null;
  const rows = files.map((file) => {
    const bytes = readFileSync(join(root, file));
    return {
      file,
      raw: bytes.length,
      gzip: gzipSync(bytes, { level: 9 }).length,
      brotli: brotliCompressSync(bytes, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }).length,
    };
  });
  return { rows, gzipTotal: rows.reduce((a, r) => a + r.gzip, 0), budgetGzip: 200 * 1024 };
}

const fmt = (x) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x >= 1 ? x.toFixed(2) : x.toFixed(3));
const kib = (n) => `${(n / 1024).toFixed(1)} KiB`;

function verdict(row, ref, ratio) {
  const goal = row.goal;
  if (!goal) return ["", ""];
  if (goal.absoluteMax !== undefined) {
    const value = row.contenders.dovecote.p95;
    return [`p95 < ${fmt(goal.absoluteMax)} ms`, value < goal.absoluteMax ? "met" : `missed (${fmt(value)} ms)`];
  }
  if (goal.pick) {
    return ["pick fastest", row.details.fastest === ref ? "fastest" : ""];
  }
  const target = [goal].flat().find((g) => g.against === ref);
  if (!target) return ["", ""];
  const met = ratio <= target.max;
  return [`≤ ${target.max}×`, met ? "met" : `missed by ${((ratio / target.max - 1) * 100).toFixed(0)}%`];
}

function table(rows) {
  const lines = [
    "| # | workload | unit | dovecote median | p95 | reference | median | p95 | ratio | goal | result |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ];
  for (const row of rows) {
    const dc = row.contenders.dovecote;
    const refs = Object.keys(row.contenders).filter((k) => k !== "dovecote");
    if (refs.length === 0) {
      const [goal, result] = verdict(row, null, null);
      lines.push(`| ${row.id} | ${row.title} | ${row.unit} | ${fmt(dc.median)} | ${fmt(dc.p95)} | – | | | | ${goal} | ${result} |`);
    }
    refs.forEach((ref, i) => {
      const r = row.contenders[ref];
      const ratio = row.ratios[ref];
      const [goal, result] = verdict(row, ref, ratio);
      const head = i === 0 ? `| ${row.id} | ${row.title} | ${row.unit} | ${fmt(dc.median)} | ${fmt(dc.p95)}` : "| | | | |";
      const iqr = row.pairedRatioIqr?.[ref];
      const spread = iqr ? ` (${iqr[0].toFixed(2)}–${iqr[1].toFixed(2)})` : "";
      lines.push(`${head} | ${ref} | ${fmt(r.median)} | ${fmt(r.p95)} | ${ratio.toFixed(2)}×${spread} | ${goal} | ${result} |`);
    });
    if (row.goal?.pick) {
      lines.push(`| | | | | | fastest: **${row.details.fastest}** | | | | | |`);
    }
  }
  return lines.join("\n");
}

/**
 * Sums CPU profiles' self time by function and by part (dovecote wasm, glue,
 * Dexie, ...). A workload profiles only its timed parts: it calls
 * `benchProfile("start")` and `("stop")` around them, one profile each.
 */
function summarizeProfiles(profiles) {
  const self = new Map();
  for (const prof of profiles) {
    const byId = new Map(prof.nodes.map((n) => [n.id, n]));
    const parent = new Map();
    for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
    for (let i = 0; i < prof.samples.length; i++) {
      const dt = (prof.timeDeltas[i + 1] ?? 0) / 1000;
      const f = byId.get(prof.samples[i]).callFrame;
      // A browser built-in (IDBObjectStore.put, structured clone, ...) is
      // charged to the script that called it, so each contender's part
      // includes the browser work it asked for.
      let caller = f;
      for (let id = prof.samples[i]; !caller.url && !caller.functionName.startsWith("(") && parent.has(id);) {
        id = parent.get(id);
        caller = byId.get(id).callFrame;
      }
      const k = JSON.stringify([f.functionName, f.url || caller.url, f.lineNumber, !f.url && caller.url ? 1 : 0]);
      self.set(k, (self.get(k) ?? 0) + dt);
    }
  }
  const part = (f) => {
    if (f.url.startsWith("wasm://") || /\.wasm/.test(f.url)) return "dovecote wasm";
    if (f.url.includes("/pkg/dovecote.js")) return "dovecote JS glue";
    if (f.url.includes("dexie")) return "Dexie";
    if (f.url.includes("/bench/")) return "bench page (references, timing)";
    if (f.url) return "other JS";
    return f.functionName || "(native)";
  };
  const byFunction = new Map();
  const byPart = new Map();
  let total = 0;
  for (const [k, ms] of self) {
    const [functionName, url, lineNumber, builtin] = JSON.parse(k);
    const f = { functionName: builtin ? `${functionName} (built-in)` : functionName, url, lineNumber };
    // Anonymous functions (wasm-bindgen's import shims) by line, to find them in the glue.
    const name = f.functionName || `(anonymous) ${f.url.split("/").pop().split("?")[0]}:${f.lineNumber + 1}`;
    const key = `${name} [${part(f)}]`;
    byFunction.set(key, (byFunction.get(key) ?? 0) + ms);
    byPart.set(part(f), (byPart.get(part(f)) ?? 0) + ms);
    total += ms;
  }
  // dovecote's wasm time by crate, from the Rust symbol names (kept by `--profile` builds).
  const byCrate = new Map();
  for (const [k, ms] of byFunction) {
    if (!k.endsWith("[dovecote wasm]") || k.includes("(built-in)")) continue;
    const crate = /^[<&\s]*(?:dyn\s+)?([a-z_][a-z0-9_]*)/.exec(k)?.[1] ?? "other";
    byCrate.set(crate, (byCrate.get(crate) ?? 0) + ms);
  }
  const top = (m, n) => [...m].sort((a, b) => b[1] - a[1]).slice(0, n);
  const busy = total - (byPart.get("(idle)") ?? 0);
  byPart.delete("(idle)");
  byFunction.delete("(idle) [(idle)]");
  return [
    `Total sampled: ${total.toFixed(0)} ms, of which busy (not idle): ${busy.toFixed(0)} ms. IndexedDB's own work runs in the browser process and shows here as idle.`,
    "",
    "| part | self ms | % of busy |",
    "| --- | --- | --- |",
    ...top(byPart, 20).map(([k, v]) => `| ${k} | ${v.toFixed(1)} | ${((v / busy) * 100).toFixed(1)}% |`),
    "",
    "| dovecote wasm by crate | self ms | % of busy |",
    "| --- | --- | --- |",
    ...top(byCrate, 15).map(([k, v]) => `| ${k} | ${v.toFixed(1)} | ${((v / busy) * 100).toFixed(1)}% |`),
    "",
    "| function [part] | self ms | % of busy |",
    "| --- | --- | --- |",
    ...top(byFunction, 40).map(([k, v]) => `| ${k.replaceAll("|", "\\|")} | ${v.toFixed(1)} | ${((v / busy) * 100).toFixed(1)}% |`),
  ].join("\n");
}

const serverBin = process.env.DOVECOTE_SERVER_BIN ?? join(process.env.CARGO_TARGET_DIR ?? join(root, "target"), "release/dovecote-server");
/** Builds the server (release profile) when a chosen workload needs it; false if that fails. */
function buildServer() {
  if (process.env.DOVECOTE_SERVER_BIN) return existsSync(serverBin);
  try {
    execFileSync("cargo", ["build", "--release", "-p", "dovecote-server"], { cwd: root, stdio: ["ignore", 2, 2] });
    return existsSync(serverBin);
  } catch (e) {
    console.error(`could not build dovecote-server: ${e.message}`);
    return false;
  }
}

const syncServers = new Map();
let syncServerCounter = 0;
/**
 * Starts dovecote-server on a free loopback port with a new SQLite file
 * (the server's defaults otherwise: synchronous=FULL, 500 mutations and
 * 256 KiB per push, 6,000 requests per user per minute) and tallies its
 * request log (method, path, status, handler ms) from stderr.
 */
async function startSyncServer() {
  const dir = mkdtempSync(join(tmpdir(), "dovecote-bench-server-"));
  const child = spawn(serverBin, ["--db", join(dir, "db.sqlite3"), "--addr", "127.0.0.1:0", "--dev-sign-in", "--ip-rate-limit", "100000"], { stdio: ["ignore", "pipe", "pipe"] });
  const requests = {};
  let pending = "";
  child.stderr.on("data", (chunk) => {
    pending += chunk.toString();
    const lines = pending.split("\n");
    pending = lines.pop();
    for (const line of lines) {
      const m = /^(GET|POST|OPTIONS|PUT|DELETE) (\S+) (\d{3}) ([\d.]+)ms$/.exec(line.trim());
      if (!m) continue;
      const key = `${m[1]} ${m[2]} ${m[3]}`;
      const entry = (requests[key] ??= { count: 0, handlerMs: 0 });
      entry.count += 1;
      entry.handlerMs += Number(m[4]);
    }
  });
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("dovecote-server did not start in 10 s")), 10_000);
    child.once("exit", (code) => reject(new Error(`dovecote-server exited with ${code}`)));
    child.stdout.on("data", (chunk) => {
      const match = /listening on (http:\/\/\S+)/.exec(chunk.toString());
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
  });
  syncServerCounter += 1;
  const id = syncServerCounter;
  const stop = async () => {
    syncServers.delete(id);
    if (child.exitCode === null) {
      child.kill("SIGTERM");
      await new Promise((resolve) => (child.exitCode !== null ? resolve() : child.once("exit", resolve)));
    }
    rmSync(dir, { recursive: true, force: true });
    return requests;
  };
  syncServers.set(id, { stop, requests });
  return { id, url };
}

/** What the page may ask of the sync servers: start, log (the request tally so far), stop. */
async function benchServer(command, id) {
  if (command === "start") return startSyncServer();
  const server = syncServers.get(id);
  if (!server) throw new Error(`no sync server ${id}`);
  if (command === "log") return structuredClone(server.requests);
  if (command === "stop") return server.stop();
  throw new Error(`unknown server command ${command}`);
}

async function stopSyncServers() {
  await Promise.all([...syncServers.values()].map((s) => s.stop()));
}

const serverBuilt = chosen.some((n) => WITH_SERVER.has(n)) && buildServer();
mkdirSync(out, { recursive: true });
const server = await serve();
const base = `http://127.0.0.1:${server.address().port}`;
const profileDir = mkdtempSync(join(tmpdir(), "dovecote-bench-"));
const context = await chromium.launchPersistentContext(profileDir, {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let fsType = "unknown";
try {
  fsType = execFileSync("df", ["--output=fstype", profileDir]).toString().trim().split("\n").pop();
} catch {}

async function openPage() {
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  if (serverBuilt) await page.exposeFunction("benchServer", benchServer);
  page.on("pageerror", (e) => console.error(`page error: ${e.message}`));
  await page.goto(`${base}/bench/index.html`);
  await page.waitForSelector("body[data-ready=true]", { state: "attached" });
  if (!(await page.evaluate(() => window.crossOriginIsolatedPage))) throw new Error("the bench page is not cross-origin isolated");
  return page;
}

try {
  const page0 = await openPage();
  const cdp = await context.newCDPSession(page0);
  const { product } = await cdp.send("Browser.getVersion");
  const chromiumVersion = product.replace(/^HeadlessChrome\//, "");

  if (profile) {
    const page = await context.newPage();
    page.setDefaultTimeout(TIMEOUT_MS);
    if (serverBuilt) await page.exposeFunction("benchServer", benchServer);
    const session = await context.newCDPSession(page);
    await session.send("Profiler.enable");
    await session.send("Profiler.setSamplingInterval", { interval: 50 });
    const profiles = [];
    await page.exposeFunction("benchProfile", async (command) => {
      if (command === "start") await session.send("Profiler.start");
      else profiles.push((await session.send("Profiler.stop")).profile);
    });
    await page.goto(`${base}/bench/index.html`);
    await page.waitForSelector("body[data-ready=true]", { state: "attached" });
    await page.evaluate((name) => window.runWorkload(name), profile);
    const text = `# CPU profile: workload ${profile}, timed parts only (Chromium ${chromiumVersion}, every contender)\n\n${summarizeProfiles(profiles)}\n`;
    writeFileSync(join(out, `profile-${profile}.md`), text);
    const rawFile = join(tmpdir(), `dovecote-profile-${profile}.cpuprofile`);
    writeFileSync(rawFile, JSON.stringify(profiles[profiles.length - 1]));
    console.log(text);
    const allFile = join(tmpdir(), `dovecote-profile-${profile}-windows.json`);
    writeFileSync(allFile, JSON.stringify(profiles));
    console.log(`the last window's raw profile: ${rawFile} (open in Chrome DevTools); every window's: ${allFile}`);
  } else {
    const durability = await page0.evaluate(() => window.runWorkload("durability"));
    await page0.close();
    const rows = [];
    const skipped = {};
    for (const name of chosen) {
      const started = Date.now();
      const page = await openPage();
      const result = await page.evaluate((n) => window.runWorkload(n), name);
      await page.close();
      await stopSyncServers();
      if (result.skipped) {
        skipped[name] = result.skipped;
        console.error(`${name}: skipped: ${result.skipped}`);
        continue;
      }
      rows.push(...result);
      console.error(`${name}: ${((Date.now() - started) / 1000).toFixed(0)} s`);
    }
    const size = sizes();
    const d = durability.ms;
    const header = [
      `Chromium ${chromiumVersion}, headless, on-disk profile (${fsType}), ${cpus().length} CPUs (${cpus()[0]?.model ?? "?"}), ${new Date().toISOString().slice(0, 10)}.`,
      "",
      `IndexedDB durability: dovecote, Dexie and the raw references all open readwrite transactions without a durability option, so all run at Chromium's default ` +
        `(transaction.durability reports "${durability.reportedDefault}"). Single-put transaction here, median ms: default ${fmt(d.default.median)}, relaxed ${fmt(d.relaxed.median)}, strict ${fmt(d.strict.median)}` +
        ` (default behaves as ${Math.abs(d.default.median - d.relaxed.median) <= Math.abs(d.default.median - d.strict.median) ? "relaxed" : "strict"}).`,
      "",
      "Ratio = dovecote median / reference median (lower is better), measured in one page, contenders taking turns; in brackets the middle half (p25–p75) of the ratios of samples taken side by side, a gauge of the noise. " +
        "The references do less than dovecote: they store the same records unencrypted and without an outbox row, except in workload 5, where they decrypt with SubtleCrypto.",
    ].join("\n");
    let md = `${header}\n\n${table(rows)}\n`;
    if (Object.keys(skipped).length) md += `\nNot run: ${Object.entries(skipped).map(([k, v]) => `${k} (${v})`).join("; ")}.\n`;
    if (size) {
      md += `\nWorkload 8, size (pkg/, release, wasm-opt -Os): ${size.rows.map((r) => `${r.file} ${kib(r.raw)} raw, ${kib(r.gzip)} gzip, ${kib(r.brotli)} brotli`).join("; ")}. ` +
        `wasm + glue ${kib(size.gzipTotal)} gzip against a budget of ${kib(size.budgetGzip)} (${size.gzipTotal <= size.budgetGzip ? "met" : "missed"}).\n`;
    }
    const details = rows.filter((r) => r.details).map((r) => `- ${r.id}: \`${JSON.stringify(r.details)}\``);
    if (details.length) md += `\nDetails:\n${details.join("\n")}\n`;
    writeFileSync(join(out, "results.md"), md);
    writeFileSync(join(out, "results.json"), JSON.stringify({ chromium: chromiumVersion, date: new Date().toISOString(), cpus: cpus().length, filesystem: fsType, durability, rows, skipped, size }, null, 2) + "\n");
    console.log(md);
  }
} finally {
  await stopSyncServers();
  await context.close();
  server.close();
  rmSync(profileDir, { recursive: true, force: true });
}
