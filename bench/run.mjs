// Runs the benchmark pages in headless Debian Chromium and writes
// bench/results/crypto.{md,json}. Ratio = dovecote time / reference time.
import { mkdirSync, writeFileSync } from "node:fs";
import { startServer, launchBrowser } from "../tests/e2e/harness.mjs";

const out = new URL("./results/", import.meta.url).pathname;
mkdirSync(out, { recursive: true });
const server = await startServer();
const browser = await launchBrowser();
try {
  const page = await browser.newPage();
  await page.goto(`${server.url}/bench/crypto.html`);
  await page.waitForSelector("body[data-ready=true]", { state: "attached" });
  const results = await page.evaluate(() => window.runBench());
  const chromium = browser.version();
  const fmt = (x) => x.toFixed(1);
  const lines = [
    `AES-256-GCM seal + open, one message per call (Chromium ${chromium}); times in µs per message`,
    "",
    "| body | dovecote wasm median | p95 | SubtleCrypto median | p95 | ratio (lower is better) |",
    "| --- | --- | --- | --- | --- | --- |",
    ...results.map((r) =>
      `| ${r.size} B | ${fmt(r.wasm_us.median)} | ${fmt(r.wasm_us.p95)} | ${fmt(r.subtle_us.median)} | ${fmt(r.subtle_us.p95)} | ${r.ratio.toFixed(3)}× |`),
  ];
  const table = lines.join("\n");
  writeFileSync(`${out}crypto.md`, table + "\n");
  writeFileSync(`${out}crypto.json`, JSON.stringify({ chromium, results }, null, 2) + "\n");
  console.log(table);
} finally {
  await browser.close();
  await server.stop();
}
