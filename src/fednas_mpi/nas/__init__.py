"""Search space as plain modules: primitives, Gumbel-softmax mixing, cells, network,
pruning and genotypes. Imports nothing distributed."""

from .mixing import gumbel_noise, relaxed_weights, weighted_sum
from .network import SearchCell, SearchNetwork
from .operations import OPS, PRIMITIVES
from .space import CellSpace, derive_darts, finalize, genotype_str, prune
from .temperature import temperature_at

__all__ = ["OPS", "PRIMITIVES", "CellSpace", "SearchCell", "SearchNetwork", "derive_darts",
           "finalize", "genotype_str", "gumbel_noise", "prune", "relaxed_weights",
           "temperature_at", "weighted_sum"]
