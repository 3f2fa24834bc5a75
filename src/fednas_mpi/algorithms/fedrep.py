"""FedRep (Collins et al. 2021): a shared body, a head per client.

Client: load the global body and its own head (the seed's initial head the first time
it is sampled); ``fedrep.head_epochs`` epochs of SGD on the head alone (body fixed),
then ``algorithm.local_epochs`` epochs on the body alone (head fixed). It returns its
body, which the server averages (BatchNorm buffers included: they belong to the body),
and keeps its head as per-client state: the head is never part of what is sent or
averaged, so the global model holds no head at all. The runtime stores each client's
head between its participations (and in every checkpoint, under /clients/<id>/).

Personalisation (local evaluation): the client's head (or the initial one) trained for
``head_epochs`` on the features of the current global body, as at the start of its
next round, then evaluated on its eval split; nothing is stored.

Global accuracy (server test set): there is no global head, so the server reports the
mean over clients of the accuracy of (global body, client head), for clients that have
a head (the initial head before any client has one).
"""

from __future__ import annotations

import numpy as np
import torch

from ..flat import State
from ..models import split_state
from ..seeding import torch_rng
from .base import ClientData, ClientResult, GlobalModel, RoundContext
from .common.fixed import FixedModelMethod, clone_state, features
from .common.training import evaluate


class FedRep(FixedModelMethod):
    name = "fedrep"
    client_metrics = ("train_loss", "head_loss")

    def init_global(self) -> GlobalModel:
        body, _ = split_state(super().init_global().state)
        return GlobalModel({}, body)

    def client_update(
        self, model: GlobalModel, data: ClientData, ctx: RoundContext, client_state: State | None
    ) -> ClientResult:
        a, f = self.cfg.algorithm, self.cfg.algorithm.fedrep
        head = client_state if client_state is not None else self.init_head
        net = self.load({**model.state, **head})
        body_p, head_p = self.parts()
        g = torch_rng(ctx.seed, ctx.round, data.client_id, "fedrep.batches")
        head_loss = self.train_part(net, head_p, body_p, f.head_lr, f.head_epochs, data, g)
        loss = self.train_part(net, body_p, head_p, a.lr, a.local_epochs, data, g)
        body, head = split_state(clone_state(net))
        return ClientResult(
            body,
            float(data.num_train),
            {"train_loss": loss, "head_loss": head_loss},
            client_state=head,
        )

    def evaluate(self, model: GlobalModel, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """The global body with the initial head (see ``evaluate_global``)."""
        return evaluate(self.load({**model.state, **self.init_head}), x, y)

    def evaluate_global(
        self, model: GlobalModel, x: torch.Tensor, y: torch.Tensor, client_states: dict[int, State]
    ) -> tuple[float, float]:
        """Mean (loss, accuracy) over the clients' heads on the global body."""
        heads = [client_states[c] for c in sorted(client_states)] or [self.init_head]
        net = self.load({**model.state, **self.init_head})
        f = features(net.body, x)
        scores = []
        for head in heads:
            net.load_state_dict(head, strict=False)
            scores.append(evaluate(net.head, f, y))
        return tuple(float(v) for v in np.mean(scores, axis=0))

    def personal_accuracy(
        self, model: GlobalModel, data: ClientData, client_state: State | None, ctx: RoundContext
    ) -> float:
        f = self.cfg.algorithm.fedrep
        head = client_state if client_state is not None else self.init_head
        g = torch_rng(ctx.seed, ctx.round, data.client_id, "fedrep.personal")
        return self.finetune_head({**model.state, **head}, data, f.head_epochs, f.head_lr, g)
