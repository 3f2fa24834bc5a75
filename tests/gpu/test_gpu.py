"""Every method on a GPU (``runtime.device: cuda``); skipped where torch sees no GPU.

References: the same config on the CPU (same random streams, since every draw comes from a
CPU generator, so the same clients, tasks and architecture decisions; numbers equal up to
float rounding: runtime.tf32 is off by default), the same GPU run again (bit for bit: cuDNN
is put in deterministic mode), and two workers sharing the GPU under ``mpirun -n 3`` (equal to the
one-rank GPU run, as on the CPU).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import launch
from methods import METHODS
from methods import run_config as _config

from fednas_mpi.cli import main
from fednas_mpi.store import list_checkpoints, read_checkpoint

needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device on this machine"
)


def _run(tmp_path, method, device, name):
    cfg = _config(tmp_path / f"{method}.yaml", method)
    out = tmp_path / name
    assert main([str(cfg), "--out", str(out), "--set", f"runtime.device={device}"]) == 0
    return read_checkpoint(list_checkpoints(out)[-1][1])


def _assert_same_spec(a, b, path="spec"):
    """Equal structure, masks and choices; floats (a genotype's mixing weights, rounded to
    4 digits) to 2e-3: after 2 rounds the GPU's alphas differ from the CPU's by ~1e-4."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), path
        for k in a:
            _assert_same_spec(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_spec(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert a == pytest.approx(b, rel=0, abs=2e-3), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _float_diff(a, b):
    return max(
        (
            float((x.double() - y.double()).abs().max())
            for x, y in zip(a, b)
            if x.is_floating_point() and x.numel()
        ),
        default=0.0,
    )


@needs_gpu
@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_on_gpu_matches_cpu_and_repeats(tmp_path, method):
    cpu = _run(tmp_path, method, "cpu", "cpu")
    gpu = _run(tmp_path, method, "cuda", "gpu")
    again = _run(tmp_path, method, "cuda", "again")
    assert [p["device"] for p in json.loads(gpu.attrs["devices"])] == ["cuda:0"]
    _assert_same_spec(gpu.spec, cpu.spec)  # the same architecture decisions
    assert sorted(gpu.client_states) == sorted(cpu.client_states)
    # bit for bit on a second GPU run
    for k in gpu.state:
        assert torch.equal(gpu.state[k], again.state[k]), k
    for k in gpu.metrics:
        if not k.endswith("_time"):
            np.testing.assert_array_equal(gpu.metrics[k], again.metrics[k], err_msg=k)
    # the CPU run's numbers up to rounding
    keys = sorted(gpu.state)
    diff = _float_diff([gpu.state[k] for k in keys], [cpu.state[k] for k in keys])
    print(f"{method}: max |gpu - cpu| over the global state = {diff:.2e}")
    for k in keys:
        torch.testing.assert_close(
            gpu.state[k],
            cpu.state[k],
            rtol=2e-2,
            atol=2e-3,
            msg=lambda m, k=k: f"{method} {k}: {m}",
        )
    for c in gpu.client_states:
        for k, v in gpu.client_states[c].items():
            torch.testing.assert_close(
                v,
                cpu.client_states[c][k],
                rtol=2e-2,
                atol=2e-3,
                msg=lambda m, c=c, k=k: f"client {c} {k}: {m}",
            )
    for k in ("global_acc", "personal_acc", "local_acc"):
        if k in gpu.metrics:
            np.testing.assert_allclose(gpu.metrics[k], cpu.metrics[k], atol=0.05, err_msg=k)


@needs_gpu
@pytest.mark.parametrize("method", ["fedmetanas", "fedpnas"])
def test_two_workers_sharing_the_gpu_equal_one_rank(tmp_path, method):
    """mpirun -n 3: ranks 1 and 2 both on cuda:0, rank 0 on the CPU; same as -n 1 on it."""
    cfg = _config(tmp_path / f"{method}.yaml", method)
    one = _run(tmp_path, method, "cuda", "one")
    res = launch(
        3, [str(cfg), "--out", str(tmp_path / "three"), "--set", "runtime.device=cuda"], timeout=600
    )
    assert res.returncode == 0, res.stderr
    assert "rank 0 cpu, ranks 1-2 cuda:0" in res.stdout, res.stdout
    three = read_checkpoint(list_checkpoints(tmp_path / "three")[-1][1])
    assert three.spec == one.spec  # same device and arithmetic: bit for bit
    for k in one.state:
        torch.testing.assert_close(three.state[k], one.state[k], rtol=0, atol=1e-5)
    np.testing.assert_allclose(three.metrics["global_acc"], one.metrics["global_acc"], atol=1e-5)


def test_config_for_every_method_is_valid_on_the_cpu(tmp_path):
    """Runs everywhere: the GPU tests' configs load (a typo would only show on a GPU)."""
    from fednas_mpi import config as config_mod

    for method in METHODS:
        config_mod.load(_config(tmp_path / f"{method}.yaml", method))
