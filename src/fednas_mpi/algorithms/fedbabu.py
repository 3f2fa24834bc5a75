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

from ..flat import State
from ..seeding import torch_rng
from .base import ClientData, ClientResult, GlobalModel, RoundContext
from .common.fixed import FixedModelMethod, clone_state


class FedBABU(FixedModelMethod):
    name = "fedbabu"
    client_metrics = ("train_loss",)

    def client_update(
        self, model: GlobalModel, data: ClientData, ctx: RoundContext, client_state: State | None
    ) -> ClientResult:
        a = self.cfg.algorithm
        net = self.load(model.state)
        body_p, head_p = self.parts()
        g = torch_rng(ctx.seed, ctx.round, data.client_id, "fedbabu.batches")
        loss = self.train_part(net, body_p, head_p, a.lr, a.local_epochs, data, g)
        return ClientResult(clone_state(net), float(data.num_train), {"train_loss": loss})

    def personal_accuracy(
        self, model: GlobalModel, data: ClientData, client_state: State | None, ctx: RoundContext
    ) -> float:
        f = self.cfg.algorithm.fedbabu
        g = torch_rng(ctx.seed, ctx.round, data.client_id, "fedbabu.personal")
        return self.finetune_head(model.state, data, f.finetune_epochs, f.finetune_lr, g)
