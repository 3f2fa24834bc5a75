"""Building and loading the fused kernels: JIT cache without locks, fallbacks with one clear
message, the CMake library (CPU and CUDA) loadable with torch.ops.load_library.

Each case runs in a fresh Python process: a loaded op library cannot be unloaded."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY, launch, write_config

pytestmark = pytest.mark.build

ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

PROBE = """
import json, warnings
import torch
from fednas_mpi import kernels
from fednas_mpi.kernels import loader
backend = {backend!r}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        st = kernels.configure(backend)
        error = ""
    except kernels.KernelError as e:
        st, error = kernels.status(), str(e)
ok_numbers = None
if st.backend == "fused":
    x = [torch.randn(3, 5, 7, dtype=torch.float64) for _ in range(3)]
    w = torch.randn(3, dtype=torch.float64)
    ok_numbers = bool(torch.allclose(kernels.mix(x, w), kernels.reference_mix(x, w)))
print(json.dumps({{"backend": st.backend, "source": st.source, "path": st.path,
                  "reason": st.reason, "error": error, "numbers": ok_numbers,
                  "cuda": loader.has_cuda_kernels(),
                  "warnings": [str(w.message) for w in caught]}}))
"""


def probe(env_extra: dict, backend: str = "auto", timeout: float = 600) -> dict:
    import json

    env = dict(os.environ, **env_extra)
    res = subprocess.run(
        [sys.executable, "-c", PROBE.format(backend=backend)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(900)
def test_jit_build_without_locks(tmp_path):
    cache = tmp_path / "cache"
    env = {"FEDNAS_KERNELS_CACHE": str(cache), "FEDNAS_KERNELS_LIBRARY": ""}
    # A builder that died mid-build left its private directory (with a lock file) behind.
    stale = cache / ".build-fednas_kernels_0123456789abcdef-deadhost-4242"
    stale.mkdir(parents=True)
    (stale / "lock").write_text("")
    # Two processes build at once into the same empty cache: both succeed.
    code = PROBE.format(backend="fused")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=dict(os.environ, **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    import json

    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    for r in results:
        assert r["backend"] == "fused" and r["source"] == "jit" and r["numbers"], r
    libs = sorted(cache.glob("fednas_kernels_*.so"))
    assert len(libs) == 1 and libs[0].name == Path(results[0]["path"]).name
    assert [d.name for d in cache.glob(".build-*")] == [stale.name]  # own dirs cleaned up
    # The next process loads the cached library without compiling.
    again = probe(env, "fused")
    assert again["source"] == "jit-cache" and again["numbers"]


def test_failed_build_falls_back_once_or_errors_when_fused_is_required(tmp_path):
    env = {
        "FEDNAS_KERNELS_CACHE": str(tmp_path / "cache"),
        "FEDNAS_KERNELS_LIBRARY": "",
        "CXX": "/bin/false",
    }
    auto = probe(env, "auto")
    assert auto["backend"] == "reference"
    assert "JIT build failed" in auto["reason"] and "build-error.log" in auto["reason"]
    assert len(auto["warnings"]) == 1 and "PyTorch reference" in auto["warnings"][0]
    assert list((tmp_path / "cache").glob("*.build-error.log"))
    fused = probe(env, "fused")
    assert "kernels.backend is 'fused'" in fused["error"]
    assert "kernels.backend: auto" in fused["error"]
    ref = probe(env, "reference")
    assert ref["backend"] == "reference" and not ref["warnings"]


def test_bad_prebuilt_library_is_named(tmp_path):
    missing = probe({"FEDNAS_KERNELS_LIBRARY": str(tmp_path / "nope.so")}, "fused")
    assert "nope.so is not a file" in missing["error"]
    junk = tmp_path / "libjunk.so"
    junk.write_bytes(b"not a library")
    bad = probe({"FEDNAS_KERNELS_LIBRARY": str(junk)}, "auto")
    assert bad["backend"] == "reference" and f"cannot load {junk}" in bad["reason"]


@pytest.mark.slow
def test_cli_reports_unavailable_fused_kernels_once(tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", run={**TINY["run"], "rounds": 1})
    env = {"FEDNAS_KERNELS_LIBRARY": str(tmp_path / "missing.so")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        res = launch(2, [str(cfg), "--out", str(tmp_path / "a"), "--set", "kernels.backend=fused"])
        assert res.returncode == 2
        assert res.stderr.count("error:") == 1 and "kernels.backend" in res.stderr
        res = launch(2, [str(cfg), "--out", str(tmp_path / "b")])
        assert res.returncode == 0, res.stderr
        assert res.stderr.count("fused mixing kernels unavailable") == 1
        assert "reference mixing" in res.stdout
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cmake() -> str:
    beside = Path(sys.executable).parent / "cmake"
    return str(beside) if beside.exists() else (shutil.which("cmake") or "cmake")


def nvcc() -> str | None:
    for cand in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).exists():
            return cand
    return None


@pytest.mark.timeout(1200)  # two CUDA architectures compile for minutes on 2 busy cores
def test_cmake_builds_cpu_and_cuda_library_that_torch_loads(tmp_path):
    cuda = nvcc()
    if cuda is None:
        if IN_CI:
            pytest.fail("CI must compile the CUDA kernels, but nvcc was not found")
        pytest.skip("nvcc not found: only CUDA-capable machines build the CUDA kernels")
    build = tmp_path / "build"
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST="8.0;9.0", CUDACXX=cuda)
    configure = [
        cmake(),
        "-S",
        str(ROOT),
        "-B",
        str(build),
        "-DFEDNAS_WITH_CUDA=ON",
        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        f"-DCMAKE_INSTALL_PREFIX={tmp_path / 'prefix'}",
    ]
    for cmd in (
        configure,
        [cmake(), "--build", str(build), "-j", "2"],
        [cmake(), "--install", str(build)],
    ):
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    from fednas_mpi.kernels.loader import library_name

    lib = tmp_path / "prefix" / "lib" / library_name()
    assert lib.is_file()
    got = probe({"FEDNAS_KERNELS_LIBRARY": str(lib)}, "fused")
    assert got["backend"] == "fused" and got["source"] == "prebuilt" and got["numbers"]
    assert got["cuda"], "the CUDA kernels did not register"
