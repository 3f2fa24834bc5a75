"""Markers around a client update's step loop, so that a test can watch what the loop does.

A step loop should never wait on the device (issue 27): random streams are drawn and
staged before it (``common.streams``), losses are summed on the device and read after it.
``step_loop()`` marks the loop's extent, ``host_read(reason)`` the few reads a loop cannot
do without (a single-path step must know on the host which ops to run). Both cost nothing
unless a watcher is installed (``watching``): ``tests/syncguard.py`` installs one that
fails on host reads, random draws and cross-device copies inside a marked loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Protocol

import torch


class Watcher(Protocol):
    def loop(self) -> AbstractContextManager: ...

    def allowed(self, reason: str) -> AbstractContextManager: ...


_watchers: list[Watcher] = []


@contextmanager
def step_loop() -> Iterator[None]:
    """The body of a client update's step loop: staging before it, one read after it."""
    if not _watchers:
        yield
        return
    with ExitStack() as stack:
        for w in list(_watchers):
            stack.enter_context(w.loop())
        yield


@contextmanager
def host_read(reason: str) -> Iterator[None]:
    """A host read inside a step loop that the method needs by construction (``reason``
    says why); a watcher counts it instead of failing on it."""
    if not _watchers:
        yield
        return
    with ExitStack() as stack:
        for w in list(_watchers):
            stack.enter_context(w.allowed(reason))
        yield


@contextmanager
def watching(watcher: Watcher) -> Iterator[Watcher]:
    """Install ``watcher`` for the duration of the block."""
    _watchers.append(watcher)
    try:
        yield watcher
    finally:
        _watchers.remove(watcher)


class DeviceSums:
    """Running sums of per-step values (losses), kept on the device in float64 - the
    arithmetic the host did on ``float(loss)`` - and read once after the loop."""

    def __init__(self, n: int, device: torch.device | str):
        self.total = torch.zeros(n, dtype=torch.float64, device=device)

    def add(self, *values: torch.Tensor, weight: int | float = 1) -> None:
        """Add ``values`` (0-dim tensors) times ``weight`` (the same product the host
        formed when ``weight`` is not 1)."""
        step = torch.stack([v.detach() for v in values]).double()
        self.total += step if weight == 1 else step * weight

    def read(self) -> list[float]:
        return self.total.tolist()
