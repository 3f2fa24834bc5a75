"""The model a run's checkpoint describes, built the way its method evaluates it.

For every method this gives a plain module (``Target.module``) and the accuracy the
method's own code reports for it (``Target.reference_acc``, on ``Target.eval_on``):

- fixed models (fedavg, perfedavg, fedrep, fedbabu): the network itself, BatchNorm with
  the run's (FedAvg-averaged) running statistics. ``--client`` exports the model the
  run's personalised evaluation measures (the method's ``personal_accuracy``: per-FedAvg's
  adaptation steps, FedRep's and FedBABU's head training), reproduced from the same seeds.
  FedRep has no global head (its global accuracy is a mean over the clients' heads), so
  it is exported per client only.
- search-space models: a ``DeployNet`` of the method's evaluation function: the
  deterministic mixture (fedmetanas, fednas, fedpnas, meta_fedpnas, random_nas; FedPNAS's
  clients with their personalised cells and logits) or one op per edge (feddsnas, fedrlnas and
  the PerFedRLNAS pair: the argmax child, or a client's own subnet). Their BatchNorm uses
  batch statistics; ``Target.calibration`` names the data to recalibrate it on.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..algorithms import DataInfo, get_algorithm, registry
from ..algorithms.base import ClientData, GlobalModel, RoundContext
from ..algorithms.common.subnet import PathModel
from ..algorithms.common.training import evaluate
from ..algorithms.fedpnas import SplitModel
from ..config import Config
from ..nas import CELL_TYPES, ArchSpec, Genotype, argmax_choices
from ..nas.derive import child_genotype
from . import deploy

# how each method evaluates its model, from the registry's flags
FIXED = tuple(m.name for m in registry.METHODS if not m.nas)
MIXTURE = tuple(m.name for m in registry.METHODS if m.nas and not m.path)
PATH = tuple(m.name for m in registry.METHODS if m.nas and m.path)
PERSONAL = tuple(m.name for m in registry.METHODS if m.personal)


class ExportError(ValueError):
    """A request the run cannot satisfy; the message says what to pass instead."""


@dataclass
class Target:
    module: nn.Module  # eval mode, on the CPU
    search: bool  # a search-space network (BatchNorm to recalibrate)
    eval_on: str  # "test" (server test set) or "client" (the client's eval split)
    reference_acc: float  # the method's own evaluation of this model on eval_on
    calibration: np.ndarray | None = None  # training-pool indices to recalibrate on
    genotype: dict | None = None
    cells: list[dict] | None = None
    notes: list[str] = field(default_factory=list)


def client_data(dataset, partition, cid: int) -> ClientData:
    """A client's data as the runtime gives it to the method (on the CPU)."""
    split = partition.clients[cid]
    return ClientData(
        cid,
        dataset.train_inputs(split.train),
        dataset.train_y[split.train],
        dataset.train_inputs(split.eval),
        dataset.train_y[split.eval],
        augment=dataset.augment,
    )


def build_target(cfg: Config, ckpt, dataset, partition, client: int | None) -> Target:
    name = cfg.algorithm.name
    if client is not None:
        if name not in PERSONAL:
            raise ExportError(
                f"{name} has no personalised model: export its global model (drop --client)"
            )
        if not 0 <= client < cfg.partition.num_clients:
            raise ExportError(
                f"--client {client}: the run has clients 0..{cfg.partition.num_clients - 1}"
            )
    elif name == "fedrep":
        raise ExportError(
            "fedrep has no global head (its global accuracy is the mean over "
            "the clients' heads on the global body): pass --client ID"
        )
    if name not in FIXED + MIXTURE + PATH:
        raise ExportError(
            f"export does not know how {name} evaluates its model: it is not "
            f"in fednas_mpi/algorithms/registry.py"
        )
    algo = get_algorithm(name)(cfg, DataInfo(dataset.input_shape, dataset.num_classes))
    model = GlobalModel(ckpt.spec, ckpt.state, ckpt.server_state)
    if name in FIXED:
        return _fixed(algo, model, ckpt, dataset, partition, client)
    if name in MIXTURE:
        return _mixture(algo, model, ckpt, dataset, partition, client)
    return _path(algo, model, ckpt, dataset, partition, client)


def _all_train(partition) -> np.ndarray:
    return np.sort(np.concatenate([c.train for c in partition.clients]))


def _fixed(algo, model, ckpt, dataset, partition, client) -> Target:
    if client is None:
        acc = algo.evaluate_global(model, dataset.test_x, dataset.test_y, ckpt.client_states)[1]
        return Target(copy.deepcopy(algo.load(model.state)).eval(), False, "test", acc)
    # The personalisation step trains the process's model in place; the copy taken
    # afterwards is checked against the accuracy the method reported for it.
    r = ckpt.round - 1
    ctx = RoundContext(r, algo.cfg.run.rounds, algo.cfg.run.seed, algo.stage(r))
    data = client_data(dataset, partition, client)
    acc = algo.personal_accuracy(model, data, ckpt.client_states.get(client), ctx)
    net = copy.deepcopy(algo._model()).eval()
    got = evaluate(net, data.eval_x, data.eval_y)[1]
    if not (got == acc or (np.isnan(got) and np.isnan(acc))):
        raise RuntimeError(
            f"{algo.name}: the personalised model of client {client} could "
            f"not be reproduced (accuracy {got} vs {acc})"
        )
    return Target(
        net,
        False,
        "client",
        acc,
        notes=[
            f"client {client}: the model of {algo.name}'s personalised "
            f"evaluation after round {ckpt.round}"
        ],
    )


def _temperature(algo, model) -> float:
    # FedNAS evaluates plain softmax(alpha); the Gumbel-softmax methods at the
    # temperature of the round the checkpoint closes (kept in the server state).
    if algo.name == "fednas":
        return 1.0
    return float(model.server_state.get("temperature", 1.0))


def _mixture(algo, model, ckpt, dataset, partition, client) -> Target:
    net = algo._net(model)
    temp = _temperature(algo, model)
    genotype = ArchSpec.of(model.spec).genotype
    genotype = None if genotype is None else genotype.to_dict()
    if client is None:
        acc = algo.evaluate(model, dataset.test_x, dataset.test_y)[1]
        net.set_sampling(temp, None)
        net.eval()
        with torch.no_grad():
            weights = {c: net.mixing_weights(c, False) for c in CELL_TYPES}
        plans = [
            deploy.mixture_plan(net, cell, *weights["reduce" if cell.reduction else "normal"])
            for cell in net.cells
        ]
        return Target(
            deploy.freeze(net, plans),
            True,
            "test",
            acc,
            _all_train(partition),
            genotype,
            deploy.describe(net, plans),
        )
    # FedPNAS client: the global base, the client's personalised cells and logits.
    mine = algo.personal_state(model, ckpt.client_states.get(client))
    logits = ("palpha_", "pbeta_")
    net.load_state_dict({k: v for k, v in mine.items() if not k.startswith(logits)}, strict=False)
    personal = {k: v for k, v in mine.items() if k.startswith(logits)}
    net.set_sampling(temp, None)
    net.eval()
    data = client_data(dataset, partition, client)
    acc = evaluate(SplitModel(net, personal, algo.first_personal), data.eval_x, data.eval_y)[1]
    with torch.no_grad():
        base = {c: net.mixing_weights(c, False) for c in CELL_TYPES}
        pers = {
            c: net.mixing_weights(c, False, personal[f"palpha_{c}"], personal[f"pbeta_{c}"])
            for c in CELL_TYPES
        }
    plans = [
        deploy.mixture_plan(
            net,
            cell,
            *(pers if li >= algo.first_personal else base)[
                "reduce" if cell.reduction else "normal"
            ],
        )
        for li, cell in enumerate(net.cells)
    ]
    notes = (
        []
        if client in ckpt.client_states
        else [f"client {client} was never sampled: its model is the global one"]
    )
    return Target(
        deploy.freeze(net, plans),
        True,
        "client",
        acc,
        partition.clients[client].train,
        genotype,
        deploy.describe(net, plans),
        notes,
    )


def _path(algo, model, ckpt, dataset, partition, client) -> Target:
    net = algo.net_of(model.spec, model.state) if hasattr(algo, "net_of") else algo._net(model)
    if client is None:
        acc = algo.evaluate(model, dataset.test_x, dataset.test_y)[1]
        choices = argmax_choices(net)
        alpha = {c: model.state[f"alpha_{c}"] for c in CELL_TYPES}
        calib, eval_on, x, y, notes = _all_train(partition), "test", None, None, []
    else:
        st = ckpt.client_states.get(client)
        if st is None or any(f"subnet_{c}" not in st for c in CELL_TYPES):
            raise ExportError(
                f"client {client} was never sampled, so it has no subnet of "
                f"its own; choose a client that took part"
            )
        choices = {c: [int(v) for v in st[f"subnet_{c}"].tolist()] for c in CELL_TYPES}
        alpha = {c: st[f"alpha_{c}"] for c in CELL_TYPES}
        data = client_data(dataset, partition, client)
        x, y = data.eval_x, data.eval_y
        calib, eval_on = partition.clients[client].train, "client"
        notes = [
            f"client {client}: its own subnet (the one it trained last) on the shared "
            f"supernet's weights"
        ]
        acc = evaluate(PathModel(net, choices), x, y)[1]
    net.eval()
    plans = [
        deploy.path_plan(net, cell, choices["reduce" if cell.reduction else "normal"])
        for cell in net.cells
    ]
    genotype = Genotype.from_dict(child_genotype(algo.space, choices, alpha)).to_dict()
    return Target(
        deploy.freeze(net, plans),
        True,
        eval_on,
        acc,
        calib,
        genotype,
        deploy.describe(net, plans),
        notes,
    )
