// Reports the size of the built SDK (wasm + JS glue), raw, gzip and brotli,
// and fails when wasm + glue gzipped is over the budget.
import { readFileSync } from "node:fs";
import { gzipSync, brotliCompressSync, constants } from "node:zlib";

const BUDGET_GZIP = 200 * 1024;
const files = ["pkg/dovecote_bg.wasm", "pkg/dovecote.js"];
let total = 0;
const kb = (n) => `${(n / 1024).toFixed(1)} KiB`;
for (const file of files) {
  const bytes = readFileSync(file);
  const gzip = gzipSync(bytes, { level: 9 }).length;
  const brotli = brotliCompressSync(bytes, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }).length;
  total += gzip;
  console.log(`${file}: ${kb(bytes.length)} raw, ${kb(gzip)} gzip, ${kb(brotli)} brotli`);
}
console.log(`wasm + glue: ${kb(total)} gzip (budget ${kb(BUDGET_GZIP)})`);
if (total > BUDGET_GZIP) {
  console.error(`size over budget by ${kb(total - BUDGET_GZIP)}`);
  process.exit(1);
}
