// The browser engines of the cross-engine end-to-end suite, behind one
// shape: an engine makes profiles (one user each, storage of its own), a
// profile opens tabs, a tab runs async functions and takes screenshots.
// Chromium goes through Playwright; Firefox, WebKitGTK and WPE WebKit
// through their W3C WebDriver servers (Playwright needs its own patched
// builds of those, which cannot be had here).
import { writeFileSync } from "node:fs";
import { launchBrowser } from "./harness.mjs";
import { WebDriverSession, evaluateIn } from "./webdriver.mjs";

const WPE_MINIBROWSER = "/usr/lib/x86_64-linux-gnu/wpe-webkit-1.1/MiniBrowser";
const GTK_MINIBROWSER = "/usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser";

/** Where the test script put geckodriver (cargo install). */
const geckodriver = process.env.GECKODRIVER ?? `${process.env.HOME}/.cargo/bin/geckodriver`;

const webDriverEngines = {
  firefox: {
    driver: geckodriver,
    capabilities: {
      browserName: "firefox",
      "moz:firefoxOptions": { binary: "/usr/bin/firefox-esr", args: ["-headless"] },
    },
  },
  // WebKitGTK's MiniBrowser has no headless mode: the test script runs
  // this engine under xvfb-run.
  webkitgtk: {
    driver: "/usr/bin/WebKitWebDriver",
    capabilities: { "webkitgtk:browserOptions": { binary: GTK_MINIBROWSER, args: ["--automation"] } },
  },
  // WPEWebDriver 2.38 neither switches windows (commands keep going to the
  // newest) nor survives closing one: its tabs are frames of one page.
  wpe: {
    tabsAsFrames: true,
    driver: "/usr/bin/WPEWebDriver",
    capabilities: { "wpe:browserOptions": { binary: WPE_MINIBROWSER, args: ["--automation", "--headless"] } },
  },
};

/** The engine named by DOVECOTE_ENGINE (chromium by default). */
export async function engine(name = process.env.DOVECOTE_ENGINE ?? "chromium") {
  if (name === "chromium") return chromiumEngine();
  const spec = webDriverEngines[name];
  if (!spec) throw new Error(`unknown engine ${name}: chromium, ${Object.keys(webDriverEngines).join(", ")}`);
  return webDriverEngine(name, spec);
}

async function chromiumEngine() {
  const browser = await launchBrowser();
  return {
    name: "chromium",
    version: `Chromium ${browser.version()}`,
    async profile() {
      const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
      return {
        async tab(url) {
          const page = await context.newPage();
          await page.goto(url);
          return {
            evaluate: (fn, arg) => page.evaluate(fn, arg),
            async reload() {
              await page.reload();
            },
            async screenshot(path) {
              await page.screenshot({ path });
            },
            close: () => page.close(),
          };
        },
        close: () => context.close(),
      };
    },
    close: () => browser.close(),
  };
}

function webDriverEngine(name, spec) {
  const sessions = new Set();
  const engine = {
    name,
    version: null,
    async profile() {
      const session = await WebDriverSession.start(spec);
      sessions.add(session);
      const caps = session.capabilities;
      engine.version ??= `${caps.browserName} ${caps.browserVersion}`;
      let fresh = session.current; // the session's first window is the first tab
      if (spec.tabsAsFrames) return framesProfile(session);
      return {
        async tab(url) {
          const window = fresh ?? (await session.newWindow());
          fresh = null;
          await session.run(window, (send) => send("POST", "/url", { url }));
          return {
            evaluate: (fn, arg) => evaluateIn(session, window, fn, arg),
            reload: () => session.run(window, (send) => send("POST", "/refresh", {})),
            async screenshot(path) {
              const png = await session.run(window, (send) => send("GET", "/screenshot"));
              writeFileSync(path, Buffer.from(png, "base64"));
            },
            close: () => session.closeWindow(window),
          };
        },
        async close() {
          sessions.delete(session);
          await session.quit();
        },
      };
    },
    async close() {
      await Promise.all([...sessions].map((s) => s.quit()));
    },
  };
  return engine;
}

/**
 * A profile whose tabs are same-origin iframes of tests/e2e/frames.html in
 * the session's one window; a tab's functions run in its frame's realm.
 */
function framesProfile(session) {
  let host = null;
  let count = 0;
  const inHost = (fn, arg) => evaluateIn(session, null, fn, arg);
  return {
    async tab(url) {
      if (!host) {
        host = new URL("/tests/e2e/frames.html", url).href;
        await session.run(null, (send) => send("POST", "/url", { url: host }));
      }
      const id = `tab${count++}`;
      const load = async ({ id, url }) => {
        let frame = document.getElementById(id);
        if (!frame) {
          frame = Object.assign(document.createElement("iframe"), { id });
          document.body.append(frame);
        }
        await new Promise((resolve) => {
          frame.addEventListener("load", resolve, { once: true });
          if (url) frame.src = url;
          else frame.contentWindow.location.reload();
        });
      };
      await inHost(load, { id, url });
      return {
        evaluate: (fn, arg) =>
          inHost(
            ({ id, source, arg }) => document.getElementById(id).contentWindow.eval(`(${source})`)(arg),
            { id, source: fn.toString(), arg: arg ?? null },
          ),
        reload: () => inHost(load, { id, url: null }),
        async screenshot(path) {
          const png = await session.run(null, (send) => send("GET", "/screenshot"));
          writeFileSync(path, Buffer.from(png, "base64"));
        },
        close: () => inHost(async (id) => document.getElementById(id).remove(), id),
      };
    },
    close: () => session.quit(),
  };
}
