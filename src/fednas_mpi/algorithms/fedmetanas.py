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

``arch_update: server`` (``common.server_opt``; Reddi et al. 2021): the meta step on
alphas and betas is plain SGD at ``client_arch_lr`` instead of a per-client Adam, and in
every search round after the warm-up the server steps the logits by FedAdam/FedYogi on
the averaged change, with moments kept in the server state; pruning and the derivation
read the stepped logits, and pruned entries stay where they are.

``prune_rule: z`` (issue 26, "decisions outside the noise"; ``common.dispersion``,
``nas.margins``): while the search goes on every client also sends its logits and their
products on the auxiliary channel, so the server knows the round's weighted covariance of
the clients' logits; an op or combination is pruned only when its gap to the best live
entry exceeds ``prune_z`` standard errors at two consecutive checks (the first strikes in
the server state: ``prune.struck.*``), and the derivation flags the choices it made inside
the noise. Gaps and standard errors are read on the search's evidence (``nas.margins``:
the clients' moves summed over the rounds, kept in ``prune.evidence.*``), in the clients'
own units, so the rule means the same with and without ``arch_update: server``.

``derive_rule: perturbation`` (``common.perturbation``, ``nas.perturbation``; DARTS-PT,
Wang et al., ICLR 2021): the clients of the derivation round score the received supernet
on their own eval splits with each live op, and each input combination, removed; the
derivation keeps what hurts most when removed instead of the logits' argmax (one-shot:
no re-tuning between decisions).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..flat import State
from ..nas import ArchSpec, Genotype, final_spec
from ..seeding import torch_rng
from .base import ClientData, ClientResult, GlobalModel, RoundContext
from .common import dispersion
from .common.derived import recipe_epochs
from .common.maml import MetaLearner, TaskLearner
from .common.meta import MetaSearch
from .common.perturbation import PerturbationScoring
from .common.pruning import (
    carried_strikes,
    noise_prune,
    soft_prune,
    strike_state,
)
from .common.server_opt import ServerArchOptimizer
from .common.steploop import DeviceSums, step_loop
from .common.streams import BatchStream, GumbelStream
from .common.supernet import GumbelSupernetMethod, state_of
from .common.tasks import task_pairs
from .common.training import evaluate


class FedMetaNAS(GumbelSupernetMethod):
    """Single stage: ``arch_warmup_rounds`` of deterministic warm-up (weights only), the
    search with soft pruning up to ``final_round``, the final derivation, then the same
    run trains the derived network with the weights it inherited (no re-initialisation).
    The weights' learning rates follow a cosine over the whole run.

    How the derived network trains (``derived_training``): by default the search's
    first-order MAML goes on (Algorithm 1 runs the same client loop in every round);
    ``sgd`` trains it with the evaluation recipe every genotype is retrained with
    (``common.derived``: plain SGD, its own cosine ``derived_lr`` over the derived
    rounds), so the derived network's accuracy is comparable with the random cells'."""

    name = "fedmetanas"
    client_metrics = ("train_loss", "support_loss", "local_acc")

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.meta = MetaSearch(cfg)
        self.arch_opt = ServerArchOptimizer(cfg.algorithm.fedmetanas)
        self.z_rule = cfg.algorithm.fedmetanas.prune_rule == "z"
        self.pt = PerturbationScoring(cfg.algorithm.fedmetanas, self.space)

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
        model = super().init_global(
            {"temperature": torch.tensor(self.temperature(0), dtype=torch.float64)}
        )
        model.server_state.update(self.arch_opt.init_state(model.state))
        if self.z_rule:
            model.server_state.update(strike_state(model.spec))
            model.server_state.update(dispersion.evidence_state(model.state))
        return model

    def measures_noise(self, spec: dict) -> bool:
        """Whether the round's clients report their logits' moments (``prune_rule: z``,
        while the search goes on)."""
        return self.z_rule and ArchSpec.of(spec).genotype is None

    def aux_shapes(self, model: GlobalModel) -> dict[str, tuple[int, ...]]:
        noise = dispersion.aux_shapes(model.state) if self.measures_noise(model.spec) else {}
        return {**noise, **self.pt.aux_shapes(model.spec)}

    # ------------------------------------------------------------ client
    def learners(self, weights: list, arch: list, round_: int) -> tuple[TaskLearner, MetaLearner]:
        """The task and meta learners of eq. 9-10 (``MetaSearch.learners``)."""
        return self.meta.learners(weights, arch, round_)

    def client_update(
        self, model: GlobalModel, data: ClientData, ctx: RoundContext, client_state: State | None
    ) -> ClientResult:
        f, a = self.cfg.algorithm.fedmetanas, self.cfg.algorithm
        net = self._net(model)
        if f.derived_training == "sgd" and self.stage(ctx.round) == "derived":
            return self._derived_sgd(net, data, ctx)
        # derive_rule: perturbation: the derivation round's clients score the received
        # supernet before their local steps (common.perturbation says why)
        scores = self.pt.client_aux(
            net,
            model.spec,
            data.eval_x,
            data.eval_y,
            float(data.num_train),
            self.temperature(ctx.round),
            ctx.round + 1 >= self.search_rounds,
        )
        net.train()
        # The warm-up is deterministic: no Gumbel noise, every op in the same mixture.
        gumbel = (
            None
            if self.warming_up(ctx.round)
            else torch_rng(ctx.seed, ctx.round, data.client_id, "fedmetanas.gumbel")
        )
        task, meta = self.learners(net.weight_parameters(), net.arch_parameters(), ctx.round)
        g_tasks = torch_rng(ctx.seed, ctx.round, data.client_id, "fedmetanas.tasks")
        g_aug = torch_rng(ctx.seed, ctx.round, data.client_id, "fedmetanas.augment")
        # every draw staged before the loop, in the loop's order (``common.streams``)
        pairs = [
            pair
            for _ in range(a.local_epochs)
            for pair in task_pairs(len(data.train_y), a.batch_size, f.tasks_per_epoch, g_tasks)
        ]
        batches = BatchStream(data.train_x, data.train_y, data.augment)
        for s_idx, q_idx in pairs:
            batches.add(s_idx, g_aug)
            batches.add(q_idx, g_aug)
        batches.stage()
        if gumbel is not None:  # M support forwards and one query forward per meta step
            gumbel = GumbelStream(net, gumbel, len(pairs) * (task.steps + 1))
        net.set_sampling(self.temperature(ctx.round), gumbel)
        sums = DeviceSums(2, data.train_x.device)  # (support, query) losses
        with step_loop():
            for i in range(len(pairs)):
                xs, ys = batches.batch(2 * i)
                xq, yq = batches.batch(2 * i + 1)
                sums.add(*meta.update(task, _loss(net, xs, ys), _loss(net, xq, yq)))
        s_sum, q_sum = sums.read()
        steps = len(pairs)
        local_acc = float("nan")
        if ctx.is_due(f.local_eval_every):
            _, local_acc = evaluate(net, data.eval_x, data.eval_y)
        state, weight = state_of(net), float(data.num_train)
        return ClientResult(
            state,
            weight,
            {"train_loss": q_sum / steps, "support_loss": s_sum / steps, "local_acc": local_acc},
            aux={
                **(dispersion.client_aux(state, weight) if self.measures_noise(model.spec) else {}),
                **scores,
            },
        )

    def _derived_sgd(self, net, data: ClientData, ctx: RoundContext) -> ClientResult:
        """``derived_training: sgd``: the derived network's inherited weights train with
        the evaluation recipe (``common.derived``) instead of Algorithm 1's MAML; its
        logits are fixed by the genotype. No support task: ``support_loss`` is nan."""
        f, a = self.cfg.algorithm.fedmetanas, self.cfg.algorithm
        g = torch_rng(ctx.seed, ctx.round, data.client_id, "fedmetanas.derived.batches")
        train_loss = recipe_epochs(
            net,
            data,
            self.derived_lr(ctx.round),
            f.derived_momentum,
            f.derived_weight_decay,
            a.batch_size,
            a.local_epochs,
            g,
        )
        local_acc = float("nan")
        if ctx.is_due(f.local_eval_every):
            _, local_acc = evaluate(net, data.eval_x, data.eval_y)
        return ClientResult(
            state_of(net),
            float(data.num_train),
            {"train_loss": train_loss, "support_loss": float("nan"), "local_acc": local_acc},
        )

    def derived_lr(self, round_: int) -> float:
        """``derived_training: sgd``: the recipe's cosine over the derived rounds."""
        f = self.cfg.algorithm.fedmetanas
        return f.derived_lr_at(round_, self.search_rounds, self.cfg.run.rounds)

    def weight_lr(self, round_: int) -> float:
        """The weights' learning rate of a round: the meta learner's, or the recipe's in
        the derived rounds of ``derived_training: sgd``."""
        f = self.cfg.algorithm.fedmetanas
        if f.derived_training == "sgd" and self.stage(round_) == "derived":
            return self.derived_lr(round_)
        return f.meta_lr_w * self.weight_lr_scale(round_)

    # ------------------------------------------------------------ server
    def server_step(
        self, model: GlobalModel, averaged: State, metrics: dict[str, float], ctx: RoundContext
    ) -> GlobalModel:
        f = self.cfg.algorithm.fedmetanas
        done = ctx.round + 1
        lam = self.temperature(ctx.round)
        spec, arch = model.spec, ArchSpec.of(model.spec)
        server = {"temperature": torch.tensor(lam, dtype=torch.float64)}
        averaged, scores = self.pt.split(averaged)
        evidence = None
        if self.measures_noise(spec):
            averaged, aux = dispersion.split(averaged)
            noise = dispersion.dispersion(aux, metrics["client_weight"])
            metrics["n_eff"] = noise["normal"].n_eff
            evidence = dispersion.accumulate(
                dispersion.evidence_of(model.server_state, model.state), aux, noise, model.state
            )
        if self.arch_opt.on:
            # FedAdam/FedYogi on the averaged change of the logits while they are searched
            # (not in the warm-up, where they are frozen, nor after the derivation); pruning
            # and the derivation then read the stepped logits.
            server.update(self.arch_opt.carried(model.server_state))
            if arch.genotype is None and not self.warming_up(ctx.round):
                averaged, moments, moved = self.arch_opt.step(
                    model.state, averaged, model.server_state, self.live_logits(spec)
                )
                server.update(moments)
                metrics.update(moved)
        if self.z_rule:
            server.update(carried_strikes(model.server_state))
            if evidence is None:  # after the derivation: the final evidence, for inspection
                server.update(dispersion.carried_evidence(model.server_state))
            else:
                server.update(dispersion.evidence_entries(evidence))
        if arch.genotype is None:
            if done >= self.search_rounds and scores:
                derived, picked = self.pt.derive(arch, averaged, scores, metrics["client_weight"])
                spec = derived.to_dict()
                metrics.update(picked)
            elif done >= self.search_rounds:
                spec = final_spec(self.space, arch, averaged, evidence, f.prune_z).to_dict()
                if evidence is not None:
                    metrics.update(_undecided(ArchSpec.of(spec).genotype))
            elif (gaps := self.prune_gaps(ctx.round)) is not None:
                if evidence is not None:
                    # the z rule reads only the schedule: z never shrinks in the settle
                    # window (a shrinking z would cut inside the noise again)
                    spec, struck, pruned = noise_prune(
                        self.space, spec, averaged, evidence, server, f.prune_z, ctx.round
                    )
                    server.update(struck)
                    metrics.update(pruned, prune_z=f.prune_z)
                else:
                    spec, pruned = soft_prune(self.space, spec, averaged, *gaps, ctx.round)
                    metrics.update(pruned, prune_gap=gaps[0])
        state = averaged
        if spec is not model.spec:
            state = self.restrict(spec, averaged)
        metrics.update(
            temperature=lam,
            weight_lr=self.weight_lr(ctx.round),
            **self.arch_metrics(spec, state, lam),
        )
        return GlobalModel(spec, state, server)


def _undecided(genotype: Genotype) -> dict[str, float]:
    """How many of the derivation's choices lie inside the noise: edges' ops, nodes'
    input combinations."""
    nodes = [n for cell in genotype.cells.values() for n in cell.nodes]
    return {
        "undecided_ops": float(sum(bool(x.undecided) for n in nodes for x in n.inputs)),
        "undecided_nodes": float(sum(bool(n.undecided) for n in nodes)),
    }


def _loss(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    return lambda: F.cross_entropy(net(x), y)
