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
- Fold: each op moves by the sample-weighted mean update of the clients that trained
  it (``common.subnet.fold``); an op chosen by one small client is not shrunk towards
  its old value by the clients that did not train it (as Plato's fusion does).
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

import torch

from ..flat import State
from ..nas import CELL_TYPES
from ..seeding import torch_rng
from .base import ClientData, ClientResult, GlobalModel, RoundContext
from .common.policy import adam_ascent, choices_of, onehot, score
from .common.subnet import SubnetSearch
from .common.supernet import state_of

RL_KEYS = ("rl.inv_n", "rl.reward")


class FedRLNAS(SubnetSearch):
    name = "fedrlnas"
    client_metrics = ("train_loss", "reward", "local_acc")
    purpose = "fedrlnas"

    @property
    def conf(self):
        return self.cfg.algorithm.fedrlnas

    def init_global(self) -> GlobalModel:
        zero = torch.zeros((), dtype=torch.float64)
        return super().init_global({"baseline": zero, "baseline_set": zero.clone()})

    def aux_shapes(self, model: GlobalModel) -> dict[str, tuple[int, ...]]:
        out: dict[str, tuple[int, ...]] = {k: () for k in RL_KEYS}
        for c in CELL_TYPES:
            shape = tuple(model.state[f"alpha_{c}"].shape)
            for part in ("count", "score", "rscore"):
                out[f"rl.{part}_{c}"] = shape
        return out

    # ------------------------------------------------------------ client
    def client_update(
        self, model: GlobalModel, data: ClientData, ctx: RoundContext, client_state: State | None
    ) -> ClientResult:
        net = self.net_of(model.spec, model.state)
        masks = self.masks_of(net)
        alpha = {c: model.state[f"alpha_{c}"] for c in CELL_TYPES}
        choices = choices_of(
            alpha,
            masks,
            torch_rng(ctx.seed, ctx.round, data.client_id, f"{self.purpose}.arch"),
            self.conf.epsilon,
        )
        _, loss, reward, local_acc = self.train_subnet(net, choices, data, ctx)
        n = float(data.num_train)
        state = state_of(net)
        aux = {
            "rl.inv_n": torch.tensor(1.0 / n, dtype=torch.float64),
            "rl.reward": torch.tensor(reward / n, dtype=torch.float64),
        }
        for c in CELL_TYPES:
            s = score(alpha[c], masks[c], choices[c])
            aux[f"rl.count_{c}"] = onehot(s.shape, choices[c])
            aux[f"rl.score_{c}"] = s / n
            aux[f"rl.rscore_{c}"] = s * (reward / n)
        return ClientResult(
            {k: state[k] for k in model.state},
            n,
            {"train_loss": loss, "reward": reward, "local_acc": local_acc},
            aux=aux,
        )

    # ------------------------------------------------------------ server
    def server_step(
        self, model: GlobalModel, averaged: State, metrics: dict[str, float], ctx: RoundContext
    ) -> GlobalModel:
        f = self.conf
        state = self.fold_round(model, averaged)
        # REINFORCE on alpha: mean over clients of (R_i - b) * score_i
        inv = float(averaged["rl.inv_n"])
        mean_r = float(averaged["rl.reward"]) / inv
        server = dict(model.server_state)
        b = float(server["baseline"]) if float(server["baseline_set"]) else mean_r
        for c in CELL_TYPES:
            grad = (averaged[f"rl.rscore_{c}"] - b * averaged[f"rl.score_{c}"]) / inv
            state[f"alpha_{c}"] = adam_ascent(
                model.state[f"alpha_{c}"], grad, server, f"adam_{c}.", f.arch_lr, f.arch_betas
            )
        server["baseline"] = torch.tensor(
            f.baseline_decay * b + (1 - f.baseline_decay) * mean_r, dtype=torch.float64
        )
        server["baseline_set"] = torch.ones((), dtype=torch.float64)
        metrics.update(lr=self.lr(ctx.round), mean_reward=mean_r, baseline=b)
        spec = model.spec
        if self.derives_after(spec, ctx.round):
            spec, state = self.derive_child(spec, state)
        metrics.update(self.arch_metrics(spec, state, 1.0))
        return GlobalModel(spec, state, server)
