"""Prototype (not shipped): our schema as OmegaConf structured configs. The chosen
method's ``algorithm`` dataclass is picked by reading ``algorithm.name`` first (OmegaConf
has no unions of structured configs); the user's YAML and the ``--set`` dotlist are merged
onto the schema in struct mode. OmegaConf stops at the first error and has no range
limits: the limits would stay ours. Only the path is formatted our way."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fednas_mpi import config as C
from fednas_mpi.algorithms import registry


def schema(raw: dict) -> Any:
    alg = raw.get("algorithm") if isinstance(raw.get("algorithm"), dict) else {}
    name = alg.get("name", "fedavg")
    cls = registry.method(name).config if name in registry.names() else C.AlgorithmConfig
    return OmegaConf.structured(C.Config(algorithm=cls()))


def problems(raw: Any, overrides=()) -> list[str]:
    raw = {} if raw is None else C._deepcopy_plain(raw)
    try:
        base = schema(raw)
        # --set: OmegaConf's own dotlist (values parsed as YAML)
        merged = OmegaConf.merge(base, raw, OmegaConf.from_dotlist(list(overrides)))
        OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        where = getattr(e, "full_key", "") or ""
        return [f"{where}: {type(e).__name__}: {e.msg if hasattr(e, 'msg') else e}"]
    except Exception as e:  # the schema itself (Literal, list[Literal]) may be refused
        return [f"schema: {type(e).__name__}: {str(e).splitlines()[0]}"]
    return []
