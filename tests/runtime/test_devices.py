"""Device pinning: worker ranks take a GPU by node-local worker index; CPU without GPUs."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import launch, write_config

from fednas_mpi.config import from_dict
from fednas_mpi.runtime.devices import DeviceError, Placement, choose, describe
from fednas_mpi.store import read_checkpoint


def _rt(**kw):
    return from_dict({"runtime": kw}).runtime


def _node(ranks, visible, **kw):
    """Devices of world ranks ``ranks`` on one node (workers numbered in rank order)."""
    workers = [r for r in ranks if r != 0]
    return [choose(r, workers.index(r) if r else -1, visible, _rt(**kw)) for r in ranks]


def test_nine_ranks_on_eight_gpus():
    assert _node(range(9), 8) == ["cpu"] + [f"cuda:{i}" for i in range(8)]
    assert _node(range(9), 8, server_device="gpu")[:2] == ["cuda:0", "cuda:0"]


def test_server_device_auto_takes_the_first_chosen_gpu_when_there_is_one():
    assert _node(range(9), 8, server_device="auto")[:2] == ["cuda:0", "cuda:0"]
    assert _node(range(3), 8, server_device="auto", gpus=[5, 6]) == ["cuda:5", "cuda:5", "cuda:6"]
    # no GPU, or the run kept off GPUs: every rank on the CPU, no error (unlike device=cuda)
    assert _node(range(3), 0, server_device="auto") == ["cpu"] * 3
    assert _node(range(3), 4, server_device="auto", device="cpu") == ["cpu"] * 3


def test_a_lone_rank_is_its_own_worker():
    # -n 1: rank 0 serves and runs every client, so it computes on the first (chosen) GPU
    assert choose(0, 0, 2, _rt()) == "cuda:0"
    assert choose(0, 0, 8, _rt(gpus=[3])) == "cuda:3"
    assert choose(0, 0, 0, _rt()) == "cpu"
    assert choose(0, 0, 2, _rt(device="cpu")) == "cpu"


def test_second_node_and_fewer_gpus_than_workers():
    # a second node of a 17-rank job holds ranks 9..16: its workers start again at GPU 0
    assert _node(range(9, 17), 8) == [f"cuda:{i}" for i in range(8)]
    # 5 workers, 2 GPUs: round-robin; several clients per rank share the rank's GPU anyway
    assert _node(range(6), 2) == ["cpu", "cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]


def test_config_override_cpu_and_errors():
    assert _node(range(4), 8, gpus=[6, 7]) == ["cpu", "cuda:6", "cuda:7", "cuda:6"]
    assert _node(range(3), 0) == ["cpu"] * 3  # no GPU: CPU (auto)
    assert _node(range(3), 4, device="cpu") == ["cpu"] * 3
    with pytest.raises(DeviceError, match="sees no GPU"):
        _node(range(3), 0, device="cuda")
    with pytest.raises(DeviceError, match=r"GPU\(s\) \[5\] not visible"):
        _node(range(3), 2, gpus=[0, 5])
    with pytest.raises(Exception, match="GPU ids are >= 0"):
        from_dict({"runtime": {"gpus": [-1]}})


def test_describe_groups_ranks_per_host():
    ps = [
        Placement(0, "a", 0, "cpu"),
        Placement(1, "a", 1, "cuda:0"),
        Placement(2, "a", 2, "cuda:0"),
        Placement(3, "b", 0, "cuda:1"),
    ]
    assert describe(ps) == "a: rank 0 cpu, ranks 1-2 cuda:0; b: rank 3 cuda:1"


@pytest.mark.slow
def test_mapping_logged_once_and_stored_in_checkpoint(tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", run={"name": "dev", "seed": 1, "rounds": 1})
    res = launch(3, [str(cfg), "--out", str(tmp_path / "run")])
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("devices:")]
    assert len(lines) == 1 and "ranks 0-2 cpu" in lines[0], res.stdout
    stored = json.loads(read_checkpoint(tmp_path / "run" / "round_00001.h5").attrs["devices"])
    assert [p["rank"] for p in stored] == [0, 1, 2]
    assert {p["device"] for p in stored} == {"cpu"}  # this machine has no GPU
    # asking for a GPU where there is none: one message from rank 0, status 2, no round run
    bad = launch(3, [str(cfg), "--out", str(tmp_path / "bad"), "--set", "runtime.device=cuda"])
    assert bad.returncode == 2 and bad.stderr.count("sees no GPU") == 1, bad.stderr
    assert not list((tmp_path / "bad").glob("round_*.h5"))


@pytest.mark.slow
def test_cli_torch_transport_equals_mpi_transport(tmp_path):
    """fednas-mpi with runtime.transport: torch (gloo here) ends bit-identical to mpi."""
    import torch

    cfg = write_config(tmp_path / "cfg.yaml", run={"name": "tr", "seed": 2, "rounds": 2})
    for t in ("mpi", "torch"):
        res = launch(3, [str(cfg), "--out", str(tmp_path / t), "--set", f"runtime.transport={t}"])
        assert res.returncode == 0, res.stderr
    a = read_checkpoint(tmp_path / "mpi" / "round_00002.h5")
    b = read_checkpoint(tmp_path / "torch" / "round_00002.h5")
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)


@pytest.mark.parametrize("tf32", [True, False])
def test_tf32_follows_the_config(tf32):
    from mpi4py import MPI

    from fednas_mpi.runtime.devices import place

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        mine, _, error = place(MPI.COMM_SELF, _rt(tf32=tf32, device="cpu"))
        assert not error and mine.device == "cpu"
        assert torch.backends.cuda.matmul.allow_tf32 is tf32
        assert torch.backends.cudnn.allow_tf32 is tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
