"""The config of ``algorithms/common/server_opt.py`` (ServerArchConfig), torch-free so that
loading and validating a YAML imports no torch; the method code imports it from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ...config import option


@dataclass(kw_only=True)
class ServerArchConfig:
    """Where the architecture logits are optimised; a method that supports the server
    mode adds these keys to its own section by inheriting this class."""

    arch_update: Literal["client", "server"] = option(
        "client",
        "Who steps the architecture logits. client: each client update with its own "
        "optimiser (the method's arch_* keys), rebuilt every round. server: clients take "
        "plain SGD steps (client_arch_lr) and the server applies FedAdam/FedYogi (Reddi et "
        "al. 2021) to the averaged change, with moments kept across rounds in the server "
        "state (and checkpoints).",
    )
    client_arch_lr: float = option(
        0.5,
        "arch_update: server: plain SGD learning rate of the clients' steps on the "
        "logits (no momentum; the server normalises the averaged change, so this sets "
        "its scale against server_arch_tau).",
        gt=0.0,
    )
    server_arch_optimizer: Literal["adam", "yogi"] = option(
        "adam",
        "arch_update: server: FedAdam (v an exponential average of delta^2) or FedYogi "
        "(v moves additively towards delta^2, so it grows as fast but forgets slower).",
    )
    server_arch_lr: float = option(
        0.1,
        "arch_update: server: server learning rate; a logit whose averaged change keeps "
        "its sign moves by about this much per round.",
        gt=0.0,
    )
    server_arch_betas: list[float] = option(
        [0.9, 0.99],
        "arch_update: server: (b1, b2) of the server moments, each in [0, 1) (Reddi et "
        "al.: 0.9, 0.99); both bias-corrected.",
        min_len=2,
    )
    server_arch_tau: float = option(
        1e-3,
        "arch_update: server: tau, added to sqrt(v_hat): averaged changes much smaller "
        "than tau count as noise (Reddi et al.: about 1e-3).",
        gt=0.0,
    )

    def server_arch_problems(self, section: str) -> list[str]:
        """Problems of these keys, named under ``section`` (e.g. algorithm.fednas)."""
        betas = self.server_arch_betas
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            return [f"{section}.server_arch_betas = {betas}: expected two numbers in [0, 1)"]
        return []
