"""FedMetaNAS (Algorithm 1): federated first-order MAML search over a Gumbel-softmax
relaxed DARTS space, with soft pruning and no retraining.

Client (lines 10-21): for each local epoch, support/query task pairs are drawn from
the client's train split; the task learner adapts (w, alpha) jointly with M SGD steps
on the support task (eq. 9), the meta learner applies the query gradient at the
adapted point to the original (w, alpha) (first-order eq. 10).
Server (lines 7-8): FedAvg of w and alpha (the runtime), then soft pruning.

Where pruning happens. Algorithm 1 prunes inside the client loop. Here the server
prunes, after averaging, on the averaged architecture logits: the masks are part of
the global model's spec and identical on every client. So every client's alphas
have the same support, a masked entry takes no part in any softmax and gets no
gradient, all clients return the same (unchanged) value for it and its average is
that value - averaging never mixes a pruned entry with a live one, and pruning
never removes an op some clients still use. Pruned ops' weights leave the state,
so pruned ops are neither computed nor communicated.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..flat import State
from ..nas import ArchSpec, final_spec
from ..seeding import torch_rng
from .base import ClientData, ClientResult, GlobalModel, RoundContext
from .common.maml import MetaLearner, TaskLearner
from .common.meta import MetaSearch
from .common.pruning import soft_prune
from .common.supernet import SupernetMethod, state_of
from .common.tasks import task_pairs
from .common.training import evaluate


class FedMetaNAS(SupernetMethod):
    """Single stage: ``arch_warmup_rounds`` of deterministic warm-up (weights only), the
    search with soft pruning up to ``final_round``, the final derivation, then the same
    run trains the derived network with the weights it inherited (no re-initialisation).
    The weights' learning rates follow a cosine over the whole run."""

    name = "fedmetanas"
    client_metrics = ("train_loss", "support_loss", "local_acc")

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.meta = MetaSearch(cfg)

    @property
    def search_rounds(self) -> int:
        """Rounds up to and including the final derivation's."""
        return self.meta.search_rounds

    def stage(self, round_: int) -> str:
        """'search' up to the final derivation, 'derived' for rounds after it (if any)."""
        return "search" if round_ < self.search_rounds else "derived"

    def can_stop(self, round_: int) -> bool:
        return self.stage(round_) == "derived"

    def temperature(self, round_: int) -> float:
        return self.meta.temperature(round_)

    def weight_lr_scale(self, round_: int) -> float:
        return self.meta.weight_lr_scale(round_)

    def prune_gaps(self, round_: int) -> tuple[float, float] | None:
        return self.meta.prune_gaps(round_)

    def warming_up(self, round_: int) -> bool:
        return self.meta.warming_up(round_)

    def init_global(self) -> GlobalModel:
        spec = self.initial_spec()
        net = self.fresh(spec)
        temp = torch.tensor(self.temperature(0), dtype=torch.float64)
        return GlobalModel(spec, state_of(net), {"temperature": temp})

    # ------------------------------------------------------------ client
    def learners(self, weights: list, arch: list, round_: int
                 ) -> tuple[TaskLearner, MetaLearner]:
        """The task and meta learners of eq. 9-10 (``MetaSearch.learners``)."""
        return self.meta.learners(weights, arch, round_)

    def client_update(self, model: GlobalModel, data: ClientData, ctx: RoundContext,
                      client_state: State | None) -> ClientResult:
        f, a = self.cfg.algorithm.fedmetanas, self.cfg.algorithm
        net = self._net(model)
        net.train()
        # The warm-up is deterministic: no Gumbel noise, every op in the same mixture.
        gumbel = None if self.warming_up(ctx.round) else \
            torch_rng(ctx.seed, ctx.round, data.client_id, "fedmetanas.gumbel")
        net.set_sampling(self.temperature(ctx.round), gumbel)
        task, meta = self.learners(net.weight_parameters(), net.arch_parameters(), ctx.round)
        g_tasks = torch_rng(ctx.seed, ctx.round, data.client_id, "fedmetanas.tasks")
        g_aug = torch_rng(ctx.seed, ctx.round, data.client_id, "fedmetanas.augment")
        x, y = data.train_x, data.train_y

        def batch(idx):
            xb = x[idx]
            return (data.augment(xb, g_aug) if data.augment is not None else xb), y[idx]

        s_sum = q_sum = 0.0
        steps = 0
        for _ in range(a.local_epochs):
            for s_idx, q_idx in task_pairs(len(y), a.batch_size, f.tasks_per_epoch, g_tasks):
                xs, ys = batch(s_idx)
                xq, yq = batch(q_idx)
                s_loss, q_loss = meta.step(task, _loss(net, xs, ys), _loss(net, xq, yq))
                s_sum, q_sum, steps = s_sum + s_loss, q_sum + q_loss, steps + 1
        local_acc = float("nan")
        if ctx.is_due(f.local_eval_every):
            _, local_acc = evaluate(net, data.eval_x, data.eval_y)
        return ClientResult(state_of(net), float(data.num_train),
                            {"train_loss": q_sum / steps, "support_loss": s_sum / steps,
                             "local_acc": local_acc})

    # ------------------------------------------------------------ server
    def server_step(self, model: GlobalModel, averaged: State, metrics: dict[str, float],
                    ctx: RoundContext) -> GlobalModel:
        f = self.cfg.algorithm.fedmetanas
        done = ctx.round + 1
        lam = self.temperature(ctx.round)
        spec, arch = model.spec, ArchSpec.of(model.spec)
        if arch.genotype is None:
            if done >= self.search_rounds:
                spec = final_spec(self.space, arch, averaged).to_dict()
            elif (gaps := self.prune_gaps(ctx.round)) is not None:
                spec, pruned = soft_prune(self.space, spec, averaged, *gaps, ctx.round)
                metrics.update(pruned, prune_gap=gaps[0])
        state = averaged
        if spec is not model.spec:
            state = self.restrict(spec, averaged)
        metrics.update(temperature=lam, weight_lr=f.meta_lr_w * self.weight_lr_scale(ctx.round),
                       **self.arch_metrics(spec, state, lam))
        return GlobalModel(spec, state,
                           {"temperature": torch.tensor(lam, dtype=torch.float64)})

    def evaluate(self, model: GlobalModel, x: torch.Tensor, y: torch.Tensor
                 ) -> tuple[float, float]:
        net = self._net(model)
        net.set_sampling(float(model.server_state.get("temperature", 1.0)), None)
        return evaluate(net, x, y)


def _loss(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    return lambda: F.cross_entropy(net(x), y)
