// The demo page in headless Chromium, served by the real server: create a
// thread, send with the keyboard, reload, and everything is still there.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { startServer, launchBrowser } from "./harness.mjs";

const shots = new URL("../../test-output/", import.meta.url).pathname;
let server;
let browser;

before(async () => {
  mkdirSync(shots, { recursive: true });
  server = await startServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test("a thread and its messages survive a reload of the demo page", async () => {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`${server.url}/www/?user=alice`);
  await page.waitForSelector("body[data-ready=true]");
  assert.match(await page.textContent("#whoami"), /Signed in as alice/);

  await page.fill("#thread-title", "Weekend plans");
  await page.fill("#thread-members", "bob");
  await page.click("#new-thread button[type=submit]");
  await page.waitForSelector("#composer:not([hidden])");
  for (const text of ["Hiking on Saturday?", "I'll bring snacks 🥪"]) {
    await page.fill("#message-text", text);
    await page.press("#message-text", "Enter");
  }
  await page.waitForFunction(() => document.querySelectorAll("#messages li").length === 2);
  await page.screenshot({ path: `${shots}demo-thread.png` });

  await page.reload();
  await page.waitForSelector("body[data-ready=true]");
  await page.waitForFunction(() => document.querySelectorAll("#messages li").length === 2);
  const bodies = await page.$$eval("#messages li .body", (items) => items.map((li) => li.textContent));
  assert.deepEqual(bodies, ["Hiking on Saturday?", "I'll bring snacks 🥪"]);
  assert.match(await page.textContent("#messages li .meta"), /alice .* pending/);
  assert.equal(await page.textContent("#thread-heading"), "Weekend plans");

  // Bad input is refused with a visible, typed error and nothing is added.
  await page.fill("#message-text", "   ");
  await page.press("#message-text", "Enter");
  await page.waitForFunction(() => document.querySelector("#error").textContent.startsWith("invalid_input"));
  assert.equal(await page.locator("#messages li").count(), 2);
  assert.deepEqual(errors, []);
});
