"""The exported file: a ``torch.export`` program with its description inside.

``torch.export.save`` writes the graph and the weights; the description (method, round,
genotype, preprocessing, accuracy, size) travels in the same file as an extra file named
``META`` and beside it as ``FILE.json``. Loading needs torch alone::

    extra = {"fednas_export.json": ""}
    program = torch.export.load(path, extra_files=extra)
    model = program.module()          # eval-mode network, any batch size >= 1
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

META = "fednas_export.json"
FORMAT = "fednas-mpi-export"
FORMAT_VERSION = 1
MAX_BATCH = 1 << 16


def export(module: nn.Module, input_shape: tuple[int, int, int]):
    """The ``torch.export`` program of ``module`` (eval mode) for inputs (N, *input_shape),
    N in 1..MAX_BATCH."""
    module.eval()
    example = torch.zeros(2, *input_shape)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        return torch.export.export(module, (example,), dynamic_shapes=({0: batch},))


def write(program, path: Path, meta: dict) -> None:
    """The program with its description inside, and the description beside it."""
    text = json.dumps(meta, indent=2, sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, path, extra_files={META: text})
    sidecar(path).write_text(text + "\n")


def sidecar(path: Path) -> Path:
    """``model.pt2`` -> ``model.json`` (the description, for people and tools)."""
    return path.with_suffix(".json") if path.suffix != ".json" else Path(f"{path}.meta.json")


def load(path: Path) -> tuple[nn.Module, dict]:
    """(the exported network, its description)."""
    extra = {META: ""}
    program = torch.export.load(path, extra_files=extra)
    return program.module(), json.loads(extra[META])


def count_macs(module: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one image through the convolutions and linear layers
    (counted with forward hooks; BatchNorm, activations, pooling and the mixing sums are
    not counted)."""
    total = 0

    def conv(m: nn.Conv2d, _inp, out) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += out[0].numel() * k

    def linear(m: nn.Linear, _inp, out) -> None:
        nonlocal total
        total += out[0].numel() * m.in_features

    hooks = [
        m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
        for m in module.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            module.eval()(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    return int(total)


def count_params(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))
