"""FedRLNAS (Yao et al. 2021): the server keeps the supernet and the policy alpha; each
selected client trains one subnet sampled from softmax(alpha) and reports its update and
the subnet's validation accuracy; the server folds the subnet updates into the supernet
and moves alpha by REINFORCE.

- Sampling: one op per cell type and edge from softmax(alpha) (with probability
  ``epsilon`` per edge uniform over the ops instead), drawn from the stream
  (seed, round, client, "fedrlnas.arch"): the same draw whichever rank makes it, so it
  is the server's draw for that client, made where the client runs.
- Client: holds out ``val_fraction`` of its train split, trains only the subnet's path
  with SGD (ops off the path keep grad None: no momentum or weight decay touches them),
  and takes the reward R = the trained subnet's accuracy on the held-out part.
- Fold: each op moves by the sample-weighted mean update of the clients that trained it
  (``subnet.fold``); an op chosen by one small client is not shrunk towards its old
  value by the clients that did not train it (as Plato's fusion does).
- REINFORCE: alpha <- Adam ascent on mean_i (R_i - b) * grad log p(a_i), b a moving
  average of the rounds' mean rewards (started at the first round's mean).

How the per-client values reach the server: on the auxiliary channel
(``ClientResult.aux``), which the runtime averages like the state, weighted by sample
counts. Every client sends ``rl.*`` entries there: its op indicator (-> the sample share
of each op), and R, score and R * score divided by its sample count (-> sums over clients,
whose ratio to the summed 1/n is the plain mean over clients). The global model holds
none of them.

The argmax child of alpha is the global model that is evaluated; it becomes the final
model (with its supernet weights, no retraining) after the last round.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import option
from ..flat import State
from ..nas import genotype_str
from ..nas.single_path import CELL_TYPES, argmax_choices
from ..seeding import torch_rng
from .base import ClientData, ClientResult, GlobalModel, RoundContext
from .feddsnas import PathModel, child_genotype, child_masks
from .subnet import adam_ascent, choices_of, fold, onehot, op_keys, score, train_path
from .supernet import SupernetMethod, state_of
from .training import cosine_lr, evaluate


@dataclass(kw_only=True)
class FedRLNASConfig:
    lr: float = option(0.025, "Weights: client SGD learning rate (cosine schedule over "
                               "run.rounds).", gt=0.0)
    lr_min: float = option(0.001, "Weights: learning rate in the last round.", ge=0.0)
    momentum: float = option(0.9, "Weights: SGD momentum (ops off the sampled path are not "
                                   "touched).", ge=0.0, lt=1.0)
    weight_decay: float = option(3e-4, "Weights: SGD weight decay (sampled ops only).", ge=0.0)
    grad_clip: float = option(5.0, "Weights: gradient norm clip (0 = off).", ge=0.0)
    epsilon: float = option(0.0, "epsilon-greedy sampling: per edge, with this probability a "
                                  "uniformly random op instead of a draw from softmax(alpha).",
                             ge=0.0, le=1.0)
    val_fraction: float = option(0.2, "Fraction of each client's train split held out to "
                                       "measure the reward (the subnet's accuracy).", gt=0.0,
                                  lt=1.0)
    arch_lr: float = option(0.05, "Policy alpha: Adam learning rate of the REINFORCE ascent.",
                             gt=0.0)
    arch_betas: list[float] = option([0.5, 0.999], "Policy alpha: Adam betas.", min_len=2)
    baseline_decay: float = option(0.9, "Reward baseline b <- decay * b + (1 - decay) * mean "
                                         "reward of the round (started at the first round's).",
                                    ge=0.0, lt=1.0)
    local_eval_every: int = option(1, "Evaluate the clients' trained subnets on their eval "
                                       "splits every N rounds (and in the last).", ge=1)


RL_KEYS = ("rl.inv_n", "rl.reward")


def holdout(n: int, fraction: float, generator: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) index split of range(n); validation at least one sample and,
    with n > 1, never all of them."""
    perm = torch.randperm(n, generator=generator)
    v = min(max(1, round(fraction * n)), n - 1) if n > 1 else 1
    return (perm[v:] if n > 1 else perm), perm[:v]


class SubnetSearch(SupernetMethod):
    """Base of the methods that train one sampled subnet of a supernet per client."""

    inputs = "sum"

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

    def evaluate(self, model: GlobalModel, x: torch.Tensor, y: torch.Tensor
                 ) -> tuple[float, float]:
        if any(f"rl.count_{c}" in model.state for c in CELL_TYPES):
            # A raw FedAvg of the clients' subnet states (what the runtime offers as the
            # model "before" an architecture change; it carries the round's aux means) is
            # not a model of this method: its ops are not folded and its policy not
            # updated. The derivation itself keeps every weight, so there is no
            # before/after difference to report.
            return float("nan"), float("nan")
        net = self.net_of(model.spec, model.state)
        return evaluate(PathModel(net, argmax_choices(net)), x, y)


class FedRLNAS(SubnetSearch):
    name = "fedrlnas"
    client_metrics = ("train_loss", "reward", "local_acc")
    purpose = "fedrlnas"

    @property
    def conf(self):
        return self.cfg.algorithm.fedrlnas

    def stage(self, round_: int) -> str:
        return "search"

    def lr(self, round_: int) -> float:
        f = self.conf
        return cosine_lr(round_, self.cfg.run.rounds, f.lr, f.lr_min)

    def init_global(self) -> GlobalModel:
        spec = self.initial_spec()
        state = state_of(self.fresh(spec))
        return GlobalModel(spec, state,
                           {"baseline": torch.zeros((), dtype=torch.float64),
                            "baseline_set": torch.zeros((), dtype=torch.float64)})

    def aux_shapes(self, model: GlobalModel) -> dict[str, tuple[int, ...]]:
        out: dict[str, tuple[int, ...]] = {k: () for k in RL_KEYS}
        for c in CELL_TYPES:
            shape = tuple(model.state[f"alpha_{c}"].shape)
            for part in ("count", "score", "rscore"):
                out[f"rl.{part}_{c}"] = shape
        return out

    # ------------------------------------------------------------ client
    def client_update(self, model: GlobalModel, data: ClientData, ctx: RoundContext,
                      client_state: State | None) -> ClientResult:
        f, a = self.conf, self.cfg.algorithm
        net = self.net_of(model.spec, model.state)
        masks = self.masks_of(net)
        alpha = {c: model.state[f"alpha_{c}"] for c in CELL_TYPES}
        choices = choices_of(alpha, masks, torch_rng(ctx.seed, ctx.round, data.client_id,
                                                     f"{self.purpose}.arch"), f.epsilon)
        tr, va = holdout(data.num_train, f.val_fraction,
                         torch_rng(ctx.seed, ctx.round, data.client_id, f"{self.purpose}.val"))
        opt = torch.optim.SGD(net.weight_parameters(), lr=self.lr(ctx.round),
                              momentum=f.momentum, weight_decay=f.weight_decay)
        g = torch_rng(ctx.seed, ctx.round, data.client_id, f"{self.purpose}.batches")
        loss = train_path(net, choices, data.train_x[tr], data.train_y[tr], opt, a.batch_size,
                          a.local_epochs, g, f.grad_clip, data.augment)
        path = PathModel(net, choices)
        _, reward = evaluate(path, data.train_x[va], data.train_y[va])
        local_acc = float("nan")
        if ctx.is_due(f.local_eval_every):
            _, local_acc = evaluate(path, data.eval_x, data.eval_y)
        n = float(data.num_train)
        state = state_of(net)
        aux = {"rl.inv_n": torch.tensor(1.0 / n, dtype=torch.float64),
               "rl.reward": torch.tensor(reward / n, dtype=torch.float64)}
        for c in CELL_TYPES:
            s = score(alpha[c], masks[c], choices[c])
            aux[f"rl.count_{c}"] = onehot(s.shape, choices[c])
            aux[f"rl.score_{c}"] = s / n
            aux[f"rl.rscore_{c}"] = s * (reward / n)
        return ClientResult({k: state[k] for k in model.state}, n,
                            {"train_loss": loss, "reward": reward, "local_acc": local_acc},
                            aux=aux)

    # ------------------------------------------------------------ server
    def server_step(self, model: GlobalModel, averaged: State, metrics: dict[str, float],
                    ctx: RoundContext) -> GlobalModel:
        f = self.conf
        net = self.build(model.spec)
        names = list(net.state_dict())
        share = {c: averaged[f"rl.count_{c}"] for c in CELL_TYPES}
        state = fold(model.state, averaged, op_keys(net), share, names)
        # REINFORCE on alpha: mean over clients of (R_i - b) * score_i
        inv = float(averaged["rl.inv_n"])
        mean_r = float(averaged["rl.reward"]) / inv
        server = dict(model.server_state)
        b = float(server["baseline"]) if float(server["baseline_set"]) else mean_r
        for c in CELL_TYPES:
            grad = (averaged[f"rl.rscore_{c}"] - b * averaged[f"rl.score_{c}"]) / inv
            state[f"alpha_{c}"] = adam_ascent(model.state[f"alpha_{c}"], grad, server,
                                              f"adam_{c}.", f.arch_lr, f.arch_betas)
        server["baseline"] = torch.tensor(f.baseline_decay * b + (1 - f.baseline_decay)
                                          * mean_r, dtype=torch.float64)
        server["baseline_set"] = torch.ones((), dtype=torch.float64)
        metrics.update(lr=self.lr(ctx.round), mean_reward=mean_r, baseline=b)
        spec = model.spec
        if spec.get("genotype") is None and ctx.round + 1 == self.cfg.run.rounds:
            spec, state = self.derive_child(spec, state)
        metrics.update(self.arch_metrics(spec, state, 1.0))
        return GlobalModel(spec, state, server)

    def derive_child(self, spec: dict, state: State) -> tuple[dict, State]:
        """The argmax child of alpha with the supernet's weights (no retraining)."""
        net = self.net_of(spec, state)
        choices = argmax_choices(net)
        genotype = child_genotype(self.space, choices,
                                  {c: state[f"alpha_{c}"] for c in CELL_TYPES})
        genotype["text"] = genotype_str(genotype)
        spec = {**spec, "masks": child_masks(self.space, choices, spec["masks"]),
                "genotype": genotype}
        return spec, {k: state[k] for k in self.build(spec).state_dict()}
