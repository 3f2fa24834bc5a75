"""The one list of federated methods.

One line per method: its ``algorithm.name``, its class, the config it reads and whether
it searches a DARTS architecture or trains a fixed model. Everything that lists methods
derives from here: ``algorithm.name`` validation, which ``algorithm`` keys a run may set
(and stores), ``get_algorithm``, ``NAS_METHODS``, the bench scripts, the tests and the
README's tables. Adding a method is one module (its class), its config dataclasses in
``configs/`` and one line below.

Torch-free: a method's class is named (``impl``, its module under ``algorithms`` and
class) and imported on first use, so that the package can hand this table to ``config``
(``config.use_catalogue``) and load and validate a YAML without importing torch or any
method's code.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..config import ClientSGDConfig, method_config
from .configs.fedbabu import FedBABUConfig
from .configs.feddsnas import FedDSNASConfig
from .configs.fedmetanas import FedMetaNASConfig, MetaSearchArchConfig, MetaSearchPolicyConfig
from .configs.fednas import FedNASConfig
from .configs.fedpnas import FedPNASConfig, PersonalSplitConfig
from .configs.fedrep import FedRepConfig
from .configs.fedrlnas import FedRLNASConfig
from .configs.perfedavg import PerFedAvgConfig
from .configs.perfedrlnas import PerFedRLNASConfig
from .configs.random_nas import RandomNASConfig

if TYPE_CHECKING:  # the class is imported on use (``Method.cls``), never at import time
    from .base import Algorithm


@dataclass(frozen=True)
class Method:
    """A registered method. ``impl``: its class, as ``"module.Class"`` under
    ``fednas_mpi.algorithms`` (or the class itself, for a test's toy method).
    ``sections``: ``algorithm.<key>`` sections it reads, each a
    dataclass; ``top``: a dataclass whose keys it reads at ``algorithm.`` top level (beside
    name, local_epochs and batch_size, which every method reads). ``nas``: it builds a
    DARTS supernet (model.name: darts); otherwise it trains a fixed model. ``baseline``:
    a NAS reference point that does not search (left out of the search comparisons).
    For export: ``path``, it evaluates a single-path child (one op per edge) rather than
    the mixture; ``personal``, each client has its own personalised model."""

    name: str
    impl: str | type[Algorithm]
    nas: bool
    sections: dict[str, type] = field(default_factory=dict)
    top: type | None = None
    baseline: bool = False
    path: bool = False
    personal: bool = False

    def __post_init__(self) -> None:
        cls = method_config(self.name, self.top, self.sections)
        # a module-level name, so that pickle finds the generated class
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
        globals()[cls.__name__] = cls
        object.__setattr__(self, "_config", cls)

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
    def config(self) -> type:
        """The dataclass of this method's ``algorithm`` section."""
        return self._config  # type: ignore[attr-defined]

    @property
    def keys(self) -> tuple[str, ...]:
        """The ``algorithm.`` keys this method reads, in config order."""
        return tuple(f.name for f in self.config.__dataclass_fields__.values())


SGD = ClientSGDConfig
METHODS = (
    Method("fedavg", "fedavg.FedAvg", nas=False, top=SGD),
    Method(
        "fedmetanas", "fedmetanas.FedMetaNAS", nas=True, sections={"fedmetanas": FedMetaNASConfig}
    ),
    Method("fednas", "fednas.FedNAS", nas=True, sections={"fednas": FedNASConfig}),
    Method(
        "perfedavg",
        "perfedavg.PerFedAvg",
        nas=False,
        top=SGD,
        sections={"perfedavg": PerFedAvgConfig},
        personal=True,
    ),
    Method(
        "fedrep",
        "fedrep.FedRep",
        nas=False,
        top=SGD,
        sections={"fedrep": FedRepConfig},
        personal=True,
    ),
    Method(
        "fedbabu",
        "fedbabu.FedBABU",
        nas=False,
        top=SGD,
        sections={"fedbabu": FedBABUConfig},
        personal=True,
    ),
    Method(
        "feddsnas", "feddsnas.FedDSNAS", nas=True, sections={"feddsnas": FedDSNASConfig}, path=True
    ),
    Method(
        "fedrlnas", "fedrlnas.FedRLNAS", nas=True, sections={"fedrlnas": FedRLNASConfig}, path=True
    ),
    Method(
        "perfedrlnas",
        "perfedrlnas.PerFedRLNAS",
        nas=True,
        sections={"perfedrlnas": PerFedRLNASConfig},
        path=True,
        personal=True,
    ),
    Method(
        "fedpnas", "fedpnas.FedPNAS", nas=True, sections={"fedpnas": FedPNASConfig}, personal=True
    ),
    Method(
        "meta_fedpnas",
        "fedpnas.MetaFedPNAS",
        nas=True,
        sections={"fedpnas": PersonalSplitConfig, "fedmetanas": MetaSearchArchConfig},
        personal=True,
    ),
    Method(
        "meta_perfedrlnas",
        "perfedrlnas.MetaPerFedRLNAS",
        nas=True,
        sections={"perfedrlnas": PerFedRLNASConfig, "fedmetanas": MetaSearchPolicyConfig},
        path=True,
        personal=True,
    ),
    Method(
        "random_nas",
        "random_nas.RandomNAS",
        nas=True,
        sections={"random_nas": RandomNASConfig},
        baseline=True,
    ),
)


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
