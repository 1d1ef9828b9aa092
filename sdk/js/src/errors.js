// Errors raised by Lodge's host calls, as JavaScript exceptions.
//
// componentize-js throws a `ComponentError` whose `payload` is the WIT error
// variant (`{ tag, val }`) when an imported function returns `err(...)`. The
// SDK turns that into a `LodgeError` with `kind` (the variant's name, e.g.
// "not-found") and `message` (its text).

/** HTTP status for each error kind: what a handler usually answers. */
export const STATUS = Object.freeze({
  'invalid-input': 400,
  'access-denied': 403,
  'not-found': 404,
  'no-such-store': 404,
  'quota-exceeded': 429,
  limit: 429,
  unavailable: 503,
  other: 500,
});

export class LodgeError extends Error {
  /**
   * @param {string} kind the WIT variant, e.g. "not-found"
   * @param {string} [message] what happened
   */
  constructor(kind, message) {
    super(message || kind);
    this.name = 'LodgeError';
    this.kind = kind;
  }

  /** The HTTP status this error usually maps to (500 for unknown kinds). */
  get status() {
    return STATUS[this.kind] ?? 500;
  }

  toJSON() {
    return { kind: this.kind, message: this.message };
  }
}

/** Whether `e` is what componentize-js throws for a WIT `err(...)`. */
function isComponentError(e) {
  return e !== null && typeof e === 'object' && 'payload' in e;
}

/**
 * Converts a WIT error variant (`{ tag, val }`) into a LodgeError. The
 * key-value store reports quota errors as `other("quota-exceeded: …")`; that
 * becomes kind "quota-exceeded".
 */
export function fromVariant(variant) {
  if (variant === null || typeof variant !== 'object' || typeof variant.tag !== 'string') {
    return new LodgeError('other', String(variant));
  }
  const { tag, val } = variant;
  if (tag === 'store-error') return fromVariant(val);
  const text = typeof val === 'string' ? val : '';
  if (tag === 'other' && text.startsWith('quota-exceeded')) {
    return new LodgeError('quota-exceeded', text);
  }
  return new LodgeError(tag, text || tag);
}

/** Runs `f`, rethrowing a host error as a LodgeError. */
export function call(f) {
  try {
    return f();
  } catch (e) {
    if (e instanceof LodgeError) throw e;
    if (isComponentError(e)) throw fromVariant(e.payload);
    throw e;
  }
}

/** Throws invalid-input unless `ok`. */
export function check(ok, message) {
  if (!ok) throw new LodgeError('invalid-input', message);
}

/** `value` as a u32 for the host, or undefined; invalid-input otherwise. */
export function optionalU32(value, name) {
  if (value === undefined || value === null) return undefined;
  check(Number.isInteger(value) && value >= 0 && value <= 0xffffffff, `${name} must be an integer from 0 to 4294967295`);
  return value;
}
