"""The config of ``algorithms/perfedavg.py`` (PerFedAvgConfig), torch-free so that
loading and validating a YAML imports no torch; the method code imports it from here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...config import ClientSGDConfig, method_name, option


@dataclass(kw_only=True)
class PerFedAvgConfig:
    variant: Literal["first_order", "hessian_free"] = option(
        "first_order",
        "Meta gradient: first_order drops the Hessian term; hessian_free "
        "estimates it by a finite difference of gradients on a third batch.",
    )
    alpha: float = option(
        0.01,
        "Inner (adaptation) step size alpha; the outer step size beta is algorithm.lr.",
        gt=0.0,
    )
    hf_delta: float = option(
        0.001, "hessian_free: finite-difference step delta of the Hessian-vector product.", gt=0.0
    )
    adapt_steps: int = option(
        1,
        "Personalisation before local evaluation: SGD steps of size "
        "alpha on minibatches of the client's train split.",
        ge=1,
    )


@dataclass(kw_only=True)
class PerFedAvgAlgorithmConfig(ClientSGDConfig):
    """``algorithm`` of perfedavg: the shared keys, client SGD's at its top level and its section
    ``algorithm.perfedavg``."""

    name: str = method_name("perfedavg")
    perfedavg: PerFedAvgConfig = field(default_factory=PerFedAvgConfig)
