"""Genotype training: one cell trained federatedly from scratch with a fixed recipe - a
genotype drawn uniformly from the search space (the random-architecture baseline), or the
one ``algorithm.random_nas.genotype`` names (a published cell, a run's searched cell, a
JSON file): the evaluation phase of NAS, in which every cell compared is retrained the
same way (``bench/search_quality.py``).

This is how NAS research shows that a search learned anything (Li and Talwalkar 2019,
"Random search and reproducibility for NAS"; Yu et al. 2020, "Evaluating the search
phase of NAS"): a searched genotype has to beat genotypes drawn at random from the same
space and trained with the same budget. ``algorithm.random_nas.genotype_seed`` picks the
genotype (independently of ``run.seed``, so one genotype can be trained with several
seeds); ``nas.sample_genotype`` draws per node one of its k-combinations of inputs and
per chosen edge one op other than ``none``, uniformly. The network is the discrete
network a search derives (one op per edge, one combination per node: every mixing
weight exactly 1), initialised from the run's seed and trained with FedAvg of plain SGD
on a cosine learning rate - FedNAS's retraining. Compare it with the retrain budget
for a two-stage method and with the whole run for a single-stage one.
"""

from __future__ import annotations

import torch

from ..flat import State
from ..nas import sampled_spec
from ..nas.published import source_spec
from ..seeding import SERVER, SETUP, torch_rng
from .base import ClientData, ClientResult, GlobalModel, RoundContext
from .common.derived import recipe_epochs
from .common.schedules import cosine_lr
from .common.supernet import SupernetMethod, state_of
from .common.training import evaluate


class RandomNAS(SupernetMethod):
    name = "random_nas"
    client_metrics = ("train_loss", "local_acc")

    def genotype_spec(self) -> dict:
        """The spec of the genotype to train (the same for every run seed): the named one,
        or the one drawn from ``genotype_seed``. Read once, at the start of a run: the
        checkpoints keep the spec, so a resumed run never reads the source again."""
        f = self.cfg.algorithm.random_nas
        if f.genotype:
            return source_spec(self.space, f.genotype).to_dict()
        seed = f.genotype_seed
        return sampled_spec(
            self.space, torch_rng(seed, SETUP, SERVER, "random_nas.genotype")
        ).to_dict()

    def lr(self, round_: int) -> float:
        f = self.cfg.algorithm.random_nas
        return cosine_lr(round_, self.cfg.run.rounds, f.lr, f.lr_min)

    def init_global(self) -> GlobalModel:
        spec = self.genotype_spec()
        return GlobalModel(spec, state_of(self.fresh(spec, "random_nas.init")))

    def client_update(
        self, model: GlobalModel, data: ClientData, ctx: RoundContext, client_state: State | None
    ) -> ClientResult:
        f, a = self.cfg.algorithm.random_nas, self.cfg.algorithm
        net = self._net(model)
        g = torch_rng(ctx.seed, ctx.round, data.client_id, "random_nas.batches")
        train_loss = recipe_epochs(
            net,
            data,
            self.lr(ctx.round),
            f.momentum,
            f.weight_decay,
            a.batch_size,
            a.local_epochs,
            g,
        )
        local_acc = float("nan")
        if ctx.is_due(f.local_eval_every):
            _, local_acc = evaluate(net, data.eval_x, data.eval_y)
        return ClientResult(
            state_of(net), float(data.num_train), {"train_loss": train_loss, "local_acc": local_acc}
        )

    def server_step(
        self, model: GlobalModel, averaged: State, metrics: dict[str, float], ctx: RoundContext
    ) -> GlobalModel:
        metrics.update(lr=self.lr(ctx.round))
        return GlobalModel(model.spec, averaged, model.server_state)

    def evaluate(self, model: GlobalModel, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        net = self._net(model)
        net.set_sampling(1.0, None)
        return evaluate(net, x, y)
