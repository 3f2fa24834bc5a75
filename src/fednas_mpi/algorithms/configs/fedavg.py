"""The config of ``algorithms/fedavg.py``: FedAvg reads the shared keys and client SGD's,
at ``algorithm.`` top level, and no section of its own."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import ClientSGDConfig, method_name


@dataclass(kw_only=True)
class FedAvgAlgorithmConfig(ClientSGDConfig):
    """``algorithm`` of fedavg: the shared keys and client SGD's."""

    name: str = method_name("fedavg")
