"""Random streams staged on the device before a client update's step loop (issue 27).

Every draw of a client update comes from seeded CPU generators (``seeding.torch_rng``), so
that a seed gives the same run on any device. Drawn inside the step loop, each draw is a
small host-to-device copy (and on the CPU a dispatch) per step. Here the same generators
are called with the same shapes in the same order as the loop would call them, all before
the loop; the results are copied to the device in one copy per dtype and handed back in
order. On the CPU the loop therefore computes on bit-identical values.

- ``stage``: a list of host tensors as views of one device copy per dtype;
- ``GumbelStream``: the Gumbel noise of a number of supernet forwards, in the order
  ``SearchNetwork.mixing_weights`` asks for it; a callable for ``set_sampling``;
- ``BatchStream``: minibatch indices and their augmentation draws; the loop gathers and
  augments on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ...nas import CELL_TYPES
from ...nas.mixing import gumbel_noise


def stage(parts: Sequence[torch.Tensor], device: torch.device | str) -> list[torch.Tensor]:
    """``parts`` on ``device``: one concatenation and one copy per dtype, each part a view
    of its dtype's copy with its own shape."""
    out: list[torch.Tensor | None] = [None] * len(parts)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, p in enumerate(parts):
        by_dtype.setdefault(p.dtype, []).append(i)
    for idx in by_dtype.values():
        flat = torch.cat([parts[i].reshape(-1) for i in idx]).to(device)
        for i, piece in zip(idx, flat.split([parts[i].numel() for i in idx])):
            out[i] = piece.view(parts[i].shape)
    return out  # type: ignore[return-value]


class GumbelStream:
    """The Gumbel noise of ``forwards`` mixture forwards of ``net`` in training mode: per
    forward and cell type (``CELL_TYPES`` order) the op logits' noise, then the input
    combinations' (if the network has them and ``betas``), as ``mixing_weights`` draws
    them (``betas=False``: the op logits' alone, as a DSNAS step draws them)."""

    def __init__(self, net, generator: torch.Generator, forwards: int, betas: bool = True):
        shapes = []
        for c in CELL_TYPES:
            shapes.append(getattr(net, f"alpha_{c}"))
            if betas and getattr(net, f"beta_{c}", None) is not None:
                shapes.append(getattr(net, f"beta_{c}"))
        parts = [gumbel_noise(p.shape, generator, p.dtype) for _ in range(forwards) for p in shapes]
        self._noise = stage(parts, net.alpha_normal.device)
        self._next = 0

    def __call__(self, shape: torch.Size) -> torch.Tensor:
        if self._next >= len(self._noise):
            raise RuntimeError("staged Gumbel noise exhausted: more forwards than staged")
        noise = self._noise[self._next]
        if noise.shape != shape:
            raise RuntimeError(f"staged Gumbel noise out of order: {noise.shape} for {shape}")
        self._next += 1
        return noise


class BatchStream:
    """Minibatches of a client's train split, recorded with ``add`` before the loop (each
    draws its augmentation then, from the generator the loop would use, in the loop's
    order), staged with ``stage``; ``batch(i)`` gathers and augments the i-th on the
    device. An augmentation without the staged form (``draw``/``applier``, see
    ``data.augment.CropFlip``) is applied in ``add``, so its draws keep their place in the
    generator's order; its batches are then held until the loop takes them."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment: Callable | None = None):
        self.x, self.y, self.augment = x, y, augment
        self.staged_augment = augment is not None and hasattr(augment, "draw")
        self._index: list[torch.Tensor] = []
        self._draws: list[list[torch.Tensor]] = []
        self._ready: list[torch.Tensor | None] = []

    def add(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> None:
        self._index.append(idx)
        if self.staged_augment:
            self._draws.append(self.augment.draw(len(idx), generator))
        ready = None
        if self.augment is not None and not self.staged_augment:
            ready = self.augment(self.x[idx.to(self.x.device)], generator)
        self._ready.append(ready)

    def __len__(self) -> int:
        return len(self._index)

    def stage(self) -> BatchStream:
        device = self.x.device
        sizes = [len(d) for d in self._draws]
        flat = stage([*self._index, *(t for d in self._draws for t in d)], device)
        self._index, rest = flat[: len(self._index)], flat[len(self._index) :]
        draws, lo = [], 0
        for n in sizes:
            draws.append(rest[lo : lo + n])
            lo += n
        self._draws = draws
        if self.staged_augment:
            self._apply = self.augment.applier(device)
        return self

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self._index[i]
        if self._ready[i] is not None:
            return self._ready[i], self.y[idx]
        xb = self.x[idx]
        if self.staged_augment:
            xb = self._apply(xb, self._draws[i])
        return xb, self.y[idx]
