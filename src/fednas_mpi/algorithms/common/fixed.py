"""Shared machinery of the fixed-architecture methods (FedAvg, per-FedAvg, FedRep,
FedBABU): one model per process built from the seed, parameter freezing, and head
fine-tuning on the features of a fixed body.

The model is ``head(body(x))`` (``fednas_mpi.models``): the state-dict keys of the
classifier start with ``head.``, the rest is the body.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ...flat import State
from ...models import build_model, split_state
from ...seeding import SERVER, SETUP, torch_rng
from ..base import Algorithm, ClientData, GlobalModel
from .training import client_epochs, device_of, evaluate, sgd_epochs


def clone_state(net: nn.Module) -> State:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@contextmanager
def frozen(params: Sequence[nn.Parameter]) -> Iterator[None]:
    """No gradients for ``params`` inside the block (restored afterwards)."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


@torch.no_grad()
def features(body: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """The body's outputs in eval mode (BatchNorm running statistics), in batches."""
    body.eval()
    dev = device_of(body)
    return torch.cat(
        [body(x[i : i + batch_size].to(dev)) for i in range(0, max(len(x), 1), batch_size)]
    )


class FixedModelMethod(Algorithm):
    """A federated method on a fixed model (``model.name`` cnn or mobilenet_v3_*)."""

    def _model(self) -> nn.Module:
        # One module per process, reloaded for every client: building it is
        # cheaper to skip than the state copy is to do.
        if not hasattr(self, "_net"):
            self._net = build_model(
                self.cfg.model,
                self.info.input_shape,
                self.info.num_classes,
                torch_rng(self.cfg.run.seed, SETUP, SERVER, "model.init"),
            )
            self._init_state = clone_state(self._net)  # on the CPU, like every state
            self._net.to(self.device)
        return self._net

    @property
    def init_head(self) -> State:
        """The head as initialised from the seed (same for every client)."""
        self._model()
        return split_state(self._init_state)[1]

    def parts(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(body parameters, head parameters) of the process's model."""
        net = self._model()
        return list(net.body.parameters()), list(net.head.parameters())

    def init_global(self) -> GlobalModel:
        self._model()
        return GlobalModel({}, {k: v.clone() for k, v in self._init_state.items()})

    def load(self, state: State) -> nn.Module:
        net = self._model()
        net.load_state_dict(state)
        return net

    def evaluate(self, model: GlobalModel, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        return evaluate(self.load(model.state), x, y)

    def train_part(
        self,
        net: nn.Module,
        train: list[nn.Parameter],
        freeze: list[nn.Parameter],
        lr: float,
        epochs: int,
        data: ClientData,
        generator: torch.Generator,
    ) -> float:
        """SGD epochs on the client's train split updating ``train`` with ``freeze`` held
        fixed (the method's momentum and weight decay); the mean training loss."""
        a = self.cfg.algorithm
        with frozen(freeze):
            opt = torch.optim.SGD(train, lr=lr, momentum=a.momentum, weight_decay=a.weight_decay)
            return client_epochs(net, data, opt, a.batch_size, epochs, generator)

    def finetune_head(
        self, state: State, data: ClientData, epochs: int, lr: float, generator: torch.Generator
    ) -> float:
        """Train only the head of the model ``state`` (body and head) on the fixed body's
        features of the client's train split; returns its accuracy on the eval split (nan if
        that is empty).

        The body runs once per split in eval mode (its BatchNorm running statistics), so
        neither it nor its buffers change; the head sees the same features every epoch.
        """
        if len(data.eval_y) == 0:
            return float("nan")
        a = self.cfg.algorithm
        net = self.load(state)
        f_train, f_eval = features(net.body, data.train_x), features(net.body, data.eval_x)
        opt = torch.optim.SGD(
            net.head.parameters(), lr=lr, momentum=a.momentum, weight_decay=a.weight_decay
        )
        sgd_epochs(net.head, f_train, data.train_y, opt, a.batch_size, epochs, generator)
        return evaluate(net.head, f_eval, data.eval_y)[1]
