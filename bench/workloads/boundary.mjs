// Workload 7, the boundary: handing a page of 50 decrypted messages from
// Rust to JS as JS objects, three ways: serde-wasm-bindgen's
// JSON-compatible serializer (what the bindings use), one JSON string from
// serde_json then JSON.parse, and objects built field by field with
// Reflect.set. Batches of conversions alternate between the three.
import init, { BenchPage } from "../pkg/dovecote.js";
import { profileMark, rotate, summarize } from "../lib.mjs";

const ROUNDS = 15;
const BATCH = 200;

export async function run() {
  await init();
  const page = new BenchPage(50, 120);
  const ways = {
    dovecote: () => page.serdeWasmBindgen(),
    json: () => JSON.parse(page.jsonString()),
    plain: () => page.plainObjects(),
  };
  const shapes = Object.values(ways).map((f) => JSON.stringify(f()));
  if (shapes.some((s) => s !== shapes[0])) throw new Error("the three ways give different objects");
  const samples = { dovecote: [], json: [], plain: [] };
  await profileMark("start");
  for (let round = 0; round < ROUNDS + 1; round++) {
    for (const name of rotate(Object.keys(ways), round)) {
      const fn = ways[name];
      const t0 = performance.now();
      for (let i = 0; i < BATCH; i++) fn();
      const us = ((performance.now() - t0) / BATCH) * 1000;
      if (round > 0) samples[name].push(us);
    }
  }
  await profileMark("stop");
  page.free();
  const result = summarize(samples, "µs per page");
  const fastest = Object.entries(result.contenders).sort((a, b) => a[1].median - b[1].median)[0][0];
  return [{
    id: "7", title: "Boundary: a 50-message page Rust→JS (dovecote = serde-wasm-bindgen json_compatible, as the API does now)",
    ...result, goal: { pick: true }, details: { fastest, batch: BATCH },
  }];
}
