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
from ..nas import finalize, genotype_str, prune, temperature_at
from ..seeding import torch_rng
from .base import ClientData, ClientResult, GlobalModel, RoundContext
from .maml import MetaLearner, TaskLearner
from .supernet import CELLS, SupernetMethod, state_of
from .training import evaluate


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
    name = "fedmetanas"
    client_metrics = ("train_loss", "support_loss", "local_acc")

    def stage(self, round_: int) -> str:
        """'search' up to the final derivation, 'derived' for rounds after it (if any)."""
        final = self.cfg.algorithm.fedmetanas.final_round or self.cfg.run.rounds
        return "search" if round_ < final else "derived"

    @property
    def anneal_span(self) -> int:
        """Rounds over which lambda anneals; the rest is the settle phase."""
        f = self.cfg.algorithm.fedmetanas
        return max(1, round(f.anneal_fraction * self.cfg.run.rounds))

    def temperature(self, round_: int) -> float:
        f = self.cfg.algorithm.fedmetanas
        return temperature_at(round_, self.anneal_span, f.temperature_start, f.temperature_end,
                              f.temperature_schedule, f.temperature_floor)

    def thresholds(self, round_: int) -> tuple[float, float]:
        """(op, combination) pruning thresholds for a 0-based round: the configured ones
        while lambda anneals, then rising linearly to ``settle_threshold`` at the final
        derivation, so what the derivation would cut is pruned a little at a time while
        the weights can still adapt, and the derivation itself changes almost nothing."""
        f = self.cfg.algorithm.fedmetanas
        final = (f.final_round or self.cfg.run.rounds) - 1
        start = self.anneal_span - 1
        if round_ <= start or final <= start:
            return f.op_threshold, f.combo_threshold
        t = min((round_ - start) / (final - start), 1.0)
        return (f.op_threshold + t * max(f.settle_threshold - f.op_threshold, 0.0),
                f.combo_threshold + t * max(f.settle_threshold - f.combo_threshold, 0.0))

    def init_global(self) -> GlobalModel:
        spec = self.initial_spec()
        net = self.fresh(spec)
        temp = torch.tensor(self.temperature(0), dtype=torch.float64)
        return GlobalModel(spec, state_of(net), {"temperature": temp})

    # ------------------------------------------------------------ client
    def learners(self, weights: list, arch: list, round_: int
                 ) -> tuple[TaskLearner, MetaLearner]:
        """The task and meta learners of eq. 9-10 over (weights, architecture parameters),
        with this section's learning rates (alphas frozen during the warm-up rounds).
        Shared by the methods that take FedMetaNAS's local search (meta-FedPNAS,
        meta-PerFedRLNAS)."""
        f = self.cfg.algorithm.fedmetanas
        warm = round_ < f.arch_warmup_rounds
        task_lr_a, meta_lr_a = (0.0, 0.0) if warm else (f.task_lr_alpha, f.meta_lr_alpha)
        task = TaskLearner([(weights, f.task_lr_w), (arch, task_lr_a)], f.inner_steps,
                           f.grad_clip)
        groups = [{"params": weights, "lr": f.meta_lr_w, "weight_decay": f.weight_decay}]
        if arch:
            groups.append({"params": arch, "lr": meta_lr_a, "weight_decay": 0.0})
        if f.meta_optimizer == "adam":
            opt = torch.optim.Adam(groups, betas=(f.meta_momentum, 0.999))
        else:
            opt = torch.optim.SGD(groups, momentum=f.meta_momentum)
        return task, MetaLearner(weights + arch, opt, f.grad_clip)

    def client_update(self, model: GlobalModel, data: ClientData, ctx: RoundContext,
                      client_state: State | None) -> ClientResult:
        f, a = self.cfg.algorithm.fedmetanas, self.cfg.algorithm
        net = self._net(model)
        net.train()
        net.set_sampling(self.temperature(ctx.round),
                         torch_rng(ctx.seed, ctx.round, data.client_id, "fedmetanas.gumbel"))
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
        final = f.final_round or self.cfg.run.rounds
        if spec.get("genotype") is None:
            if done >= final:
                spec = self._finalize(spec, averaged)
            elif f.prune_every and done >= f.prune_start and \
                    (done - f.prune_start) % f.prune_every == 0:
                spec = self._prune(spec, averaged, lam, *self.thresholds(ctx.round))
        state = averaged
        if spec is not model.spec:
            state = {k: averaged[k] for k in self.build(spec).state_dict()}
        metrics.update(temperature=lam, **self.arch_metrics(spec, state, lam))
        return GlobalModel(spec, state,
                           {"temperature": torch.tensor(lam, dtype=torch.float64)})

    def _prune(self, spec: dict, state: State, lam: float, op_threshold: float,
               combo_threshold: float) -> dict:
        masks = {}
        for c in CELLS:
            ops, combos = prune(self.space, state[f"alpha_{c}"], state[f"beta_{c}"],
                                spec["masks"][c]["ops"], spec["masks"][c]["combos"], lam,
                                op_threshold, combo_threshold)
            masks[c] = {"ops": ops, "combos": combos}
        if masks == spec["masks"]:
            return spec
        return {**spec, "masks": masks}

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
