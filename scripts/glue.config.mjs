// Minifies the JS glue in place (scripts/build, after scripts/package.mjs):
// wasm-bindgen's output is indented and commented, and it counts in the
// size budget (scripts/size.mjs): 11.0 -> 7.6 KiB gzip. Only whitespace,
// comments and local names go (no `compress`, which rewrites code); class
// and function names are kept, for stack traces and `ChatClient.name`.
// The types' pointer comment that wasm-bindgen writes first goes back on.
export default {
  input: "pkg/dovecote.js",
  output: {
    file: "pkg/dovecote.js",
    format: "esm",
    postBanner: '/* @ts-self-types="./dovecote.d.ts" */',
    minify: { compress: false, mangle: { keepNames: true }, codegen: { removeWhitespace: true } },
  },
};
