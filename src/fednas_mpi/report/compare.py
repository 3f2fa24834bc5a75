"""``fednas-mpi compare``: settings side by side, mean ± std over seeds (paper Table 2).

Runs are grouped into settings by their config without the seed (and the fields that
do not change results); per setting: final, best and local accuracy, the time spent in
rounds (total and per stage), optionally the time to reach a target accuracy, and the
accuracy just before and after the last architecture change (paper Table 3).
"""

from __future__ import annotations

import numpy as np

from ..nas.spec import genotype_of
from .runs import Run, Setting, finite_best, finite_last, group_settings, time_per_stage
from .summary import to_csv


def _time_to(run: Run, target: float) -> float:
    """Sum of round times up to the first round whose global accuracy reaches ``target``."""
    acc = np.nan_to_num(run.metric("global_acc"), nan=-1.0)
    hit = np.flatnonzero(acc >= target)
    return float(np.nansum(run.metric("round_time")[: hit[0] + 1])) if hit.size else np.nan


def run_values(run: Run, target: float | None) -> dict[str, float]:
    before, r = finite_last(run.metric("acc_before_prune"))
    values = {
        "final_acc": finite_last(run.metric("global_acc"))[0],
        "best_acc": finite_best(run.metric("global_acc"))[0],
        "local_acc": finite_last(run.metric("local_acc"))[0],
        "time": float(np.nansum(run.metric("round_time"))),
        "acc_before_change": before,
        "acc_after_change": float(run.metric("acc_after_prune")[r - 1]) if r else np.nan,
    }
    if target is not None:
        values["time_to_target"] = _time_to(run, target)
    return values


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one run) of the finite values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.nan, np.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _ms(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    m, s = mean_std(values)
    if not np.isfinite(m):
        return "-"
    missing = sum(1 for v in values if not np.isfinite(v))
    spread = len(values) - missing > 1
    text = f"{m * scale:.{digits}f}" + (f" ± {s * scale:.{digits}f}" if spread else "")
    return text + (f" ({missing} never)" if missing else "")


def _rounds(setting: Setting) -> str:
    done = sorted({r.round for r in setting.runs})
    planned = max(r.rounds_planned for r in setting.runs)
    text = f"{done[0]}" if len(done) == 1 else f"{done[0]}-{done[-1]}"
    return text if done[0] == planned and len(done) == 1 else f"{text}/{planned}"


def rows(settings: list[Setting], target: float | None) -> list[dict]:
    """One row of numbers per setting (fractions and seconds; mean and std over runs)."""
    out = []
    for s in settings:
        per_run = [run_values(r, target) for r in s.runs]
        row: dict = {
            "setting": s.label,
            "method": s.method,
            "dataset": s.runs[0].dataset,
            "runs": len(s.runs),
            "seeds": " ".join(str(x) for x in s.seeds),
            "rounds": _rounds(s),
        }
        for key in per_run[0]:
            m, sd = mean_std([v[key] for v in per_run])
            row[f"{key}_mean"], row[f"{key}_std"] = m, sd
        stages = {}
        for r in s.runs:
            for stage in time_per_stage(r):
                stages.setdefault(stage, None)
        for stage in stages:
            m, sd = mean_std([time_per_stage(r).get(stage, 0.0) for r in s.runs])
            row[f"time_stage_{stage}_mean"], row[f"time_stage_{stage}_std"] = m, sd
        row["_per_run"] = per_run
        out.append(row)
    return out


def markdown(settings: list[Setting], legend: list[str], target: float | None) -> str:
    table = rows(settings, target)
    best_final = max(
        (r["final_acc_mean"] for r in table if np.isfinite(r["final_acc_mean"])), default=np.nan
    )
    fastest = min((r["time_mean"] for r in table if r["time_mean"] > 0), default=np.nan)
    head = [
        "setting",
        "method",
        "seeds",
        "rounds",
        "final acc %",
        "Δ best pp",
        "best acc %",
        "local acc %",
        "time s",
        "x fastest",
        "time per stage s",
    ]
    if target is not None:
        head.append(f"time to {100 * target:g} % s")
    head.append("acc before -> after arch change %")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s, r in zip(settings, table):
        runs = r["_per_run"]
        col = {k: [v[k] for v in runs] for k in runs[0]}
        stages = ", ".join(
            f"{stage} {_ms([time_per_stage(x).get(stage, 0.0) for x in s.runs], digits=1)}"
            for stage in dict.fromkeys(st for x in s.runs for st in time_per_stage(x))
        )
        change = (
            "-"
            if not np.isfinite(r["acc_before_change_mean"])
            else f"{_ms(col['acc_before_change'], 100)} -> {_ms(col['acc_after_change'], 100)}"
        )
        gap = r["final_acc_mean"] - best_final
        cells = [
            s.label or "-",
            s.method,
            r["seeds"],
            r["rounds"],
            _ms(col["final_acc"], 100),
            "-" if not np.isfinite(gap) else f"{100 * gap:+.2f}",
            _ms(col["best_acc"], 100),
            _ms(col["local_acc"], 100),
            _ms(col["time"], digits=1),
            f"{r['time_mean'] / fastest:.2f}" if np.isfinite(fastest) else "-",
            stages,
        ]
        if target is not None:
            cells.append(_ms(col["time_to_target"], digits=1))
        cells.append(change)
        lines.append("| " + " | ".join(cells) + " |")
    notes = [_verdict(settings, table)] if len(settings) > 1 else []
    notes += legend
    incomplete = [
        f"{r.directory} ({r.round}/{r.rounds_planned} rounds)"
        for s in settings
        for r in s.runs
        if not r.complete
    ]
    if incomplete:
        notes.append("incomplete runs (still running or interrupted): " + ", ".join(incomplete))
    notes.append("mean ± sample std over the runs of a setting; time: sum of round times")
    genotypes = [
        f"{s.title}, seed {r.seed} ({r.directory}):\n{g.text}"
        for s in settings
        for r in s.runs
        if (g := genotype_of(r.spec)) is not None and g.text
    ]
    out = "\n".join(lines) + "\n\n" + "\n".join(notes)
    if genotypes:
        out += (
            "\n\nGenotypes found (s0, s1: cell inputs; s2.. intermediate nodes):\n\n```\n"
            + "\n\n".join(genotypes)
            + "\n```"
        )
    return out


def _verdict(settings: list[Setting], table: list[dict]) -> str:
    order = sorted(
        range(len(table)), key=lambda i: -np.nan_to_num(table[i]["final_acc_mean"], nan=-1.0)
    )
    a, b = order[0], order[1]
    ta, tb = table[a], table[b]
    if not np.isfinite(ta["final_acc_mean"]):
        return "no setting has a measured global accuracy yet"
    text = (
        f"best final accuracy: {settings[a].title}, {100 * ta['final_acc_mean']:.2f} %, "
        f"{100 * (ta['final_acc_mean'] - tb['final_acc_mean']):+.2f} pp over "
        f"{settings[b].title}"
    )
    if ta["time_mean"] > 0 and tb["time_mean"] > 0:
        ratio = ta["time_mean"] / tb["time_mean"]
        text += (
            f", in {ratio:.2f}x its time" if ratio >= 1 else f", in 1/{1 / ratio:.1f} of its time"
        )
    return text


def csv_text(settings: list[Setting], target: float | None) -> str:
    table = [{k: v for k, v in r.items() if k != "_per_run"} for r in rows(settings, target)]
    keys = list(dict.fromkeys(k for r in table for k in r))  # settings may have other stages
    return to_csv([{k: r.get(k) for k in keys} for r in table])


def compare(runs: list[Run], fmt: str = "markdown", target: float | None = None) -> str:
    settings, legend = group_settings(runs)
    if fmt == "csv":
        return csv_text(settings, target)
    return markdown(settings, legend, target)
