// wasi:keyvalue@0.2.0-draft2: the tenant's own storage (store, atomics, batch).
//
// Every bucket belongs to the calling tenant; `open("default")` in two tenants
// opens two different buckets. Values are bytes; the helpers store text and
// JSON as UTF-8.

import { open as openBucket } from 'wasi:keyvalue/store@0.2.0-draft2';
import * as atomics from 'wasi:keyvalue/atomics@0.2.0-draft2';
import * as batch from 'wasi:keyvalue/batch@0.2.0-draft2';
import { LodgeError, call, check, fromVariant } from './errors.js';
import { toBytes, toNumber, toText } from './bytes.js';

const MAX_CAS_ATTEMPTS = 100;

function checkKey(key) {
  check(typeof key === 'string' && key.length > 0, 'a key must be a non-empty string');
}

function parseJson(bytes) {
  if (bytes === null) return null;
  try {
    return JSON.parse(toText(bytes));
  } catch (e) {
    throw new LodgeError('invalid-input', `stored value is not JSON: ${e.message}`);
  }
}

function entriesOf(entries) {
  const list = Array.isArray(entries) ? entries : Object.entries(entries);
  return list.map(([key, value]) => {
    checkKey(key);
    return [key, toBytes(value)];
  });
}

/** A bucket of the tenant's key-value storage. */
export class Store {
  /** Opens bucket `name` (1-64 of `A-Z a-z 0-9 - _ .`; "default" if omitted). */
  constructor(name = 'default') {
    check(typeof name === 'string', 'a bucket name must be a string');
    this.name = name;
    this.bucket = call(() => openBucket(name));
  }

  /** The value's bytes, or null when the key is unset. */
  get(key) {
    checkKey(key);
    return call(() => this.bucket.get(key)) ?? null;
  }

  /** The value as UTF-8 text, or null. */
  getText(key) {
    const bytes = this.get(key);
    return bytes === null ? null : toText(bytes);
  }

  /** The value parsed as JSON, or null. */
  getJson(key) {
    return parseJson(this.get(key));
  }

  /** Stores `value` (a string is stored as UTF-8, bytes as they are). */
  set(key, value) {
    checkKey(key);
    const bytes = toBytes(value);
    call(() => this.bucket.set(key, bytes));
  }

  /** Stores `value` as JSON. */
  setJson(key, value) {
    this.set(key, JSON.stringify(value));
  }

  /** Deletes the key (nothing happens if it is unset). */
  delete(key) {
    checkKey(key);
    call(() => this.bucket.delete(key));
  }

  /** Whether the key is set. */
  exists(key) {
    checkKey(key);
    return call(() => this.bucket.exists(key));
  }

  /** One page of keys, sorted: `{ keys, cursor }` (`cursor` null at the end). */
  listKeys(cursor = null) {
    const page = call(() => this.bucket.listKeys(cursor ?? undefined));
    return { keys: page.keys, cursor: page.cursor ?? null };
  }

  /** Every key, sorted, optionally only those starting with `prefix`. */
  keys(prefix = '') {
    const all = [];
    let cursor = null;
    do {
      const page = this.listKeys(cursor);
      for (const key of page.keys) if (key.startsWith(prefix)) all.push(key);
      cursor = page.cursor;
    } while (cursor !== null);
    return all;
  }

  /**
   * Atomically adds `delta` (default 1) to the integer at `key` (unset counts
   * as 0) and returns the new value. Stored as decimal text.
   */
  increment(key, delta = 1) {
    checkKey(key);
    check(
      (typeof delta === 'number' && Number.isSafeInteger(delta)) || typeof delta === 'bigint',
      'delta must be an integer',
    );
    const by = BigInt(delta);
    return toNumber(call(() => atomics.increment(this.bucket, key, by)));
  }

  /**
   * Compare-and-swap loop: calls `change(current)` with the current bytes (or
   * null) and stores what it returns (string or bytes), retrying when another
   * request wrote in between. Returning `undefined` leaves the key as it is.
   * Returns the bytes stored (or the current ones when unchanged).
   */
  update(key, change) {
    checkKey(key);
    let cas = call(() => atomics.Cas.new(this.bucket, key));
    for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
      const current = call(() => cas.current()) ?? null;
      const next = change(current);
      if (next === undefined) return current;
      const bytes = toBytes(next);
      try {
        atomics.swap(cas, bytes);
        return bytes;
      } catch (e) {
        const payload = e && typeof e === 'object' ? e.payload : undefined;
        if (payload && payload.tag === 'cas-failed') {
          cas = payload.val;
          continue;
        }
        if (payload) throw fromVariant(payload);
        throw e;
      }
    }
    throw new LodgeError('unavailable', `too much contention on ${key}`);
  }

  /** `update` on JSON values: `change(currentOrNull)` returns the new value. */
  updateJson(key, change) {
    let result = null;
    this.update(key, (bytes) => {
      const next = change(parseJson(bytes));
      result = next === undefined ? parseJson(bytes) : next;
      return next === undefined ? undefined : JSON.stringify(next);
    });
    return result;
  }

  /** The values of `keys`, in order; null for an unset key. */
  getMany(keys) {
    keys.forEach(checkKey);
    const found = call(() => batch.getMany(this.bucket, keys));
    return found.map((pair) => (pair ? pair[1] : null));
  }

  /** `getMany` parsed as JSON. */
  getManyJson(keys) {
    return this.getMany(keys).map(parseJson);
  }

  /** Sets every pair (`[[key, value], …]` or `{ key: value }`) in one transaction. */
  setMany(entries) {
    const pairs = entriesOf(entries);
    call(() => batch.setMany(this.bucket, pairs));
  }

  /** Deletes every key of `keys`. */
  deleteMany(keys) {
    keys.forEach(checkKey);
    call(() => batch.deleteMany(this.bucket, keys));
  }
}

/** Opens a bucket (default "default"). */
export function open(name = 'default') {
  return new Store(name);
}

let defaultStore = null;
/** The "default" bucket, opened once per request. */
export function store() {
  if (defaultStore === null) defaultStore = new Store('default');
  return defaultStore;
}

// Shortcuts on the default bucket.
export const get = (key) => store().get(key);
export const getText = (key) => store().getText(key);
export const getJson = (key) => store().getJson(key);
export const set = (key, value) => store().set(key, value);
export const setJson = (key, value) => store().setJson(key, value);
export const del = (key) => store().delete(key);
export { del as delete };
export const exists = (key) => store().exists(key);
export const listKeys = (cursor) => store().listKeys(cursor);
export const keys = (prefix) => store().keys(prefix);
export const increment = (key, delta) => store().increment(key, delta);
export const update = (key, change) => store().update(key, change);
export const updateJson = (key, change) => store().updateJson(key, change);
export const getMany = (keyList) => store().getMany(keyList);
export const getManyJson = (keyList) => store().getManyJson(keyList);
export const setMany = (entries) => store().setMany(entries);
export const deleteMany = (keyList) => store().deleteMany(keyList);
