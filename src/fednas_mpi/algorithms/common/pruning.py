"""Soft pruning (section 4.4) as a component: when it runs, and one step of it on a spec.

The "prune after this round?" test exists here only (``prunes_after``); FedMetaNAS adds
its settle window and final derivation on top (``meta.MetaSearch.prune_gaps``), and the
meta variants of FedPNAS and PerFedRLNAS use ``SoftPruning.gaps_after`` as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ...flat import State
from ...nas import CELL_TYPES, ArchSpec, CellMasks, CellSpace, prune


def prunes_after(done: int, prune_start: int, prune_every: int, warmup: int) -> bool:
    """Whether soft pruning runs after 1-based round ``done``: every ``prune_every`` rounds
    from ``prune_start`` on, never during the ``warmup`` rounds (0 = never prunes)."""
    start = max(prune_start, warmup + 1)
    return bool(prune_every) and done >= start and (done - start) % prune_every == 0


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
        for e, k, g in r.removed_ops:
            j, i = space.edge_nodes(e)
            log.append(
                {
                    "round": round_ + 1,
                    "cell": c,
                    "edge": f"s{i}->s{j + 2}",
                    "op": space.primitives[k],
                    "gap": round(g, 4),
                }
            )
        for j, k, g in r.removed_combos:
            log.append(
                {
                    "round": round_ + 1,
                    "cell": c,
                    "node": f"s{j + 2}",
                    "inputs": [f"s{i}" for i in space.combos[j][k]],
                    "gap": round(g, 4),
                }
            )
    gaps = [x["gap"] for x in log]
    metrics = {
        "ops_pruned": float(sum("op" in x for x in log)),
        "combos_pruned": float(sum("node" in x for x in log)),
        "pruned_gap_min": min(gaps) if gaps else float("nan"),
    }
    if masks == arch.masks:
        return spec, metrics
    return replace(arch, masks=masks, prune_log=[*arch.prune_log, *log]).to_dict(), metrics


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
