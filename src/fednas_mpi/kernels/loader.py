"""Find or build the fused mixing library, in this order:

1. a prebuilt library from ``CMakeLists.txt`` (``$FEDNAS_KERNELS_LIBRARY``, or
   ``libfednas_kernels_abiN.so`` in this package's ``lib/``, where ``cmake --install`` puts it);
2. a JIT build with ``torch.utils.cpp_extension``, cached under ``$FEDNAS_KERNELS_CACHE``
   (default ``~/.cache/fednas-mpi/kernels``) by a key over the sources, torch and CUDA;
3. nothing: the caller falls back to the PyTorch reference.

The JIT build needs no lock: each builder compiles in a directory of its own (host and pid)
and renames the finished library into the cache, which is atomic. Concurrent builders on
other nodes of a shared file system both succeed and the last rename wins; a builder that
died leaves only its private directory behind, never a lock that blocks the next run.
Within one MPI job one rank per node builds while the others wait (see runtime).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

CSRC = Path(__file__).parent / "csrc"
PACKAGE_LIB = Path(__file__).parent / "lib"
NAMESPACE = "fednas"


def abi_version() -> int:
    """The ABI number of the sources (``kAbiVersion`` in csrc/mix.h)."""
    m = re.search(r"kAbiVersion\s*=\s*(\d+)", (CSRC / "mix.h").read_text())
    if m is None:  # pragma: no cover - the header is ours
        raise RuntimeError("csrc/mix.h lost its kAbiVersion line")
    return int(m.group(1))


def library_name() -> str:
    return f"libfednas_kernels_abi{abi_version()}.so"


@dataclass(frozen=True)
class LoadResult:
    ok: bool
    source: str  # "prebuilt", "jit", "jit-cache" or "" when nothing loaded
    path: str = ""
    error: str = ""


def is_loaded() -> bool:
    try:
        torch.ops.fednas.abi_version.default  # noqa: B018 - attribute lookup is the test
    except (AttributeError, RuntimeError):
        return False
    return True


def has_cuda_kernels() -> bool:
    return is_loaded() and torch._C._dispatch_has_kernel_for_dispatch_key("fednas::mix", "CUDA")


def _load(path: Path, source: str) -> LoadResult:
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError) as e:  # not a library, built for another torch, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return LoadResult(False, source, str(path), f"cannot load {path}: {first}")
    found = int(torch.ops.fednas.abi_version())
    if found != abi_version():
        # The namespace is now taken by a stale library: nothing else can load in this process.
        return LoadResult(
            False,
            source,
            str(path),
            f"{path} has kernel ABI {found}, the sources {abi_version()}: rebuild "
            f"it (see docs/kernels.md) or delete it",
        )
    return LoadResult(True, source, str(path))


def prebuilt_candidates() -> list[Path]:
    explicit = os.environ.get("FEDNAS_KERNELS_LIBRARY")
    if explicit:
        return [Path(explicit)]
    return [PACKAGE_LIB / library_name()]


def load_prebuilt() -> LoadResult | None:
    """Load the CMake library if there is one; None when there is none."""
    for path in prebuilt_candidates():
        if path.is_file():
            return _load(path, "prebuilt")
    if os.environ.get("FEDNAS_KERNELS_LIBRARY"):
        return LoadResult(
            False,
            "prebuilt",
            os.environ["FEDNAS_KERNELS_LIBRARY"],
            f"FEDNAS_KERNELS_LIBRARY={os.environ['FEDNAS_KERNELS_LIBRARY']} is not a file",
        )
    return None


def _cpp_extension():
    """``torch.utils.cpp_extension``, imported without its import-time notice "No CUDA
    runtime is found, using CUDA_HOME=..." (printed by every rank on a machine with a CUDA
    toolkit but no GPU): a build for a machine without a GPU compiles no CUDA, so where
    the toolkit lives does not matter. Real warnings of the build still show."""
    import logging

    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    if not torch.cuda.is_available():
        log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        log.setLevel(level)
    return cpp_extension


def want_cuda() -> bool:
    """Whether a JIT build should include the CUDA kernels (a GPU, CUDA torch, a toolkit)."""
    if not torch.cuda.is_available() or torch.version.cuda is None:
        return False  # decided without probing for a toolkit
    return _cpp_extension().CUDA_HOME is not None


def cache_dir() -> Path:
    explicit = os.environ.get("FEDNAS_KERNELS_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fednas-mpi" / "kernels"


def sources(with_cuda: bool) -> list[Path]:
    files = [CSRC / "mix.cpp"]
    return files + [CSRC / "mix_cuda.cu"] if with_cuda else files


# at::parallel_for runs its loop body under `#pragma omp parallel` inlined from ATen's
# headers: without -fopenmp the kernels would silently run on one thread. The library then
# needs libgomp.so.1, which torch's own (same soname) already provides in the process.
CFLAGS = ["-O3", "-fopenmp"]
LDFLAGS = ["-fopenmp"]


def build_key(with_cuda: bool) -> str:
    h = hashlib.sha256()
    h.update(" ".join(CFLAGS + LDFLAGS).encode())
    for f in sorted(CSRC.iterdir()):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    h.update(f"{torch.__version__}|{torch.version.cuda}|cuda={with_cuda}".encode())
    return h.hexdigest()[:16]


def jit_target(with_cuda: bool) -> Path:
    return cache_dir() / f"fednas_kernels_{build_key(with_cuda)}.so"


def load_cached(with_cuda: bool) -> LoadResult | None:
    target = jit_target(with_cuda)
    return _load(target, "jit-cache") if target.is_file() else None


def jit_build(with_cuda: bool, verbose: bool = False) -> LoadResult:
    """Compile the sources (CPU, plus CUDA when ``with_cuda``) and load the result."""
    cpp_extension = _cpp_extension()
    target = jit_target(with_cuda)
    name = target.stem
    private = target.parent / f".build-{name}-{socket.gethostname()}-{os.getpid()}"
    try:
        shutil.rmtree(private, ignore_errors=True)
        private.mkdir(parents=True)
        built = cpp_extension.load(
            name=name,
            sources=[str(s) for s in sources(with_cuda)],
            extra_include_paths=[str(CSRC)],
            extra_cflags=CFLAGS,
            extra_ldflags=LDFLAGS,
            extra_cuda_cflags=["-O3", "--use_fast_math"] if with_cuda else None,
            build_directory=str(private),
            is_python_module=False,
            with_cuda=with_cuda,
            verbose=verbose,
        )
        os.replace(built, target)  # atomic publish into the shared cache
    except Exception as e:  # compiler missing, compile error, unwritable cache, ...
        log = target.parent / f"{name}.build-error.log"
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text("".join(traceback.format_exception(e)))
            where = f"; the compiler output is in {log}"
        except OSError:
            where = ""
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return LoadResult(False, "jit", str(target), f"JIT build failed ({first}){where}")
    finally:
        shutil.rmtree(private, ignore_errors=True)
    if not is_loaded():  # pragma: no cover - load() registers the ops or raises
        return LoadResult(False, "jit", str(target), "the built library registered no ops")
    return LoadResult(True, "jit", str(target))
