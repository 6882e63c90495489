// DovecoteError: the class of every error dovecote throws, as plain JS (no
// wasm bytes). The wasm side throws `Error` objects with `name`
// "DovecoteError" and a string `code`; `instanceof DovecoteError` recognizes
// them by that shape (Symbol.hasInstance), so it holds across the package
// boundary, across two copies of the package in one bundle, and for errors
// passed through structured clone (postMessage) or from another realm.
// scripts/package.mjs appends this file, without its comments, to the
// generated glue (dovecote.js), and error.d.ts to its types.

const NAME = "DovecoteError";

/** Whether `value` has the shape of a dovecote error. */
function looksLikeDovecoteError(value) {
  return (
    typeof value === "object" &&
    value !== null &&
    value.name === NAME &&
    typeof value.code === "string" &&
    typeof value.message === "string"
  );
}

export class DovecoteError extends Error {
  /**
   * @param {string} code one of `DovecoteErrorCode`
   * @param {string} message
   * @param {{ cause?: unknown }} [options]
   */
  constructor(code, message, options) {
    super(message, options);
    this.name = NAME;
    this.code = code;
  }

  static [Symbol.hasInstance](value) {
    return looksLikeDovecoteError(value);
  }
}

/**
 * Whether `value` is an error dovecote threw, optionally with one of `codes`.
 * @param {unknown} value
 * @param {...string} codes
 */
export function isDovecoteError(value, ...codes) {
  return looksLikeDovecoteError(value) && (codes.length === 0 || codes.includes(value.code));
}
