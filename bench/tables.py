"""The paper's tables at the scale a table protocol gives (issue 20): every method of a table
tuned with the same budget on validation data, run on the same seeds and settings, reported
beside the paper's numbers, with plots.

    python bench/tables.py bench/protocols/tables/table2.yaml [--seeds 0 1 2] [--ranks 3]
        [--runs bench/runs] [--json OUT.json] [--markdown OUT.md] [--plots DIR]

A table protocol (``bench/protocols/tables/*.yaml``) names:

- ``metric``: ``global`` (the final server test accuracy of the global model; Tables 1,
  2 and 4) or ``personal`` (the mean over clients of each client's personalised model on
  its own eval split, ``personal_acc``; Table 5);
- ``common``: the ``--set`` overrides of every run (data, partition, round cap,
  validation, early stopping, the test-set budget);
- ``settings``: named override sets (the non-IID settings of Table 4); the first is where
  the tuning runs; a table without them has one setting, ``default``;
- ``methods``: per method its config and tuning grid - the same number of configurations
  for every method of the table;
- optionally ``random``: the random-architecture baseline of bench/nas_protocol.py (genotypes
  drawn from the same DARTS space, trained from scratch with a method's whole round cap;
  its learning rate tuned like a method's, then ``samples`` genotypes on every setting);
- ``paper``: the paper's numbers for the same cells, printed beside ours.

Procedure, per method: every configuration of its grid runs on the first setting with the
first seed; the one with the best final selection metric wins - ``val_acc`` (the global
model on the union of the clients' own eval splits, never the server test set) for a
``global`` table, ``personal_acc`` for a ``personal`` one (the only held-out data of a
client is its eval split, so the tuning run's personalised accuracy is read on the data it
was chosen on: seed 0 of a personal table is optimistic, seeds 1 and 2 - other partitions,
other initialisations - are not). The chosen configuration then runs on every seed of
every setting (the tuning run is the first seed's run on the first setting).

Runs are cached in ``--runs``: a run's directory is named by a hash of its config and
overrides and keeps ``result.json``; a run another table already made (the same config and
overrides) is read back, not repeated - Tables 1, 4 and 5 reuse Table 2's FedMetaNAS and
FedNAS runs this way, so the same runs stand behind the same cells of different tables.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nas_protocol import ROOT, _sets, fmt, run_one, stats  # noqa: E402

METRICS = {
    # table metric -> (reported per run, selection per run, plotted per round)
    "global": ("test_acc", "val_acc", "global_acc"),
    "personal": ("personal_acc", "personal_acc", "personal_acc"),
}


def run_key(cfg: str, overrides: dict) -> str:
    text = json.dumps([cfg, sorted(overrides.items())], default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def stale_keys(cfg: str, overrides: dict, out: Path) -> list[str]:
    """The result-affecting keys on which a cached run (``out/config.yaml``, as the run
    stored it) differs from what ``cfg`` with ``overrides`` resolves to now: the cache is
    keyed by the config's path and the overrides, so an edited config file (a new shipped
    default) would otherwise be answered from runs of the old one. Keys added since, at
    their defaults, agree (a stored config is read with them). Runs without a stored
    config (fakes in tests) are taken as they are."""
    stored = out / "config.yaml"
    if not stored.exists():
        return []
    from fednas_mpi.config import load, result_affecting_differences
    from fednas_mpi.migrations import from_stored

    sets = _sets(overrides)[1::2]
    now = load(ROOT / cfg, sets)
    then = from_stored(yaml.safe_load(stored.read_text()))
    return result_affecting_differences(then, now)


class Runner:
    """Runs (or reads back) one configuration; every result keeps its run directory."""

    def __init__(self, root: Path, ranks: int, target: float, launch=None):
        self.root, self.ranks, self.target = root, ranks, target
        self.launch = launch  # run_one's launcher (None: mpirun)
        self.log: list[dict] = []

    def run_dir(self, cfg: str, overrides: dict) -> Path:
        """The cache directory of a run: named by its config and overrides."""
        return self.root / f"{Path(cfg).stem}-{run_key(cfg, overrides)}"

    def __call__(self, tag: str, cfg: str, overrides: dict) -> dict:
        out = self.run_dir(cfg, overrides)
        done = out / "result.json"
        stale = stale_keys(cfg, overrides, out) if done.exists() else []
        if stale:
            print(f"{tag}: the cached run {out} ran another config ({stale}): running again")
            done.unlink()
        if done.exists():
            r = json.loads(done.read_text())
            r["reused"] = True
        else:
            if out.exists():  # an interrupted run: start it again
                shutil.rmtree(out)
            extra = {"launch": self.launch} if self.launch else {}
            r = run_one(cfg, overrides, self.ranks, out, self.target, **extra)
            r["run_dir"] = str(out)
            done.write_text(json.dumps(r, indent=1, default=float))
            r["reused"] = False
        r["tag"] = tag
        self.log.append(r)
        print(
            f"{tag}{' (reused)' if r['reused'] else ''}: test {r['test_acc']:.4f} "
            f"val {r['val_acc']:.4f} personal {r.get('personal_acc', float('nan')):.4f} "
            f"rounds {r['rounds']} method {r['method_time']:.1f}s eval {r['eval_time']:.1f}s "
            f"wall {r['wall']:.1f}s",
            file=sys.stderr,
            flush=True,
        )
        return r


def best_of(tried: list[dict], key: str) -> int:
    """Index of the best configuration by ``key`` (the first of equals; NaN loses)."""
    vals = [float(r.get(key, float("nan"))) for r in tried]
    vals = [v if np.isfinite(v) else -np.inf for v in vals]
    return max(range(len(tried)), key=lambda i: (vals[i], -i))


def run_table(proto: dict, seeds: list[int], go: Runner) -> dict:
    report, select, _ = METRICS[proto["metric"]]
    common = proto.get("common", {})
    settings = proto.get("settings") or {"default": {}}
    grids = {name: m["grid"] for name, m in proto["methods"].items()}
    if len({len(g) for g in grids.values()}) != 1:
        raise SystemExit(
            "every method needs the same tuning budget; grids: "
            f"{ {k: len(v) for k, v in grids.items()} }"
        )
    first_setting = next(iter(settings))
    first = seeds[0]
    methods: dict[str, dict] = {}
    for name, m in proto["methods"].items():
        base = {**common, **settings[first_setting]}
        tried = [
            go(f"{name}-{first_setting}-tune{i}", m["config"], {**base, **g, "run.seed": first})
            for i, g in enumerate(m["grid"])
        ]
        best = best_of(tried, select)
        chosen = m["grid"][best]
        per_setting = {}
        for sname, sover in settings.items():
            runs = []
            for s in seeds:
                if sname == first_setting and s == first:
                    runs.append(tried[best])
                    continue
                over = {**common, **sover, **chosen, "run.seed": s}
                runs.append(go(f"{name}-{sname}-s{s}", m["config"], over))
            per_setting[sname] = runs
        methods[name] = {
            "config": m["config"],
            "grid": m["grid"],
            "chosen": best,
            "tuning": tried,
            "settings": per_setting,
        }
    random = None
    if proto.get("random"):
        rnd = proto["random"]
        if len(rnd["grid"]) != len(next(iter(grids.values()))):
            raise SystemExit("the random baseline needs the same tuning budget as the methods")
        base = {**common, **settings[first_setting]}
        tried = [
            go(
                f"random-tune{i}",
                rnd["config"],
                {**base, **g, "run.seed": first, "algorithm.random_nas.genotype_seed": 0},
            )
            for i, g in enumerate(rnd["grid"])
        ]
        best = best_of(tried, select)
        per_setting = {}
        for sname, sover in settings.items():
            runs = []
            for i in range(int(rnd["samples"])):
                if sname == first_setting and i == 0:
                    runs.append(tried[best])
                    continue
                over = {
                    **common,
                    **sover,
                    **rnd["grid"][best],
                    "run.seed": seeds[i % len(seeds)],
                    "algorithm.random_nas.genotype_seed": i,
                }
                runs.append(go(f"random-{sname}-g{i}", rnd["config"], over))
            per_setting[sname] = runs
        random = {"grid": rnd["grid"], "chosen": best, "tuning": tried, "settings": per_setting}
    return {"methods": methods, "random": random, "report": report, "select": select}


def summarise(doc: dict) -> dict:
    report = doc["report"]
    out: dict[str, dict] = {}
    for name, res in doc["methods"].items():
        out[name] = {}
        for sname, runs in res["settings"].items():
            out[name][sname] = {
                "acc": stats(r.get(report) for r in runs),
                "method_time": stats(r["method_time"] for r in runs),
                "eval_time": stats(r["eval_time"] for r in runs),
                "rounds": stats(r["rounds"] for r in runs),
                "stopped_early": sum(bool(r.get("stopped_early")) for r in runs),
                "drop_pt": stats(
                    (r["acc_before"] - r["acc_after"]) * 100
                    for r in runs
                    if r.get("acc_before") is not None and r.get("acc_after") is not None
                ),
                "seeds": [r["seed"] for r in runs],
            }
    if doc["random"]:
        out["random"] = {}
        for sname, runs in doc["random"]["settings"].items():
            mean = float(np.mean([r.get(report) for r in runs]))
            for name in doc["methods"]:
                x = out[name][sname]
                x["beats_random"] = sum(
                    r.get(report) > mean for r in doc["methods"][name]["settings"][sname]
                )
            out["random"][sname] = {
                "acc": stats(r.get(report) for r in runs),
                "method_time": stats(r["method_time"] for r in runs),
                "eval_time": stats(r["eval_time"] for r in runs),
                "rounds": stats(r["rounds"] for r in runs),
            }
    return out


def _pct(s: dict) -> str:
    return fmt(s, 100)


def markdown(doc: dict, proto: dict, args) -> str:
    s = doc["summary"]
    paper = proto.get("paper", {})
    settings = list(proto.get("settings") or {"default": {}})
    what = {
        "global": "final server test accuracy %",
        "personal": "mean local accuracy % (personalised models, clients' eval splits)",
    }[proto["metric"]]
    lines = [
        f"Protocol `{args.protocol}`; `mpirun -n {args.ranks}`; seeds {doc['seeds']}; "
        f"common overrides `{proto.get('common', {})}`.",
        "",
    ]
    if len(settings) == 1:
        lines += [
            f"| method | chosen configuration | {what}: mean ± std [min, max] | rounds run "
            f"(stopped early) | method time s | x {doc['time_base']} | eval time s "
            "| drop at the last architecture change pt | seeds above the random mean "
            f"| paper: {paper.get('header', '-')} |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        sname = settings[0]
        base = s.get(doc["time_base"], {}).get(sname, {}).get("method_time", {}).get("mean")
        for name, res in doc["methods"].items():
            x = s[name][sname]
            ratio = f"{x['method_time']['mean'] / base:.2f}" if base else "-"
            lines.append(
                f"| {name} | `{res['grid'][res['chosen']]}` | {_pct(x['acc'])} "
                f"| {fmt(x['rounds'], 1, 1, False)} ({x['stopped_early']}) "
                f"| {fmt(x['method_time'], 1, 1, False)} | {ratio} "
                f"| {fmt(x['eval_time'], 1, 1, False)} | {fmt(x['drop_pt'], 1, 1, False)} "
                f"| {x.get('beats_random', '-')} of {x['acc']['n']} | {paper.get(name, '-')} |"
            )
        if "random" in s:
            x, rnd = s["random"][sname], doc["random"]
            lines.append(
                f"| random genotypes ({x['acc']['n']} samples, whole round cap) "
                f"| `{rnd['grid'][rnd['chosen']]}` | {_pct(x['acc'])} "
                f"| {fmt(x['rounds'], 1, 1, False)} | {fmt(x['method_time'], 1, 1, False)} "
                f"| | | | | - |"
            )
    else:
        head = " | ".join(f"{n}: {what}" for n in settings)
        lines += [
            f"| method | chosen configuration (tuned on {settings[0]}) | {head} "
            f"| method time s per setting | paper: {paper.get('header', '-')} |",
            "|---|---|" + "---|" * len(settings) + "---|---|",
        ]
        for name, res in doc["methods"].items():
            cells = " | ".join(
                _pct(s[name][n]["acc"])
                + (
                    f" ({s[name][n]['beats_random']} of {s[name][n]['acc']['n']} > random)"
                    if "random" in s
                    else ""
                )
                for n in settings
            )
            times = ", ".join(f"{fmt(s[name][n]['method_time'], 1, 0, False)}" for n in settings)
            lines.append(
                f"| {name} | `{res['grid'][res['chosen']]}` | {cells} | {times} "
                f"| {paper.get(name, '-')} |"
            )
        if "random" in s:
            rnd = doc["random"]
            cells = " | ".join(_pct(s["random"][n]["acc"]) for n in settings)
            times = ", ".join(
                f"{fmt(s['random'][n]['method_time'], 1, 0, False)}" for n in settings
            )
            lines.append(
                f"| random genotypes ({s['random'][settings[0]]['acc']['n']} samples, whole "
                f"round cap) | `{rnd['grid'][rnd['chosen']]}` | {cells} "
                f"| {times} | - |"
            )
    lines += [
        "",
        f"Tuning (first seed, setting {settings[0]}; chosen by the final {doc['select']}):",
        "",
        "| method | configuration | selection metric % | reported metric % | rounds "
        "| method time s |",
        "|---|---|---|---|---|---|",
    ]
    tunings = [(n, r["tuning"], r["chosen"], r["grid"]) for n, r in doc["methods"].items()]
    if doc["random"]:
        r = doc["random"]
        tunings.append(("random_nas", r["tuning"], r["chosen"], r["grid"]))
    for name, tried, chosen, grid in tunings:
        for i, r in enumerate(tried):
            mark = " (chosen)" if i == chosen else ""
            lines.append(
                f"| {name} | `{grid[i]}`{mark} | {100 * r.get(doc['select'], np.nan):.2f} "
                f"| {100 * r.get(doc['report'], np.nan):.2f} | {r['rounds']} "
                f"| {r['method_time']:.1f} |"
            )
    lines += ["", "Commands (one per run; `result.json` in each run directory):", "", "```"]
    for r in doc["runs"]:
        lines.append(r["command"])
    lines.append("```")
    return "\n".join(lines)


def plot(doc: dict, proto: dict, out: Path) -> list[str]:
    """One ``fednas-mpi plot`` per setting over the chosen runs of every method."""
    _, _, per_round = METRICS[proto["metric"]]
    made = []
    for sname in proto.get("settings") or {"default": {}}:
        dirs = [r["run_dir"] for res in doc["methods"].values() for r in res["settings"][sname]]
        if doc["random"]:
            dirs += [r["run_dir"] for r in doc["random"]["settings"][sname]]
        dest = out if len(proto.get("settings") or {}) <= 1 else out / sname
        cmd = [
            sys.executable,
            "-m",
            "fednas_mpi",
            "plot",
            "--metric",
            per_round,
            "--out",
            str(dest),
            *dirs,
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if res.returncode != 0:
            print(f"plot failed: {' '.join(cmd)}\n{res.stderr[-2000:]}", file=sys.stderr)
            continue
        # keep the figures of the comparison; the per-run genotype cells and partition
        # heatmaps (a few MB per table) stay in the run directories' own `fednas-mpi plot`
        for png in dest.glob("*.png"):
            if png.name not in ("accuracy.png", "architecture.png", "time.png"):
                png.unlink()
        made.append(str(dest / "accuracy.png"))
    return made


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("protocol", help="table protocol YAML (bench/protocols/tables/*.yaml)")
    p.add_argument("--ranks", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs", type=Path, default=ROOT / "bench" / "runs", help="run cache")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--plots", type=Path, help="write the accuracy plots here")
    a = p.parse_args()
    proto = yaml.safe_load(Path(a.protocol).read_text())
    if proto.get("metric") not in METRICS:
        raise SystemExit(f"{a.protocol}: metric must be one of {sorted(METRICS)}")
    a.runs.mkdir(parents=True, exist_ok=True)
    go = Runner(a.runs, a.ranks, float(proto.get("target", 1.0)))
    doc = run_table(proto, a.seeds, go)
    doc.update(seeds=a.seeds, ranks=a.ranks, runs=go.log, protocol=proto)
    doc["time_base"] = proto.get("time_base", next(iter(proto["methods"])))
    doc["summary"] = summarise(doc)
    if a.plots:
        doc["plots"] = plot(doc, proto, a.plots)
    text = markdown(doc, proto, a)
    print(text)
    if a.markdown:
        a.markdown.write_text(text + "\n")
    if a.json:
        a.json.write_text(json.dumps(doc, indent=1, default=float))


if __name__ == "__main__":
    main()
