// lodge:platform/wallet: the tenant's custodial wallet. The key stays on the host.

import * as host from 'lodge:platform/wallet@0.1.0';
import { call, check } from './errors.js';
import { fromHex, toBytes, toNumber } from './bytes.js';

function amountOf(amount) {
  check(
    (typeof amount === 'number' && Number.isSafeInteger(amount) && amount >= 0) ||
      (typeof amount === 'bigint' && amount >= 0n && amount < 1n << 64n),
    'amount must be a non-negative integer',
  );
  return BigInt(amount);
}

/** A signature given as bytes or as 128 hex digits. */
function signatureBytes(signature) {
  if (typeof signature === 'string') {
    try {
      return fromHex(signature);
    } catch {
      check(false, 'signature must be bytes or hex');
    }
  }
  return toBytes(signature);
}

function randomKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return 'js-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** This tenant's address, `lodge1` + 64 hex digits. */
export function address() {
  return call(() => host.address());
}

/** This tenant's balance (a Number; a BigInt past 2^53). */
export function balance() {
  return toNumber(call(() => host.balance()));
}

/**
 * Moves `amount` to the wallet at `to`; returns the transfer id (`tx_…`).
 * The same `idempotencyKey` again returns the first id and moves nothing;
 * without one, a random key is used (so a retry would pay twice).
 */
export function transfer(to, amount, { memo = '', idempotencyKey } = {}) {
  check(typeof to === 'string', 'to must be a string');
  check(typeof memo === 'string', 'memo must be a string');
  const key = idempotencyKey ?? randomKey();
  check(typeof key === 'string', 'idempotencyKey must be a string');
  const value = amountOf(amount);
  return call(() => host.transfer(to, value, memo, key));
}

/** Signs `message` (string or bytes) with this wallet's key; 64 bytes. */
export function sign(message) {
  const bytes = toBytes(message);
  return call(() => host.sign(bytes));
}

/** Whether `signature` (bytes or hex) signs `message` for the wallet at `address`. */
export function verify(address, message, signature) {
  check(typeof address === 'string', 'address must be a string');
  const bytes = toBytes(message);
  const sig = signatureBytes(signature);
  return call(() => host.verify(address, bytes, sig));
}

/**
 * A page of this wallet's entries, newest first:
 * `{ entries: [{ id, kind, counterparty, amount, memo, createdAt }], cursor }`
 * (`cursor` is null on the last page; pass it back for the next one).
 */
export function history({ cursor = null, limit = 20 } = {}) {
  check(cursor === null || cursor === undefined || typeof cursor === 'string', 'cursor must be a string');
  check(Number.isInteger(limit) && limit >= 0 && limit <= 0xffffffff, 'limit must be an integer');
  const page = call(() => host.history(cursor ?? undefined, limit));
  return {
    entries: page.entries.map((e) => ({
      id: e.id,
      kind: e.kind,
      counterparty: e.counterparty,
      amount: toNumber(e.amount),
      memo: e.memo,
      createdAt: e.createdAt,
    })),
    cursor: page.cursor ?? null,
  };
}
