// The dovecote demo: a small chat app on the SDK's JS API, no framework.
// Everything is written (encrypted) to IndexedDB first and synced with the
// server that serves this page, so it keeps working offline and after reload.
import init, { ChatClient } from "/pkg/dovecote.js";

const PAGE = 30; // messages per page of history
const USER_KEY = "dovecote-demo-user";
const $ = (id) => document.getElementById(id);

let client = null;
let me = "";
let current = null; // the open thread
let shown = new Map(); // id → Message, for the open thread
let atStart = false; // the open thread's first message is shown
let loadingOlder = false;
let editing = null; // id of the message being edited
let stopThread = () => {};
const watched = new Map(); // thread id → unsubscribe, for unread counts
let joining = null; // thread id of an imported invite that has not synced yet
let sync = { state: "starting", error: null };
let outbox = { waiting: 0, failed: 0 };

/** `h("p", { className: "x" }, child…)`: an element with properties and children. */
function h(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children.filter((c) => c !== null && c !== false && c !== undefined));
  return node;
}

// What a user can do about each DovecoteError code; the code itself is shown too.
const HINTS = {
  network: "The server cannot be reached; try again when online.",
  timeout: "The server did not answer in time; try again.",
  unauthorized: "The server refused the sign-in.",
  rate_limited: "The server asks to slow down; try again in a minute.",
  storage_unavailable: "This browser will not store data here (private mode?), or another tab is upgrading the database: close other tabs and reload.",
  storage: "The browser's database failed; reload and try again.",
  quota_exceeded: "The browser's storage is full; nothing was saved.",
  version_change: "Another tab upgraded the database: reload this page.",
  closed: "This page lost its database connection: reload.",
  wrong_user: "This browser's database for that name belongs to someone else.",
  invalid_input: "That cannot be used: empty, only spaces, or too long.",
  invite_encoding: "This invite link is damaged or not from dovecote.",
  invite_truncated: "This invite link is cut short: copy all of it.",
  invite_version: "This invite link comes from a newer version of dovecote.",
  invite_malformed: "This invite link is damaged or not from dovecote.",
  key_id_conflict: "This invite's key clashes with a key this device already has.",
  not_queued: "Nothing for that message is waiting to be sent.",
  in_flight: "It is being sent right now; try again in a moment.",
  maybe_sent: "It may already have arrived: delete it instead.",
  not_failed: "That message has not failed.",
  not_sender: "Only the sender can change a message.",
  deleted: "That message was deleted.",
  not_found: "Not found on this device.",
};

function showError(error, doing) {
  const box = $("error");
  if (!error) {
    box.textContent = "";
    delete box.dataset.code;
    return;
  }
  const code = error.code ?? "error";
  if (!error.code) console.error(error);
  box.dataset.code = code;
  box.textContent = `${doing ? `${doing}: ` : ""}${HINTS[code] ?? error.message} (${code})`;
}

/** Runs an action from a button or form: clears the last error, shows the new one. */
async function attempt(doing, action) {
  showError(null);
  try {
    return await action();
  } catch (error) {
    showError(error, doing);
  }
}

// Connection indicator -----------------------------------------------------

const SYNC_LABELS = { starting: "Starting…", online: "Online", idle: "Up to date", syncing: "Syncing…", offline: "Offline", error: "Sync error" };

function showConnection() {
  const box = $("connection");
  box.dataset.state = sync.state;
  const why = sync.error ? ` (${sync.error.code})` : "";
  const waiting = outbox.waiting ? ` · ${outbox.waiting} waiting to send` : "";
  const failed = outbox.failed ? ` · ${outbox.failed} failed` : "";
  box.textContent = `${SYNC_LABELS[sync.state] ?? sync.state}${why}${waiting}${failed}`;
}

/** The time of the last round that left the client up to date (this tab's clock). */
function showSynced() {
  const box = $("synced");
  box.hidden = false;
  box.textContent = `Last synced ${new Date().toLocaleTimeString()}`;
}

/** Changes from the server this version could not read, set aside (client.quarantine()). */
async function refreshQuarantine() {
  const { entries, dropped } = await client.quarantine();
  const box = $("quarantine");
  const count = entries.length + dropped;
  box.hidden = count === 0;
  box.querySelector("summary").textContent = `${count} change${count === 1 ? "" : "s"} from the server could not be read and ${count === 1 ? "was" : "were"} set aside`;
  box.querySelector("ul").replaceChildren(
    ...entries.map((e) => {
      const li = document.createElement("li");
      li.textContent = `#${e.seq ?? "?"}: ${e.reason}`;
      return li;
    }),
  );
}

async function refreshOutbox() {
  const entries = await client.outbox();
  const failed = entries.filter((e) => e.state === "failed").length;
  outbox = { waiting: entries.length - failed, failed };
  showConnection();
}

// Messages -----------------------------------------------------------------

const REASONS = {
  key_missing: "this device has no key for it (the thread key changed after your invite; ask for a new one)",
  tampered: "it was altered after it was sealed",
  unknown_version: "it uses a format this version does not know",
  truncated: "it is cut short",
  malformed: "the sender's app sealed it wrongly",
  too_large: "it would open to more than 64 KiB",
  invalid_utf8: "its text is not valid UTF-8",
};

/** Server order for sent messages, then the unsent ones in the order written (ids are time-ordered). */
function order(a, b) {
  return (a.seq ?? Infinity) - (b.seq ?? Infinity) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

/**
 * What the user sees: a recoverable failure is still queued and retries by
 * itself after a backoff, so it shows as pending with the reason; `failed`
 * is kept for refusals that wait for the user (Retry, Edit, Cancel).
 */
function shownState(m) {
  if (m.undecryptable) return "undecryptable";
  const s = m.status;
  return s.state === "failed" && s.recoverable ? "pending" : s.state;
}

function statusLabel(status) {
  if (status.state !== "failed") return status.state;
  return status.recoverable ? `pending, will retry (${status.code})` : `failed: ${status.code}`;
}

/** Withdraws an unsent message; one that may have reached the server already is deleted instead. */
async function withdraw(m) {
  try {
    await client.cancel(m.id);
  } catch (error) {
    if (error.code !== "maybe_sent") throw error;
    await client.delete(m.id);
  }
}

function messageItem(m) {
  const mine = m.sender === me;
  const bodyId = `body-${m.id}`;
  const state = shownState(m);
  let body;
  if (m.undecryptable) {
    body = h("p", { className: "body undecryptable", id: bodyId, textContent: `Cannot decrypt (${m.undecryptable}): ${REASONS[m.undecryptable] ?? ""}` });
  } else if (m.deleted) {
    body = h("p", { className: "body deleted", id: bodyId, textContent: "Message deleted" });
  } else {
    body = h("p", { className: "body", id: bodyId, textContent: m.body });
  }
  const time = new Date(m.serverTs ?? m.clientTs);
  const head = h(
    "div",
    { className: "head" },
    h("span", { className: "sender", textContent: mine ? `${m.sender} (you)` : m.sender }),
    h("time", { dateTime: time.toISOString(), textContent: time.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) }),
    m.edited && !m.deleted && h("span", { className: "edited", textContent: "edited" }),
    mine && h("span", { className: "status", textContent: statusLabel(m.status) }),
  );
  const actions = h("div", { className: "actions" });
  const action = (label, run) => {
    const button = h("button", { type: "button", textContent: label });
    button.setAttribute("aria-describedby", bodyId);
    button.addEventListener("click", run);
    actions.append(button);
  };
  if (mine && state === "failed") action("Retry", () => attempt("Not retried", () => client.retry(m.id)));
  if (mine && (state === "pending" || state === "failed")) action("Cancel", () => attempt("Not cancelled", () => withdraw(m)));
  if (mine && !m.deleted && (state === "pending" || state === "failed" || state === "sent")) action("Edit", () => startEdit(m));
  if (mine && !m.deleted && state === "sent") action("Delete", () => attempt("Not deleted", () => client.delete(m.id)));
  const li = h("li", { className: mine ? "message mine" : "message" }, head, body, actions.childElementCount > 0 && actions);
  li.dataset.id = m.id;
  li.dataset.state = state;
  return li;
}

/** Adds or updates a message in the open thread's list, in order. */
function place(m, { older = false } = {}) {
  if (m.threadId !== current?.id) return;
  const list = $("messages");
  const first = list.firstElementChild && shown.get(list.firstElementChild.dataset.id);
  // A change to a message older than the loaded pages: it shows when the user pages back.
  if (!older && !shown.has(m.id) && !atStart && first && order(m, first) < 0) return;
  shown.set(m.id, m);
  if (editing === m.id) return;
  const item = messageItem(m);
  const old = list.querySelector(`li[data-id="${m.id}"]`);
  if (old) {
    const prev = old.previousElementSibling;
    const next = old.nextElementSibling;
    const inPlace = (!prev || order(shown.get(prev.dataset.id), m) < 0) && (!next || order(m, shown.get(next.dataset.id)) < 0);
    if (inPlace) return old.replaceWith(item);
    old.remove();
  }
  let after = null;
  for (let c = list.lastElementChild; c && order(shown.get(c.dataset.id), m) > 0; c = c.previousElementSibling) after = c;
  list.insertBefore(item, after);
}

function nearBottom(box) {
  return box.scrollHeight - box.scrollTop - box.clientHeight < 48;
}

function scrollToEnd() {
  $("history").scrollTop = $("history").scrollHeight;
}

function showChanges(messages, { older = false } = {}) {
  const box = $("history");
  const stick = !older && nearBottom(box);
  const height = box.scrollHeight;
  for (const m of messages) place(m, { older });
  $("older").hidden = atStart;
  $("history-start").hidden = !atStart;
  if (older) box.scrollTop += box.scrollHeight - height; // keep what the user was reading in place
  else if (stick) scrollToEnd();
  markRead();
}

async function loadOlder() {
  const thread = current;
  const oldest = $("messages").firstElementChild?.dataset.id;
  if (loadingOlder || atStart || !thread || !oldest) return;
  loadingOlder = true;
  $("older").setAttribute("aria-busy", "true");
  try {
    const page = await client.messages(thread.id, { before: oldest, limit: PAGE });
    if (current !== thread) return;
    atStart = page.length < PAGE;
    showChanges(page, { older: true });
  } catch (error) {
    showError(error, "Could not load older messages");
  } finally {
    loadingOlder = false;
    $("older").removeAttribute("aria-busy");
  }
}

function startEdit(m) {
  const item = $("messages").querySelector(`li[data-id="${m.id}"]`);
  editing = m.id;
  const area = h("textarea", { id: `edit-${m.id}`, value: m.body, rows: 2 });
  const finish = () => {
    editing = null;
    if (shown.has(m.id)) place(shown.get(m.id));
  };
  const discard = h("button", { type: "button", textContent: "Discard" });
  discard.addEventListener("click", finish);
  const form = h(
    "form",
    { className: "edit" },
    h("label", { htmlFor: area.id, textContent: "Edit your message" }),
    area,
    h("div", { className: "row" }, h("button", { type: "submit", textContent: "Save" }), discard),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if ((await attempt("Not edited", () => client.edit(m.id, area.value))) !== undefined) finish();
  });
  area.addEventListener("keydown", (event) => {
    if (event.key === "Escape") finish();
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  item.querySelector(".body").replaceWith(form);
  item.querySelector(".actions")?.remove();
  area.focus();
}

// Threads and unread counts --------------------------------------------------

const readKey = (threadId) => `dovecote-demo-read:${me}:${threadId}`;
const lastRead = (threadId) => Number(localStorage.getItem(readKey(threadId)) ?? 0);

/** The open thread counts as read up to the newest message shown, while the page is visible. */
function markRead() {
  if (!current || document.hidden) return;
  const newest = Math.max(0, ...[...shown.values()].map((m) => m.seq ?? 0));
  if (newest > lastRead(current.id)) {
    localStorage.setItem(readKey(current.id), String(newest));
    refreshThreads();
  }
}

/** Others' messages after the last one read (counted among the newest 100). */
async function unreadCount(threadId) {
  const since = lastRead(threadId);
  const page = await client.messages(threadId, { limit: 100 });
  return page.filter((m) => m.sender !== me && m.seq !== null && m.seq > since && !m.deleted).length;
}

const titleOf = (thread) => thread.title ?? `Cannot decrypt the title (${thread.undecryptable})`;

function threadItem(thread, unread) {
  const button = h(
    "button",
    { type: "button", className: "thread" },
    h("span", { className: "title", textContent: titleOf(thread) }),
    unread > 0 && h("span", { className: "unread", textContent: unread >= 100 ? "99+" : String(unread) }, h("span", { className: "visually-hidden", textContent: " unread" })),
  );
  button.dataset.thread = thread.id;
  if (thread.id === current?.id) button.setAttribute("aria-current", "true");
  button.addEventListener("click", () => attempt("Could not open the thread", () => openThread(thread)));
  return h("li", {}, button);
}

async function renderThreads() {
  const threads = await client.threads();
  const counts = await Promise.all(threads.map((t) => (t.id === current?.id ? 0 : unreadCount(t.id))));
  const focused = document.activeElement?.dataset?.thread;
  $("threads").replaceChildren(...threads.map((t, i) => threadItem(t, counts[i])));
  if (focused) $("threads").querySelector(`[data-thread="${focused}"]`)?.focus();
  for (const t of threads) {
    if (!watched.has(t.id)) watched.set(t.id, client.subscribe(t.id, () => t.id !== current?.id && refreshThreads()));
  }
  const joined = joining && threads.find((t) => t.id === joining);
  if (joined) {
    joining = null;
    $("joining").hidden = true;
    await openThread(joined);
  }
}

// Coalesces bursts of changes into one render at a time.
let threadsRender = Promise.resolve();
let threadsDirty = false;
function refreshThreads() {
  if (threadsDirty) return;
  threadsDirty = true;
  threadsRender = threadsRender.then(() => {
    threadsDirty = false;
    return renderThreads();
  }).catch((error) => showError(error, "Could not list threads"));
}

async function openThread(thread) {
  stopThread();
  current = thread;
  shown = new Map();
  atStart = false;
  editing = null;
  localStorage.setItem(`dovecote-demo-thread:${me}`, thread.id);
  $("thread-heading").textContent = titleOf(thread);
  $("invite").hidden = false;
  $("invite-panel").hidden = true;
  $("composer").hidden = false;
  $("messages").replaceChildren();
  stopThread = client.subscribe(thread.id, (change) => showChanges(change.messages));
  const page = await client.messages(thread.id, { limit: PAGE });
  if (current !== thread) return;
  atStart = page.length < PAGE;
  showChanges(page);
  scrollToEnd();
  refreshThreads();
  $("message-text").focus();
}

// Invites --------------------------------------------------------------------

async function makeInvite() {
  const button = $("invite");
  button.disabled = true;
  try {
    const code = await client.exportThreadInvite(current.id);
    $("invite-link").value = `${location.origin}${location.pathname}#k=${code}`;
    $("copied").textContent = "";
    $("invite-panel").hidden = false;
    $("invite-link").select();
  } finally {
    button.disabled = false;
  }
}

async function copyInvite() {
  $("invite-link").select();
  try {
    await navigator.clipboard.writeText($("invite-link").value);
    $("copied").textContent = "Copied.";
  } catch {
    $("copied").textContent = "Selected: press Ctrl+C (⌘C) to copy.";
  }
}

/** Imports the invite in the page's `#k=…` fragment, then forgets it (it holds a key). */
async function joinFromLink(hash) {
  history.replaceState(null, "", location.pathname + location.search);
  const { threadId } = await client.importThreadInvite(hash);
  const thread = (await client.threads()).find((t) => t.id === threadId);
  if (thread) return openThread(thread);
  joining = threadId;
  $("joining").hidden = false;
}

// Sign-in and start-up ---------------------------------------------------------

async function signIn(user) {
  client = await ChatClient.open({ dbName: `dovecote-demo-${user}`, userId: user, serverUrl: location.origin, devSignIn: true, deviceName: "dovecote demo" });
  me = user;
  $("connection").hidden = false;
  localStorage.setItem(USER_KEY, user);
  sync = { state: client.syncState, error: null };
  client.onEvent((event) => {
    if (event.type === "sync") {
      // A retry round while offline keeps showing offline until it gets through (no flicker).
      const retrying = event.state === "syncing" && (sync.state === "offline" || sync.state === "error");
      $("connection").dataset.retrying = String(retrying);
      if (!retrying) sync = event;
      showConnection();
      if (event.state === "idle") showSynced();
    } else if (event.type === "status") {
      refreshOutbox().catch(() => {});
      const s = event.message.status;
      if (s.state === "failed" && !s.recoverable) $("announce").textContent = `A message failed to send: ${s.code}`;
    } else if (event.type === "threads") {
      refreshThreads();
      // A new key may open messages shown as undecryptable: read them again.
      if (current && [...shown.values()].some((m) => m.undecryptable)) openThread(current).catch(showError);
    } else if (event.type === "conflict") {
      $("announce").textContent = "Your edit was dropped: the message was deleted on another device.";
    } else if (event.type === "quarantined") {
      refreshQuarantine().catch(() => {});
    } else if (event.type === "leader") {
      $("connection").title = event.leader ? "This tab syncs for all open tabs" : "Another open tab syncs for this one";
    } else if (event.type === "version_change") {
      showError({ code: "version_change" });
      document.body.classList.add("stale");
    }
  });
  $("sign-in-view").hidden = true;
  $("chat-view").hidden = false;
  $("sign-out").hidden = false;
  $("whoami").textContent = `Signed in as ${user}`;
  await refreshOutbox();
  await refreshQuarantine();
  await renderThreads();
  const last = localStorage.getItem(`dovecote-demo-thread:${me}`);
  const thread = (await client.threads()).find((t) => t.id === last);
  if (thread) await openThread(thread);
}

function wire() {
  $("new-thread").addEventListener("submit", (event) => {
    event.preventDefault();
    attempt("Thread not created", async () => {
      const thread = await client.createThread({ title: $("thread-title").value });
      event.target.reset();
      await openThread(thread);
    });
  });
  const send = () => {
    const area = $("message-text");
    const text = area.value;
    area.value = "";
    attempt("Not sent", async () => {
      try {
        await client.send(current.id, text);
      } catch (error) {
        if (!area.value) area.value = text;
        throw error;
      }
      scrollToEnd();
    });
  };
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  $("message-text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  $("history").addEventListener("scroll", () => $("history").scrollTop < 40 && loadOlder());
  $("older").addEventListener("click", loadOlder);
  $("invite").addEventListener("click", () => attempt("No invite", makeInvite));
  $("copy-invite").addEventListener("click", copyInvite);
  $("close-invite").addEventListener("click", () => ($("invite-panel").hidden = true));
  $("sign-out").addEventListener("click", () => {
    client?.close();
    localStorage.removeItem(USER_KEY);
    location.reload();
  });
  document.addEventListener("visibilitychange", markRead);
  // An invite link pasted into this tab while signed in.
  window.addEventListener("hashchange", () => {
    if (client && location.hash.startsWith("#k=")) attempt("Could not join", () => joinFromLink(location.hash));
  });
}

/** The sign-in form; `invite` says whether the page was opened by an invite link. */
function askForName(invite) {
  $("connection").hidden = true;
  $("synced").hidden = true;
  $("quarantine").hidden = true;
  $("invite-note").hidden = !invite;
  $("sign-in-view").hidden = false;
  $("user-name").focus();
}

async function main() {
  // The app shell (this folder and the SDK) for reloads without a network; see sw.js.
  navigator.serviceWorker?.register("sw.js").catch((error) => console.warn("no offline reloads:", error));
  wire();
  await init();
  let invite = location.hash.startsWith("#k=") ? location.hash : null;
  const join = async () => {
    if (invite) await attempt("Could not join", () => joinFromLink(invite));
    invite = null;
  };
  $("sign-in").addEventListener("submit", (event) => {
    event.preventDefault();
    attempt("Could not sign in", async () => {
      await signIn($("user-name").value.trim());
      await join();
    });
  });
  const user = localStorage.getItem(USER_KEY);
  if (!user) {
    askForName(invite);
  } else {
    try {
      await signIn(user);
      await join();
    } catch (error) {
      showError(error, `Could not open ${user}'s chat`);
      askForName(invite);
    }
  }
  document.body.dataset.ready = "true";
}

main().catch((error) => {
  showError(error, "Could not start");
  $("connection").textContent = "Not started";
});
