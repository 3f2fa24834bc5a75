"""``fednas-mpi plot``: PNG figures of one or several runs.

Runs of one setting (configs equal but for the seed) are drawn as their mean with a
± std band. Figures have fixed sizes (``SIZES``, pixels), so they line up in reports:

- ``accuracy.png``: an accuracy (``--metric``: global test accuracy by default) vs round
  and vs method time (cumulative; evaluation apart)
- ``architecture.png``: temperature, architecture entropy and surviving ops per round
  (NAS methods)
- ``time.png``: per setting, each round's time split into compute (slowest worker),
  aggregation, evaluation and the rest (communication, waiting)
- ``partition.png`` (or ``partition_<setting>.png`` per distinct partition): clients x
  classes label counts of the training splits
- ``genotype_<run>.png``: the derived normal and reduction cells as DAGs
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..data.stats import describe, heatmap
from ..nas.spec import genotype_of
from .dag import draw_cell
from .runs import ReportError, Run, Setting, group_settings

DPI = 100
SIZES = {
    "accuracy": (1200, 500),
    "architecture": (1500, 450),
    "time": (1200, 600),
    "partition": (900, 600),
    "genotype": (1200, 800),
}
TIME_PARTS = (
    ("compute_time", "compute"),
    ("comm_time", "communicate"),
    ("aggregate_time", "aggregate"),
    ("eval_time", "evaluate"),
)


def _figure(kind: str, rows: int = 1, cols: int = 1):
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes and CI
    import matplotlib.pyplot as plt

    w, h = SIZES[kind]
    fig, axes = plt.subplots(rows, cols, figsize=(w / DPI, h / DPI), dpi=DPI, squeeze=False)
    return fig, axes


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)  # no bbox_inches="tight": the size stays SIZES[kind]
    finally:
        plt.close(fig)
    return path


def _stack(runs: list[Run], name: str) -> np.ndarray:
    """(runs, rounds) values of a metric over the rounds every run has done."""
    n = min(r.round for r in runs)
    return np.stack([r.metric(name)[:n] for r in runs])


def _mean_band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rounds (1-based) where every run has a value, the mean and the std (ddof 1)."""
    ok = np.isfinite(values).all(axis=0)
    v = values[:, ok]
    std = v.std(axis=0, ddof=1) if v.shape[0] > 1 else np.zeros(v.shape[1])
    return np.flatnonzero(ok) + 1, v.mean(axis=0), std


def _round_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _line(ax, x, mean, std, label: str, colour, style: str = "-") -> None:
    ax.plot(x, mean, style, color=colour, label=label, marker="." if len(x) < 30 else None)
    if np.any(std > 0):
        ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.2, lw=0)


def _label(setting: Setting) -> str:
    n, seeds = len(setting.runs), setting.seeds
    if n == 1:
        return f"{setting.title}, seed {seeds[0]}"
    return f"{setting.title}, {n} seeds" if len(set(seeds)) == n else f"{setting.title}, {n} runs"


def _colours(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


METRIC_LABELS = {
    "global_acc": "global test accuracy, %",
    "val_acc": "validation accuracy (clients' eval splits), %",
    "personal_acc": "mean local accuracy of the personalised models, %",
}


def _elapsed(runs: list[Run]) -> tuple[np.ndarray, str]:
    """Cumulative time per round (mean over runs) and its axis label: the method time
    (client compute + communication + aggregation, evaluation apart) where every run
    measured it in every round, the whole round time otherwise (a run stored before it
    was measured has it unknown: ``migrations.checkpoint_records``)."""
    if all(np.isfinite(r.metric("method_time")).all() for r in runs):
        name, label = "method_time", "method time, s (evaluation apart; mean over seeds)"
    else:
        name, label = "round_time", "time in rounds, s (mean over seeds)"
    return np.cumsum(np.nan_to_num(_stack(runs, name)), axis=1).mean(axis=0), label


def accuracy(settings: list[Setting], path: Path, metric: str = "global_acc") -> Path:
    fig, axes = _figure("accuracy", 1, 2)
    by_round, by_time = axes[0]
    xlabel = ""
    for s, colour in zip(settings, _colours(len(settings))):
        acc = _stack(s.runs, metric) * 100
        rounds, mean, std = _mean_band(acc)
        _line(by_round, rounds, mean, std, _label(s), colour)
        elapsed, xlabel = _elapsed(s.runs)
        _line(by_time, elapsed[rounds - 1], mean, std, _label(s), colour)
    _round_axis(by_round)
    by_time.set_xlabel(xlabel)
    for ax in (by_round, by_time):
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.grid(alpha=0.3)
    by_round.legend(fontsize=8, loc="lower right")
    by_round.set_title("accuracy vs round")
    by_time.set_title("accuracy vs time")
    return _save(fig, path)


def architecture(settings: list[Setting], path: Path) -> Path:
    fig, axes = _figure("architecture", 1, 3)
    temp_ax, ent_ax, ops_ax = axes[0]
    for s, colour in zip(settings, _colours(len(settings))):
        for ax, name, style, suffix in (
            (temp_ax, "temperature", "-", ""),
            (ent_ax, "arch_entropy_ops", "-", " (ops)"),
            (ent_ax, "arch_entropy_inputs", "--", " (inputs)"),
            (ops_ax, "ops_alive", "-", ""),
        ):
            if not any(name in r.metrics for r in s.runs):
                continue
            x, mean, std = _mean_band(_stack(s.runs, name))
            if x.size:
                _line(ax, x, mean, std, _label(s) + suffix, colour, style)
    for ax, title, ylabel in (
        (temp_ax, "temperature lambda", "lambda"),
        (ent_ax, "architecture entropy", "mean entropy, nats"),
        (ops_ax, "surviving ops (both cells, live edges)", "ops"),
    ):
        ax.set_title(title)
        _round_axis(ax)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(
                0.5,
                0.5,
                "not measured by these methods",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
    return _save(fig, path)


def times(settings: list[Setting], path: Path) -> Path:
    cols = min(len(settings), 3)
    rows = -(-len(settings) // cols)
    fig, axes = _figure("time", rows, cols)
    colours = _colours(len(TIME_PARTS) + 1)
    for i, s in enumerate(settings):
        ax = axes[i // cols][i % cols]
        total = np.nan_to_num(_stack(s.runs, "round_time")).mean(axis=0)
        x = np.arange(1, total.size + 1)
        bottom = np.zeros_like(total)
        for (name, label), colour in zip(TIME_PARTS, colours):
            part = np.nan_to_num(_stack(s.runs, name)).mean(axis=0)
            ax.bar(x, part, bottom=bottom, color=colour, label=label, width=0.85)
            bottom += part
        ax.bar(
            x,
            np.maximum(total - bottom, 0.0),
            bottom=bottom,
            color=colours[-1],
            label="other",
            width=0.85,
        )
        ax.set_title(_label(s), fontsize=9)
        _round_axis(ax)
        ax.set_ylabel("seconds")
        if i == 0:
            ax.legend(fontsize=8)
    for j in range(len(settings), rows * cols):
        axes[j // cols][j % cols].axis("off")
    return _save(fig, path)


def genotype(run: Run, title: str, path: Path) -> Path:
    fig, axes = _figure("genotype", 2, 1)
    g = genotype_of(run.spec)
    for ax, cell, name in (
        (axes[0][0], "normal", "normal cell"),
        (axes[1][0], "reduce", "reduction cell"),
    ):
        if g is not None and cell in g.cells:
            draw_cell(ax, g.cells[cell].to_dict(), name)
        else:
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_") or "run"


def _unique_names(runs: list[Run]) -> list[str]:
    names = [_safe(r.name) for r in runs]
    return [n if names.count(n) == 1 else f"{n}_{i + 1}" for i, n in enumerate(names)]


def plot_all(
    runs: list[Run], out: Path, metric: str = "global_acc"
) -> tuple[list[Path], list[str]]:
    """Write every figure the runs have data for; (files written, notes on what was not).
    ``metric``: the accuracy ``accuracy.png`` shows (a per-round metric name)."""
    settings, legend = group_settings(runs)
    notes = list(legend)
    if not any(np.isfinite(r.metric(metric)).any() for r in runs):
        raise ReportError(f"no run recorded the metric {metric!r}: nothing to plot")
    written = [accuracy(settings, out / "accuracy.png", metric)]
    if any("temperature" in r.metrics or "arch_entropy_ops" in r.metrics for r in runs):
        written.append(architecture(settings, out / "architecture.png"))
    else:
        notes.append(
            "no architecture metrics (no NAS method among the runs): architecture.png not written"
        )
    written.append(times(settings, out / "time.png"))
    written += _partitions(settings, out, notes)
    for run, name in zip(runs, _unique_names(runs)):
        g = genotype_of(run.spec)
        if g is not None and g.cells:
            title = f"{run.method} on {run.dataset}, seed {run.seed}: {run.directory}"
            written.append(genotype(run, title, out / f"genotype_{name}.png"))
        elif "masks" in run.spec:
            notes.append(f"{run.directory}: no genotype yet (derived after the search)")
    return written, notes


def _partitions(settings: list[Setting], out: Path, notes: list[str]) -> list[Path]:
    """One heatmap per distinct training partition among the runs."""
    seen: dict[bytes, Run] = {}
    for s in settings:
        for r in s.runs:
            hist = r.partition.get("train_hist")
            if hist is None:
                notes.append(f"{r.directory}: no /partition/train_hist in its checkpoint")
                continue
            seen.setdefault(np.asarray(hist).tobytes() + str(hist.shape).encode(), r)
    written = []
    for i, r in enumerate(seen.values()):
        cfg = r.typed_config()
        what = describe(cfg) if cfg is not None else "partition"
        name = "partition.png" if len(seen) == 1 else f"partition_{i + 1}_{_safe(r.name)}.png"
        written.append(
            heatmap(
                r.partition["train_hist"],
                out / name,
                f"{r.dataset}: {what}; train split ({r.name})",
            )
        )
    return written
