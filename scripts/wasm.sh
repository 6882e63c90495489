# Sourced by scripts/build, scripts/bench and scripts/test: the one place
# that says how dovecote is compiled to wasm.
#
# Target features: wasm without reference types and multi-value. WPE WebKit
# 2.38 (about Safari 16's engine) miscompiles both in its baseline compiler
# (BBQ): with reference types, "Out of bounds table access" traps reading
# wasm-bindgen's table of JS values; with multi-value, corrupted values
# (misaligned pointers, RefCells "already borrowed"). Without them it passes
# everything; one build serves every engine, as it costs nothing measurable
# (wasm+glue gzip 197.7 -> 196.7 KiB). std is rebuilt with the same features
# (-Zbuild-std): the prebuilt one has them on. Both flags are unstable;
# RUSTC_BOOTSTRAP enables them on the stable toolchain for these builds only.
WASM_FEATURES="-Ctarget-feature=-reference-types,-multivalue"
BUILD_STD=(-Z build-std=std,panic_abort)

# wasm-opt's flags for a release build (scripts/build, scripts/bench).
# --low-memory-unused lets it fold added constants into load/store offsets
# (-1.5 KiB gzip, and no slower): it assumes no address below 1024 is
# reached by an i32.add that wraps, which holds here, the data starting at
# 1 MiB above the stack (rustc links wasm32 with --stack-first) and no code
# computing a low address by overflow. The producers and target_features
# sections are for tools, not engines (-0.2 KiB). A second -Oz finds a
# little more (-0.1 KiB; a third nothing). --flatten --rereloop first
# rebuilds the control flow before -Oz shrinks it (-2.0 KiB gzip) and is no
# slower: `npm run bench -- crypto open_thread ingest` before and after, one
# run each (session 6): seal+open 100 B 10.5 -> 10.1 µs, 4 KiB 137 -> 122 µs,
# open a thread 2.68 -> 2.26 ms, ingest 500 69.6 -> 55.7 ms.
WASM_OPT_FLAGS=(--flatten --rereloop -Oz --low-memory-unused --strip-producers --strip-target-features -Oz)

# wasm_pack_build OUT_DIR [wasm-pack build options]: a release build. A
# panic traps at once instead of formatting a message nobody sees
# (wasm32-unknown-unknown has no stderr; panic=abort already ends the
# program), and so carries no file/line locations (-1.0 KiB gzip).
# -Zfmt-debug=none makes every `{:?}` print nothing (-3.2 KiB gzip: the
# Debug impls, str's escaping and its Unicode tables, f64 formatting): no
# message of ours uses `{:?}` (say `"{0}"`; `js_text` for a JsValue), so
# only serde's invalid-type messages lose their quoted value ("invalid
# type: string , expected ..."), their error codes unchanged. RUSTFLAGS
# reach only the wasm32 target (wasm-pack passes --target), not build
# scripts.
wasm_pack_build() {
  local out=$1
  shift
  RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zunstable-options -Cpanic=immediate-abort -Zlocation-detail=none -Zfmt-debug=none $WASM_FEATURES" \
    wasm-pack build --release --target web --out-dir "$out" --no-pack . -- "${BUILD_STD[@]}" "$@" >&2
}

# wasm_pack_test_build OUT_DIR [wasm-pack build options]: a debug build on
# the test suites' compiled dependencies (same profile and flags), e.g. with
# the trap hook for tests/e2e/engines.test.mjs.
wasm_pack_test_build() {
  local out=$1
  shift
  RUSTC_BOOTSTRAP=1 CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="$WASM_FEATURES" \
    wasm-pack build --dev --target web --out-dir "$out" --no-pack . -- "${BUILD_STD[@]}" "$@" >&2
}

# wasm_test [cargo test options]: the browser test suites (tests/web_*.rs)
# in the engine the driver variables name (see browser_env), compiled once
# for every engine: same features, same target directory.
wasm_test() {
  RUSTC_BOOTSTRAP=1 CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="$WASM_FEATURES" \
    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
    cargo test --target wasm32-unknown-unknown "${BUILD_STD[@]}" "$@"
}

# in_engine ENGINE COMMAND...: runs COMMAND with the WebDriver set-up of
# ENGINE (chromium, firefox, webkitgtk, wpe) for wasm-bindgen-test-runner
# and for tests/e2e/engines.mjs (DOVECOTE_ENGINE).
in_engine() {
  local engine=$1
  shift
  case $engine in
    chromium) DOVECOTE_ENGINE=chromium CHROMEDRIVER=/usr/bin/chromedriver "$@" ;;
    firefox) DOVECOTE_ENGINE=firefox GECKODRIVER="$HOME/.cargo/bin/geckodriver" "$@" ;;
    # MiniBrowser (WebKitGTK) has no headless mode: a virtual X server.
    # xvfb-run starts a program, not a shell function: a shell that has this file.
    webkitgtk) DOVECOTE_ENGINE=webkitgtk SAFARIDRIVER=/usr/bin/WebKitWebDriver \
      xvfb-run -a bash -c 'source scripts/wasm.sh && "$@"' in_engine "$@" ;;
    wpe) DOVECOTE_ENGINE=wpe SAFARIDRIVER=/usr/bin/WPEWebDriver PATH="$PWD/scripts/wpe:$PATH" "$@" ;;
    *) echo "unknown engine $engine" >&2; return 2 ;;
  esac
}
ENGINES=(chromium firefox webkitgtk wpe)
