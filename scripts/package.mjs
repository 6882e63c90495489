// Turns wasm-pack's output in pkg/ into the npm package `dovecote`: adds the
// hand-written JS of js/ (the `DovecoteError` class, appended to the glue,
// and the `dovecote/react` hooks), writes pkg/package.json, and copies
// the README (its relative links made absolute, for the npm site) and the
// licence files.
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

// Hand-written modules. The hooks ship as they are (no build step), as the
// `dovecote/react` subpath. `DovecoteError` and `isDovecoteError` are
// appended to the generated glue and its types, so that the main entry
// exports them without a second module to fetch (or for a service worker
// to cache) before `init()`. Once: this script may run again on one pkg/.
const handWritten = ["react.js", "react.d.ts"];
for (const file of handWritten) copyFileSync(join(root, "js", file), join(out, file));
const BEGIN = "// ---- js/error.js, appended by scripts/package.mjs ----\n";
const appended = [
  // Without its comments (they would count in the size budget); the
  // types below carry the documentation.
  [
    "dovecote.js",
    readFileSync(join(root, "js/error.js"), "utf8")
      .replace(/^\s*\/\*\*[\s\S]*?\*\/\n/gm, "")
      .replace(/^\s*\/\/.*\n/gm, "")
      .replace(/\n{3,}/g, "\n\n"),
  ],
  // Its types without their import: DovecoteErrorCode is in this file.
  ["dovecote.d.ts", readFileSync(join(root, "js/error.d.ts"), "utf8").replace(/^import type .*\n+/m, "")],
];
for (const [file, addition] of appended) {
  const text = readFileSync(join(out, file), "utf8");
  const generated = text.includes(BEGIN) ? text.slice(0, text.indexOf(BEGIN)) : text;
  writeFileSync(join(out, file), `${generated.trimEnd()}\n\n${BEGIN}${addition}`);
}
// The generated class has `[Symbol.dispose]()`: without this reference a
// strict consumer whose `lib` lacks esnext.disposable (TypeScript's default
// for es2022) fails to compile our types unless it skips lib checks.
const disposable = '/// <reference lib="esnext.disposable" />\n';
const types = readFileSync(join(out, "dovecote.d.ts"), "utf8");
if (!types.startsWith(disposable)) writeFileSync(join(out, "dovecote.d.ts"), disposable + types);

// The repository's web address, from Cargo.toml (one source): the packaged
// README's relative links point there, since the npm site cannot follow them.
const repository = /\[package\][^[]*?\nrepository\s*=\s*"([^"]+)"/.exec(cargo)?.[1];
if (!repository) throw new Error("no [package] repository in Cargo.toml");
if (dev.repository?.url !== `git+${repository.replace(/\/$/, "")}.git`) {
  throw new Error(`package.json repository ${dev.repository?.url} differs from Cargo.toml ${repository}: make them agree`);
}
const blob = `${repository.replace(/\/$/, "")}/blob/main/`;
const raw = `${repository.replace(/\/$/, "")}/raw/main/`;
/** `text` with every relative Markdown link and image made absolute. */
function absoluteLinks(text) {
  return text.replace(/(!?)\[([^\]]*)\]\((?![a-z][a-z0-9+.-]*:|#)([^)\s]+)\)/gi, (_, bang, label, path) => {
    const target = path.replace(/^\.\//, "");
    return `${bang}[${label}](${bang ? raw : blob}${target})`;
  });
}

const licences = readdirSync(root).filter((name) => /^(LICEN[CS]E|COPYING)/i.test(name)).sort();
if (licences.length === 0) throw new Error("no LICENSE files in the repository root");
for (const file of licences) copyFileSync(join(root, file), join(out, file));
writeFileSync(join(out, "README.md"), absoluteLinks(readFileSync(join(root, "README.md"), "utf8")));
const docs = ["README.md", ...licences];

const manifest = {
  name: "dovecote",
  version,
  description: dev.description,
  license: dev.license,
  keywords: dev.keywords,
  repository: { type: "git", url: `git+${repository.replace(/\/$/, "")}.git` },
  homepage: `${repository.replace(/\/$/, "")}#readme`,
  bugs: { url: `${repository.replace(/\/$/, "")}/issues` },
  type: "module",
  // For tools that predate `exports`.
  main: "./dovecote.js",
  module: "./dovecote.js",
  types: "./dovecote.d.ts",
  exports: {
    ".": { types: "./dovecote.d.ts", default: "./dovecote.js" },
    // React hooks; only this subpath imports React.
    "./react": { types: "./react.d.ts", default: "./react.js" },
    // So that bundlers can hand out the wasm file's URL: `dovecote/dovecote_bg.wasm?url` in Vite.
    "./dovecote_bg.wasm": { types: "./dovecote_bg.wasm.d.ts", default: "./dovecote_bg.wasm" },
    "./package.json": "./package.json",
  },
  files: [...built, ...handWritten, ...(snippets ? ["snippets/"] : []), ...docs],
  // No `engines`: the package runs in browsers, not in Node, and `engines`
  // only speaks of Node and npm (with engine-strict it would refuse
  // installs for no reason). The development project's `engines` is for
  // its tools (Vite 8 needs Node ^20.19 or >= 22.12).
  // React only for `dovecote/react`: optional, and 18 for useSyncExternalStore.
  peerDependencies: { react: ">=18" },
  peerDependenciesMeta: { react: { optional: true } },
  // Importing the glue only defines things; snippets may run code when loaded.
  sideEffects: snippets ? ["./snippets/*"] : false,
};
writeFileSync(join(out, "package.json"), `${JSON.stringify(manifest, null, 2)}\n`);
console.error(`package: wrote ${out}/package.json (dovecote ${version})`);
