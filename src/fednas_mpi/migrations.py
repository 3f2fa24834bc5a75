"""Every compatibility rule of fednas-mpi in one place: stored configs of every shape the
project has written, upgraded to today's step by step; old config paths; what older
checkpoints hold and today's do not (entries no method reads) or lack (records written
since, the spec's ``inputs``).

A run stores its resolved config (``config.to_yaml``) in ``RUN_DIR/config.yaml`` and in
every checkpoint (attribute ``config``), with the schema version it was written under
(``schema_version``, ``config.SCHEMA_VERSION``). A stored config without one was written
before versions were recorded: it is version 0, whichever of the shapes of that time it
has. ``STEPS[v]`` takes a config of version ``v`` to ``v + 1``: a small pure function on
the parsed mapping whose docstring names the change of the project it reflects (by commit)
and the values that reproduce the runs stored before it. Every version-0 shape passes
through every step, so a step only fills what is absent and drops what is no longer
read; a value a run stored is never changed. A run stored by a *newer* fednas-mpi is
refused with one message naming the file and both versions.

Adding a config key whose absence must not read as its default (a default that computes
something other than the runs before it did): bump ``config.SCHEMA_VERSION`` and append a
step that fills the value those runs ran with (``tests/test_migrations.py`` checks that
the steps reach the version).

One rule needs a method's tensors to apply and lives with them, listed here so that this
module stays the index of every rule: FedMetaNAS checkpoints of ``prune_rule: z`` written
between 7911ed5 and 620696c (2026-12-06) carry no ``prune.evidence.*`` server entries;
``algorithms.common.dispersion.evidence_of`` starts their evidence at zero from the round
the run resumes at (the shapes come from the network's logits).

This module sits at the config layer: it imports ``config`` and nothing above it, and no
torch or numpy (the checkpoint store applies ``drop_legacy_entries`` to its tensors and
``checkpoint_records`` to its records, ``nas.spec`` applies ``stored_spec`` to a spec).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from . import config
from .config import SCHEMA_VERSION, Config, ConfigError

VERSION_KEY = config.VERSION_KEY


class NewerConfigError(ConfigError):
    """A stored config written by a newer fednas-mpi than this one."""


# ---------------------------------------------------------------- helpers of the steps


def _reads(raw: dict, dotted: str) -> bool:
    """Whether the run of ``raw`` (its ``algorithm.name``, its ``model.name``) reads the
    key ``dotted``: it is a field of today's config for that method and model."""
    parts = dotted.split(".")
    alg = raw.get("algorithm") if isinstance(raw.get("algorithm"), dict) else {}
    reg = config.catalogue()
    if parts[0] == "algorithm":
        name = alg.get("name", config.AlgorithmConfig.__dataclass_fields__["name"].default)
        if name not in reg.names():
            return False
        cls: Any = reg.method(name).config
    elif parts[0] == "model":
        model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
        name = model.get("name", config.ModelConfig.__dataclass_fields__["name"].default)
        reads = config.model_reads().get(name)
        if reads is None or (len(parts) > 1 and parts[1] != "name" and parts[1] not in reads):
            return False
        cls = config.ModelConfig
    else:
        cls = Config
    for part in parts[1:] if parts[0] in ("algorithm", "model") else parts:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            return False
        factory = fields[part].default_factory
        cls = factory if dataclasses.is_dataclass(factory) else None
    return True


def _fill(raw: dict, values: dict[str, Any]) -> dict:
    """``raw`` with each dotted key of ``values`` that the run reads and does not hold set
    to its value (sections created as needed); the stored values are left alone."""
    out = config._deepcopy_plain(raw)
    for dotted, value in values.items():
        if not _reads(out, dotted):
            continue
        node = out
        *path, last = dotted.split(".")
        for key in path:
            if node.get(key) is None:
                node[key] = {}
            if not isinstance(node[key], dict):
                break  # a malformed section: left to the config check to name
            node = node[key]
        else:
            node.setdefault(last, config._deepcopy_plain(value))
    return out


# ------------------------------------------------------------------------- the steps


def v0_datasets_and_partitions(raw: dict) -> dict:
    """0899456 (2026-11-25), datasets and fixed-size partitions: the first runs (digits,
    FedAvg) downloaded nothing, kept the image size, did not augment, and split each
    client's share of the whole pool by partition.eval_fraction; ``partition.tau`` only
    enters with scheme label_skew, which did not exist."""
    return _fill(
        raw,
        {
            "data.download": False,
            "data.resize": 0,
            "data.augment": False,
            "partition.tau": 4,
            "partition.train_size": 0,
            "partition.eval_size": 0,
            "partition.overlap": False,
        },
    )


def v1_personal_eval(raw: dict) -> dict:
    """2b63866 (2026-11-25), personalised evaluation: ``run.personal_eval_every: 0``, the
    last round only (a measurement; what the run trains does not depend on it)."""
    return _fill(raw, {"run.personal_eval_every": 0})


def v2_kernels_backend(raw: dict) -> dict:
    """b4615ac (2026-11-25), fused mixing kernels: runs before ``kernels.backend`` mixed
    with plain PyTorch, which is ``reference`` (``auto`` would take the fused kernels,
    equal only to rounding)."""
    return _fill(raw, {"kernels.backend": "reference"})


def v3_devices(raw: dict) -> dict:
    """43c0f15 and dc73174 (2026-11-25/26), device pinning and TF32: runs before them ran
    on the CPU over MPI buffers. Execution-only keys (a resume may change them), filled
    with what those runs did: ``runtime.device: cpu`` (``auto`` would take a GPU where
    there is one, equal only to rounding), the server on the CPU, full float32."""
    return _fill(
        raw,
        {
            "runtime.device": "cpu",
            "runtime.gpus": [],
            "runtime.server_device": "cpu",
            "runtime.tf32": False,
            "runtime.transport": "mpi",
        },
    )


def v4_on_nonfinite(raw: dict) -> dict:
    """6f33d41 (2026-12-01), non-finite guards: a NaN stopped nothing before; ``abort``
    changes no run that finished (and is execution-only, so a resume may switch it)."""
    return _fill(raw, {"run.on_nonfinite": "abort"})


#: The keys of FedMetaNAS's first pruning (thresholds on the tempered distribution).
THRESHOLD_PRUNING = ("op_threshold", "combo_threshold", "anneal_fraction", "settle_threshold")


def v5_gap_pruning(raw: dict) -> dict:
    """806cbd2 (2026-12-01), a NAS search that learns: FedMetaNAS prunes on the logit gap
    (``prune_gap``) where it pruned on thresholds of the tempered distribution; Adam for
    its alphas, a cosine of its weight learning rates, validation and early stopping.

    A run of a method that reads ``algorithm.fedmetanas`` and was stored with the
    threshold keys searched with code that no longer exists: no values reproduce it, so
    the keys stay and ``from_stored`` refuses the run with the reason (``unresumable``);
    a report still reads it. For every other run those keys belonged to a section it
    never read (dropped by ``v7``). Runs then had no server test subset, no validation
    and no early stopping (``run.eval_subset: 0``, ``val_every: 0``, ``patience: 0``)."""
    return _fill(raw, {"run.eval_subset": 0, "run.val_every": 0, "run.patience": 0})


def unresumable(raw: dict) -> list[str]:
    """Why an upgraded stored config cannot be run by this fednas-mpi (empty when it can):
    shapes whose code is gone, so that no values of today's keys reproduce them."""
    alg = raw.get("algorithm")
    section = alg.get("fedmetanas") if isinstance(alg, dict) else None
    old = [k for k in THRESHOLD_PRUNING if isinstance(section, dict) and k in section]
    if not old or not _reads(raw, "algorithm.fedmetanas"):
        return []
    return [
        f"algorithm.fedmetanas.{old[0]}: this run was stored before FedMetaNAS pruned on "
        f"the logit gap (commit 806cbd2, 2026-12-01); its threshold pruning "
        f"({', '.join(old)}) no longer exists, so it cannot continue as it began: start "
        f"it again"
    ]


def v6_tensorboard(raw: dict) -> dict:
    """82ab050 (2026-12-01), the TensorBoard watcher: ``store.tensorboard: false``, the
    HDF5 checkpoints alone, as before."""
    return _fill(raw, {"store.tensorboard": False})


def v7_method_sections(raw: dict) -> dict:
    """129957e (2026-12-01), each method owns its config section: runs before it stored
    every method's section and every model's keys. Those the run's method and model do
    not read changed nothing and are dropped (today such a key in a user's file is an
    error). Keys no method or model knows are kept, for the config check to name."""
    out = config._deepcopy_plain(raw)
    alg, model = out.get("algorithm"), out.get("model")
    reg = config.catalogue()
    if isinstance(alg, dict) and alg.get("name") in reg.names():
        known = {k for m in reg.METHODS for k in m.keys}
        keep = reg.method(alg["name"]).keys
        out["algorithm"] = {k: v for k, v in alg.items() if k in keep or k not in known}
    reads = config.model_reads()
    if isinstance(model, dict) and model.get("name", "cnn") in reads:
        variant = {k for keys in reads.values() for k in keys}
        keep = reads[model.get("name", "cnn")]
        out["model"] = {k: v for k, v in model.items() if k in keep or k not in variant}
    return out


def v8_grouped_supernet(raw: dict) -> dict:
    """f7bf06e (2026-12-01), the grouped supernet forward: runs before
    ``kernels.supernet`` ran the op-by-op forward, ``reference`` (``auto`` takes the
    grouped one on the CPU, equal only to rounding), and resume on it. Since a260fd9
    (2026-12-06) the reference applies its mixing weights in one product per cell: its
    forward and weight gradients are bit-equal to before, its logit gradients equal only
    to rounding, so such a run resumed by today's code continues to rounding, not bit for
    bit, from where the code that started it would have gone."""
    return _fill(raw, {"kernels.supernet": "reference"})


def v9_test_subset(raw: dict) -> dict:
    """1bdd6a0 (2026-12-01), a fixed server test subset: ``run.test_subset: 0``, the whole
    test set, as every run before it."""
    return _fill(raw, {"run.test_subset": 0})


def v10_published_genotypes(raw: dict) -> dict:
    """420a409 (2026-12-06), random_nas trains a named genotype: ``genotype: ''``, a
    random cell drawn from ``genotype_seed``, as before."""
    return _fill(raw, {"algorithm.random_nas.genotype": ""})


def v11_server_arch_update(raw: dict) -> dict:
    """a3db1a5 and 7e6efe7 (2026-12-06), a server optimiser of the architecture logits
    (FedMetaNAS, FedNAS, FedDSNAS, then FedPNAS and meta-FedPNAS): ``arch_update:
    client``, each client's own optimiser of them, averaged, as before (the
    ``server_arch_*`` keys are then unread and take their defaults)."""
    return _fill(
        raw,
        {
            f"algorithm.{section}.arch_update": "client"
            for section in ("fedmetanas", "fednas", "feddsnas", "fedpnas")
        },
    )


def v12_prune_rule(raw: dict) -> dict:
    """6f0428c (2026-12-06), FedMetaNAS's z rule: ``prune_rule: gap``, the fixed logit
    gap, as before (``prune_z`` then unread)."""
    return _fill(raw, {"algorithm.fedmetanas.prune_rule": "gap"})


def v13_derived_training(raw: dict) -> dict:
    """b8e7698 (2026-12-06), the evaluation recipe for the derived network:
    ``derived_training: maml``, Algorithm 1 going on after the derivation, as before
    (the ``derived_*`` recipe keys then unread)."""
    return _fill(raw, {"algorithm.fedmetanas.derived_training": "maml"})


def v14_derive_rule(raw: dict) -> dict:
    """f3f0b9d (2026-12-06), DARTS-PT derivation for FedMetaNAS and FedNAS: ``derive_rule:
    logits``, the argmax of the learned logits, as before."""
    return _fill(
        raw,
        {
            "algorithm.fedmetanas.derive_rule": "logits",
            "algorithm.fednas.derive_rule": "logits",
        },
    )


def v15_compiled_cells(raw: dict) -> dict:
    """0c78662 (2026-12-06), compiled cells: ``kernels.compile: off``, every cell run
    eagerly, as before (compiled cells agree only to float rounding)."""
    return _fill(raw, {"kernels.compile": "off"})


STEPS: tuple[Callable[[dict], dict], ...] = (
    v0_datasets_and_partitions,
    v1_personal_eval,
    v2_kernels_backend,
    v3_devices,
    v4_on_nonfinite,
    v5_gap_pruning,
    v6_tensorboard,
    v7_method_sections,
    v8_grouped_supernet,
    v9_test_subset,
    v10_published_genotypes,
    v11_server_arch_update,
    v12_prune_rule,
    v13_derived_training,
    v14_derive_rule,
    v15_compiled_cells,
)


# ------------------------------------------------------------------------- stored configs


def version_of(raw: Any, source: str | Path = "the stored config") -> int:
    """The schema version a stored config was written under; 0 when it records none."""
    if not isinstance(raw, dict) or VERSION_KEY not in raw:
        return 0
    version = raw[VERSION_KEY]
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ConfigError([f"{source}: {VERSION_KEY} = {version!r}: expected a whole number >= 0"])
    return version


def upgrade(raw: Any, source: str | Path = "the stored config") -> Any:
    """A stored config (parsed YAML) in today's shape, without its version: every step
    from its version on, in order. ``source`` names it in the error for a newer one."""
    if not isinstance(raw, dict):
        return raw
    version = version_of(raw, source)
    if version > SCHEMA_VERSION:
        raise NewerConfigError(
            [
                f"{source}: config schema version {version} is newer than this fednas-mpi "
                f"reads ({SCHEMA_VERSION}); upgrade fednas-mpi to resume or read this run"
            ]
        )
    out = {k: v for k, v in raw.items() if k != VERSION_KEY}
    for step in STEPS[version:]:
        out = step(out)
    return out


def stored(raw: Any, source: str | Path = "the stored config") -> Any:
    """A config as a run stored it, upgraded to today's shape (``upgrade``): for reading a
    stored config's keys (report) without building it."""
    return upgrade(raw, source)


def from_stored(
    raw: Any,
    overrides: list[str] | tuple[str, ...] = (),
    source: str | Path = "the stored config",
) -> Config:
    """The ``Config`` of a stored config (checkpoint, RUN_DIR/config.yaml): upgraded, then
    checked as strictly as a user's file; the overrides are checked strictly too. A shape
    no code of today reproduces (``unresumable``) is refused, naming ``source``."""
    upgraded = upgrade(raw, source)
    refused = unresumable(upgraded) if isinstance(upgraded, dict) else []
    if refused:
        raise ConfigError([f"{source}: {line}" for line in refused])
    return config.from_dict(upgraded, overrides)


# ------------------------------------------------------------------------- config paths

#: In a configs directory: old path of a run config -> its new path, both relative to
#: the directory (the flat layout before configs/SCALE/DATASET/METHOD.yaml, 6b243d8).
MOVED_FILE = "MOVED.yaml"


def moved(root: Path) -> dict[str, str]:
    """Old path -> new path, both relative to ``root``, from ``root/MOVED.yaml``."""
    path = Path(root) / MOVED_FILE
    return yaml.safe_load(path.read_text()) or {} if path.is_file() else {}


def moved_to(path: str | Path) -> Path | None:
    """The new file of a config path that no longer exists, from the nearest ``MOVED.yaml``
    among its parent directories (so it works from any working directory); None when no
    mapping names it."""
    path = Path(path)
    for directory in path.parent, *path.parent.parents:
        if (directory / MOVED_FILE).is_file():
            new = moved(directory).get(path.relative_to(directory).as_posix())
            if new is not None:
                return directory / new
    return None


# ------------------------------------------------------------------ checkpoint entries

# Entries of checkpoints written before the auxiliary channel (algorithms.base.ClientResult
# .aux): FedRLNAS and PerFedRLNAS kept the round's sums in the global state as rl.* (zeros
# between rounds, so a checkpoint's were always zero), PerFedRLNAS a client's report in its
# state as pending.* (cleared by the server before the file was written). Dropped on read
# so such a run resumes where it stopped, with the same numbers.
LEGACY_ENTRIES = {"state": ("rl.",), "client": ("pending.",)}


def drop_legacy_entries(tensors: dict[str, Any], group: str) -> dict[str, Any]:
    """``tensors`` (a checkpoint's ``state`` or one client's, ``group`` 'state' or
    'client') without the entries older files held that no method reads any more."""
    prefixes = LEGACY_ENTRIES[group]
    return {k: v for k, v in tensors.items() if not k.startswith(prefixes)}


# What a checkpoint records per round, by the commit that started recording it. Files
# written before it read as today's with the value unknown, so every reader (resume,
# report, plots) sees one shape and no reader keeps a rule of its own for old files.


#: The schema version from which every checkpoint a run writes holds both records below;
#: a file of this version or later reads exactly as it was written.
RECORDS_COMPLETE = 16

_VERSION_LINE = re.compile(rf"^{VERSION_KEY}:\s*(\d+)\s*$", re.MULTILINE)


def version_in_text(config_yaml: str) -> int:
    """The schema version a checkpoint's stored config text records (``config.to_yaml``
    writes it as a top-level line); 0 where it records none. Read without parsing the
    YAML, so a reader of many files (report) pays nothing and a malformed config is left
    to the code that builds it to name."""
    m = _VERSION_LINE.search(config_yaml)
    return int(m.group(1)) if m else 0


def checkpoint_records(
    metrics: Mapping[str, Sequence[float]],
    client_metrics: Mapping[str, Any] | None,
    rounds: int,
    version: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A checkpoint's per-round ``metrics`` (name -> one value per round, ``rounds`` of
    them) and ``client_metrics`` (None: the file has no such group), stored under schema
    ``version`` (``version_in_text``), in today's shape. For a file older than
    ``RECORDS_COMPLETE``:

    - no ``client_metrics`` group: a0c99ee (2026-11-25) started storing each sampled
      client's own values; before it none were kept, so the run has no per-client rows
      (``{}``) and a resumed run's rows start NaN for its earlier rounds
      (``store.record.append_clients``);
    - no ``method_time``: 806cbd2 (2026-12-01) started timing the method apart from
      evaluation; before it only ``round_time`` (evaluation included) was recorded, so
      the method time of those rounds is unknown: NaN, never the round time. A run with
      unknown method time is plotted against its round time and has no method-time
      total (``report.plots``, ``report.summary``).

    Records present are returned as they are (the same objects)."""
    out = dict(metrics)
    if version < RECORDS_COMPLETE and "method_time" not in out:
        out["method_time"] = [math.nan] * rounds
    return out, dict(client_metrics) if client_metrics is not None else {}


def stored_spec(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    """A search-space spec as a checkpoint or ``genotype.json`` stored it, in today's
    shape: specs written before DARTS's plain sum over live edges existed (1a1f73e,
    2026-11-25) have no ``inputs`` and combined a node's inputs by eq. 8's relaxation
    over k-combinations, "combinations"."""
    return spec if "inputs" in spec else {**spec, "inputs": "combinations"}
