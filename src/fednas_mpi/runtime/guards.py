"""Non-finite guards: a diverged update must stop a run (or be left out), never be averaged.

Every client result is checked where it is produced (``check_client``, on the rank that ran
the client, before it is folded into the pre-reduced sum), so a NaN never reaches the
server's float64 total. The worker reports the clients it left out; the server then
applies ``run.on_nonfinite`` (``judge_round``): ``abort`` raises ``NonFiniteError``
naming the round, the client and the first bad tensor before anything of the round is
written; ``skip_client`` averages the other clients and records the dropped ones. The new
global model and the server's test loss are checked too (``check_global``,
``check_loss``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

# Every method reports this loss for every client; other metrics may be NaN ("not
# measured this round"), but never infinite.
ALWAYS_MEASURED = ("train_loss",)


class NonFiniteError(RuntimeError):
    """A NaN or Inf where a run cannot continue; the message says where."""


def first_nonfinite(state: Mapping[str, torch.Tensor]) -> str | None:
    """Name of the first tensor (in the state's order) holding a NaN or Inf, or None."""
    for name, t in state.items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            return name
    return None


def _describe(kind: str, name: str, t: torch.Tensor) -> str:
    flat = t.detach().reshape(-1)
    bad = ~torch.isfinite(flat)
    first = int(bad.nonzero()[0])
    return (
        f"{kind} tensor {name!r} (shape {tuple(t.shape)}): {int(bad.sum())} of "
        f"{flat.numel()} values not finite, first {float(flat[first])} at index {first}"
    )


def check_client(
    state: Mapping[str, torch.Tensor],
    weight: float,
    metrics: Mapping[str, float],
    client_state: Mapping[str, torch.Tensor] | None,
    aux: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> str | None:
    """What is wrong with one client result, or None when it is finite throughout.
    ``aux``: the result's auxiliary tensors by channel (``{"aux": ..., "client aux": ...}``),
    checked like the state: a NaN there would poison the server step as surely."""
    name = first_nonfinite(state)
    if name is not None:
        return _describe("state", name, state[name])
    parts = {"client state": client_state or {}, **(aux or {})}
    for what, tensors in parts.items():
        name = first_nonfinite(tensors)
        if name is not None:
            return _describe(what, name, tensors[name])
    if not math.isfinite(float(weight)):
        return f"weight = {weight}"
    for key, value in metrics.items():
        v = float(value)
        if math.isinf(v) or (key in ALWAYS_MEASURED and math.isnan(v)):
            return f"metric {key} = {v}"
    return None


def judge_round(policy: str, round_: int, clients, dropped: Mapping[int, str]) -> None:
    """Apply ``run.on_nonfinite`` to a round's dropped clients (client -> what was bad).
    Raises NonFiniteError under ``abort`` if any was dropped, and under ``skip_client`` if
    all of them were; otherwise the round goes on without them."""
    if not dropped:
        return
    cid = min(dropped)
    where = f"round {round_ + 1}, client {cid}: {dropped[cid]}"
    more = f" (and {len(dropped) - 1} more client(s))" if len(dropped) > 1 else ""
    if policy == "abort":
        raise NonFiniteError(
            f"non-finite client result in {where}{more} (run.on_nonfinite: abort). No "
            f"checkpoint of this round was written."
        )
    if len(dropped) >= len(clients):
        raise NonFiniteError(
            f"every client of round {round_ + 1} ({len(clients)}) returned a non-finite "
            f"result, first {where}; nothing is left to average. No checkpoint of this "
            f"round was written."
        )


def check_global(state: Mapping[str, torch.Tensor], round_: int) -> None:
    """The global model after the server step must be finite."""
    name = first_nonfinite(state)
    if name is not None:
        raise NonFiniteError(
            f"non-finite global model after round {round_ + 1}'s server step: "
            f"{_describe('global', name, state[name])}. No checkpoint of this round was "
            f"written."
        )


def check_loss(loss: float, round_: int, evaluated: bool = True) -> None:
    """The server test loss: when it was measured NaN is as bad as Inf (unmeasured it is
    NaN by convention, and only Inf is an error)."""
    if math.isinf(loss) or (evaluated and math.isnan(loss)):
        raise NonFiniteError(
            f"server test loss is {loss} after round {round_ + 1}. No "
            f"checkpoint of this round was written."
        )


def mark_dropped(
    values: dict[str, dict[int, float]], dropped: Mapping[int, str], policy: str
) -> dict[str, dict[int, float]]:
    """Per-client values of a round with the dropped clients' entries NaN and, under
    ``skip_client``, a ``dropped`` entry (1 dropped, 0 kept) for every client of the round."""
    if policy != "skip_client":
        return values
    out = {
        name: {c: (float("nan") if c in dropped else v) for c, v in per.items()}
        for name, per in values.items()
    }
    clients = sorted(set().union(*(per.keys() for per in values.values())) | set(dropped))
    out["dropped"] = {c: float(c in dropped) for c in clients}
    return out


def round_metrics(policy: str, dropped: Mapping[int, str]) -> dict[str, float]:
    """``dropped_clients`` for the round's /metrics row (recorded under skip_client only)."""
    return {"dropped_clients": float(len(dropped))} if policy == "skip_client" else {}
