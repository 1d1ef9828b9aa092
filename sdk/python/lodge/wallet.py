"""The tenant's custodial wallet (``lodge:platform/wallet``).

::

    from lodge import wallet

    print(wallet.address(), wallet.balance())
    tx = wallet.transfer("lodge1…", 5, memo="thanks", idempotency_key="order-42")
    sig = wallet.sign(b"hello")                  # the key stays on the host
    assert wallet.verify(wallet.address(), b"hello", sig)

Which wallet is "mine" comes from the host. Amounts are integers in the
smallest unit. Failures raise :class:`lodge.LodgeError` subclasses: a balance
too small is ``QuotaExceededError``, a plan cap ``LimitError``, an unknown
address ``NotFoundError``, paying yourself or a reused idempotency key with
other arguments ``InvalidInputError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Union

from . import _check, _wit
from .errors import from_lodge

__all__ = [
    "Entry",
    "HistoryPage",
    "address",
    "balance",
    "transfer",
    "sign",
    "verify",
    "history",
    "iter_history",
]


@dataclass
class Entry:
    """One movement of funds as this tenant sees it."""

    id: str
    """The transfer's id, ``tx_…``."""
    kind: str
    """``"funding"``, ``"sent"`` or ``"received"``."""
    counterparty: str
    """The other wallet's address (``"mint"`` for funding)."""
    amount: int
    """Positive: in; negative: out."""
    memo: str
    created_at: str
    """RFC 3339."""

    def to_json(self) -> Dict[str, Any]:
        """camelCase dict, as Lodge's API spells it."""
        return {
            "id": self.id,
            "kind": self.kind,
            "counterparty": self.counterparty,
            "amount": self.amount,
            "memo": self.memo,
            "createdAt": self.created_at,
        }


@dataclass
class HistoryPage:
    """A page of history, newest first; ``cursor`` is ``None`` at the end."""

    entries: List[Entry] = field(default_factory=list)
    cursor: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        return {"entries": [e.to_json() for e in self.entries], "cursor": self.cursor}


def _call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except _wit.Err as e:
        raise from_lodge(e.value) from None


def address() -> str:
    """This tenant's address: ``lodge1`` + 64 hex digits of its Ed25519 public key."""
    return _call(_wit.wallet.address)


def balance() -> int:
    """This tenant's balance (never negative)."""
    return _call(_wit.wallet.balance)


def transfer(to: str, amount: int, *, idempotency_key: str, memo: str = "") -> str:
    """Moves ``amount`` to ``to`` atomically; returns the transfer id (``tx_…``).

    The same ``idempotency_key`` again returns the first transfer's id and moves
    nothing, so a retried request pays once.
    """
    return _call(
        _wit.wallet.transfer,
        _check.text("to", to),
        _check.integer("amount", amount, 0, _check.U64),
        _check.text("memo", memo),
        _check.text("idempotency_key", idempotency_key),
    )


def sign(message: Union[bytes, str]) -> bytes:
    """A 64-byte Ed25519 signature of ``message`` (``str`` is signed as UTF-8)."""
    return _call(_wit.wallet.sign, _check.data("message", message))


def verify(address: str, message: Union[bytes, str], signature: bytes) -> bool:
    """Whether ``signature`` is ``address``'s signature of ``message`` (any wallet)."""
    return _call(
        _wit.wallet.verify,
        _check.text("address", address),
        _check.data("message", message),
        _check.data("signature", signature),
    )


def _entry(e: Any) -> Entry:
    return Entry(
        id=e.id,
        kind=e.kind,
        counterparty=e.counterparty,
        amount=e.amount,
        memo=e.memo,
        created_at=e.created_at,
    )


def history(cursor: Optional[str] = None, limit: int = 20) -> HistoryPage:
    """One page (``limit`` 1–100) of this wallet's entries, newest first."""
    page = _call(
        _wit.wallet.history, _check.opt_text("cursor", cursor), _check.integer("limit", limit, 0, _check.U32)
    )
    return HistoryPage(entries=[_entry(e) for e in page.entries], cursor=page.cursor)


def iter_history(page_size: int = 100) -> Iterator[Entry]:
    """Every entry, newest first, fetched page by page."""
    cursor: Optional[str] = None
    while True:
        page = history(cursor, page_size)
        yield from page.entries
        if page.cursor is None:
            return
        cursor = page.cursor

