"""The jobs/ scripts on a real SLURM: a one-node cluster on localhost (tests/slurm/start_slurm.sh).

The scripts are submitted unchanged, scaled down on the command line (3 ranks, no GPUs,
one CPU per rank, a tiny config). With CI=true these tests must run: a cluster that cannot
start is a failure; elsewhere they skip with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import launch, write_config

from fednas_mpi.harness import mpirun
from fednas_mpi.store import list_checkpoints, read_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

REPO = Path(__file__).resolve().parents[2]
START = REPO / "tests" / "slurm" / "start_slurm.sh"
SCALED = [
    "--ntasks=3",
    "--nodes=1",
    "--gpus-per-node=0",
    "--cpus-per-task=1",
    "--time=60:00",
]  # well beyond the scripts' --signal lead times (300, 600 s)
DONE = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
)


def _ready() -> str | None:
    """None when sbatch can reach a controller with a node that takes jobs, else why not."""
    if not shutil.which("sbatch"):
        return "sbatch not found (apt-get install slurm-wlm munge)"
    res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        return f"sinfo failed: {res.stderr.strip()}"
    if not re.search(r"^(idle|mixed|allocated|completing)", res.stdout, re.M):
        return f"no node takes jobs (sinfo: {res.stdout.strip()!r})"
    return None


@pytest.fixture(scope="module")
def slurm():
    why = _ready()
    if why and shutil.which("sbatch") and os.geteuid() == 0:
        res = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=120)
        why = _ready() if res.returncode == 0 else f"{START.name} failed: {res.stdout}{res.stderr}"
    if why:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"SLURM tests must run in CI, but SLURM is not usable: {why}")
        pytest.skip(f"no usable SLURM here: {why}")


def _env(**extra: str) -> dict[str, str]:
    """The job's environment: this Python and its launcher, and the variables the scripts
    read (sbatch passes the whole environment with --export=ALL)."""
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        FEDNAS_JOBS_DIR=str(REPO / "jobs"),
        FEDNAS=f"{sys.executable} -m fednas_mpi",
        MPIRUN=mpirun(),
    )
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.update(extra)
    return env


def _submit(script: str, log: Path, env: dict[str, str], *options: str) -> str:
    res = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--export=ALL",
            f"--output={log}",
            *SCALED,
            *options,
            str(REPO / "jobs" / script),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, f"sbatch {script}: {res.stderr}"
    return res.stdout.strip().split(";")[0]


def _job(jid: str) -> dict[str, str]:
    res = subprocess.run(
        ["scontrol", "-o", "show", "job", jid], capture_output=True, text=True, timeout=30
    )
    fields: dict[str, str] = {}
    for line in res.stdout.splitlines():  # an array job shows one line per task
        for key, value in re.findall(r"(\w+)=(\S*)", line):
            fields.setdefault(key, value)
            if key == "JobState" and value not in DONE:
                fields["JobState"] = value  # any task not done: not done
    return fields


def _wait(
    jids: list[str],
    logs: list[Path],
    timeout: float = 240,
    until=lambda info: info.get("JobState") in DONE,
) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        infos = [_job(j) for j in jids]
        if all(until(i) for i in infos):
            return infos
        if time.monotonic() > deadline:
            for j in jids:
                subprocess.run(["scancel", j], timeout=30)
            text = "\n".join(f"--- {p}\n{p.read_text() if p.exists() else '(none)'}" for p in logs)
            raise AssertionError(
                f"jobs {jids} not done in {timeout}s: {[i.get('JobState') for i in infos]}\n{text}"
            )
        time.sleep(1)


def _log(paths) -> str:
    return "\n".join(f"--- {p}\n{p.read_text()}" for p in paths if p.exists())


def test_job_scripts_run_scaled_down(slurm, tmp_path):
    """The one-node, multi-node and array scripts, each scaled to 3 ranks, all at once."""
    cfg = write_config(tmp_path / "tiny.yaml", run={"name": "tiny", "seed": 7, "rounds": 3})
    one, multi, root = tmp_path / "one", tmp_path / "multi", tmp_path / "sweep"
    logs = [tmp_path / "one.log", tmp_path / "multi.log"]
    jids = [
        _submit("one_node_8gpu.sbatch", logs[0], _env(CONFIG=str(cfg), RUN_DIR=str(one))),
        _submit(
            "multi_node.sbatch",
            logs[1],
            _env(CONFIG=str(cfg), RUN_DIR=str(multi)),
            "--ntasks-per-node=3",
        ),
        _submit(
            "array_seeds.sbatch",
            tmp_path / "sweep-%a.log",
            _env(CONFIGS=str(cfg), SEEDS="7 8", RUN_ROOT=str(root)),
            "--array=0-1",
        ),
    ]
    logs += [tmp_path / "sweep-0.log", tmp_path / "sweep-1.log"]
    infos = _wait(jids, logs)
    assert all(i["JobState"] == "COMPLETED" for i in infos), _log(logs)
    assert "signal:" not in _log(logs)  # no stop before the time limit's --signal
    finals = {}
    for run_dir in (one, multi, root / "tiny-seed7", root / "tiny-seed8"):
        files = list_checkpoints(run_dir)
        assert [r for r, _ in files] == [1, 2, 3], (run_dir, _log(logs))
        finals[run_dir.name] = read_checkpoint(files[-1][1])
        assert finals[run_dir.name].attrs["world_size"] == 3
    assert finals["tiny-seed8"].attrs["seed"] == 8 and finals["tiny-seed7"].attrs["seed"] == 7
    # same config and seed, same ranks: the one-node, multi-node and seed-7 runs agree exactly
    for name in ("multi", "tiny-seed7"):
        for k, v in finals["one"].state.items():
            assert torch.equal(v, finals[name].state[k]), (name, k)
    assert not torch.equal(
        finals["one"].state[next(iter(finals["one"].state))],
        finals["tiny-seed8"].state[next(iter(finals["one"].state))],
    )


def test_search_quality_array_runs_one_line_of_the_plan_per_task(slurm, tmp_path):
    """jobs/search_quality_array.sbatch: task i runs line i of the file that
    bench/search_quality.py --commands writes (RUN_DIR, CONFIG, --set overrides)."""
    cfg = write_config(tmp_path / "tiny.yaml", run={"name": "tiny", "seed": 7, "rounds": 3})
    plan = tmp_path / "plan.txt"
    plan.write_text(
        f"{tmp_path / 'a'}\t{cfg}\t--set run.seed=8 --set run.rounds=2\n"
        f"{tmp_path / 'b'}\t{cfg}\t--set algorithm.lr=0.1\n"
    )
    logs = [tmp_path / "sq-0.log", tmp_path / "sq-1.log"]
    jid = _submit(
        "search_quality_array.sbatch",
        tmp_path / "sq-%a.log",
        _env(COMMANDS=str(plan)),
        "--array=0-1",
    )
    (info,) = _wait([jid], logs)
    assert info["JobState"] == "COMPLETED", _log(logs)
    a = read_checkpoint(list_checkpoints(tmp_path / "a")[-1][1], tensors=False)
    b = read_checkpoint(list_checkpoints(tmp_path / "b")[-1][1], tensors=False)
    assert (a.round, a.attrs["seed"]) == (2, 8) and (b.round, b.attrs["seed"]) == (3, 7)
    assert "lr: 0.1" in b.config_yaml


def test_signal_stops_the_round_requeues_and_resumes_to_the_same_state(slurm, tmp_path):
    """SIGUSR1 to a running job's batch script (what --signal=B:USR1@T sends before the time
    limit): rank 0 finishes the round, the job requeues itself, the requeued job resumes from
    the newest checkpoint and ends bit-identical to an uninterrupted run with the same ranks."""
    rounds = 20
    cfg = write_config(
        tmp_path / "cfg.yaml",
        run={"name": "pre", "seed": 3, "rounds": rounds},
        algorithm={"name": "fedavg", "local_epochs": 3, "batch_size": 16, "lr": 0.05},
    )
    run_dir, log = tmp_path / "run", tmp_path / "job.log"
    jid = _submit("one_node_8gpu.sbatch", log, _env(CONFIG=str(cfg), RUN_DIR=str(run_dir)))
    deadline = time.monotonic() + 180
    while not (run_dir / "round_00001.h5").exists():
        state = _job(jid).get("JobState")
        assert state not in DONE and time.monotonic() < deadline, f"{state}\n{_log([log])}"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", "--batch", jid], check=True, timeout=30)
    # meanwhile, the uninterrupted reference run, outside SLURM, on as many ranks
    ref = launch(3, [str(cfg), "--out", str(tmp_path / "ref")], timeout=240)
    assert ref.returncode == 0, ref.stderr
    # the job requeued itself: SLURM holds a requeued job ~2 minutes (BeginTime); release it
    info = _wait(
        [jid],
        [log],
        timeout=120,
        until=lambda i: int(i.get("Restarts", 0)) >= 1 or i.get("JobState") in DONE,
    )[0]
    assert int(info.get("Restarts", 0)) >= 1, f"job did not requeue: {info}\n{_log([log])}"
    if info.get("JobState") == "PENDING":
        subprocess.run(["scontrol", "update", f"JobId={jid}", "StartTime=now"], timeout=30)
    info = _wait([jid], [log], timeout=180)[0]
    text = log.read_text()
    assert info["JobState"] == "COMPLETED", text
    stopped = re.search(r"stopped on request after round (\d+)", text)
    assert stopped and int(stopped.group(1)) < rounds, text
    assert "requeueing job" in text, text
    assert f"resuming at round {int(stopped.group(1)) + 1}" in text, text
    a = read_checkpoint(tmp_path / "ref" / f"round_{rounds:05d}.h5")
    b = read_checkpoint(run_dir / f"round_{rounds:05d}.h5")
    assert list(a.state) == list(b.state)
    for k in a.state:
        assert torch.equal(a.state[k], b.state[k]), k
    for k in ("global_acc", "global_loss", "train_loss"):
        np.testing.assert_array_equal(a.metrics[k], b.metrics[k])
    assert not (run_dir / "STOP").exists()
