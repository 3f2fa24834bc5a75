"""Prototype (not shipped): our schema validated by pydantic v2. The models are generated
from our dataclasses (types, defaults, ``option`` limits as ``Field`` constraints), the
``algorithm`` section is a discriminated union on ``algorithm.name`` (one model per
registered method), ``extra="forbid"``, strict types; all errors come at once. Only the
path is formatted our way (``a.b[1] = value: library message``); no wording of ours."""

from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Any, Literal, Union

import pydantic
from pydantic import ConfigDict, Discriminator, Field, Tag, create_model

from fednas_mpi import config as C
from fednas_mpi.algorithms import registry

STRICT = ConfigDict(extra="forbid", strict=True)
LIMITS = {"ge": "ge", "gt": "gt", "le": "le", "lt": "lt", "min_len": "min_length"}
_models: dict[type, type] = {}


def _annotated(tp: Any, meta: dict) -> Any:
    if dataclasses.is_dataclass(tp):
        return model_of(tp)
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        item = Annotated[item, Field(ge=meta["item_ge"])] if "item_ge" in meta else item
        tp = list[item]
    if meta.get("of_rounds"):
        tp = Union[int, float]  # noqa: UP007 - the fraction rule stays ours
    limits = {LIMITS[k]: v for k, v in meta.items() if k in LIMITS}
    return Annotated[tp, Field(**limits)] if limits else tp


def model_of(dc: type, name_literal: str | None = None) -> type:
    if dc in _models and name_literal is None:
        return _models[dc]
    hints = typing.get_type_hints(dc)
    fields = {}
    for f in dataclasses.fields(dc):
        tp = _annotated(hints[f.name], dict(f.metadata))
        if f.name == "name" and name_literal:
            fields[f.name] = (Literal[name_literal], name_literal)
        elif dataclasses.is_dataclass(hints[f.name]):
            fields[f.name] = (tp, Field(default_factory=tp))
        elif f.default_factory is not dataclasses.MISSING:
            fields[f.name] = (tp, Field(default_factory=f.default_factory))
        else:
            fields[f.name] = (tp, f.default)
    model = create_model(dc.__name__, __config__=STRICT, **fields)
    if name_literal is None:
        _models[dc] = model
    return model


def _tag(raw: Any) -> str:
    # a missing algorithm.name is the default method, as in our engine
    return raw.get("name", "fedavg") if isinstance(raw, dict) else "fedavg"


def build_root() -> type:
    union = Annotated[
        Union[tuple(Annotated[model_of(m.config, m.name), Tag(m.name)] for m in registry.METHODS)],  # noqa: UP007
        Discriminator(_tag),
    ]
    fields = {}
    for f in dataclasses.fields(C.Config):
        if f.name == "algorithm":
            fields[f.name] = (union, Field(default={"name": "fedavg"}, validate_default=True))
        else:
            tp = model_of(typing.get_type_hints(C.Config)[f.name])
            fields[f.name] = (tp, Field(default_factory=tp))
    return create_model("Config", __config__=STRICT, **fields)


ROOT = build_root()


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the top level"


def problems(raw: Any, overrides=()) -> list[str]:
    raw = {} if raw is None else C._deepcopy_plain(raw)
    for text in overrides:  # --set stays ours: YAML-typed values, dotted keys
        key, value = C.parse_override(text)
        C._set_dotted(raw, key, value)
    try:
        ROOT.model_validate(raw)
    except pydantic.ValidationError as e:
        return [f"{_path(err['loc'])} = {err['input']!r}: {err['msg']}" for err in e.errors()]
    return []
