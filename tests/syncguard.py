"""A watcher (``algorithms.common.steploop``) that records what a client update's step
loop does that would make a device wait on the host, or the host on the device (issue 27).

Inside a marked loop, outside a declared ``host_read``, it records

- host reads: ``aten::_local_scalar_dense`` and ``aten::is_nonzero`` (``float(t)``,
  ``t.item()``, ``bool(t)``, ``int(t)``) and ``Tensor.tolist``/``numpy`` (which on the CPU
  read memory without dispatching an op);
- random draws: any op with a ``Generator`` argument. Every stream is staged before the
  loop, so on the CPU, where the compute device is the generators' own, this is the rule
  that stands for "a draw from a CPU generator while the compute device is another";
- tensors made from host data (``aten::lift_fresh``: ``torch.tensor(list)``): a
  host-to-device copy on a GPU;
- copies between devices and ops whose tensor arguments sit on several devices (a CPU
  index into device data), 0-dim CPU scalars excepted.

torch's own optimisers keep their step counters on the host (a CPU tensor read by
``_get_value``, a CPU ``torch.tensor(1.0)`` added to it): ops issued from ``torch/optim``
are not recorded, since on a GPU they touch only CPU tensors; the GPU leg of the test
(``torch.cuda.set_sync_debug_mode("error")``) checks that claim for real.
"""

from __future__ import annotations

import sys
from collections import Counter
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
HOST_READS = {aten._local_scalar_dense.default, aten.is_nonzero.default}
COPIES = {aten._to_copy.default, aten.copy_.default}


def _draws(func) -> bool:
    return any("Generator" in str(a.type) for a in func._schema.arguments)


def _from_torch_optim() -> bool:
    f = sys._getframe(2)
    while f is not None:
        name = f.f_code.co_filename.replace("\\", "/")
        if "/torch/optim/" in name:
            return True
        if "/fednas_mpi/" in name:  # our code first: not the optimiser's own bookkeeping
            return False
        f = f.f_back
    return False


def _where() -> str:
    """The innermost frame of our package (file:line function) that led to the op."""
    f = sys._getframe(2)
    while f is not None:
        name = f.f_code.co_filename.replace("\\", "/")
        if "/fednas_mpi/" in name:
            return f"{name.split('/fednas_mpi/')[-1]}:{f.f_lineno} {f.f_code.co_name}"
        f = f.f_back
    return "?"


def _devices(args, kwargs) -> set[torch.device]:
    out = set()
    for a in [*args, *kwargs.values()]:
        for t in a if isinstance(a, (list, tuple)) else [a]:
            if isinstance(t, torch.Tensor) and not (t.device.type == "cpu" and t.dim() == 0):
                out.add(t.device)
    return out


class SyncGuard:
    """Records violations (kind, op, where) and declared host reads (by reason)."""

    def __init__(self):
        self.violations: list[tuple[str, str, str]] = []
        self.allowed_reads: Counter[str] = Counter()
        self.loops = 0
        self._reason: str | None = None

    def _record(self, kind: str, op: str) -> None:
        if self._reason is not None and kind == "host read":
            self.allowed_reads[self._reason] += 1
        elif not _from_torch_optim():
            self.violations.append((kind, op, _where()))

    def summary(self) -> Counter:
        return Counter(self.violations)

    @contextmanager
    def loop(self):
        self.loops += 1
        guard = self
        cuda = torch.cuda.is_available()

        class Dispatch(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if func in HOST_READS:
                    guard._record("host read", str(func))
                elif func is aten.lift_fresh.default:
                    guard._record("tensor from host data", str(func))
                elif _draws(func):
                    guard._record("random draw", str(func))
                elif len(_devices(args, kwargs)) > 1 or (
                    func in COPIES
                    and "device" in kwargs
                    and kwargs["device"] is not None
                    and torch.device(kwargs["device"]) != args[0].device
                ):
                    guard._record("cross-device", str(func))
                return func(*args, **kwargs)

        class Function(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if func in (torch.Tensor.tolist, torch.Tensor.numpy):
                    guard._record("host read", func.__name__)
                return func(*args, **(kwargs or {}))

        before = torch.cuda.get_sync_debug_mode() if cuda else None
        try:
            if cuda:
                torch.cuda.set_sync_debug_mode("error")
            with Function(), Dispatch():
                yield
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode(before)

    @contextmanager
    def allowed(self, reason: str):
        cuda = torch.cuda.is_available()
        outer, self._reason = self._reason, reason
        before = torch.cuda.get_sync_debug_mode() if cuda else None
        try:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
            yield
        finally:
            self._reason = outer
            if cuda:
                torch.cuda.set_sync_debug_mode(before)
