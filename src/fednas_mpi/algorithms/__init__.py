"""Federated methods behind one interface, selected by ``algorithm.name``."""

from __future__ import annotations

from .base import Algorithm, ClientData, ClientResult, DataInfo, GlobalModel, RoundContext
from .fedavg import FedAvg
from .fedbabu import FedBABU
from .feddsnas import FedDSNAS
from .fedmetanas import FedMetaNAS
from .fednas import FedNAS
from .fedpnas import FedPNAS, MetaFedPNAS
from .fedrep import FedRep
from .fedrlnas import FedRLNAS
from .perfedavg import PerFedAvg
from .perfedrlnas import MetaPerFedRLNAS, PerFedRLNAS
from .random_nas import RandomNAS

REGISTRY: dict[str, type[Algorithm]] = {
    cls.name: cls for cls in (FedAvg, FedMetaNAS, FedNAS, PerFedAvg, FedRep, FedBABU,
                              FedDSNAS, FedRLNAS, PerFedRLNAS, FedPNAS, MetaFedPNAS,
                              MetaPerFedRLNAS, RandomNAS)}


def get_algorithm(name: str) -> type[Algorithm]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown algorithm.name {name!r}; known: {sorted(REGISTRY)}") from None


__all__ = ["Algorithm", "ClientData", "ClientResult", "DataInfo", "GlobalModel",
           "RoundContext", "REGISTRY", "get_algorithm"]
