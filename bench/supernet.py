"""The supernet's client step on the grouped forward, and on compiled cells, against the
op-by-op reference, in one process, one thread (issues 17, 28).

    python bench/supernet.py [--reps 15] [--configs CFG ...] [--dead 0 0.5 0.9]
                             [--client-update] [--profile] [--json OUT]
                             [--device cpu|cuda] [--preset paper] [--warmup 3]
                             [--paths reference grouped compiled] [--compile-backend B]

For each config (default: the CPU FedMetaNAS and FedNAS configs of digits and
Fashion-MNIST) and each fraction of dead ops (random op masks, seeded, at least one real
op per edge), it times one client step - forward, backward and optimiser step of the
supernet at the config's batch size with the method's relaxation: FedMetaNAS
Gumbel-softmax at temperature 1 (the CPU configs' start), FedNAS plain softmax - on
``kernels.supernet`` reference and grouped and on compiled cells (``kernels.compile:
cells`` over the grouped forward), taking turns, and prints the median and min time,
images/s, the speedups, the memory saved for backward by one forward (the step's
activation peak: tensors autograd keeps, counted with saved-tensor hooks; not for the
compiled path, where the hooks would force a second compile), and the share of the step
the mix takes (profiler: reference = fednas::mix and its backward; grouped = the matmul
of eq. 2 and its backward; not attributable inside a compiled graph). The compile is
timed apart: ``compile_s`` is the first step (every cell compiles in it, once per cell of
each network, as in a run after each architecture change) less a timed step, and
``compiles`` the graphs dynamo built for it. ``--compile-backend aot_eager`` checks the
plumbing without code generation (the dry run of bench/gpu_quick.sh). ``--derived`` adds a random
derived network (one op per edge, one combination per node: the network after the
final derivation). ``--client-update`` also times one whole FedMetaNAS
``client_update`` (the method's loop) per path. ``--profile`` prints the top ops by
self CPU time of both paths' steps and the time by kind of op (``bench/opkinds.py``), at
every fraction of dead ops. The fused mixing kernels are used when they load
(``kernels.backend: auto``, the default).

``--device cuda`` times the steps on the GPU: each step between two CUDA events, its time
read after the end event has completed (the mix share, a CPU profile, is left out there).
``--preset paper`` is the paper's shape (issue 27): the paper configs of FedMetaNAS and
FedNAS on CIFAR-10 (DARTS C=16, 8 cells, 4 nodes, batch 64) on a seeded random 3x32x32
batch of 10 classes, so no dataset is needed; on the CPU run it with ``--reps 1
--warmup 1`` (seconds per step).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from fednas_mpi import kernels  # noqa: E402
from fednas_mpi.algorithms import ClientData, DataInfo, RoundContext, get_algorithm  # noqa: E402
from fednas_mpi.config import load_run  # noqa: E402
from fednas_mpi.data.datasets import load_dataset  # noqa: E402
from fednas_mpi.nas import ArchSpec, CellMasks, compiled, sampled_spec  # noqa: E402

CONFIGS = [
    "configs/cpu/fashion_mnist/fedmetanas.yaml",
    "configs/cpu/fashion_mnist/fednas.yaml",
    "configs/cpu/digits/fedmetanas.yaml",
    "configs/cpu/digits/fednas.yaml",
]
PATHS = ("reference", "grouped", "compiled")
# each path as (kernels.supernet, kernels.compile); compiled cells run the grouped forward
SETTINGS = {"reference": ("reference", "off"), "grouped": ("grouped", "off")}
SETTINGS["compiled"] = ("grouped", "cells")
CPU = torch.device("cpu")
PRESETS = {"paper": ["configs/paper/cifar10/fedmetanas.yaml", "configs/paper/cifar10/fednas.yaml"]}


def dead_masks(algo, dead: float, seed: int = 0) -> tuple[dict, float]:
    """The initial spec with ``dead`` of the real ops of every cell type pruned at random
    (at least one per edge kept); returns (spec, the fraction actually dead)."""
    spec = ArchSpec.of(algo.initial_spec())
    space, g = algo.space, torch.Generator().manual_seed(seed)
    real = [k for k, n in enumerate(space.primitives) if n != "none"]
    masks, frac = {}, 0.0
    for cell, m in spec.masks.items():
        keep_total = max(space.num_edges, round(space.num_edges * len(real) * (1 - dead)))
        keep = {
            (e, real[int(torch.randint(len(real), (1,), generator=g))])
            for e in range(space.num_edges)
        }
        rest = [(e, k) for e in range(space.num_edges) for k in real if (e, k) not in keep]
        for i in torch.randperm(len(rest), generator=g)[: keep_total - len(keep)].tolist():
            keep.add(rest[i])
        ops = [
            [n == "none" or (e, k) in keep for k, n in enumerate(space.primitives)]
            for e in range(space.num_edges)
        ]
        masks[cell] = CellMasks(ops, list(m.combos))
        frac = 1 - len(keep) / (space.num_edges * len(real))
    return ArchSpec(masks, spec.inputs).to_dict(), frac


def client_step(algo, net, x, y, gumbel: bool):
    weights = torch.optim.SGD(net.weight_parameters(), lr=0.01, momentum=0.9)
    arch = torch.optim.Adam(net.arch_parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)

    def step():
        net.set_sampling(1.0, g if gumbel else None)
        weights.zero_grad()
        arch.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        weights.step()
        arch.step()

    return step


def saved_bytes(net, x, y) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    net.zero_grad()
    return total


def mix_share(step, n: int = 3) -> float:
    """Profiler share of the step in the mix (forward and backward), over ``n`` steps:
    ``opkinds``' "mix (eq. 2)" (the reference: fednas::mix and its backward; grouped: the
    (nodes x outputs) matrix product of eq. 2 and its backward)."""
    from opkinds import kind_times
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(n):
            step()
    times = kind_times(prof.events())
    return times["mix (eq. 2)"] / sum(times.values())


def timed(step, device: torch.device) -> float:
    """Seconds one call of ``step`` takes: wall time on the CPU; on a GPU the time between
    two CUDA events around it, read once the end event has completed."""
    if device.type != "cuda":
        t = time.perf_counter()
        step()
        return time.perf_counter() - t
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    step()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def time_steps(steps: dict, reps: int, device: torch.device, warmup: int = 3):
    """({path: seconds of each timed step}, {path: seconds of its first step}): the first
    step is also the first of the warm-up (plans, allocator; the compile, compiled)."""
    times, first = {p: [] for p in steps}, {}
    for p in steps:
        for _ in range(max(warmup, 1)):
            t = timed(steps[p], device)
            first.setdefault(p, t)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the warm-up's queued work is not timed
    for _ in range(reps):
        for p, step in steps.items():  # alternate, so drifting load hits every path
            times[p].append(timed(step, device))
    return times, first


def graphs_built() -> int:
    """Graphs dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def synthetic(cfg, algo, seed: int = 0):
    """A seeded random batch of the config's batch size and the method's input shape."""
    g = torch.Generator().manual_seed(seed)
    b, shape = cfg.algorithm.batch_size, algo.info.input_shape
    x = torch.randn(b, *shape, generator=g)
    return x, torch.randint(0, algo.info.num_classes, (b,), generator=g)


def bench_config(
    path: str,
    reps: int,
    deads: list,
    profile: bool,
    device: torch.device = CPU,
    preset: str | None = None,
    warmup: int = 3,
    paths: tuple[str, ...] = PATHS,
) -> list[dict]:
    cfg = load_run(ROOT / path)
    b = cfg.algorithm.batch_size
    if preset:  # the paper's 32x32 RGB images, 10 classes, without the dataset
        algo = get_algorithm(cfg.algorithm.name)(cfg, DataInfo((3, 32, 32), 10))
        x, y = synthetic(cfg, algo)
    else:
        ds = load_dataset(cfg.data, cfg.run.seed)
        algo = get_algorithm(cfg.algorithm.name)(cfg, DataInfo(ds.input_shape, ds.num_classes))
        x, y = ds.train_x[:b].contiguous(), ds.train_y[:b]
    algo.device = device
    x, y = x.to(device), y.to(device)
    gumbel = cfg.algorithm.name != "fednas"
    rows = []
    for dead in deads:
        if dead == "derived":  # a random genotype: one op per edge, one combination per node
            derived = sampled_spec(algo.space, torch.Generator().manual_seed(0))
            spec, frac = ArchSpec(derived.masks, algo.inputs).to_dict(), "derived"
        else:
            spec, frac = dead_masks(algo, dead) if dead else (algo.initial_spec(), 0.0)
        nets = {}
        for p in paths:
            nets[p] = net = algo.fresh(spec)
            net.set_execution(SETTINGS[p][0])
            net.set_compile(SETTINGS[p][1])
            net.train()
        steps = {p: client_step(algo, nets[p], x, y, gumbel) for p in paths}
        before = graphs_built()
        times, first = time_steps(steps, reps, device, warmup)
        row = {
            "config": path,
            "device": str(device),
            "dead": frac if isinstance(frac, str) else round(frac, 3),
            "weights": sum(p.numel() for p in nets[paths[0]].weight_parameters()),
            "batch": b,
            "input": list(x.shape[1:]),
        }
        nan = float("nan")
        for p in paths:
            med = statistics.median(times[p])
            row[p] = {
                "median_ms": 1e3 * med,
                "min_ms": 1e3 * min(times[p]),
                "images_per_s": b / med,
                "first_step_s": first[p],
                # saved-tensor hooks around a compiled forward would compile it once more
                "saved_MB": saved_bytes(nets[p], x, y) / 2**20 if p != "compiled" else nan,
                # a CPU profile: it says nothing of a GPU step (nor of a compiled graph)
                "mix_share": mix_share(steps[p], min(3, reps))
                if device.type == "cpu" and p != "compiled"
                else nan,
            }
        if "compiled" in paths:
            row["compiled"]["compile_s"] = first["compiled"] - statistics.median(times["compiled"])
            row["compiled"]["compiles"] = graphs_built() - before
        for p in paths[1:]:
            row[f"speedup_{p}"] = row[paths[0]]["median_ms"] / row[p]["median_ms"]
        if {"reference", "grouped"} <= set(paths):
            row["speedup"] = row["speedup_grouped"]  # the key issue 17's readers know
        rows.append(row)
        print_row(path, frac, row, paths)
        if profile:
            for p in paths:
                print_profile(steps[p], p)
    return rows


def print_row(path: str, frac, row: dict, paths: tuple[str, ...]) -> None:
    label = frac if isinstance(frac, str) else f"{frac:.0%}"
    parts = []
    for i, p in enumerate(paths):
        r = row[p]
        text = f"{p} {r['median_ms']:.1f} ms (min {r['min_ms']:.1f}"
        text += f", {r['images_per_s']:.0f} images/s"
        if i:
            text += f", x{row[f'speedup_{p}']:.2f}"
        if p == "compiled":
            text += f", compile {r['compile_s']:.1f} s for {r['compiles']} graphs"
        else:
            text += f", saved {r['saved_MB']:.1f} MB, mix {r['mix_share']:.0%}"
        parts.append(text + ")")
    print(f"{path} dead {label}: " + "; ".join(parts), flush=True)


def print_profile(step, path: str, top: int = 15, steps: int = 5) -> None:
    """The top ops by self CPU time over ``steps`` steps, then the time by kind of op
    (``bench/opkinds.py``: depthwise convs, BN, mix, optimiser, autograd overhead...)."""
    from opkinds import format_shares, kind_times
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    ev = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ev)
    per = total / steps / 1e3
    print(f"  {path} step, top ops by self CPU time (of {per:.1f} ms per step):")
    for e in ev[:top]:
        print(
            f"    {e.self_cpu_time_total / steps / 1e3:7.2f} ms "
            f"{e.self_cpu_time_total / total:5.1%} {e.count // steps:4d} calls  {e.key}"
        )
    print(f"  {path} step, self CPU time by kind of op:")
    print("\n".join(format_shares(kind_times(prof.events()), steps)), flush=True)


def bench_client_update(path: str, paths: tuple[str, ...] = PATHS) -> dict:
    """One whole FedMetaNAS client update (the method's own loop) per path; the compiled
    path's warm-up update is where its cells compile (not timed)."""
    out = {}
    for p in paths:
        supernet, compile_ = SETTINGS[p]
        sets = [f"kernels.supernet={supernet}", f"kernels.compile={compile_}"]
        cfg = load_run(ROOT / path, sets)
        ds = load_dataset(cfg.data, cfg.run.seed)
        algo = get_algorithm(cfg.algorithm.name)(cfg, DataInfo(ds.input_shape, ds.num_classes))
        n = cfg.partition.train_size or len(ds.train_y) // cfg.partition.num_clients
        data = ClientData(
            0, ds.train_x[:n], ds.train_y[:n], ds.train_x[n : 2 * n], ds.train_y[n : 2 * n]
        )
        gm = algo.init_global()
        r = cfg.algorithm.fedmetanas.arch_warmup_rounds  # the first search round
        ctx = RoundContext(r, cfg.run.rounds, cfg.run.seed, algo.stage(r))
        algo.client_update(gm, data, ctx, None)  # warm-up
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            algo.client_update(gm, data, ctx, None)
            ts.append(time.perf_counter() - t)
        out[p] = statistics.median(ts)
    times = ", ".join(f"{p} {out[p]:.2f} s (x{out[paths[0]] / out[p]:.2f})" for p in paths)
    print(f"{path} client_update (round {r + 1}, {n} images): {times}", flush=True)
    return {"config": path, **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--configs", nargs="*", help=f"default: {' '.join(CONFIGS)}")
    ap.add_argument("--dead", type=float, nargs="*", default=[0.0, 0.5, 0.9])
    ap.add_argument("--derived", action="store_true", help="also a random derived network")
    ap.add_argument("--client-update", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (CUDA-event timing)")
    ap.add_argument(
        "--preset", choices=sorted(PRESETS), help="its configs unless --configs names some"
    )
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per path first")
    ap.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    ap.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of the compiled path (aot_eager: no code generation)",
    )
    args = ap.parse_args()
    compiled.BACKEND = args.compile_backend
    paths = tuple(args.paths)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    if args.preset and args.client_update:
        ap.error("--client-update needs a config's dataset; not with --preset")
    torch.set_num_threads(1)
    print(
        f"torch {torch.__version__}, 1 thread, device {device}, mixing kernels: "
        f"{kernels.configure('auto').backend}"
    )
    deads = [*args.dead, *(["derived"] if args.derived else [])]
    configs = args.configs or (PRESETS[args.preset] if args.preset else CONFIGS)
    rows = [
        r
        for c in configs
        for r in bench_config(
            c, args.reps, deads, args.profile, device, args.preset, args.warmup, paths
        )
    ]
    updates = []
    if args.client_update:
        updates = [bench_client_update(c, paths) for c in configs if "fedmetanas" in c]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process peak RSS {peak:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps({"steps": rows, "client_update": updates}, indent=1))


if __name__ == "__main__":
    main()
