"""Fixed-architecture models (the searched ones live in ``fednas_mpi.nas``).

Every model here is ``head(body(x))``: its state-dict keys start with ``body.`` (the
shared representation) or ``head.`` (the classifier that personalised methods keep per
client or freeze). The table of models (``catalogue``) is torch-free; the models and
``build_model`` are imported on first use (PEP 562), so that the package can hand that
table to ``config`` without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import catalogue

if TYPE_CHECKING:
    from .build import HEAD, build_model, is_head, split_state
    from .cnn import SmallCNN
    from .mobilenet import MobileNetV3Net

_LAZY = {
    "HEAD": "build",
    "build_model": "build",
    "is_head": "build",
    "split_state": "build",
    "SmallCNN": "cnn",
    "MobileNetV3Net": "mobilenet",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "HEAD",
    "MobileNetV3Net",
    "SmallCNN",
    "build_model",
    "catalogue",
    "is_head",
    "split_state",
]
