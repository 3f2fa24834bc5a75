"""Federated methods behind one interface, selected by ``algorithm.name``; the list of
methods is ``registry.METHODS``."""

from __future__ import annotations

from . import registry
from .base import Algorithm, ClientData, ClientResult, DataInfo, GlobalModel, RoundContext

#: ``algorithm.name`` -> class, derived from the registry.
REGISTRY: dict[str, type[Algorithm]] = {m.name: m.cls for m in registry.METHODS}


def get_algorithm(name: str) -> type[Algorithm]:
    return registry.method(name).cls


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
