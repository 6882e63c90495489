// The dovecote demo: a small chat page on the SDK's JS API.
// Threads and messages live in IndexedDB, encrypted; reload and they are back.
import init, { ChatClient } from "../pkg/dovecote.js";

const $ = (id) => document.getElementById(id);
let client;
let current = null; // the open thread's id
let unsubscribe = () => {};

function userFromUrl() {
  const user = new URLSearchParams(location.search).get("user") || localStorage.getItem("dovecote-demo-user") || "alice";
  localStorage.setItem("dovecote-demo-user", user);
  return user;
}

function showError(error) {
  $("error").textContent = error ? `${error.code ?? "error"}: ${error.message}` : "";
}

function statusText(status) {
  return status.state === "failed" ? `failed (${status.code})` : status.state;
}

function messageItem(message) {
  const li = document.createElement("li");
  li.dataset.id = message.id;
  const text = document.createElement("span");
  text.className = "body";
  text.textContent = message.undecryptable ? `🔒 undecryptable (${message.undecryptable})` : message.body;
  const meta = document.createElement("span");
  meta.className = `meta status-${message.status.state}`;
  meta.textContent = `${message.sender} · ${new Date(message.clientTs).toLocaleTimeString()} · ${statusText(message.status)}`;
  li.append(text, meta);
  return li;
}

function upsert(message) {
  const list = $("messages");
  const item = messageItem(message);
  const existing = list.querySelector(`li[data-id="${message.id}"]`);
  if (existing) existing.replaceWith(item);
  else list.append(item);
  list.scrollTop = list.scrollHeight;
}

async function renderThreads() {
  const list = $("threads");
  list.replaceChildren();
  for (const thread of await client.threads()) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = thread.title ?? "🔒 undecryptable";
    button.setAttribute("aria-current", String(thread.id === current));
    button.addEventListener("click", () => openThread(thread));
    const li = document.createElement("li");
    li.append(button);
    list.append(li);
  }
}

async function openThread(thread) {
  current = thread.id;
  unsubscribe();
  $("thread-heading").textContent = thread.title ?? "🔒 undecryptable";
  $("composer").hidden = false;
  $("messages").replaceChildren();
  for (const message of await client.messages(thread.id, { limit: 100 })) upsert(message);
  unsubscribe = client.subscribe(thread.id, (change) => change.messages.forEach(upsert));
  history.replaceState(null, "", `?user=${encodeURIComponent(client.userId)}&thread=${thread.id}`);
  await renderThreads();
  $("message-text").focus();
}

async function main() {
  await init();
  const user = userFromUrl();
  client = await ChatClient.open({ dbName: `dovecote-demo-${user}`, userId: user, deviceName: navigator.userAgent });
  $("whoami").textContent = `Signed in as ${user} (device ${client.deviceId.slice(0, 8)})`;

  $("new-thread").addEventListener("submit", async (event) => {
    event.preventDefault();
    showError(null);
    const members = $("thread-members").value.split(",").map((m) => m.trim()).filter(Boolean);
    try {
      const thread = await client.createThread({ title: $("thread-title").value, members });
      event.target.reset();
      await openThread(thread);
    } catch (error) {
      showError(error);
    }
  });

  const send = async () => {
    showError(null);
    const text = $("message-text").value;
    try {
      $("message-text").value = "";
      await client.send(current, text);
    } catch (error) {
      $("message-text").value = text;
      showError(error);
    }
  };
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  $("message-text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      send();
    }
  });

  await renderThreads();
  const wanted = new URLSearchParams(location.search).get("thread");
  const thread = (await client.threads()).find((t) => t.id === wanted);
  if (thread) await openThread(thread);
  document.body.dataset.ready = "true";
}

main().catch((error) => {
  showError(error);
  $("whoami").textContent = "Could not start";
});
