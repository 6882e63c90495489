// `npm run example:react`: starts the reference server (a fresh SQLite file
// in a temporary folder, dev sign-in) and Vite's dev server for this
// example, and prints a link per user. Stop with Ctrl-C. Needs pkg/ and the
// server binary: the npm script builds both first.
import { createServer } from "vite";
import { startServer } from "../../tests/e2e/harness.mjs";

const sync = await startServer();
const vite = await createServer({ configFile: new URL("./vite.config.js", import.meta.url).pathname });
await vite.listen();
const base = vite.resolvedUrls.local[0];
const link = (user) => `${base}?user=${user}&server=${encodeURIComponent(sync.url)}`;
console.log(`dovecote server: ${sync.url} (data in ${sync.dir}, removed on exit)`);
console.log(`open as alice:   ${link("alice")}`);
console.log(`open as bob:     ${link("bob")}  (another browser profile)`);

const stop = async () => {
  await vite.close();
  await sync.stop();
  process.exit(0);
};
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
