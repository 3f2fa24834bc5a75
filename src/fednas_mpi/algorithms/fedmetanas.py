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
from ..nas import finalize, genotype_str, temperature_at
from ..seeding import torch_rng
from .base import ClientData, ClientResult, GlobalModel, RoundContext
from .maml import MetaLearner, TaskLearner
from .supernet import CELLS, SupernetMethod, state_of
from .training import cosine_lr, evaluate


def task_pairs(n: int, batch: int, pairs: int, generator: torch.Generator
               ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Disjoint (support, query) index batches from seeded permutations of range(n).

    pairs=0: as many disjoint pairs as one permutation holds (at least one; a client
    with fewer than 2*batch samples splits what it has in half).
    """
    size = min(batch, max(n // 2, 1))
    per_perm = max(n // (2 * size), 1)
    want = pairs or per_perm
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    while len(out) < want:
        perm = torch.randperm(n, generator=generator)
        for p in range(min(per_perm, want - len(out))):
            s = perm[2 * p * size:(2 * p + 1) * size]
            q = perm[(2 * p + 1) * size:(2 * p + 2) * size]
            out.append((s, q if len(q) else s))
    return out


class FedMetaNAS(SupernetMethod):
    """Single stage: ``arch_warmup_rounds`` of deterministic warm-up (weights only), the
    search with soft pruning up to ``final_round``, the final derivation, then the same
    run trains the derived network with the weights it inherited (no re-initialisation).
    The weights' learning rates follow a cosine over the whole run."""

    name = "fedmetanas"
    client_metrics = ("train_loss", "support_loss", "local_acc")

    @property
    def search_rounds(self) -> int:
        """Rounds up to and including the final derivation's."""
        return self.cfg.algorithm.fedmetanas.final_round or self.cfg.run.rounds

    def stage(self, round_: int) -> str:
        """'search' up to the final derivation, 'derived' for rounds after it (if any)."""
        return "search" if round_ < self.search_rounds else "derived"

    def can_stop(self, round_: int) -> bool:
        return self.stage(round_) == "derived"

    def temperature(self, round_: int) -> float:
        """lambda anneals over the search rounds and stays at its end value after them."""
        f = self.cfg.algorithm.fedmetanas
        return temperature_at(round_, self.search_rounds, f.temperature_start,
                              f.temperature_end, f.temperature_schedule, f.temperature_floor)

    def weight_lr_scale(self, round_: int) -> float:
        """Cosine factor of both weight learning rates: 1 in round 1, ``weight_lr_min`` in
        the last (FedNAS's weights decay the same way)."""
        f = self.cfg.algorithm.fedmetanas
        return cosine_lr(round_, self.cfg.run.rounds, 1.0, f.weight_lr_min)

    def prune_gaps(self, round_: int) -> tuple[float, float] | None:
        """(op, combination) gaps of the soft pruning after 0-based ``round_``, or None when
        no pruning runs then. In the settle window (the last ``settle_rounds`` search
        rounds before the derivation's) pruning runs every round and both gaps shrink
        linearly: after round ``final - k`` (1-based) they are k / (settle_rounds + 1) of
        their configured values."""
        f = self.cfg.algorithm.fedmetanas
        done, final = round_ + 1, self.search_rounds
        if done >= final or done <= f.arch_warmup_rounds:
            return None
        left = final - done
        if f.settle_rounds and left <= f.settle_rounds:
            scale = left / (f.settle_rounds + 1)
            return f.prune_gap * scale, f.combo_prune_gap * scale
        return (f.prune_gap, f.combo_prune_gap) if f.prunes_after(done) else None

    def warming_up(self, round_: int) -> bool:
        return round_ < self.cfg.algorithm.fedmetanas.arch_warmup_rounds

    def init_global(self) -> GlobalModel:
        spec = self.initial_spec()
        net = self.fresh(spec)
        temp = torch.tensor(self.temperature(0), dtype=torch.float64)
        return GlobalModel(spec, state_of(net), {"temperature": temp})

    # ------------------------------------------------------------ client
    def learners(self, weights: list, arch: list, round_: int
                 ) -> tuple[TaskLearner, MetaLearner]:
        """The task and meta learners of eq. 9-10 over (weights, architecture parameters),
        with this section's learning rates: the weights' decayed by ``weight_lr_scale``,
        the alphas' frozen during the warm-up and stepped by their own meta optimiser
        (Adam by default: see ``arch_optimizer``). Shared by the methods that take
        FedMetaNAS's local search (meta-FedPNAS, meta-PerFedRLNAS)."""
        f = self.cfg.algorithm.fedmetanas
        warm = self.warming_up(round_)
        scale = self.weight_lr_scale(round_)
        task = TaskLearner([(weights, f.task_lr_w * scale),
                            (arch, 0.0 if warm else f.task_lr_alpha)], f.inner_steps,
                           f.grad_clip)
        w_group = [{"params": weights, "lr": f.meta_lr_w * scale,
                    "weight_decay": f.weight_decay}]
        if f.meta_optimizer == "adam":
            opts = [torch.optim.Adam(w_group, betas=(f.meta_momentum, 0.999))]
        else:
            opts = [torch.optim.SGD(w_group, momentum=f.meta_momentum)]
        if arch and not warm:
            if f.arch_optimizer == "adam":
                opts.append(torch.optim.Adam(arch, lr=f.meta_lr_alpha,
                                             betas=tuple(f.arch_betas)))
            else:
                opts.append(torch.optim.SGD(arch, lr=f.meta_lr_alpha, momentum=f.meta_momentum))
        # frozen alphas (warm-up) get no step at all: their gradient is dropped
        return task, MetaLearner(weights + arch, opts, f.grad_clip)

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
        spec = model.spec
        if spec.get("genotype") is None:
            if done >= self.search_rounds:
                spec = self._finalize(spec, averaged)
            elif (gaps := self.prune_gaps(ctx.round)) is not None:
                spec, pruned = self.soft_prune(spec, averaged, *gaps, ctx.round)
                metrics.update(pruned, prune_gap=gaps[0])
        state = averaged
        if spec is not model.spec:
            state = {k: averaged[k] for k in self.build(spec).state_dict()}
        metrics.update(temperature=lam, weight_lr=f.meta_lr_w * self.weight_lr_scale(ctx.round),
                       **self.arch_metrics(spec, state, lam))
        return GlobalModel(spec, state,
                           {"temperature": torch.tensor(lam, dtype=torch.float64)})

    def _finalize(self, spec: dict, state: State) -> dict:
        masks, genotype = {}, {}
        for c in CELLS:
            genotype[c], ops, combos = finalize(
                self.space, state[f"alpha_{c}"], state[f"beta_{c}"], spec["masks"][c]["ops"],
                spec["masks"][c]["combos"])
            masks[c] = {"ops": ops, "combos": combos}
        genotype["text"] = genotype_str(genotype)
        return {**spec, "masks": masks, "genotype": genotype}

    def evaluate(self, model: GlobalModel, x: torch.Tensor, y: torch.Tensor
                 ) -> tuple[float, float]:
        net = self._net(model)
        net.set_sampling(float(model.server_state.get("temperature", 1.0)), None)
        return evaluate(net, x, y)


def _loss(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    return lambda: F.cross_entropy(net(x), y)
