"""The clients' disagreement about the architecture logits, measured without their logits
travelling one by one: what each client adds to the auxiliary channel and how the server
reads the round's dispersion (``nas.margins.Dispersion``) from the averages.

Every client sends, per cell type, its logits and their products within each row in
float64 (``ClientResult.aux``, averaged like the state with the clients' sample weights
and pre-reduced per worker), and its own weight w. The server finds E_w[a], E_w[a a^T]
and E_w[w] = sum w^2 / sum w beside the state; with sum w (the round's ``client_weight``)
that is Kish's n_eff. Per cell type: alpha and its per-edge outer products [E, P, P], beta
and its outer product [C, C] (the margins read only a node's own block; C is 20 for the
4-node DARTS cell, so the whole square costs less than cutting it). The float64 means are
the clients' own; the state's averaged logits (float32, and stepped by the server under
``arch_update: server``) are not used for the spread.

The decisions read the search's evidence (``nas.margins.Evidence``), kept in the server
state (``prune.evidence.*``, hence in every checkpoint): per cell type the sums over the
rounds of the clients' mean move E_w[a] - a_global (a_global: the logits the round's
clients started from) and of the covariances of that mean.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ...flat import State
from ...nas import CELL_TYPES, Dispersion, Evidence, covariance, effective_clients

#: Prefix of the aux entries (none is a global state entry).
PREFIX = "noise."


def aux_shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the entries ``client_aux`` returns for a global ``state``."""
    out: dict[str, tuple[int, ...]] = {f"{PREFIX}weight": ()}
    for c in CELL_TYPES:
        (e, p), (n,) = state[f"alpha_{c}"].shape, state[f"beta_{c}"].shape
        out[f"{PREFIX}alpha_{c}"] = (e, p)
        out[f"{PREFIX}alpha_outer_{c}"] = (e, p, p)
        out[f"{PREFIX}beta_{c}"] = (n,)
        out[f"{PREFIX}beta_outer_{c}"] = (n, n)
    return out


def client_aux(state: Mapping[str, torch.Tensor], weight: float) -> State:
    """A client's entries: its logits after its local steps, their products and its
    FedAvg ``weight`` (float64 on the CPU)."""
    out: State = {f"{PREFIX}weight": torch.tensor(float(weight), dtype=torch.float64)}
    for c in CELL_TYPES:
        a = state[f"alpha_{c}"].detach().to("cpu", torch.float64)
        b = state[f"beta_{c}"].detach().to("cpu", torch.float64)
        out[f"{PREFIX}alpha_{c}"] = a
        out[f"{PREFIX}alpha_outer_{c}"] = a.unsqueeze(-1) * a.unsqueeze(-2)
        out[f"{PREFIX}beta_{c}"] = b
        out[f"{PREFIX}beta_outer_{c}"] = b.unsqueeze(-1) * b.unsqueeze(-2)
    return out


def split(averaged: Mapping[str, torch.Tensor]) -> tuple[State, State]:
    """(the averaged state without this channel's entries, the entries)."""
    state = {k: v for k, v in averaged.items() if not k.startswith(PREFIX)}
    return state, {k: v for k, v in averaged.items() if k.startswith(PREFIX)}


def dispersion(aux: Mapping[str, torch.Tensor], total_weight: float) -> dict[str, Dispersion]:
    """Per cell type the round's dispersion from the averaged entries ``aux`` and the
    round's summed client weight ``total_weight``."""
    n_eff = effective_clients(float(total_weight), float(aux[f"{PREFIX}weight"]))
    return {
        c: Dispersion(
            covariance(aux[f"{PREFIX}alpha_{c}"], aux[f"{PREFIX}alpha_outer_{c}"]),
            covariance(aux[f"{PREFIX}beta_{c}"], aux[f"{PREFIX}beta_outer_{c}"]),
            n_eff,
        )
        for c in CELL_TYPES
    }


#: Prefix of the evidence's server-state entries: ``<P>alpha_<cell>``, ``<P>alpha_cov_<cell>``,
#: ``<P>beta_<cell>``, ``<P>beta_cov_<cell>``.
EVIDENCE = "prune.evidence."
_FIELDS = ("alpha", "alpha_cov", "beta", "beta_cov")


def evidence_state(state: Mapping[str, torch.Tensor]) -> State:
    """The round-0 evidence (zeros) for a global ``state``'s logits."""
    out: State = {}
    for c in CELL_TYPES:
        (e, p), (n,) = state[f"alpha_{c}"].shape, state[f"beta_{c}"].shape
        out.update(evidence_entries({c: Evidence.zeros(e, p, n)}))
    return out


def evidence_entries(evidence: Mapping[str, Evidence]) -> State:
    """Server-state entries of per-cell-type evidence."""
    return {f"{EVIDENCE}{f}_{c}": getattr(ev, f) for c, ev in evidence.items() for f in _FIELDS}


def carried_evidence(server_state: Mapping[str, torch.Tensor]) -> State:
    """The evidence entries of a server state (to carry into the next one unchanged)."""
    return {k: v for k, v in server_state.items() if k.startswith(EVIDENCE)}


def evidence_of(
    server_state: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
) -> dict[str, Evidence]:
    """Per cell type the evidence a server state carries; zeros where it carries none (a
    checkpoint of the z rule written before the evidence was kept: it counts from the
    round it resumes at)."""
    if f"{EVIDENCE}alpha_{CELL_TYPES[0]}" not in server_state:
        server_state = evidence_state(state)
    return {
        c: Evidence(**{f: server_state[f"{EVIDENCE}{f}_{c}"].double() for f in _FIELDS})
        for c in CELL_TYPES
    }


def accumulate(
    evidence: Mapping[str, Evidence],
    aux: Mapping[str, torch.Tensor],
    noise: Mapping[str, Dispersion],
    started: Mapping[str, torch.Tensor],
) -> dict[str, Evidence]:
    """The evidence with this round added: the clients' weighted mean logits (``aux``)
    minus the global logits they ``started`` from, with the round's ``noise``."""
    out = {}
    for c in CELL_TYPES:
        moves = [
            aux[f"{PREFIX}{p}_{c}"].double() - started[f"{p}_{c}"].detach().to("cpu").double()
            for p in ("alpha", "beta")
        ]
        out[c] = evidence[c].add(*moves, noise[c])
    return out
