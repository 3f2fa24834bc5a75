"""The config of ``algorithms/common/perturbation.py`` (DeriveRuleConfig), torch-free so that
loading and validating a YAML imports no torch; the method code imports it from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ...config import option


@dataclass(kw_only=True)
class DeriveRuleConfig:
    """How the final architecture is chosen; a method that supports the perturbation rule
    adds this key to its section by inheriting this class."""

    derive_rule: Literal["logits", "perturbation"] = option(
        "logits",
        "How the derivation chooses each edge's op and each node's inputs. logits: the "
        "argmax of the learned logits. perturbation (DARTS-PT, Wang et al. 2021): the "
        "clients of the derivation round score the received supernet on their own eval "
        "splits with each live op of each edge, and each input combination (or, with "
        "DARTS's sum, each edge) of each node, removed and the mixture renormalised; the "
        "server pools the scores and keeps what hurts most when removed (accuracy drop, "
        "then loss, then logit). One-shot (no re-tuning between decisions); each choice's "
        "drop and runner-up go to genotype.json.",
    )

    def derive_rule_problems(self, cfg, section: str) -> list[str]:
        """Problems of this key against the run's config, named under ``section``: the
        perturbation rule scores on the clients' eval splits, so they must hold images."""
        p = cfg.partition
        empty = p.eval_size == 0 if p.train_size > 0 else p.eval_fraction == 0.0
        if self.derive_rule == "perturbation" and empty:
            return [
                f"{section}.derive_rule = perturbation: the clients have no eval split to "
                f"score on (partition.eval_size / partition.eval_fraction is 0)"
            ]
        return []
