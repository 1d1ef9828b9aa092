"""The ``wasi:http`` side of a tenant: a request in, a response out.

::

    from lodge.http import Response, Router, handler

    app = Router()

    @app.get("/hello/{name}")
    def hello(req):
        return {"hello": req.params["name"]}       # dict/list → JSON 200

    @app.post("/echo")
    def echo(req):
        return Response.json(req.json(), status=201)

    IncomingHandler = handler(app)                 # what componentize-py exports

A handler returns a :class:`Response`, a ``dict``/``list`` (JSON), a ``str``
(text), ``bytes``, or ``(value, status)``. An uncaught :class:`lodge.LodgeError`
becomes a JSON error with a fitting status (``NotFoundError`` → 404 …); any
other exception a 500, its traceback in the tenant's log (stderr).

The body is read whole before the handler runs (Lodge caps request bodies per
plan) and the response is written whole.
"""

from __future__ import annotations

import json as _json
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qsl, unquote

from . import _wit
from .errors import LodgeError

__all__ = ["Request", "Response", "Router", "handler", "error_response", "STATUS_OF_KIND"]

REQUEST_ID = "x-request-id"
FORWARDED_PREFIX = "x-forwarded-prefix"

STATUS_OF_KIND: Dict[str, int] = {
    "not-found": 404,
    "access-denied": 403,
    "quota-exceeded": 402,
    "limit": 429,
    "invalid-input": 400,
    "unavailable": 503,
    "no-such-store": 400,
}
"""HTTP status for an uncaught :class:`lodge.LodgeError` of each ``kind`` (else 500)."""


class BadRequest(Exception):
    """Raise from a handler to answer 400 ``{"error": message}``."""


@dataclass
class Request:
    """An incoming request, body already read."""

    method: str
    """Upper case: ``"GET"``, ``"POST"`` …"""
    path: str
    """Without the query, e.g. ``/chat/c1`` (Lodge has stripped ``/tenants/SLUG``)."""
    query: str = ""
    headers: Dict[str, str] = field(default_factory=dict)
    """Lower-case names; repeated headers joined with ``", "``."""
    body: bytes = b""
    params: Dict[str, str] = field(default_factory=dict)
    """Captured by the :class:`Router` pattern, e.g. ``{"name": …}``."""

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self, default: Any = ...) -> Any:
        """The body parsed as JSON. Invalid or empty: ``default`` if given, else
        :class:`BadRequest` (a 400)."""
        try:
            return _json.loads(self.body)
        except ValueError:
            if default is not ...:
                return default
            raise BadRequest("the body is not valid JSON") from None

    @property
    def args(self) -> Dict[str, str]:
        """The query string as a dict (last value wins)."""
        return dict(parse_qsl(self.query, keep_blank_values=True))

    @property
    def request_id(self) -> Optional[str]:
        """The id Lodge gave this request (also in the tenant's log)."""
        return self.headers.get(REQUEST_ID)

    @property
    def forwarded_prefix(self) -> str:
        """``/tenants/SLUG`` under path routing, else ``""``: prepend it to links."""
        return self.headers.get(FORWARDED_PREFIX, "")


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: List[Tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(cls, value: Any, status: int = 200) -> "Response":
        body = _json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return cls(status, body, [("content-type", "application/json")])

    @classmethod
    def text(cls, text: str, status: int = 200) -> "Response":
        return cls(status, text.encode("utf-8"), [("content-type", "text/plain; charset=utf-8")])


def error_response(error: LodgeError) -> Response:
    """``{"error": {"kind", "message"}}`` with the status of its kind."""
    return Response.json({"error": error.to_dict()}, STATUS_OF_KIND.get(error.kind, 500))


Handler = Callable[[Request], Any]


def _to_response(value: Any) -> Response:
    status = 200
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
        value, status = value
    if isinstance(value, Response):
        return value
    if isinstance(value, str):
        return Response.text(value, status)
    if isinstance(value, (bytes, bytearray)):
        return Response(status, bytes(value), [("content-type", "application/octet-stream")])
    if value is None:
        return Response(status if status != 200 else 204)
    return Response.json(value, status)


def _split(path: str) -> List[str]:
    return [s for s in path.strip("/").split("/") if s]


class Router:
    """Routes by method and path pattern: ``{name}`` matches one segment, a
    trailing ``{*name}`` the rest. Unmatched: 404 ``not found``."""

    def __init__(self) -> None:
        self._routes: List[Tuple[str, List[str], Handler]] = []

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            self._routes.append((method.upper(), _split(pattern), fn))
            return fn

        return register

    def get(self, pattern: str) -> Callable[[Handler], Handler]:
        return self.route("GET", pattern)

    def post(self, pattern: str) -> Callable[[Handler], Handler]:
        return self.route("POST", pattern)

    def put(self, pattern: str) -> Callable[[Handler], Handler]:
        return self.route("PUT", pattern)

    def delete(self, pattern: str) -> Callable[[Handler], Handler]:
        return self.route("DELETE", pattern)

    @staticmethod
    def match(pattern: List[str], path: List[str]) -> Optional[Dict[str, str]]:
        params: Dict[str, str] = {}
        for i, expected in enumerate(pattern):
            if expected.startswith("{*") and expected.endswith("}"):
                if i != len(pattern) - 1:
                    return None
                params[expected[2:-1]] = "/".join(unquote(s) for s in path[i:])
                return params
            if i >= len(path):
                return None
            if expected.startswith("{") and expected.endswith("}"):
                params[expected[1:-1]] = unquote(path[i])
            elif expected != path[i]:
                return None
        return params if len(path) == len(pattern) else None

    def __call__(self, request: Request) -> Any:
        path = _split(request.path)
        for method, pattern, fn in self._routes:
            if method not in ("*", request.method):
                continue
            params = self.match(pattern, path)
            if params is not None:
                request.params = params
                return fn(request)
        return Response.text("not found\n", 404)


def dispatch(app: Handler, request: Request) -> Response:
    """Runs ``app`` and turns what it returned or raised into a :class:`Response`."""
    try:
        return _to_response(app(request))
    except BadRequest as e:
        return Response.json({"error": str(e)}, 400)
    except LodgeError as e:
        print(f"{request.method} {request.path}: {e!r}", file=sys.stderr)
        return error_response(e)
    except Exception:  # noqa: BLE001 - the tenant's log gets the details
        traceback.print_exc()
        return Response.text("internal error\n", 500)


# -- wasi:http plumbing -------------------------------------------------------


def _method(m: Any) -> str:
    name = type(m).__name__
    if name == "Method_Other":
        return str(m.value).upper()
    return name.rsplit("_", 1)[-1].upper()


def _is_closed(err: Any) -> bool:
    return type(getattr(err, "value", err)).__name__ == "StreamError_Closed"


def _read_request(incoming: Any) -> Request:
    fields = incoming.headers()
    headers: Dict[str, str] = {}
    for name, value in fields.entries():
        text = value.decode("latin-1")
        key = name.lower()
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    fields.__exit__(None, None, None)
    target = incoming.path_with_query() or "/"
    path, _, query = target.partition("?")
    chunks: List[bytes] = []
    body = incoming.consume()
    stream = body.stream()
    while True:
        try:
            chunk = stream.blocking_read(65536)
        except _wit.Err as e:
            if _is_closed(e):
                break
            raise
        chunks.append(chunk)
    stream.__exit__(None, None, None)
    trailers = _wit.http_types.IncomingBody.finish(body)
    trailers.__exit__(None, None, None)
    return Request(_method(incoming.method()), path or "/", query, headers, b"".join(chunks))


def _write_response(response: Response, response_out: Any) -> None:
    t = _wit.http_types
    status = response.status
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 999:
        print(f"lodge.http: {status!r} is not an HTTP status; answering 500", file=sys.stderr)
        status = 500
    pairs = [(str(k), str(v).encode("utf-8")) for k, v in response.headers]
    body_bytes = response.body.encode("utf-8") if isinstance(response.body, str) else bytes(response.body)
    headers = t.Fields.from_list(pairs)
    outgoing = t.OutgoingResponse(headers)
    outgoing.set_status_code(status)
    body = outgoing.body()
    t.ResponseOutparam.set(response_out, _wit.Ok(outgoing))
    stream = body.write()
    data = body_bytes
    for start in range(0, len(data), 4096):  # blocking-write-and-flush takes ≤ 4096 bytes
        stream.blocking_write_and_flush(data[start : start + 4096])
    stream.__exit__(None, None, None)
    t.OutgoingBody.finish(body, None)


def serve(app: Handler, incoming: Any, response_out: Any) -> None:
    """Answers one ``wasi:http/incoming-handler.handle`` call with ``app``."""
    request = _read_request(incoming)
    _write_response(dispatch(app, request), response_out)


def handler(app: Handler) -> type:
    """The ``IncomingHandler`` class componentize-py exports, serving ``app``::

        IncomingHandler = lodge.http.handler(app)
    """
    base: type = object
    if _wit.INSIDE:
        from wit_world import exports  # only exists inside a component

        base = exports.IncomingHandler

    class IncomingHandler(base):  # type: ignore[misc, valid-type]
        def handle(self, request: Any, response_out: Any) -> None:
            serve(app, request, response_out)

    return IncomingHandler


