// A user's app in miniature: open a client, make a thread, send a message
// and show its status as it changes. `?db=&user=` pick the database and the
// user; `&server=` syncs with a dovecote server.
import init, { ChatClient, DovecoteError, isDovecoteError } from "dovecote";

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

try {
  await init();
  // An error thrown by the wasm is recognized by the package's exports.
  try {
    await ChatClient.open({ dbName: "refused", userId: "" });
  } catch (e) {
    document.body.dataset.refused = JSON.stringify({
      code: e.code,
      instance: e instanceof DovecoteError,
      guard: isDovecoteError(e),
      guardCode: isDovecoteError(e, "invalid_input"),
      otherCode: isDovecoteError(e, "closed"),
      plainError: new Error("x") instanceof DovecoteError,
    });
  }
  const options = { dbName: params.get("db"), userId: params.get("user") };
  if (params.has("server")) Object.assign(options, { serverUrl: params.get("server"), devSignIn: true });
  const client = await ChatClient.open(options);
  const thread = await client.createThread({ title: "From the npm package", members: ["bob"] });
  document.body.dataset.thread = thread.id;

  // Subscribers hear of the message (local echo, then each status change)
  // possibly before `send` resolves: keep the latest of each.
  const latest = new Map();
  let mine = null;
  const show = (m) => {
    $("body").textContent = m.body;
    $("status").value = m.status.state;
    document.body.dataset.seq = m.seq ?? "";
  };
  client.subscribe(thread.id, ({ messages }) => {
    for (const m of messages) {
      latest.set(m.id, m);
      if (m.id === mine) show(m);
    }
  });
  const message = await client.send(thread.id, params.get("text") ?? "Hello from a consumer app");
  mine = message.id;
  document.body.dataset.message = mine;
  show(latest.get(mine) ?? message);
} catch (e) {
  $("error").textContent = `${e.code ?? e.name}: ${e.message}`;
}
