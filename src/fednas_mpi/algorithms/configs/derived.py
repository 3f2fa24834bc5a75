"""The config of ``algorithms/common/derived.py`` (DerivedTrainingConfig), torch-free so that
loading and validating a YAML imports no torch; the method code imports it from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ...config import option
from ..common.schedules import cosine_lr


@dataclass(kw_only=True)
class DerivedTrainingConfig:
    """How a single-stage search trains its derived network in the rounds after the
    final derivation; a method with such a stage adds these keys by inheriting this
    class. The defaults of the recipe's keys are ``random_nas``'s."""

    derived_training: Literal["maml", "sgd"] = option(
        "maml",
        "How the rounds after the final derivation train the derived network (with the "
        "weights it inherited): maml, the search's first-order MAML continued (the "
        "paper's Algorithm 1; the derived_* keys unread); sgd, the evaluation recipe "
        "that retrains genotypes (random_nas): plain SGD over each client's train split "
        "at derived_lr (cosine over the derived rounds), derived_momentum, "
        "derived_weight_decay, no Gumbel noise. A run without derived rounds (final_round "
        "at run.rounds) trains nothing with either.",
    )
    derived_lr: float = option(
        0.025,
        "derived_training: sgd: learning rate in the first round after the derivation "
        "(cosine down to derived_lr_min in the last round).",
        gt=0.0,
    )
    derived_lr_min: float = option(
        0.001, "derived_training: sgd: learning rate in the last round.", ge=0.0
    )
    derived_momentum: float = option(0.9, "derived_training: sgd: SGD momentum.", ge=0.0, lt=1.0)
    derived_weight_decay: float = option(3e-4, "derived_training: sgd: SGD weight decay.", ge=0.0)

    def derived_lr_at(self, round_: int, first: int, rounds: int) -> float:
        """The recipe's learning rate in 0-based ``round_`` when the derived rounds are
        ``first .. rounds - 1``: a cosine over them, as ``random_nas``'s over its run."""
        return cosine_lr(round_ - first, rounds - first, self.derived_lr, self.derived_lr_min)

    def derived_problems(self, section: str, first: int, rounds: int) -> list[str]:
        """Problems of these keys, named under ``section``, for a run whose derived rounds
        are ``first .. rounds - 1``: a key that does not apply to the chosen mode set to
        anything but its default is an error, not a silent no-op."""
        if self.derived_training == "sgd":
            # No derived round (final_round at run.rounds) is no error: a config that
            # trains its derived stage by sgd stays valid when a run is cut short with
            # --set run.rounds=N (the quickstart cut to one round), it just has nothing
            # to train then.
            return []
        fields = type(self).__dataclass_fields__
        return [
            f"{section}.{name} = {getattr(self, name)!r}: read only with "
            f"derived_training: sgd (this run's is maml)"
            for name in ("derived_lr", "derived_lr_min", "derived_momentum", "derived_weight_decay")
            if getattr(self, name) != fields[name].default
        ]
