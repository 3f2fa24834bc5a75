"""The interface every federated method implements; pure of MPI.

A one-process run and an N-rank run call exactly the same methods: the
runtime only decides where ``client_update`` runs and how results travel.

- ``GlobalModel`` is what the server owns between rounds: ``spec`` (small,
  JSON-able: e.g. a genotype after pruning), ``state`` (named tensors sent to
  clients and averaged back; architecture parameters are ordinary entries) and
  ``server_state`` (server-only tensors such as a reward baseline).
- ``client_update`` maps (global model, client data, round context, the
  client's persistent state) to a ``ClientResult``.
- ``server_step`` maps the FedAvg-averaged state (and averaged client metrics)
  to the next global model; a method may switch stage there (search ->
  retrain) by returning a new ``spec`` and a state of a new layout.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

from ..config import Config
from ..flat import State


@dataclass(frozen=True)
class DataInfo:
    input_shape: tuple[int, int, int]
    num_classes: int


@dataclass(frozen=True)
class RoundContext:
    round: int  # 0-based index of the round being run
    rounds: int  # rounds planned in total
    seed: int
    stage: str

    def is_due(self, every: int) -> bool:
        """Whether a task run every ``every`` rounds runs in this round (always in the last)."""
        return (self.round + 1) % every == 0 or self.round + 1 == self.rounds


@dataclass(frozen=True)
class ClientData:
    client_id: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    #: train-time augmentation of a minibatch, drawing only from the generator it is given
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None

    @property
    def num_train(self) -> int:
        return int(self.train_y.shape[0])

    def to(self, device: torch.device | str) -> ClientData:
        """The same client with its tensors on ``device`` (itself when they are there)."""
        device = torch.device(device)
        if self.train_x.device == device:
            return self
        return replace(
            self,
            train_x=self.train_x.to(device),
            train_y=self.train_y.to(device),
            eval_x=self.eval_x.to(device),
            eval_y=self.eval_y.to(device),
        )


@dataclass
class GlobalModel:
    spec: dict
    state: State
    server_state: State = field(default_factory=dict)

    def spec_json(self) -> str:
        return json.dumps(self.spec, sort_keys=True)


@dataclass
class ClientResult:
    """One client's report. Besides the model state a client may send values the server
    needs for its step but that are no part of any model (the auxiliary channel); they
    never enter the global state, the broadcast or a checkpoint:

    - ``aux``: averaged like the state (sum over clients of weight * value, divided by
      the total weight, in float64, pre-reduced per worker with the state); the names
      and shapes are the ones ``Algorithm.aux_shapes`` declares, and ``server_step``
      finds the means in ``averaged`` beside the state's entries.
    - ``client_aux``: gathered, not reduced: the server gets each client's own tensors
      exactly, in ``server_client_step``'s ``aux``.
    """

    state: State  # averaged by the server, weighted by ``weight``
    weight: float  # FedAvg weight: the client's number of training samples
    metrics: dict[str, float]  # one value per name in Algorithm.client_metrics
    client_state: State | None = None  # kept for this client until it is next sampled
    aux: State = field(default_factory=dict)  # weighted means across clients
    client_aux: State = field(default_factory=dict)  # each client's own, to the server


class Algorithm(ABC):
    name: ClassVar[str]
    #: Scalars every client reports; the server logs their weighted mean and std.
    client_metrics: ClassVar[tuple[str, ...]] = ()
    #: Where this rank's networks and client data live (runtime.device, set by the runtime
    #: from the rank's placement). Global and client states stay on the CPU: networks load
    #: them (copying to the device), results come back as CPU tensors (the runtime moves
    #: them), and every random draw comes from a CPU generator, so the streams, hence the
    #: sampled clients, tasks and architectures, are the same on any device.
    device: torch.device = torch.device("cpu")

    def __init__(self, cfg: Config, info: DataInfo):
        self.cfg = cfg
        self.info = info

    def stage(self, round_: int) -> str:
        """Name of the stage a round belongs to (e.g. 'search', 'retrain')."""
        return "train"

    def can_stop(self, round_: int) -> bool:
        """Whether early stopping (``run.patience``) may end the run after this round: a
        method with stages allows it only in its last one (the best validation accuracy
        is tracked from the start of that stage)."""
        return True

    @abstractmethod
    def init_global(self) -> GlobalModel:
        """The round-0 global model; draws only from seeded generators."""

    @abstractmethod
    def client_update(
        self, model: GlobalModel, data: ClientData, ctx: RoundContext, client_state: State | None
    ) -> ClientResult:
        """Local work of one client on a copy of the global model."""

    def aux_shapes(self, model: GlobalModel) -> dict[str, tuple[int, ...]]:
        """Names and shapes of the ``ClientResult.aux`` entries every client of a round on
        ``model`` returns (float64; none by default). Declared up front because the
        server sizes the round's receive buffers before any client has run."""
        return {}

    def server_step(
        self, model: GlobalModel, averaged: State, metrics: dict[str, float], ctx: RoundContext
    ) -> GlobalModel:
        """Next global model from the FedAvg average (of the state's entries and of the
        ``aux`` ones); plain FedAvg keeps it as is."""
        return GlobalModel(model.spec, averaged, model.server_state)

    def server_client_step(
        self,
        states: dict[int, State],
        clients: list[int],
        aux: dict[int, State],
        metrics: dict[str, float],
        ctx: RoundContext,
    ) -> dict[int, State]:
        """Server-side update of per-client state after a round, once every client of the
        round has reported: ``states`` holds every client's stored state (this round's
        new ones included), ``clients`` this round's clients, ``aux`` each reporting
        client's ``ClientResult.client_aux``. Returns the states to replace (default:
        none); may add round metrics. Runs on the server only, before ``server_step``, so
        it can use values only the whole round knows (e.g. the fastest client)."""
        return {}

    @abstractmethod
    def evaluate(self, model: GlobalModel, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """(mean loss, accuracy) of the global model on (x, y)."""

    def evaluate_global(
        self, model: GlobalModel, x: torch.Tensor, y: torch.Tensor, client_states: dict[int, State]
    ) -> tuple[float, float]:
        """(mean loss, accuracy) reported as the round's global accuracy (paper Table 1).

        The global model itself; a method whose global model lacks a part that only
        clients hold (FedRep's heads) combines it with the stored client states.
        """
        return self.evaluate(model, x, y)

    def personal_accuracy(
        self, model: GlobalModel, data: ClientData, client_state: State | None, ctx: RoundContext
    ) -> float:
        """Accuracy on the client's eval split of its personalised model: the global model
        after the method's own personalisation step (paper Table 5).

        The server calls it for every client on the ``run.personal_eval_every`` schedule,
        after the round's server step; ``client_state`` is what the client kept (None if
        it was never sampled). It must not change the global model or the client state,
        and draws only from generators seeded by (seed, ctx.round, client, purpose).
        Methods without a personalisation step evaluate the global model itself.
        """
        return self.evaluate(model, data.eval_x, data.eval_y)[1]
