"""The faithful NAS comparison (paper Tables 2 and 3 at the scale a protocol file gives):
every NAS method tuned with the same budget on validation data, run on the same clients
and seeds, beside a random-architecture baseline.

    python bench/nas_protocol.py bench/protocols/digits.yaml [--ranks 3] [--seeds 0 1 2]
        [--json OUT.json] [--markdown OUT.md] [--runs DIR]

The protocol file names, per method, a config and its tuning grid (at most a handful of
configurations, each a set of ``--set`` overrides), the overrides every run shares
(``common``: data, partition, round cap, validation and early stopping), the target
accuracy and the random baseline's budgets. The procedure:

1. **Tuning** (first seed): every configuration of every method's grid is run; the one
   with the highest final ``val_acc`` - the global model on the union of the clients'
   own eval splits, never the server test set - is chosen. Every method gets the same
   number of configurations.
2. **Runs**: the chosen configuration on every other seed (the tuning run is the first
   seed's run; the same for every method).
3. **Random baseline**: ``samples`` genotypes drawn uniformly from the same space
   (``random_nas``, genotype_seed 0..samples-1, trained with seeds taken in turn), each
   trained federatedly from scratch once per budget: ``retrain`` = a two-stage method's
   retraining rounds (FedNAS: rounds - search_rounds), ``run`` = a single-stage method's
   whole round cap. Its learning rate is tuned like a method's (genotype 0, first seed,
   whole-run budget).

Each run stops at ``run.patience`` validations without improvement of ``val_acc`` in the
method's last stage, or at the round cap. Reported per method (mean +- sample std over
seeds, min and max): final server test accuracy (the whole test set, at the last round
run), validation accuracy, rounds run, **method time** (sum over rounds of client compute
+ communication + aggregation; evaluation is measured apart as eval time), its ratio to
FedNAS's, the method time until the global accuracy first reaches the target, the
accuracy just before and after the last architecture change (Table 3), the architecture
signal at the derivation (mean logit gap between the best and second op of an edge, and
the probability that a Gumbel sample's argmax is the deterministic one), and the random
genotypes of the same budget (mean, min, max) with how many seeds' searched genotypes
beat their mean. Writes the tables as Markdown and everything (every run, every
configuration tried) as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from fednas_mpi.harness import mpirun
from fednas_mpi.store import list_checkpoints, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _sets(overrides: dict) -> list[str]:
    out = []
    for k, v in overrides.items():
        out += ["--set", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"]
    return out


def _finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return v[np.isfinite(v)]


def _last(values) -> float:
    v = _finite(values)
    return float(v[-1]) if v.size else float("nan")


def run_one(cfg: str, overrides: dict, ranks: int, out: Path, target: float, launch=None) -> dict:
    """One run under mpirun (or ``launch(argv)`` -> (exit status, stderr), which runs
    ``fednas-mpi *argv`` in one process: a fork of a process that imported torch once);
    its numbers read back from the newest checkpoint."""
    argv = [str(ROOT / cfg), "--out", str(out), *_sets(overrides)]
    cmd = [mpirun(), "-n", str(ranks), sys.executable, "-m", "fednas_mpi", *argv]
    t0 = time.perf_counter()
    if launch is None:
        res = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        rc, err = res.returncode, res.stderr
    else:
        rc, err = launch(argv)
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"run failed: {' '.join(cmd)}\n{err[-3000:]}")
    return read_run(cfg, overrides, ranks, out, target, wall)


def finished(out: Path) -> bool:
    """Whether ``out`` holds a run that has ended: its newest checkpoint is its last round,
    or the run stopped early (a run another launcher made, e.g. a SLURM array task)."""
    files = list_checkpoints(out) if out.is_dir() else []
    if not files:
        return False
    ck = read_checkpoint(files[-1][1], tensors=False)
    rounds = int((yaml.safe_load(ck.config_yaml).get("run") or {}).get("rounds", 0))
    return bool(ck.attrs.get("stopped_early")) or ck.round >= rounds


def read_run(
    cfg: str, overrides: dict, ranks: int, out: Path, target: float, wall: float = float("nan")
) -> dict:
    """The numbers of the run in ``out``, read back from its newest checkpoint."""
    ck = read_checkpoint(list_checkpoints(out)[-1][1], tensors=False)
    m = ck.metrics
    method_t, acc = np.asarray(m["method_time"]), np.asarray(m["global_acc"])
    reached = np.flatnonzero(np.nan_to_num(acc, nan=-1.0) >= target)
    before, after = (
        np.asarray(m.get("acc_before_prune", [np.nan])),
        np.asarray(m.get("acc_after_prune", [np.nan])),
    )
    change = np.flatnonzero(np.isfinite(before))
    last_change = int(change[-1]) if change.size else None
    # the architecture signal where the architecture was decided (the last change) or,
    # without one, at the end
    at = last_change if last_change is not None else len(acc) - 1
    signal_row = at - 1 if at > 0 else at  # the averaged logits the decision read
    sig = {
        k: float(np.asarray(m[k])[signal_row]) if k in m else float("nan")
        for k in ("alpha_gap", "alpha_range", "argmax_agreement", "ops_alive")
    }
    stages: dict[str, float] = {}
    for st, t in zip(ck.stages, method_t):
        stages[st] = stages.get(st, 0.0) + float(t)
    return {
        "config": cfg,
        "overrides": overrides,
        "method": ck.attrs["algorithm"],
        "seed": int(ck.attrs["seed"]),
        "rounds": int(ck.round),
        "stopped_early": ck.attrs.get("stopped_early"),
        "test_acc": _last(acc),
        "val_acc": _last(m.get("val_acc", [np.nan])),
        "personal_acc": _last(m.get("personal_acc", [np.nan])),
        "personal_acc_std": _last(m.get("personal_acc_std", [np.nan])),
        "method_time": float(method_t.sum()),
        "method_time_per_stage": stages,
        "eval_time": float(np.sum(m["eval_time"])),
        "wall": wall,
        "time_to_target": float(method_t[: reached[0] + 1].sum()) if reached.size else None,
        "acc_before": float(before[last_change]) if last_change is not None else None,
        "acc_after": float(after[last_change]) if last_change is not None else None,
        "change_round": None if last_change is None else last_change + 1,
        "signal": sig,
        "genotype": (ck.spec.get("genotype") or {}).get("text", ""),
        "command": " ".join(["mpirun", "-n", str(ranks), "fednas-mpi", cfg, *_sets(overrides)]),
    }


def stats(values) -> dict:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"n": 0}
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
    }


def fmt(s: dict, scale: float = 1.0, digits: int = 2, spread: bool = True) -> str:
    if not s.get("n"):
        return "-"
    out = f"{s['mean'] * scale:.{digits}f} ± {s['std'] * scale:.{digits}f}"
    if spread:
        out += f" [{s['min'] * scale:.{digits}f}, {s['max'] * scale:.{digits}f}]"
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("protocol", help="protocol YAML (bench/protocols/*.yaml)")
    p.add_argument("--ranks", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--json", type=Path, help="write every run and the summary here")
    p.add_argument("--markdown", type=Path, help="write the tables here (also printed)")
    p.add_argument(
        "--runs", type=Path, help="keep the run directories here (default: a temporary directory)"
    )
    a = p.parse_args()
    proto = yaml.safe_load(Path(a.protocol).read_text())
    common, target = proto.get("common", {}), float(proto["target"])
    grids = {name: m["grid"] for name, m in proto["methods"].items()}
    budget = max(len(g) for g in grids.values())
    if any(len(g) != budget for g in grids.values()) or len(proto["random"]["grid"]) != budget:
        raise SystemExit(
            f"every method (and the random baseline) needs the same tuning "
            f"budget; grids: { {k: len(v) for k, v in grids.items()} }"
        )
    tmp = tempfile.TemporaryDirectory()
    root = a.runs or Path(tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    log = []

    def go(tag: str, cfg: str, overrides: dict) -> dict:
        out = root / tag
        r = run_one(cfg, {**common, **overrides}, a.ranks, out, target)
        r["tag"] = tag
        log.append(r)
        print(
            f"{tag}: test {r['test_acc']:.4f} val {r['val_acc']:.4f} rounds {r['rounds']} "
            f"method {r['method_time']:.1f}s eval {r['eval_time']:.1f}s "
            f"wall {r['wall']:.1f}s",
            file=sys.stderr,
            flush=True,
        )
        return r

    first, rest = a.seeds[0], a.seeds[1:]
    results: dict[str, dict] = {}
    for name, m in proto["methods"].items():
        tried = [
            go(f"{name}-tune{i}", m["config"], {**g, "run.seed": first})
            for i, g in enumerate(m["grid"])
        ]
        best = max(range(len(tried)), key=lambda i: (tried[i]["val_acc"], -i))
        runs = [tried[best]] + [
            go(f"{name}-s{s}", m["config"], {**m["grid"][best], "run.seed": s}) for s in rest
        ]
        results[name] = {
            "config": m["config"],
            "grid": m["grid"],
            "chosen": best,
            "tuning": tried,
            "runs": runs,
        }
    # the random baseline: tune its learning rate on genotype 0 (whole-run budget)
    rnd = proto["random"]
    budgets = rnd["budgets"]  # method -> "retrain" | "run"
    if "run.rounds" not in common:
        raise SystemExit(
            "the protocol's common overrides must set run.rounds (the round cap "
            "every method and the random baseline's budgets derive from)"
        )
    rounds_cap = int(common["run.rounds"])

    def budget_rounds(kind: str) -> int:
        if kind == "run":
            return rounds_cap
        return rounds_cap - int(rnd["retrain_rounds_from"])

    tried = [
        go(
            f"random-tune{i}",
            rnd["config"],
            {
                **g,
                "run.seed": first,
                "run.rounds": budget_rounds("run"),
                "algorithm.random_nas.genotype_seed": 0,
            },
        )
        for i, g in enumerate(rnd["grid"])
    ]
    best = max(range(len(tried)), key=lambda i: (tried[i]["val_acc"], -i))
    random_runs: dict[str, list[dict]] = {}
    for kind in sorted(set(budgets.values())):
        runs = []
        for i in range(int(rnd["samples"])):
            seed = a.seeds[i % len(a.seeds)]
            if kind == "run" and i == 0 and seed == first:
                runs.append(tried[best])
                continue
            runs.append(
                go(
                    f"random-{kind}-g{i}",
                    rnd["config"],
                    {
                        **rnd["grid"][best],
                        "run.seed": seed,
                        "run.rounds": budget_rounds(kind),
                        "algorithm.random_nas.genotype_seed": i,
                    },
                )
            )
        random_runs[kind] = runs
    summary = summarise(results, random_runs, budgets, target)
    doc = {
        "protocol": proto,
        "seeds": a.seeds,
        "ranks": a.ranks,
        "random": {"grid": rnd["grid"], "chosen": best, "tuning": tried, "runs": random_runs},
        "methods": results,
        "summary": summary,
        "runs": log,
    }
    text = markdown(doc, a)
    print(text)
    if a.markdown:
        a.markdown.write_text(text)
    if a.json:
        a.json.write_text(json.dumps(doc, indent=1, default=float))


def summarise(results: dict, random_runs: dict, budgets: dict, target: float) -> dict:
    out = {}
    base = None
    if "fednas" in results:
        base = stats(r["method_time"] for r in results["fednas"]["runs"])["mean"]
    for name, res in results.items():
        runs = res["runs"]
        rand = random_runs.get(budgets.get(name, "run"), [])
        rmean = float(np.mean([r["test_acc"] for r in rand])) if rand else float("nan")
        out[name] = {
            "test_acc": stats(r["test_acc"] for r in runs),
            "val_acc": stats(r["val_acc"] for r in runs),
            "rounds": stats(r["rounds"] for r in runs),
            "method_time": stats(r["method_time"] for r in runs),
            "eval_time": stats(r["eval_time"] for r in runs),
            "x_fednas": (stats(r["method_time"] for r in runs)["mean"] / base) if base else None,
            "time_to_target": stats(r["time_to_target"] for r in runs),
            "reached_target": sum(r["time_to_target"] is not None for r in runs),
            "acc_before": stats(r["acc_before"] for r in runs),
            "acc_after": stats(r["acc_after"] for r in runs),
            "drop_pt": stats(
                (r["acc_before"] - r["acc_after"]) * 100
                for r in runs
                if r["acc_before"] is not None
            ),
            "alpha_gap": stats(r["signal"]["alpha_gap"] for r in runs),
            "argmax_agreement": stats(r["signal"]["argmax_agreement"] for r in runs),
            "random_budget": budgets.get(name, "run"),
            "random_test_acc": stats(r["test_acc"] for r in rand),
            "beats_random_mean": sum(r["test_acc"] > rmean for r in runs),
        }
    for kind, rand in random_runs.items():
        out[f"random ({kind})"] = {
            "test_acc": stats(r["test_acc"] for r in rand),
            "val_acc": stats(r["val_acc"] for r in rand),
            "rounds": stats(r["rounds"] for r in rand),
            "method_time": stats(r["method_time"] for r in rand),
        }
    return out


def markdown(doc: dict, a) -> str:
    s, proto = doc["summary"], doc["protocol"]
    lines = [
        f"Protocol `{a.protocol}`; `mpirun -n {a.ranks}`; seeds {doc['seeds']}; "
        f"common overrides `{proto.get('common', {})}`; target "
        f"{float(proto['target']):.0%}.",
        "",
        "| method | chosen configuration | test acc % mean ± std [min, max] | val acc % "
        "| rounds run | method time s | x FedNAS | eval time s | method time to target s "
        "(runs reaching it) | acc before -> after derivation % (drop pt) | alpha gap / "
        "argmax agreement at derivation | random genotypes, same budget: test acc % "
        "mean [min, max] | seeds beating the random mean |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in doc["methods"].items():
        x = s[name]
        chosen = res["grid"][res["chosen"]]
        ba = (
            "-"
            if not x["acc_before"].get("n")
            else (
                f"{fmt(x['acc_before'], 100, spread=False)} -> "
                f"{fmt(x['acc_after'], 100, spread=False)} ({fmt(x['drop_pt'], spread=False)})"
            )
        )
        ratio = "-" if x["x_fednas"] is None else f"{x['x_fednas']:.2f}"
        r = x["random_test_acc"]
        rand = (
            "-"
            if not r.get("n")
            else (
                f"{r['mean'] * 100:.2f} [{r['min'] * 100:.2f}, {r['max'] * 100:.2f}] "
                f"({x['random_budget']})"
            )
        )
        lines.append(
            f"| {name} | `{chosen}` | {fmt(x['test_acc'], 100)} "
            f"| {fmt(x['val_acc'], 100, spread=False)} | {fmt(x['rounds'], 1, 1, False)} "
            f"| {fmt(x['method_time'], 1, 1, False)} "
            f"| {ratio} "
            f"| {fmt(x['eval_time'], 1, 1, False)} "
            f"| {fmt(x['time_to_target'], 1, 1, False)} ({x['reached_target']}) | {ba} "
            f"| {fmt(x['alpha_gap'], 1, 2, False)} / "
            f"{fmt(x['argmax_agreement'], 1, 2, False)} | {rand} "
            f"| {x['beats_random_mean']} of {x['test_acc']['n']} |"
        )
    for kind in doc["random"]["runs"]:
        x = s[f"random ({kind})"]
        lines.append(
            f"| random genotypes ({kind} budget, {x['test_acc']['n']} samples) "
            f"| `{doc['random']['grid'][doc['random']['chosen']]}` "
            f"| {fmt(x['test_acc'], 100)} | {fmt(x['val_acc'], 100, spread=False)} "
            f"| {fmt(x['rounds'], 1, 1, False)} "
            f"| {fmt(x['method_time'], 1, 1, False)} | | | | | | | |"
        )
    lines += [
        "",
        "Tuning (first seed; chosen by final validation accuracy on the clients' eval splits):",
        "",
        "| method | configuration | val acc % | test acc % | rounds | method time s |",
        "|---|---|---|---|---|---|",
    ]
    tunings = [(n, r["tuning"], r["chosen"]) for n, r in doc["methods"].items()]
    tunings.append(("random_nas", doc["random"]["tuning"], doc["random"]["chosen"]))
    for name, tried, chosen in tunings:
        for i, r in enumerate(tried):
            mark = " (chosen)" if i == chosen else ""
            extra = {
                k: v
                for k, v in r["overrides"].items()
                if k not in doc["protocol"].get("common", {}) and k != "run.seed"
            }
            lines.append(
                f"| {name} | `{extra}`{mark} | {r['val_acc'] * 100:.2f} "
                f"| {r['test_acc'] * 100:.2f} | {r['rounds']} "
                f"| {r['method_time']:.1f} |"
            )
    lines += ["", "Genotypes found (first seed's run of each method):", "", "```"]
    for name, res in doc["methods"].items():
        for r in res["runs"]:
            lines.append(f"{name}, seed {r['seed']}:\n{r['genotype']}\n")
    lines.append("```")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
