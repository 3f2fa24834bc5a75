"""FedBABU (Oh, Kim and Yun 2022): federated body, frozen random head, fine-tuned head.

The head keeps its random initialisation (drawn from the seed) for the whole run: no
client ever updates it, so every client returns it unchanged and its FedAvg average is
exactly its initial value (sum_k n_k h / sum_k n_k with integer n_k is exact in
float64). Clients train only the body for ``algorithm.local_epochs`` epochs; the server
averages body (BatchNorm buffers included) and head. Global accuracy is that of the
global model itself (body and random head).

Personalisation (local evaluation): the head fine-tuned for ``fedbabu.finetune_epochs``
on the features of the global body (body fixed), then evaluated on the eval split.
"""

from __future__ import annotations

import torch

from ..flat import State
from ..seeding import torch_rng
from .base import ClientData, ClientResult, GlobalModel, RoundContext
from .fixed import FixedModelMethod, clone_state, frozen
from .training import sgd_epochs


class FedBABU(FixedModelMethod):
    name = "fedbabu"
    client_metrics = ("train_loss",)

    def client_update(self, model: GlobalModel, data: ClientData, ctx: RoundContext,
                      client_state: State | None) -> ClientResult:
        a = self.cfg.algorithm
        net = self.load(model.state)
        body_p, head_p = self.parts()
        g = torch_rng(ctx.seed, ctx.round, data.client_id, "fedbabu.batches")
        with frozen(head_p):
            opt = torch.optim.SGD(body_p, lr=a.lr, momentum=a.momentum,
                                  weight_decay=a.weight_decay)
            loss = sgd_epochs(net, data.train_x, data.train_y, opt, a.batch_size,
                              a.local_epochs, g, augment=data.augment)
        return ClientResult(clone_state(net), float(data.num_train), {"train_loss": loss})

    def personal_accuracy(self, model: GlobalModel, data: ClientData, client_state: State | None,
                          ctx: RoundContext) -> float:
        f = self.cfg.algorithm.fedbabu
        net = self.load(model.state)
        head = {k: v for k, v in model.state.items() if k.startswith("head.")}
        g = torch_rng(ctx.seed, ctx.round, data.client_id, "fedbabu.personal")
        return self.finetune_head(net, head, data, f.finetune_epochs, f.finetune_lr, g)
