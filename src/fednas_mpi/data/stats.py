"""Per-client label statistics of a partition: a text table and a heatmap PNG.

The histograms come from a run's checkpoint (``/partition/train_hist`` and
``eval_hist``, written every round) or are computed from a config directly.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import yaml

from ..config import Config
from ..migrations import from_stored

FIGSIZE = (9.0, 6.0)  # inches
DPI = 100  # so a heatmap PNG is 900 x 600 pixels


def describe(cfg: Config) -> str:
    """A short name of the partition, e.g. 'Dirichlet(alpha=0.1), 100 clients x (600+600)'."""
    p = cfg.partition
    scheme = {
        "iid": "IID",
        "dirichlet": f"Dirichlet(alpha={p.alpha:g})",
        "label_skew": f"label skew tau={p.tau}",
    }[p.scheme]
    sizes = (
        f" x ({p.train_size}+{p.eval_size}{', overlapping' if p.overlap else ''})"
        if p.train_size
        else ""
    )
    return f"{scheme}, {p.num_clients} clients{sizes}"


def table(hist: np.ndarray) -> str:
    """Clients x classes counts with per-client totals and the number of classes present."""
    hist = np.asarray(hist, dtype=np.int64)
    m, c = hist.shape
    totals = hist.sum(axis=1)
    width = max(len(str(int(hist.sum(axis=0).max(initial=0)))), len(str(c - 1)))
    tw = max(len("total"), len(str(int(totals.sum()))))
    cw = max(len("client"), len(str(m - 1)), len("all"))

    def line(label: str, cells: list[str], total: str, present: str) -> str:
        return (
            f"{label:>{cw}} | "
            + " ".join(f"{s:>{width}}" for s in cells)
            + f" | {total:>{tw}} {present:>7}"
        )

    out = [line("client", [str(k) for k in range(c)], "total", "classes")]
    out.append("-" * len(out[0]))
    for k in range(m):
        out.append(
            line(
                str(k),
                [str(int(v)) for v in hist[k]],
                str(int(totals[k])),
                str(int((hist[k] > 0).sum())),
            )
        )
    out.append("-" * len(out[0]))
    column = hist.sum(axis=0)
    out.append(
        line(
            "all",
            [str(int(v)) for v in column],
            str(int(totals.sum())),
            str(int((column > 0).sum())),
        )
    )
    return "\n".join(out)


def heatmap(hist: np.ndarray, path: str | Path, title: str) -> Path:
    """Write a clients x classes heatmap of label counts (900 x 600 PNG) and return its path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes and CI
    import matplotlib.pyplot as plt

    hist = np.asarray(hist)
    m, c = hist.shape
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    try:
        im = ax.imshow(hist, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_xlabel("class")
        ax.set_ylabel("client")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, label="images")
        if m * c <= 400:  # small enough to print every count in its cell
            threshold = hist.max(initial=0) / 2
            for k in range(m):
                for j in range(c):
                    ax.text(
                        j,
                        k,
                        str(int(hist[k, j])),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="black" if hist[k, j] > threshold else "white",
                    )
            ax.set_xticks(range(c))
            ax.set_yticks(range(m))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path


def from_run(run_dir: str | Path, part: str) -> tuple[np.ndarray, Config, Path]:
    """(histogram, config, checkpoint) from the newest checkpoint of a run that reads back
    (``store.newest_readable``: newer unreadable files are skipped).

    Raises FileNotFoundError naming the directory and the reasons when it holds none.
    """
    from ..store import newest_readable, no_readable_message, read_checkpoint

    def load(path: Path):
        ckpt = read_checkpoint(path, tensors=False)
        with h5py.File(path, "r", locking=False) as f:
            return np.asarray(f[f"partition/{part}_hist"][()]), ckpt

    found, skipped = newest_readable(run_dir, load)
    if found is None:
        raise FileNotFoundError(no_readable_message(run_dir, skipped))
    hist, ckpt = found
    cfg = from_stored(yaml.safe_load(ckpt.config_yaml), source=ckpt.path)
    return hist, cfg, ckpt.path


def from_config(cfg: Config, part: str) -> np.ndarray:
    """The histogram of the partition a run with ``cfg`` would use (loads the dataset)."""
    from .federated import dataset_and_partition

    dataset, partition = dataset_and_partition(cfg)
    return partition.histograms(dataset.train_y.numpy(), part)
