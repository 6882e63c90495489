// The demo app (www/) in headless Chromium against the real server, the way
// users meet it: each user is a browser context (a profile of their own),
// signs in with a name, and uses only the page's buttons, fields and keys.
// Screenshots of each key screen go to test-output/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { startServer, launchBrowser } from "./harness.mjs";

const shots = new URL("../../test-output/", import.meta.url).pathname;
const WAIT = { timeout: 90_000 }; // a loaded 2-core machine, and sync backoff after an outage
let browser;

before(async () => {
  mkdirSync(shots, { recursive: true });
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

/** A new browser profile with the demo open at `url`; `errors` collects uncaught page errors. */
async function profile(url) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(url);
  await page.waitForSelector("body[data-ready=true]", WAIT);
  return { context, page, errors };
}

async function signIn(page, name) {
  await page.getByLabel("Your name").fill(name);
  await page.getByLabel("Your name").press("Enter");
  await page.waitForSelector("#chat-view:not([hidden])", WAIT);
}

async function createThread(page, title) {
  await page.getByLabel("New thread").fill(title);
  await page.getByRole("button", { name: "Create" }).click();
  await page.waitForFunction((title) => document.querySelector("#thread-heading").textContent === title, title, WAIT);
}

async function send(page, text) {
  await page.getByRole("textbox", { name: /^Message/ }).fill(text);
  await page.getByRole("textbox", { name: /^Message/ }).press("Enter");
}

/** The open thread as shown: "state|sender|body" per message, in order. */
function shown(page) {
  return page.$$eval("#messages li", (items) =>
    items.map((li) => `${li.dataset.state}|${li.querySelector(".sender").textContent}|${li.querySelector(".body").textContent}`),
  );
}

/** Waits until the message with this body shows in `state`. */
function waitFor(page, body, state) {
  return page.waitForFunction(
    ([body, state]) =>
      [...document.querySelectorAll("#messages li")].some(
        (li) => li.querySelector(".body")?.textContent === body && li.dataset.state === state,
      ),
    [body, state],
    WAIT,
  );
}

function waitConnection(page, state) {
  return page.waitForSelector(`#connection[data-state="${state}"]`, WAIT);
}

/** Alice's invite link for her open thread, from the Invite button. */
async function inviteLink(page) {
  await page.getByRole("button", { name: "Invite", exact: true }).click();
  await page.waitForSelector("#invite-panel:not([hidden])", WAIT);
  return page.getByLabel(/^Invite link/).inputValue();
}

test("sign in, create a thread, send with Enter (Shift+Enter is a new line); sent, and all there after a reload", { timeout: 300_000 }, async () => {
  const server = await startServer();
  const alice = await profile(`${server.url}/www/`);
  try {
    const { page } = alice;
    await page.screenshot({ path: `${shots}demo-sign-in.png` });
    await signIn(page, "alice");
    assert.equal(await page.textContent("#whoami"), "Signed in as alice");
    await createThread(page, "Weekend plans");
    await createThread(page, "Book club");
    await page.getByRole("textbox", { name: /^Message/ }).fill("Chapter 3");
    await page.getByRole("textbox", { name: /^Message/ }).press("Shift+Enter");
    await page.getByRole("textbox", { name: /^Message/ }).type("by Friday?");
    await page.getByRole("textbox", { name: /^Message/ }).press("Enter");
    await waitFor(page, "Chapter 3\nby Friday?", "sent");
    await page.screenshot({ path: `${shots}demo-thread-list.png` });

    await page.getByRole("button", { name: "Weekend plans" }).click();
    await send(page, "Hiking on Saturday?");
    await waitFor(page, "Hiking on Saturday?", "sent");

    // Input the SDK refuses shows its code and adds nothing.
    await send(page, "   ");
    await page.waitForSelector('#error[data-code="invalid_input"]', WAIT);
    assert.match(await page.textContent("#error"), /Not sent: .*\(invalid_input\)/);
    assert.deepEqual(await shown(page), ["sent|alice (you)|Hiking on Saturday?"]);

    await page.reload();
    await page.waitForSelector("body[data-ready=true]", WAIT);
    await waitFor(page, "Hiking on Saturday?", "sent");
    assert.equal(await page.textContent("#thread-heading"), "Weekend plans", "the last open thread opens again");
    assert.deepEqual(await page.$$eval("#threads .title", (t) => t.map((e) => e.textContent)), ["Weekend plans", "Book club"]);
    assert.deepEqual(alice.errors, []);
  } finally {
    await alice.context.close();
    await server.stop();
  }
});

test("two tabs of one user: each shows what the other sends, and both reach sent", { timeout: 300_000 }, async () => {
  const server = await startServer();
  const alice = await profile(`${server.url}/www/`);
  try {
    const first = alice.page;
    await signIn(first, "alice");
    await createThread(first, "Errands");
    await send(first, "Milk");
    await waitFor(first, "Milk", "sent");
    // The second tab is signed in already (same profile) and opens the last thread.
    const second = await alice.context.newPage();
    second.on("pageerror", (e) => alice.errors.push(e.message));
    await second.goto(`${server.url}/www/`);
    await second.waitForSelector("body[data-ready=true]", WAIT);
    await waitFor(second, "Milk", "sent");
    await send(second, "Bread");
    await waitFor(first, "Bread", "sent");
    await send(first, "Eggs");
    await waitFor(second, "Eggs", "sent");
    const expected = ["sent|alice (you)|Milk", "sent|alice (you)|Bread", "sent|alice (you)|Eggs"];
    assert.deepEqual(await shown(first), expected);
    assert.deepEqual(await shown(second), expected);
    assert.deepEqual(alice.errors, []);
  } finally {
    await alice.context.close();
    await server.stop();
  }
});

test("two users chat: Bob joins by invite link, both see each other, unread counts, edit and delete reach the other side, history pages back on scroll", { timeout: 300_000 }, async () => {
  const server = await startServer();
  const alice = await profile(`${server.url}/www/`);
  let bob;
  try {
    const a = alice.page;
    await signIn(a, "alice");
    await createThread(a, "Weekend plans");
    await send(a, "Hiking on Saturday?");
    await send(a, "I'll bring snacks");
    await waitFor(a, "I'll bring snacks", "sent");
    const link = await inviteLink(a);
    assert.match(link, new RegExp(`^${server.url}/www/#k=[A-Za-z0-9_-]+$`), "the key travels in the fragment only");
    await a.screenshot({ path: `${shots}demo-invite.png` });

    // Bob opens the link in his own profile: asked for a name, then the thread arrives by sync.
    bob = await profile(link);
    const b = bob.page;
    assert.equal(await b.isVisible("#invite-note"), true);
    await signIn(b, "bob");
    await b.waitForFunction(() => document.querySelector("#thread-heading").textContent === "Weekend plans", null, WAIT);
    await waitFor(b, "I'll bring snacks", "sent");
    assert.equal(new URL(b.url()).hash, "", "the key leaves the address bar once imported");
    await send(b, "Count me in!");
    await waitFor(a, "Count me in!", "sent");
    assert.deepEqual(await shown(a), [
      "sent|alice (you)|Hiking on Saturday?",
      "sent|alice (you)|I'll bring snacks",
      "sent|bob|Count me in!",
    ]);

    // Edit and delete of Alice's own messages reach Bob.
    await a.locator("#messages li", { hasText: "Hiking on Saturday?" }).getByRole("button", { name: "Edit" }).click();
    await a.getByLabel("Edit your message").fill("Hiking on Sunday?");
    await a.getByLabel("Edit your message").press("Enter");
    await b.waitForFunction(() => document.querySelector("#messages li .edited")?.closest("li").querySelector(".body").textContent === "Hiking on Sunday?", null, WAIT);
    await a.locator("#messages li", { hasText: "snacks" }).getByRole("button", { name: "Delete" }).click();
    await waitFor(b, "Message deleted", "sent");
    assert.equal(await a.locator("#messages li", { hasText: "Count me in!" }).getByRole("button").count(), 0, "no Edit or Delete on Bob's message");

    // A second thread for Bob, by a link pasted into his open tab; messages in the first now count as unread.
    await createThread(a, "Book club");
    await send(a, "Next book?");
    await waitFor(a, "Next book?", "sent");
    await b.goto(await inviteLink(a));
    await b.waitForFunction(() => document.querySelector("#thread-heading").textContent === "Book club", null, WAIT);
    await a.getByRole("button", { name: "Weekend plans" }).click();
    await send(a, "Bring boots");
    await send(a, "And water");
    await b.waitForFunction(() => document.querySelector("#threads .unread")?.textContent === "2 unread", null, WAIT);
    const unread = b.locator("#threads button", { hasText: "Weekend plans" }).locator(".unread");
    assert.equal(await unread.textContent(), "2 unread", "the badge is on the thread that got them");
    await b.screenshot({ path: `${shots}demo-unread.png` });
    await b.getByRole("button", { name: /Weekend plans/ }).click();
    await waitFor(b, "And water", "sent");
    await b.waitForFunction(() => !document.querySelector("#threads .unread"), null, WAIT);

    // Alice loses the network mid-conversation: her next message waits, pending, among the sent ones.
    await send(b, "Boots packed. When do we leave?");
    await waitFor(a, "Boots packed. When do we leave?", "sent");
    await alice.context.setOffline(true);
    await send(a, "At 8, from the station");
    await waitFor(a, "At 8, from the station", "pending");
    await waitConnection(a, "offline");
    await a.screenshot({ path: `${shots}demo-conversation.png` });
    await alice.context.setOffline(false);
    await waitFor(b, "At 8, from the station", "sent");

    // History: 40 more; after a reload Bob sees the newest page and scrolls back to the start.
    for (let n = 1; n <= 40; n++) await send(a, `Plan item ${n}`);
    await waitFor(b, "Plan item 40", "sent");
    await b.reload();
    await b.waitForSelector("body[data-ready=true]", WAIT);
    await waitFor(b, "Plan item 40", "sent");
    assert.equal(await b.locator("#messages li").count(), 30, "one page");
    assert.equal(await b.isVisible("#history-start"), false);
    await b.locator("#history").evaluate((box) => (box.scrollTop = 0));
    await b.waitForSelector("#history-start:not([hidden])", WAIT);
    const all = await shown(b);
    assert.equal(all.length, 47);
    assert.equal(all[0], "sent|alice|Hiking on Sunday?");
    assert.equal(all.at(-1), "sent|alice|Plan item 40");
    assert.deepEqual(alice.errors, []);
    assert.deepEqual(bob.errors, []);
  } finally {
    await alice.context.close();
    await bob?.context.close();
    await server.stop();
  }
});

test("offline: a send shows pending and the indicator offline, survives a reload while still queued, and is sent once online", { timeout: 300_000 }, async () => {
  const server = await startServer();
  const alice = await profile(`${server.url}/www/`);
  try {
    const { page, context } = alice;
    await signIn(page, "alice");
    await createThread(page, "Train ride");
    await send(page, "Boarding now");
    await waitFor(page, "Boarding now", "sent");
    // The app shell is cached by the page's service worker for the offline reload below.
    await page.evaluate(() => navigator.serviceWorker.ready);

    await context.setOffline(true);
    await send(page, "In the tunnel");
    await waitFor(page, "In the tunnel", "pending");
    // The indicator flips to syncing at each retry: wait for a moment it reads offline.
    await page.waitForFunction(() => /^Offline \(network\) · 1 waiting to send$/.test(document.querySelector("#connection").textContent), null, WAIT);
    await page.screenshot({ path: `${shots}demo-offline.png` });

    const reloaded = await page.reload();
    assert.ok(reloaded.fromServiceWorker(), "the offline reload is served by the app's service worker");
    await page.waitForSelector("body[data-ready=true]", WAIT);
    await waitFor(page, "In the tunnel", "pending");
    await send(page, "Still no signal");
    await waitFor(page, "Still no signal", "pending");
    assert.deepEqual((await shown(page)).map((row) => row.split("|")[0]), ["sent", "pending", "pending"]);

    await context.setOffline(false);
    await waitFor(page, "Still no signal", "sent");
    assert.deepEqual(await shown(page), [
      "sent|alice (you)|Boarding now",
      "sent|alice (you)|In the tunnel",
      "sent|alice (you)|Still no signal",
    ]);
    await page.waitForFunction(() => !/waiting to send/.test(document.querySelector("#connection").textContent), null, WAIT);
    assert.deepEqual(alice.errors, []);
  } finally {
    await alice.context.close();
    await server.stop();
  }
});

test("server restart mid-conversation: what Alice writes meanwhile waits, then reaches Bob; both pages work after a reload", { timeout: 300_000 }, async () => {
  let server = await startServer();
  const { dir, port } = server;
  const alice = await profile(`${server.url}/www/`);
  let bob;
  try {
    const a = alice.page;
    await signIn(a, "alice");
    await createThread(a, "Release");
    await send(a, "Deploying the server");
    bob = await profile(await inviteLink(a));
    const b = bob.page;
    await signIn(b, "bob");
    await waitFor(b, "Deploying the server", "sent");

    await server.stop({ keepData: true });
    await send(a, "It is restarting");
    await waitFor(a, "It is restarting", "pending");
    await waitConnection(a, "offline");

    server = await startServer({ dir, port });
    await waitFor(a, "It is restarting", "sent");
    await waitFor(b, "It is restarting", "sent");

    await a.reload();
    await a.waitForSelector("body[data-ready=true]", WAIT);
    await send(b, "Looks fine from here");
    await waitFor(a, "Looks fine from here", "sent");
    assert.deepEqual(await shown(a), [
      "sent|alice (you)|Deploying the server",
      "sent|alice (you)|It is restarting",
      "sent|bob|Looks fine from here",
    ]);
    assert.deepEqual(alice.errors, []);
    assert.deepEqual(bob.errors, []);
  } finally {
    await alice.context.close();
    await bob?.context.close();
    await server.stop();
  }
});

test("a message under a key Bob lacks shows as undecryptable with its reason; a new invite opens it", { timeout: 300_000 }, async () => {
  const server = await startServer();
  const alice = await profile(`${server.url}/www/`);
  let bob;
  try {
    const a = alice.page;
    await signIn(a, "alice");
    await createThread(a, "Secrets");
    await send(a, "Old key");
    bob = await profile(await inviteLink(a));
    const b = bob.page;
    await signIn(b, "bob");
    await waitFor(b, "Old key", "sent");

    // Alice rotates the thread key (the SDK call, in a bare page of her profile), then writes from the demo.
    await a.goto(`${server.url}/tests/e2e/sdk.html`);
    await a.waitForSelector("body[data-ready=true]", { state: "attached", ...WAIT });
    await a.evaluate(async () => {
      const client = await window.dovecote.ChatClient.open({ dbName: "dovecote-demo-alice", userId: "alice" });
      const [thread] = await client.threads();
      await client.rotateThreadKey(thread.id);
      client.close();
    });
    await a.goto(`${server.url}/www/`);
    await a.waitForSelector("body[data-ready=true]", WAIT);
    await send(a, "New key");
    await waitFor(a, "New key", "sent");

    const locked = b.locator('#messages li[data-state="undecryptable"]');
    await locked.waitFor(WAIT);
    assert.match(await locked.textContent(), /Cannot decrypt \(key_missing\)/);
    assert.equal(await locked.getByRole("button").count(), 0);
    assert.equal(await b.locator("#messages li", { hasText: "New key" }).count(), 0);
    await b.screenshot({ path: `${shots}demo-undecryptable.png` });

    await b.goto(await inviteLink(a));
    await waitFor(b, "New key", "sent");
    assert.deepEqual(await shown(b), ["sent|alice|Old key", "sent|alice|New key"]);
    assert.deepEqual(alice.errors, []);
    assert.deepEqual(bob.errors, []);
  } finally {
    await alice.context.close();
    await bob?.context.close();
    await server.stop();
  }
});

test("a change from the server this version cannot read is shown as set aside, the rest arrives; the header says when it last synced", { timeout: 300_000 }, async () => {
  const server = await startServer();
  const alice = await profile(`${server.url}/www/`);
  let bob;
  try {
    const a = alice.page;
    await signIn(a, "alice");
    await createThread(a, "Mixed versions");
    await send(a, "Readable");
    await send(a, "From the future");
    await send(a, "Readable too");
    await waitFor(a, "Readable too", "sent");
    await a.waitForFunction(() => /^Last synced \S/.test(document.querySelector("#synced").textContent), null, WAIT);
    const link = await inviteLink(a);

    // Bob's first page of messages comes from "a newer server": its second message is of a type this build does not know.
    bob = await profile(link);
    const b = bob.page;
    let altered = false;
    await b.route("**/v1/pull*", async (route) => {
      const response = await route.fetch();
      const page = await response.json();
      const messages = page.changes.filter((c) => c.type === "message");
      if (!altered && messages.length === 3) {
        messages[1].type = "poll";
        altered = true;
      }
      await route.fulfill({ response, json: page });
    });
    await signIn(b, "bob");
    await waitFor(b, "Readable too", "sent");
    await b.waitForSelector("#quarantine:not([hidden])", WAIT);
    assert.equal(altered, true);
    assert.equal(await b.textContent("#quarantine summary"), "1 change from the server could not be read and was set aside");
    assert.match(await b.textContent("#quarantine li"), /^#\d+: .*unknown variant `poll`/);
    assert.deepEqual(await shown(b), ["sent|alice|Readable", "sent|alice|Readable too"]);
    await b.getByText(/could not be read/).click();
    await b.screenshot({ path: `${shots}demo-quarantine.png` });
    await b.unrouteAll({ behavior: "ignoreErrors" });
    assert.deepEqual(bob.errors, []);
  } finally {
    await bob?.context.close();
    await alice.context.close();
    await server.stop();
  }
});

test("a message the server refuses shows failed with Retry and Cancel; Cancel withdraws it", { timeout: 300_000 }, async () => {
  // A request body limit that one long message exceeds: the server answers 413 for good.
  const server = await startServer({ args: ["--body-limit", "8192"] });
  const alice = await profile(`${server.url}/www/`);
  try {
    const { page } = alice;
    await signIn(page, "alice");
    await createThread(page, "Limits");
    await send(page, "short");
    const long = "x".repeat(10_000);
    await send(page, long);
    await waitFor(page, long, "failed");
    const failed = page.locator('#messages li[data-state="failed"]');
    assert.match(await failed.locator(".status").textContent(), /failed: too_large/);
    const refusedAgain = page.waitForResponse((r) => r.url().endsWith("/v1/push") && r.status() === 413, WAIT);
    await failed.getByRole("button", { name: "Retry" }).click();
    await refusedAgain;
    await waitFor(page, long, "failed");
    await page.waitForFunction(() => /^(Up to date|Online) · 1 failed$/.test(document.querySelector("#connection").textContent), null, WAIT);
    await page.screenshot({ path: `${shots}demo-failed.png` });
    await failed.getByRole("button", { name: "Cancel" }).click();
    await waitFor(page, long, "cancelled");
    await waitFor(page, "short", "sent");
    await page.waitForFunction(() => /^(Up to date|Online)$/.test(document.querySelector("#connection").textContent), null, WAIT);
    assert.deepEqual(alice.errors, []);
  } finally {
    await alice.context.close();
    await server.stop();
  }
});
