"""The one list of federated methods.

One line per method: its ``algorithm.name``, its class, the config it reads and whether
it searches a DARTS architecture or trains a fixed model. Everything that lists methods
derives from here: ``algorithm.name`` validation, which ``algorithm`` keys a run may set
(and stores), ``get_algorithm``, ``NAS_METHODS``, the bench scripts, the tests and the
README's tables. Adding a method is one module (its class), its config classes in
``configs/`` (its sections and its ``algorithm`` class) and one line below. The table is
data: nothing here generates or injects a class.

Torch-free: a method's class is named (``impl``, its module under ``algorithms`` and
class) and imported on first use, so that the package can hand this table to ``config``
(``config.use_catalogue``) and load and validate a YAML without importing torch or any
method's code.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..models import catalogue as models_catalogue
from .configs.fedavg import FedAvgAlgorithmConfig
from .configs.fedbabu import FedBABUAlgorithmConfig
from .configs.feddsnas import FedDSNASAlgorithmConfig
from .configs.fedmetanas import FedMetaNASAlgorithmConfig
from .configs.fednas import FedNASAlgorithmConfig
from .configs.fedpnas import FedPNASAlgorithmConfig, MetaFedPNASAlgorithmConfig
from .configs.fedrep import FedRepAlgorithmConfig
from .configs.fedrlnas import FedRLNASAlgorithmConfig
from .configs.perfedavg import PerFedAvgAlgorithmConfig
from .configs.perfedrlnas import MetaPerFedRLNASAlgorithmConfig, PerFedRLNASAlgorithmConfig
from .configs.random_nas import RandomNASAlgorithmConfig

if TYPE_CHECKING:  # the class is imported on use (``Method.cls``), never at import time
    from .base import Algorithm


@dataclass(frozen=True)
class Method:
    """A registered method: plain data. ``impl``: its class, as ``"module.Class"`` under
    ``fednas_mpi.algorithms`` (or the class itself, for a test's toy method). ``config``:
    the class of its ``algorithm`` section, a subclass of ``config.AlgorithmConfig`` written
    in its config module (its fields are the keys the method reads; a field whose default is
    a dataclass is one of its sections). ``nas``: it builds a DARTS supernet (model.name:
    darts); otherwise it trains a fixed model. ``baseline``: a NAS reference point that does
    not search (left out of the search comparisons). For export: ``path``, it evaluates a
    single-path child (one op per edge) rather than the mixture; ``personal``, each client
    has its own personalised model."""

    name: str
    impl: str | type[Algorithm]
    config: type
    nas: bool
    baseline: bool = False
    path: bool = False
    personal: bool = False

    @property
    def cls(self) -> type[Algorithm]:
        """The method's class (its module imported on first use: torch and the method code)."""
        if not isinstance(self.impl, str):
            return self.impl
        module, _, name = self.impl.rpartition(".")
        cls = getattr(importlib.import_module(f"{__package__}.{module}"), name)
        assert cls.name == self.name, (cls, self.name)
        return cls

    @property
    def keys(self) -> tuple[str, ...]:
        """The ``algorithm.`` keys this method reads, in config order."""
        return tuple(f.name for f in dataclasses.fields(self.config))

    @property
    def sections(self) -> dict[str, type]:
        """The ``algorithm.<key>`` sections this method reads: key -> section class."""
        return {
            f.name: f.default_factory
            for f in dataclasses.fields(self.config)
            if dataclasses.is_dataclass(f.default_factory)
        }


METHODS = (
    Method("fedavg", "fedavg.FedAvg", FedAvgAlgorithmConfig, nas=False),
    Method("fedmetanas", "fedmetanas.FedMetaNAS", FedMetaNASAlgorithmConfig, nas=True),
    Method("fednas", "fednas.FedNAS", FedNASAlgorithmConfig, nas=True),
    Method("perfedavg", "perfedavg.PerFedAvg", PerFedAvgAlgorithmConfig, nas=False, personal=True),
    Method("fedrep", "fedrep.FedRep", FedRepAlgorithmConfig, nas=False, personal=True),
    Method("fedbabu", "fedbabu.FedBABU", FedBABUAlgorithmConfig, nas=False, personal=True),
    Method("feddsnas", "feddsnas.FedDSNAS", FedDSNASAlgorithmConfig, nas=True, path=True),
    Method("fedrlnas", "fedrlnas.FedRLNAS", FedRLNASAlgorithmConfig, nas=True, path=True),
    Method(
        "perfedrlnas",
        "perfedrlnas.PerFedRLNAS",
        PerFedRLNASAlgorithmConfig,
        nas=True,
        path=True,
        personal=True,
    ),
    Method("fedpnas", "fedpnas.FedPNAS", FedPNASAlgorithmConfig, nas=True, personal=True),
    Method(
        "meta_fedpnas", "fedpnas.MetaFedPNAS", MetaFedPNASAlgorithmConfig, nas=True, personal=True
    ),
    Method(
        "meta_perfedrlnas",
        "perfedrlnas.MetaPerFedRLNAS",
        MetaPerFedRLNASAlgorithmConfig,
        nas=True,
        path=True,
        personal=True,
    ),
    Method("random_nas", "random_nas.RandomNAS", RandomNASAlgorithmConfig, nas=True, baseline=True),
)


#: The table of models, declared with the model code (``models.catalogue``); handed to
#: ``config`` with the methods, whose ``nas`` flag decides which of them a run may use.
MODELS = models_catalogue.MODELS


def by_name() -> dict[str, Method]:
    """The registered methods by ``algorithm.name`` (read on each call, so a test may
    register a toy method by patching ``METHODS``)."""
    return {m.name: m for m in METHODS}


def method(name: str) -> Method:
    try:
        return by_name()[name]
    except KeyError:
        raise KeyError(f"unknown algorithm.name {name!r}; known: {', '.join(names())}") from None


def names() -> tuple[str, ...]:
    return tuple(m.name for m in METHODS)


def __getattr__(name: str):
    # derived lists, recomputed on use so that they follow METHODS
    if name == "NAS_METHODS":  # methods that build a DARTS supernet (model.name: darts)
        return tuple(m.name for m in METHODS if m.nas)
    if name == "SEARCH_METHODS":  # NAS methods that search (no baselines)
        return tuple(m.name for m in METHODS if m.nas and not m.baseline)
    if name == "FIXED_METHODS":
        return tuple(m.name for m in METHODS if not m.nas)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
