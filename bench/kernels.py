"""Fused Gumbel-softmax mixing against the eager PyTorch forms, at DARTS shapes.

    python bench/kernels.py [--device cpu|cuda] [--reps 20] [--epoch]

For each shape (K = 8 op outputs of B x C x H x W) it times forward + backward of
  fused     torch.ops.fednas.mix (one pass over the K inputs each way)
  sum       sum_k w_k * o_k in eager PyTorch (DARTS's usual form; the reference)
  stack     (w[:, None, ...] * torch.stack(outputs)).sum(0)
and prints the minimum time, the ratios to fused, the peak extra memory of each form, and
the fused op's achieved bytes/s against a plain tensor copy (dst.copy_(src)) measured in
the same run. Bytes counted for fused: forward reads K inputs and writes 1, backward reads
the gradient and the K inputs and writes K gradients: (3K + 2) x numel x itemsize.
``--epoch`` also times FedMetaNAS rounds (compute time per local epoch) on the quickstart
config with kernels.backend fused vs reference, one process each (-n 1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(64, 16, 32, 32), (64, 64, 8, 8)]
K = 8


def forms():
    from fednas_mpi.kernels import reference_mix, reference_mix_stacked

    return {
        "fused": lambda outs, w: torch.ops.fednas.mix(outs, w),
        "sum": reference_mix,
        "stack": reference_mix_stacked,
    }


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make_inputs(shape, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    outs = [
        torch.randn(shape, generator=g, dtype=dtype).to(device).requires_grad_() for _ in range(K)
    ]
    w = torch.softmax(torch.randn(K, generator=g), 0).to(device, dtype).requires_grad_()
    up = torch.randn(shape, generator=g, dtype=dtype).to(device)
    return outs, w, up


def step(fn, outs, w, up):
    y = fn(outs, w)
    torch.autograd.backward(y, up)
    for t in (*outs, w):
        t.grad = None


def time_it(fn, reps, device) -> float:
    for _ in range(3):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    # The minimum: on a shared machine other processes only ever add time.
    return min(times)


def peak_cpu_child(form: str, shape) -> float:
    """Peak extra resident memory (MiB) over 3 fwd+bwd steps of one form, fresh process."""
    code = f"""
import sys, torch
sys.path.insert(0, {str(ROOT / "bench")!r})
import kernels as b
from fednas_mpi import kernels
kernels.configure("fused")
torch.set_num_threads({torch.get_num_threads()})
outs, w, up = b.make_inputs({tuple(shape)!r}, "cpu")
fn = b.forms()[{form!r}]
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
b.step(fn, outs, w, up)  # warm-up: code pages, autograd's worker thread
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS")
for _ in range(3):
    b.step(fn, outs, w, up)
print((status("VmHWM") - before) / 1024)
"""
    # Every allocation of 64 KiB or more is its own mapping, returned to the system when
    # freed, so the peak resident size follows the peak of live tensors.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    return float(res.stdout.strip().splitlines()[-1])


def peak_cuda(fn, outs, w, up) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step(fn, outs, w, up)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def bench_shapes(device: str, reps: int) -> list[dict]:
    rows = []
    for shape in SHAPES:
        outs, w, up = make_inputs(shape, device)
        n = up.numel() * up.element_size()
        src, dst = torch.randn_like(up), torch.empty_like(up)
        copy_t = time_it(lambda src=src, dst=dst: dst.copy_(src), reps, device)
        row = {"shape": shape, "copy_gbs": 2 * n / copy_t / 1e9, "t": {}, "mem": {}}
        for name, fn in forms().items():
            row["t"][name] = time_it(
                lambda fn=fn, outs=outs, w=w, up=up: step(fn, outs, w, up), reps, device
            )
            row["mem"][name] = (
                peak_cuda(fn, outs, w, up) if device == "cuda" else peak_cpu_child(name, shape)
            )
        row["fused_gbs"] = (3 * K + 2) * n / row["t"]["fused"] / 1e9
        rows.append(row)
    return rows


def bench_epoch(rounds: int) -> dict:
    """Compute time per local epoch of FedMetaNAS (quickstart), fused vs reference."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("fused", "reference"):
            run_dir = Path(tmp) / backend
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "fednas_mpi",
                    str(ROOT / "configs/quickstart.yaml"),
                    "--out",
                    str(run_dir),
                    "--set",
                    f"run.rounds={rounds}",
                    "--set",
                    f"kernels.backend={backend}",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            from fednas_mpi.config import load
            from fednas_mpi.store import list_checkpoints, read_checkpoint

            ck = read_checkpoint(list_checkpoints(run_dir)[-1][1], tensors=False)
            cfg = load(ROOT / "configs/quickstart.yaml")
            epochs = cfg.algorithm.local_epochs * cfg.federation.clients_per_round
            out[backend] = float(ck.metrics["compute_time"].sum()) / (rounds * epochs)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--epoch", action="store_true", help="also time FedMetaNAS local epochs")
    ap.add_argument("--epoch-rounds", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from fednas_mpi import kernels

    st = kernels.configure("fused")
    dev = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else platform.processor() or platform.machine()
    )
    print(
        f"# device {args.device} ({dev}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, fused library: {st.source} {st.path}"
    )
    print(f"# K = {K}, float32, forward + backward, minimum of {args.reps}")
    print(
        "| B x C x H x W | fused ms | sum ms | stack ms | sum/fused | stack/fused "
        "| peak MiB fused / sum / stack | fused GB/s | copy GB/s | fused/copy |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = bench_shapes(args.device, args.reps)
    for r in results:
        t, m = r["t"], r["mem"]
        print(
            f"| {'x'.join(map(str, r['shape']))} | {t['fused'] * 1e3:.2f} | "
            f"{t['sum'] * 1e3:.2f} | {t['stack'] * 1e3:.2f} | {t['sum'] / t['fused']:.2f} | "
            f"{t['stack'] / t['fused']:.2f} | {m['fused']:.0f} / {m['sum']:.0f} / "
            f"{m['stack']:.0f} | {r['fused_gbs']:.1f} | {r['copy_gbs']:.1f} | "
            f"{r['fused_gbs'] / r['copy_gbs']:.0%} |"
        )
    if args.epoch:
        e = bench_epoch(args.epoch_rounds)
        print(
            f"# FedMetaNAS quickstart, compute time per local epoch (-n 1, "
            f"{args.epoch_rounds} rounds): fused {e['fused']:.3f} s, reference "
            f"{e['reference']:.3f} s, reference/fused {e['reference'] / e['fused']:.2f}"
        )
    print(json.dumps({"rows": results}, default=str), file=sys.stderr)


if __name__ == "__main__":
    main()
