"""The table of models, torch-free: each model's name, the ``model.`` keys it reads and
whether it is a fixed architecture. The package hands it to ``config`` with the table of
methods (``algorithms.registry.MODELS``), so that a key of another model is an error, a
run stores only its model's keys and loading a YAML imports no torch; the model code
(``build``, ``cnn``, ``mobilenet``; the DARTS network in ``nas``) reads exactly these.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Model:
    """A model: ``name`` (``model.name``), ``reads`` (its ``model.`` keys beside name) and
    ``fixed`` (a fixed architecture the fixed-model methods train; otherwise the DARTS
    search space of the NAS methods)."""

    name: str
    reads: tuple[str, ...]
    fixed: bool


MODELS = (
    Model("cnn", ("channels", "hidden"), fixed=True),  # cnn.SmallCNN
    Model("darts", ("darts",), fixed=False),  # nas.network
    Model("mobilenet_v3_small", ("mobilenet",), fixed=True),  # mobilenet.MobileNetV3Net
    Model("mobilenet_v3_large", ("mobilenet",), fixed=True),
)
