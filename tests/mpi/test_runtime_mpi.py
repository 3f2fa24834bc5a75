"""The MPI runtime in-process, under ``mpirun -n 3 python -m pytest --with-mpi tests/mpi``.

Each test runs a federation on COMM_WORLD and compares it with the same
federation run by rank 0 alone on COMM_SELF (the one-process path). Asserts
are collective: rank 0 decides and broadcasts, so a failure never leaves
another rank waiting; the thread timeout ends a stuck rank (and so the job).
"""

from __future__ import annotations

import sys
import traceback

import numpy as np
import pytest
import torch
from mpi4py import MPI

from fednas_mpi.algorithms import Algorithm, ClientResult, DataInfo, GlobalModel
from fednas_mpi.algorithms.fedavg import FedAvg
from fednas_mpi.config import from_dict
from fednas_mpi.data import Dataset, make_partition
from fednas_mpi.runtime import comm as mpi
from fednas_mpi.runtime.protocol import fold_in_order
from fednas_mpi.runtime.schedule import sample_clients
from fednas_mpi.runtime.simulation import Simulation
from fednas_mpi.store import read_checkpoint

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(120, method="thread")]

WORLD = MPI.COMM_WORLD


def collective(ok: bool, message: str = "") -> None:
    """Every rank passes or every rank fails, with rank 0's verdict."""
    oks = WORLD.allgather((bool(ok), message))
    bad = [f"rank {r}: {m}" for r, (o, m) in enumerate(oks) if not o]
    assert not bad, "; ".join(bad)


def _dataset(n=240, classes=4, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.arange(n) % classes
    return Dataset("synthetic", x, y, x[:40], y[:40], num_classes=classes)


class Personal(Algorithm):
    """A toy personalised two-stage method whose arithmetic is easy to follow.

    Stage 'search' (rounds 0-1): each client adds (client id + 1) * (round + 1)
    to every entry of w and keeps a per-client counter of its visits and a
    running 'head'. At the end of round 1 the server switches to stage
    'retrain' with a new spec and a state of a different layout (v = 3 values
    from w), and counts its steps in server_state.
    """

    name = "personal"
    client_metrics = ("visits",)

    def stage(self, round_):
        return "search" if round_ < 2 else "retrain"

    def init_global(self):
        return GlobalModel(
            {"stage": "search"},
            {"w": torch.zeros(4)},
            {"steps": torch.zeros((), dtype=torch.int64)},
        )

    def client_update(self, model, data, ctx, client_state):
        visits = 0 if client_state is None else int(client_state["visits"])
        head = torch.zeros(2, dtype=torch.float64) if client_state is None else client_state["head"]
        (key,) = model.state
        step = float((data.client_id + 1) * (ctx.round + 1))
        new = {key: model.state[key] + step}
        head = head + float(model.state[key].sum())
        return ClientResult(
            new,
            float(data.num_train),
            {"visits": visits + 1},
            {"visits": torch.tensor(visits + 1), "head": head},
        )

    def server_step(self, model, averaged, metrics, ctx):
        steps = {"steps": model.server_state["steps"] + 1}
        if ctx.round == 1:
            return GlobalModel(
                {"stage": "retrain", "from": "w"}, {"v": averaged["w"][:3] * 0.5}, steps
            )
        return GlobalModel(model.spec, averaged, steps)

    def evaluate(self, model, x, y):
        (key,) = model.state
        return float(model.state[key].sum()), 0.5


def _simulate(comm, algo_cls, cfg, out_dir):
    """Run a federation; an exception on any rank aborts the job at once (no waiting peers)."""
    try:
        return _simulate_unguarded(comm, algo_cls, cfg, out_dir)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        WORLD.Abort(1)


def _simulate_unguarded(comm, algo_cls, cfg, out_dir):
    dataset = _dataset()
    partition = make_partition(dataset.train_y.numpy(), cfg.partition, cfg.run.seed)
    algo = algo_cls(cfg, DataInfo(dataset.input_shape, dataset.num_classes))
    sim = Simulation(cfg, comm, dataset, partition, algo)
    if comm.Get_rank() == 0:
        return sim.serve(out_dir).model, partition
    sim.work_loop()
    return None, partition


CFG = {
    "run": {"seed": 5, "rounds": 4},
    "partition": {"num_clients": 6, "min_train": 4},
    "federation": {"clients_per_round": 4},
    "runtime": {"poll_interval_ms": 0.2},
}


def test_personalised_two_stage_method_matches_one_process_run(tmp_path):
    cfg = from_dict(CFG)
    world_model, partition = _simulate(WORLD, Personal, cfg, tmp_path / "world")
    ok, msg = True, ""
    if WORLD.Get_rank() == 0:
        solo, _ = _simulate(MPI.COMM_SELF, Personal, cfg, tmp_path / "solo")
        a = read_checkpoint(tmp_path / "world" / "round_00004.h5")
        b = read_checkpoint(tmp_path / "solo" / "round_00004.h5")
        sizes = partition.train_sizes().astype(float)
        # hand computation of w after rounds 0 and 1, then v = w[:3] / 2 and two more rounds
        w = 0.0
        for r in range(2):
            cs = sample_clients(cfg.run.seed, r, 6, 4)
            w += sum(sizes[c] * (c + 1) * (r + 1) for c in cs) / sum(sizes[c] for c in cs)
        v = w * 0.5
        for r in range(2, 4):
            cs = sample_clients(cfg.run.seed, r, 6, 4)
            v += sum(sizes[c] * (c + 1) * (r + 1) for c in cs) / sum(sizes[c] for c in cs)
        visits = {}
        for r in range(4):
            for c in sample_clients(cfg.run.seed, r, 6, 4):
                visits[c] = visits.get(c, 0) + 1
        checks = [
            (
                list(world_model.state) == ["v"] and world_model.spec["stage"] == "retrain",
                f"final model {world_model.spec} {list(world_model.state)}",
            ),
            (
                torch.allclose(world_model.state["v"], torch.full((3,), v), atol=1e-4),
                f"v {world_model.state['v']} != {v}",
            ),
            (all(torch.equal(a.state[k], b.state[k]) for k in b.state), "state differs"),
            (int(a.server_state["steps"]) == 4, "server steps"),
            (
                {c: int(s["visits"]) for c, s in a.client_states.items()} == visits,
                f"visits {a.client_states.keys()} vs {visits}",
            ),
            (
                all(
                    torch.equal(a.client_states[c]["head"], b.client_states[c]["head"])
                    for c in visits
                ),
                "client heads differ from the one-process run",
            ),
            (a.client_states[0]["head"].dtype == torch.float64, "client state dtype"),
            (a.stages == ["search", "search", "retrain", "retrain"], f"stages {a.stages}"),
            (np.array_equal(a.metrics["global_loss"], b.metrics["global_loss"]), "metrics"),
            (np.allclose(a.metrics["clients"], 4), "clients per round"),
        ]
        bad = [m for c, m in checks if not c]
        ok, msg = not bad, "; ".join(bad)
    collective(ok, msg)


def test_fedavg_world_equals_one_process(tmp_path):
    cfg = from_dict(
        {**CFG, "model": {"channels": [4, 8], "hidden": 16}, "federation": {"clients_per_round": 5}}
    )
    _simulate(WORLD, FedAvg, cfg, tmp_path / "world")
    ok, msg = True, ""
    if WORLD.Get_rank() == 0:
        _simulate(MPI.COMM_SELF, FedAvg, cfg, tmp_path / "solo")
        a = read_checkpoint(tmp_path / "world" / "round_00004.h5")
        b = read_checkpoint(tmp_path / "solo" / "round_00004.h5")
        diffs = {k: float((a.state[k] - b.state[k]).abs().max()) for k in a.state}
        ok = max(diffs.values()) <= 1e-6 and np.allclose(
            a.metrics["global_acc"], b.metrics["global_acc"], atol=1e-6
        )
        msg = f"max |diff| {max(diffs.values())}"
    collective(ok, msg)


def test_helpers_bcast_object_and_agree():
    obj = {"plan": [1, 2, 3], "text": "x" * 100_000} if WORLD.Get_rank() == 0 else None
    got = mpi.bcast_object(WORLD, obj, poll_s=0.0005)
    collective(got == {"plan": [1, 2, 3], "text": "x" * 100_000}, "bcast_object")
    err = "disk full" if WORLD.Get_rank() == WORLD.Get_size() - 1 else None
    collective(mpi.agree(WORLD, err) == "disk full", "agree must report the failing rank's error")
    collective(mpi.agree(WORLD, None) is None, "agree without errors")
    buf = np.arange(5.0) if WORLD.Get_rank() == 0 else np.zeros(5)
    mpi.bcast_array(WORLD, buf, poll_s=0)
    collective(np.array_equal(buf, np.arange(5.0)), "bcast_array")


@pytest.mark.parametrize("late", ["first", "last"])
def test_fold_in_order_is_independent_of_arrival_order(late):
    """Workers send in reverse rank order (or the first one is slowest): the server's
    total is bit-equal to the plain in-order sum, and folding starts before the slow
    sender's buffer arrives."""
    import time as _time

    size, rank, n = 1000, WORLD.Get_rank(), WORLD.Get_size()
    parts = [np.random.default_rng(w).standard_normal(size) * 10.0**w for w in range(n - 1)]
    tag = 77
    if rank == 0:
        bufs = [np.empty(size) for _ in range(n - 1)]
        reqs = [WORLD.Irecv(bufs[w], source=w + 1, tag=tag) for w in range(n - 1)]
        t0 = _time.perf_counter()
        total, tail = fold_in_order(reqs, bufs, size, poll_s=0.0005)
        elapsed = _time.perf_counter() - t0
        expect = np.zeros(size)
        for p in parts:
            expect += p
        # tail is the folding left after the last arrival: none without senders; else at
        # least the last buffer's add, and never the waiting, so well under the 50 ms
        # between two senders (and under the call's own time)
        tail_ok = tail == 0.0 if n == 1 else 0.0 < tail < min(0.05, elapsed)
        ok = np.array_equal(total, expect) and tail_ok
        msg = f"fold differs from in-order sum or tail {tail} s is not the fold after arrival"
    else:
        w = rank - 1
        delay = (n - 1 - w) if late == "first" else w + 1
        _time.sleep(0.05 * delay)
        WORLD.Send(parts[w], dest=0, tag=tag)
        ok, msg = True, ""
    collective(ok, msg)


def test_round_metrics_record_every_time_component(tmp_path):
    cfg = from_dict({**CFG, "model": {"channels": [4, 8], "hidden": 16}})
    _simulate(WORLD, FedAvg, cfg, tmp_path / "world")
    ok, msg = True, ""
    if WORLD.Get_rank() == 0:
        m = read_checkpoint(tmp_path / "world" / "round_00004.h5").metrics
        names = ("compute_time", "comm_time", "aggregate_time", "eval_time", "round_time")
        bad = [k for k in names if not (np.isfinite(m[k]).all() and (m[k] >= 0).all())]
        ck = m["checkpoint_time"]  # a file cannot hold its own write time
        if not (np.isfinite(ck[:-1]).all() and (ck[:-1] > 0).all() and np.isnan(ck[-1])):
            bad.append(f"checkpoint_time {ck}")
        parts = m["compute_time"] + m["comm_time"] + m["aggregate_time"] + m["eval_time"]
        if not (parts <= m["round_time"] * 1.01 + 1e-3).all():
            bad.append(f"components {parts} exceed round_time {m['round_time']}")
        ok, msg = not bad, "; ".join(bad)
    collective(ok, msg)


class SlowEval(FedAvg):
    """FedAvg whose every evaluation takes at least 0.2 s more (the server's, only)."""

    def evaluate(self, model, x, y):
        import time as _time

        _time.sleep(0.2)
        return super().evaluate(model, x, y)


def test_method_time_excludes_evaluation(tmp_path):
    """method_time is the round's compute + communication + aggregation; the server's test
    and validation evaluations (0.4 s extra per round here) land in eval_time only."""
    cfg = from_dict(
        {**CFG, "model": {"channels": [4, 8], "hidden": 16}, "run": {**CFG["run"], "val_every": 1}}
    )
    _simulate(WORLD, SlowEval, cfg, tmp_path / "world")
    ok, msg = True, ""
    if WORLD.Get_rank() == 0:
        m = read_checkpoint(tmp_path / "world" / "round_00004.h5").metrics
        bad = []
        parts = m["compute_time"] + m["comm_time"] + m["aggregate_time"]
        if not np.allclose(m["method_time"], parts, rtol=1e-12):
            bad.append(f"method_time {m['method_time']} != parts {parts}")
        if not (m["eval_time"] >= 0.4).all():
            bad.append(f"eval_time {m['eval_time']} misses the slow evaluations")
        if not (m["round_time"] - m["method_time"] >= 0.4).all():
            bad.append(
                f"method_time {m['method_time']} holds evaluation (round_time {m['round_time']})"
            )
        ok, msg = not bad, "; ".join(bad)
    collective(ok, msg)


@pytest.mark.parametrize("algo", [FedAvg, Personal], ids=["fedavg", "personal"])
def test_torch_gloo_transport_equals_mpi_transport(tmp_path, algo):
    """runtime.transport: torch (torch.distributed on gloo, initialised from MPI) moves the
    same bytes as the MPI transport: final states and metrics are bit-identical."""
    base = {**CFG, "model": {"channels": [4, 8], "hidden": 16}}
    runs = {}
    for transport in ("mpi", "torch"):
        cfg = from_dict({**base, "runtime": {**CFG["runtime"], "transport": transport}})
        _simulate(WORLD, algo, cfg, tmp_path / transport)
        runs[transport] = tmp_path / transport
    ok, msg = True, ""
    if WORLD.Get_rank() == 0:
        a = read_checkpoint(runs["mpi"] / "round_00004.h5")
        b = read_checkpoint(runs["torch"] / "round_00004.h5")
        bad = [k for k in a.state if not torch.equal(a.state[k], b.state[k])]
        bad += [
            k
            for k in ("global_acc", "global_loss")
            if not np.array_equal(a.metrics[k], b.metrics[k])
        ]
        ok, msg = not bad, f"differ: {bad}"
    import torch.distributed as dist

    collective(ok and not dist.is_initialized(), msg or "process group left initialised")


class NanClient(FedAvg):
    """FedAvg whose client BAD returns NaN weights in round 2 (index 1)."""

    BAD = int(
        sample_clients(
            CFG["run"]["seed"],
            1,
            CFG["partition"]["num_clients"],
            CFG["federation"]["clients_per_round"],
        )[0]
    )

    def client_update(self, model, data, ctx, client_state):
        res = super().client_update(model, data, ctx, client_state)
        if ctx.round == 1 and data.client_id == self.BAD:
            res.state = {
                k: v * float("nan") if v.is_floating_point() else v for k, v in res.state.items()
            }
        return res


def test_skip_client_on_workers_equals_one_process(tmp_path):
    """A worker leaves the bad client out and tells the server; the result and the records
    equal the one-process run's."""
    cfg = from_dict(
        {
            **CFG,
            "model": {"channels": [4, 8], "hidden": 16},
            "run": {**CFG["run"], "on_nonfinite": "skip_client"},
        }
    )
    _simulate(WORLD, NanClient, cfg, tmp_path / "world")
    ok, msg = True, ""
    if WORLD.Get_rank() == 0:
        _simulate(MPI.COMM_SELF, NanClient, cfg, tmp_path / "solo")
        a = read_checkpoint(tmp_path / "world" / "round_00004.h5")
        b = read_checkpoint(tmp_path / "solo" / "round_00004.h5")
        diff = max(float((a.state[k] - b.state[k]).abs().max()) for k in a.state)
        dropped = a.client_metrics["dropped"]
        ok = (
            diff <= 1e-6
            and list(a.metrics["dropped_clients"]) == [0, 1, 0, 0]
            and np.array_equal(dropped, b.client_metrics["dropped"], equal_nan=True)
            and dropped[1, NanClient.BAD] == 1
            and np.nansum(dropped) == 1
            and all(bool(torch.isfinite(t).all()) for t in a.state.values())
        )
        msg = f"diff {diff}, dropped_clients {a.metrics['dropped_clients']}"
    collective(ok, msg)


def test_abort_on_a_worker_result_releases_every_rank_with_status_4(tmp_path):
    from fednas_mpi.runtime.guards import NonFiniteError

    cfg = from_dict({**CFG, "model": {"channels": [4, 8], "hidden": 16}})
    dataset = _dataset()
    partition = make_partition(dataset.train_y.numpy(), cfg.partition, cfg.run.seed)
    sim = Simulation(
        cfg,
        WORLD,
        dataset,
        partition,
        NanClient(cfg, DataInfo(dataset.input_shape, dataset.num_classes)),
    )
    ok, msg = True, ""
    if WORLD.Get_rank() == 0:
        try:
            sim.serve(tmp_path / "run")
            ok, msg = False, "serve did not raise"
        except NonFiniteError as e:
            text = str(e)
            ok = f"round 2, client {NanClient.BAD}: state tensor " in text
            msg = text
        sim.release_workers(4)
        files = sorted(p.name for p in (tmp_path / "run").iterdir())
        ok = ok and files == ["round_00001.h5"]
        msg += f" files {files}"
    else:
        code = sim.work_loop()
        ok, msg = code == 4, f"worker exit code {code}"
    collective(ok, msg)
