// The example imports the package by name, as an app would; here the names
// point at the repository's freshly built pkg/ (scripts/build), the same
// files `npm pack pkg` ships.
import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

const repo = fileURLToPath(new URL("../../", import.meta.url));

export default defineConfig({
  root: fileURLToPath(new URL(".", import.meta.url)),
  resolve: {
    alias: [
      { find: /^dovecote\/react$/, replacement: `${repo}pkg/react.js` },
      { find: /^dovecote$/, replacement: `${repo}pkg/dovecote.js` },
    ],
  },
  // JSX without a plugin: the automatic runtime (react/jsx-runtime).
  oxc: { jsx: { runtime: "automatic" } },
  server: { fs: { allow: [repo] } },
  build: { target: "es2022" },
});
