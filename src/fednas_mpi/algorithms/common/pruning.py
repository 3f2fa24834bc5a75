"""Soft pruning (section 4.4) as a component: when it runs, and one step of it on a spec,
by either rule: a fixed logit gap (``soft_prune``) or a gap outside the clients' noise at
two consecutive checks (``noise_prune``, ``prune_rule: z``; the math in ``nas.margins``).

The "prune after this round?" test exists once (``schedules.prunes_after``, torch-free so
that the config sections can use it); FedMetaNAS adds
its settle window and final derivation on top (``meta.MetaSearch.prune_gaps``), and the
meta variants of FedPNAS and PerFedRLNAS use ``SoftPruning.gaps_after`` as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from ...flat import State
from ...nas import CELL_TYPES, ArchSpec, CellMasks, CellSpace, Evidence, Pruned, prune, prune_z
from ...nas.margins import z_of
from .schedules import prunes_after


def soft_prune(
    space: CellSpace, spec: dict, state: State, op_gap: float, combo_gap: float, round_: int
) -> tuple[dict, dict[str, float]]:
    """One soft-pruning step (``nas.prune``) of every cell type on the averaged logits.

    Returns the spec (the same object when nothing changed; otherwise with the new masks
    and every removal appended to its ``prune_log``: round, cell, edge or node, op or
    inputs, and the logit gap that condemned it) and the round's metrics ``ops_pruned``,
    ``combos_pruned`` and ``pruned_gap_min`` (the smallest gap among this round's
    removals: why they went; NaN when none did)."""
    arch = ArchSpec.of(spec)
    masks, log = {}, []
    for c in CELL_TYPES:
        m = arch.masks[c]
        r = prune(
            space, state[f"alpha_{c}"], state.get(f"beta_{c}"), m.ops, m.combos, op_gap, combo_gap
        )
        masks[c] = CellMasks(r.ops, r.combos)
        log += _log(space, c, r, round_)
    return _pruned_spec(spec, arch, masks, log), _metrics(log)


def _log(space: CellSpace, c: str, r: Pruned, round_: int, se=None) -> list[dict]:
    """The ``prune_log`` entries of one cell type's removals; with ``se`` (the
    ``NoisePruned`` of the check) each also has its gap's standard error and z."""
    out = []
    for e, k, g in r.removed_ops:
        j, i = space.edge_nodes(e)
        x = {"round": round_ + 1, "cell": c, "edge": f"s{i}->s{j + 2}", "op": space.primitives[k]}
        out.append(_with_gap(x, g, None if se is None else se.op_se[e][k]))
    for j, k, g in r.removed_combos:
        x = {"round": round_ + 1, "cell": c, "node": f"s{j + 2}"}
        x["inputs"] = [f"s{i}" for i in space.combos[j][k]]
        s = None if se is None else se.combo_se[space.combo_offsets[j] + k]
        out.append(_with_gap(x, g, s))
    return out


def _with_gap(entry: dict, gap: float, se: float | None) -> dict:
    entry["gap"] = round(gap, 4)
    if se is not None:
        ratio = z_of(gap, se)
        entry["se"] = float(f"{se:.4g}")
        entry["z"] = None if ratio is None else round(ratio, 2)
    return entry


def _metrics(log: list[dict]) -> dict[str, float]:
    gaps = [x["gap"] for x in log]
    return {
        "ops_pruned": float(sum("op" in x for x in log)),
        "combos_pruned": float(sum("node" in x for x in log)),
        "pruned_gap_min": min(gaps) if gaps else float("nan"),
    }


def _pruned_spec(spec: dict, arch: ArchSpec, masks: dict, log: list[dict]) -> dict:
    """``spec`` itself when nothing changed, else the spec with ``masks`` and ``log``."""
    if masks == arch.masks:
        return spec
    return replace(arch, masks=masks, prune_log=[*arch.prune_log, *log]).to_dict()


# ---------------------------------------------------------------- outside the noise


#: Prefix of the z rule's server-state entries: ``<P>ops_<cell>`` [E, P] and
#: ``<P>combos_<cell>`` [C], 1 where an entry stood outside the noise at the last check.
STRUCK = "prune.struck."


def strike_state(spec: dict) -> State:
    """The round-0 strikes: none (float64 zeros shaped like the masks)."""
    masks = ArchSpec.of(spec).masks
    out: State = {}
    for c in CELL_TYPES:
        out[f"{STRUCK}ops_{c}"] = torch.zeros(torch.tensor(masks[c].ops).shape, dtype=torch.float64)
        out[f"{STRUCK}combos_{c}"] = torch.zeros(len(masks[c].combos), dtype=torch.float64)
    return out


def carried_strikes(server_state: Mapping[str, torch.Tensor]) -> State:
    """The strike entries of a server state (to carry into the next one)."""
    return {k: v for k, v in server_state.items() if k.startswith(STRUCK)}


def noise_prune(
    space: CellSpace,
    spec: dict,
    state: State,
    evidence: Mapping[str, Evidence],
    struck: Mapping[str, torch.Tensor],
    z: float,
    round_: int,
) -> tuple[dict, State, dict[str, float]]:
    """One check of the z rule (``nas.prune_z``) of every cell type: the gaps and their
    standard errors read on the search's ``evidence``, the protections on the logits
    (``state``), the first strikes from ``struck`` (server state). Returns (the spec, as
    ``soft_prune``'s with ``se`` and ``z`` in each log entry; the new strikes; metrics:
    ``soft_prune``'s, ``pruned_z_min`` and ``ops_struck``/``combos_struck``, the live
    entries now at a first strike)."""
    arch = ArchSpec.of(spec)
    masks, log, strikes = {}, [], {}
    n_struck = [0.0, 0.0]
    for c in CELL_TYPES:
        m = arch.masks[c]
        r = prune_z(
            space,
            state[f"alpha_{c}"],
            state[f"beta_{c}"],
            evidence[c],
            m.ops,
            m.combos,
            (struck[f"{STRUCK}ops_{c}"] > 0).tolist(),
            (struck[f"{STRUCK}combos_{c}"] > 0).tolist(),
            z,
        )
        masks[c] = CellMasks(r.pruned.ops, r.pruned.combos)
        log += _log(space, c, r.pruned, round_, r)
        strikes[f"{STRUCK}ops_{c}"] = torch.tensor(r.op_struck, dtype=torch.float64)
        strikes[f"{STRUCK}combos_{c}"] = torch.tensor(r.combo_struck, dtype=torch.float64)
        n_struck[0] += float(sum(map(sum, r.op_struck)))
        n_struck[1] += float(sum(r.combo_struck))
    zs = [x["z"] for x in log if x["z"] is not None]
    metrics = {
        **_metrics(log),
        "pruned_z_min": min(zs) if zs else float("nan"),
        "ops_struck": n_struck[0],
        "combos_struck": n_struck[1],
    }
    return _pruned_spec(spec, arch, masks, log), strikes, metrics


@dataclass(frozen=True)
class SoftPruning:
    """A soft-pruning schedule with its gaps (``nas.prune``): ``combo_gap`` 0 prunes ops
    only (the subnet methods' paths have no input-combination logits)."""

    op_gap: float
    combo_gap: float
    start: int
    every: int
    warmup: int

    def gaps_after(self, done: int) -> tuple[float, float] | None:
        """(op, combination) gaps of the pruning after 1-based round ``done``, or None."""
        if prunes_after(done, self.start, self.every, self.warmup):
            return self.op_gap, self.combo_gap
        return None

    def step(
        self, space: CellSpace, spec: dict, state: State, gaps: tuple[float, float], round_: int
    ) -> tuple[dict, dict[str, float]]:
        """``soft_prune`` with ``gaps`` after 0-based ``round_``."""
        return soft_prune(space, spec, state, *gaps, round_)
