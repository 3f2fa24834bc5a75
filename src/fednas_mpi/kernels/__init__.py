"""Fused Gumbel-softmax mixing kernels (C++ for CPU, CUDA for GPU) and their loader.

``mix`` and ``gumbel_mix`` are what the search space calls; they run the fused library
once ``configure`` has found it, and the PyTorch reference (``reference.py``) otherwise.
This package depends on torch only, below ``nas`` in the layering.
"""

from .ops import (
    BACKENDS,
    KernelError,
    Status,
    configure,
    fused_supports,
    gumbel_mix,
    hard_index,
    load,
    mix,
    status,
    use_reference,
)
from .reference import reference_gumbel_mix, reference_mix, reference_mix_stacked

__all__ = [
    "BACKENDS",
    "KernelError",
    "Status",
    "configure",
    "fused_supports",
    "gumbel_mix",
    "hard_index",
    "load",
    "mix",
    "reference_gumbel_mix",
    "reference_mix",
    "reference_mix_stacked",
    "status",
    "use_reference",
]
