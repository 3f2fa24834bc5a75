"""The mixing ops as the search space calls them, dispatching to the fused library or the
PyTorch reference, plus the autograd and fake (meta) registrations of the fused ops.

``configure`` decides once per process; until it is called everything runs the reference.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from . import loader
from .reference import hard_index, masked_logits, reference_gumbel_mix, reference_mix

BACKENDS = ("auto", "fused", "reference")
CPU_DTYPES = (torch.float32, torch.float64)
CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class KernelError(RuntimeError):
    """``kernels.backend: fused`` was asked for and the library cannot be had."""


@dataclass
class Status:
    backend: str = "reference"  # what mix() uses in this process: "fused" or "reference"
    source: str = ""  # prebuilt | jit | jit-cache
    path: str = ""
    reason: str = ""  # why the reference is used, when it is
    cuda: bool = False  # the fused library has CUDA kernels (fixed once loaded)


_status = Status()
_registered = False


def status() -> Status:
    return _status


def _register_python_parts() -> None:
    """Autograd and fake implementations of the C++ ops (once per process)."""
    global _registered
    if _registered:
        return

    @torch.library.register_fake("fednas::mix")
    def _mix_fake(outputs, weights):
        torch._check(len(outputs) > 0, lambda: "fednas::mix needs at least one output")
        torch._check(
            weights.dim() == 1 and weights.shape[0] == len(outputs),
            lambda: "fednas::mix: one weight per output",
        )
        return torch.empty_like(outputs[0])

    @torch.library.register_fake("fednas::mix_backward")
    def _mix_backward_fake(grad, outputs, weights, outputs_grad):
        grads = [torch.empty_like(outputs[0]) for _ in outputs] if outputs_grad else []
        return grads, weights.new_empty(weights.shape)

    def setup_context(ctx, inputs, output):
        outputs, weights = inputs
        ctx.num_outputs = len(outputs)
        ctx.save_for_backward(weights, *outputs)

    def backward(ctx, grad):
        weights, *outputs = ctx.saved_tensors
        need_outputs = (
            any(ctx.needs_input_grad[0])
            if isinstance(ctx.needs_input_grad[0], (list, tuple))
            else bool(ctx.needs_input_grad[0])
        )
        grads, grad_weights = torch.ops.fednas.mix_backward(grad, outputs, weights, need_outputs)
        if not need_outputs:
            grads = [None] * ctx.num_outputs
        return list(grads), grad_weights

    torch.library.register_autograd("fednas::mix", backward, setup_context=setup_context)
    _registered = True


def load(
    builder: bool = True, wait_for_builder: Callable[[], None] | None = None, verbose: bool = False
) -> loader.LoadResult:
    """Make the fused library available in this process (prebuilt, cached or JIT-built).

    On a node with several processes only ``builder`` compiles; the others call
    ``wait_for_builder`` (collective) and then load what it left in the cache.
    """
    if loader.is_loaded():
        _register_python_parts()
        return loader.LoadResult(True, _status.source or "already", _status.path)
    result = loader.load_prebuilt()
    if result is None:
        with_cuda = loader.want_cuda()
        if builder:
            result = loader.load_cached(with_cuda) or loader.jit_build(with_cuda, verbose)
        if wait_for_builder is not None:
            wait_for_builder()
        if not builder:
            result = loader.load_cached(with_cuda) or loader.LoadResult(
                False,
                "jit",
                str(loader.jit_target(with_cuda)),
                "the node's building rank left no library in the cache",
            )
    elif wait_for_builder is not None:
        wait_for_builder()  # keep the collective balanced with the ranks that had to build
    if result.ok:
        _register_python_parts()
    return result


def configure(
    backend: str = "auto", result: loader.LoadResult | None = None, announce: bool = True
) -> Status:
    """Choose what ``mix`` uses from ``kernels.backend`` and a load result.

    ``reference`` never touches the library; ``fused`` raises KernelError when it is
    missing; ``auto`` falls back to the reference with one warning (when ``announce``).
    """
    global _status
    if backend not in BACKENDS:
        raise ValueError(f"kernels.backend must be one of {BACKENDS}, not {backend!r}")
    if backend == "reference":
        _status = Status("reference", reason="kernels.backend is 'reference'")
        return _status
    if result is None:
        result = load()
    if result.ok:
        _status = Status("fused", result.source, result.path, cuda=loader.has_cuda_kernels())
        return _status
    if backend == "fused":
        raise KernelError(
            f"kernels.backend is 'fused' but the fused kernels are not available: "
            f"{result.error}. Fix the build, or set kernels.backend: auto to fall "
            f"back to the PyTorch reference"
        )
    _status = Status("reference", result.source, result.path, result.error)
    if announce:
        warnings.warn(
            f"fused mixing kernels unavailable, using the PyTorch reference: {result.error}",
            RuntimeWarning,
            stacklevel=2,
        )
    return _status


def use_reference() -> None:
    """Back to the reference in this process (tests and benchmarks)."""
    global _status
    _status = Status("reference", reason="use_reference()")


def fused_supports(t: torch.Tensor) -> bool:
    if t.device.type == "cpu":
        return t.dtype in CPU_DTYPES
    if t.device.type == "cuda":
        return t.dtype in CUDA_DTYPES and _status.cuda
    return False


def _check_args(
    op: str, outputs: Sequence[torch.Tensor | None], weights: torch.Tensor, what: str = "weights"
) -> None:
    """The C++ checks, made here first: a C++ exception from these ops crashed the process
    (segfault) under torch 2.11 on the GPU image, so wrong arguments must not reach it."""
    if weights.dim() != 1 or weights.shape[0] != len(outputs):
        raise RuntimeError(
            f"fednas::{op}: {what} must be 1-D with one entry per output "
            f"({len(outputs)}), got shape {list(weights.shape)}"
        )
    first = next(o for o in outputs if o is not None)
    for k, o in enumerate(outputs):
        if o is None:
            continue
        if o.shape != first.shape or o.dtype != first.dtype or o.device != first.device:
            raise RuntimeError(
                f"fednas::{op}: output {k} has shape {list(o.shape)} "
                f"({o.dtype}, {o.device}), the first output "
                f"{list(first.shape)} ({first.dtype}, {first.device})"
            )
    if weights.device != first.device:
        raise RuntimeError(
            f"fednas::{op}: {what} are on {weights.device}, the outputs on {first.device}"
        )


def mix(outputs: Sequence[torch.Tensor | None], weights: torch.Tensor) -> torch.Tensor:
    """sum_k weights[k] * outputs[k] over the outputs that are not None (never read)."""
    present = [k for k, o in enumerate(outputs) if o is not None]
    if not present:
        raise ValueError("mix over no outputs: every input was pruned")
    first = outputs[present[0]]
    if _status.backend != "fused" or not fused_supports(first):
        return reference_mix(outputs, weights)
    _check_args("mix", outputs, weights)
    tensors = [outputs[k] for k in present]
    if len(present) != len(outputs):
        weights = weights[torch.tensor(present, device=weights.device)]
    return torch.ops.fednas.mix(tensors, weights)


def gumbel_mix(
    outputs: Sequence[torch.Tensor | None],
    logits: torch.Tensor,
    temperature: float,
    noise: torch.Tensor | None = None,
    mask: torch.Tensor | Sequence[bool] | None = None,
    hard: bool = False,
    index: int | None = None,
) -> torch.Tensor:
    """Eq. 1-2 as one op: softmax((logits + noise) / T) over ``mask``, mixing the outputs
    that exist (None: the zero op or a pruned one). ``hard``: the DSNAS estimator, see
    reference.reference_gumbel_mix; compute only ``hard_index(logits, noise, mask)``'s op,
    and pass it as ``index`` when known: then nothing is read from the device, and a
    ``mask`` tensor stays where it is (pass the network's device-resident op mask). The
    soft mix reads a ``mask`` tensor to the host once per call (it must know which outputs
    to skip): no step loop calls it."""
    present = next((o for o in outputs if o is not None), None)
    if present is None:
        raise ValueError("gumbel_mix over no outputs: every input was pruned")
    if _status.backend != "fused" or not fused_supports(present):
        return reference_gumbel_mix(outputs, logits, temperature, noise, mask, hard, index)
    _check_args("gumbel_mix", outputs, logits, "logits")
    if not (temperature > 0.0 and math.isfinite(temperature)):
        raise RuntimeError(
            f"fednas::gumbel_mix: temperature must be positive and finite, got {temperature}"
        )
    if mask is not None and len(mask) != len(outputs):
        raise RuntimeError("fednas::gumbel_mix: mask must have one 0/1 entry per output")
    if hard:
        return _hard_mix(outputs, logits, noise, mask, index)
    keep = (
        None
        if mask is None
        else [int(bool(m)) for m in (mask.tolist() if torch.is_tensor(mask) else mask)]
    )
    return torch.ops.fednas.gumbel_mix(list(outputs), logits, float(temperature), noise, keep)


def _hard_mix(outputs, logits, noise, mask, index: int | None) -> torch.Tensor:
    """``fednas::gumbel_mix(hard=True)``'s composite with the sampled entry known: the C++
    op takes its mask as a host list and reads its argmax back (two host reads per edge,
    issue 27), while here the mask is applied on the logits' device. The same ops on the
    same values: bit-equal to the C++ op, forward and backward."""
    s = index
    if s is None:
        s = hard_index(logits.detach(), None if noise is None else noise.detach(), mask)
    # Checked here, not left to C++: under torch 2.11 (the GPU image) a C++ exception
    # raised from these ops crashed the process (segfault) instead of reaching Python.
    if outputs[s] is None:
        raise RuntimeError(
            f"fednas::gumbel_mix(hard=True): the sampled entry {s} has no "
            f"output; compute the op that hard_index selects"
        )
    logp = torch.log_softmax(masked_logits(logits, mask), 0)[s]
    return torch.ops.fednas.mix([outputs[s]], torch.exp(logp - logp.detach()).reshape(1))


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
    "status",
    "use_reference",
]
