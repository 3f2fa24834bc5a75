"""The search learns: on a toy problem with one clearly best op per edge, FedMetaNAS's
learners (the shipped optimiser settings), the Gumbel relaxation of eq. 1, FedAvg of the
alphas and the pruning rule find it; the architecture optimisers move logits well beyond
their noise; the single-stage schedule's switches; the random baseline's genotype."""

from __future__ import annotations

import math

import pytest
import torch

from fednas_mpi.algorithms import DataInfo, get_algorithm
from fednas_mpi.algorithms.fedmetanas import FedMetaNAS
from fednas_mpi.algorithms.fednas import milenas_grads
from fednas_mpi.config import from_dict
from fednas_mpi.nas import CellSpace, gumbel_noise, logit_signal, prune, relaxed_weights
from fednas_mpi.seeding import torch_rng

EDGES, OPS, DIM = 4, 6, 5


class ToyCell(torch.nn.Module):
    """Each edge mixes OPS fixed linear maps of its own input by eq. 1's Gumbel-softmax
    weights; a learnable per-edge scale (the weight) follows. The target is made with one
    op per edge (``best``), so the loss is smallest exactly when each edge picks it."""

    def __init__(self, maps: torch.Tensor):
        super().__init__()
        self.maps = maps  # (EDGES, OPS, DIM, DIM), fixed
        self.alpha = torch.nn.Parameter(torch.zeros(EDGES, OPS))
        self.scale = torch.nn.Parameter(torch.ones(EDGES))
        self.temperature, self.generator = 1.0, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, EDGES, DIM)
        noise = None if self.generator is None else gumbel_noise(self.alpha.shape, self.generator)
        w = relaxed_weights(self.alpha, self.temperature, noise)  # (EDGES, OPS)
        outs = torch.einsum("eoij,bej->beoi", self.maps, x)  # every op's output
        return self.scale[None, :, None] * torch.einsum("eo,beoi->bei", w, outs)


def _toy(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(EDGES, OPS, DIM, DIM, generator=g) / math.sqrt(DIM)
    best = torch.randint(OPS, (EDGES,), generator=g)
    return maps, best


def _client_data(maps, best, client: int, n: int = 64):
    g = torch.Generator().manual_seed(100 + client)
    x = torch.randn(n, EDGES, DIM, generator=g) * (1.0 + 0.5 * client)  # non-IID scales
    y = torch.einsum("eij,bej->bei", maps[torch.arange(EDGES), best], x)
    return x, y


def _cfg(**fm):
    return from_dict(
        {
            "run": {"rounds": 25},
            "model": {"name": "darts"},
            "algorithm": {"name": "fedmetanas", "fedmetanas": fm},
        }
    )


def test_fedmetanas_search_finds_the_best_op_of_every_edge_and_prunes_the_rest():
    maps, best = _toy()
    algo = FedMetaNAS(_cfg(), DataInfo((1, 8, 8), 10))  # shipped optimiser defaults
    f = algo.cfg.algorithm.fedmetanas
    model = ToyCell(maps)
    glob = {k: v.detach().clone() for k, v in model.state_dict().items()}
    clients, rounds = 4, 25  # 100 meta steps of each client: the CPU-scale budget
    for r in range(rounds):
        states = []
        for c in range(clients):
            model.load_state_dict(glob)
            model.temperature = algo.temperature(r)
            model.generator = torch_rng(0, r, c, "toy.gumbel")
            task, meta = algo.learners([model.scale], [model.alpha], r)
            x, y = _client_data(maps, best, c)
            for p in range(4):  # disjoint support/query pairs of 8
                s, q = slice(16 * p, 16 * p + 8), slice(16 * p + 8, 16 * p + 16)

                def loss(sl, x=x, y=y):
                    return lambda: ((model(x[sl]) - y[sl]) ** 2).mean()

                meta.step(task, loss(s), loss(q))
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        glob = {k: sum(st[k] for st in states) / clients for k in glob}  # FedAvg
    alpha = glob["alpha"]
    assert torch.equal(alpha.argmax(dim=1), best)
    signal = logit_signal(alpha, torch.ones_like(alpha, dtype=torch.bool))
    assert signal["gap"] > f.prune_gap  # the decision is clear, not noise
    assert signal["agreement"] > 0.8  # a Gumbel sample's argmax is the best op
    # the shipped pruning rule keeps the best op and removes every other one
    space = CellSpace(
        nodes=2,
        k=2,
        primitives=(
            "max_pool_3x3",
            "avg_pool_3x3",
            "skip_connect",
            "sep_conv_3x3",
            "sep_conv_5x5",
            "dil_conv_3x3",
        ),
    )
    ops, combos = space.full_masks()
    kept = prune(space, alpha, None, ops[:EDGES], combos, f.prune_gap, 0.0).ops
    assert kept == [[k == int(best[e]) for k in range(OPS)] for e in range(EDGES)]


def test_without_a_learning_signal_the_alphas_stay_near_noise():
    """The reference for the test above: the same search on targets that no op explains
    (random labels) leaves the logits without a clear decision."""
    maps, best = _toy()
    algo = FedMetaNAS(_cfg(), DataInfo((1, 8, 8), 10))
    model = ToyCell(maps)
    g = torch.Generator().manual_seed(9)
    for r in range(6):
        model.temperature = algo.temperature(r)
        model.generator = torch_rng(0, r, 0, "toy.gumbel")
        task, meta = algo.learners([model.scale], [model.alpha], r)
        x = torch.randn(64, EDGES, DIM, generator=g)
        y = torch.randn(64, EDGES, DIM, generator=g)
        for p in range(4):
            s, q = slice(16 * p, 16 * p + 8), slice(16 * p + 8, 16 * p + 16)
            meta.step(
                task,
                lambda s=s, x=x, y=y: ((model(x[s]) - y[s]) ** 2).mean(),
                lambda q=q, x=x, y=y: ((model(x[q]) - y[q]) ** 2).mean(),
            )
    found = int((model.alpha.argmax(dim=1) == best).sum())
    assert found < EDGES  # noise does not find the planted ops


def test_fednas_default_arch_step_moves_alphas_beyond_noise_on_the_toy():
    """MiLeNAS's mixed-level step with FedNAS's default Adam (arch_lr) on the toy, softmax
    relaxation without noise: the planted ops win within ~100 steps (the CPU-scale search
    budget), which DARTS's 3e-4 would not reach."""
    maps, best = _toy(1)
    cfg = from_dict({"model": {"name": "darts"}, "algorithm": {"name": "fednas"}})
    f = cfg.algorithm.fednas
    found = {}
    for lr in (f.arch_lr, 3e-4):
        model = ToyCell(maps)
        a_opt = torch.optim.Adam([model.alpha], lr=lr, betas=tuple(f.arch_betas))
        w_opt = torch.optim.SGD([model.scale], lr=0.01)
        x, y = _client_data(maps, best, 0, n=512)
        for step in range(100):
            t, v = (
                slice(step % 16 * 16, step % 16 * 16 + 8),
                slice(step % 16 * 16 + 8, step % 16 * 16 + 16),
            )
            lt = ((model(x[t]) - y[t]) ** 2).mean()
            lv = ((model(x[v]) - y[v]) ** 2).mean()
            gw, ga = milenas_grads(lt, lv, [model.scale], [model.alpha], 1.0)
            model.scale.grad, model.alpha.grad = gw[0], ga[0]
            a_opt.step()
            w_opt.step()
        gap = logit_signal(model.alpha.detach(), torch.ones(EDGES, OPS, dtype=torch.bool))
        found[lr] = (bool(torch.equal(model.alpha.argmax(1), best)), gap["gap"])
    assert found[f.arch_lr][0] and found[f.arch_lr][1] > 0.5
    assert found[3e-4][1] < 0.1  # DARTS's step size barely moves in this budget


# ---------------------------------------------------------------- the single-stage schedule


def _algo(rounds=10, **fm):
    cfg = from_dict(
        {
            "run": {"rounds": rounds},
            "model": {"name": "darts"},
            "algorithm": {"name": "fedmetanas", "fedmetanas": fm},
        }
    )
    return FedMetaNAS(cfg, DataInfo((1, 8, 8), 10))


def test_single_stage_schedule_switches_once_and_only_the_last_stage_may_stop():
    a = _algo(final_round=4, arch_warmup_rounds=2, prune_start=1, prune_every=1)
    assert [a.stage(r) for r in range(10)] == ["search"] * 4 + ["derived"] * 6
    assert [a.can_stop(r) for r in range(10)] == [False] * 4 + [True] * 6
    assert [a.warming_up(r) for r in range(4)] == [True, True, False, False]
    f = a.cfg.algorithm.fedmetanas
    # pruning never runs during the warm-up, then every round
    assert [f.prunes_after(d) for d in range(1, 6)] == [False, False, True, True, True]
    # lambda anneals over the 4 search rounds and stays there
    assert a.temperature(0) == pytest.approx(1.0)
    assert a.temperature(3) == pytest.approx(f.temperature_end)
    assert a.temperature(9) == pytest.approx(f.temperature_end)
    # the weights decay by a cosine over the whole run, from 1 to weight_lr_min
    s = [a.weight_lr_scale(r) for r in range(10)]
    assert s[0] == pytest.approx(1.0) and s[-1] == pytest.approx(f.weight_lr_min)
    assert all(x > y for x, y in zip(s, s[1:]))


def test_warm_up_freezes_alphas_and_the_step_after_moves_them():
    a = _algo(arch_warmup_rounds=1)
    w = torch.nn.Parameter(torch.tensor([1.0]))
    al = torch.nn.Parameter(torch.tensor([0.0, 0.0]))
    for r, moves in ((0, False), (1, True)):
        task, meta = a.learners([w], [al], r)
        before = al.detach().clone()

        def loss():
            return ((w * torch.softmax(al, 0)[0] - 3.0) ** 2).sum()

        meta.step(task, loss, loss)
        assert (not torch.equal(al.detach(), before)) == moves
        # Adam: the first meta step moves a logit by about meta_lr_alpha
        if moves:
            assert float((al.detach() - before).abs().max()) == pytest.approx(
                a.cfg.algorithm.fedmetanas.meta_lr_alpha, rel=0.05
            )


def test_random_baseline_genotype_depends_on_its_seed_only():
    def spec(genotype_seed, seed):
        cfg = from_dict(
            {
                "run": {"seed": seed},
                "model": {"name": "darts"},
                "algorithm": {"name": "random_nas", "random_nas": {"genotype_seed": genotype_seed}},
            }
        )
        return get_algorithm("random_nas")(cfg, DataInfo((1, 8, 8), 10)).init_global().spec

    a, b, c = spec(0, 0), spec(0, 5), spec(1, 0)
    assert a == b and a != c
    assert a["genotype"]["text"] and a["inputs"] == "combinations"
    for cell in ("normal", "reduce"):
        assert all(sum(row) <= 1 for row in a["masks"][cell]["ops"])
