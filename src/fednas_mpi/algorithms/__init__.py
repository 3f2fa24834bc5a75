"""Federated methods behind one interface, selected by ``algorithm.name``; the list of
methods is ``registry.METHODS``.

The interface and the method classes are imported on first use (PEP 562): the package's
``__init__`` imports ``registry`` (torch-free) to hand it to ``config``, and that must not
import torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import registry

if TYPE_CHECKING:
    from .base import Algorithm, ClientData, ClientResult, DataInfo, GlobalModel, RoundContext

_BASE = ("Algorithm", "ClientData", "ClientResult", "DataInfo", "GlobalModel", "RoundContext")


def get_algorithm(name: str) -> type[Algorithm]:
    return registry.method(name).cls


def __getattr__(name: str) -> Any:
    if name in _BASE:
        from . import base

        return getattr(base, name)
    if name == "REGISTRY":  # ``algorithm.name`` -> class, derived from the registry
        return {m.name: m.cls for m in registry.METHODS}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Algorithm",
    "ClientData",
    "ClientResult",
    "DataInfo",
    "GlobalModel",
    "RoundContext",
    "REGISTRY",
    "get_algorithm",
    "registry",
]
