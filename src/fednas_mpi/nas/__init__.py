"""Search space as plain modules and data: primitives, Gumbel-softmax mixing, cells, the
network forward, the typed architecture spec and genotype, and every derivation (pruning,
final, DARTS, argmax child). Imports nothing distributed."""

from .derive import (
    Pruned,
    argmax_choices,
    child_spec,
    darts_spec,
    derive_darts,
    final_spec,
    finalize,
    prune,
    restrict_state,
    sample_genotype,
    sampled_spec,
)
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
    "EdgeChoice",
    "Genotype",
    "NodeGenotype",
    "Pruned",
    "SearchCell",
    "SearchNetwork",
    "argmax_choices",
    "child_spec",
    "darts_spec",
    "derive_darts",
    "final_spec",
    "finalize",
    "genotype_of",
    "genotype_str",
    "gumbel_noise",
    "logit_signal",
    "prune",
    "relaxed_weights",
    "restrict_state",
    "sample_genotype",
    "sampled_spec",
    "temperature_at",
    "weighted_sum",
]
