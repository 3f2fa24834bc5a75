"""Training a fixed (derived or drawn) network's weights with the evaluation recipe, and
the option of a single-stage search to train its derived network that way.

The recipe is how every genotype is retrained when a search is judged
(``random_nas``, ``bench/search_quality.py``), after DARTS's evaluation phase: per
client and round, plain SGD with momentum and weight decay over the client's whole
train split, in minibatches of ``algorithm.batch_size`` with the client's augmentation,
for ``algorithm.local_epochs`` epochs; the learning rate follows a cosine over the
rounds of the stage; the optimiser is rebuilt every round (FedAvg of the weights).

In a derived network every mixing weight is exactly 1 (one op per edge, one input
combination per node), so its logits are fixed data: only the weights train.
"""

from __future__ import annotations

import torch

from ..base import ClientData
from .training import client_epochs


def recipe_epochs(
    net,
    data: ClientData,
    lr: float,
    momentum: float,
    weight_decay: float,
    batch_size: int,
    epochs: int,
    generator: torch.Generator,
) -> float:
    """The recipe's client update of a fixed network ``net`` (a ``SearchNetwork``): SGD on
    its weights only, deterministic mixing (no Gumbel noise), in place; the mean
    training loss. ``generator`` draws the shuffles and the augmentation."""
    net.set_sampling(1.0, None)
    opt = torch.optim.SGD(
        net.weight_parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    return client_epochs(net, data, opt, batch_size, epochs, generator)
