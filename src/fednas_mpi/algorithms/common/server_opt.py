"""Server-side adaptive optimisation of the architecture logits: FedAdam and FedYogi
(Reddi et al. 2021, "Adaptive Federated Optimization", ICLR, Algorithm 2).

Why. A client update that builds a fresh Adam for the logits takes its first steps of
about lr * sign(g) (bias-corrected Adam with no history), so with a few meta steps per
client and round every logit moves by about the step size whatever its signal-to-noise
ratio, and the moments are thrown away at the end of the round. Here the clients take
plain SGD steps on the logits (``client_arch_lr``; their weights train as before), the
FedAvg-averaged state carries their mean change, and the server treats

    delta_t = averaged_arch - global_arch          (the negative pseudo-gradient)

as Reddi et al. do, with moments that persist across rounds in the global model's server
state (hence in every checkpoint):

    m_t = b1 m_{t-1} + (1 - b1) delta_t
    v_t = b2 v_{t-1} + (1 - b2) delta_t^2                          (adam)
    v_t = v_{t-1} - (1 - b2) delta_t^2 sign(v_{t-1} - delta_t^2)   (yogi)
    x_{t+1} = x_t + lr * m_hat_t / (sqrt(v_hat_t) + tau)

Bias correction (m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t), t = server steps taken),
which Reddi et al.'s Algorithm 2 leaves out (it starts v at tau^2 instead): our searches
last tens of rounds, and without the correction the effective step size would follow
(1 - b1^t) / sqrt(1 - b2^t), about 1 in round 1, 2 around round 20 and back to 1 only after
a few hundred rounds with b = (0.9, 0.99) - a schedule set by the betas, not by
``server_arch_lr``. With it, the step is lr * E[delta] / RMS(delta) from the first round on.
Both moments start at 0; Yogi's v then grows like Adam's in the first rounds (its first
update equals Adam's), so the same correction applies (as in TensorFlow Addons' Yogi).
The cost: round 1's step is about lr * sign(delta) once per run, not in every client
update, and later rounds damp a logit whose deltas change sign.

tau (Reddi et al. recommend about 1e-3) is the scale below which a delta counts as noise:
a logit whose deltas are much smaller than tau moves by lr * |delta| / tau, not lr. It also
keeps the step finite and insensitive to float rounding where the clients agree that
nothing moves (delta ~ 0), so runs with any rank count agree.

The server step runs on rank 0 only, on the averaged state, in float64: deterministic and
independent of the rank count. Entries a method masks (pruned ops and combinations) are
left where they are: only live logits move.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ...flat import State
from ..configs.server_opt import ServerArchConfig

#: The global state's architecture logits (the supernet's registered alphas and betas).
ARCH_PREFIXES = ("alpha_", "beta_")
#: Prefix of this component's server-state entries: ``<P>t``, ``<P>m.<name>``, ``<P>v.<name>``.
PREFIX = "arch_opt."


# ---------------------------------------------------------------- the math


def server_moments(
    kind: str, m: torch.Tensor, v: torch.Tensor, delta: torch.Tensor, b1: float, b2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(m_t, v_t) from (m_{t-1}, v_{t-1}) and the round's delta (Reddi et al. 2021,
    Algorithm 2: FedAdam's or FedYogi's second moment)."""
    m = b1 * m + (1 - b1) * delta
    d2 = delta * delta
    if kind == "adam":
        v = b2 * v + (1 - b2) * d2
    elif kind == "yogi":
        v = v - (1 - b2) * d2 * torch.sign(v - d2)
    else:
        raise ValueError(f"unknown server optimiser {kind!r}")
    return m, v


def server_update(
    m: torch.Tensor, v: torch.Tensor, t: int, lr: float, b1: float, b2: float, tau: float
) -> torch.Tensor:
    """lr * m_hat / (sqrt(v_hat) + tau), bias-corrected after ``t`` (>= 1) steps: what
    the server adds to the global logits."""
    m_hat = m / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    return lr * m_hat / (v_hat.sqrt() + tau)


# ---------------------------------------------------------------- the component


def arch_names(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The architecture logits of a global state, in its order."""
    return [k for k in state if k.startswith(ARCH_PREFIXES)]


class ServerArchOptimizer:
    """The server's optimiser of a method's architecture logits, read from the method's
    section (a ``ServerArchConfig``). In client mode it does nothing and adds nothing
    to the server state, so such runs and their checkpoints are as before."""

    def __init__(self, conf: ServerArchConfig):
        self.conf = conf

    @property
    def on(self) -> bool:
        return self.conf.arch_update == "server"

    def init_state(self, state: Mapping[str, torch.Tensor]) -> State:
        """The round-0 server-state entries: a step count and zero moments (float64) per
        architecture logit of ``state``; none in client mode. Fixed for the whole run:
        the logits keep their shapes through pruning and derivation (masks are spec)."""
        if not self.on:
            return {}
        out: State = {f"{PREFIX}t": torch.zeros((), dtype=torch.float64)}
        for k in arch_names(state):
            out[f"{PREFIX}m.{k}"] = torch.zeros(state[k].shape, dtype=torch.float64)
            out[f"{PREFIX}v.{k}"] = torch.zeros(state[k].shape, dtype=torch.float64)
        return out

    @staticmethod
    def carried(server_state: Mapping[str, torch.Tensor]) -> State:
        """This component's entries of a server state (to carry into the next one)."""
        return {k: v for k, v in server_state.items() if k.startswith(PREFIX)}

    def step(
        self,
        old: Mapping[str, torch.Tensor],
        averaged: Mapping[str, torch.Tensor],
        server_state: Mapping[str, torch.Tensor],
        live: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[State, State, dict[str, float]]:
        """One server step. ``old``: the round's global state, ``averaged``: the FedAvg
        average, ``live``: boolean masks by logit name (absent: all live). Returns (the
        averaged state with its logits replaced by the stepped global ones, the new
        server-state entries of this component, metrics); the inputs are left alone."""
        c = self.conf
        b1, b2 = (float(b) for b in c.server_arch_betas[:2])
        try:
            t = int(server_state[f"{PREFIX}t"]) + 1
        except KeyError:
            raise ValueError(
                "arch_update: server but the server state holds no moments "
                f"({PREFIX}*): a run or checkpoint of arch_update: client"
            ) from None
        state = dict(averaged)
        moments: State = {f"{PREFIX}t": torch.tensor(float(t), dtype=torch.float64)}
        moved: list[torch.Tensor] = []
        for k in arch_names(old):
            m0, v0 = server_state[f"{PREFIX}m.{k}"], server_state[f"{PREFIX}v.{k}"]
            x = old[k].to(device=m0.device, dtype=torch.float64)
            delta = averaged[k].to(device=m0.device, dtype=torch.float64) - x
            m, v = server_moments(c.server_arch_optimizer, m0, v0, delta, b1, b2)
            step = server_update(m, v, t, c.server_arch_lr, b1, b2, c.server_arch_tau)
            if live is not None and k in live:
                keep = live[k].to(device=step.device, dtype=torch.bool)
                step = torch.where(keep, step, torch.zeros_like(step))
                moved.append(step[keep].abs())
            else:
                moved.append(step.abs().flatten())
            state[k] = (x + step).to(device=old[k].device, dtype=old[k].dtype)
            moments[f"{PREFIX}m.{k}"], moments[f"{PREFIX}v.{k}"] = m, v
        every = torch.cat(moved) if moved else torch.zeros(0, dtype=torch.float64)
        # the mean absolute move of a live logit this round
        return state, moments, {"server_arch_step": float(every.mean()) if every.numel() else 0.0}
