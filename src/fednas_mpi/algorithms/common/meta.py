"""FedMetaNAS's local search and schedules as one component (Algorithm 1), read from the
``algorithm.fedmetanas`` section: FedMetaNAS is built on it, and the meta variants of
FedPNAS and PerFedRLNAS compose it instead of building a whole FedMetaNAS.

- the Gumbel temperature lambda (eq. 1), annealed over the search rounds;
- the weights' cosine learning-rate factor and the deterministic warm-up;
- the task and meta learners of eq. 9-10 (``maml``) with the section's step sizes;
- when soft pruning runs and with which gaps (``pruning``), FedMetaNAS's settle window
  included.
"""

from __future__ import annotations

import torch

from ...config import Config
from ...nas import temperature_at
from .maml import MetaLearner, TaskLearner
from .pruning import SoftPruning
from .schedules import cosine_lr
from .server_opt import ServerArchConfig


class MetaSearch:
    def __init__(self, cfg: Config):
        self.cfg = cfg

    @property
    def conf(self):
        return self.cfg.algorithm.fedmetanas

    @property
    def search_rounds(self) -> int:
        """Rounds up to and including the final derivation's."""
        return self.conf.final_round or self.cfg.run.rounds

    def temperature(self, round_: int) -> float:
        """lambda anneals over the search rounds and stays at its end value after them."""
        f = self.conf
        return temperature_at(
            round_,
            self.search_rounds,
            f.temperature_start,
            f.temperature_end,
            f.temperature_schedule,
            f.temperature_floor,
        )

    def weight_lr_scale(self, round_: int) -> float:
        """Cosine factor of both weight learning rates: 1 in round 1, ``weight_lr_min`` in
        the last (FedNAS's weights decay the same way)."""
        return cosine_lr(round_, self.cfg.run.rounds, 1.0, self.conf.weight_lr_min)

    @property
    def server_arch(self) -> bool:
        """Whether the server optimises the logits (``arch_update: server``: FedMetaNAS
        and meta-FedPNAS; meta-PerFedRLNAS's section refuses the key); the clients then
        take plain SGD meta steps on the shared ones."""
        return isinstance(self.conf, ServerArchConfig) and self.conf.arch_update == "server"

    def warming_up(self, round_: int) -> bool:
        return round_ < self.conf.arch_warmup_rounds

    def pruning(self, combos: bool = True) -> SoftPruning:
        """The section's soft-pruning schedule; ``combos=False``: ops only."""
        f = self.conf
        return SoftPruning(
            f.prune_gap,
            f.combo_prune_gap if combos else 0.0,
            f.prune_start,
            f.prune_every,
            f.arch_warmup_rounds,
        )

    def prune_gaps(self, round_: int) -> tuple[float, float] | None:
        """(op, combination) gaps of the soft pruning after 0-based ``round_``, or None when
        no pruning runs then. In the settle window (the last ``settle_rounds`` search
        rounds before the derivation's) pruning runs every round and both gaps shrink
        linearly: after round ``final - k`` (1-based) they are k / (settle_rounds + 1) of
        their configured values."""
        f = self.conf
        done, final = round_ + 1, self.search_rounds
        if done >= final or done <= f.arch_warmup_rounds:
            return None
        left = final - done
        if f.settle_rounds and left <= f.settle_rounds:
            scale = left / (f.settle_rounds + 1)
            return f.prune_gap * scale, f.combo_prune_gap * scale
        return self.pruning().gaps_after(done)

    def learners(
        self, weights: list, arch: list, round_: int, own_arch: list | None = None
    ) -> tuple[TaskLearner, MetaLearner]:
        """The task and meta learners of eq. 9-10 over (weights, architecture parameters),
        with this section's learning rates: the weights' decayed by ``weight_lr_scale``,
        the alphas' frozen during the warm-up and stepped by their own meta optimiser
        (Adam by default: see ``arch_optimizer``), or, when the server optimises them
        (``server_arch``), by plain SGD at ``client_arch_lr``: a per-client Adam rebuilt
        every round would take sign steps (Adam's first bias-corrected steps are about
        lr * sign(g)) and discard its moments. ``own_arch``: logits the client keeps for
        itself (meta-FedPNAS's personalised ones), never averaged, so no server steps
        them: they take the same task steps and always the client's own meta optimiser."""
        f = self.conf
        warm = self.warming_up(round_)
        scale = self.weight_lr_scale(round_)
        own = list(own_arch or [])
        task = TaskLearner(
            [(weights, f.task_lr_w * scale), (arch + own, 0.0 if warm else f.task_lr_alpha)],
            f.inner_steps,
            f.grad_clip,
        )
        w_group = [{"params": weights, "lr": f.meta_lr_w * scale, "weight_decay": f.weight_decay}]
        if f.meta_optimizer == "adam":
            opts = [torch.optim.Adam(w_group, betas=(f.meta_momentum, 0.999))]
        else:
            opts = [torch.optim.SGD(w_group, momentum=f.meta_momentum)]
        if not warm:
            # in client mode shared and own logits share one optimiser, as they always did
            client = own if self.server_arch else arch + own
            if arch and self.server_arch:
                opts.append(torch.optim.SGD(arch, lr=f.client_arch_lr))
            if client and f.arch_optimizer == "adam":
                opts.append(torch.optim.Adam(client, lr=f.meta_lr_alpha, betas=tuple(f.arch_betas)))
            elif client:
                opts.append(torch.optim.SGD(client, lr=f.meta_lr_alpha, momentum=f.meta_momentum))
        # frozen alphas (warm-up) get no step at all: their gradient is dropped
        return task, MetaLearner(weights + arch + own, opts, f.grad_clip)
