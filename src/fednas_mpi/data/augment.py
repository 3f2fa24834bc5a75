"""Train-time augmentation of whole minibatches: DARTS' random crop with padding and flip.

Vectorised over the batch (one gather instead of a Python loop per image) and
drawn only from the generator it is given, so a client's augmentation depends
on (seed, round, client) and not on the rank that runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def random_crop_flip(
    x: torch.Tensor, generator: torch.Generator, padding: int, fill: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """Pad each image by ``padding`` with ``fill``, crop back to its size at a random offset,
    then mirror it left-right with probability 1/2.

    Same as torchvision's ``RandomCrop(size, padding)`` followed by
    ``RandomHorizontalFlip()`` per image. Draws, in this order: the row
    offsets, the column offsets (each in ``0..2*padding``) and the flips
    (``rand < 0.5``), one per image. ``fill`` is a scalar or one value per
    channel (for normalised images: the value a black pixel has).
    """
    if x.shape[0] == 0:
        return x
    # drawn on the generator's device (the CPU), used on the images' device
    dev = x.device
    draws = [d.to(dev) for d in crop_flip_draws(x.shape[0], padding, generator)]
    return crop_flip_apply(x, draws, padding, torch.as_tensor(fill, dtype=x.dtype).to(dev))


def crop_flip_draws(b: int, padding: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``random_crop_flip``'s draws for ``b`` images, in its order: row offsets, column
    offsets, flips (none for an empty batch)."""
    if b == 0:
        return []
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    return [dy, dx, torch.rand(b, generator=generator) < 0.5]


def crop_flip_apply(
    x: torch.Tensor, draws: list[torch.Tensor], padding: int, fill: torch.Tensor
) -> torch.Tensor:
    """The crops and flips of ``draws`` (``crop_flip_draws``, on ``x``'s device) applied
    to ``x``; ``fill``: a scalar or per-channel tensor on ``x``'s device. Device ops only."""
    b, c, h, w = x.shape
    if b == 0:
        return x
    dy, dx, flip = draws
    dev = x.device
    padded = torch.empty(b, c, h + 2 * padding, w + 2 * padding, dtype=x.dtype, device=dev)
    padded[:] = fill.to(x.dtype).reshape(-1, 1, 1)
    padded[:, :, padding : padding + h, padding : padding + w] = x
    rows = dy[:, None] + torch.arange(h, device=dev)  # (b, h)
    cols = torch.arange(w, device=dev).expand(b, w)
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - cols, cols)  # (b, w)
    batch = torch.arange(b, device=dev)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (b, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class CropFlip:
    """``random_crop_flip`` with a dataset's padding and per-channel fill, as a callable."""

    padding: int
    fill: tuple[float, ...]

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return random_crop_flip(x, generator, self.padding, torch.tensor(self.fill))

    # The staged form (``algorithms.common.streams``): the draws of a client update are
    # made before its step loop and copied to the device once; the loop only applies them.
    def draw(self, b: int, generator: torch.Generator) -> list[torch.Tensor]:
        return crop_flip_draws(b, self.padding, generator)

    def applier(self, device: torch.device):
        """``(x, draws) -> x`` with the fill staged on ``device`` once."""
        fill = torch.tensor(self.fill).to(device)
        return lambda x, draws: crop_flip_apply(x, draws, self.padding, fill)
