// Deliberate misuse: tests/package/package.test.mjs compiles this with
// `tsc --noEmit --strict` and expects exactly the errors named on each
// line (`// error TSnnnn`), and none elsewhere. Each line is a mistake the
// package's types must catch.
import { ChatClient, DovecoteError, isDovecoteError } from "dovecote";
import type { DovecoteErrorCode, Message } from "dovecote";
import { useMessages, useSyncStatus, useThreads } from "dovecote/react";

export async function misuse(client: ChatClient, message: Message, e: unknown): Promise<void> {
  await ChatClient.open({ dbName: "db" }); // error TS2345 (userId is required)
  await ChatClient.open({ dbName: "db", userId: "a", passphrase: 42 }); // error TS2322
  await ChatClient.open({ dbName: "db", userId: "a", serverURL: "x" }); // error TS2561 (no such option: did you mean serverUrl?)
  await client.send(message.id); // error TS2554 (text is required)
  await client.messages(message.threadId, { limit: "10" }); // error TS2322
  await client.createThread({ title: "t", members: "bob" }); // error TS2322
  const body: string = message.body; // error TS2322 (null when deleted)
  if (message.status.state === "failed") console.log(message.status.retryable); // error TS2339
  if (message.status.state === "sent") console.log(message.status.code); // error TS2339
  if (client.syncState === "connected") console.log("never"); // error TS2367
  client.syncState = "idle"; // error TS2540 (read-only)
  const code: DovecoteErrorCode = "no_such_code"; // error TS2322
  if (e instanceof DovecoteError && e.code === "nope") console.log(e); // error TS2367
  if (isDovecoteError(e, "not_a_code")) console.log(e); // error TS2345
  new DovecoteError("made_up", "message"); // error TS2345
  client.onEvent((event) => event.type === "message"); // error TS2367
  new ChatClient(); // error TS2673 (private constructor)
  console.log(body, code);
}

export function Hooks({ client }: { client: ChatClient }) {
  useMessages(client); // error TS2554 (threadId is required)
  useMessages(client, "t", { limit: "10" }); // error TS2322
  useMessages(client, "t", { pageSize: 10 }); // error TS2353
  const { loadOlder, hasOlder } = useMessages(client, "t");
  loadOlder(10); // error TS2554
  const more: string = hasOlder; // error TS2322
  useThreads(client).threads.push(); // error TS2339 (read-only list)
  const state: "connected" = useSyncStatus(client).state; // error TS2322
  useThreads("client"); // error TS2345
  console.log(more, state);
}
