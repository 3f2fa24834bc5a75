"""FedPNAS (Hoang and Kingsford 2021): personalised search with a shared base and
per-client personalised cells; meta-FedPNAS: the same with FedMetaNAS's local search.

The network is the eq. 8 search space (``SearchNetwork``, Gumbel-softmax over ops and
input combinations, SNAS-style: relaxed samples, temperature annealed over the rounds).
Its last ``personal_layers`` cells and the classifier form the personalised part; the
stem, the other cells and the global alphas/betas the base.

- Client state (persistent, checkpointed, restored on resume): the personalised part's
  weights and its own architecture logits (``palpha_*``, ``pbeta_*``), which mix the
  personalised cells in place of the global ones. A client seen for the first time
  starts from the global model's personalised part and the global logits.
- FedPNAS local step, per support/query task pair (``common.tasks.task_pairs``): the
  personalised part (weights and logits) takes ``inner_steps`` SGD steps on the support
  task and keeps them; the base takes the first-order meta step: the query loss's
  gradient at the adapted personalised part (SGD with momentum for the weights, Adam
  for the base logits).
- meta-FedPNAS local step: FedMetaNAS's first-order MAML on all parameters (base and
  personalised weights and logits: ``common.meta.MetaSearch.learners``, eq. 9-10, the
  fedmetanas config section), and on the server its temperature schedule and soft
  pruning of the global logits (the masks apply to every cell, the personalised ones
  included).
- Server: FedAvg of the whole state; the averaged personalised part is what new clients
  start from and what the global accuracy uses (base + averaged personalised part,
  global logits). ``local_acc`` is each client's personalised model on its eval split
  after its local step; ``personal_acc`` (Table 5, every client on the server) is the
  same model - the current global base with the client's kept personalised part.
- ``arch_update: server`` (``common.server_opt``, Reddi et al. 2021; FedPNAS's section,
  meta-FedPNAS's fedmetanas section): the shared logits (``alpha_*``, ``beta_*``), which
  FedPNAS's base steps with a per-client Adam rebuilt every round (meta-FedPNAS: its meta
  optimiser), take plain SGD steps at ``client_arch_lr`` on the clients instead, and the
  server steps their averaged change with FedAdam/FedYogi moments kept in its state
  (meta-FedPNAS: after the warm-up, before soft pruning, which reads the stepped logits).
  The personalised logits never reach the server: they keep the clients' own steps.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..flat import State
from ..nas import CELL_TYPES, SearchNetwork, temperature_at
from ..seeding import torch_rng
from .base import ClientData, ClientResult, GlobalModel, RoundContext
from .common.maml import TaskLearner, clip_present, foreach
from .common.meta import MetaSearch
from .common.server_opt import ServerArchConfig, ServerArchOptimizer
from .common.steploop import DeviceSums, step_loop
from .common.streams import BatchStream, GumbelStream
from .common.supernet import GumbelSupernetMethod, state_of
from .common.tasks import task_pairs
from .common.training import evaluate

ARCH_NAMES = ("alpha_normal", "alpha_reduce", "beta_normal", "beta_reduce")


def split_forward(
    net: SearchNetwork, x: torch.Tensor, personal: dict[str, torch.Tensor], first_personal: int
) -> torch.Tensor:
    """Forward with the global logits for cells before ``first_personal`` and the
    personalised logits (``palpha_*``, ``pbeta_*``) from there on."""
    noisy = net.training
    base = {c: net.mixing_weights(c, noisy) for c in CELL_TYPES}
    pers = {
        c: net.mixing_weights(c, noisy, personal[f"palpha_{c}"], personal[f"pbeta_{c}"])
        for c in CELL_TYPES
    }
    return net(x, lambda layer, kind: (pers if layer >= first_personal else base)[kind])


class SplitModel(nn.Module):
    def __init__(self, net: SearchNetwork, personal: dict[str, torch.Tensor], first: int):
        super().__init__()
        self.net, self.personal, self.first = net, personal, first

    def forward(self, x):
        return split_forward(self.net, x, self.personal, self.first)


class FedPNAS(GumbelSupernetMethod):
    name = "fedpnas"
    client_metrics = ("train_loss", "support_loss", "local_acc")

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.arch_opt = ServerArchOptimizer(self.arch_conf)

    @property
    def conf(self):
        return self.cfg.algorithm.fedpnas

    @property
    def arch_conf(self) -> ServerArchConfig:
        """The section that says who steps the shared logits (``arch_update``)."""
        return self.conf

    def stage(self, round_: int) -> str:
        return "search"

    @property
    def first_personal(self) -> int:
        return max(self.cfg.model.darts.layers - self.conf.personal_layers, 0)

    def is_personal(self, key: str) -> bool:
        if key.startswith("classifier."):
            return True
        if key.startswith("cells."):
            return int(key.split(".")[1]) >= self.first_personal
        return False

    def temperature(self, round_: int) -> float:
        f = self.conf
        return temperature_at(
            round_, self.cfg.run.rounds, f.temperature_start, f.temperature_end, "exponential", 0.01
        )

    def init_global(self) -> GlobalModel:
        model = super().init_global(
            {"temperature": torch.tensor(self.temperature(0), dtype=torch.float64)}
        )
        model.server_state.update(self.arch_opt.init_state(model.state))
        return model

    # ------------------------------------------------------------ client
    def personal_state(self, model: GlobalModel, client_state: State | None) -> State:
        """The client's stored personalised part, or the global one for a new client.
        Entries of ops pruned since the client was last seen are dropped."""
        net = self.build(model.spec)
        names = [k for k in net.state_dict() if self.is_personal(k)]
        src = client_state if client_state is not None else model.state
        out = {k: (src[k] if k in src else model.state[k]).clone() for k in names}
        for c in CELL_TYPES:
            for kind in ("alpha", "beta"):
                k = f"p{kind}_{c}"
                out[k] = (
                    (client_state[k] if client_state is not None else model.state[f"{kind}_{c}"])
                    .clone()
                    .float()
                )
        return out

    def client_update(
        self, model: GlobalModel, data: ClientData, ctx: RoundContext, client_state: State | None
    ) -> ClientResult:
        a = self.cfg.algorithm
        net = self._net(model)
        mine = self.personal_state(model, client_state)  # private copies
        logits = ("palpha_", "pbeta_")
        net.load_state_dict(
            {k: v for k, v in mine.items() if not k.startswith(logits)}, strict=False
        )
        personal = {
            k: nn.Parameter(v.to(self.device)) for k, v in mine.items() if k.startswith(logits)
        }
        net.train()
        named = dict(net.named_parameters())
        base_w = [p for k, p in named.items() if k not in ARCH_NAMES and not self.is_personal(k)]
        pers_w = [p for k, p in named.items() if k not in ARCH_NAMES and self.is_personal(k)]
        base_a, pers_a = net.arch_parameters(), list(personal.values())
        step, forwards = self.local_step(base_w, pers_w, base_a, pers_a, ctx.round)
        g_tasks = torch_rng(ctx.seed, ctx.round, data.client_id, f"{self.name}.tasks")
        first = self.first_personal
        # every draw staged before the loop, in the loop's order (``common.streams``): an
        # epoch's task pairs, then each pair's augmentation (the same generator); the
        # Gumbel noise of every split forward (two mixture forwards' worth: the global
        # logits', then the personalised ones')
        batches = BatchStream(data.train_x, data.train_y, data.augment)
        for _ in range(a.local_epochs):
            pairs = task_pairs(len(data.train_y), a.batch_size, self.tasks_per_epoch, g_tasks)
            for s_idx, q_idx in pairs:
                batches.add(s_idx, g_tasks)
                batches.add(q_idx, g_tasks)
        batches.stage()
        steps = len(batches) // 2
        g_noise = torch_rng(ctx.seed, ctx.round, data.client_id, f"{self.name}.gumbel")
        noise = GumbelStream(net, g_noise, 2 * forwards * steps)
        net.set_sampling(self.temperature(ctx.round), noise)

        def loss(xb, yb):
            return lambda: F.cross_entropy(split_forward(net, xb, personal, first), yb)

        sums = DeviceSums(2, data.train_x.device)  # (support, query) losses
        with step_loop():
            for i in range(steps):
                xs, ys = batches.batch(2 * i)
                xq, yq = batches.batch(2 * i + 1)
                sums.add(*step(loss(xs, ys), loss(xq, yq)))
        s_sum, q_sum = sums.read()
        local_acc = float("nan")
        every = self.local_eval_every
        if ctx.is_due(every):
            _, local_acc = evaluate(SplitModel(net, personal, first), data.eval_x, data.eval_y)
        state = state_of(net)
        kept = {k: v for k, v in state.items() if self.is_personal(k)}
        kept.update({k: p.detach().clone() for k, p in personal.items()})
        return ClientResult(
            state,
            float(data.num_train),
            {"train_loss": q_sum / steps, "support_loss": s_sum / steps, "local_acc": local_acc},
            client_state=kept,
        )

    def personal_model(self, model: GlobalModel, client_state: State | None) -> SplitModel:
        """The client's personalised model: the current global base with its own
        personalised part (cells and classifier weights, their logits); for a client never
        sampled, the global model's own personalised part - the global model."""
        net = self._net(model)
        mine = self.personal_state(model, client_state)
        logits = ("palpha_", "pbeta_")
        net.load_state_dict(
            {k: v for k, v in mine.items() if not k.startswith(logits)}, strict=False
        )
        # evaluated like the global model: no Gumbel noise, at the server's temperature
        net.set_sampling(float(model.server_state.get("temperature", 1.0)), None)
        personal = {k: v.to(self.device) for k, v in mine.items() if k.startswith(logits)}
        return SplitModel(net, personal, self.first_personal)

    def personal_accuracy(
        self, model: GlobalModel, data: ClientData, client_state: State | None, ctx: RoundContext
    ) -> float:
        """Table 5: the client's personalised model (``personal_model``) on its eval split."""
        return evaluate(self.personal_model(model, client_state), data.eval_x, data.eval_y)[1]

    @property
    def tasks_per_epoch(self) -> int:
        return self.conf.tasks_per_epoch

    @property
    def local_eval_every(self) -> int:
        return self.conf.local_eval_every

    def local_step(self, base_w, pers_w, base_a, pers_a, round_: int):
        """FedPNAS: the personalised part adapts on the support task and keeps it; the
        base takes the query gradient at the adapted point (first-order meta step).
        Returns (the step: support and query loss closures -> their losses, detached, on
        the device; the forwards a step runs)."""
        f = self.conf
        inner = TaskLearner(
            [(pers_w, f.inner_lr_w), (pers_a, f.inner_lr_alpha)], f.inner_steps, f.grad_clip
        )
        w_opt = torch.optim.SGD(base_w, lr=f.lr, momentum=f.momentum, weight_decay=f.weight_decay)
        if self.arch_opt.on:  # the server keeps the moments (common.server_opt)
            a_opt = torch.optim.SGD(base_a, lr=f.client_arch_lr)
        else:
            a_opt = torch.optim.Adam(base_a, lr=f.arch_lr, betas=(0.5, 0.999))
        foreach(w_opt, a_opt)
        base = base_w + base_a

        def step(support, query) -> tuple[torch.Tensor, torch.Tensor]:
            s_loss = inner.run(support)
            q = query()
            grads = torch.autograd.grad(q, base, allow_unused=True)
            for p, g in zip(base, grads):
                p.grad = g
            clip_present(base_w, f.grad_clip)
            w_opt.step()
            a_opt.step()
            w_opt.zero_grad(set_to_none=True)
            a_opt.zero_grad(set_to_none=True)
            return s_loss, q.detach()

        return step, inner.steps + 1

    # ------------------------------------------------------------ server
    def server_step(
        self, model: GlobalModel, averaged: State, metrics: dict[str, float], ctx: RoundContext
    ) -> GlobalModel:
        lam = self.temperature(ctx.round)
        state, server = self.server_arch_step(model, averaged, metrics, True)
        metrics.update(temperature=lam, **self.arch_metrics(model.spec, state, lam))
        server = {"temperature": torch.tensor(lam, dtype=torch.float64), **server}
        return GlobalModel(model.spec, state, server)

    def server_arch_step(
        self, model: GlobalModel, averaged: State, metrics: dict[str, float], due: bool
    ) -> tuple[State, State]:
        """With ``arch_update: server``: the averaged state with the shared logits stepped
        by FedAdam/FedYogi on their averaged change when ``due``, and the server state
        entries to keep (the moments); otherwise ``averaged`` and nothing."""
        if not self.arch_opt.on:
            return averaged, {}
        server = self.arch_opt.carried(model.server_state)
        if not due:
            return averaged, server
        state, moments, moved = self.arch_opt.step(
            model.state, averaged, model.server_state, self.live_logits(model.spec)
        )
        metrics.update(moved)
        return state, {**server, **moments}


class MetaFedPNAS(FedPNAS):
    """FedPNAS with FedMetaNAS's first-order MAML local search and soft pruning."""

    name = "meta_fedpnas"

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.meta = MetaSearch(cfg)
        self.pruning = self.meta.pruning()

    @property
    def arch_conf(self) -> ServerArchConfig:
        return self.cfg.algorithm.fedmetanas

    def temperature(self, round_: int) -> float:
        return self.meta.temperature(round_)

    @property
    def tasks_per_epoch(self) -> int:
        return self.cfg.algorithm.fedmetanas.tasks_per_epoch

    @property
    def local_eval_every(self) -> int:
        return self.cfg.algorithm.fedmetanas.local_eval_every

    def local_step(self, base_w, pers_w, base_a, pers_a, round_: int):
        # the personalised logits are the client's own: never stepped by the server
        task, meta = self.meta.learners(base_w + pers_w, base_a, round_, own_arch=pers_a)
        return (lambda support, query: meta.update(task, support, query)), task.steps + 1

    def server_step(
        self, model: GlobalModel, averaged: State, metrics: dict[str, float], ctx: RoundContext
    ) -> GlobalModel:
        lam = self.temperature(ctx.round)
        # the logits are frozen in the warm-up: no server step there; pruning reads the
        # stepped logits
        warm = self.meta.warming_up(ctx.round)
        averaged, server = self.server_arch_step(model, averaged, metrics, not warm)
        spec, state = model.spec, averaged
        if (gaps := self.pruning.gaps_after(ctx.round + 1)) is not None:
            spec, pruned = self.pruning.step(self.space, spec, averaged, gaps, ctx.round)
            metrics.update(pruned)
            if spec is not model.spec:
                state = self.restrict(spec, averaged)
        metrics.update(temperature=lam, **self.arch_metrics(spec, state, lam))
        server = {"temperature": torch.tensor(lam, dtype=torch.float64), **server}
        return GlobalModel(spec, state, server)
