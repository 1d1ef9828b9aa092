"""Errors raised by Lodge's host capabilities.

Every fallible Lodge call raises a subclass of :class:`LodgeError`, one per
variant of the WIT ``types.error`` (``lodge:platform``) and of
``wasi:keyvalue/store.error``. ``kind`` is the variant's WIT name and
``message`` what the host said::

    try:
        lodge.wallet.transfer(to, 5, idempotency_key="order-42")
    except lodge.QuotaExceededError as e:      # the balance is too small
        print(e.kind, e.message)
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Type

__all__ = [
    "LodgeError",
    "NotFoundError",
    "AccessDeniedError",
    "QuotaExceededError",
    "LimitError",
    "InvalidInputError",
    "UnavailableError",
    "NoSuchStoreError",
    "StoreError",
    "CasFailedError",
]


class LodgeError(Exception):
    """A host call failed. ``kind`` names the WIT error variant."""

    kind: str = "error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}" if self.message else self.kind

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def to_dict(self) -> Dict[str, str]:
        """``{"kind": …, "message": …}``, ready for a JSON response."""
        return {"kind": self.kind, "message": self.message}


class NotFoundError(LodgeError):
    """The thing named does not exist (an address, a task)."""

    kind = "not-found"


class AccessDeniedError(LodgeError):
    """The tenant may not do this."""

    kind = "access-denied"


class QuotaExceededError(LodgeError):
    """A quota of the plan is spent (tokens per day, a balance, key-value room)."""

    kind = "quota-exceeded"


class LimitError(LodgeError):
    """A per-call limit of the plan was hit (amount per transfer, spend per day)."""

    kind = "limit"


class InvalidInputError(LodgeError):
    """An argument (or a stored value) is invalid; the message says which and why."""

    kind = "invalid-input"


class UnavailableError(LodgeError):
    """The host cannot serve this now; retrying later may work."""

    kind = "unavailable"


class NoSuchStoreError(LodgeError):
    """``wasi:keyvalue`` ``no-such-store``: the bucket name is not valid."""

    kind = "no-such-store"


class StoreError(LodgeError):
    """``wasi:keyvalue`` ``other``: any other key-value failure."""

    kind = "other"


class CasFailedError(LodgeError):
    """``wasi:keyvalue/atomics`` ``cas-failed``: the key changed since the
    :class:`lodge.kv.Cas` was made. ``retry`` is a fresh handle."""

    kind = "cas-failed"

    def __init__(self, message: str = "", retry: Optional[Any] = None) -> None:
        super().__init__(message)
        self.retry = retry


# `lodge:platform/types.error` case class names (as componentize-py generates
# them) → the exception to raise.
_LODGE_VARIANTS: Dict[str, Type[LodgeError]] = {
    "Error_NotFound": NotFoundError,
    "Error_AccessDenied": AccessDeniedError,
    "Error_QuotaExceeded": QuotaExceededError,
    "Error_Limit": LimitError,
    "Error_InvalidInput": InvalidInputError,
    "Error_Unavailable": UnavailableError,
}


def from_lodge(value: Any) -> LodgeError:
    """The exception for a ``lodge:platform/types.error`` value."""
    cls = _LODGE_VARIANTS.get(type(value).__name__, LodgeError)
    return cls(str(getattr(value, "value", value)))


def from_store(value: Any) -> LodgeError:
    """The exception for a ``wasi:keyvalue/store.error`` value.

    draft2 has no quota variant: Lodge reports quotas as
    ``other("quota-exceeded: …")`` and a non-integer under ``increment`` as
    ``other("… not a decimal integer")``; those become
    :class:`QuotaExceededError` and :class:`InvalidInputError`.
    """
    name = type(value).__name__
    if name == "Error_NoSuchStore":
        return NoSuchStoreError("no such store")
    if name == "Error_AccessDenied":
        return AccessDeniedError("access denied")
    message = str(getattr(value, "value", value))
    if message.startswith("quota-exceeded"):
        return QuotaExceededError(message)
    if "not a decimal integer" in message:
        return InvalidInputError(message)
    return StoreError(message)
