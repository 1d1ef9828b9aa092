"""Argument checks before a value crosses into the host.

componentize-py 0.25.1 aborts the whole instance (a trap, HTTP 500 from
Lodge) when an import gets a value of the wrong type or range, instead of
raising. These checks raise :class:`ArgumentError` first: a
:class:`lodge.InvalidInputError` (so :mod:`lodge.http` answers 400) that is
also a ``TypeError``.
"""

from __future__ import annotations

from typing import Any, Optional

from .errors import InvalidInputError


class ArgumentError(InvalidInputError, TypeError):
    """An argument of the wrong type or out of range for the WIT signature."""


U32 = 2**32 - 1
U64 = 2**64 - 1
S64_MIN, S64_MAX = -(2**63), 2**63 - 1


def text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ArgumentError(f"{name} must be a str, not {type(value).__name__}")
    return value


def opt_text(name: str, value: Any) -> Optional[str]:
    return None if value is None else text(name, value)


def integer(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentError(f"{name} must be an int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise ArgumentError(f"{name} must be in {lo}..={hi}, not {value}")
    return value


def opt_integer(name: str, value: Any, lo: int, hi: int) -> Optional[int]:
    return None if value is None else integer(name, value, lo, hi)


def data(name: str, value: Any) -> bytes:
    """``bytes``-like, or ``str`` (encoded as UTF-8)."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise ArgumentError(f"{name} must be bytes or str, not {type(value).__name__}")
