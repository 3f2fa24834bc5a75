"""Server-side FedAdam/FedYogi on the architecture logits (Reddi et al. 2021): the pure
moments and step on hand-made deltas (written out by hand and against torch's Adam fed the
pseudo-gradient -delta), the component's server state, masks and config checks."""

from __future__ import annotations

import pytest
import torch

from fednas_mpi.algorithms.common.server_opt import (
    PREFIX,
    ServerArchConfig,
    ServerArchOptimizer,
    server_moments,
    server_update,
)
from fednas_mpi.config import ConfigError, from_dict

B1, B2, LR, TAU = 0.9, 0.99, 0.1, 1e-3


def _opt(kind: str = "adam", **kw) -> ServerArchOptimizer:
    conf = ServerArchConfig(
        arch_update="server",
        server_arch_optimizer=kind,
        server_arch_lr=kw.get("lr", LR),
        server_arch_betas=[B1, B2],
        server_arch_tau=kw.get("tau", TAU),
    )
    return ServerArchOptimizer(conf)


def _global(*values: float) -> dict[str, torch.Tensor]:
    """A global state with one weight and one logit tensor (float64: deltas exact)."""
    return {
        "cells.0.w": torch.ones(2, dtype=torch.float64),
        "alpha_normal": torch.tensor(values, dtype=torch.float64),
    }


def _rounds(opt: ServerArchOptimizer, x0: dict, deltas: list[list[float]], live=None, server=None):
    """Run the server step over rounds in which the clients' average moved the logits by
    ``deltas[r]`` (and the weight by 0.5), from global state ``x0`` and ``server`` (default:
    the initial one); returns the global states after each round and the last server state."""
    gm, server = dict(x0), opt.init_state(x0) if server is None else server
    out = []
    for d in deltas:
        averaged = {
            "cells.0.w": gm["cells.0.w"] + 0.5,
            "alpha_normal": gm["alpha_normal"] + torch.tensor(d, dtype=torch.float64),
        }
        gm, server, _ = opt.step(gm, averaged, server, live)
        out.append(gm)
    return out, server


# ---------------------------------------------------------------- the math by hand


def test_adam_bias_correction_in_rounds_1_and_2_written_out():
    (r1, r2, r3), server = _rounds(_opt(), _global(0.0), [[0.02], [-0.01], [0.03]])
    # round 1: m = (1 - b1) d, v = (1 - b2) d^2; corrected m_hat = d, v_hat = d^2
    step1 = LR * 0.02 / (0.02 + TAU)
    assert float(r1["alpha_normal"][0]) == pytest.approx(step1, rel=1e-12)
    assert step1 == pytest.approx(0.09523809523809523, rel=1e-15)
    # round 2: m = 0.9 * 0.002 + 0.1 * -0.01 = 0.0008, v = 0.99 * 4e-6 + 0.01 * 1e-4 = 4.96e-6
    m_hat, v_hat = 0.0008 / (1 - 0.9**2), 4.96e-6 / (1 - 0.99**2)
    step2 = LR * m_hat / (v_hat**0.5 + TAU)
    assert step2 == pytest.approx(0.02508126747519436, rel=1e-12)
    assert float(r2["alpha_normal"][0]) == pytest.approx(step1 + step2, rel=1e-12)
    # without the correction round 2 would step lr * 0.0008 / (sqrt(4.96e-6) + tau)
    assert step2 != pytest.approx(LR * 0.0008 / (4.96e-6**0.5 + TAU), rel=1e-2)
    # round 3: m = 0.9 * 0.0008 + 0.1 * 0.03 = 0.00372, v = 0.99 * 4.96e-6 + 0.01 * 9e-4
    m_hat, v_hat = 0.00372 / (1 - 0.9**3), (0.99 * 4.96e-6 + 9e-6) / (1 - 0.99**3)
    step3 = LR * m_hat / (v_hat**0.5 + TAU)
    assert float(r3["alpha_normal"][0]) == pytest.approx(step1 + step2 + step3, rel=1e-12)
    assert float(server[f"{PREFIX}t"]) == 3.0
    assert float(server[f"{PREFIX}m.alpha_normal"][0]) == pytest.approx(0.00372, rel=1e-12)


def test_adam_over_three_rounds_equals_torch_adam_fed_the_pseudo_gradient():
    x0 = _global(0.3, -0.2, 0.0, 1.0)
    deltas = [[0.02, -0.01, 0.0, 1e-5], [-0.01, -0.02, 0.0, 3e-5], [0.03, 0.01, 0.0, -2e-5]]
    states, _ = _rounds(_opt(), x0, deltas)
    # Reddi et al.: delta is the negative pseudo-gradient, so Adam on -delta with eps = tau
    p = torch.nn.Parameter(x0["alpha_normal"].clone())
    adam = torch.optim.Adam([p], lr=LR, betas=(B1, B2), eps=TAU)
    for d, got in zip(deltas, states):
        p.grad = -torch.tensor(d, dtype=torch.float64)
        adam.step()
        torch.testing.assert_close(got["alpha_normal"], p.detach(), rtol=1e-12, atol=1e-15)
    # an entry whose deltas stay tiny against tau moves by about lr * delta / tau, far less
    # than one with deltas above tau; one that never moves stays
    last = states[-1]["alpha_normal"]
    assert abs(float(last[3]) - 1.0) < 0.05 * abs(float(last[0]) - 0.3)
    assert float(states[-1]["alpha_normal"][2]) == 0.0


def test_yogi_second_moment_by_hand():
    d = torch.tensor([[0.02, 0.02], [0.001, 0.05], [0.05, 0.001]], dtype=torch.float64)
    m = v = torch.zeros(2, dtype=torch.float64)
    vs = []
    for r in range(3):
        m, v = server_moments("yogi", m, v, d[r], B1, B2)
        vs.append(v.clone())
    # round 1 from v = 0: sign(0 - d^2) = -1, so v = (1 - b2) d^2, as Adam's
    assert vs[0].tolist() == pytest.approx([4e-6, 4e-6], rel=1e-12)
    # round 2: entry 0 has v = 4e-6 > d^2 = 1e-6: v shrinks additively by (1 - b2) d^2
    # (Adam: 0.99 * 4e-6 + 0.01 * 1e-6 = 3.97e-6); entry 1 has v < d^2 = 2.5e-3: it grows
    assert vs[1].tolist() == pytest.approx([4e-6 - 1e-8, 4e-6 + 2.5e-5], rel=1e-12)
    # round 3: entry 0 grows by 0.01 * 2.5e-3, entry 1 (v = 2.9e-5 > 1e-6) shrinks by 1e-8
    assert vs[2].tolist() == pytest.approx([3.99e-6 + 2.5e-5, 2.9e-5 - 1e-8], rel=1e-12)
    # m is the same exponential average as Adam's
    _, v_adam = server_moments("adam", torch.zeros(2), torch.zeros(2), d[0], B1, B2)
    assert m.tolist() == pytest.approx(
        (0.1 * (0.81 * d[0] + 0.9 * d[1] + d[2])).tolist(), rel=1e-12
    )
    assert v_adam.tolist() == pytest.approx([4e-6, 4e-6], rel=1e-6)


def test_yogi_step_uses_the_same_bias_corrected_update():
    deltas = [[0.02], [0.001], [0.05]]
    states, server = _rounds(_opt("yogi"), _global(0.0), deltas)
    m = v = torch.zeros(1, dtype=torch.float64)
    x = 0.0
    for t, d in enumerate(deltas, start=1):
        m, v = server_moments("yogi", m, v, torch.tensor(d, dtype=torch.float64), B1, B2)
        x += float(server_update(m, v, t, LR, B1, B2, TAU)[0])
        assert float(states[t - 1]["alpha_normal"][0]) == pytest.approx(x, rel=1e-12)
    assert float(server[f"{PREFIX}v.alpha_normal"][0]) == pytest.approx(3.99e-6 + 2.5e-5)


def test_server_update_is_lr_times_corrected_ratio():
    m, v = torch.tensor([0.002]), torch.tensor([4e-6])
    assert float(server_update(m, v, 1, 0.5, B1, B2, 0.0)) == pytest.approx(0.5, rel=1e-6)


# ---------------------------------------------------------------- the component


def test_client_mode_adds_nothing_to_the_server_state():
    opt = ServerArchOptimizer(ServerArchConfig())
    assert not opt.on and opt.init_state(_global(0.0)) == {}


def test_server_state_keys_are_fixed_at_init_and_kept_by_every_step():
    x0 = {**_global(0.0, 0.0), "beta_reduce": torch.zeros(3), "cells.1.bias": torch.zeros(1)}
    opt = _opt()
    init = opt.init_state(x0)
    assert list(init) == [
        f"{PREFIX}t",
        f"{PREFIX}m.alpha_normal",
        f"{PREFIX}v.alpha_normal",
        f"{PREFIX}m.beta_reduce",
        f"{PREFIX}v.beta_reduce",
    ]
    assert all(v.dtype == torch.float64 for v in init.values())
    averaged = {k: v + 0.01 for k, v in x0.items()}
    frozen = {k: v.clone() for k, v in averaged.items()}
    state, moments, metrics = opt.step(x0, averaged, init, None)
    assert list(moments) == list(init)
    assert all(moments[k].shape == init[k].shape for k in init)
    # the averaged weights pass through, the logits are the global ones stepped
    assert list(state) == list(averaged)
    assert state["cells.0.w"] is averaged["cells.0.w"]
    assert state["beta_reduce"].dtype == torch.float32
    torch.testing.assert_close(state["beta_reduce"], torch.full((3,), LR * 0.01 / (0.01 + TAU)))
    assert metrics["server_arch_step"] == pytest.approx(LR * 0.01 / (0.01 + TAU), rel=1e-5)
    # inputs untouched
    assert all(torch.equal(averaged[k], frozen[k]) for k in averaged)
    assert float(init[f"{PREFIX}t"]) == 0.0 and not init[f"{PREFIX}m.alpha_normal"].any()


def test_masked_logits_never_move():
    # a first round moves both entries, then entry 1 is pruned: its moments still hold
    # momentum, but it stays where it was while entry 0 goes on
    opt = _opt()
    (r1,), server = _rounds(opt, _global(0.5, -3.0), [[0.02, 0.02]])
    live = {"alpha_normal": torch.tensor([True, False])}
    (r2, r3), _ = _rounds(opt, r1, [[0.01, 0.0], [0.01, 0.0]], live, server)
    assert r1["alpha_normal"][1] != -3.0
    assert r2["alpha_normal"][1] == r3["alpha_normal"][1] == r1["alpha_normal"][1]
    assert r3["alpha_normal"][0] > r2["alpha_normal"][0] > r1["alpha_normal"][0]


def test_a_server_state_without_moments_is_a_clear_error():
    with pytest.raises(ValueError, match="holds no moments"):
        _opt().step(_global(0.0), _global(0.1), {"temperature": torch.tensor(1.0)})


# ---------------------------------------------------------------- config


#: (method, the section holding its arch_update): every method whose logits clients step
WIRED = [
    ("fedmetanas", "fedmetanas"),
    ("fednas", "fednas"),
    ("feddsnas", "feddsnas"),
    ("fedpnas", "fedpnas"),
    ("meta_fedpnas", "fedmetanas"),
]


@pytest.mark.parametrize(("method", "section"), WIRED)
def test_each_wired_method_owns_the_keys_and_checks_the_betas(method, section):
    raw = {"model": {"name": "darts"}, "algorithm": {"name": method}}
    cfg = from_dict(raw, [f"algorithm.{section}.arch_update=server"])
    conf = getattr(cfg.algorithm, section)
    assert conf.arch_update == "server" and conf.server_arch_optimizer == "adam"
    assert getattr(from_dict(raw).algorithm, section).arch_update == "client"
    with pytest.raises(ConfigError) as e:
        from_dict(raw, [f"algorithm.{section}.server_arch_betas=[0.9, 1.0]"])
    assert e.value.problems == [
        f"algorithm.{section}.server_arch_betas = [0.9, 1.0]: expected two numbers in [0, 1)"
    ]
    with pytest.raises(ConfigError, match="expected one of 'adam', 'yogi'"):
        from_dict(raw, [f"algorithm.{section}.server_arch_optimizer=sgd"])


@pytest.mark.parametrize("key", ["arch_update", "server_arch_lr"])
def test_meta_perfedrlnas_refuses_the_server_optimiser_and_says_why(key):
    # its logits are REINFORCE policies stepped on the server from rewards: no client
    # gradient step to average, so the keys are an error with the reason, not a no-op
    raw = {"model": {"name": "darts"}, "algorithm": {"name": "meta_perfedrlnas"}}
    value = "server" if key == "arch_update" else "0.2"
    with pytest.raises(ConfigError) as e:
        from_dict(raw, [f"algorithm.fedmetanas.{key}={value}"])
    (line,) = e.value.problems
    assert line.startswith(f"algorithm.fedmetanas.{key}: not read by meta_perfedrlnas: ")
    assert "REINFORCE" in line and "nothing for arch_update: server to average" in line


def test_meta_fedpnas_reads_arch_update_from_its_fedmetanas_section():
    raw = {"model": {"name": "darts"}, "algorithm": {"name": "meta_fedpnas"}}
    with pytest.raises(ConfigError) as e:
        from_dict(raw, ["algorithm.fedpnas.arch_update=server"])
    assert e.value.problems == [
        "algorithm.fedpnas.arch_update: meta_fedpnas reads the server optimiser's keys "
        "from algorithm.fedmetanas (its local search is FedMetaNAS's)"
    ]


# ---------------------------------------------------------------- FedPNAS, meta-FedPNAS

PNAS_SHARED = ("alpha_normal", "alpha_reduce", "beta_normal", "beta_reduce")


def _pnas(method: str, **keys):
    """FedPNAS or meta-FedPNAS on the unit-test supernet, one support/query pair per
    round (one meta step: the logits' client step is a single, comparable step)."""
    from helpers import darts_unit_config

    from fednas_mpi.algorithms import DataInfo
    from fednas_mpi.algorithms.fedpnas import FedPNAS, MetaFedPNAS

    section = "fedpnas" if method == "fedpnas" else "fedmetanas"
    cfg = darts_unit_config(method, 3, **{section: {"tasks_per_epoch": 1, **keys}})
    cls = FedPNAS if method == "fedpnas" else MetaFedPNAS
    return cls(cfg, DataInfo((1, 8, 8), 10))


@pytest.mark.parametrize("method", ["fedpnas", "meta_fedpnas"])
def test_pnas_server_mode_client_step_is_plain_sgd_on_the_shared_logits_only(method):
    from helpers import client_data

    from fednas_mpi.algorithms import RoundContext

    ctx, data = RoundContext(0, 3, 5, "search"), client_data(1)
    client = _pnas(method)
    gm = client.init_global()
    assert list(gm.server_state) == ["temperature"]  # client mode: no moments
    base = client.client_update(gm, data, ctx, None)
    steps = {}
    for lr in (0.2, 0.4):
        algo = _pnas(method, arch_update="server", client_arch_lr=lr)
        g = algo.init_global()
        assert float(g.server_state[f"{PREFIX}t"]) == 0.0
        assert all(torch.equal(g.state[k], gm.state[k]) for k in gm.state)
        res = algo.client_update(g, data, ctx, None)
        # the weights and the personalised part (its logits too: the client's own Adam)
        # are exactly client mode's; only the shared logits took another step
        for k in res.state:
            if k not in PNAS_SHARED:
                assert torch.equal(res.state[k], base.state[k]), k
        for k in res.client_state:
            assert torch.equal(res.client_state[k], base.client_state[k]), k
        steps[lr] = {k: res.state[k].double() - gm.state[k].double() for k in PNAS_SHARED}
    for k in PNAS_SHARED:
        # one plain SGD step, -lr * g: twice the rate, twice the step (an Adam's first step
        # would be about lr * sign(g), the same size on every entry it touches)
        torch.testing.assert_close(2 * steps[0.2][k], steps[0.4][k], rtol=1e-3, atol=1e-7)
    moved = torch.cat([steps[0.2][k].flatten().abs() for k in PNAS_SHARED])
    moved = moved[moved > 0]
    assert moved.numel() > 1 and float(moved.max()) > 2 * float(moved.min())


@pytest.mark.parametrize("method", ["fedpnas", "meta_fedpnas"])
def test_pnas_server_step_applies_and_keeps_the_moments(method):
    from fednas_mpi.algorithms import RoundContext

    # meta-FedPNAS: a warm-up round, and no pruning to keep every logit live
    meta = {"arch_warmup_rounds": 1, "prune_every": 0} if method == "meta_fedpnas" else {}
    algo = _pnas(method, arch_update="server", server_arch_lr=0.2, **meta)
    gm = algo.init_global()
    conf = algo.arch_conf
    b1, b2 = conf.server_arch_betas
    model, d, t = gm, 0.01, 0
    for r in range(3):
        averaged = {k: v.clone() for k, v in model.state.items()}
        for k in PNAS_SHARED:
            averaged[k] = averaged[k] + d
        metrics: dict[str, float] = {}
        new = algo.server_step(model, averaged, metrics, RoundContext(r, 3, 5, "search"))
        assert list(new.server_state) == list(gm.server_state)
        assert float(new.server_state["temperature"]) == algo.temperature(r)
        if method == "meta_fedpnas" and r == 0:  # the warm-up: logits frozen, no step
            assert "server_arch_step" not in metrics
            assert all(torch.equal(new.state[k], averaged[k]) for k in new.state)
            model = new
            continue
        t += 1
        assert float(new.server_state[f"{PREFIX}t"]) == t
        # the same delta every round: m_hat = d, v_hat = d^2 after bias correction
        step = conf.server_arch_lr * d / (d + conf.server_arch_tau)
        for k in new.state:
            if k in PNAS_SHARED:
                moved = new.state[k].double() - model.state[k].double()
                torch.testing.assert_close(moved, torch.full_like(moved, step), rtol=1e-5, atol=0)
                m = new.server_state[f"{PREFIX}m.{k}"]
                torch.testing.assert_close(
                    m, torch.full_like(m, (1 - b1**t) * d), rtol=1e-5, atol=0
                )
            else:
                assert torch.equal(new.state[k], averaged[k]), k
        assert metrics["server_arch_step"] == pytest.approx(step, rel=1e-4)
        model = new
    assert b2 < 1.0
