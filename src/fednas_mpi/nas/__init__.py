"""Search space as plain modules and data: primitives, Gumbel-softmax mixing, cells, the
network forward, the typed architecture spec and genotype, every derivation (pruning,
final, DARTS, argmax child) and the noise logit gaps are measured against. Imports
nothing distributed."""

from .derive import (
    NoisePruned,
    Pruned,
    argmax_choices,
    child_spec,
    darts_spec,
    derive_darts,
    final_spec,
    finalize,
    prune,
    prune_z,
    remove,
    restrict_state,
    sample_genotype,
    sampled_spec,
)
from .margins import Dispersion, Evidence, covariance, effective_clients
from .mixing import gumbel_noise, relaxed_weights, weighted_sum
from .network import SearchCell, SearchNetwork
from .operations import OPS, PRIMITIVES
from .space import CellSpace, logit_signal
from .spec import (
    CELL_TYPES,
    ArchSpec,
    CellGenotype,
    CellMasks,
    EdgeChoice,
    Genotype,
    NodeGenotype,
    genotype_of,
    genotype_str,
)
from .temperature import temperature_at

__all__ = [
    "CELL_TYPES",
    "OPS",
    "PRIMITIVES",
    "ArchSpec",
    "CellGenotype",
    "CellMasks",
    "CellSpace",
    "Dispersion",
    "EdgeChoice",
    "Evidence",
    "Genotype",
    "NodeGenotype",
    "NoisePruned",
    "Pruned",
    "SearchCell",
    "SearchNetwork",
    "argmax_choices",
    "child_spec",
    "covariance",
    "darts_spec",
    "derive_darts",
    "effective_clients",
    "final_spec",
    "finalize",
    "genotype_of",
    "genotype_str",
    "gumbel_noise",
    "logit_signal",
    "prune",
    "prune_z",
    "relaxed_weights",
    "remove",
    "restrict_state",
    "sample_genotype",
    "sampled_spec",
    "temperature_at",
    "weighted_sum",
]
