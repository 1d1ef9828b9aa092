// Bytes <-> text, JSON and hex, for values and signatures.

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** `value` (string, Uint8Array, ArrayBuffer or typed array) as bytes. */
export function toBytes(value) {
  if (typeof value === 'string') return encoder.encode(value);
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  throw new TypeError('expected a string, Uint8Array or ArrayBuffer');
}

/** UTF-8 text of `bytes`. */
export function toText(bytes) {
  return decoder.decode(bytes);
}

/** Lowercase hex of `bytes`. */
export function toHex(bytes) {
  let out = '';
  for (const b of bytes) out += b.toString(16).padStart(2, '0');
  return out;
}

/** Bytes of a hex string; throws TypeError if it is not hex. */
export function fromHex(hex) {
  if (typeof hex !== 'string' || hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) {
    throw new TypeError('expected an even number of hex digits');
  }
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** A u64/s64 from the host as a Number when exact, else the BigInt. */
export function toNumber(big) {
  if (typeof big !== 'bigint') return big;
  return big <= BigInt(Number.MAX_SAFE_INTEGER) && big >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(big) : big;
}
