// Lodge's JavaScript SDK for tenant apps built with componentize-js.
//
//   import { serve, json, convergence, wallet, kv } from '@lodge/sdk';
//   serve(async (request) => json({ visits: kv.increment('visits') }));
//
// Host errors are thrown as `LodgeError` (`err.kind` is the WIT variant, e.g.
// "not-found"; `err.message` says what happened). An error a handler does not
// catch becomes `{"error": kind, "message"}` with the matching status.

import * as convergence from './convergence.js';
import * as wallet from './wallet.js';
import * as kv from './kv.js';
import { LodgeError, STATUS } from './errors.js';
import { fromHex, toBytes, toHex, toText } from './bytes.js';

export { convergence, wallet, kv, LodgeError, STATUS, fromHex, toBytes, toHex, toText };

/** A JSON response (`status` default 200). */
export function json(body, status = 200, headers = {}) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { 'content-type': 'application/json', ...headers },
  });
}

/** The JSON error response for `err`: `{ error: kind, message }`. */
export function errorResponse(err) {
  if (err instanceof LodgeError) return json({ error: err.kind, message: err.message }, err.status);
  console.error(`unhandled error: ${err && err.stack ? err.stack : err}`);
  return json({ error: 'internal', message: 'internal error' }, 500);
}

/**
 * The request body as JSON; an empty body is `{}`. A body that is not a JSON
 * object is a LodgeError `invalid-input` (answered 400).
 */
export async function readJson(request) {
  const text = await request.text();
  if (text.trim() === '') return {};
  let body;
  try {
    body = JSON.parse(text);
  } catch (e) {
    throw new LodgeError('invalid-input', `the body is not JSON: ${e.message}`);
  }
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new LodgeError('invalid-input', 'the body must be a JSON object');
  }
  return body;
}

/** The request's path, e.g. "/api/design" (Lodge strips `/tenants/SLUG`). */
export function pathOf(request) {
  return new URL(request.url).pathname;
}

/**
 * Serves every request with `handler(request) => Response | object`
 * (an object is sent as JSON). Call once, at the top level of the module.
 */
export function serve(handler) {
  addEventListener('fetch', (event) => {
    event.respondWith(
      (async () => {
        try {
          const result = await handler(event.request);
          return result instanceof Response ? result : json(result);
        } catch (err) {
          return errorResponse(err);
        }
      })(),
    );
  });
}
