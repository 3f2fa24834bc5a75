"""Typed run configuration: YAML into nested keyword-only dataclasses.

Every field carries its type and, where it matters, its allowed range in the
field metadata.  Loading walks the dataclasses, so an unknown key, a wrong type
or an out-of-range value is reported with its dotted path, the bad value and
what is allowed.  All problems of a file are reported together.

The shared sections are defined here; each method's ``algorithm`` keys come from its own
dataclasses (``algorithms/configs/``), listed in ``algorithms.registry``, so a run accepts
(and stores) only the keys its method reads, and likewise only its model's ``model`` keys.

This module is the bottom layer: it imports nothing of the package. The table of methods
is handed to it once (``use_catalogue``, called by the package's ``__init__``), so loading
and validating a YAML imports neither torch nor any method's code.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import yaml

# The spellings YAML 1.1 (PyYAML) reads as each boolean: a Literal option spelled so
# (kernels.compile: off) arrives as a bool from a file or --set unless quoted.
_YAML_BOOL = {False: ("off", "no", "n", "false"), True: ("on", "yes", "y", "true")}
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

#: The schema version of the config defined here, stored with every resolved config
#: (``to_yaml``: RUN_DIR/config.yaml and every checkpoint). Older stored configs are
#: upgraded to it by ``fednas_mpi.migrations``, one step per version; a change of the
#: schema that an absent key would misread adds a step there and bumps this.
SCHEMA_VERSION = 16
VERSION_KEY = "schema_version"


class ConfigError(ValueError):
    """One or more problems in a configuration; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"invalid configuration ({len(self.problems)} problem(s)):\n{lines}"


def option(default: Any, help: str, **limits: Any) -> Any:
    """A config field with a default, a one-line description and optional limits; the
    method modules declare their config sections with it.

    Limits: ``ge``, ``gt``, ``le``, ``lt`` for numbers, ``min_len`` for lists.
    ``of_rounds=True`` on an integer round count also accepts a fraction of ``run.rounds``
    (``resolve_rounds``), so a schedule written for a long run scales to a short one.
    """
    meta = {"help": help, **limits}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


_f = option


@dataclass(kw_only=True)
class RunConfig:
    name: str = _f("run", "Name of the run; the default output directory is runs/NAME-TIMESTAMP.")
    seed: int = _f(0, "Root seed; every random draw derives from (seed, round, client, purpose).")
    rounds: int = _f(10, "Number of communication rounds.", ge=1)
    eval_every: int = _f(
        1,
        "Evaluate the global model on the server test set every N rounds "
        "(the last round is always evaluated).",
        ge=1,
    )
    eval_subset: int = _f(
        0,
        "Server test images evaluated on the eval_every rounds: a fixed subset of this "
        "many (the same images in every run, whatever run.seed); the last round and the "
        "round an architecture is derived always use the whole test set. 0 = all.",
        ge=0,
    )
    test_subset: int = _f(
        0,
        "The server test set itself, for every evaluation (the last round and a "
        "derivation included): a fixed subset of this many images, the same in every run "
        "whatever run.seed - a budget for CPU-scale comparisons, where evaluating a supernet "
        "on the whole set costs more than its round. run.eval_subset is then drawn from "
        "this subset. 0 = the whole test set.",
        ge=0,
    )
    val_every: int = _f(
        0,
        "Every N rounds (and in the last) evaluate the global model on the union of all "
        "clients' eval splits - the clients' own held-out data, never the server test "
        "set - as val_acc and val_loss: the metric for tuning and early stopping. "
        "0 = never.",
        ge=0,
    )
    patience: int = _f(
        0,
        "Early stopping: end the run once val_acc has not beaten its best for this many "
        "consecutive validations, counted only in rounds the method may stop in (FedNAS: "
        "retraining; FedMetaNAS: after the final derivation; others: any); needs "
        "run.val_every. 0 = run all run.rounds (then the cap).",
        ge=0,
    )
    personal_eval_every: int = _f(
        0,
        "Every N rounds (and always in the last) the server evaluates every client's "
        "personalised model - the global model after the method's own personalisation "
        "step - on the client's eval split: metrics personal_acc and personal_acc_std "
        "(mean and std over clients; paper Table 5). 0 = the last round only.",
        ge=0,
    )
    on_nonfinite: Literal["abort", "skip_client"] = _f(
        "abort",
        "A client result (state, architecture parameters, loss) with a NaN or Inf: "
        "abort stops the run before the round is checkpointed, naming the round, "
        "the client and the first bad tensor; skip_client leaves that client out of "
        "the round's average (metrics dropped_clients and client_metrics dropped) and "
        "stops only when every client of a round is dropped. A non-finite global "
        "model or server test loss always stops the run.",
    )


@dataclass(kw_only=True)
class DataConfig:
    name: Literal["digits", "mnist", "fashion_mnist", "cifar10", "cifar100"] = _f(
        "digits",
        "Dataset. digits: scikit-learn's bundled 8x8 digits (no download); mnist, "
        "fashion_mnist, cifar10, cifar100: torchvision's files under data.root "
        "(Fashion-MNIST also from /usr/share/datasets/fashion-mnist).",
    )
    root: str = _f(
        "data", "Directory holding downloaded datasets in torchvision's layout (unused by digits)."
    )
    download: bool = _f(
        False,
        "Download missing files through torchvision at start (rank 0); "
        "otherwise missing files are an error that names the command "
        "fetching them.",
    )
    resize: int = _f(
        0,
        "Resize train and test images once at load to this square side "
        "(bilinear, antialiased) for CPU-scale runs; 0 keeps the size.",
        ge=0,
    )
    augment: bool = _f(
        False,
        "CIFAR only: random crop with padding 4 (scaled with data.resize) "
        "and horizontal flip of every training minibatch, as in DARTS.",
    )
    test_fraction: float = _f(
        0.2,
        "Digits has no test split: this fraction, drawn per class, is the server test set.",
        gt=0.0,
        lt=1.0,
    )


@dataclass(kw_only=True)
class PartitionConfig:
    scheme: Literal["iid", "dirichlet", "label_skew"] = _f(
        "dirichlet",
        "How the training pool is spread over clients. label_skew: each client "
        "holds partition.tau classes with about equal counts.",
    )
    num_clients: int = _f(10, "Number of clients M.", ge=1)
    alpha: float = _f(
        0.5, "Dirichlet concentration (smaller = more skewed); scheme=dirichlet.", gt=0.0
    )
    tau: int = _f(4, "Classes per client; scheme=label_skew (paper: 8 or 4).", ge=1)
    train_size: int = _f(
        0,
        "Training images per client (paper: 600), drawn from the training "
        "pool; 0 = spread the whole pool and hold out "
        "partition.eval_fraction.",
        ge=0,
    )
    eval_size: int = _f(
        0,
        "Eval images per client (paper: 600), drawn with the same label "
        "proportions as its train split; needs partition.train_size > 0.",
        ge=0,
    )
    overlap: bool = _f(
        False,
        "With fixed sizes: false = clients' images are disjoint (M x "
        "(train_size + eval_size) must fit in the pool); true = each "
        "client draws from the whole pool independently, so clients may "
        "share images. The paper's 100 x (600 + 600) exceeds 50,000 and "
        "needs true (or fewer clients).",
    )
    eval_fraction: float = _f(
        0.2,
        "Fraction of each client's data held out as its eval split "
        "(with partition.train_size = 0).",
        ge=0.0,
        lt=1.0,
    )
    min_train: int = _f(
        8,
        "Smallest acceptable train split per client (with "
        "partition.train_size = 0); Dirichlet draws are repeated until every "
        "client has at least this many.",
        ge=1,
    )


# DARTS's candidate operations; nas.operations.OPS implements exactly these.
Primitive = Literal[
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
]


@dataclass(kw_only=True)
class DartsConfig:
    init_channels: int = _f(8, "Channels C of the first cells (doubled at each reduction).", ge=2)
    layers: int = _f(3, "Number of cells; reduction cells sit at 1/3 and 2/3 of the depth.", ge=1)
    nodes: int = _f(3, "Intermediate nodes N per cell; the cell output concatenates them.", ge=1)
    input_k: int = _f(2, "k of eq. 8: each node mixes all k-combinations of its inputs.", ge=1)
    stem_multiplier: int = _f(3, "Stem output channels = stem_multiplier * init_channels.", ge=1)
    primitives: list[Primitive] = _f(
        [
            "none",
            "max_pool_3x3",
            "avg_pool_3x3",
            "skip_connect",
            "sep_conv_3x3",
            "sep_conv_5x5",
            "dil_conv_3x3",
            "dil_conv_5x5",
        ],
        "Candidate operations (a subset of DARTS's 8).",
        min_len=1,
    )


@dataclass(kw_only=True)
class MobileNetConfig:
    width_mult: float = _f(
        1.0,
        "Channel width multiplier of torchvision's MobileNetV3 "
        "(paper: 1.0; 0.5 for CPU-scale runs).",
        gt=0.0,
    )
    min_feature: int = _f(
        2,
        "Strided layers become stride 1 from the input side (stem "
        "first) until the last feature map is at least this many pixels "
        "wide (32x32 -> /16, 14x14 -> /8, 8x8 -> /4).",
        ge=1,
    )
    bn_momentum: float = _f(
        0.1,
        "BatchNorm running-statistics momentum (torchvision uses "
        "0.01, too slow for short federated runs).",
        gt=0.0,
        le=1.0,
    )


@dataclass(kw_only=True)
class ModelConfig:
    name: Literal["cnn", "darts", "mobilenet_v3_small", "mobilenet_v3_large"] = _f(
        "cnn",
        "Model. cnn: small fixed CNN; darts: the DARTS search space (NAS); "
        "mobilenet_v3_small, mobilenet_v3_large: torchvision's MobileNetV3 adapted to "
        "small images (fixed-architecture methods).",
    )
    channels: list[int] = _f(
        [16, 32], "cnn: output channels of the conv blocks.", min_len=1, item_ge=1
    )
    hidden: int = _f(64, "cnn: width of the hidden fully connected layer.", ge=1)
    darts: DartsConfig = field(default_factory=DartsConfig)
    mobilenet: MobileNetConfig = field(default_factory=MobileNetConfig)


@dataclass(kw_only=True)
class AlgorithmConfig:
    """The keys every method reads. A run's ``cfg.algorithm`` is an instance of its method's
    subclass (``Method.config``, a plain class in its config module), which adds the keys
    and sections that method reads and nothing else: a key of another method has no field
    to land in, so it is an error."""

    name: str = _f("fedavg", "Federated method (see the method table above).")
    local_epochs: int = _f(1, "Local epochs E per client and round (fedrep: body epochs).", ge=1)
    batch_size: int = _f(
        32,
        "Local minibatch size (fedmetanas: size of a support or query "
        "task; perfedavg: of each of the batches of one meta step).",
        ge=1,
    )


def method_name(name: str) -> Any:
    """The ``name`` field of a method's ``algorithm`` class: the shared key, with the
    method's own name as its default (the class then needs no ``name`` to build)."""
    return _f(name, AlgorithmConfig.__dataclass_fields__["name"].metadata["help"])


@dataclass(kw_only=True)
class ClientSGDConfig(AlgorithmConfig):
    """Plain client SGD of the fixed-model methods; its keys sit at ``algorithm.`` top level
    (``algorithm.lr``), as they always have: the fixed-model methods' ``algorithm`` classes
    derive from this one."""

    lr: float = _f(
        0.05,
        "fedavg, fedrep, fedbabu: client SGD learning rate; perfedavg: the "
        "outer (meta) step size beta.",
        gt=0.0,
    )
    momentum: float = _f(
        0.9, "fedavg, perfedavg, fedrep, fedbabu: client SGD momentum.", ge=0.0, lt=1.0
    )
    weight_decay: float = _f(
        0.0, "fedavg, perfedavg, fedrep, fedbabu: client SGD weight decay.", ge=0.0
    )


class Catalogue(typing.Protocol):
    """What config needs to know of the methods and models: ``algorithms.registry`` is
    one. ``MODELS`` (``models.catalogue``) has per model its ``name``, the ``model.`` keys
    it ``reads`` and whether it is ``fixed``. Each entry
    of ``METHODS`` has ``name``, ``nas``, ``config`` (its ``algorithm`` class, a plain
    subclass of ``AlgorithmConfig`` in the method's config module), ``keys`` (the
    ``algorithm.`` keys it reads) and ``sections`` (key -> section class); ``names()`` and
    ``method(name)`` look them up."""

    METHODS: tuple[Any, ...]
    MODELS: tuple[Any, ...]

    def names(self) -> tuple[str, ...]: ...

    def method(self, name: str) -> Any: ...


_catalogue: Catalogue | None = None


def use_catalogue(catalogue: Catalogue) -> None:
    """Hand config the table of methods. Read on every use, never copied, so a test that
    registers a toy method in the table is seen here."""
    global _catalogue
    _catalogue = catalogue


def catalogue() -> Catalogue:
    """The table of methods handed to config (``use_catalogue``)."""
    return _registry()


def _registry() -> Catalogue:
    if _catalogue is None:
        # config imports nothing above it; the package's __init__ hands it the registry
        raise RuntimeError(
            "fednas_mpi.config has no table of methods; import it as part of the "
            "package (import fednas_mpi.config) or call config.use_catalogue(registry)"
        )
    return _catalogue


def __getattr__(name: str) -> Any:
    # NAS_METHODS is derived from the table of methods; a module attribute looked up on
    # use keeps ``config.NAS_METHODS`` following it.
    if name == "NAS_METHODS":
        return tuple(m.name for m in _registry().METHODS if m.nas)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(kw_only=True)
class FederationConfig:
    clients_per_round: int = _f(5, "Clients K sampled (without replacement) each round.", ge=1)


@dataclass(kw_only=True)
class RuntimeConfig:
    threads_per_rank: int = _f(
        1,
        "Torch intra-op threads per rank; 0 = available cores / ranks on the node. CPU "
        "kernels round differently with different thread counts, so keep it fixed (the "
        "default 1) for results that do not depend on the rank count.",
        ge=0,
    )
    poll_interval_ms: float = _f(
        1.0,
        "Idle ranks poll MPI requests with this sleep between tests, so oversubscribed "
        "ranks do not steal cores from busy ones; 0 = block (busy-wait) in MPI.",
        ge=0.0,
    )
    device: Literal["auto", "cpu", "cuda"] = _f(
        "auto",
        "Worker device. auto: each worker rank takes a GPU by its node-local worker "
        "index (several clients per rank share it; more workers than GPUs share them "
        "round-robin), CPU when torch sees no GPU; cuda: the same, but no GPU is an "
        "error; cpu: never a GPU. A lone rank (-n 1) runs the clients itself and takes "
        "the first GPU. Networks and client data live on the device; states and "
        "random draws stay on the CPU (same streams on any device). The mapping is "
        "logged once and stored in every checkpoint.",
    )
    gpus: list[int] = _f(
        [],
        "GPU ids the workers of a node use, in order (worker i of a node "
        "takes gpus[i % len]); empty = every GPU torch sees.",
    )
    server_device: Literal["cpu", "gpu", "auto"] = _f(
        "cpu",
        "Rank 0 (aggregation, server evaluation) on the CPU, or on the node's first "
        "GPU (of runtime.gpus); auto: that GPU when torch sees one and runtime.device "
        "is not cpu, else the CPU (gpu without a GPU also falls back to the CPU). -n 1: "
        "rank 0 is also the worker and uses runtime.device's choice.",
    )
    tf32: bool = _f(
        False,
        "Let cuDNN convolutions and matrix products on GPUs use TF32 (faster "
        "on Ampere and later, ~1e-3 relative error). false = full float32, "
        "results comparable with CPU runs and across GPU generations.",
    )
    transport: Literal["mpi", "torch"] = _f(
        "mpi",
        "How partial sums travel. mpi: contiguous host buffers over MPI (states stay on "
        "the CPU, so a CUDA-aware MPI is not needed); torch: torch.distributed initialised "
        "from MPI (rank 0 broadcasts the rendezvous address and port), NCCL between GPU "
        "ranks, gloo on CPU. Both give the same results.",
    )


@dataclass(kw_only=True)
class KernelsConfig:
    backend: Literal["auto", "fused", "reference"] = _f(
        "auto",
        "Gumbel-softmax mixing: 'fused' C++/CUDA kernels (error if they cannot be "
        "loaded or built), 'reference' plain PyTorch, 'auto' fused when available, "
        "else the reference with one warning. Results agree to float rounding.",
    )
    supernet: Literal["auto", "grouped", "reference"] = _f(
        "auto",
        "How the DARTS supernet's mixture forward runs. grouped: per cell level, all live "
        "ops of all edges as a few large ops (nas.grouped; the mix a matrix product, so "
        "kernels.backend does not enter), on one CPU core 2-2.5x faster per step of "
        "the full supernet, as fast once one op per edge is left; reference: op "
        "module by op module; auto: grouped on the CPU, reference on GPUs (not yet "
        "measured there). Results agree to float rounding (summation order), not bit for "
        "bit, so a run resumes with the value it started with. The single-path forward "
        "(FedDSNAS, FedRLNAS) always runs op by op.",
    )
    compile: Literal["off", "cells"] = _f(
        "off",
        "cells: torch.compile each search cell on its own (regional compilation) on its "
        "first training forward; a new architecture (pruning, derivation) builds new cells "
        "and compiles once more, evaluation stays eager. Costs a compile per cell and "
        "architecture (minutes on a CPU, needs a C++ compiler there; docs/kernels.md), "
        "so it pays where the architecture stays fixed for many steps. Results agree with "
        "off to float rounding, not bit for bit. off: eager cells.",
    )


@dataclass(kw_only=True)
class StoreConfig:
    keep: int = _f(0, "Keep only the newest N round checkpoints; 0 keeps all.", ge=0)
    tensorboard: bool = _f(
        False,
        "Rank 0 also writes every round's metrics, time components, "
        "architecture metrics and genotype to RUN_DIR/tensorboard "
        "for live watching (needs the tensorboard extra); the HDF5 "
        "checkpoints stay the source of truth.",
    )


@dataclass(kw_only=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(
        default_factory=lambda: _registry().method("fedavg").config()
    )
    federation: FederationConfig = field(default_factory=FederationConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    kernels: KernelsConfig = field(default_factory=KernelsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)


# Fields that change how a run executes but not what it computes: they may
# differ between a run and its resumption.
# run.on_nonfinite may change on resume: a run stopped by a NaN continues with skip_client.
EXECUTION_ONLY = ("runtime.", "store.", "run.name", "run.rounds", "run.on_nonfinite")


def _cross_checks(cfg: Config) -> list[str]:
    problems = []
    bad_gpus = [g for g in cfg.runtime.gpus if g < 0]
    if bad_gpus:
        problems.append(f"runtime.gpus = {cfg.runtime.gpus}: GPU ids are >= 0")
    k, m = cfg.federation.clients_per_round, cfg.partition.num_clients
    if k > m:
        problems.append(
            f"federation.clients_per_round = {k}: cannot sample more clients than "
            f"partition.num_clients = {m}; use a value in [1, {m}]"
        )
    p = cfg.partition
    if p.train_size == 0 and p.eval_size > 0:
        problems.append(
            f"partition.eval_size = {p.eval_size}: needs partition.train_size > 0 "
            f"(with train_size 0 the whole pool is split by "
            f"partition.eval_fraction)"
        )
    if p.train_size == 0 and p.overlap:
        problems.append(
            "partition.overlap = True: only applies to fixed per-client sizes; set "
            "partition.train_size > 0 or overlap: false"
        )
    if cfg.data.augment and cfg.data.name not in ("cifar10", "cifar100"):
        problems.append(
            f"data.augment = True: crop-and-flip augmentation is for cifar10 and "
            f"cifar100, not data.name = {cfg.data.name!r}"
        )
    nas = _registry().method(cfg.algorithm.name).nas
    if nas and cfg.model.name != "darts":
        problems.append(
            f"model.name = {cfg.model.name!r}: algorithm.name = "
            f"{cfg.algorithm.name!r} searches an architecture; use model.name: darts"
        )
    fixed = fixed_models()
    if not nas and cfg.model.name not in fixed:
        problems.append(
            f"model.name = {cfg.model.name!r}: {cfg.algorithm.name} trains a fixed "
            f"model; use model.name: {' | '.join(fixed)}"
        )
    prims = cfg.model.darts.primitives
    if len(set(prims)) != len(prims):
        problems.append(f"model.darts.primitives = {prims}: an op is listed twice")
    if prims and set(prims) <= {"none"}:
        problems.append("model.darts.primitives: needs at least one op other than none")
    if cfg.run.patience and not cfg.run.val_every:
        problems.append(
            f"run.patience = {cfg.run.patience}: early stopping reads val_acc; set "
            f"run.val_every >= 1 (or patience: 0)"
        )
    for section in _sections(cfg.algorithm):  # a method section's own checks
        check = getattr(section, "cross_checks", None)
        problems += check(cfg) if check else []
    return problems


def _sections(alg: AlgorithmConfig) -> list[Any]:
    return [
        getattr(alg, f.name)
        for f in dataclasses.fields(alg)
        if dataclasses.is_dataclass(getattr(alg, f.name))
    ]


# ------------------------------------------------- keys the run does not read


def model_reads() -> dict[str, tuple[str, ...]]:
    """The ``model.`` keys each model reads beside model.name (the others belong to other
    models), from the table of models the model code declares (``models.catalogue``),
    handed in with the methods."""
    return {m.name: tuple(m.reads) for m in _registry().MODELS}


def fixed_models() -> tuple[str, ...]:
    """The fixed architectures the fixed-model methods train."""
    return tuple(m.name for m in _registry().MODELS if m.fixed)


def _method_class(raw: dict, path: str, problems: list[str]) -> type | None:
    reg = _registry()
    name = raw.get("name", AlgorithmConfig.__dataclass_fields__["name"].default)
    if not isinstance(name, str) or name not in reg.names():
        problems.append(
            f"{path}.name = {name!r}: expected one of {', '.join(repr(n) for n in reg.names())}"
        )
        return None
    return reg.method(name).config


def _unread_algorithm_keys(raw: dict, path: str) -> dict[str, str]:
    """A problem line for each key of ``raw`` that another method reads but this one does
    not. Keys no method knows are left to the unknown-key check."""
    reg = _registry()
    default = "name" not in raw
    this = reg.method(raw.get("name", AlgorithmConfig.__dataclass_fields__["name"].default))
    readers: dict[str, list[str]] = {}
    sections: set[str] = set()
    for m in reg.METHODS:
        for key in m.keys:
            readers.setdefault(key, []).append(m.name)
        sections |= set(m.sections)
    chosen = (
        f"{this.name} (the default of {path}.name)" if default else f"{this.name} ({path}.name)"
    )
    reads = f"{path}.{{{', '.join(this.keys)}}}"
    out = {}
    for key, value in raw.items():
        if key in this.keys or key not in readers:
            continue
        who = ", ".join(readers[key])
        if key in sections:
            sets = f" (sets {', '.join(map(str, value))})" if isinstance(value, dict) else ""
            kind = "section of method" + ("s" if len(readers[key]) > 1 else "")
            out[key] = (
                f"{path}.{key}: {kind} {who}{sets}; this run's method is {chosen}, "
                f"which reads {reads}"
            )
        else:
            out[key] = (
                f"{path}.{key}: not read by {this.name}, only by {who}; this run's "
                f"method is {chosen}, which reads {reads}"
            )
    return out


def _unread_model_keys(raw: dict, path: str) -> dict[str, str]:
    name = raw.get("name", ModelConfig.__dataclass_fields__["name"].default)
    reads = model_reads()
    if name not in reads:
        return {}  # the type check reports the bad name
    out = {}
    for key in raw:
        users = [m for m, keys in reads.items() if key in keys]
        if users and key not in reads[name]:
            out[key] = (
                f"{path}.{key}: read only by model.name {' | '.join(users)}; this run's "
                f"model is {name!r}, which reads "
                f"{path}.{{{', '.join(('name',) + reads[name])}}}"
            )
    return out


# ---------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _check_limits(value: Any, meta: dict, path: str) -> str | None:
    bounds = [
        ("ge", ">=", lambda v, b: v >= b),
        ("gt", ">", lambda v, b: v > b),
        ("le", "<=", lambda v, b: v <= b),
        ("lt", "<", lambda v, b: v < b),
    ]
    for key, _, ok in bounds:
        if key in meta and not ok(value, meta[key]):
            allowed = " and ".join(f"{s} {meta[k]}" for k, s, _ in bounds if k in meta)
            return f"{path} = {value!r}: out of range; allowed: {allowed}"
    if "min_len" in meta and len(value) < meta["min_len"]:
        return f"{path} = {value!r}: needs at least {meta['min_len']} element(s)"
    if "item_ge" in meta:
        for i, v in enumerate(value):
            if v < meta["item_ge"]:
                return f"{path}[{i}] = {v!r}: out of range; allowed: >= {meta['item_ge']}"
    return None


ROUNDS_FRACTION_RULE = (
    "a number strictly between 0 and 1 is that share of run.rounds, resolved once when "
    "the config is loaded: the nearest whole round (halves up, from the decimal as "
    "written), at least 1"
)


def _fraction_problem(value: float, path: str) -> str | None:
    """Why ``value`` cannot be a share of run.rounds, or None when it can. A whole float
    (``1.0``, ``50.0``) is refused, not read as a count: ``1.0`` may mean one round or all
    of them, and the reader of a file cannot tell which was meant."""
    if 0 < value < 1:
        return None
    if math.isfinite(value) and value == int(value) and value >= 0:
        n = int(value)
        hint = f"write {n} for {n} round(s)" + (
            ", or a fraction below 1 for a share of run.rounds" if n == 1 else ""
        )
        return (
            f"{path} = {value!r}: ambiguous; a round count is an integer, or a fraction "
            f"of run.rounds strictly between 0 and 1: {hint}"
        )
    return (
        f"{path} = {value!r}: expected an integer (rounds) or a fraction of run.rounds "
        f"strictly between 0 and 1"
    )


def rounds_of(fraction: float, rounds: int) -> int:
    """The round count a share ``fraction`` (in (0, 1)) of ``rounds`` resolves to: the
    nearest whole round, halves up, at least 1. Computed on the decimal as written (0.29
    of 50 is exactly 14.5, so 15), not on its binary float (whose product is 14.4999...)."""
    exact = Fraction(repr(fraction)) * rounds
    return max(1, math.floor(exact + Fraction(1, 2)))


def _resolve_rounds(obj: Any, path: str, rounds: int, problems: list[str]) -> list[tuple]:
    """Replace, in place, every fraction left in an ``of_rounds`` field of the built config
    by its round count and check that count against the field's limits; returns
    (path, fraction, count) for each, so later problems can name where a count came from."""
    done = []
    for f in dataclasses.fields(obj):
        value, sub = getattr(obj, f.name), f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(value):
            done += _resolve_rounds(value, sub, rounds, problems)
        elif f.metadata.get("of_rounds") and isinstance(value, float):
            count = rounds_of(value, rounds)
            setattr(obj, f.name, count)
            done.append((sub, value, count))
            problem = _check_limits(count, dict(f.metadata), sub)
            if problem:
                problems.append(f"{problem} ({value!r} of run.rounds = {rounds})")
    return done


def _coerce(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    """Convert a YAML value to ``tp`` or record a problem (and return None)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, problems)
    if origin is Literal:
        options = typing.get_args(tp)
        if value in options and type(value) is type(options[0]):
            return value
        if isinstance(value, bool):  # YAML 1.1 reads off/on/no/yes unquoted as booleans
            spelled = [o for o in options if isinstance(o, str) and o.lower() in _YAML_BOOL[value]]
            if len(spelled) == 1:
                return spelled[0]
    elif origin is list:
        if isinstance(value, list):
            (item_tp,) = typing.get_args(tp)
            out = [_coerce(v, item_tp, f"{path}[{i}]", problems) for i, v in enumerate(value)]
            return out
    elif origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], path, problems)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT.match(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
    elif tp is str:
        if isinstance(value, str):
            return value
    problems.append(f"{path} = {value!r}: expected {_type_name(tp)}")
    return None


def _build(cls: type, raw: Any, path: str, problems: list[str]) -> Any:
    where = path or "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping of keys, got {raw!r}")
        return _registry().method("fedavg").config() if cls is AlgorithmConfig else cls()
    unread: dict[str, str] = {}
    if cls is AlgorithmConfig:  # the chosen method's own dataclass
        cls = _method_class(raw, path, problems)
        if cls is None:  # no valid algorithm.name: its other keys cannot be judged
            return _registry().method("fedavg").config()
        unread = _unread_algorithm_keys(raw, path)
    elif cls is ModelConfig:
        unread = _unread_model_keys(raw, path)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    # a section may name keys it refuses and why (e.g. a method whose logits no gradient
    # steps has no use for another method's optimiser of them): clearer than "unknown"
    refused = getattr(cls, "refused_keys", {})
    for key in raw:
        if key in unread:
            problems.append(unread[key])
        elif key in refused and key not in fields:
            problems.append(f"{path + '.' if path else ''}{key}: {refused[key]}")
        elif key not in fields:
            known = ", ".join(sorted(fields))
            problems.append(
                f"{path + '.' if path else ''}{key}: unknown key; "
                f"known keys {'in ' + path if path else 'at the top level'}: {known}"
            )
    kwargs = {}
    for name, f in fields.items():
        if name not in raw or name in unread:
            continue
        sub = f"{path}.{name}" if path else name
        before = len(problems)
        if f.metadata.get("of_rounds") and isinstance(raw[name], str):
            if _FLOAT.match(raw[name].strip()):  # YAML 1.1 reads 5e-2 as a string
                raw = {**raw, name: float(raw[name])}
        if f.metadata.get("of_rounds") and isinstance(raw[name], float):
            # a share of run.rounds: kept as the float until the whole config is built
            # (run.rounds may come later, or from --set), then resolved by from_dict
            problem = _fraction_problem(raw[name], sub)
            if problem:
                problems.append(problem)
            else:
                kwargs[name] = raw[name]
            continue
        value = _coerce(raw[name], hints[name], sub, problems)
        if len(problems) == before and not dataclasses.is_dataclass(hints[name]):
            problem = _check_limits(value, dict(f.metadata), sub)
            if problem:
                problems.append(problem)
        if len(problems) == before or dataclasses.is_dataclass(hints[name]):
            kwargs[name] = value
    return cls(**kwargs)


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = raw
    for k in keys[:-1]:
        if node.get(k) is None:  # absent, or an empty section in the file ("run:")
            node[k] = {}
        nxt = node[k]
        if not isinstance(nxt, dict):
            raise ConfigError([f"--set {dotted}: {k} is not a section"])
        node = nxt
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``section.key=value``; the value is parsed as YAML (so 3, 0.5, true, [1,2])."""
    if "=" not in text:
        raise ConfigError([f"--set {text!r}: expected section.key=value, e.g. run.rounds=20"])
    key, _, val = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError([f"--set {text!r}: expected section.key=value, e.g. run.rounds=20"])
    try:
        value = yaml.safe_load(val) if val.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError([f"--set {text!r}: value is not valid YAML ({e})"]) from None
    return key, value


def from_dict(raw: Any, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build and validate a Config from a parsed mapping plus ``--set`` overrides."""
    raw = {} if raw is None else raw
    if isinstance(raw, dict):
        raw = _deepcopy_plain(raw)
        for text in overrides:
            key, value = parse_override(text)
            _set_dotted(raw, key, value)
    problems: list[str] = []
    if isinstance(raw, dict) and VERSION_KEY in raw:
        # a stored config of this version is a valid config file; another version's is
        # read through fednas_mpi.migrations (as --resume does), never guessed at here
        version = raw.pop(VERSION_KEY)
        if version != SCHEMA_VERSION:
            problems.append(
                f"{VERSION_KEY} = {version!r}: this fednas-mpi reads configs of schema "
                f"version {SCHEMA_VERSION}; a run's stored config of another version is "
                f"read by --resume RUN_DIR (fednas_mpi.migrations), or drop the key"
            )
    cfg = _build(Config, raw, "", problems)
    resolved = _resolve_rounds(cfg, "", cfg.run.rounds, problems)
    if not problems:
        # a count resolved from a fraction is named as such where a check refuses it
        problems += [_with_origin(p, resolved) for p in _cross_checks(cfg)]
    if problems:
        raise ConfigError(problems)
    return cfg


def _with_origin(problem: str, resolved: list[tuple]) -> str:
    for path, fraction, count in resolved:
        if problem.startswith(f"{path} = {count}"):
            return f"{problem} ({path} was {fraction!r} of run.rounds)"
    return problem


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML file (and its ``base:`` files) and validate it.

    Errors name the file and the key path.
    """
    return from_dict(load_raw(path), overrides)


DEFAULTS_FILE = "configs/defaults.yaml"


def load_run(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """``load`` for a file that is to be run: it must name its method. An empty file (or one
    truncated before ``algorithm.name``) is an error, never a run on the defaults; those
    are one explicit file away (``configs/defaults.yaml``)."""
    raw = load_raw(path)
    if raw is None or raw == {}:
        raise ConfigError(
            [
                f"{path} is empty: a run's config names at least its method "
                f"(algorithm.name); to run on the defaults, run "
                f"{DEFAULTS_FILE}"
            ]
        )
    algorithm = raw.get("algorithm") if isinstance(raw, dict) else None
    if isinstance(raw, dict) and (
        algorithm is None or (isinstance(algorithm, dict) and not algorithm.get("name"))
    ):
        raise ConfigError(
            [
                f"{path} names no method (algorithm.name, after its base: files); "
                f"a truncated or mistyped file is not run on the defaults. Add "
                f"e.g. 'algorithm: {{name: fedavg}}', or run {DEFAULTS_FILE}"
            ]
        )
    return from_dict(raw, overrides)


def load_raw(path: str | Path, _chain: tuple[Path, ...] = ()) -> Any:
    """The parsed mapping of a config file with its ``base:`` files merged under it.

    ``base:`` names one file or a list of files, relative to the file naming
    them; they load first (recursively, in order, later ones over earlier ones)
    and the file's own keys are merged over them: mappings key by key, any
    other value (lists included) replaced whole. A file reached again through
    its own bases is an error.
    """
    path = Path(path)
    key = path.resolve()
    where = f" (base of {_chain[-1]})" if _chain else ""
    if key in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain[_chain.index(key) :], key))
        raise ConfigError([f"base: cycle of config files: {cycle}"])
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError([f"cannot read config file {path}{where}: {e.strerror}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}{where} is not valid YAML: {e}"]) from None
    if not isinstance(raw, dict) or "base" not in raw:
        return raw
    bases = raw.pop("base")
    bases = [] if bases is None else [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(
            [
                f"{path}: base = {bases!r}: expected a file name or a list of file "
                f"names (relative to {path.parent})"
            ]
        )
    merged: dict = {}
    for name in bases:
        sub = load_raw(path.parent / name, (*_chain, key))
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise ConfigError(
                [f"{path.parent / name} (base of {path}): expected a mapping of keys, got {sub!r}"]
            )
        merged = _merge(merged, sub)
    return _merge(merged, raw)


def _merge(under: dict, over: dict) -> dict:
    out = _deepcopy_plain(under)
    for k, v in over.items():
        if isinstance(out.get(k), dict) and (isinstance(v, dict) or v is None):
            # an empty section ("run:") in the file keeps the base's section
            out[k] = _merge(out[k], v or {})
        else:
            out[k] = _deepcopy_plain(v)
    return out


def to_dict(cfg: Config) -> dict:
    """The resolved config: only the keys the run reads (its method's, its model's)."""
    out = dataclasses.asdict(cfg)
    reads = model_reads()
    out["model"] = {
        k: v
        for k, v in out["model"].items()
        if k == "name"
        or k in reads[cfg.model.name]
        or not any(k in keys for keys in reads.values())
    }
    return out


def to_yaml(cfg: Config) -> str:
    """The resolved config as it is stored, headed by its schema version."""
    return yaml.safe_dump({VERSION_KEY: SCHEMA_VERSION, **to_dict(cfg)}, sort_keys=False)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


_ABSENT = "(not set)"


def result_affecting_differences(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ and that change what a run computes."""
    fa, fb = flatten(to_dict(a)), flatten(to_dict(b))
    # another method or model has other keys: a key only one side has differs too
    keys = list(fa) + [k for k in fb if k not in fa]
    return [
        k
        for k in keys
        if fa.get(k, _ABSENT) != fb.get(k, _ABSENT)
        and not any(k == p or (p.endswith(".") and k.startswith(p)) for p in EXECUTION_ONLY)
    ]


def reference() -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every field; used to render the README reference."""
    rows = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if tp is AlgorithmConfig:
                walk_algorithm(f"{prefix}{f.name}.")
            elif dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")
            else:
                walk_field(cls, f, prefix)

    def walk_field(cls: type, f: dataclasses.Field, prefix: str) -> None:
        tp = typing.get_type_hints(cls)[f.name]
        if cls is AlgorithmConfig and f.name == "name":
            tp = Literal[_registry().names()]
        type_name = _type_name(tp)
        if f.metadata.get("of_rounds"):
            type_name += " or a fraction of run.rounds"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        limits = [
            f"{s} {f.metadata[k]}"
            for k, s in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
            if k in f.metadata
        ]
        help_ = f.metadata.get("help", "")
        if limits:
            help_ += f" ({', '.join(limits)})"
        rows.append((prefix + f.name, type_name, repr(default), help_))

    def walk_algorithm(prefix: str) -> None:
        # the shared keys, then every registered method's keys once, in registry order (a
        # section several methods read is shown as its first reader's class)
        walk(AlgorithmConfig, prefix)
        seen = {f.name for f in dataclasses.fields(AlgorithmConfig)}
        for m in _registry().METHODS:
            for f in dataclasses.fields(m.config):
                if f.name in seen:
                    continue
                seen.add(f.name)
                if f.name in m.sections:
                    walk(m.sections[f.name], f"{prefix}{f.name}.")
                else:
                    walk_field(m.config, f, prefix)

    walk(Config, "")
    return rows


def methods_markdown() -> str:
    """The table of registered methods as it appears in the README."""
    shared = [f.name for f in dataclasses.fields(AlgorithmConfig)]
    lines = [
        f"| `algorithm.name` | model | reads `algorithm.` (beside {', '.join(shared[1:])}) |",
        "|---|---|---|",
    ]
    for m in _registry().METHODS:
        model = (
            "darts" + (" (baseline, no search)" if m.baseline else "")
            if m.nas
            else " \\| ".join(fixed_models())
        )
        own = [f"`{k}`" for k in m.keys if k not in shared]
        lines.append(f"| `{m.name}` | {model} | {', '.join(own)} |")
    return "\n".join(lines)


def _deepcopy_plain(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy_plain(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy_plain(v) for v in d]
    return d


def reference_markdown() -> str:
    """The config reference tables as they appear in the README: the methods and the keys
    they read, then every key."""
    lines = [methods_markdown(), "", "| key | type | default | meaning |", "|---|---|---|---|"]
    for key, tp, default, help_ in reference():
        lines.append(f"| `{key}` | {tp} | `{default}` | {help_} |")
    return "\n".join(lines)


if __name__ == "__main__":
    # run as a script this file is a second copy of the module (__main__); the package's
    # own copy is the one the package handed the table of methods
    from fednas_mpi import config as package_config

    print(package_config.reference_markdown())
