"""``fednas-mpi inspect``: one run's summary, per-round and per-client tables, JSON, CSV."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np

from ..data.stats import describe
from ..nas.spec import genotype_of
from .runs import Run, finite_best, finite_last, time_per_stage

SCHEMA = "fednas-mpi-inspect"
SCHEMA_VERSION = 1

#: Per-round columns in this order when present; other stored metrics follow by name.
ROUND_COLUMNS = (
    "global_acc",
    "global_loss",
    "local_acc",
    "local_acc_std",
    "train_loss",
    "temperature",
    "ops_alive",
    "combos_alive",
    "arch_entropy_ops",
    "arch_entropy_inputs",
    "alpha_gap",
    "argmax_agreement",
    "ops_pruned",
    "val_acc",
    "acc_before_prune",
    "acc_after_prune",
    "method_time",
    "round_time",
    "compute_time",
    "comm_time",
    "aggregate_time",
    "eval_time",
    "checkpoint_time",
    "clients",
    "client_weight",
)
TIME_PARTS = ("compute_time", "comm_time", "aggregate_time", "eval_time")


def _num(x: float) -> float | None:
    """JSON has no NaN: unmeasured values are null."""
    return None if x is None or not math.isfinite(x) else float(x)


def _total_known(values: np.ndarray) -> float:
    """The sum of a per-round time, NaN unless every round measured it (a run resumed from
    a checkpoint stored before the time existed has it unknown for its earlier rounds:
    ``migrations.checkpoint_records``); a partial sum would read as the run's total."""
    return float(values.sum()) if np.isfinite(values).all() else float("nan")


def _partition_text(run: Run) -> str:
    cfg = run.typed_config()
    return describe(cfg) if cfg is not None else str(run.config.get("partition", {}))


def summary(run: Run) -> dict:
    """Everything the summary shows, as plain JSON-able values (None = not measured)."""
    acc = run.metric("global_acc")
    final, final_round = finite_last(acc)
    best, best_round = finite_best(acc)
    local, local_round = finite_last(run.metric("local_acc"))
    local_std = run.metric("local_acc_std")[local_round - 1] if local_round else float("nan")
    round_time = run.metric("round_time")
    total = float(np.nansum(round_time))
    parts = {
        p.removesuffix("_time"): float(np.nansum(run.metric(p)))
        for p in TIME_PARTS
        if p in run.metrics
    }
    if parts:
        parts["other"] = max(total - sum(parts.values()), 0.0)
    before, change_round = finite_last(run.metric("acc_before_prune"))
    genotype = genotype_of(run.spec)
    fed = run.config.get("federation", {})
    part = run.config.get("partition", {})
    return {
        "run": str(run.directory),
        "checkpoint": run.checkpoint.name,
        "written": run.attrs.get("created"),
        "status": "complete" if run.complete else "incomplete (still running or interrupted)",
        "writing": run.writing,
        "method": run.method,
        "dataset": run.dataset,
        "partition": _partition_text(run),
        "clients": part.get("num_clients"),
        "clients_per_round": fed.get("clients_per_round"),
        "ranks": run.attrs.get("world_size"),
        "seed": run.seed,
        "rounds_done": run.round,
        "rounds_planned": run.rounds_planned,
        "stage": run.stages[-1] if run.stages else None,
        "final_acc": _num(final),
        "final_acc_round": final_round or None,
        "best_acc": _num(best),
        "best_acc_round": best_round or None,
        "final_loss": _num(finite_last(run.metric("global_loss"))[0]),
        "local_acc": _num(local),
        "local_acc_std": _num(local_std),
        "local_acc_round": local_round or None,
        "stopped_early": run.attrs.get("stopped_early"),
        "val_acc": _num(finite_last(run.metric("val_acc"))[0]),
        "method_time": _num(_total_known(run.metric("method_time"))),
        "alpha_gap": _num(finite_last(run.metric("alpha_gap"))[0]),
        "argmax_agreement": _num(finite_last(run.metric("argmax_agreement"))[0]),
        "time_total": total,
        "mean_round_time": _num(total / run.round if run.round else 0.0),
        "time_per_stage": time_per_stage(run),
        "time_parts": parts,
        "temperature": _num(finite_last(run.metric("temperature"))[0]),
        "ops_alive": _num(finite_last(run.metric("ops_alive"))[0]),
        "combos_alive": _num(finite_last(run.metric("combos_alive"))[0]),
        "arch_entropy_ops": _num(finite_last(run.metric("arch_entropy_ops"))[0]),
        "arch_entropy_inputs": _num(finite_last(run.metric("arch_entropy_inputs"))[0]),
        "arch_change": None
        if not change_round
        else {
            "round": change_round,
            "acc_before": _num(before),
            "acc_after": _num(run.metric("acc_after_prune")[change_round - 1]),
        },
        "genotype": None if genotype is None else genotype.to_dict(),
        "genotype_text": None if genotype is None else genotype.text,
        # choices the derivation made inside the clients' noise (prune_rule: z)
        "undecided": (genotype.undecided or None) if genotype is not None else None,
        # the choices of a derivation by perturbation, with their drops (derive_rule)
        "by_perturbation": (genotype.by_perturbation or None) if genotype is not None else None,
        "client_subnets": len(run.client_subnets) or None,
        "distinct_client_subnets": len(
            {json.dumps(v, sort_keys=True) for v in run.client_subnets.values()}
        )
        or None,
    }


def round_columns(run: Run) -> list[str]:
    present = [c for c in ROUND_COLUMNS if c in run.metrics]
    return present + sorted(set(run.metrics) - set(present))


def rounds(run: Run) -> list[dict]:
    """One row per round: round, stage and every stored metric (None = not measured)."""
    cols = round_columns(run)
    values = {c: run.metric(c) for c in cols}
    return [
        {
            "round": i + 1,
            "stage": run.stages[i] if i < len(run.stages) else None,
            **{c: _num(values[c][i]) for c in cols},
        }
        for i in range(run.round)
    ]


def clients(run: Run) -> list[dict]:
    """One row per client: split sizes, classes held, how often and when it was sampled,
    and its own metrics at the last round it reported them."""
    sizes = run.partition.get("train_sizes")
    n = (
        len(sizes)
        if sizes is not None
        else int(run.config.get("partition", {}).get("num_clients", 0))
    )
    evals, hist = run.partition.get("eval_sizes"), run.partition.get("train_hist")
    weight = run.client_metrics.get("weight")
    names = [k for k in run.client_metrics if k != "weight"]
    out = []
    for c in range(n):
        row: dict = {
            "client": c,
            "train": int(sizes[c]) if sizes is not None else None,
            "eval": int(evals[c]) if evals is not None else None,
            "classes": int((hist[c] > 0).sum()) if hist is not None else None,
        }
        if weight is not None:
            taken = np.flatnonzero(np.isfinite(weight[:, c]))
            row["sampled"] = int(taken.size)
            row["last_round"] = int(taken[-1]) + 1 if taken.size else None
            for k in names:
                row[k] = _num(finite_last(run.client_metrics[k][:, c])[0])
            if c in run.client_subnets:
                row["subnet"] = "; ".join(
                    f"{cell}: {','.join(ops)}" for cell, ops in run.client_subnets[c].items()
                )
            if "local_acc" in run.client_metrics:
                col = run.client_metrics["local_acc"][:, c]
                row["local_acc_mean"] = (
                    _num(float(np.nanmean(col))) if np.isfinite(col).any() else None
                )
        out.append(row)
    return out


def as_json(run: Run) -> str:
    doc = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "summary": summary(run),
        "rounds": rounds(run),
        "clients": clients(run),
    }
    return json.dumps(doc, indent=2, allow_nan=False)


# ------------------------------------------------------------------ text


def _fmt(v: object, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        return str(int(v)) if v.is_integer() and abs(v) >= 1 else f"{v:.{digits}f}"
    return str(v)


def table(rows: list[dict]) -> str:
    """Rows of dicts as an aligned text table (columns of the first row)."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    head = "  ".join(c.rjust(w) for c, w in zip(cols, widths))
    lines = [head, "-" * len(head)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_cell(v) for k, v in r.items()})
    return buf.getvalue()


def _csv_cell(v: object) -> object:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return v


def summary_row(s: dict) -> dict:
    """The summary flattened into one CSV row (stages and time parts as their own columns)."""
    row = {
        k: v
        for k, v in s.items()
        if k not in ("genotype", "time_per_stage", "time_parts", "arch_change", "writing")
    }
    for stage, t in s["time_per_stage"].items():
        row[f"time_stage_{stage}"] = t
    for part, t in s["time_parts"].items():
        row[f"time_{part}"] = t
    row["undecided"] = "; ".join(s["undecided"]) if s["undecided"] else None
    row["by_perturbation"] = "; ".join(s["by_perturbation"]) if s["by_perturbation"] else None
    change = s["arch_change"] or {}
    row["arch_change_round"] = change.get("round")
    row["acc_before_change"] = change.get("acc_before")
    row["acc_after_change"] = change.get("acc_after")
    return row


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def summary_text(s: dict) -> str:
    lines = [f"run         {s['run']}  ({s['checkpoint']}, written {s['written']})"]
    status = f"{s['status']}: {s['rounds_done']} of {s['rounds_planned']} rounds"
    if s["stopped_early"]:
        status += " (stopped early: validation accuracy stopped improving)"
    if s["stage"]:
        status += f", stage {s['stage']}"
    if s["writing"]:
        status += f"; round being written ({s['writing'][0]})"
    lines.append(f"status      {status}")
    lines.append(
        f"setting     {s['method']} on {s['dataset']}; {s['partition']}, "
        f"{s['clients_per_round']} clients per round; {s['ranks']} rank(s); "
        f"seed {s['seed']}"
    )
    acc = f"final {_pct(s['final_acc'])}"
    if s["final_acc_round"]:
        acc += f" (round {s['final_acc_round']})"
    acc += f", best {_pct(s['best_acc'])}"
    if s["best_acc_round"]:
        acc += f" (round {s['best_acc_round']})"
    lines.append(f"global acc  {acc}; test loss {_fmt(s['final_loss'])}")
    if s["val_acc"] is not None:
        lines.append(f"val acc     {_pct(s['val_acc'])} (the clients' eval splits)")
    if s["local_acc"] is not None:
        lines.append(
            f"local acc   {_pct(s['local_acc'])} ± {_pct(s['local_acc_std'])} "
            f"(sampled clients' eval splits, round {s['local_acc_round']})"
        )
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in s["time_per_stage"].items())
    parts = ", ".join(f"{k} {v:.1f}" for k, v in s["time_parts"].items())
    lines.append(
        f"time        {s['time_total']:.1f} s in rounds ({stages}); "
        f"{_fmt(s['mean_round_time'], 2)} s per round"
    )
    if parts:
        lines.append(f"            parts, s: {parts}")
    if s["method_time"] is not None:
        lines.append(
            f"method time {s['method_time']:.1f} s (compute + communication + "
            f"aggregation; evaluation apart)"
        )
    if s["ops_alive"] is not None:
        arch = f"ops alive {_fmt(s['ops_alive'])}"
        if s["combos_alive"] is not None:
            arch += f", input combinations alive {_fmt(s['combos_alive'])}"
        arch += f"; entropy ops {_fmt(s['arch_entropy_ops'], 3)}"
        if s["arch_entropy_inputs"] is not None:
            arch += f", inputs {_fmt(s['arch_entropy_inputs'], 3)}"
        if s["temperature"] is not None:
            arch += f"; temperature {_fmt(s['temperature'], 3)}"
        if s["alpha_gap"] is not None:
            arch += (
                f"; logit gap {_fmt(s['alpha_gap'], 3)}, argmax agreement "
                f"{_fmt(s['argmax_agreement'], 3)}"
            )
        lines.append(f"arch        {arch}")
    if s["arch_change"]:
        c = s["arch_change"]
        lines.append(
            f"arch change round {c['round']}: global acc {_pct(c['acc_before'])} "
            f"before -> {_pct(c['acc_after'])} after (inherited weights)"
        )
    if s["genotype_text"]:
        text = s["genotype_text"].splitlines()
        lines.append(f"genotype    {text[0]}")
        lines += [f"            {t}" for t in text[1:]]
        if s["undecided"]:
            lines.append(f"undecided   {s['undecided'][0]}")
            lines += [f"            {t}" for t in s["undecided"][1:]]
        if s["by_perturbation"]:  # drops in accuracy points
            lines.append(f"perturbed   {s['by_perturbation'][0]}")
            lines += [f"            {t}" for t in s["by_perturbation"][1:]]
    elif s["client_subnets"]:
        lines.append(
            f"subnets     one per client: {s['client_subnets']} clients, "
            f"{s['distinct_client_subnets']} distinct (per-client table)"
        )
    elif s["ops_alive"] is not None:
        lines.append("genotype    not derived yet (the search is still going)")
    return "\n".join(lines)
