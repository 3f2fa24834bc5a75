"""FedAvg arithmetic against hand-computed values."""

import numpy as np
import pytest
import torch

from fednas_mpi.algorithms.common.aggregate import ClientSums, weighted_average
from fednas_mpi.flat import Layout


def test_weighted_average_hand_computed():
    # Two clients with 1 and 3 samples: w = (1*a + 3*b) / 4.
    a = {"w": torch.tensor([1.0, 2.0]), "alpha": torch.tensor([[0.0, 4.0]])}
    b = {"w": torch.tensor([5.0, -2.0]), "alpha": torch.tensor([[8.0, 0.0]])}
    out = weighted_average([a, b], [1, 3])
    assert list(out) == ["w", "alpha"]
    assert torch.equal(out["w"], torch.tensor([4.0, -1.0]))
    assert torch.equal(out["alpha"], torch.tensor([[6.0, 1.0]]))
    assert out["w"].dtype == torch.float32


def test_weighted_average_three_clients_and_dtypes():
    states = [
        {"x": torch.tensor([0.5], dtype=torch.float64)},
        {"x": torch.tensor([1.5], dtype=torch.float64)},
        {"x": torch.tensor([3.0], dtype=torch.float64)},
    ]
    out = weighted_average(states, [2, 2, 4])
    # (2*0.5 + 2*1.5 + 4*3) / 8 = 16 / 8 = 2
    assert out["x"].dtype == torch.float64 and out["x"].item() == 2.0


def test_single_client_is_identity():
    s = {"k": torch.randn(3, 4)}
    assert torch.equal(weighted_average([s], [7])["k"], s["k"])


def test_errors():
    with pytest.raises(ValueError):
        weighted_average([], [])
    with pytest.raises(ValueError):
        weighted_average([{"a": torch.ones(1)}], [0])


def _results(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            {"w": torch.randn(5, 3, generator=g), "b": torch.randn(3, generator=g)},
            float(torch.randint(1, 50, (1,), generator=g)),
            {"loss": float(torch.rand(1, generator=g)), "acc": float(torch.rand(1, generator=g))},
        )
        for _ in range(n)
    ]


def test_client_sums_match_weighted_average_for_any_grouping():
    results = _results(7)
    layout = Layout.of(results[0][0])
    ref = weighted_average([r[0] for r in results], [r[1] for r in results])
    outs = []
    for groups in ([7], [3, 4], [1, 1, 1, 1, 1, 1, 1], [2, 0, 5]):
        partials, i = [], 0
        for g in groups:
            cs = ClientSums(layout, ("loss", "acc"))
            for state, w, m in results[i : i + g]:
                cs.add(state, w, m)
            partials.append(cs.buffer)
            i += g
        cs = ClientSums(layout, ("loss", "acc"))
        averaged, metrics = cs.finish(cs.combine(partials))
        outs.append((averaged, metrics))
        for k in ref:
            torch.testing.assert_close(averaged[k], ref[k], rtol=0, atol=1e-6)
    # every grouping gives the same float32 result
    for averaged, _ in outs[1:]:
        for k in ref:
            assert torch.equal(averaged[k], outs[0][0][k])


def test_client_sums_metrics_weighted_mean_std_and_nan():
    layout = Layout.of({"w": torch.zeros(1)})
    cs = ClientSums(layout, ("acc",))
    cs.add({"w": torch.zeros(1)}, 1.0, {"acc": 0.0})
    cs.add({"w": torch.ones(1)}, 3.0, {"acc": 1.0})
    cs.add({"w": torch.ones(1)}, 4.0, {"acc": float("nan")})  # no eval data: left out
    state, metrics = cs.finish(cs.buffer)
    # weighted over the finite ones: mean = 3/4, var = 3/4 - 9/16 = 3/16
    assert metrics["acc"] == pytest.approx(0.75)
    assert metrics["acc_std"] == pytest.approx(np.sqrt(3 / 16))
    assert metrics["clients"] == 3 and metrics["client_weight"] == 8
    # the state average still uses all three: (0 + 3 + 4) / 8
    assert state["w"].item() == pytest.approx(7 / 8)


def test_client_sums_keep_each_clients_own_values_across_workers():
    results = _results(5, seed=3)
    layout = Layout.of(results[0][0])
    clients = [2, 4, 7, 8, 11]
    names = ("loss", "acc")
    results[3][2]["acc"] = float("nan")  # a client without eval data keeps its NaN
    partials = []
    for group in ([2, 7], [11, 4], [8]):  # three workers, clients in any order
        cs = ClientSums(layout, names, clients)
        for c in group:
            state, w, m = results[clients.index(c)]
            cs.add(state, w, m, client=c)
        partials.append(cs.buffer)
    cs = ClientSums(layout, names, clients)
    total = cs.combine(partials)
    per = cs.per_client(total)
    for i, c in enumerate(clients):
        assert per["weight"][c] == results[i][1]
        assert per["loss"][c] == results[i][2]["loss"]
    assert np.isnan(per["acc"][8]) and per["acc"][2] == results[0][2]["acc"]
    # the averages are those of a buffer without per-client slots
    plain = ClientSums(layout, names)
    for state, w, m in results:
        plain.add(state, w, m)
    a, ma = cs.finish(total)
    b, mb = plain.finish(plain.buffer)
    assert ma == pytest.approx(mb, nan_ok=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_per_client_history_grows_by_rounds_and_pads_runs_from_before_it():
    from fednas_mpi.store.record import append_clients

    # resumed from a checkpoint without /client_metrics: earlier rounds become NaN rows
    h = append_clients({}, {"weight": {1: 5.0, 3: 7.0}, "acc": {1: 0.5, 3: np.nan}}, 2, 4)
    assert sorted(h) == ["acc", "weight"] and h["weight"].shape == (3, 4)
    assert np.isnan(h["weight"][:2]).all()
    np.testing.assert_array_equal(h["weight"][2], [np.nan, 5.0, np.nan, 7.0])
    h = append_clients(h, {"weight": {0: 1.0}, "acc": {0: 0.25}}, 3, 4)
    assert h["acc"].shape == (4, 4) and h["acc"][3, 0] == 0.25
    np.testing.assert_array_equal(h["acc"][2], [np.nan, 0.5, np.nan, np.nan])


def test_aux_means_travel_in_the_state_buffer_and_leave_it_unchanged():
    """ClientResult.aux entries are summed behind the state's in one buffer: the state's
    average is bit for bit what it is without them, the aux means are the weighted ones."""
    from fednas_mpi.runtime.protocol import summed_layout

    states = [{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, -1.0])}]
    aux = [
        {"r": torch.tensor(0.5, dtype=torch.float64)},
        {"r": torch.tensor(0.25, dtype=torch.float64)},
    ]
    weights = [3.0, 5.0]
    layout = summed_layout(states[0], {"r": ()})
    assert layout.names == ("w", "r") and layout.dtypes[-1] == torch.float64
    both, plain = ClientSums(layout, ()), ClientSums(Layout.of(states[0]), ())
    for s, a, w in zip(states, aux, weights):
        both.add({**s, **a}, w, {})
        plain.add(s, w, {})
    avg, _ = both.finish(both.buffer)
    want, _ = plain.finish(plain.buffer)
    assert torch.equal(avg["w"], want["w"])
    assert float(avg["r"]) == (3.0 * 0.5 + 5.0 * 0.25) / 8.0
    with pytest.raises(ValueError, match="names of global state entries"):
        summed_layout(states[0], {"w": (2,)})
