"""What the single-path methods share (FedDSNAS, FedRLNAS, PerFedRLNAS and the meta
variant): the argmax child (evaluated every round, the final model after the last), a
module running one fixed path, training only that path, the client pipeline of the
subnet-sampling methods (hold out, train the path, measure the reward), and folding the
subnet updates into the supernet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ...flat import State
from ...nas import CELL_TYPES, ArchSpec, argmax_choices, child_spec
from ...nas.single_path import Choices, path_forward
from ...seeding import torch_rng
from ..base import ClientData, GlobalModel, RoundContext
from .maml import clip_present, foreach
from .schedules import cosine_lr
from .steploop import DeviceSums, step_loop
from .streams import BatchStream
from .supernet import SupernetMethod
from .tasks import holdout
from .training import evaluate, minibatches


class PathModel(nn.Module):
    """A search network restricted to one fixed path (for evaluation loops)."""

    def __init__(self, net: nn.Module, choices: Choices):
        super().__init__()
        self.net, self.choices = net, choices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return path_forward(self.net, x, self.choices)


class SinglePathMethod(SupernetMethod):
    """A supernet whose nodes sum their edges, searched one path at a time; its global
    model is evaluated as the argmax child, which becomes the final model (with the
    supernet's weights, no retraining) after the last round."""

    inputs = "sum"

    def stage(self, round_: int) -> str:
        return "search"

    def lr(self, round_: int) -> float:
        f = self.conf
        return cosine_lr(round_, self.cfg.run.rounds, f.lr, f.lr_min)

    @property
    def conf(self):
        """The method's config section."""
        raise NotImplementedError

    def argmax_model(self, net) -> PathModel:
        return PathModel(net, argmax_choices(net))

    def derive_child(self, spec: dict, state: State) -> tuple[dict, State]:
        """The argmax child of the state's alphas with the supernet's weights."""
        net = self.build(spec)
        net.load_state_dict(state, strict=False)
        child = child_spec(
            self.space,
            ArchSpec.of(spec),
            argmax_choices(net),
            {c: state[f"alpha_{c}"] for c in CELL_TYPES},
        )
        return child.to_dict(), self.restrict(child, state)

    def derives_after(self, spec: dict, round_: int) -> bool:
        """Whether the argmax child is derived after 0-based ``round_`` (the last)."""
        return ArchSpec.of(spec).genotype is None and round_ + 1 == self.cfg.run.rounds


class SubnetSearch(SinglePathMethod):
    """Base of the methods that train one sampled subnet of a supernet per client."""

    purpose: str  # the prefix of the method's random streams

    def net_of(self, spec: dict, state: State):
        net = self.build(spec)
        names = net.state_dict().keys()
        missing = [k for k in names if k not in state]
        if missing:
            raise ValueError(f"global state does not fit the network of its spec: {missing[:3]}")
        net.load_state_dict({k: state[k] for k in names})
        return net

    def masks_of(self, net) -> dict[str, torch.Tensor]:
        """The op masks on the CPU, where the policies live and are sampled."""
        return {c: getattr(net, f"op_mask_{c}").cpu() for c in CELL_TYPES}

    def local_train(
        self, net, choices: Choices, data: ClientData, tr: torch.Tensor, ctx: RoundContext
    ) -> float:
        """SGD epochs on the path over the train indices ``tr``; the mean loss."""
        f, a = self.conf, self.cfg.algorithm
        opt = torch.optim.SGD(
            net.weight_parameters(),
            lr=self.lr(ctx.round),
            momentum=f.momentum,
            weight_decay=f.weight_decay,
        )
        g = torch_rng(ctx.seed, ctx.round, data.client_id, f"{self.purpose}.batches")
        return train_path(
            net,
            choices,
            data.train_x[tr],
            data.train_y[tr],
            opt,
            a.batch_size,
            a.local_epochs,
            g,
            f.grad_clip,
            data.augment,
        )

    def train_subnet(
        self, net, choices: Choices, data: ClientData, ctx: RoundContext
    ) -> tuple[torch.Tensor, float, float, float]:
        """The client's part of a round: hold out ``val_fraction`` of its train split,
        train the path on the rest, take the reward R = the trained path's accuracy on
        the held-out part. Returns (train indices, training loss, R, local accuracy on
        the eval split, NaN when not due)."""
        f = self.conf
        tr, va = holdout(
            data.num_train,
            f.val_fraction,
            torch_rng(ctx.seed, ctx.round, data.client_id, f"{self.purpose}.val"),
        )
        loss = self.local_train(net, choices, data, tr, ctx)
        path = PathModel(net, choices)
        _, reward = evaluate(path, data.train_x[va], data.train_y[va])
        local_acc = float("nan")
        if ctx.is_due(f.local_eval_every):
            _, local_acc = evaluate(path, data.eval_x, data.eval_y)
        return tr, loss, reward, local_acc

    def fold_round(self, model: GlobalModel, averaged: State) -> State:
        """The supernet after the round's subnet training (``fold``), each op moved by the
        clients that trained it (``rl.count_*``: the sample share of each op)."""
        net = self.build(model.spec)
        share = {c: averaged[f"rl.count_{c}"] for c in CELL_TYPES}
        return fold(model.state, averaged, op_keys(net), share, list(net.state_dict()))

    def evaluate(self, model: GlobalModel, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        if any(f"rl.count_{c}" in model.state for c in CELL_TYPES):
            # A raw FedAvg of the clients' subnet states (what the runtime offers as the
            # model "before" an architecture change; it carries the round's aux means) is
            # not a model of this method: its ops are not folded and its policy not
            # updated. The derivation itself keeps every weight, so there is no
            # before/after difference to report.
            return float("nan"), float("nan")
        return evaluate(self.argmax_model(self.net_of(model.spec, model.state)), x, y)


def op_keys(net) -> dict[str, tuple[str, int, int]]:
    """State key of every op tensor -> (cell type, edge, op index)."""
    space, out = net.space, {}
    for li, cell in enumerate(net.cells):
        kind = "reduce" if cell.reduction else "normal"
        for key, ops in cell.edges.items():
            j, i = map(int, key.split("_"))
            e = space.edge(j, i)
            for name, op in ops.items():
                k = space.primitives.index(name)
                for sub in op.state_dict():
                    out[f"cells.{li}.edges.{key}.{name}.{sub}"] = (kind, e, k)
    return out


def train_path(
    net,
    choices: Choices,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    epochs: int,
    generator: torch.Generator,
    grad_clip: float,
    augment=None,
) -> float:
    """Plain SGD epochs on one path; ops off the path keep grad None (untouched by the
    optimiser). Returns the sample-weighted mean training loss.

    The path is decided before the loop (on the host, by the caller), so the loop needs
    no host read: its draws are staged before it (``streams.BatchStream``), clipping and
    the optimiser run as ``_foreach_*`` ops and the loss is summed on the device
    (issue 27), with the same result on the CPU."""
    net.train()
    weights = net.weight_parameters()
    batches = BatchStream(x, y, augment)
    for _ in range(epochs):
        for idx in minibatches(len(y), batch_size, generator):
            batches.add(idx, generator)
    batches.stage()
    foreach(optimizer)
    sums = DeviceSums(1, x.device)  # the sample-weighted loss
    count = 0
    with step_loop():
        for i in range(len(batches)):
            xb, yb = batches.batch(i)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(path_forward(net, xb, choices), yb)
            loss.backward()
            clip_present(weights, grad_clip)
            optimizer.step()
            sums.add(loss, weight=len(yb))
            count += len(yb)
    optimizer.zero_grad(set_to_none=True)
    (total,) = sums.read()
    return total / max(count, 1)


def fold(
    old: Mapping[str, torch.Tensor],
    averaged: Mapping[str, torch.Tensor],
    keys: Mapping[str, tuple[str, int, int]],
    share: Mapping[str, torch.Tensor],
    names: Sequence[str],
) -> State:
    """The supernet after a round of subnet training.

    ``averaged`` is the sample-weighted FedAvg over all clients of their states (a client
    returns an op it did not train unchanged) and ``share[cell][e, k]`` the fraction of
    the round's samples held by clients that trained op k of edge e. Each op then moves
    by the sample-weighted mean update of the clients that trained it:
    old + (averaged - old) / share; an op nobody trained keeps its value. Tensors outside
    the ops (stem, preprocessing, classifier) are the plain average.
    """
    out: State = {}
    for name in names:
        where = keys.get(name)
        if where is None:
            out[name] = averaged[name]
            continue
        s = float(share[where[0]][where[1], where[2]])
        if s <= 0.0:
            out[name] = old[name].clone()
        elif not averaged[name].is_floating_point():
            out[name] = averaged[name]
        else:
            o = old[name].double()
            out[name] = (o + (averaged[name].double() - o) / s).to(old[name].dtype)
    return out
