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
    b, c, h, w = x.shape
    if b == 0:
        return x
    # drawn on the generator's device (the CPU), used on the images' device
    dev = x.device
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
    flip = (torch.rand(b, generator=generator) < 0.5).to(dev)
    padded = torch.empty(b, c, h + 2 * padding, w + 2 * padding, dtype=x.dtype, device=dev)
    padded[:] = torch.as_tensor(fill, dtype=x.dtype).to(dev).reshape(-1, 1, 1)
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
