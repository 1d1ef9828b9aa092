"""The bindings componentize-py generates for world ``lodge:platform/tenant``.

They exist only inside a component (``componentize-py -d wit -w
lodge:platform/tenant componentize app``). Imported anywhere else (a unit
test, a type checker), every capability raises ``RuntimeError`` when used.
"""

from __future__ import annotations

from typing import Any


class _Missing:
    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        raise RuntimeError(
            f"lodge: {self._name}.{attr} is only available inside a Lodge component "
            "(build with componentize-py -w lodge:platform/tenant)"
        )


try:
    from componentize_py_types import Err, Ok  # noqa: F401
    from wit_world.imports import atomics, batch, convergence, store, streams, wallet

    try:  # named `types` when nothing else in the world is called `types`
        from wit_world.imports import wasi_http_types as http_types
    except ImportError:  # pragma: no cover
        from wit_world.imports import types as http_types  # type: ignore[no-redef]
    INSIDE = True
except ImportError:  # not inside a component
    INSIDE = False

    class Err(Exception):  # type: ignore[no-redef]
        value: Any

    class Ok:  # type: ignore[no-redef]
        def __init__(self, value: Any) -> None:
            self.value = value

    atomics = _Missing("wasi:keyvalue/atomics")  # type: ignore[assignment]
    batch = _Missing("wasi:keyvalue/batch")  # type: ignore[assignment]
    store = _Missing("wasi:keyvalue/store")  # type: ignore[assignment]
    convergence = _Missing("lodge:platform/convergence")  # type: ignore[assignment]
    wallet = _Missing("lodge:platform/wallet")  # type: ignore[assignment]
    streams = _Missing("wasi:io/streams")  # type: ignore[assignment]
    http_types = _Missing("wasi:http/types")  # type: ignore[assignment]
