// A minimal W3C WebDriver client (plain HTTP) for the engines Playwright
// cannot drive here: Firefox (geckodriver), WebKitGTK (WebKitWebDriver) and
// WPE WebKit (WPEWebDriver). We need eight commands; selenium-webdriver and
// webdriverio know neither WebKit driver's capabilities and bring dozens of
// packages, so this file speaks the protocol itself.
import { spawn } from "node:child_process";
import { createServer } from "node:net";

/** A free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer().once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/** Waits until the driver at `base` answers /status (it prints nothing we can rely on). */
async function ready(base, child, ms = 20_000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`driver exited with ${child.exitCode}`);
    try {
      const status = await fetch(`${base}/status`).then((r) => r.json());
      if (status.value?.ready !== false) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`driver at ${base} not ready in ${ms} ms`);
}

/**
 * One browser session: its own driver process and its own browser profile
 * (a user). Commands are serialized: a session has one current window.
 */
export class WebDriverSession {
  static async start({ driver, driverArgs = [], capabilities, env }) {
    const port = await freePort();
    const child = spawn(driver, [`--port=${port}`, ...driverArgs], {
      stdio: ["ignore", "ignore", process.env.DOVECOTE_DRIVER_LOG ? "inherit" : "ignore"],
      env: { ...process.env, ...env },
    });
    const base = `http://127.0.0.1:${port}`;
    try {
      await ready(base, child);
      const created = await command(base, "POST", "/session", { capabilities: { alwaysMatch: capabilities } });
      const session = new WebDriverSession(base, child, created.sessionId, created.capabilities);
      await session.#send("POST", "/timeouts", { script: 180_000, pageLoad: 60_000 });
      session.current = await session.#send("GET", "/window");
      return session;
    } catch (e) {
      child.kill("SIGKILL");
      throw e;
    }
  }

  #queue = Promise.resolve();

  constructor(base, child, id, capabilities) {
    this.base = base;
    this.child = child;
    this.id = id;
    this.capabilities = capabilities;
  }

  #send(method, path, body) {
    return command(this.base, method, `/session/${this.id}${path}`, body);
  }

  /** Runs `steps(send)` alone on this session, in `window` (a handle). */
  run(window, steps) {
    const next = this.#queue.then(async () => {
      if (window && window !== this.current) {
        await this.#send("POST", "/window", { handle: window });
        this.current = window;
      }
      return steps((method, path, body) => this.#send(method, path, body));
    });
    this.#queue = next.catch(() => {});
    return next;
  }

  /** A new window (a tab of the same profile); its handle. */
  newWindow() {
    return this.run(null, async (send) => (await send("POST", "/window/new", { type: "window" })).handle);
  }

  /** Closes `window`; the session stays on another one. */
  closeWindow(window) {
    return this.run(window, async (send) => {
      const left = await send("DELETE", "/window");
      this.current = null;
      if (left.length > 0) {
        await send("POST", "/window", { handle: left[0] });
        this.current = left[0];
      }
    });
  }

  /** Ends the session and its driver; a driver that does not go in 5 s is killed. */
  async quit() {
    if (this.child.exitCode !== null) return;
    try {
      await command(this.base, "DELETE", `/session/${this.id}`, undefined, AbortSignal.timeout(10_000));
    } catch {
      // the browser may be gone already
    }
    const exited = new Promise((resolve) => (this.child.exitCode !== null ? resolve() : this.child.once("exit", resolve)));
    this.child.kill("SIGTERM");
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5_000))]);
    if (this.child.exitCode === null) {
      this.child.kill("SIGKILL");
      await exited;
    }
  }
}

/** One WebDriver command; throws the driver's error with its message. */
export async function command(base, method, path, body, signal) {
  const response = await fetch(`${base}${path}`, {
    method,
    signal,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const answer = text ? JSON.parse(text) : {};
  if (!response.ok || answer.value?.error) {
    const { error, message } = answer.value ?? {};
    throw new Error(`WebDriver ${method} ${path}: ${error ?? response.status}: ${message ?? text}`);
  }
  return answer.value;
}

/**
 * Runs `fn(arg)` (an async function, as source) in the window and returns
 * what it resolves to (JSON values); a rejection comes back as an Error
 * with the page's message.
 */
export function evaluateIn(session, window, fn, arg) {
  const script = `const done = arguments[arguments.length - 1];
    Promise.resolve().then(() => (${fn.toString()})(arguments[0]))
      .then((value) => done({ ok: true, value: value === undefined ? null : value }),
            (e) => done({ ok: false, message: String(e) + " " + ((e && e.stack) || ""), code: (e && e.code) || null }));`;
  return session.run(window, async (send) => {
    const outcome = await send("POST", "/execute/async", { script, args: [arg ?? null] });
    if (!outcome.ok) {
      const error = new Error(`in the page: ${outcome.message}`);
      error.code = outcome.code;
      throw error;
    }
    return outcome.value;
  });
}
