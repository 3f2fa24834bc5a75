"""Fault injection into real runs (``mpirun -n 2``, FedAvg on digits, 6 short rounds).

Each scenario breaks a run started with the start-or-resume command, then checks that the
job ended non-zero within 30 s, that every checkpoint it left reads back whole, and that
the same command completes the run bit-identical to an uninterrupted one. Random moments
come from a seeded generator (FEDNAS_FAULT_SEED, printed on failure) so a failure repeats.
Set FEDNAS_FAULT_REPORT=FILE to collect each scenario's status and time to exit.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
from faultkit import (
    EXIT_LIMIT_S,
    RUN_LIMIT_S,
    assert_checkpoints_whole,
    assert_same_final,
    finish,
    rank_pids,
    report,
    start,
    start_command,
    wait_exit,
    wait_for,
)
from helpers import TINY, write_config
from tmpfs import mounted_tmpfs

from fednas_mpi.harness import mpirun
from fednas_mpi.runtime.schedule import sample_clients
from fednas_mpi.store import list_checkpoints, read_checkpoint

pytestmark = pytest.mark.slow

RANKS, ROUNDS = 2, 6
SEED = int(os.environ.get("FEDNAS_FAULT_SEED", "19"))
REPO = Path(__file__).resolve().parents[2]
BASE = {
    **TINY,
    "run": {"name": "faults", "seed": 7, "rounds": ROUNDS},
    "algorithm": {**TINY["algorithm"], "local_epochs": 2},
}


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> Path:
    return write_config(tmp_path_factory.mktemp("cfg") / "cfg.yaml", base=BASE)


@pytest.fixture(scope="module")
def reference(cfg, tmp_path_factory) -> Path:
    """The uninterrupted run, started with the same start-or-resume command."""
    run = tmp_path_factory.mktemp("ref") / "run"
    job = start(RANKS, [str(cfg), "--out", str(run), "--resume"], run.parent)
    assert finish(job) == 0, job.stderr
    return run


def rng(name: str) -> random.Random:
    return random.Random(f"{SEED}:{name}")


def complete_and_compare(
    cfg: Path, run: Path, reference: Path, tmp_path: Path, extra: tuple[str, ...] = ()
) -> str:
    """The start-or-resume command finishes the run; it equals the reference bit for bit."""
    job = start(RANKS, [str(cfg), "--out", str(run), "--resume", *extra], tmp_path, name="resume")
    assert finish(job) == 0, job.stderr
    assert_checkpoints_whole(run)
    assert_same_final(reference, run, ROUNDS)
    assert not list(run.glob(".round_*.tmp-*"))
    return job.stderr


def has_checkpoint(run: Path, round_: int = 1) -> bool:
    return run.is_dir() and any(r >= round_ for r, _ in list_checkpoints(run))


def exit_after_round(job, run: Path, round_: int) -> tuple[int, float]:
    """A fault hooked into the round after ``round_``: once that round's checkpoint is
    there, the job must end within the limit; (status, seconds from that checkpoint)."""
    wait_for(
        lambda: has_checkpoint(run, round_) or job.proc.poll() is not None,
        RUN_LIMIT_S,
        f"round {round_}'s checkpoint",
    )
    return wait_exit(job, EXIT_LIMIT_S)


def kill_at(job, run: Path, target: int, moment: str, r: random.Random) -> dict:
    """SIGKILL rank ``target`` at a random point of ``moment``; what happened."""
    pids = rank_pids(job, RANKS)
    if moment == "before_first_checkpoint":
        wait_for(lambda: (run / "config.yaml").exists(), RUN_LIMIT_S, "config.yaml", job)
        time.sleep(r.uniform(0.0, 0.2))
        assert not has_checkpoint(run), "too late: the first checkpoint exists already"
    else:  # somewhere in rounds 2..ROUNDS
        wait_for(lambda: has_checkpoint(run), RUN_LIMIT_S, "the first checkpoint", job)
        time.sleep(r.uniform(0.0, 0.2))
    assert job.proc.poll() is None, "too late: the run had already ended"
    os.kill(pids[target], signal.SIGKILL)
    return {"rank": target, "checkpoints_at_kill": len(list_checkpoints(run))}


@pytest.mark.parametrize(
    "target,moment",
    [
        (1, "before_first_checkpoint"),
        (0, "before_first_checkpoint"),
        (1, "mid_run"),
        (0, "mid_run"),
        ("random", "random"),
    ],
)
def test_sigkill_a_rank(cfg, reference, tmp_path, target, moment):
    r = rng(f"{target}-{moment}")
    if target == "random":
        target, moment = r.randrange(RANKS), r.choice(["before_first_checkpoint", "mid_run"])
    run = tmp_path / "run"
    job = start(RANKS, [str(cfg), "--out", str(run), "--resume"], tmp_path)
    what = kill_at(job, run, target, moment, r)
    rc, seconds = wait_exit(job, EXIT_LIMIT_S)
    report(f"sigkill rank {target} {moment}", status=rc, exit_s=round(seconds, 2), **what)
    assert rc != 0
    assert_checkpoints_whole(run)
    complete_and_compare(cfg, run, reference, tmp_path)


def test_killed_before_first_checkpoint_the_jobs_wrapper_restarts_without_config(
    cfg, reference, tmp_path
):
    """jobs/common.sh after a job died before its first checkpoint: with no CONFIG it
    starts the run from RUN_DIR/config.yaml (the shell special case is gone)."""
    run = tmp_path / "run"
    job = start(RANKS, [str(cfg), "--out", str(run), "--resume"], tmp_path)
    kill_at(job, run, 0, "before_first_checkpoint", rng("wrapper"))
    assert wait_exit(job, EXIT_LIMIT_S)[0] != 0
    env = {
        "RUN_DIR": str(run),
        "RANKS": str(RANKS),
        "MPIRUN": mpirun(),
        "FEDNAS": f"{sys.executable} -m fednas_mpi",
    }
    env.pop("CONFIG", None)
    wrapper = start_command(
        ["bash", "-c", f"source {REPO / 'jobs/common.sh'} && fednas_run"], tmp_path, env, "wrapper"
    )
    assert finish(wrapper) == 0, wrapper.stderr + wrapper.stdout
    assert "starting or resuming the run" in wrapper.stdout
    assert_same_final(reference, run, ROUNDS)


def test_rank0_killed_while_writing_a_checkpoint(cfg, reference, tmp_path):
    run = tmp_path / "run"
    job = start(
        RANKS,
        [str(cfg), "--out", str(run), "--resume"],
        tmp_path,
        {"FEDNAS_FAULT_CHECKPOINT": "3:kill"},
    )
    rc, seconds = exit_after_round(job, run, 2)
    report("sigkill rank 0 during checkpoint write", status=rc, exit_s=round(seconds, 2))
    assert rc != 0
    assert assert_checkpoints_whole(run) == [1, 2]
    assert len(list(run.glob(".round_00003.h5.tmp-*"))) == 1  # what the killed writer left
    err = complete_and_compare(cfg, run, reference, tmp_path)
    assert "removed" in err and ".round_00003.h5.tmp-" in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_launcher(cfg, reference, tmp_path, sig):
    run = tmp_path / "run"
    job = start(RANKS, [str(cfg), "--out", str(run), "--resume"], tmp_path)
    wait_for(lambda: has_checkpoint(run), RUN_LIMIT_S, "the first checkpoint", job)
    time.sleep(rng(sig.name).uniform(0.0, 0.2))
    assert job.proc.poll() is None, "too late: the run had already ended"
    job.proc.send_signal(sig)
    rc, seconds = wait_exit(job, EXIT_LIMIT_S)
    report(f"{sig.name} to mpirun mid-run", status=rc, exit_s=round(seconds, 2))
    assert rc != 0
    assert_checkpoints_whole(run)
    complete_and_compare(cfg, run, reference, tmp_path)


def _round2_client(index: int) -> int:
    return int(
        sample_clients(
            BASE["run"]["seed"],
            1,
            TINY["partition"]["num_clients"],
            TINY["federation"]["clients_per_round"],
        )[index]
    )


def test_nan_in_one_client_aborts_once_and_resumes(cfg, reference, tmp_path):
    run = tmp_path / "run"
    bad = _round2_client(1)
    job = start(
        RANKS,
        [str(cfg), "--out", str(run), "--resume"],
        tmp_path,
        {"FEDNAS_FAULT_NAN_CLIENT": f"2:{bad}"},
    )
    rc, seconds = exit_after_round(job, run, 1)
    report("NaN in one client (abort)", status=rc, exit_s=round(seconds, 2))
    assert rc == 4, job.stderr
    err = job.stderr
    assert err.count("non-finite client result") == 1, err
    assert f"round 2, client {bad}: state tensor " in err and "Traceback" not in err
    assert assert_checkpoints_whole(run) == [1]  # nothing of round 2 was written
    complete_and_compare(cfg, run, reference, tmp_path)  # the fault gone: same as ever


def test_nan_in_one_client_is_skipped_under_skip_client(cfg, tmp_path):
    run = tmp_path / "run"
    bad = _round2_client(0)
    job = start(
        RANKS,
        [str(cfg), "--out", str(run), "--resume", "--set", "run.on_nonfinite=skip_client"],
        tmp_path,
        {"FEDNAS_FAULT_NAN_CLIENT": f"2:{bad}"},
    )
    rc = finish(job)
    report("NaN in one client (skip_client)", status=rc, exit_s=None)  # runs to the end
    assert rc == 0, job.stderr
    ck = read_checkpoint(run / f"round_{ROUNDS:05d}.h5")
    assert list(ck.metrics["dropped_clients"]) == [0, 1] + [0] * (ROUNDS - 2)
    assert ck.metrics["clients"][1] == TINY["federation"]["clients_per_round"] - 1
    assert ck.client_metrics["dropped"][1, bad] == 1
    assert all(t.isfinite().all() for t in ck.state.values() if t.is_floating_point())


def test_injected_enospc_is_one_message_and_resumes(cfg, reference, tmp_path):
    run = tmp_path / "run"
    job = start(
        RANKS,
        [str(cfg), "--out", str(run), "--resume"],
        tmp_path,
        {"FEDNAS_FAULT_CHECKPOINT": "3:enospc"},
    )
    rc, seconds = exit_after_round(job, run, 2)
    report("ENOSPC injected into a checkpoint write", status=rc, exit_s=round(seconds, 2))
    assert rc == 5, job.stderr
    err = job.stderr
    assert err.count("fednas-mpi: error: cannot write checkpoint") == 1, err
    assert f"{run / 'round_00003.h5'}: No space left on device (ENOSPC)" in err
    assert f"newest intact checkpoint is {run / 'round_00002.h5'}" in err
    assert "Traceback" not in err
    assert assert_checkpoints_whole(run) == [1, 2]
    assert not list(run.glob(".round_*"))  # temporary removed
    complete_and_compare(cfg, run, reference, tmp_path)


def test_full_tmpfs_with_keep_then_space_freed(cfg, reference, tmp_path):
    """A real full file system (skipped where no tmpfs can be mounted): store.keep: 2, the
    disk fills up in round 3; after space is freed the same command completes the run."""
    one = (reference / "round_00001.h5").stat().st_size
    with mounted_tmpfs(tmp_path / "mnt", "2m") as mnt:
        run = mnt / "run"
        filler = mnt / "filler"
        # room for config.yaml and 2.5 checkpoints: rounds 1 and 2 fit, round 3 is written
        # beside both (keep 2 prunes only after a write), so the disk fills up there
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        filler.write_bytes(b"\0" * int(free - 2.5 * one - 8 * 1024))
        job = start(
            RANKS, [str(cfg), "--out", str(run), "--resume", "--set", "store.keep=2"], tmp_path
        )
        rc, seconds = exit_after_round(job, run, 1)
        report(
            "full tmpfs (store.keep 2)",
            status=rc,
            exit_s=round(seconds, 2),
            rounds_left=assert_checkpoints_whole(run),
        )
        assert rc == 5, job.stderr + job.stdout
        err = job.stderr
        assert err.count("No space left on device (ENOSPC)") == 1, err
        left = assert_checkpoints_whole(run)
        assert left == [1, 2]
        assert f"newest intact checkpoint is {run / f'round_{left[-1]:05d}.h5'}" in err
        assert not list(run.glob(".round_*"))
        filler.unlink()  # the user frees space
        complete_and_compare(cfg, run, reference, tmp_path, ("--set", "store.keep=2"))
        assert [r for r, _ in list_checkpoints(run)] == [ROUNDS - 1, ROUNDS]
        shutil.rmtree(run)
