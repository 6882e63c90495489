// Not a workload: what the transactions' durability costs here. dovecote,
// Dexie and the raw references all open readwrite transactions without a
// durability option ("default"); this times single-put transactions with
// "default", "relaxed" and "strict", alternating, to show which one
// "default" behaves as in this Chromium.
import { deleteDb, freshName, openRaw, pendingRecord, rawPut, settle, stats } from "../lib.mjs";

const PUTS = 150;

export async function run() {
  const name = freshName("durability");
  const db = await openRaw(name);
  const modes = ["default", "relaxed", "strict"];
  const samples = Object.fromEntries(modes.map((m) => [m, []]));
  for (let i = 0; i < PUTS + 10; i++) {
    for (const mode of modes) {
      const record = pendingRecord("t1", 100, i);
      const t0 = performance.now();
      await rawPut(db, record, mode === "default" ? undefined : { durability: mode });
      if (i >= 10) samples[mode].push(performance.now() - t0);
    }
  }
  const probe = db.transaction("messages", "readwrite");
  const reported = probe.durability;
  probe.abort();
  db.close();
  await settle();
  await deleteDb(name);
  return { reportedDefault: reported, ms: Object.fromEntries(modes.map((m) => [m, stats(samples[m])])) };
}
