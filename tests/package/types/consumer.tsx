// Uses every export of `dovecote` and `dovecote/react` the way a strict
// TypeScript app would; tests/package/package.test.mjs compiles it with
// `tsc --noEmit --strict` against the packed package. It must compile with
// no error, and without casts or `any`.
import init, { ChatClient, DovecoteError, initSync, isDovecoteError } from "dovecote";
import type {
  ClientEvent,
  CreateThreadOptions,
  DovecoteErrorCode,
  ImportedInvite,
  Message,
  MessageStatus,
  OpenOptions,
  OutboxEntry,
  Quarantine,
  QuarantinedChange,
  PageOptions,
  RoundStats,
  SyncStats,
  SyncState,
  Thread,
  ThreadChange,
} from "dovecote";
import type * as wasm from "dovecote/dovecote_bg.wasm";
import { useMessages, useOutbox, useSyncStatus, useThreads } from "dovecote/react";
import type { MessagesOptions, MessagesState, OutboxState, SyncStatus, ThreadsState } from "dovecote/react";

export async function everyCall(bytes: ArrayBuffer): Promise<void> {
  await init();
  await init({ module_or_path: new URL("https://cdn.example/dovecote_bg.wasm") });
  initSync({ module: bytes });
  const wasmTypes: typeof wasm.memory extends WebAssembly.Memory ? true : false = true;
  void wasmTypes;

  const options: OpenOptions = { dbName: "db", userId: "alice", deviceName: "laptop", serverUrl: "https://chat.example", token: "t" };
  const client: ChatClient = await ChatClient.open(options);
  const me: string = client.userId;
  const device: string = client.deviceId;
  const state: SyncState = client.syncState;

  const create: CreateThreadOptions = { title: "Lunch", members: ["bob"] };
  const thread: Thread = await client.createThread(create);
  const title: string = thread.title ?? thread.undecryptable ?? "";
  const threads: Thread[] = await client.threads();

  const sent: Message = await client.send(thread.id, "hi");
  const page: PageOptions = { before: sent.id, limit: 10 };
  const newest: Message[] = await client.messages(thread.id);
  const older: Message[] = await client.messages(thread.id, page);
  const edited: Message = await client.edit(sent.id, "hello");
  const deleted: Message = await client.delete(sent.id);
  await client.retry(sent.id);
  await client.cancel(sent.id);
  const outbox: OutboxEntry[] = await client.outbox();
  const firstError: DovecoteErrorCode | undefined = outbox[0]?.error?.code;
  const quarantine: Quarantine = await client.quarantine();
  const aside: QuarantinedChange | undefined = quarantine.entries[0];
  console.log(quarantine.dropped, aside?.seq, aside?.subject, aside?.reason, aside?.raw, aside?.receivedAt, aside?.reader);

  const stop: () => void = client.subscribe(thread.id, (change: ThreadChange) => {
    for (const m of change.messages) describeStatus(m.status);
  });
  const off = client.onEvent((event: ClientEvent) => {
    switch (event.type) {
      case "sync":
        if (event.error) console.log(event.state, event.error.code satisfies DovecoteErrorCode);
        console.log(event.pending satisfies number, event.lastSyncedAt satisfies number | null, event.cursor);
        break;
      case "round":
        console.log(event.round.bytesUp satisfies number, event.round.compressionRatio satisfies number | null);
        break;
      case "status":
        describeStatus(event.message.status);
        break;
      case "conflict":
        console.log(event.threadId, event.messageId, event.code);
        break;
      case "leader":
        console.log(event.leader);
        break;
      case "quarantined":
        console.log(event.count satisfies number);
        break;
      case "threads":
      case "outbox":
      case "version_change":
      case "fatal":
        break;
      default: {
        const never: never = event;
        throw new Error(String(never));
      }
    }
  });
  await client.syncNow();
  const stats: SyncStats = client.syncStats();
  const last: RoundStats | undefined = stats.rounds.at(-1);
  console.log(stats.roundCount, stats.failedRounds, stats.totals.pushed, last?.durationMs);
  client.setToken("new token");
  await client.rotateThreadKey(thread.id);
  const code: string = await client.exportThreadInvite(thread.id);
  const imported: ImportedInvite = await client.importThreadInvite(code);
  stop();
  off();
  client.close();
  client.free();

  try {
    await ChatClient.open({ dbName: "db", userId: "" });
  } catch (e: unknown) {
    if (isDovecoteError(e, "invalid_input", "wrong_user")) {
      const narrowed: "invalid_input" | "wrong_user" = e.code;
      console.log(narrowed, e.message);
    } else if (e instanceof DovecoteError) {
      const any: DovecoteErrorCode = e.code;
      console.log(any, e.name satisfies "DovecoteError");
    }
  }
  const mine = new DovecoteError("not_found", "no such thing", { cause: "test" });
  const mineCode: DovecoteErrorCode = mine.code;
  console.log(me, device, state, title, threads, newest, older, edited, deleted, firstError, imported, mineCode);
}

function describeStatus(status: MessageStatus): string {
  switch (status.state) {
    case "failed":
      return `${status.code}${status.recoverable ? " (retrying)" : ""}: ${status.message}`;
    case "pending":
    case "sending":
    case "sent":
    case "cancelled":
      return status.state;
  }
}

export function Chat({ client, threadId }: { client: ChatClient | null; threadId: string | undefined }) {
  const threads: ThreadsState = useThreads(client);
  const options: MessagesOptions = { limit: 30 };
  const view: MessagesState = useMessages(client, threadId, options);
  const sync: SyncStatus = useSyncStatus(client);
  const outbox: OutboxState = useOutbox(client);
  const waiting: number = outbox.entries.filter((e) => e.state !== "failed").length;
  const error = view.error ?? threads.error ?? outbox.error;
  return (
    <div data-state={sync.state} title={sync.error?.code}>
      {threads.loading ? "…" : threads.threads.map((t) => <b key={t.id}>{t.title}</b>)}
      {view.hasOlder && (
        <button disabled={view.loadingOlder || view.loading} onClick={() => void view.loadOlder()}>
          older
        </button>
      )}
      {view.messages.map((m) => (
        <p key={m.id}>{m.body ?? m.undecryptable}</p>
      ))}
      {isDovecoteError(error) ? error.code : error?.message}
      {waiting}
    </div>
  );
}
