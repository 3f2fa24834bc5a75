"""Small training and evaluation loops shared by the methods."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from .maml import foreach
from .steploop import DeviceSums, step_loop
from .streams import BatchStream

if TYPE_CHECKING:
    from ..base import ClientData


def minibatches(n: int, batch_size: int, generator: torch.Generator):
    """Index tensors of a seeded shuffle of range(n), the last batch possibly smaller."""
    order = torch.randperm(n, generator=generator)
    return order.split(batch_size)


def sgd_epochs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    epochs: int,
    generator: torch.Generator,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> float:
    """Plain supervised epochs; returns the sample-weighted mean training loss.

    ``augment`` (if given) transforms each minibatch, drawing from ``generator``
    after the epoch's shuffle, so the run stays a function of the seed. Every draw is
    made and staged before the step loop, in the loop's order (``streams.BatchStream``),
    the optimiser steps with ``_foreach_*`` kernels and the loss is summed on the device:
    the loop never waits on the host (issue 27), with the same result on the CPU.
    """
    model.train()
    batches = BatchStream(x, y, augment)
    for _ in range(epochs):
        for idx in minibatches(len(y), batch_size, generator):
            batches.add(idx, generator)
    batches.stage()
    foreach(optimizer)
    sums = DeviceSums(1, device_of(model))  # the sample-weighted loss
    count = 0
    with step_loop():
        for i in range(len(batches)):
            xb, yb = batches.batch(i)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            sums.add(loss, weight=len(yb))
            count += len(yb)
    (total,) = sums.read()
    return total / max(count, 1)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy); (nan, nan) on an empty set."""
    if len(y) == 0:
        return float("nan"), float("nan")
    model.eval()
    dev = device_of(model)
    loss = torch.zeros((), dtype=torch.float64, device=dev)
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    for i in range(0, len(y), batch_size):
        xb, yb = x[i : i + batch_size].to(dev), y[i : i + batch_size].to(dev)
        out = model(xb)
        loss += F.cross_entropy(out, yb, reduction="sum").double()
        correct += (out.argmax(1) == yb).sum()
    return float(loss) / len(y), int(correct) / len(y)


def device_of(model: nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); the CPU if it has neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def client_epochs(
    model: nn.Module,
    data: ClientData,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    epochs: int,
    generator: torch.Generator,
) -> float:
    """``sgd_epochs`` over a client's whole train split, with the client's augmentation."""
    return sgd_epochs(
        model,
        data.train_x,
        data.train_y,
        optimizer,
        batch_size,
        epochs,
        generator,
        augment=data.augment,
    )
