"""How good is a searched cell? The NAS field's evaluation protocol for federated searches:
every cell retrained from scratch with one fixed recipe and placed among many random cells
and the published cells of the same space (issue 25).

    python bench/search_quality.py bench/protocols/search_quality/cpu.yaml
        [--settings NAME ...] [--seeds 0 1 2] [--jobs 2] [--runs bench/runs]
        [--json OUT.json] [--markdown OUT.md] [--plots DIR]

A protocol file (``bench/protocols/search_quality/*.yaml``) names:

- ``space``: the overrides that put every run - search, random cell, published cell - in
  one space (``model.darts.nodes: 4``, 2 inputs per node: the space the published cells
  come from);
- ``recipe``: the fixed training of a genotype from scratch (``random_nas`` with
  ``algorithm.random_nas.genotype``): its overrides (rounds, local epochs, evaluation
  only at the end, no early stopping), the learning-rate grid and the random genotypes it
  is tuned on, and ``budgets`` (the evaluation budget ladder: extra round counts at which
  the random and published cells are retrained to see whether the ranking holds);
- ``methods``: per search method (or named variant of one: ``config`` names the method's
  config file when the key is not the method's own name) its overrides (the configuration
  the paper-table protocol chose for it) and ``scale``: the schedule keys (warm-up, pruning
  start, derivation round, search rounds) given for 12 rounds, multiplied by rounds/12 on
  the search ladder;
- ``search``: the overrides of every search run;
- ``settings``: per setting its dataset (``configs/cpu/DATASET/METHOD.yaml``), its
  partition overrides, how many random cells, the search ladder (round counts) and the
  evaluation budgets it runs.

Procedure, per setting:

1. **Recipe tuning** (once, then frozen): every learning rate of the grid trains each
   tuning genotype on the first seed; the rate with the best mean ``val_acc`` (the
   clients' own eval splits, never the server test set) is the recipe's for every cell.
2. **Searches**: every method on every seed at every ladder budget, end to end; its final
   server test accuracy, method time and the method time of its search stage are kept.
   The searched cell is the run's ``genotype.json`` (FedNAS, FedMetaNAS: 2 inputs per node
   by construction) or, for the single-path searches (FedDSNAS, FedRLNAS), whose argmax
   child may keep any number of inputs per node, DARTS's derivation of their final logits
   (per node the 2 inputs whose strongest op other than none weighs most): the cell the
   search proposes in the one space of the comparison.
3. **Retraining**: ``random_cells`` uniform genotypes, the published cells and every
   searched cell are retrained with the recipe on every seed (paired: cell g on seed s and
   the searched cell on seed s see the same partition and initialisation stream). A
   screening protocol (``searched_retrain: same_seed``) retrains each searched cell on its
   search's seed only and places it among the random cells' accuracies on that seed.

Reported per setting: the random cells' seed-mean accuracy (validation and test) - median,
interquartile range - and how reliably the recipe ranks them (Kendall tau between seeds,
mean over seed pairs); per published and searched cell its seed-mean accuracy and its
percentile among the random cells; per search its end-to-end accuracy and costs. Retrains
run ``--jobs`` at a time, each in one process (``-n 1``: results do not depend on the rank
count) on one thread (``runtime.threads_per_rank``'s default).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nas_protocol import ROOT, _sets, finished, read_run  # noqa: E402
from tables import Runner, stale_keys  # noqa: E402

PATH_METHODS = ("feddsnas", "fedrlnas")  # single-path searches: DARTS rule on their logits


class ForkLauncher:
    """Runs ``fednas-mpi ARGV`` in one process forked from a helper that imported torch
    once (``fednas_mpi.harness.ForkCLI``), one helper per thread: a 12-round CPU run is
    ~20 s, of which the imports of a fresh process would be ~6 s."""

    def __init__(self, scratch: Path):
        self.scratch, self.local, self.all = scratch, threading.local(), []

    def __call__(self, argv: list[str]) -> tuple[int, str]:
        from fednas_mpi.harness import ForkCLI

        if not hasattr(self.local, "cli"):
            self.local.cli = ForkCLI()
            self.local.logs = self.scratch / f"fork-{threading.get_ident()}"
            self.local.logs.mkdir(parents=True, exist_ok=True)
            self.all.append(self.local.cli)
        res = self.local.cli.run(argv, ROOT, timeout=3600, logs=self.local.logs)
        return res.returncode, res.stderr

    def close(self) -> None:
        for cli in self.all:
            cli.close()


class Pending(Exception):
    """A run the plan leaves to another launcher (``--commands``)."""


class PlanRunner(Runner):
    """``--commands``: runs nothing; reads back every run that has finished in the cache
    (made by a SLURM array task, say) and records the others as lines
    ``RUN_DIR<TAB>CONFIG<TAB>--set ...`` for jobs/search_quality_array.sbatch."""

    def __init__(self, root: Path, ranks: int):
        super().__init__(root, ranks, 1.0)
        self.plan: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, tag: str, cfg: str, overrides: dict) -> dict:
        out = self.run_dir(cfg, overrides)
        done = out / "result.json"
        if (done.exists() or finished(out)) and (stale := stale_keys(cfg, overrides, out)):
            print(f"{tag}: the cached run {out} ran another config ({stale}): planned again")
            shutil.rmtree(out)
        if done.exists():
            r = json.loads(done.read_text())
        elif finished(out):
            r = read_run(cfg, overrides, self.ranks, out, 1.0)
            r["run_dir"] = str(out)
            done.write_text(json.dumps(r, indent=1, default=float))
        else:
            with self.lock:
                self.plan.append(f"{out}\t{ROOT / cfg}\t{' '.join(_sets(overrides))}")
            raise Pending(tag)
        r["tag"], r["reused"] = tag, True
        self.log.append(r)
        return r


# ---------------------------------------------------------------- pure statistics


def percentile(x: float, population) -> float:
    """Percentile rank of ``x`` among ``population`` (0-100): the share of the population
    below it, ties counted half (so a cell equal to every random cell sits at 50)."""
    p = np.asarray(list(population), dtype=float)
    if not p.size or not np.isfinite(x):
        return float("nan")
    return float(100.0 * ((p < x).sum() + 0.5 * (p == x).sum()) / p.size)


def kendall_tau(a, b) -> float:
    """Kendall's tau-b between two rankings of the same items (ties in either allowed)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.size < 2:
        raise ValueError("kendall_tau needs two equally long sequences of 2 or more values")
    concordant = discordant = ties_a = ties_b = 0
    for i in range(a.size):
        for j in range(i + 1, a.size):
            da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif da == db:
                concordant += 1
            else:
                discordant += 1
    n0 = concordant + discordant
    denom = np.sqrt((n0 + ties_a) * (n0 + ties_b))
    return float((concordant - discordant) / denom) if denom else float("nan")


def seed_agreement(acc: np.ndarray) -> float:
    """Mean Kendall tau over every pair of seeds of ``acc`` (cells x seeds): how alike two
    seeds rank the same cells."""
    s = acc.shape[1]
    taus = [kendall_tau(acc[:, i], acc[:, j]) for i in range(s) for j in range(i + 1, s)]
    return float(np.nanmean(taus)) if taus else float("nan")


def quartiles(values) -> dict:
    v = np.asarray(list(values), dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"n": 0}
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {
        "n": int(v.size),
        "median": float(med),
        "q1": float(q1),
        "q3": float(q3),
        "mean": float(v.mean()),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def scaled(keys: dict, rounds: int, base: int = 12) -> dict:
    """Schedule keys given for ``base`` rounds at ``rounds``: each multiplied by
    rounds/base (rounded, at least 1)."""
    return {k: max(1, round(v * rounds / base)) for k, v in keys.items()}


# ---------------------------------------------------------------- genotypes of searches


def darts_rule_genotype(run_dir: Path, nodes: int, k: int) -> dict:
    """DARTS's derivation of the final logits of a run (the newest checkpoint): for the
    single-path searches, whose own argmax child may keep any number of inputs per node."""
    import torch

    from fednas_mpi.nas import CELL_TYPES, CellSpace, Genotype, derive_darts
    from fednas_mpi.store import list_checkpoints, read_checkpoint

    ck = read_checkpoint(list_checkpoints(run_dir)[-1][1])
    darts = (yaml.safe_load(ck.config_yaml).get("model") or {}).get("darts") or {}
    space = CellSpace(nodes, k)
    if darts.get("primitives"):
        space = CellSpace(nodes, k, tuple(darts["primitives"]))
    full = space.full_masks()[0]
    cells = {
        c: derive_darts(space, torch.as_tensor(ck.state[f"alpha_{c}"]), full)[0] for c in CELL_TYPES
    }
    return Genotype.from_dict(cells).to_dict()


def searched_genotype(method: str, run: dict, dest: Path, nodes: int, k: int) -> str:
    """The genotype source (for ``algorithm.random_nas.genotype``) of a search run."""
    run_dir = Path(run["run_dir"])
    if method not in PATH_METHODS:
        return str(run_dir)  # its genotype.json
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        dest.write_text(json.dumps(darts_rule_genotype(run_dir, nodes, k), indent=1) + "\n")
    return str(dest)


# ---------------------------------------------------------------- the procedure


def eval_budgets(recipe: dict, setting: dict) -> dict[str, dict]:
    """The evaluation budgets of a setting, by name, with the overrides each adds to the
    recipe: the recipe's own first (``E12`` for 12 rounds), then the setting's
    ``eval_budgets``: a round count R (``ER``), or ``{NAME: overrides}`` (a deeper
    evaluation network, say ``{model.darts.layers: 6}``)."""
    main = int(recipe["overrides"]["run.rounds"])
    out = {f"E{main}": {"run.rounds": main}}
    for b in setting.get("eval_budgets", []):
        if isinstance(b, dict):
            out.update({str(k): dict(v) for k, v in b.items()})
        else:
            out.setdefault(f"E{int(b)}", {"run.rounds": int(b)})
    return out


def cfg_of(proto: dict, dataset: str, method: str) -> str:
    """The run config of a method on a dataset: ``CONFIGS/DATASET/METHOD.yaml`` with the
    protocol's ``configs`` folder (configs/cpu by default)."""
    return f"{proto.get('configs', 'configs/cpu')}/{dataset}/{method}.yaml"


def run_setting_phases(proto: dict, settings: list[str], seeds: list[int], go, jobs: int):
    """Runs everything (phase 1: recipe tuning and searches; phase 2: retrains) and returns
    the raw results per setting."""
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        return _phases(proto, settings, seeds, go, pool)
    finally:
        pool.shutdown(wait=True)  # a plan records every run of the phase it stopped in


def _phases(proto, settings, seeds, go, pool) -> dict:
    space, recipe = proto["space"], proto["recipe"]
    first = seeds[0]

    def submit(tag, cfg, over):
        return pool.submit(go, tag, cfg, over)

    # phase 1
    pending: dict[str, dict] = {}
    for sname in settings:
        st = proto["settings"][sname]
        base = {**proto.get("common", {}), **space, **st.get("overrides", {})}
        rcfg = cfg_of(proto, st["dataset"], "random_nas")
        tune = {}
        for lr in recipe["lr_grid"]:
            for g in recipe["tune_genotypes"]:
                over = {
                    **base,
                    **recipe["overrides"],
                    "algorithm.random_nas.lr": lr,
                    "algorithm.random_nas.genotype_seed": g,
                    "run.seed": first,
                }
                tune[(lr, g)] = submit(f"{sname}-recipe-lr{lr}-g{g}", rcfg, over)
        searches = {}
        for m, spec in proto["methods"].items():
            for rounds in st.get("ladder", [12]):
                if "ladder" in spec and rounds not in spec["ladder"]:
                    continue
                for s in seeds:
                    over = {
                        **base,
                        **proto["search"],
                        **spec.get("overrides", {}),
                        **scaled(spec.get("scale", {}), rounds, proto.get("ladder_base", 12)),
                        "run.rounds": rounds,
                        "run.seed": s,
                    }
                    searches[(m, rounds, s)] = submit(
                        f"{sname}-{m}-R{rounds}-s{s}",
                        cfg_of(proto, st["dataset"], spec.get("config", m)),
                        over,
                    )
        pending[sname] = {"tune": tune, "searches": searches, "base": base, "rcfg": rcfg}
    # phase 2
    out: dict[str, dict] = {}
    for sname in settings:
        st, p = proto["settings"][sname], pending[sname]
        tune = {key: f.result() for key, f in p["tune"].items()}
        lr_score = {
            lr: float(np.mean([tune[(lr, g)]["val_acc"] for g in recipe["tune_genotypes"]]))
            for lr in recipe["lr_grid"]
        }
        lr = max(recipe["lr_grid"], key=lambda v: (lr_score[v], -recipe["lr_grid"].index(v)))
        searches = {key: f.result() for key, f in p["searches"].items()}
        budgets = eval_budgets(recipe, st)
        if proto.get("only_budgets"):  # --budgets: the recipe's own and the ones named
            first = next(iter(budgets))
            budgets = {k: v for k, v in budgets.items() if k == first or k in proto["only_budgets"]}
        cells: dict[tuple, object] = {}  # (kind, name, budget, seed) -> future
        for b, b_over in budgets.items():
            common = {**p["base"], **recipe["overrides"], **b_over, "algorithm.random_nas.lr": lr}
            for s in seeds:
                for g in range(int(st["random_cells"])):
                    over = {**common, "algorithm.random_nas.genotype_seed": g, "run.seed": s}
                    cells[("random", g, b, s)] = submit(
                        f"{sname}-random-g{g}-{b}-s{s}", p["rcfg"], over
                    )
                for name in proto.get("published", []):
                    over = {**common, "algorithm.random_nas.genotype": name, "run.seed": s}
                    cells[("published", name, b, s)] = submit(
                        f"{sname}-{name}-{b}-s{s}", p["rcfg"], over
                    )
                if b != next(iter(budgets)):
                    continue  # searched cells: the recipe's own budget
                for (m, rounds, ss), r in searches.items():
                    if proto.get("searched_retrain") == "same_seed" and ss != s:
                        continue
                    src = searched_genotype(
                        proto["methods"][m].get("config", m),
                        r,
                        go.root / "genotypes" / f"{sname}-{m}-R{rounds}-s{ss}.json",
                        int(space["model.darts.nodes"]),
                        int(space.get("model.darts.input_k", 2)),
                    )
                    over = {**common, "algorithm.random_nas.genotype": src, "run.seed": s}
                    cells[("searched", (m, rounds, ss), b, s)] = submit(
                        f"{sname}-{m}-R{rounds}-s{ss}-retrain-{b}-s{s}", p["rcfg"], over
                    )
        out[sname] = {
            "lr": lr,
            "lr_score": lr_score,
            "tune": tune,
            "searches": searches,
            "cells": cells,
            "budgets": list(budgets),
        }
    for sname in settings:
        out[sname]["cells"] = {k: f.result() for k, f in out[sname]["cells"].items()}
    return out


def summarise(proto: dict, raw: dict, seeds: list[int]) -> dict:
    """The tables' numbers: per setting and evaluation budget the random distribution and
    the recipe's reliability, per published and searched cell its percentile."""
    doc: dict = {}
    for sname, r in raw.items():
        st = proto["settings"][sname]
        n = int(st["random_cells"])
        sdoc: dict = {"lr": r["lr"], "lr_score": r["lr_score"], "budgets": {}}
        for b in r["budgets"]:

            def acc(kind, name, metric, b=b, r=r):
                return np.array([r["cells"][(kind, name, b, s)][metric] for s in seeds], float)

            rand = {
                m: np.stack([acc("random", g, m) for g in range(n)])
                for m in ("val_acc", "test_acc")
            }
            rmean = {m: v.mean(axis=1) for m, v in rand.items()}
            bdoc = {
                "random": {
                    m: {
                        **quartiles(rmean[m]),
                        "kendall_tau": seed_agreement(rand[m]),
                        "per_cell": rmean[m].tolist(),
                    }
                    for m in rand
                },
                "published": {},
                "searched": {},
            }
            for name in proto.get("published", []):
                bdoc["published"][name] = {
                    m: {
                        "mean": float(acc("published", name, m).mean()),
                        "per_seed": acc("published", name, m).tolist(),
                        "percentile": percentile(acc("published", name, m).mean(), rmean[m]),
                    }
                    for m in rand
                }
            for key in sorted({k[1] for k in r["cells"] if k[0] == "searched" and k[2] == b}):
                m_name, rounds, ss = key
                search = r["searches"][key]
                entry = {
                    "method": m_name,
                    "rounds": rounds,
                    "search_seed": ss,
                    "genotype": next(
                        v["genotype"]
                        for k, v in r["cells"].items()
                        if k[0] == "searched" and k[1] == key and k[2] == b
                    ),
                    "end_to_end_test_acc": search["test_acc"],
                    "end_to_end_val_acc": search["val_acc"],
                    "method_time": search["method_time"],
                    "search_time": search["method_time_per_stage"].get(
                        "search", search["method_time"]
                    ),
                    # test accuracy lost at the last architecture change (derivation or
                    # pruning; None for searches without one), percentage points
                    "derivation_drop": None
                    if search.get("acc_before") is None
                    else 100 * (search["acc_before"] - search["acc_after"]),
                }
                for m in rand:
                    if proto.get("searched_retrain") == "same_seed":
                        # one retrain, on its search's seed: placed among the random
                        # cells' accuracies on that seed
                        i = seeds.index(ss)
                        a = np.array([r["cells"][("searched", key, b, ss)][m]], float)
                        pct = percentile(float(a[0]), rand[m][:, i])
                    else:
                        a = acc("searched", key, m)
                        pct = percentile(a.mean(), rmean[m])
                    entry[m] = {"mean": float(a.mean()), "per_seed": a.tolist(), "percentile": pct}
                bdoc["searched"][f"{m_name}-R{rounds}-s{ss}"] = entry
            sdoc["budgets"][b] = bdoc
        doc[sname] = sdoc
    return doc


PARAM_FREE = ("max_pool_3x3", "avg_pool_3x3", "skip_connect")


def param_free_share(genotype: str) -> dict[str, float]:
    """Per cell type the share of a genotype's ops (its text form, ``normal: s2 = op(s0)
    + ...``) that have no parameters: pools and skips (3 of the 7 real ops, so 43 % for a
    uniform draw). Searches that favour them early are the failure issue 26 describes."""
    out = {}
    for line in genotype.splitlines():
        cell, _, body = line.partition(":")
        ops = re.findall(r"([a-z_0-9]+)\(s\d+\)", body)
        if ops:
            out[cell.strip()] = sum(o in PARAM_FREE for o in ops) / len(ops)
    return out


def method_rows(bdoc: dict) -> dict:
    """Per (method, search rounds): the mean percentile of its searched cells and more."""
    rows: dict[tuple, dict] = {}
    for e in bdoc["searched"].values():
        rows.setdefault((e["method"], e["rounds"]), []).append(e)
    out = {}
    for key, es in sorted(rows.items()):
        out[key] = {
            "n": len(es),
            "pct_val": float(np.mean([e["val_acc"]["percentile"] for e in es])),
            "pct_test": float(np.mean([e["test_acc"]["percentile"] for e in es])),
            "at_or_above_70_test": sum(e["test_acc"]["percentile"] >= 70 for e in es),
            "retrain_test": float(np.mean([e["test_acc"]["mean"] for e in es])),
            "end_to_end": float(np.mean([e["end_to_end_test_acc"] for e in es])),
            "method_time": float(np.mean([e["method_time"] for e in es])),
            "search_time": float(np.mean([e["search_time"] for e in es])),
            "pcts_test": [round(e["test_acc"]["percentile"]) for e in es],
            "derivation_drop": float(
                np.nanmean(
                    [
                        np.nan if e.get("derivation_drop") is None else e["derivation_drop"]
                        for e in es
                    ]
                )
            )
            if any(e.get("derivation_drop") is not None for e in es)
            else float("nan"),
            "param_free": {
                c: float(np.mean([param_free_share(e["genotype"]).get(c, np.nan) for e in es]))
                for c in ("normal", "reduce")
            },
        }
    return out


def markdown(proto: dict, doc: dict, raw: dict, seeds: list[int], args) -> str:
    lines = [
        f"Protocol `{args.protocol}`; seeds {seeds}; space `{proto['space']}`; recipe "
        f"`{proto['recipe']['overrides']}` (random_nas, SGD momentum 0.9, weight decay 3e-4, "
        f"cosine learning rate to 0.001), learning rate from {proto['recipe']['lr_grid']} "
        f"tuned on random genotypes {proto['recipe']['tune_genotypes']} (seed {seeds[0]}, "
        "mean val_acc). Accuracies are seed means over the seeds; percentiles are among "
        + (
            "the random cells' seed means, except a searched cell's (retrained on its "
            "search's seed only: among the random cells on that seed)."
            if proto.get("searched_retrain") == "same_seed"
            else "the random cells' seed means."
        ),
        "",
    ]
    for sname, sdoc in doc.items():
        st = proto["settings"][sname]
        lines += [
            f"#### {sname} ({st['dataset']}, `{st.get('overrides', {})}`)",
            "",
            f"Recipe learning rate: {sdoc['lr']} (mean val_acc of the tuning genotypes: "
            + ", ".join(f"{k}: {100 * v:.2f} %" for k, v in sdoc["lr_score"].items())
            + ").",
            "",
            "| evaluation budget | random cells | val %: median [IQR] | test %: median "
            "[IQR] | Kendall tau between seeds (val / test) | "
            + " | ".join(f"{p} test % (pct)" for p in proto.get("published", []))
            + " |",
            "|---|---|---|---|---|" + "---|" * len(proto.get("published", [])),
        ]
        for b, bdoc in sdoc["budgets"].items():
            rv, rt = bdoc["random"]["val_acc"], bdoc["random"]["test_acc"]
            pubs = " | ".join(
                f"{100 * p['test_acc']['mean']:.2f} ({p['test_acc']['percentile']:.0f})"
                for p in bdoc["published"].values()
            )
            lines.append(
                f"| {b} | {rt['n']} | {100 * rv['median']:.2f} [{100 * rv['q1']:.2f}, "
                f"{100 * rv['q3']:.2f}] | {100 * rt['median']:.2f} [{100 * rt['q1']:.2f}, "
                f"{100 * rt['q3']:.2f}] | {rv['kendall_tau']:.2f} / {rt['kendall_tau']:.2f} "
                f"| {pubs} |"
            )
        b0 = next(iter(sdoc["budgets"]))
        rows = method_rows(sdoc["budgets"][b0])
        lines += [
            "",
            f"Searched cells retrained with the recipe (budget {b0}), per method and search "
            "budget (mean over the search seeds):",
            "",
            "| method | search rounds | cells | percentile val / test (per cell, test) "
            "| cells >= 70th pct (test) | retrained test % | end-to-end test % "
            "| method time s | search stage s | parameter-free ops normal / reduce % "
            "| drop at the last architecture change, pt |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for (m, rounds), x in rows.items():
            lines.append(
                f"| {m} | {rounds} | {x['n']} | {x['pct_val']:.0f} / {x['pct_test']:.0f} "
                f"({', '.join(map(str, x['pcts_test']))}) | {x['at_or_above_70_test']} of "
                f"{x['n']} | {100 * x['retrain_test']:.2f} | {100 * x['end_to_end']:.2f} "
                f"| {x['method_time']:.1f} | {x['search_time']:.1f} "
                f"| {100 * x['param_free']['normal']:.0f} / {100 * x['param_free']['reduce']:.0f} "
                f"| {x['derivation_drop']:.1f} |"
            )
        lines += ["", "Searched genotypes:", ""]
        for key, e in sdoc["budgets"][b0]["searched"].items():
            lines.append(
                f"- {key}: {e['genotype'].replace(chr(10), ' / ')} "
                f"(test pct {e['test_acc']['percentile']:.0f})"
            )
        lines.append("")
    return "\n".join(lines)


def plot(proto: dict, doc: dict, out: Path) -> list[str]:
    """Per setting and budget: the random cells' seed-mean test accuracies as a strip, with
    the published and searched cells marked on the same axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    made = []
    colours = {"fednas": "C0", "fedmetanas": "C3", "feddsnas": "C2", "fedrlnas": "C1"}
    rungs = ["o", "s", "D", "^"]  # marker per search budget, in ascending order
    for sname, sdoc in doc.items():
        for b, bdoc in sdoc["budgets"].items():
            fig, ax = plt.subplots(figsize=(8, 3.6))
            rnd = 100 * np.asarray(bdoc["random"]["test_acc"]["per_cell"])
            jitter = np.linspace(-0.15, 0.15, len(rnd))
            ax.scatter(rnd, jitter, color="0.6", s=18, label=f"random cells ({len(rnd)})")
            q = bdoc["random"]["test_acc"]
            ax.axvspan(100 * q["q1"], 100 * q["q3"], color="0.9", zorder=0, label="random IQR")
            ax.axvline(100 * q["median"], color="0.4", lw=1)
            for i, (name, p) in enumerate(bdoc["published"].items()):
                ax.scatter(
                    100 * p["test_acc"]["mean"],
                    0.45,
                    marker="*",
                    s=120,
                    color=f"C{4 + i}",
                    label=name,
                    zorder=3,
                )
            budgets = sorted({e["rounds"] for e in bdoc["searched"].values()})
            seen = set()
            for e in bdoc["searched"].values():
                k = budgets.index(e["rounds"])
                lab = f"{e['method']} R{e['rounds']}"
                ax.scatter(
                    100 * e["test_acc"]["mean"],
                    -0.45 - 0.12 * k,
                    marker=rungs[k % len(rungs)],
                    color=colours.get(e["method"], "k"),
                    s=40,
                    label=None if lab in seen else lab,
                    zorder=3,
                )
                seen.add(lab)
            ax.set_yticks([])
            ax.set_xlabel(f"seed-mean server test accuracy % (evaluation budget {b})")
            ax.set_title(f"{sname}: searched and published cells among random cells")
            ax.legend(fontsize=6, ncol=3, loc="upper left", bbox_to_anchor=(0, -0.25))
            fig.tight_layout()
            path = out / f"{sname}-{b}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            made.append(str(path))
    return made


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("protocol", help="bench/protocols/search_quality/*.yaml")
    p.add_argument("--settings", nargs="+", help="run only these settings (default: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one process each)")
    p.add_argument(
        "--ranks",
        type=int,
        default=1,
        help="MPI ranks per run (1: each run one process forked from a warm helper; more: "
        "mpirun -n RANKS)",
    )
    p.add_argument(
        "--commands",
        type=Path,
        help="run nothing: write the runs still to do (this phase: recipe tuning and "
        "searches, then retrains) to this file for jobs/search_quality_array.sbatch; with "
        "every run finished, report",
    )
    p.add_argument(
        "--ladder",
        type=int,
        nargs="+",
        help="run only these search-ladder rungs (round counts) of every setting's ladder",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        help="run only these search methods (or variants) of the protocol (default: all)",
    )
    p.add_argument(
        "--budgets",
        nargs="+",
        help="run only these extra evaluation budgets (by name: E24, L6, ...) beside the "
        "recipe's own (default: all of a setting's)",
    )
    p.add_argument(
        "--max-rounds",
        type=int,
        help="leave out search-ladder rungs and evaluation budgets above this many rounds "
        "(a protocol cut to fit a session; the report says so)",
    )
    p.add_argument("--runs", type=Path, default=ROOT / "bench" / "runs", help="run cache")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--plots", type=Path)
    a = p.parse_args()
    proto = yaml.safe_load(Path(a.protocol).read_text())
    settings = a.settings or list(proto["settings"])
    unknown = [s for s in settings if s not in proto["settings"]]
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; the protocol has {list(proto['settings'])}")
    if len(a.seeds) < 2:
        raise SystemExit("--seeds: at least 2 seeds (the recipe's reliability compares seeds)")
    if a.max_rounds:
        for st in proto["settings"].values():
            st["ladder"] = [r for r in st.get("ladder", [12]) if r <= a.max_rounds]
            st["eval_budgets"] = [
                b
                for b in st.get("eval_budgets", [])
                if isinstance(b, dict)
                and all(int(o.get("run.rounds", 0)) <= a.max_rounds for o in b.values())
                or not isinstance(b, dict)
                and b <= a.max_rounds
            ]
    if a.budgets:
        proto["only_budgets"] = list(a.budgets)
    if a.methods:
        missing = [m for m in a.methods if m not in proto["methods"]]
        if missing:
            have = list(proto["methods"])
            raise SystemExit(f"unknown methods {missing}; the protocol has {have}")
        proto["methods"] = {m: proto["methods"][m] for m in a.methods}
    if a.ladder:
        for st in proto["settings"].values():
            st["ladder"] = [r for r in st.get("ladder", [12]) if r in a.ladder]
    a.runs = a.runs.resolve()
    a.runs.mkdir(parents=True, exist_ok=True)
    if a.commands:
        go = PlanRunner(a.runs, a.ranks)
        try:
            raw = run_setting_phases(proto, settings, a.seeds, go, 1)
        except Pending:
            a.commands.write_text("\n".join(go.plan) + "\n")
            print(
                f"{len(go.plan)} runs to do, one per line of {a.commands}: "
                f"sbatch --array=0-{len(go.plan) - 1} --export=ALL,COMMANDS={a.commands.resolve()} "
                "jobs/search_quality_array.sbatch; then run this command again (the next "
                "phase's runs, or the report once every run has finished)"
            )
            return
    else:
        launch = ForkLauncher(a.runs / ".fork") if a.ranks == 1 else None
        go = Runner(a.runs, a.ranks, 1.0, launch)
        try:
            raw = run_setting_phases(proto, settings, a.seeds, go, a.jobs)
        finally:
            if launch:
                launch.close()
    doc = summarise(proto, raw, a.seeds)
    text = markdown(proto, doc, raw, a.seeds, a)
    plots = plot(proto, doc, a.plots) if a.plots else []
    print(text)
    if a.markdown:
        a.markdown.write_text(text + "\n")
    if a.json:
        a.json.write_text(
            json.dumps(
                {
                    "protocol": proto,
                    "seeds": a.seeds,
                    "summary": doc,
                    "plots": plots,
                    "runs": go.log,
                },
                indent=1,
                default=float,
            )
        )


if __name__ == "__main__":
    main()
