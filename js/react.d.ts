// Types of `dovecote/react`: React hooks over a `ChatClient`.
import type { ChatClient, DovecoteErrorCode, Message, OutboxEntry, SyncState, Thread } from "./dovecote.js";

/**
 * Every hook takes the client, or `null`/`undefined` while it is being
 * opened (the hook then shows an empty, not-loading state and listens to
 * nothing). Snapshots are frozen and replaced only when what they show
 * changed; records that did not change keep their object identity.
 *
 * `error` is the last failed read: a `DovecoteError` (narrow it with
 * `isDovecoteError`) or, for misuse such as a freed client, the glue's
 * `Error`. It is cleared by the next read that succeeds.
 */
export interface ThreadsState {
  /** Every thread on this device (`client.threads()`). */
  readonly threads: readonly Thread[];
  /** The first read has not answered yet. */
  readonly loading: boolean;
  readonly error: Error | null;
}

/** Every thread, read again on the client's `threads` events. */
export declare function useThreads(client: ChatClient | null | undefined): ThreadsState;

/** Options of `useMessages`. */
export interface MessagesOptions {
  /** Messages per page, the first and each `loadOlder()` (1 to 1000, default 50). */
  limit?: number;
}

export interface MessagesState {
  /** Oldest first: the pages read so far and every change since. */
  readonly messages: readonly Message[];
  /** The last page read was full: `loadOlder()` may find more. */
  readonly hasOlder: boolean;
  /** The first page has not answered yet. */
  readonly loading: boolean;
  /** A `loadOlder()` is under way. */
  readonly loadingOlder: boolean;
  readonly error: Error | null;
  /**
   * Reads the `limit` messages before the oldest page read so far. Does
   * nothing while loading, without `hasOlder`, or after unmount. Stable:
   * the same function for the life of the hook's arguments.
   */
  readonly loadOlder: () => Promise<void>;
}

/**
 * A thread's messages, oldest first: the newest `limit`, older pages on
 * `loadOlder()`, and every change as the client reports it (local echo,
 * status, edits, deletes, messages from sync and from other tabs).
 */
export declare function useMessages(
  client: ChatClient | null | undefined,
  threadId: string | null | undefined,
  options?: MessagesOptions,
): MessagesState;

export interface SyncStatus {
  /** `client.syncState`, updated on every `sync` event. */
  readonly state: SyncState;
  /** Why, for `offline` and `error`; else null. */
  readonly error: { readonly code: DovecoteErrorCode; readonly message: string } | null;
}

/** Where background sync stands. */
export declare function useSyncStatus(client: ChatClient | null | undefined): SyncStatus;

export interface OutboxState {
  /** What waits to be sent, oldest first (`client.outbox()`). */
  readonly entries: readonly OutboxEntry[];
  readonly loading: boolean;
  readonly error: Error | null;
}

/** The outbox, read again on `outbox`, `status`, `sync` and `threads` events. */
export declare function useOutbox(client: ChatClient | null | undefined): OutboxState;
