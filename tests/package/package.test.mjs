// The npm package against the tools npm authors use, on the built pkg/:
// publint (strict) and `attw --pack --profile esm-only` find nothing; a
// strict TypeScript app that uses every export of `dovecote` and
// `dovecote/react` compiles against the packed package (with the bundler and
// the nodenext resolutions); a file of deliberate misuse fails with exactly
// the errors it names; the packed README links only to absolute URLs; the
// licence texts are in. Run `scripts/build` first (`npm test` does).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const root = new URL("../../", import.meta.url).pathname;
const bin = (name) => join(root, "node_modules/.bin", name);
const run = (cmd, args, cwd = root) => spawnSync(cmd, args, { cwd, encoding: "utf8", maxBuffer: 64 << 20 });

let work;
let app;

before(() => {
  if (!existsSync(join(root, "pkg/package.json"))) throw new Error("pkg/package.json is missing: run scripts/build first");
  work = mkdtempSync(join(tmpdir(), "dovecote-package-"));
  // The package as installed from its tarball, React and its types beside it.
  const pack = run("npm", ["pack", join(root, "pkg"), "--pack-destination", work, "--json"]);
  assert.equal(pack.status, 0, pack.stderr);
  const [{ filename }] = JSON.parse(pack.stdout);
  app = join(work, "app");
  mkdirSync(join(app, "node_modules/dovecote"), { recursive: true });
  const untar = run("tar", ["-xzf", join(work, filename), "-C", join(app, "node_modules/dovecote"), "--strip-components=1"]);
  assert.equal(untar.status, 0, untar.stderr);
  mkdirSync(join(app, "node_modules/@types"), { recursive: true });
  for (const dep of ["react", "@types/react"]) symlinkSync(join(root, "node_modules", dep), join(app, "node_modules", dep));
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "types-app", private: true, type: "module" }));
  cpSync(new URL("./types/", import.meta.url).pathname, app, { recursive: true });
});

after(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

/** Runs tsc --strict over `files` with `resolution`; its diagnostics as { file, line, code }. */
function tsc(files, resolution) {
  const config = {
    compilerOptions: {
      strict: true,
      noEmit: true,
      skipLibCheck: false,
      exactOptionalPropertyTypes: true,
      noUncheckedIndexedAccess: true,
      target: "es2022",
      lib: ["es2022", "dom", "dom.iterable"],
      jsx: "react-jsx",
      types: [],
      ...(resolution === "bundler" ? { module: "esnext", moduleResolution: "bundler" } : { module: "nodenext", moduleResolution: "nodenext" }),
    },
    files,
  };
  const project = join(app, `tsconfig.${resolution}.${files[0]}.json`);
  writeFileSync(project, JSON.stringify(config));
  const result = run(process.execPath, [join(root, "node_modules/typescript/bin/tsc"), "-p", project, "--pretty", "false"], app);
  const diagnostics = [...result.stdout.matchAll(/^(\S+)\((\d+),\d+\): error (TS\d+): (.*)$/gm)].map((m) => ({
    file: m[1],
    line: Number(m[2]),
    code: m[3],
    text: m[4],
  }));
  return { status: result.status, output: result.stdout + result.stderr, diagnostics };
}

test("publint (strict) finds nothing to fix", () => {
  const result = run(bin("publint"), ["--strict", join(root, "pkg")]);
  assert.equal(result.status, 0, result.stdout + result.stderr);
  assert.match(result.stdout, /All good!/);
});

test("attw --pack --profile esm-only finds no problem", () => {
  const result = run(bin("attw"), ["--pack", join(root, "pkg"), "--profile", "esm-only", "--format", "json"]);
  assert.equal(result.status, 0, result.stdout + result.stderr);
  const { analysis, problems } = JSON.parse(result.stdout);
  // What the esm-only profile ignores: CommonJS `require` of an ESM-only package.
  const ignored = new Set(["node10", "node16-cjs"]);
  const left = Object.values(problems ?? {}).flat().filter((p) => !ignored.has(p.resolutionKind));
  assert.deepEqual(left, []);
  const entrypoints = Object.keys(analysis.entrypoints).sort();
  assert.deepEqual(entrypoints, [".", "./dovecote_bg.wasm", "./package.json", "./react"]);
});

for (const resolution of ["bundler", "nodenext"]) {
  test(`a strict TypeScript app using every API and hook compiles (${resolution})`, () => {
    const { status, output, diagnostics } = tsc(["consumer.tsx"], resolution);
    assert.deepEqual(diagnostics, [], output);
    assert.equal(status, 0, output);
  });
}

test("the misuse file fails to compile, with exactly the errors it names", () => {
  const source = readFileSync(join(app, "misuse.ts"), "utf8").split("\n");
  const expected = source
    .map((text, i) => ({ line: i + 1, code: /\/\/ error (TS\d+)/.exec(text)?.[1] }))
    .filter((e) => e.code);
  assert.ok(expected.length >= 25, `misuse.ts names ${expected.length} errors`);
  const { status, output, diagnostics } = tsc(["misuse.ts"], "bundler");
  assert.notEqual(status, 0, "tsc accepted the misuse file");
  const got = diagnostics.map((d) => `${d.file}:${d.line} ${d.code}`);
  const want = expected.map((e) => `misuse.ts:${e.line} ${e.code}`);
  assert.deepEqual(got.sort(), want.sort(), output);
});

test("the packed README links only to absolute URLs, and the licences are in", () => {
  const dir = join(app, "node_modules/dovecote");
  const readme = readFileSync(join(dir, "README.md"), "utf8");
  const links = [...readme.matchAll(/!?\[[^\]]*\]\(([^)\s]+)\)/g)].map((m) => m[1]);
  assert.ok(links.length >= 5, `found ${links.length} links`);
  const relative = links.filter((l) => !/^(https?:|mailto:|#)/.test(l));
  assert.deepEqual(relative, [], "relative links do not work on the npm site");
  const { repository } = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
  const base = repository.url.replace(/^git\+/, "").replace(/\.git$/, "");
  assert.ok(links.includes(`${base}/blob/main/docs/api.md`), "docs/api.md points into the repository");
  assert.match(readFileSync(join(dir, "LICENSE-MIT"), "utf8"), /^MIT License/);
  assert.match(readFileSync(join(dir, "LICENSE-APACHE"), "utf8"), /Apache License\s+Version 2\.0/);
  const manifest = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
  assert.equal(manifest.license, "MIT OR Apache-2.0");
  assert.equal(manifest.repository.url, repository.url);
  assert.deepEqual(manifest.peerDependenciesMeta, { react: { optional: true } });
  assert.ok(manifest.keywords.includes("react") && manifest.keywords.includes("local-first"));
});
