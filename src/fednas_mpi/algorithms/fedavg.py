"""FedAvg (McMahan et al.): E local epochs of SGD, then the sample-weighted mean.

Works on any fixed model (the small CNN or MobileNetV3): the whole state dict,
BatchNorm running statistics included, is sent and averaged.
"""

from __future__ import annotations

import torch

from ..flat import State
from ..seeding import torch_rng
from .base import ClientData, ClientResult, GlobalModel, RoundContext
from .common.fixed import FixedModelMethod, clone_state
from .common.training import client_epochs, evaluate


class FedAvg(FixedModelMethod):
    name = "fedavg"
    client_metrics = ("train_loss", "local_acc")

    def client_update(
        self, model: GlobalModel, data: ClientData, ctx: RoundContext, client_state: State | None
    ) -> ClientResult:
        a = self.cfg.algorithm
        net = self.load(model.state)
        opt = torch.optim.SGD(
            net.parameters(), lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay
        )
        g = torch_rng(ctx.seed, ctx.round, data.client_id, "fedavg.batches")
        train_loss = client_epochs(net, data, opt, a.batch_size, a.local_epochs, g)
        _, local_acc = evaluate(net, data.eval_x, data.eval_y)
        return ClientResult(
            clone_state(net),
            float(data.num_train),
            {"train_loss": train_loss, "local_acc": local_acc},
        )
