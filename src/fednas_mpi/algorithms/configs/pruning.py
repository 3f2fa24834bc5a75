"""The config of ``algorithms/common/pruning.py`` (PruneRuleConfig), torch-free so that
loading and validating a YAML imports no torch; the method code imports it from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ...config import option


@dataclass(kw_only=True)
class PruneRuleConfig:
    """How soft pruning decides; a method that supports the z rule adds these keys to
    its section by inheriting this class."""

    prune_rule: Literal["gap", "z"] = option(
        "gap",
        "How soft pruning condemns an op (an input combination). gap: its logit lies more "
        "than prune_gap (combo_prune_gap) below the best live one of its edge (node). z: "
        "the search's evidence for it (the clients' moves summed over the rounds; the "
        "clients send their logits and products on the auxiliary channel) lies more than "
        "prune_z standard errors (from each round's covariance of the clients' weighted "
        "mean, Kish's effective client count) below the best live one at two consecutive "
        "checks; prune_gap and combo_prune_gap are then unread, checks run on their "
        "schedule (prune_start, prune_every, every round of the settle window) with z never "
        "shrinking, and the final derivation reports each choice's margin in standard "
        "errors and flags those within prune_z as undecided (genotype.json, inspect). Gap "
        "and se are both in the clients' units, so z stays calibrated under arch_update: "
        "server.",
    )
    prune_z: float = option(
        2.0,
        "prune_rule: z: how many standard errors a gap must exceed, at two consecutive "
        "checks, to remove an entry; a derived choice within this margin is undecided.",
        gt=0.0,
    )
