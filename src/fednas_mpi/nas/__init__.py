"""Search space as plain modules: primitives, Gumbel-softmax mixing, cells, network,
pruning and genotypes. Imports nothing distributed."""

from .mixing import gumbel_noise, relaxed_weights, weighted_sum
from .network import SearchCell, SearchNetwork
from .operations import OPS, PRIMITIVES
from .space import (
                    CellSpace,
                    Pruned,
                    derive_darts,
                    finalize,
                    genotype_str,
                    logit_signal,
                    prune,
                    sample_genotype,
)
from .temperature import temperature_at

__all__ = ["OPS", "PRIMITIVES", "CellSpace", "Pruned", "SearchCell", "SearchNetwork",
           "derive_darts", "finalize", "genotype_str", "gumbel_noise", "logit_signal", "prune",
           "relaxed_weights", "sample_genotype", "temperature_at", "weighted_sum"]
