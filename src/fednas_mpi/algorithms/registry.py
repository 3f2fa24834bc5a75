"""The one list of federated methods.

One line per method: its ``algorithm.name``, its class, the config it reads and whether
it searches a DARTS architecture or trains a fixed model. Everything that lists methods
derives from here: ``algorithm.name`` validation, which ``algorithm`` keys a run may set
(and stores), ``get_algorithm``, ``NAS_METHODS``, the bench scripts, the tests and the
README's tables. Adding a method is one module (its class and its config dataclass) and
one line below.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ClientSGDConfig, method_config
from .base import Algorithm
from .fedavg import FedAvg
from .fedbabu import FedBABU, FedBABUConfig
from .feddsnas import FedDSNAS, FedDSNASConfig
from .fedmetanas import (
    FedMetaNAS,
    FedMetaNASConfig,
    MetaSearchArchConfig,
    MetaSearchPolicyConfig,
)
from .fednas import FedNAS, FedNASConfig
from .fedpnas import FedPNAS, FedPNASConfig, MetaFedPNAS, PersonalSplitConfig
from .fedrep import FedRep, FedRepConfig
from .fedrlnas import FedRLNAS, FedRLNASConfig
from .perfedavg import PerFedAvg, PerFedAvgConfig
from .perfedrlnas import MetaPerFedRLNAS, PerFedRLNAS, PerFedRLNASConfig
from .random_nas import RandomNAS, RandomNASConfig


@dataclass(frozen=True)
class Method:
    """A registered method. ``sections``: ``algorithm.<key>`` sections it reads, each a
    dataclass; ``top``: a dataclass whose keys it reads at ``algorithm.`` top level (beside
    name, local_epochs and batch_size, which every method reads). ``nas``: it builds a
    DARTS supernet (model.name: darts); otherwise it trains a fixed model. ``baseline``:
    a NAS reference point that does not search (left out of the search comparisons).
    For export: ``path``, it evaluates a single-path child (one op per edge) rather than
    the mixture; ``personal``, each client has its own personalised model."""

    name: str
    cls: type[Algorithm]
    nas: bool
    sections: dict[str, type] = field(default_factory=dict)
    top: type | None = None
    baseline: bool = False
    path: bool = False
    personal: bool = False

    def __post_init__(self) -> None:
        assert self.cls.name == self.name, (self.cls, self.name)
        cls = method_config(self.name, self.top, self.sections)
        # a module-level name, so that pickle finds the generated class
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
        globals()[cls.__name__] = cls
        object.__setattr__(self, "_config", cls)

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
    Method("fedavg", FedAvg, nas=False, top=SGD),
    Method("fedmetanas", FedMetaNAS, nas=True, sections={"fedmetanas": FedMetaNASConfig}),
    Method("fednas", FedNAS, nas=True, sections={"fednas": FedNASConfig}),
    Method(
        "perfedavg",
        PerFedAvg,
        nas=False,
        top=SGD,
        sections={"perfedavg": PerFedAvgConfig},
        personal=True,
    ),
    Method("fedrep", FedRep, nas=False, top=SGD, sections={"fedrep": FedRepConfig}, personal=True),
    Method(
        "fedbabu", FedBABU, nas=False, top=SGD, sections={"fedbabu": FedBABUConfig}, personal=True
    ),
    Method("feddsnas", FedDSNAS, nas=True, sections={"feddsnas": FedDSNASConfig}, path=True),
    Method("fedrlnas", FedRLNAS, nas=True, sections={"fedrlnas": FedRLNASConfig}, path=True),
    Method(
        "perfedrlnas",
        PerFedRLNAS,
        nas=True,
        sections={"perfedrlnas": PerFedRLNASConfig},
        path=True,
        personal=True,
    ),
    Method("fedpnas", FedPNAS, nas=True, sections={"fedpnas": FedPNASConfig}, personal=True),
    Method(
        "meta_fedpnas",
        MetaFedPNAS,
        nas=True,
        sections={"fedpnas": PersonalSplitConfig, "fedmetanas": MetaSearchArchConfig},
        personal=True,
    ),
    Method(
        "meta_perfedrlnas",
        MetaPerFedRLNAS,
        nas=True,
        sections={"perfedrlnas": PerFedRLNASConfig, "fedmetanas": MetaSearchPolicyConfig},
        path=True,
        personal=True,
    ),
    Method(
        "random_nas", RandomNAS, nas=True, sections={"random_nas": RandomNASConfig}, baseline=True
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
