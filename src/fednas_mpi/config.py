"""Typed run configuration: YAML into nested keyword-only dataclasses.

Every field carries its type and, where it matters, its allowed range in the
field metadata.  Loading walks the dataclasses, so an unknown key, a wrong type
or an out-of-range value is reported with its dotted path, the bad value and
what is allowed.  All problems of a file are reported together.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class ConfigError(ValueError):
    """One or more problems in a configuration; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"invalid configuration ({len(self.problems)} problem(s)):\n{lines}"


def _f(default: Any, help: str, **limits: Any) -> Any:
    """A config field with a default, a one-line description and optional limits.

    Limits: ``ge``, ``gt``, ``le``, ``lt`` for numbers, ``min_len`` for lists.
    """
    meta = {"help": help, **limits}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(kw_only=True)
class RunConfig:
    name: str = _f("run", "Name of the run; the default output directory is runs/NAME-TIMESTAMP.")
    seed: int = _f(0, "Root seed; every random draw derives from (seed, round, client, purpose).")
    rounds: int = _f(10, "Number of communication rounds.", ge=1)
    eval_every: int = _f(1, "Evaluate the global model on the server test set every N rounds "
                            "(the last round is always evaluated).", ge=1)
    eval_subset: int = _f(
        0, "Server test images evaluated on the eval_every rounds: a fixed subset of this "
           "many (the same images in every run, whatever run.seed); the last round and the "
           "round an architecture is derived always use the whole test set. 0 = all.", ge=0)
    val_every: int = _f(
        0, "Every N rounds (and in the last) evaluate the global model on the union of all "
           "clients' eval splits - the clients' own held-out data, never the server test "
           "set - as val_acc and val_loss: the metric for tuning and early stopping. "
           "0 = never.", ge=0)
    patience: int = _f(
        0, "Early stopping: end the run once val_acc has not beaten its best for this many "
           "consecutive validations, counted only in rounds the method may stop in (FedNAS: "
           "retraining; FedMetaNAS: after the final derivation; others: any); needs "
           "run.val_every. 0 = run all run.rounds (then the cap).", ge=0)
    personal_eval_every: int = _f(
        0, "Every N rounds (and always in the last) the server evaluates every client's "
           "personalised model - the global model after the method's own personalisation "
           "step - on the client's eval split: metrics personal_acc and personal_acc_std "
           "(mean and std over clients; paper Table 5). 0 = the last round only.", ge=0)
    on_nonfinite: Literal["abort", "skip_client"] = _f(
        "abort", "A client result (state, architecture parameters, loss) with a NaN or Inf: "
                 "abort stops the run before the round is checkpointed, naming the round, "
                 "the client and the first bad tensor; skip_client leaves that client out of "
                 "the round's average (metrics dropped_clients and client_metrics dropped) and "
                 "stops only when every client of a round is dropped. A non-finite global "
                 "model or server test loss always stops the run.")


@dataclass(kw_only=True)
class DataConfig:
    name: Literal["digits", "mnist", "fashion_mnist", "cifar10", "cifar100"] = _f(
        "digits", "Dataset. digits: scikit-learn's bundled 8x8 digits (no download); mnist, "
                  "fashion_mnist, cifar10, cifar100: torchvision's files under data.root "
                  "(Fashion-MNIST also from /usr/share/datasets/fashion-mnist).")
    root: str = _f("data", "Directory holding downloaded datasets in torchvision's layout "
                           "(unused by digits).")
    download: bool = _f(False, "Download missing files through torchvision at start (rank 0); "
                               "otherwise missing files are an error that names the command "
                               "fetching them.")
    resize: int = _f(0, "Resize train and test images once at load to this square side "
                        "(bilinear, antialiased) for CPU-scale runs; 0 keeps the size.", ge=0)
    augment: bool = _f(False, "CIFAR only: random crop with padding 4 (scaled with data.resize) "
                              "and horizontal flip of every training minibatch, as in DARTS.")
    test_fraction: float = _f(
        0.2, "Digits has no test split: this fraction, drawn per class, is the server test set.",
        gt=0.0, lt=1.0)


@dataclass(kw_only=True)
class PartitionConfig:
    scheme: Literal["iid", "dirichlet", "label_skew"] = _f(
        "dirichlet", "How the training pool is spread over clients. label_skew: each client "
                     "holds partition.tau classes with about equal counts.")
    num_clients: int = _f(10, "Number of clients M.", ge=1)
    alpha: float = _f(0.5, "Dirichlet concentration (smaller = more skewed); scheme=dirichlet.",
                      gt=0.0)
    tau: int = _f(4, "Classes per client; scheme=label_skew (paper: 8 or 4).", ge=1)
    train_size: int = _f(0, "Training images per client (paper: 600), drawn from the training "
                            "pool; 0 = spread the whole pool and hold out "
                            "partition.eval_fraction.", ge=0)
    eval_size: int = _f(0, "Eval images per client (paper: 600), drawn with the same label "
                           "proportions as its train split; needs partition.train_size > 0.",
                        ge=0)
    overlap: bool = _f(False, "With fixed sizes: false = clients' images are disjoint (M x "
                              "(train_size + eval_size) must fit in the pool); true = each "
                              "client draws from the whole pool independently, so clients may "
                              "share images. The paper's 100 x (600 + 600) exceeds 50,000 and "
                              "needs true (or fewer clients).")
    eval_fraction: float = _f(0.2, "Fraction of each client's data held out as its eval split "
                                   "(with partition.train_size = 0).", ge=0.0, lt=1.0)
    min_train: int = _f(8, "Smallest acceptable train split per client (with "
                           "partition.train_size = 0); Dirichlet draws are repeated until every "
                           "client has at least this many.", ge=1)


# DARTS's candidate operations; nas.operations.OPS implements exactly these.
Primitive = Literal["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                    "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]


@dataclass(kw_only=True)
class DartsConfig:
    init_channels: int = _f(8, "Channels C of the first cells (doubled at each reduction).",
                            ge=2)
    layers: int = _f(3, "Number of cells; reduction cells sit at 1/3 and 2/3 of the depth.",
                     ge=1)
    nodes: int = _f(3, "Intermediate nodes N per cell; the cell output concatenates them.",
                    ge=1)
    input_k: int = _f(2, "k of eq. 8: each node mixes all k-combinations of its inputs.", ge=1)
    stem_multiplier: int = _f(3, "Stem output channels = stem_multiplier * init_channels.",
                              ge=1)
    primitives: list[Primitive] = _f(
        ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
         "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"],
        "Candidate operations (a subset of DARTS's 8).", min_len=1)


@dataclass(kw_only=True)
class MobileNetConfig:
    width_mult: float = _f(1.0, "Channel width multiplier of torchvision's MobileNetV3 "
                                "(paper: 1.0; 0.5 for CPU-scale runs).", gt=0.0)
    min_feature: int = _f(2, "Strided layers become stride 1 from the input side (stem "
                             "first) until the last feature map is at least this many pixels "
                             "wide (32x32 -> /16, 14x14 -> /8, 8x8 -> /4).", ge=1)
    bn_momentum: float = _f(0.1, "BatchNorm running-statistics momentum (torchvision uses "
                                 "0.01, too slow for short federated runs).", gt=0.0, le=1.0)


FIXED_MODELS = ("cnn", "mobilenet_v3_small", "mobilenet_v3_large")


@dataclass(kw_only=True)
class ModelConfig:
    name: Literal["cnn", "darts", "mobilenet_v3_small", "mobilenet_v3_large"] = _f(
        "cnn", "Model. cnn: small fixed CNN; darts: the DARTS search space (NAS); "
               "mobilenet_v3_small, mobilenet_v3_large: torchvision's MobileNetV3 adapted to "
               "small images (fixed-architecture methods).")
    channels: list[int] = _f([16, 32], "cnn: output channels of the conv blocks.", min_len=1,
                            item_ge=1)
    hidden: int = _f(64, "cnn: width of the hidden fully connected layer.", ge=1)
    darts: DartsConfig = field(default_factory=DartsConfig)
    mobilenet: MobileNetConfig = field(default_factory=MobileNetConfig)


@dataclass(kw_only=True)
class FedMetaNASConfig:
    inner_steps: int = _f(2, "M: task-learner steps on the support task (eq. 6/9).", ge=1)
    tasks_per_epoch: int = _f(
        0, "Support/query task pairs per local epoch; 0 = as many disjoint pairs of "
           "algorithm.batch_size samples as the client's train split holds (at least 1).", ge=0)
    task_lr_w: float = _f(0.05, "Task learning rate for the weights (eta_w^task) in round 1; "
                                "decays with meta_lr_w (see weight_lr_min).", gt=0.0)
    task_lr_alpha: float = _f(0.5, "Task learning rate for alphas and betas (eta_alpha^task; "
                                   "plain SGD steps of eq. 9).", ge=0.0)
    meta_optimizer: Literal["sgd", "adam"] = _f("sgd", "Meta learner's optimiser of the "
                                                       "weights (eq. 7/10).")
    meta_lr_w: float = _f(0.05, "Meta learning rate for the weights (eta_w^meta) in round 1.",
                          gt=0.0)
    weight_lr_min: float = _f(
        0.02, "Both weight learning rates follow a cosine from their round-1 value down to "
              "this fraction of it in the last round (as FedNAS's weights); 1 = constant.",
        ge=0.0, le=1.0)
    meta_momentum: float = _f(0.9, "Momentum (sgd) or beta1 (adam) of the weights' meta "
                                   "optimiser.", ge=0.0, lt=1.0)
    weight_decay: float = _f(3e-4, "Weight decay of the meta optimiser, on the weights only.",
                             ge=0.0)
    arch_optimizer: Literal["adam", "sgd"] = _f(
        "adam", "Meta optimiser of alphas and betas (eq. 7/10). adam (betas arch_betas) moves "
                "each logit by about meta_lr_alpha per meta step whatever the scale of its "
                "gradient, which at CPU scale is 1e-3..1e-2: plain SGD needs a step size "
                "tuned to that scale; sgd uses meta_momentum.")
    meta_lr_alpha: float = _f(
        0.03, "Meta learning rate for alphas and betas (eta_alpha^meta). With adam, a logit "
              "moves at most about meta_lr_alpha x (meta steps of the search) in total: "
              "choose it so that this is a few units (a logit gap of 2 is a 7:1 odds).",
        ge=0.0)
    arch_betas: list[float] = _f([0.5, 0.999], "Adam betas of the architecture meta "
                                               "optimiser.", min_len=2)
    grad_clip: float = _f(5.0, "Clip the gradient norm of every step (0 = off).", ge=0.0)
    temperature_start: float = _f(1.0, "Gumbel-softmax temperature lambda in round 1.", gt=0.0)
    temperature_end: float = _f(0.2, "lambda in the last search round (the final "
                                     "derivation's).", gt=0.0)
    temperature_schedule: Literal["linear", "exponential", "constant"] = _f(
        "exponential", "How lambda anneals over the search rounds. lambda only shapes the "
                       "relaxation (eq. 1) the weights train in; pruning and the derivation "
                       "read the logits alone.")
    temperature_floor: float = _f(0.01, "lambda never goes below this (numerical safety).",
                                  ge=1e-3)
    arch_warmup_rounds: int = _f(
        0, "Deterministic warm-up: in the first N rounds only the weights learn, with alphas "
           "and betas frozen and no Gumbel noise (every op trained in the same uniform "
           "mixture), so parameter-free ops do not win merely because convolutions are "
           "untrained.", ge=0)
    prune_start: int = _f(1, "First round (1-based) after which soft pruning may run (never "
                             "during the warm-up).", ge=1)
    prune_every: int = _f(1, "Soft-prune every N rounds from prune_start (0 = never; the "
                             "final derivation still runs).", ge=0)
    prune_gap: float = _f(
        2.0, "Prune an op whose logit is more than this below the strongest live op of its "
             "edge (probability under softmax(alpha) below exp(-gap) of the strongest's); "
             "the temperature takes no part. 0 = never prune ops before the derivation.",
        ge=0.0)
    combo_prune_gap: float = _f(2.0, "The same for input combinations (beta) of a node.",
                                ge=0.0)
    settle_rounds: int = _f(
        3, "In the last N search rounds before the derivation both gaps shrink linearly "
           "towards 0 (pruning every round), so what the derivation would cut is pruned a "
           "little at a time while the weights adapt, and the derivation itself removes "
           "almost nothing. 0 = no settle phase.", ge=0)
    final_round: int = _f(
        0, "Round (1-based) after which the genotype is derived (argmax of the learned "
           "logits over the survivors) and the discrete network, with the weights it "
           "inherits, replaces the supernet; the rest of the run trains it (single stage, no "
           "re-initialisation). 0 = the last round.", ge=0)
    local_eval_every: int = _f(1, "Evaluate the sampled clients' models on their eval splits "
                                  "every N rounds (and in the last); bounds the cost.", ge=1)

    def prunes_after(self, done: int) -> bool:
        """Whether soft pruning runs after 1-based round ``done`` (the warm-up excluded)."""
        start = max(self.prune_start, self.arch_warmup_rounds + 1)
        return bool(self.prune_every) and done >= start and \
            (done - start) % self.prune_every == 0


@dataclass(kw_only=True)
class FedNASConfig:
    search_rounds: int = _f(0, "Rounds of MiLeNAS search before hard pruning; the rest of "
                               "run.rounds retrain the derived network from scratch. "
                               "0 = half of run.rounds.", ge=0)
    lr: float = _f(0.025, "Weights: SGD learning rate at the start of each stage (cosine "
                          "schedule over the stage's rounds).", gt=0.0)
    lr_min: float = _f(0.001, "Weights: learning rate at the end of each stage.", ge=0.0)
    momentum: float = _f(0.9, "Weights: SGD momentum.", ge=0.0, lt=1.0)
    weight_decay: float = _f(3e-4, "Weights: SGD weight decay.", ge=0.0)
    grad_clip: float = _f(5.0, "Weights: gradient norm clip (0 = off); alphas are not "
                               "clipped.", ge=0.0)
    arch_lr: float = _f(
        0.03, "Alphas: Adam learning rate. Adam moves a logit by at most about arch_lr per "
              "step, so the total movement is bounded by arch_lr x (search steps): DARTS's "
              "3e-4 suits its ~20k steps (the paper configs keep it), while the CPU configs' "
              "~100 steps need ~0.03 for the alphas to move beyond their noise.", gt=0.0)
    arch_betas: list[float] = _f([0.5, 0.999], "Alphas: Adam betas.", min_len=2)
    arch_weight_decay: float = _f(1e-3, "Alphas: Adam weight decay.", ge=0.0)
    milenas_lambda: float = _f(1.0, "MiLeNAS mixed-level weight: the alpha gradient is "
                                    "grad L_val + lambda * grad L_train.", ge=0.0)
    local_eval_every: int = _f(1, "Evaluate the sampled clients' models on their eval splits "
                                  "every N rounds (and in the last).", ge=1)


@dataclass(kw_only=True)
class RandomNASConfig:
    genotype_seed: int = _f(0, "Which random genotype: drawn uniformly from the search space "
                               "from this seed alone (not run.seed), so one genotype can be "
                               "trained with several seeds.", ge=0)
    lr: float = _f(0.025, "SGD learning rate in round 1 (cosine schedule over run.rounds).",
                   gt=0.0)
    lr_min: float = _f(0.001, "Learning rate in the last round.", ge=0.0)
    momentum: float = _f(0.9, "SGD momentum.", ge=0.0, lt=1.0)
    weight_decay: float = _f(3e-4, "SGD weight decay.", ge=0.0)
    local_eval_every: int = _f(1, "Evaluate the sampled clients' models on their eval splits "
                                  "every N rounds (and in the last).", ge=1)


@dataclass(kw_only=True)
class PerFedAvgConfig:
    variant: Literal["first_order", "hessian_free"] = _f(
        "first_order", "Meta gradient: first_order drops the Hessian term; hessian_free "
                       "estimates it by a finite difference of gradients on a third batch.")
    alpha: float = _f(0.01, "Inner (adaptation) step size alpha; the outer step size beta is "
                            "algorithm.lr.", gt=0.0)
    hf_delta: float = _f(0.001, "hessian_free: finite-difference step delta of the "
                                "Hessian-vector product.", gt=0.0)
    adapt_steps: int = _f(1, "Personalisation before local evaluation: SGD steps of size "
                             "alpha on minibatches of the client's train split.", ge=1)


@dataclass(kw_only=True)
class FedRepConfig:
    head_epochs: int = _f(5, "Epochs over the client's train split that update only the "
                             "client's head (body fixed) before algorithm.local_epochs "
                             "epochs update only the body.", ge=1)
    head_lr: float = _f(0.05, "SGD learning rate of the head epochs (momentum and weight "
                              "decay as algorithm.*).", gt=0.0)


@dataclass(kw_only=True)
class FedBABUConfig:
    finetune_epochs: int = _f(5, "Personalisation before local evaluation: epochs of head "
                                 "fine-tuning on the client's train split (body fixed).",
                              ge=1)
    finetune_lr: float = _f(0.05, "SGD learning rate of the head fine-tuning (momentum as "
                                  "algorithm.momentum).", gt=0.0)


@dataclass(kw_only=True)
class FedDSNASConfig:
    lr: float = _f(0.025, "Weights: SGD learning rate (cosine schedule over run.rounds).",
                   gt=0.0)
    lr_min: float = _f(0.001, "Weights: learning rate in the last round.", ge=0.0)
    momentum: float = _f(0.9, "Weights: SGD momentum (ops not sampled in a step keep their "
                              "weights and momentum untouched).", ge=0.0, lt=1.0)
    weight_decay: float = _f(3e-4, "Weights: SGD weight decay (sampled ops only).", ge=0.0)
    grad_clip: float = _f(5.0, "Weights: gradient norm clip (0 = off).", ge=0.0)
    arch_lr: float = _f(1e-3, "Alphas: Adam learning rate of the DSNAS estimator's "
                              "gradient.", gt=0.0)
    arch_betas: list[float] = _f([0.5, 0.999], "Alphas: Adam betas.", min_len=2)
    arch_weight_decay: float = _f(1e-3, "Alphas: Adam weight decay.", ge=0.0)
    local_eval_every: int = _f(1, "Evaluate the sampled clients' argmax children on their "
                                  "eval splits every N rounds (and in the last).", ge=1)


@dataclass(kw_only=True)
class FedRLNASConfig:
    lr: float = _f(0.025, "Weights: client SGD learning rate (cosine schedule over "
                          "run.rounds).", gt=0.0)
    lr_min: float = _f(0.001, "Weights: learning rate in the last round.", ge=0.0)
    momentum: float = _f(0.9, "Weights: SGD momentum (ops off the sampled path are not "
                              "touched).", ge=0.0, lt=1.0)
    weight_decay: float = _f(3e-4, "Weights: SGD weight decay (sampled ops only).", ge=0.0)
    grad_clip: float = _f(5.0, "Weights: gradient norm clip (0 = off).", ge=0.0)
    epsilon: float = _f(0.0, "epsilon-greedy sampling: per edge, with this probability a "
                             "uniformly random op instead of a draw from softmax(alpha).",
                        ge=0.0, le=1.0)
    val_fraction: float = _f(0.2, "Fraction of each client's train split held out to "
                                  "measure the reward (the subnet's accuracy).", gt=0.0,
                             lt=1.0)
    arch_lr: float = _f(0.05, "Policy alpha: Adam learning rate of the REINFORCE ascent.",
                        gt=0.0)
    arch_betas: list[float] = _f([0.5, 0.999], "Policy alpha: Adam betas.", min_len=2)
    baseline_decay: float = _f(0.9, "Reward baseline b <- decay * b + (1 - decay) * mean "
                                    "reward of the round (started at the first round's).",
                               ge=0.0, lt=1.0)
    local_eval_every: int = _f(1, "Evaluate the clients' trained subnets on their eval "
                                  "splits every N rounds (and in the last).", ge=1)


@dataclass(kw_only=True)
class PerFedRLNASConfig:
    lr: float = _f(0.025, "Weights: client SGD learning rate (cosine schedule over "
                          "run.rounds).", gt=0.0)
    lr_min: float = _f(0.001, "Weights: learning rate in the last round.", ge=0.0)
    momentum: float = _f(0.9, "Weights: SGD momentum (ops off the sampled path are not "
                              "touched).", ge=0.0, lt=1.0)
    weight_decay: float = _f(3e-4, "Weights: SGD weight decay (sampled ops only).", ge=0.0)
    grad_clip: float = _f(5.0, "Weights: gradient norm clip (0 = off).", ge=0.0)
    epsilon: float = _f(0.0, "epsilon-greedy sampling from each client's policy (per edge).",
                        ge=0.0, le=1.0)
    val_fraction: float = _f(0.2, "Fraction of each client's train split held out to "
                                  "measure its reward.", gt=0.0, lt=1.0)
    arch_lr: float = _f(0.05, "Client policies: Adam learning rate of the REINFORCE ascent.",
                        gt=0.0)
    arch_betas: list[float] = _f([0.5, 0.999], "Client policies: Adam betas.", min_len=2)
    time_lambda: float = _f(0.01, "lambda_time of the reward acc - mean best acc - "
                                  "lambda_time * (time - fastest time of the round); time "
                                  "is the deterministic cost samples x path parameters / 1e6.",
                            ge=0.0)
    local_eval_every: int = _f(1, "Evaluate the clients' personalised subnets on their eval "
                                  "splits every N rounds (and in the last).", ge=1)


@dataclass(kw_only=True)
class FedPNASConfig:
    personal_layers: int = _f(1, "Last cells that (with the classifier) form each client's "
                                 "personalised part, with their own architecture logits; "
                                 "the rest is the shared base (also used by meta_fedpnas).",
                              ge=0)
    inner_steps: int = _f(1, "SGD steps of the personalised part on each support task.",
                          ge=1)
    inner_lr_w: float = _f(0.05, "Personalised weights: learning rate of the inner steps.",
                           gt=0.0)
    inner_lr_alpha: float = _f(0.1, "Personalised logits: learning rate of the inner steps.",
                               ge=0.0)
    lr: float = _f(0.05, "Base weights: SGD learning rate of the first-order meta step.",
                   gt=0.0)
    momentum: float = _f(0.9, "Base weights: SGD momentum.", ge=0.0, lt=1.0)
    weight_decay: float = _f(3e-4, "Base weights: SGD weight decay.", ge=0.0)
    arch_lr: float = _f(3e-3, "Base logits: Adam learning rate of the meta step.", ge=0.0)
    grad_clip: float = _f(5.0, "Gradient norm clip of both steps (0 = off).", ge=0.0)
    temperature_start: float = _f(1.0, "SNAS sampler: Gumbel-softmax temperature in round 1.",
                                  gt=0.0)
    temperature_end: float = _f(0.1, "SNAS sampler: temperature in the last round "
                                     "(exponential schedule).", gt=0.0)
    tasks_per_epoch: int = _f(0, "Support/query task pairs per local epoch; 0 = as many "
                                 "disjoint pairs as the train split holds.", ge=0)
    local_eval_every: int = _f(1, "Evaluate the clients' personalised models on their eval "
                                  "splits every N rounds (and in the last).", ge=1)


@dataclass(kw_only=True)
class AlgorithmConfig:
    name: Literal["fedavg", "fedmetanas", "fednas", "perfedavg", "fedrep", "fedbabu",
                  "feddsnas", "fedrlnas", "perfedrlnas", "fedpnas", "meta_fedpnas",
                  "meta_perfedrlnas", "random_nas"] = _f("fedavg", "Federated method.")
    local_epochs: int = _f(1, "Local epochs E per client and round (fedrep: body epochs).",
                           ge=1)
    batch_size: int = _f(32, "Local minibatch size (fedmetanas: size of a support or query "
                             "task; perfedavg: of each of the batches of one meta step).",
                         ge=1)
    lr: float = _f(0.05, "fedavg, fedrep, fedbabu: client SGD learning rate; perfedavg: the "
                         "outer (meta) step size beta.", gt=0.0)
    momentum: float = _f(0.9, "fedavg, perfedavg, fedrep, fedbabu: client SGD momentum.",
                         ge=0.0, lt=1.0)
    weight_decay: float = _f(0.0, "fedavg, perfedavg, fedrep, fedbabu: client SGD weight "
                                  "decay.", ge=0.0)
    fedmetanas: FedMetaNASConfig = field(default_factory=FedMetaNASConfig)
    fednas: FedNASConfig = field(default_factory=FedNASConfig)
    perfedavg: PerFedAvgConfig = field(default_factory=PerFedAvgConfig)
    fedrep: FedRepConfig = field(default_factory=FedRepConfig)
    fedbabu: FedBABUConfig = field(default_factory=FedBABUConfig)
    feddsnas: FedDSNASConfig = field(default_factory=FedDSNASConfig)
    fedrlnas: FedRLNASConfig = field(default_factory=FedRLNASConfig)
    perfedrlnas: PerFedRLNASConfig = field(default_factory=PerFedRLNASConfig)
    fedpnas: FedPNASConfig = field(default_factory=FedPNASConfig)
    random_nas: RandomNASConfig = field(default_factory=RandomNASConfig)


#: Methods that search an architecture (model.name: darts); the others train a fixed one.
NAS_METHODS = ("fedmetanas", "fednas", "feddsnas", "fedrlnas", "perfedrlnas", "fedpnas",
               "meta_fedpnas", "meta_perfedrlnas", "random_nas")


@dataclass(kw_only=True)
class FederationConfig:
    clients_per_round: int = _f(5, "Clients K sampled (without replacement) each round.", ge=1)


@dataclass(kw_only=True)
class RuntimeConfig:
    threads_per_rank: int = _f(
        1, "Torch intra-op threads per rank; 0 = available cores / ranks on the node. CPU "
           "kernels round differently with different thread counts, so keep it fixed (the "
           "default 1) for results that do not depend on the rank count.", ge=0)
    poll_interval_ms: float = _f(
        1.0, "Idle ranks poll MPI requests with this sleep between tests, so oversubscribed "
             "ranks do not steal cores from busy ones; 0 = block (busy-wait) in MPI.", ge=0.0)
    device: Literal["auto", "cpu", "cuda"] = _f(
        "auto", "Worker device. auto: each worker rank takes a GPU by its node-local worker "
                "index (several clients per rank share it; more workers than GPUs share them "
                "round-robin), CPU when torch sees no GPU; cuda: the same, but no GPU is an "
                "error; cpu: never a GPU. A lone rank (-n 1) runs the clients itself and takes "
                "the first GPU. Networks and client data live on the device; states and "
                "random draws stay on the CPU (same streams on any device). The mapping is "
                "logged once and stored in every checkpoint.")
    gpus: list[int] = _f([], "GPU ids the workers of a node use, in order (worker i of a node "
                             "takes gpus[i % len]); empty = every GPU torch sees.")
    server_device: Literal["cpu", "gpu"] = _f(
        "cpu", "Rank 0 (aggregation, server evaluation) on the CPU, or on the node's first "
               "GPU (-n 1: rank 0 is also the worker and uses runtime.device's choice).")
    tf32: bool = _f(False, "Let cuDNN convolutions and matrix products on GPUs use TF32 (faster "
                           "on Ampere and later, ~1e-3 relative error). false = full float32, "
                           "results comparable with CPU runs and across GPU generations.")
    transport: Literal["mpi", "torch"] = _f(
        "mpi", "How partial sums travel. mpi: contiguous host buffers over MPI (states stay on "
               "the CPU, so a CUDA-aware MPI is not needed); torch: torch.distributed initialised "
               "from MPI (rank 0 broadcasts the rendezvous address and port), NCCL between GPU "
               "ranks, gloo on CPU. Both give the same results.")


@dataclass(kw_only=True)
class KernelsConfig:
    backend: Literal["auto", "fused", "reference"] = _f(
        "auto", "Gumbel-softmax mixing: 'fused' C++/CUDA kernels (error if they cannot be "
                "loaded or built), 'reference' plain PyTorch, 'auto' fused when available, "
                "else the reference with one warning. Results agree to float rounding.")


@dataclass(kw_only=True)
class StoreConfig:
    keep: int = _f(0, "Keep only the newest N round checkpoints; 0 keeps all.", ge=0)
    tensorboard: bool = _f(False, "Rank 0 also writes every round's metrics, time components, "
                                  "architecture metrics and genotype to RUN_DIR/tensorboard "
                                  "for live watching (needs the tensorboard extra); the HDF5 "
                                  "checkpoints stay the source of truth.")


@dataclass(kw_only=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
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
            f"partition.num_clients = {m}; use a value in [1, {m}]")
    p = cfg.partition
    if p.train_size == 0 and p.eval_size > 0:
        problems.append(f"partition.eval_size = {p.eval_size}: needs partition.train_size > 0 "
                        f"(with train_size 0 the whole pool is split by "
                        f"partition.eval_fraction)")
    if p.train_size == 0 and p.overlap:
        problems.append("partition.overlap = True: only applies to fixed per-client sizes; set "
                        "partition.train_size > 0 or overlap: false")
    if cfg.data.augment and cfg.data.name not in ("cifar10", "cifar100"):
        problems.append(f"data.augment = True: crop-and-flip augmentation is for cifar10 and "
                        f"cifar100, not data.name = {cfg.data.name!r}")
    if cfg.algorithm.name in NAS_METHODS and cfg.model.name != "darts":
        problems.append(f"model.name = {cfg.model.name!r}: algorithm.name = "
                        f"{cfg.algorithm.name!r} searches an architecture; use model.name: darts")
    if cfg.algorithm.name not in NAS_METHODS and cfg.model.name not in FIXED_MODELS:
        problems.append(f"model.name = {cfg.model.name!r}: {cfg.algorithm.name} trains a fixed "
                        f"model; use model.name: {' | '.join(FIXED_MODELS)}")
    prims = cfg.model.darts.primitives
    if len(set(prims)) != len(prims):
        problems.append(f"model.darts.primitives = {prims}: an op is listed twice")
    if prims and set(prims) <= {"none"}:
        problems.append("model.darts.primitives: needs at least one op other than none")
    search = cfg.algorithm.fednas.search_rounds
    if cfg.algorithm.name == "fednas" and cfg.run.rounds < 2:
        problems.append(f"run.rounds = {cfg.run.rounds}: fednas needs at least 2 rounds (search, "
                        f"then retrain the derived network)")
    elif cfg.algorithm.name == "fednas" and search >= cfg.run.rounds:
        problems.append(f"algorithm.fednas.search_rounds = {search}: leaves no round to retrain "
                        f"(run.rounds = {cfg.run.rounds}); use a value below run.rounds, or 0 "
                        f"for half of them")
    if cfg.run.patience and not cfg.run.val_every:
        problems.append(f"run.patience = {cfg.run.patience}: early stopping reads val_acc; set "
                        f"run.val_every >= 1 (or patience: 0)")
    final = cfg.algorithm.fedmetanas.final_round
    if final > cfg.run.rounds:
        problems.append(f"algorithm.fedmetanas.final_round = {final}: after the last round "
                        f"(run.rounds = {cfg.run.rounds}); use 0 (the last) or a round <= "
                        f"{cfg.run.rounds}")
    return problems


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
        tp, getattr(tp, "__name__", str(tp)))


def _check_limits(value: Any, meta: dict, path: str) -> str | None:
    bounds = [("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
              ("le", "<=", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b)]
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


def _coerce(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    """Convert a YAML value to ``tp`` or record a problem (and return None)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, problems)
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) is type(typing.get_args(tp)[0]):
            return value
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
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            known = ", ".join(sorted(fields))
            problems.append(f"{path + '.' if path else ''}{key}: unknown key; "
                            f"known keys {'in ' + path if path else 'at the top level'}: {known}")
    kwargs = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        sub = f"{path}.{name}" if path else name
        before = len(problems)
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
    cfg = _build(Config, raw, "", problems)
    if not problems:
        problems += _cross_checks(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


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
        raise ConfigError([f"{path} is empty: a run's config names at least its method "
                           f"(algorithm.name); to run on the defaults, run "
                           f"{DEFAULTS_FILE}"])
    algorithm = raw.get("algorithm") if isinstance(raw, dict) else None
    if isinstance(raw, dict) and (algorithm is None or
                                  (isinstance(algorithm, dict) and not algorithm.get("name"))):
        raise ConfigError([f"{path} names no method (algorithm.name, after its base: files); "
                           f"a truncated or mistyped file is not run on the defaults. Add "
                           f"e.g. 'algorithm: {{name: fedavg}}', or run {DEFAULTS_FILE}"])
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
        cycle = " -> ".join(str(p) for p in (*_chain[_chain.index(key):], key))
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
        raise ConfigError([f"{path}: base = {bases!r}: expected a file name or a list of file "
                           f"names (relative to {path.parent})"])
    merged: dict = {}
    for name in bases:
        sub = load_raw(path.parent / name, (*_chain, key))
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise ConfigError([f"{path.parent / name} (base of {path}): expected a mapping of "
                               f"keys, got {sub!r}"])
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
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def result_affecting_differences(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ and that change what a run computes."""
    fa, fb = flatten(to_dict(a)), flatten(to_dict(b))
    return [k for k in fa if fa[k] != fb[k]
            and not any(k == p or (p.endswith(".") and k.startswith(p)) for p in EXECUTION_ONLY)]


def reference() -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every field; used to render the README reference."""
    rows = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            limits = [f"{s} {f.metadata[k]}" for k, s in
                      (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if k in f.metadata]
            help_ = f.metadata.get("help", "")
            if limits:
                help_ += f" ({', '.join(limits)})"
            rows.append((prefix + f.name, _type_name(tp), repr(default), help_))

    walk(Config, "")
    return rows


def _deepcopy_plain(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy_plain(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy_plain(v) for v in d]
    return d


def reference_markdown() -> str:
    """The config reference table as it appears in the README."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, tp, default, help_ in reference():
        lines.append(f"| `{key}` | {tp} | `{default}` | {help_} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown())
