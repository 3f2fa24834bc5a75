"""bench/gpu_quick.sh --dry-run: the whole GPU check on the CPU at toy shapes (no GPU, no
wheels; this Python and its mpirun), into one archive. How long it takes is not asserted:
each step runs under the script's own limit (scaled here for a shared machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from fednas_mpi.harness import mpirun

ROOT = Path(__file__).resolve().parents[1]
STEPS = [
    "env",
    "wheels",
    "data",
    "supernet",
    "compiled",
    "updates",
    "run_fedmetanas",
    "run_fednas",
    "stages",
    "project",
]


@pytest.mark.slow
def test_dry_run_runs_every_step_on_the_cpu(tmp_path):
    env = dict(
        os.environ,
        OUT=str(tmp_path / "out"),
        PYTHON=sys.executable,
        FEDNAS_MPI_MPIRUN=mpirun(),
        TMPDIR=str(tmp_path),
        # the dry run's per-step limits are for a quiet CPU; the suite shares the machine
        DRY_LIMIT_SCALE="4",
    )
    res = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_quick.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]

    with tarfile.open(tmp_path / "out" / "gpu_quick.tar.gz") as tar:
        files = {m.name: m for m in tar.getmembers()}

        def read(name: str) -> str:
            return tar.extractfile(files[f"gpu_quick/{name}"]).read().decode()

        steps = [line.split("\t") for line in read("steps.tsv").splitlines()]
        assert [s[0] for s in steps] == STEPS
        verdicts = dict((s[0], s[1]) for s in steps)
        assert verdicts["wheels"].startswith("skipped: dry run")
        # bench/supernet.py without --device yet: skipped with a message, never failed
        assert verdicts["supernet"] == "ok" or verdicts["supernet"].startswith("skipped")
        assert all(v == "ok" for k, v in verdicts.items() if k not in ("wheels", "supernet"))
        # the compiled cells' step beside the grouped one, its compile time apart
        (row,) = json.loads(read("compiled.json"))["steps"]
        assert row["compiled"]["compiles"] == 3  # the digits network's three cells
        assert row["compiled"]["compile_s"] > 0 and row["compiled"]["median_ms"] > 0

        updates = json.loads(read("updates.json"))["methods"]
        assert set(updates) == {"fedmetanas", "fednas"}
        assert set(updates["fedmetanas"]["step_s"]) == {"0.0", "0.5", "0.9", "derived"}
        # the projected schedule is the paper's (1000 rounds), not the measured run's
        assert updates["fedmetanas"]["schedule"] == {"warmup": 50, "final": 300}
        assert updates["fednas"]["schedule"] == {"search": 500}

        stages = json.loads(read("stages.json"))
        assert list(stages["fedmetanas"]["stages"]) == ["warmup", "search", "derived"]
        assert list(stages["fednas"]["stages"]) == ["search", "retrain"]

        rows = json.loads(read("projection.json"))["rows"]
        assert {r["method"] for r in rows} == {"fedmetanas", "fednas"}
        assert all(r["hours"] > 0 for r in rows)
        assert "gpu_quick/runs/fedmetanas.genotype.json" in files
        assert not any(n.endswith(".h5") for n in files)  # the archive stays small
    # the summary, last in the output, has the projection beside Table 2
    assert "| fedmetanas |" in res.stdout and "7.12" in res.stdout and "19.47" in res.stdout
