"""FedAvg (McMahan et al.): E local epochs of SGD, then the sample-weighted mean."""

from __future__ import annotations

import torch

from ..flat import State
from ..models import build_model
from ..seeding import SERVER, SETUP, torch_rng
from .base import Algorithm, ClientData, ClientResult, GlobalModel, RoundContext
from .training import evaluate, sgd_epochs


class FedAvg(Algorithm):
    name = "fedavg"
    client_metrics = ("train_loss", "local_acc")

    def _model(self) -> torch.nn.Module:
        # One module per process, reloaded for every client: building it is
        # cheaper to skip than the state copy is to do.
        if not hasattr(self, "_net"):
            self._net = build_model(self.cfg.model, self.info.input_shape, self.info.num_classes,
                                    torch_rng(self.cfg.run.seed, SETUP, SERVER, "model.init"))
        return self._net

    def init_global(self) -> GlobalModel:
        net = self._model()
        return GlobalModel({}, {k: v.detach().clone() for k, v in net.state_dict().items()})

    def client_update(self, model: GlobalModel, data: ClientData, ctx: RoundContext,
                      client_state: State | None) -> ClientResult:
        a = self.cfg.algorithm
        net = self._model()
        net.load_state_dict(model.state)
        opt = torch.optim.SGD(net.parameters(), lr=a.lr, momentum=a.momentum,
                              weight_decay=a.weight_decay)
        g = torch_rng(ctx.seed, ctx.round, data.client_id, "fedavg.batches")
        train_loss = sgd_epochs(net, data.train_x, data.train_y, opt, a.batch_size,
                                a.local_epochs, g, augment=data.augment)
        _, local_acc = evaluate(net, data.eval_x, data.eval_y)
        state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        return ClientResult(state, float(data.num_train),
                            {"train_loss": train_loss, "local_acc": local_acc})

    def evaluate(self, model: GlobalModel, x: torch.Tensor, y: torch.Tensor
                 ) -> tuple[float, float]:
        net = self._model()
        net.load_state_dict(model.state)
        return evaluate(net, x, y)
