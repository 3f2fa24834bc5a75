"""The config of ``algorithms/random_nas.py`` (RandomNASConfig), torch-free so that
loading and validating a YAML imports no torch; the method code imports it from here."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import AlgorithmConfig, method_name, option


@dataclass(kw_only=True)
class RandomNASConfig:
    genotype: str = option(
        "",
        "The cell to train: empty for a uniform draw from the search space "
        "(genotype_seed picks it); or a published cell by name (darts_v1, "
        "darts_v2, pc_darts, p_darts), a run directory (its genotype.json) or a "
        "JSON file holding a genotype. It must fit the network: model.darts.nodes "
        "nodes of input_k distinct inputs, ops among its primitives.",
    )
    genotype_seed: int = option(
        0,
        "Which random genotype: drawn uniformly from the search space "
        "from this seed alone (not run.seed), so one genotype can be "
        "trained with several seeds.",
        ge=0,
    )
    lr: float = option(
        0.025, "SGD learning rate in round 1 (cosine schedule over run.rounds).", gt=0.0
    )
    lr_min: float = option(0.001, "Learning rate in the last round.", ge=0.0)
    momentum: float = option(0.9, "SGD momentum.", ge=0.0, lt=1.0)
    weight_decay: float = option(3e-4, "SGD weight decay.", ge=0.0)
    local_eval_every: int = option(
        1,
        "Evaluate the sampled clients' models on their eval splits "
        "every N rounds (and in the last).",
        ge=1,
    )


@dataclass(kw_only=True)
class RandomNASAlgorithmConfig(AlgorithmConfig):
    """``algorithm`` of random_nas: the shared keys and its section ``algorithm.random_nas``."""

    name: str = method_name("random_nas")
    random_nas: RandomNASConfig = field(default_factory=RandomNASConfig)
