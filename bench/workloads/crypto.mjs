// Workload 6: AES-256-GCM seal + open, one message per call: dovecote's
// wasm envelope against WebCrypto's SubtleCrypto AES-GCM, batches
// alternating in one page.
import init, { BenchCipher } from "../pkg/dovecote.js";
import { profileMark, summarize, text } from "../lib.mjs";

const SIZES = [100, 1024, 4096, 65536];
const ROUNDS = 15;
// Enough messages per batch that a batch takes well over the timer's resolution.
const perBatch = (size) => (size <= 1024 ? 1000 : size <= 4096 ? 300 : 30);

function timeWasm(cipher, body, n) {
  const t0 = performance.now();
  for (let i = 0; i < n; i++) cipher.sealOpen(body);
  return ((performance.now() - t0) / n) * 1000;
}

async function timeSubtle(key, body, n) {
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  const aad = new Uint8Array(64);
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const iv = crypto.getRandomValues(new Uint8Array(12));
    const sealed = await crypto.subtle.encrypt({ name: "AES-GCM", iv, additionalData: aad }, key, encoder.encode(body));
    const opened = await crypto.subtle.decrypt({ name: "AES-GCM", iv, additionalData: aad }, key, sealed);
    if (decoder.decode(opened).length !== body.length) throw new Error("subtle round trip failed");
  }
  return ((performance.now() - t0) / n) * 1000;
}

export async function run() {
  await init();
  const cipher = new BenchCipher();
  const key = await crypto.subtle.generateKey({ name: "AES-GCM", length: 256 }, false, ["encrypt", "decrypt"]);
  const rows = [];
  await profileMark("start");
  for (const size of SIZES) {
    const body = text(size);
    const n = perBatch(size);
    timeWasm(cipher, body, n); // warm-up
    await timeSubtle(key, body, n);
    const samples = { dovecote: [], subtle: [] };
    for (let round = 0; round < ROUNDS; round++) {
      if (round % 2 === 0) {
        samples.dovecote.push(timeWasm(cipher, body, n));
        samples.subtle.push(await timeSubtle(key, body, n));
      } else {
        samples.subtle.push(await timeSubtle(key, body, n));
        samples.dovecote.push(timeWasm(cipher, body, n));
      }
    }
    rows.push({
      id: `6 (${size} B)`, title: `AES-256-GCM seal + open, ${size} B`, ...summarize(samples, "µs per message"),
      goal: size <= 1024 ? { against: "subtle", max: 0.25 } : null, details: { perBatch: n },
    });
  }
  await profileMark("stop");
  cipher.free();
  return rows;
}
