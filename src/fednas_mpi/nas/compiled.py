"""Compiled cells (``kernels.compile: cells``): each search cell's forward compiled on its
own with ``torch.compile`` (regional compilation: the repeated block, not the network).

A cell's live ops never change (pruning and derivation build a new network), so a cell is
compiled once, on its first training forward, and runs that graph until it is dropped; a
new architecture brings new cells and with them exactly one compile each.

Why a private code object per cell: dynamo keeps its compiled graphs on the code object of
the function it compiles, at most ``recompile_limit`` (8) of them, and checks a call's
guards against each in turn. Shared by every cell of every network a run builds (a FedMetaNAS
search prunes its architecture round after round), they would pile up until the limit and
then fall back to eager with only a warning. A copy of the forward's code per cell keeps
each cell's graphs with the cell: they are freed with it and no cell sees another's.

Only forwards with autograd on (the client steps) run compiled: evaluation under
``no_grad`` stays eager, so it adds no second graph per cell. Gumbel noise is drawn
outside the cells (``SearchNetwork.mixing_weights``), so a compiled cell computes the same
function as the eager one; results agree to float rounding (the compiler fuses and
reorders arithmetic), not bit for bit.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch

COMPILE_MODES = ("off", "cells")
# The compiler backend; tests of the compile plumbing use "aot_eager" (dynamo and
# AOTAutograd without code generation), which counts compiles the same way in seconds.
BACKEND = "inductor"


def private_copy(fn: Callable) -> Callable:
    """``fn`` as a new function object over a new code object: dynamo's cache of compiled
    graphs then belongs to this copy alone."""
    code = fn.__code__.replace()
    return types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def compile_forward(fn: Callable) -> Callable:
    """``torch.compile`` of a private copy of ``fn`` (an unbound cell forward taking the
    cell first) with the current ``BACKEND``."""
    return torch.compile(private_copy(fn), backend=BACKEND)
