"""PerFedRLNAS (Yao and Li 2024): one shared supernet, one architecture policy per client.

- Client state (persistent, checkpointed): its policy ``alpha_normal``/``alpha_reduce``
  (the reduction cell's policy is its own: its score uses ``alpha_reduce``, not the
  normal cell's as in Plato's version), the policy's Adam moments and its best reward so
  far. What a round leaves for the server (score of the sampled path, reward, time)
  travels on the auxiliary channel (``ClientResult.client_aux``), not in this state.
- Client, each round it is sampled: draws one op per edge from its own softmax(alpha)
  (epsilon-greedy; in the last round its argmax subnet, so every client ends with its
  own subnet), trains only that path of the shared supernet and takes the reward
  accuracy on a held-out part of its train split (``SubnetSearch.train_subnet``), and
  reports its personalised subnet's accuracy on its eval split (``local_acc``); the
  server's ``personal_acc`` (Table 5) scores every client's argmax subnet the same way.
- Server, once the round is complete (``server_client_step``): for each of the round's
  clients, reward R_i = acc_i - mean over clients of their best accuracies
  - lambda_time * (time_i - fastest time of the round); the client's policy moves by
  Adam ascent along R_i * grad log p(a_i).
- Supernet: the subnet updates are folded in as in FedRLNAS (each op by the samples of
  the clients that trained it). The global model's alpha is the sample-weighted mean of
  the round's clients' policies; its argmax child gives the global accuracy.

Time. A measured wall time would make the reward (and so the run) depend on the machine
and the rank count; the simulator uses a deterministic cost instead: samples trained x
parameters on the sampled path / 1e6 (a device of fixed speed), so the same seed gives
the same run and -n 1 equals -n 3.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..flat import State
from ..nas import CELL_TYPES
from ..nas.single_path import path_forward
from ..seeding import torch_rng
from .base import ClientData, ClientResult, GlobalModel, RoundContext
from .common.meta import MetaSearch
from .common.policy import adam_ascent, choices_of, onehot, score
from .common.steploop import DeviceSums, step_loop
from .common.streams import BatchStream
from .common.subnet import PathModel, SubnetSearch, op_keys
from .common.supernet import state_of
from .common.tasks import task_pairs
from .common.training import evaluate


def _path_loss(net, x: torch.Tensor, y: torch.Tensor, choices):
    return lambda: F.cross_entropy(path_forward(net, x, choices), y)


def path_params(net, choices) -> int:
    """Parameters a forward through the path touches (ops on the path and the rest)."""
    keys = op_keys(net)
    total = 0
    for name, p in net.named_parameters():
        if name.startswith("alpha_") or name.startswith("beta_"):
            continue
        where = keys.get(name)
        if where is None or choices[where[0]][where[1]] == where[2]:
            total += p.numel()
    return total


def personal_rewards(
    acc: dict[int, float], best: dict[int, float], time: dict[int, float], lam: float
) -> dict[int, float]:
    """R_i = acc_i - mean_j best_j - lam * (time_i - min time) for the round's clients
    (``acc``, ``time``); ``best`` holds every known client's best accuracy."""
    mean_best = sum(best.values()) / len(best)
    fastest = min(time.values())
    return {c: acc[c] - mean_best - lam * (time[c] - fastest) for c in acc}


class PerFedRLNAS(SubnetSearch):
    name = "perfedrlnas"
    client_metrics = ("train_loss", "reward", "local_acc", "time_cost")
    purpose = "perfedrlnas"

    @property
    def conf(self):
        return self.cfg.algorithm.perfedrlnas

    def aux_shapes(self, model: GlobalModel) -> dict[str, tuple[int, ...]]:
        return {f"rl.count_{c}": tuple(model.state[f"alpha_{c}"].shape) for c in CELL_TYPES}

    def initial_client_state(self, model: GlobalModel) -> State:
        st: State = {
            f"alpha_{c}": torch.zeros_like(model.state[f"alpha_{c}"], dtype=torch.float64)
            for c in CELL_TYPES
        }
        st["best_acc"] = torch.zeros((), dtype=torch.float64)
        st["seen"] = torch.zeros((), dtype=torch.float64)
        return st

    # ------------------------------------------------------------ client
    @staticmethod
    def own_subnet(policy: State, masks) -> dict[str, list[int]]:
        """A client's own subnet: the argmax of its policy over the ops still alive."""
        return {
            c: policy[f"alpha_{c}"].masked_fill(~masks[c].bool(), float("-inf")).argmax(1).tolist()
            for c in CELL_TYPES
        }

    def sample(self, policy: State, masks, ctx: RoundContext, cid: int):
        if ctx.round + 1 == ctx.rounds:  # the client's own subnet: its policy's argmax
            return self.own_subnet(policy, masks)
        g = torch_rng(ctx.seed, ctx.round, cid, f"{self.purpose}.arch")
        return choices_of(
            {c: policy[f"alpha_{c}"] for c in CELL_TYPES}, masks, g, self.conf.epsilon
        )

    def client_update(
        self, model: GlobalModel, data: ClientData, ctx: RoundContext, client_state: State | None
    ) -> ClientResult:
        a = self.cfg.algorithm
        policy = (
            dict(client_state) if client_state is not None else self.initial_client_state(model)
        )
        net = self.net_of(model.spec, model.state)
        masks = self.masks_of(net)
        choices = self.sample(policy, masks, ctx, data.client_id)
        # the path's parameter count is the same before and after training
        tr, loss, reward, local_acc = self.train_subnet(net, choices, data, ctx)
        cost = a.local_epochs * len(tr) * path_params(net, choices) / 1e6
        state = state_of(net)
        aux: State = {}
        mine: State = {
            "acc": torch.tensor(reward, dtype=torch.float64),
            "time": torch.tensor(cost, dtype=torch.float64),
        }
        for c in CELL_TYPES:
            state[f"alpha_{c}"] = policy[f"alpha_{c}"].to(state[f"alpha_{c}"].dtype)
            aux[f"rl.count_{c}"] = onehot(policy[f"alpha_{c}"].shape, choices[c])
            mine[f"score_{c}"] = score(policy[f"alpha_{c}"], masks[c], choices[c])
            policy[f"subnet_{c}"] = torch.tensor(choices[c], dtype=torch.float64)
        policy["local_acc"] = torch.tensor(local_acc, dtype=torch.float64)
        return ClientResult(
            {k: state[k] for k in model.state},
            float(data.num_train),
            {"train_loss": loss, "reward": reward, "local_acc": local_acc, "time_cost": cost},
            client_state=policy,
            aux=aux,
            client_aux=mine,
        )

    # ------------------------------------------------------------ server
    def server_client_step(
        self,
        states: dict[int, State],
        clients: list[int],
        aux: dict[int, State],
        metrics: dict[str, float],
        ctx: RoundContext,
    ) -> dict[int, State]:
        f = self.conf
        acc = {c: float(aux[c]["acc"]) for c in clients}
        best = {
            c: max(float(s["best_acc"]), float(aux[c]["acc"])) if c in aux else float(s["best_acc"])
            for c, s in states.items()
        }
        time = {c: float(aux[c]["time"]) for c in clients}
        rewards = personal_rewards(acc, best, time, f.time_lambda)
        out: dict[int, State] = {}
        for c in clients:
            st = dict(states[c])
            for cell in CELL_TYPES:
                st[f"alpha_{cell}"] = adam_ascent(
                    st[f"alpha_{cell}"],
                    rewards[c] * aux[c][f"score_{cell}"],
                    st,
                    f"adam_{cell}.",
                    f.arch_lr,
                    f.arch_betas,
                )
            st["best_acc"] = torch.tensor(best[c], dtype=torch.float64)
            st["seen"] = st["seen"] + 1
            st["last_reward"] = torch.tensor(rewards[c], dtype=torch.float64)
            out[c] = st
        r = list(rewards.values())
        subnets = {
            tuple(v for x in CELL_TYPES for v in states[c][f"subnet_{x}"].tolist()) for c in clients
        }
        metrics.update(
            personal_reward=sum(r) / len(r),
            mean_best_acc=sum(best.values()) / len(best),
            distinct_subnets=float(len(subnets)),
        )
        return out

    def server_step(
        self, model: GlobalModel, averaged: State, metrics: dict[str, float], ctx: RoundContext
    ) -> GlobalModel:
        state = self.fold_round(model, averaged)
        for c in CELL_TYPES:  # the mean policy of the round's clients
            state[f"alpha_{c}"] = averaged[f"alpha_{c}"]
        metrics.update(lr=self.lr(ctx.round), **self.arch_metrics(model.spec, state, 1.0))
        return GlobalModel(model.spec, state, model.server_state)

    def client_subnet(self, client_state: State) -> dict[str, list[int]]:
        """A client's own subnet: the argmax of its policy."""
        return {c: client_state[f"alpha_{c}"].argmax(1).tolist() for c in CELL_TYPES}

    def personal_accuracy(
        self, model: GlobalModel, data: ClientData, client_state: State | None, ctx: RoundContext
    ) -> float:
        """Table 5: the client's own subnet - the argmax of its policy over the ops still in
        the supernet - with the shared supernet's current weights, on its eval split. A
        client never sampled has no policy of its own: the global model (the argmax child
        of the mean policy)."""
        if client_state is None:
            return self.evaluate(model, data.eval_x, data.eval_y)[1]
        net = self.net_of(model.spec, model.state)
        choices = self.own_subnet(client_state, self.masks_of(net))
        return evaluate(PathModel(net, choices), data.eval_x, data.eval_y)[1]


class MetaPerFedRLNAS(PerFedRLNAS):
    """PerFedRLNAS with FedMetaNAS's local search and soft pruning.

    Local step: the sampled path's weights are trained by FedMetaNAS's first-order MAML
    (``common.meta.MetaSearch.learners``: support/query task pairs, M inner steps, meta
    update; ops off the path get no gradient and are not touched). The policies stay the
    server's REINFORCE business: no gradient steps a logit on a client and the policies'
    Adam already keeps its moments (in each client's state), so ``arch_update: server``
    (``common.server_opt``) does not apply and the config refuses its keys
    (``fedmetanas.MetaSearchPolicyConfig``). Server: after the fold, FedMetaNAS's soft pruning
    (``common.pruning``, ops only) on the mean policy of the round's clients (its
    temperature and threshold schedule): an op pruned there leaves the supernet and
    every client's sampling for good.
    """

    name = "meta_perfedrlnas"

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.meta = MetaSearch(cfg)
        self.pruning = self.meta.pruning(combos=False)  # the paths have no combination logits

    def local_train(
        self, net, choices, data: ClientData, tr: torch.Tensor, ctx: RoundContext
    ) -> float:
        a, f = self.cfg.algorithm, self.cfg.algorithm.fedmetanas
        net.train()
        task, meta = self.meta.learners(net.weight_parameters(), [], ctx.round)
        g = torch_rng(ctx.seed, ctx.round, data.client_id, f"{self.purpose}.tasks")
        # the path is chosen before the loop; every draw staged before it, in the loop's
        # order: an epoch's task pairs, then each pair's augmentation (``common.streams``)
        batches = BatchStream(data.train_x[tr], data.train_y[tr], data.augment)
        for _ in range(a.local_epochs):
            for s_idx, q_idx in task_pairs(len(tr), a.batch_size, f.tasks_per_epoch, g):
                batches.add(s_idx, g)
                batches.add(q_idx, g)
        batches.stage()
        steps = len(batches) // 2
        sums = DeviceSums(1, data.train_x.device)  # the query losses
        with step_loop():
            for i in range(steps):
                xs, ys = batches.batch(2 * i)
                xq, yq = batches.batch(2 * i + 1)
                _, q_loss = meta.update(
                    task, _path_loss(net, xs, ys, choices), _path_loss(net, xq, yq, choices)
                )
                sums.add(q_loss)
        (total,) = sums.read()
        return total / max(steps, 1)

    def server_step(
        self, model: GlobalModel, averaged: State, metrics: dict[str, float], ctx: RoundContext
    ) -> GlobalModel:
        out = super().server_step(model, averaged, metrics, ctx)
        metrics["temperature"] = self.meta.temperature(ctx.round)
        if (gaps := self.pruning.gaps_after(ctx.round + 1)) is None:
            return out
        spec, pruned = self.pruning.step(self.space, model.spec, out.state, gaps, ctx.round)
        metrics.update(pruned)
        if spec is model.spec:
            return out
        state = self.restrict(spec, out.state)
        metrics.update(self.arch_metrics(spec, state, 1.0))
        return GlobalModel(spec, state, out.server_state)
