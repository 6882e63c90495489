// A small chat on dovecote/react: threads, one thread's messages with
// paging, a composer, and the sync state and outbox in the header.
import { memo, useEffect, useRef, useState } from "react";
import { ChatClient, isDovecoteError } from "dovecote";
import { useMessages, useOutbox, useSyncStatus, useThreads } from "dovecote/react";

/**
 * When the last client of each database closes: the next open waits for it.
 * Under StrictMode (dev) React mounts, unmounts and mounts again at once;
 * this way the database is opened once, not twice at the same time.
 */
const lastClose = new Map();

/** Opens the user's client (once per user), closes it on unmount. */
function useClient(user, serverUrl) {
  const [client, setClient] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    if (!user) return undefined;
    const dbName = `dovecote-react-${user}`;
    const previous = lastClose.get(dbName) ?? Promise.resolve();
    let release;
    lastClose.set(dbName, new Promise((resolve) => (release = resolve)));
    let opened = null;
    let cancelled = false;
    previous.then(async () => {
      if (cancelled) return release();
      try {
        const c = await ChatClient.open({
          dbName,
          userId: user,
          // The example's server has the dev-only sign-in (loopback): with a
          // production server, pass `getToken` (or `token`) from your
          // identity provider instead of `devSignIn`.
          ...(serverUrl ? { serverUrl, devSignIn: true } : {}),
        });
        if (cancelled) {
          c.close();
          release();
        } else {
          setClient((opened = c));
        }
      } catch (e) {
        release();
        if (!cancelled) setError(e);
      }
    });
    return () => {
      cancelled = true;
      if (opened) {
        opened.close();
        release();
      }
      setClient(null);
    };
  }, [user, serverUrl]);
  return { client, error };
}

/** How many times each component rendered: the tests read it to check that nothing re-renders for nothing. */
function useRenderCount(name) {
  const count = useRef(0);
  count.current += 1;
  useEffect(() => {
    document.body.dataset[`renders${name}`] = String(count.current);
  });
}

function describe(error) {
  if (!error) return "";
  return isDovecoteError(error) ? `${error.code}: ${error.message}` : String(error);
}

/** A transient failure is still queued and retried by the outbox: to the user it is pending. */
function describeStatus(status) {
  if (status.state !== "failed") return status.state;
  return status.recoverable ? `pending, will retry (${status.code})` : `failed: ${status.code}`;
}

export function App({ user, serverUrl, pageSize }) {
  const { client, error } = useClient(user, serverUrl);
  const [threadId, setThreadId] = useState(null);
  if (!user) return <p>Add ?user=NAME to the address to sign in.</p>;
  if (error) return <p className="error" id="open-error">{describe(error)}</p>;
  if (!client) return <p>Opening…</p>;
  return (
    <>
      <Header client={client} user={user} />
      <main>
        <Threads client={client} current={threadId} onSelect={setThreadId} />
        {threadId ? <Conversation client={client} threadId={threadId} pageSize={pageSize} /> : <p>Pick or create a thread.</p>}
      </main>
    </>
  );
}

function Header({ client, user }) {
  const sync = useSyncStatus(client);
  return (
    <header>
      <strong>{user}</strong>
      <span id="sync" data-state={sync.state} title={sync.error?.message ?? ""}>
        {sync.state}
        {sync.error ? ` (${sync.error.code})` : ""}
      </span>
      <Outbox client={client} />
      <button id="sync-now" onClick={() => client.syncNow()}>Sync now</button>
    </header>
  );
}

const Outbox = memo(function Outbox({ client }) {
  useRenderCount("Outbox");
  const { entries, error } = useOutbox(client);
  const failed = entries.filter((e) => e.state === "failed").length;
  return (
    <span id="outbox" data-count={entries.length}>
      {entries.length === 0 ? "all sent" : `${entries.length} waiting${failed ? `, ${failed} failed` : ""}`}
      {error ? <span className="error"> {describe(error)}</span> : null}
    </span>
  );
});

function Threads({ client, current, onSelect }) {
  const { threads, loading, error } = useThreads(client);
  const [creating, setCreating] = useState(false);
  const create = async () => {
    setCreating(true);
    try {
      const thread = await client.createThread({ title: `Thread ${threads.length + 1}` });
      onSelect(thread.id);
    } finally {
      setCreating(false);
    }
  };
  return (
    <nav id="threads" data-loading={loading}>
      <button id="new-thread" onClick={create} disabled={creating}>New thread</button>
      {error ? <p className="error">{describe(error)}</p> : null}
      {threads.map((t) => (
        <button key={t.id} className="thread" data-id={t.id} aria-current={t.id === current} onClick={() => onSelect(t.id)}>
          {t.title ?? `(${t.undecryptable})`}
        </button>
      ))}
    </nav>
  );
}

function Conversation({ client, threadId, pageSize }) {
  return (
    <section>
      <Messages client={client} threadId={threadId} pageSize={pageSize} />
      <Composer client={client} threadId={threadId} />
    </section>
  );
}

const Messages = memo(function Messages({ client, threadId, pageSize }) {
  useRenderCount("Messages");
  const { messages, hasOlder, loading, loadingOlder, error, loadOlder } = useMessages(client, threadId, { limit: pageSize });
  return (
    <ol id="messages" data-loading={loading} data-has-older={hasOlder}>
      {hasOlder ? (
        <li>
          <button id="load-older" onClick={loadOlder} disabled={loadingOlder}>
            {loadingOlder ? "Loading…" : "Load older"}
          </button>
        </li>
      ) : null}
      {error ? <li className="error">{describe(error)}</li> : null}
      {messages.map((m) => (
        <li
          key={m.id}
          className="message"
          data-id={m.id}
          data-status={m.status.state}
          data-recoverable={m.status.state === "failed" ? String(m.status.recoverable) : undefined}
        >
          <b>{m.sender}</b> <span className="body">{m.deleted ? "(deleted)" : m.body ?? `(${m.undecryptable})`}</span>
          <span className="status">{describeStatus(m.status)}</span>
        </li>
      ))}
    </ol>
  );
});

function Composer({ client, threadId }) {
  const [text, setText] = useState("");
  const [error, setError] = useState(null);
  const send = async (event) => {
    event.preventDefault();
    const body = text;
    setText("");
    try {
      await client.send(threadId, body);
      setError(null);
    } catch (e) {
      setText(body);
      setError(e);
    }
  };
  return (
    <form id="composer" onSubmit={send}>
      <input id="text" value={text} onChange={(e) => setText(e.target.value)} placeholder="Message" />
      <button type="submit">Send</button>
      {error ? <span className="error" id="send-error">{describe(error)}</span> : null}
    </form>
  );
}
