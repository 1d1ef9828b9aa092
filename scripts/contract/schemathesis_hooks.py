"""Schemathesis hooks for scripts/contract/check.sh (loaded through SCHEMATHESIS_HOOKS).

Two things the API does that a request/response fuzzer cannot take as they are:

- `PUT /tenant/{id}/component` takes the component as `application/wasm` (or
  `application/octet-stream`); schemathesis has no serializer for the first, so
  it sends it as raw bytes, as it does the second.
- `GET /tenant/{id}/logs?follow=true` answers a server-sent event stream that
  stays open while the key and the tenant do: a fuzzer waiting for its end would
  wait for ever. The stream is covered by the Rust tests; here the page form is
  sent instead.
"""

import schemathesis

schemathesis.serializer.alias("application/wasm", "application/octet-stream")


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.query and "follow" in case.query:
        case.query.pop("follow")
