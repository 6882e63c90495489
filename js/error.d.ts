import type { DovecoteErrorCode } from "./dovecote.js";

/**
 * The class of every error dovecote throws: an `Error` with `name`
 * "DovecoteError" and a stable `code`. `instanceof DovecoteError` recognizes
 * dovecote's errors by that shape, so it also holds across two copies of
 * the package and for errors that crossed a `postMessage`.
 */
export declare class DovecoteError extends Error {
  constructor(code: DovecoteErrorCode, message: string, options?: { cause?: unknown });
  readonly name: "DovecoteError";
  readonly code: DovecoteErrorCode;
}

/**
 * Whether `value` is an error dovecote threw; with `codes`, whether its code
 * is one of them (and its `code` narrows to those).
 */
export declare function isDovecoteError<C extends DovecoteErrorCode = DovecoteErrorCode>(
  value: unknown,
  ...codes: C[]
): value is DovecoteError & { readonly code: C };
