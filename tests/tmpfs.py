"""A small tmpfs for full-disk tests: mounted where the machine allows it, else a skip."""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def mounted_tmpfs(path: Path, size: str):
    """Mount a tmpfs of ``size`` (e.g. "256k") at ``path`` for the block; skip the test with
    the reason when it cannot be mounted (not root, no mount permission in a container)."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e}); the injected ENOSPC tests cover the path")
    if res.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode}); the "
            f"injected ENOSPC tests cover the path"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)
