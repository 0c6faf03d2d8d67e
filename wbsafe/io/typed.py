"""Typed JSON documents: one pydantic ``TypeAdapter`` per dataclass, built once.

Results, evidence and the report document are plain dataclasses; pydantic validates their JSON
form against those same types and writes their JSON Schema, so no parser is written by hand.
"""

from __future__ import annotations

from typing import Any

_ADAPTERS: dict[Any, Any] = {}


def adapter(tp: Any) -> Any:
    """The (cached) ``pydantic.TypeAdapter`` for the type ``tp``."""
    if tp not in _ADAPTERS:
        from pydantic import TypeAdapter

        _ADAPTERS[tp] = TypeAdapter(tp)
    return _ADAPTERS[tp]
