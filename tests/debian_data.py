"""The rule for tests on real data: the Debian Fashion-MNIST files, which CI installs.
(The small synthetic dataset files are ``fednas_mpi.harness.datafiles``.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def need_fashion_mnist() -> Path:
    """The Debian Fashion-MNIST directory; skip without it, except in CI where it must exist."""
    if not DEBIAN_FASHION_MNIST.is_dir() and not os.environ.get("CI"):
        pytest.skip(f"{DEBIAN_FASHION_MNIST} missing (apt-get install dataset-fashion-mnist)")
    return DEBIAN_FASHION_MNIST
