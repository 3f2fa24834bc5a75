"""Test-only fault hooks, read from the environment in this one place.

They let the fault-injection suite (``tests/faults/``) break real runs in ways that are
otherwise hard to time. The client-result hook is installed once, when a rank's
``Simulation`` is built (``client_result_hook``): unset (every real run) there is none, and
the client loop only tests it for None. The checkpoint hook costs a dictionary lookup per
checkpoint.

``FEDNAS_FAULT_NAN_CLIENT=R:C[,R:C...]``
    client ``C``'s result in round ``R`` (1-based) gets a NaN in its first floating
    tensor (a copy), as a diverged local update would.
``FEDNAS_FAULT_CHECKPOINT=R:ACTION``
    while rank 0 writes round ``R``'s checkpoint, after part of the temporary file is
    written: ``kill`` (SIGKILL itself, a writer killed mid-write), ``enospc``, ``eio`` or
    ``eacces`` (the write fails with that errno, as on a full disk, a failing disk or
    lost permission).
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable
from functools import cache

import torch

from .flat import State

NAN_CLIENT = "FEDNAS_FAULT_NAN_CLIENT"
CHECKPOINT = "FEDNAS_FAULT_CHECKPOINT"
_ERRNOS = {"enospc": errno.ENOSPC, "eio": errno.EIO, "eacces": errno.EACCES}


def _pairs(text: str) -> list[tuple[int, str]]:
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        r, sep, what = item.partition(":")
        if not sep or not r.strip().isdigit() or not what.strip():
            raise ValueError(f"bad fault spec {item!r}: expected ROUND:VALUE")
        out.append((int(r), what.strip().lower()))
    return out


@cache
def nan_clients() -> frozenset[tuple[int, int]]:
    """(round, client) pairs whose results are poisoned; empty unless the hook is set."""
    return frozenset((r, int(c)) for r, c in _pairs(os.environ.get(NAN_CLIENT, "")))


@cache
def checkpoint_faults() -> dict[int, str]:
    faults = dict(_pairs(os.environ.get(CHECKPOINT, "")))
    bad = {a for a in faults.values() if a != "kill" and a not in _ERRNOS}
    if bad:
        raise ValueError(f"{CHECKPOINT}: unknown action(s) {sorted(bad)}")
    return faults


def client_result_hook() -> Callable[[int, int, State], State] | None:
    """``poison_client`` when ``FEDNAS_FAULT_NAN_CLIENT`` names a client, else None."""
    return poison_client if nan_clients() else None


def poison_client(
    round_: int, client: int, state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``state`` with a NaN in its first floating tensor if the hook names this client and
    0-based ``round_``, else ``state`` itself. The tensor is copied, never changed in place:
    a method may return tensors it shares with the global model."""
    if (round_ + 1, int(client)) not in nan_clients():
        return state
    out = dict(state)
    for name, t in state.items():
        if t.is_floating_point() and t.numel():
            bad = t.detach().clone()
            bad.view(-1)[0] = float("nan")
            out[name] = bad
            break
    return out


def during_checkpoint_write(round_: int, path: os.PathLike) -> None:
    """Called by the checkpoint writer with the temporary file partly written."""
    action = checkpoint_faults().get(int(round_))
    if action is None:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    code = _ERRNOS[action]
    raise OSError(code, os.strerror(code), str(path))
