"""Rank 0's progress report: a live bar on a terminal, one line per round otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _hms(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    def __init__(
        self,
        total: int,
        start: int = 0,
        stream: TextIO | None = None,
        live: bool | None = None,
        width: int = 24,
    ):
        self.total, self.start = total, start
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.width = width
        self.t0 = time.perf_counter()
        self.last_acc = self.last_loss = float("nan")

    def update(self, round_index: int, metrics: dict[str, float]) -> None:
        done = round_index + 1
        acc = metrics.get("global_acc", float("nan"))
        if acc == acc:  # rounds without evaluation repeat the last evaluated values
            self.last_acc = acc
            self.last_loss = metrics.get("global_loss", float("nan"))
        elapsed = time.perf_counter() - self.t0
        per_round = elapsed / max(done - self.start, 1)
        eta = per_round * (self.total - done)
        stage = metrics.get("stage")
        fields = (
            f"acc {self.last_acc:.4f}  loss {self.last_loss:.4f}  "
            f"{metrics.get('round_time', float('nan')):.2f}s/round  ETA {_hms(eta)}"
        )
        if self.live:
            filled = int(self.width * done / self.total)
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r[{bar}] round {done}/{self.total}  {fields}\x1b[K")
            if done == self.total:
                self.stream.write("\n")
        else:
            extra = f"  stage {stage}" if stage else ""
            self.stream.write(f"round {done}/{self.total}  {fields}{extra}\n")
        self.stream.flush()
