"""Key-value storage scoped to your tenant (``wasi:keyvalue@0.2.0-draft2``).

::

    from lodge import kv

    bucket = kv.open()                         # the bucket named "default"
    bucket.set("greeting", "hello")            # str is stored as UTF-8
    bucket.get("greeting")                     # b"hello"
    visits = bucket.increment("visits")        # atomic across requests
    bucket.set_json("profile", {"visits": visits})
    bucket.update("tags", lambda cur: (cur or b"") + b",new")   # compare-and-swap loop
    bucket.set_many({"a": "1", "b": "2"})      # all or nothing
    bucket.get_many(["a", "b", "zz"])          # [b"1", b"2", None]

The module-level functions (``kv.get``, ``kv.increment`` …) act on the
``default`` bucket. Another tenant's bucket with the same name is a different
bucket. Values are ``bytes`` (``str`` is encoded as UTF-8); keys 1-1024 bytes,
values up to 1 MiB. Failures raise :class:`lodge.LodgeError` subclasses
(:class:`lodge.QuotaExceededError` when the tenant's quota would be exceeded).
"""

from __future__ import annotations

import json as _json
from typing import Any, Callable, Iterable, List, Mapping, Optional, Tuple, Union

from . import _check, _wit
from .errors import CasFailedError, InvalidInputError, from_store

__all__ = [
    "Bucket",
    "Cas",
    "open",
    "get",
    "get_text",
    "get_json",
    "set",
    "set_json",
    "delete",
    "exists",
    "keys",
    "increment",
    "update",
    "get_many",
    "set_many",
    "delete_many",
]

Value = Union[bytes, bytearray, memoryview, str]
DEFAULT = "default"


def _bytes(value: Value) -> bytes:
    return _check.data("value", value)


def _key(key: Any) -> str:
    return _check.text("key", key)


def _call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except _wit.Err as e:
        raise from_store(e.value) from None


class Cas:
    """A compare-and-swap handle: the value of ``key`` as it was when made.

    :meth:`swap` writes only if nobody changed the key since; otherwise it
    raises :class:`lodge.CasFailedError` whose ``retry`` is a fresh ``Cas``.
    Prefer :meth:`Bucket.update`, which loops for you.
    """

    def __init__(self, handle: Any, key: str) -> None:
        self._handle = handle
        self.key = key

    def current(self) -> Optional[bytes]:
        """The value seen (``None`` if the key was unset)."""
        return _call(self._handle.current)

    def swap(self, value: Value) -> None:
        """Writes ``value`` if the key still holds :meth:`current`. Consumes the handle."""
        handle, self._handle = self._handle, None
        if handle is None:
            raise InvalidInputError("this Cas was already swapped")
        try:
            _wit.atomics.swap(handle, _bytes(value))
        except _wit.Err as e:
            err = e.value
            if type(err).__name__.endswith("CasFailed"):
                raise CasFailedError(
                    f"{self.key} changed since it was read", retry=Cas(err.value, self.key)
                ) from None
            raise from_store(getattr(err, "value", err)) from None


class Bucket:
    """One bucket of this tenant's storage (created on first write)."""

    def __init__(self, name: str = DEFAULT) -> None:
        self.name = name
        self._bucket = _call(_wit.store.open, _check.text("name", name))

    def __enter__(self) -> "Bucket":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Releases the handle now (otherwise released when collected)."""
        if self._bucket is not None:
            self._bucket.__exit__(None, None, None)
            self._bucket = None

    # -- store --------------------------------------------------------------

    def get(self, key: str) -> Optional[bytes]:
        """The value of ``key``, or ``None`` if unset."""
        return _call(self._bucket.get, _key(key))

    def get_text(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """The value of ``key`` decoded as UTF-8, or ``default``."""
        value = self.get(key)
        return default if value is None else value.decode("utf-8")

    def get_json(self, key: str, default: Any = None) -> Any:
        """The JSON value at ``key``, or ``default`` if unset."""
        value = self.get(key)
        if value is None:
            return default
        try:
            return _json.loads(value)
        except ValueError as e:
            raise InvalidInputError(f"{key}: not JSON: {e}") from None

    def set(self, key: str, value: Value) -> None:
        """Sets ``key`` to ``value``."""
        _call(self._bucket.set, _key(key), _bytes(value))

    def set_json(self, key: str, value: Any) -> None:
        """Stores ``value`` as compact JSON."""
        self.set(key, _json.dumps(value, separators=(",", ":"), ensure_ascii=False))

    def delete(self, key: str) -> None:
        """Removes ``key`` (no error if unset)."""
        _call(self._bucket.delete, _key(key))

    def exists(self, key: str) -> bool:
        return _call(self._bucket.exists, _key(key))

    def list_keys(self, cursor: Optional[str] = None) -> Tuple[List[str], Optional[str]]:
        """One page of keys (sorted, up to 1000) and the cursor of the next, or ``None``."""
        page = _call(self._bucket.list_keys, _check.opt_text("cursor", cursor))
        return list(page.keys), page.cursor

    def keys(self) -> List[str]:
        """Every key of the bucket, sorted (fetched page by page)."""
        out: List[str] = []
        cursor: Optional[str] = None
        while True:
            page, cursor = self.list_keys(cursor)
            out.extend(page)
            if cursor is None:
                return out

    # -- atomics ------------------------------------------------------------

    def increment(self, key: str, delta: int = 1) -> int:
        """Adds ``delta`` to the decimal integer at ``key`` (unset counts as 0),
        atomically across concurrent requests; returns the new value."""
        return _call(
            _wit.atomics.increment,
            self._bucket,
            _key(key),
            _check.integer("delta", delta, _check.S64_MIN, _check.S64_MAX),
        )

    def cas(self, key: str) -> Cas:
        """A compare-and-swap handle on ``key``."""
        return Cas(_call(_wit.atomics.Cas.new, self._bucket, _key(key)), key)

    def update(self, key: str, fn: Callable[[Optional[bytes]], Value], *, attempts: int = 100) -> bytes:
        """Replaces the value at ``key`` with ``fn(current)``, retrying if another
        request changed it in between; returns the value written."""
        cas = self.cas(key)
        for _ in range(attempts):
            new = _bytes(fn(cas.current()))
            try:
                cas.swap(new)
                return new
            except CasFailedError as e:
                cas = e.retry
        raise CasFailedError(f"{key}: still contended after {attempts} attempts")

    def update_json(self, key: str, fn: Callable[[Any], Any], default: Any = None) -> Any:
        """:meth:`update` on a JSON value; ``fn`` gets ``default`` when unset."""
        result: List[Any] = []

        def step(current: Optional[bytes]) -> bytes:
            value = default if current is None else _json.loads(current)
            new = fn(value)
            result[:] = [new]
            return _json.dumps(new, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

        self.update(key, step)
        return result[0]

    # -- batch --------------------------------------------------------------

    def get_many(self, keys: Iterable[str]) -> List[Optional[bytes]]:
        """Values of several keys, in order (``None`` where unset)."""
        found = _call(_wit.batch.get_many, self._bucket, [_key(k) for k in keys])
        return [None if pair is None else pair[1] for pair in found]

    def set_many(self, entries: Union[Mapping[str, Value], Iterable[Tuple[str, Value]]]) -> None:
        """Sets several keys at once: all or none."""
        pairs = entries.items() if isinstance(entries, Mapping) else entries
        _call(_wit.batch.set_many, self._bucket, [(_key(k), _bytes(v)) for k, v in pairs])

    def delete_many(self, keys: Iterable[str]) -> None:
        """Removes several keys at once."""
        _call(_wit.batch.delete_many, self._bucket, [_key(k) for k in keys])


def open(name: str = DEFAULT) -> Bucket:  # noqa: A001 - mirrors wasi:keyvalue/store.open
    """Opens bucket ``name`` (1-64 of ``A-Z a-z 0-9 - _ .``; ``""`` is ``default``)."""
    return Bucket(name)


# -- the default bucket, one call at a time ---------------------------------


def get(key: str) -> Optional[bytes]:
    return Bucket().get(key)


def get_text(key: str, default: Optional[str] = None) -> Optional[str]:
    return Bucket().get_text(key, default)


def get_json(key: str, default: Any = None) -> Any:
    return Bucket().get_json(key, default)


def set(key: str, value: Value) -> None:  # noqa: A001
    Bucket().set(key, value)


def set_json(key: str, value: Any) -> None:
    Bucket().set_json(key, value)


def delete(key: str) -> None:
    Bucket().delete(key)


def exists(key: str) -> bool:
    return Bucket().exists(key)


def keys() -> List[str]:
    return Bucket().keys()


def increment(key: str, delta: int = 1) -> int:
    return Bucket().increment(key, delta)


def update(key: str, fn: Callable[[Optional[bytes]], Value]) -> bytes:
    return Bucket().update(key, fn)


def get_many(keys: Iterable[str]) -> List[Optional[bytes]]:
    return Bucket().get_many(keys)


def set_many(entries: Union[Mapping[str, Value], Iterable[Tuple[str, Value]]]) -> None:
    Bucket().set_many(entries)


def delete_many(keys: Iterable[str]) -> None:
    Bucket().delete_many(keys)


