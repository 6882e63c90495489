// Turns wasm-pack's output in pkg/ into the npm package `dovecote`: writes
// pkg/package.json and copies the README (and licence files, if any).
//
// The root package.json is the private development project (scripts, test
// tools); pkg/ is what gets published (`npm publish pkg` or `npm pack pkg`).
// wasm-pack runs with --no-pack because its generated package.json has no
// `exports`, and a second source of truth for the version would drift: the
// version comes from Cargo.toml, and the root package.json must agree.
import { copyFileSync, existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const root = new URL("../", import.meta.url).pathname;
const out = join(root, process.argv[2] ?? "pkg");

const cargo = readFileSync(join(root, "Cargo.toml"), "utf8");
// The first `version = "..."` after `[package]` (the workspace table has none).
const version = /\[package\][^[]*?\nversion\s*=\s*"([^"]+)"/.exec(cargo)?.[1];
const dev = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
if (!version) throw new Error("no [package] version in Cargo.toml");
if (dev.version !== version) {
  throw new Error(`package.json version ${dev.version} differs from Cargo.toml ${version}: make them agree`);
}

const built = ["dovecote.js", "dovecote.d.ts", "dovecote_bg.wasm", "dovecote_bg.wasm.d.ts"];
for (const file of built) {
  if (!existsSync(join(out, file))) throw new Error(`${out}/${file} is missing: run scripts/build first`);
}
// wasm-bindgen puts `inline_js` and JS snippets there; today there are none.
const snippets = existsSync(join(out, "snippets"));

const docs = ["README.md"];
for (const name of readdirSync(root)) {
  if (/^(LICEN[CS]E|COPYING)/i.test(name)) docs.push(name);
}
for (const file of docs) copyFileSync(join(root, file), join(out, file));

const manifest = {
  name: "dovecote",
  version,
  description: dev.description,
  license: dev.license,
  keywords: ["chat", "local-first", "end-to-end encryption", "indexeddb", "webassembly", "sync"],
  type: "module",
  // For tools that predate `exports`.
  main: "./dovecote.js",
  module: "./dovecote.js",
  types: "./dovecote.d.ts",
  exports: {
    ".": { types: "./dovecote.d.ts", default: "./dovecote.js" },
    // So that bundlers can hand out the wasm file's URL: `dovecote/dovecote_bg.wasm?url` in Vite.
    "./dovecote_bg.wasm": { types: "./dovecote_bg.wasm.d.ts", default: "./dovecote_bg.wasm" },
    "./package.json": "./package.json",
  },
  files: [...built, ...(snippets ? ["snippets/"] : []), ...docs],
  // Importing the glue only defines things; snippets may run code when loaded.
  sideEffects: snippets ? ["./snippets/*"] : false,
};
writeFileSync(join(out, "package.json"), `${JSON.stringify(manifest, null, 2)}\n`);
console.error(`package: wrote ${out}/package.json (dovecote ${version})`);
