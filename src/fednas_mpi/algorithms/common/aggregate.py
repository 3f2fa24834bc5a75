"""FedAvg arithmetic (Algorithm 1, lines 7-8): sample-weighted means of named tensors.

Weighted sums are accumulated in float64 on flat buffers. A worker folds its
clients into one partial sum, the server adds the partial sums in rank order
and divides once; the products n_k * w_k are exact in float64, so the result
does not depend on how clients were spread over ranks beyond float64 rounding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ...flat import Layout, State


def accumulate(
    total: np.ndarray, layout: Layout, state: Mapping[str, torch.Tensor], weight: float
) -> None:
    """total[:layout.size] += weight * flat(state), in float64."""
    if total.dtype != np.float64:
        raise TypeError("accumulate into a float64 buffer")
    total[: layout.size] += weight * layout.pack(state, dtype=np.dtype(np.float64))


def finish(total: np.ndarray, layout: Layout, weight_sum: float) -> State:
    """Divide an accumulated weighted sum by the total weight and unpack it."""
    if weight_sum <= 0:
        raise ValueError("FedAvg needs a positive total weight (no client reported samples)")
    return layout.unpack(total[: layout.size] / weight_sum)


def weighted_average(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> State:
    """sum_k (n_k / N) * state_k for every named tensor; N = sum_k n_k."""
    if len(states) != len(weights) or not states:
        raise ValueError("need one weight per state and at least one state")
    layout = Layout.of(states[0])
    total = np.zeros(layout.size, dtype=np.float64)
    for s, w in zip(states, weights):
        accumulate(total, layout, s, float(w))
    return finish(total, layout, float(sum(weights)))


class ClientSums:
    """Pre-reduced FedAvg sums of several client results in one float64 buffer.

    Buffer: [sum w*state | sum w | per metric: sum w*m, sum w*m^2, sum w over
    finite m | per round client: w, then each metric | number of clients]. A worker
    adds its clients and sends the buffer once; the server adds the buffers
    (``combine``) and calls ``finish``. Metrics that are NaN for a client (e.g. an
    empty eval split) are left out of that metric's mean rather than poisoning it.

    With ``clients`` (the round's client ids) each client's own weight and metrics
    also get a slot; a client is added on one worker only and the other workers'
    slots are 0, so the server's sum holds every client's values exactly
    (``per_client``).
    """

    def __init__(self, layout: Layout, metric_names: Sequence[str], clients: Sequence[int] = ()):
        self.layout = layout
        self.metric_names = tuple(metric_names)
        self.clients = tuple(int(c) for c in clients)
        self.size = self.buffer_size(layout, self.metric_names, len(self.clients))
        self.buffer = np.zeros(self.size, dtype=np.float64)

    @staticmethod
    def buffer_size(layout: Layout, metric_names: Sequence[str], clients: int = 0) -> int:
        """Length of the buffer for ``layout``, these metrics and ``clients`` per-client
        slots (no allocation)."""
        return layout.size + 2 + 3 * len(metric_names) + clients * (1 + len(metric_names))

    def _slot(self, client: int) -> int:
        """Offset of a client's (weight, metrics...) slot in the buffer."""
        start = self.layout.size + 1 + 3 * len(self.metric_names)
        return start + self.clients.index(client) * (1 + len(self.metric_names))

    def add(
        self,
        state: Mapping[str, torch.Tensor],
        weight: float,
        metrics: Mapping[str, float],
        client: int | None = None,
    ) -> None:
        s = self.layout.size
        accumulate(self.buffer, self.layout, state, weight)
        self.buffer[s] += weight
        for i, name in enumerate(self.metric_names):
            m = float(metrics[name])
            if np.isfinite(m):
                self.buffer[s + 1 + 3 * i : s + 4 + 3 * i] += (weight * m, weight * m * m, weight)
        if client is not None and self.clients:
            lo = self._slot(client)
            self.buffer[lo : lo + 1 + len(self.metric_names)] = (
                weight,
                *(float(metrics[n]) for n in self.metric_names),
            )
        self.buffer[-1] += 1

    def per_client(self, total: np.ndarray) -> dict[str, dict[int, float]]:
        """Each client's own ``weight`` and metrics from a combined buffer."""
        names = ("weight", *self.metric_names)
        out: dict[str, dict[int, float]] = {n: {} for n in names}
        for c in self.clients:
            lo = self._slot(c)
            for i, n in enumerate(names):
                out[n][c] = float(total[lo + i])
        return out

    def combine(self, buffers: Sequence[np.ndarray]) -> np.ndarray:
        """Sum partial buffers in the given order (the caller fixes a deterministic one)."""
        total = np.zeros(self.size, dtype=np.float64)
        for b in buffers:
            total += b
        return total

    def finish(self, total: np.ndarray) -> tuple[State, dict[str, float]]:
        """(averaged state, metrics) where metrics has NAME and NAME_std per client metric."""
        s = self.layout.size
        weight = float(total[s])
        averaged = finish(total, self.layout, weight)
        metrics = {"clients": float(total[-1]), "client_weight": weight}
        for i, name in enumerate(self.metric_names):
            wm, wm2, w = total[s + 1 + 3 * i : s + 4 + 3 * i]
            mean = wm / w if w > 0 else float("nan")
            var = max(wm2 / w - mean * mean, 0.0) if w > 0 else float("nan")
            metrics[name], metrics[name + "_std"] = float(mean), float(np.sqrt(var))
        return averaged, metrics
