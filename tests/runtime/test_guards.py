"""Non-finite guards: the checks themselves, the policy, and a one-process run that drops or
aborts on a poisoned client (the multi-rank runs are in tests/faults)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from mpi4py import MPI

from fednas_mpi import faults
from fednas_mpi.algorithms import Algorithm, ClientResult, DataInfo, GlobalModel
from fednas_mpi.config import from_dict
from fednas_mpi.data import Dataset, make_partition
from fednas_mpi.runtime.guards import (
    NonFiniteError,
    check_client,
    check_global,
    check_loss,
    first_nonfinite,
    judge_round,
    mark_dropped,
)
from fednas_mpi.runtime.schedule import sample_clients
from fednas_mpi.runtime.simulation import Simulation
from fednas_mpi.store import list_checkpoints, read_checkpoint

NAN, INF = float("nan"), float("inf")


def test_first_nonfinite_names_the_first_bad_tensor_in_state_order():
    state = {"z": torch.ones(3), "a": torch.tensor([1.0, INF]), "b": torch.tensor([NAN])}
    assert first_nonfinite(state) == "a"  # order of the state, not of the names
    assert first_nonfinite({"n": torch.arange(3), "h": torch.ones(2).half()}) is None
    assert first_nonfinite({"h": torch.tensor([NAN]).bfloat16()}) == "h"


def test_check_client_covers_state_client_state_weight_and_loss():
    ok = {"w": torch.zeros(4)}
    fine = {"train_loss": 0.5, "local_acc": NAN}  # NaN accuracy: not measured, allowed
    assert check_client(ok, 10.0, fine, None) is None
    bad = {"w": torch.tensor([0.0, 1.0, NAN, NAN])}
    why = check_client(bad, 10.0, fine, None)
    assert "state tensor 'w'" in why and "2 of 4" in why and "index 2" in why
    why = check_client(ok, 10.0, fine, {"head": torch.tensor([-INF])})
    assert why.startswith("client state tensor 'head'")
    assert check_client(ok, NAN, fine, None) == "weight = nan"
    assert check_client(ok, 1.0, {"train_loss": NAN}, None) == "metric train_loss = nan"
    assert check_client(ok, 1.0, {"train_loss": 1.0, "reward": INF}, None) == "metric reward = inf"


def test_judge_round_applies_the_policy():
    judge_round("abort", 3, [1, 2, 5], {})  # nothing dropped: nothing to do
    with pytest.raises(NonFiniteError, match=r"round 4, client 2: state tensor 'x'.*1 more"):
        judge_round("abort", 3, [1, 2, 5], {5: "state tensor 'y'", 2: "state tensor 'x'"})
    judge_round("skip_client", 3, [1, 2, 5], {2: "x", 5: "y"})  # one left: goes on
    with pytest.raises(NonFiniteError, match="every client of round 4 .3."):
        judge_round("skip_client", 3, [1, 2, 5], {1: "x", 2: "x", 5: "y"})


def test_global_and_loss_checks():
    check_global({"w": torch.ones(2)}, 0)
    with pytest.raises(NonFiniteError, match="global model after round 2"):
        check_global({"w": torch.tensor([1.0, INF])}, 1)
    check_loss(NAN, 0, evaluated=False)  # not evaluated this round
    for value in (NAN, INF):
        with pytest.raises(NonFiniteError, match="server test loss"):
            check_loss(value, 0)


def test_mark_dropped_only_under_skip_client():
    values = {"weight": {1: 10.0, 4: 20.0}, "train_loss": {1: 0.3, 4: 0.0}}
    assert mark_dropped(values, {4: "x"}, "abort") is values
    out = mark_dropped(values, {4: "x"}, "skip_client")
    assert out["weight"][1] == 10.0 and math.isnan(out["weight"][4])
    assert out["dropped"] == {1: 0.0, 4: 1.0}


def test_nan_hook_copies_and_parses(monkeypatch):
    monkeypatch.setenv(faults.NAN_CLIENT, "2:5, 3:1")
    faults.nan_clients.cache_clear()
    try:
        shared = {"step": torch.arange(2), "w": torch.ones(3)}
        assert faults.poison_client(0, 5, shared) is shared  # round 1: not named
        out = faults.poison_client(1, 5, shared)
        assert torch.isnan(out["w"][0]) and torch.equal(shared["w"], torch.ones(3))
        assert out["step"] is shared["step"]  # integers are never poisoned
        monkeypatch.setenv(faults.NAN_CLIENT, "two:5")
        faults.nan_clients.cache_clear()
        with pytest.raises(ValueError, match="ROUND:VALUE"):
            faults.nan_clients()
    finally:
        monkeypatch.delenv(faults.NAN_CLIENT)
        faults.nan_clients.cache_clear()


# ---------------------------------------------------------------- one-process runs


class Shift(Algorithm):
    """Each client returns w + (client + 1); client BAD returns a NaN in round BAD_ROUND."""

    name = "shift"
    client_metrics = ("train_loss",)
    BAD, BAD_ROUND = None, 1

    def init_global(self):
        return GlobalModel({}, {"w": torch.zeros(3, dtype=torch.float64)})

    def client_update(self, model, data, ctx, client_state):
        w = model.state["w"] + float(data.client_id + 1)
        if data.client_id == self.BAD and ctx.round == self.BAD_ROUND:
            w = w.clone()
            w[1] = NAN
        return ClientResult({"w": w}, float(data.num_train), {"train_loss": 1.0})

    def server_step(self, model, averaged, metrics, ctx):
        return GlobalModel(model.spec, averaged)

    def evaluate(self, model, x, y):
        return float(model.state["w"].sum()), 0.5


def _simulation(policy, bad, rounds=3):
    cfg = from_dict(
        {
            "run": {"seed": 3, "rounds": rounds, "on_nonfinite": policy},
            "partition": {"num_clients": 6, "min_train": 4},
            "federation": {"clients_per_round": 3},
        }
    )
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 1, 8, 8, generator=g)
    y = torch.arange(200) % 4
    dataset = Dataset("synthetic", x, y, x[:20], y[:20], num_classes=4)
    partition = make_partition(y.numpy(), cfg.partition, cfg.run.seed)
    algo = Shift(cfg, DataInfo(dataset.input_shape, 4))
    algo.BAD = bad
    return cfg, partition, Simulation(cfg, MPI.COMM_SELF, dataset, partition, algo)


def _run(tmp_path, policy, bad, rounds=3):
    cfg, partition, sim = _simulation(policy, bad, rounds)
    return cfg, partition, sim.serve(tmp_path).model


def _expected(cfg, partition, bad, rounds):
    """FedAvg by hand over the clients that were not dropped."""
    w = 0.0
    sizes = partition.train_sizes()
    for r in range(rounds):
        kept = [
            int(c)
            for c in sample_clients(cfg.run.seed, r, 6, 3)
            if not (c == bad and r == Shift.BAD_ROUND)
        ]
        n = np.array([sizes[c] for c in kept], dtype=np.float64)
        w = float(np.sum(n * (w + np.array(kept) + 1.0)) / n.sum())
    return w


def test_skip_client_averages_the_others_and_records_it(tmp_path):
    cfg0 = from_dict({"run": {"seed": 3}})
    bad = int(sample_clients(cfg0.run.seed, Shift.BAD_ROUND, 6, 3)[0])
    cfg, partition, model = _run(tmp_path, "skip_client", bad)
    np.testing.assert_allclose(
        model.state["w"].numpy(), np.full(3, _expected(cfg, partition, bad, 3)), rtol=1e-12
    )
    ck = read_checkpoint(list_checkpoints(tmp_path)[-1][1])
    np.testing.assert_array_equal(ck.metrics["dropped_clients"], [0, 1, 0])
    np.testing.assert_array_equal(ck.metrics["clients"], [3, 2, 3])
    assert ck.client_metrics["dropped"][1, bad] == 1.0
    assert np.isnan(ck.client_metrics["weight"][1, bad])
    assert np.nansum(ck.client_metrics["dropped"]) == 1.0


def test_abort_names_round_client_tensor_and_writes_no_checkpoint(tmp_path):
    bad = int(sample_clients(3, Shift.BAD_ROUND, 6, 3)[1])
    with pytest.raises(NonFiniteError, match=rf"round 2, client {bad}: state tensor 'w'"):
        _run(tmp_path, "abort", bad)
    assert [r for r, _ in list_checkpoints(tmp_path)] == [1]
    assert "dropped_clients" not in read_checkpoint(tmp_path / "round_00001.h5").metrics


def test_no_client_hook_without_the_fault_variable(monkeypatch, tmp_path):
    """Unset (every real run) the client loop holds no hook, so the test-only poisoning
    costs nothing: it is never called. Set, the named client of the named round is
    poisoned and, under skip_client, dropped, as the outcome of serve says."""
    calls = []
    monkeypatch.setattr(faults, "poison_client", lambda *a: calls.append(a) or a[2])
    monkeypatch.delenv(faults.NAN_CLIENT, raising=False)
    faults.nan_clients.cache_clear()
    try:
        _, _, sim = _simulation("skip_client", bad=None)
        assert sim.poison is None
        outcome = sim.serve(tmp_path / "clean")
        assert calls == [] and outcome.dropped == {}
        assert (outcome.rounds_done, outcome.rounds_run, outcome.stopped_after) == (3, 3, None)

        monkeypatch.undo()  # the real poison_client
        victim = int(sample_clients(3, 1, 6, 3)[2])
        monkeypatch.setenv(faults.NAN_CLIENT, f"2:{victim}")
        faults.nan_clients.cache_clear()
        _, _, sim = _simulation("skip_client", bad=None)
        assert sim.poison is faults.poison_client
        outcome = sim.serve(tmp_path / "poisoned")
        assert list(outcome.dropped) == [2] and list(outcome.dropped[2]) == [victim]
        assert "state tensor 'w'" in outcome.dropped[2][victim]
    finally:
        monkeypatch.delenv(faults.NAN_CLIENT, raising=False)
        faults.nan_clients.cache_clear()
