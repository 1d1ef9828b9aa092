"""Write Lodge tenant apps in Python (componentize-py, world ``lodge:platform/tenant``).

::

    import lodge
    from lodge.http import Router, handler

    app = Router()

    @app.get("/")
    def index(req):
        visits = lodge.kv.increment("visits")
        return {"visits": visits, "balance": lodge.wallet.balance()}

    IncomingHandler = handler(app)

Modules: :mod:`lodge.kv` (tenant-scoped key-value storage with atomics and
batches), :mod:`lodge.wallet` (the tenant's custodial wallet),
:mod:`lodge.convergence` (two agents converging on an answer) and
:mod:`lodge.http` (request in, response out). Errors: :class:`LodgeError` and
its subclasses, one per WIT error variant. Whatever the app prints to stdout or
stderr becomes a line of the tenant's log.
"""

from . import convergence, errors, http, kv, wallet
from .errors import (
    AccessDeniedError,
    CasFailedError,
    InvalidInputError,
    LimitError,
    LodgeError,
    NoSuchStoreError,
    NotFoundError,
    QuotaExceededError,
    StoreError,
    UnavailableError,
)

__version__ = "0.1.0"

__all__ = [
    "convergence",
    "http",
    "kv",
    "wallet",
    *errors.__all__,
]
