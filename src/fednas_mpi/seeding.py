"""Random streams derived from (seed, round, client, purpose).

No draw in a run depends on which rank does the work or in which order
results arrive: every consumer asks for a stream named by what it is for.
The server uses ``client = SERVER`` for its own draws and ``round = SETUP`` for
draws made once before round 1 (partitioning, model initialisation).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

SERVER = -1
SETUP = -1


def _key(seed: int, round_: int, client: int, purpose: str) -> np.random.SeedSequence:
    # SeedSequence hashes its entropy words well; negative ids are shifted so
    # that SERVER/SETUP stay distinct from real round and client numbers.
    words = [
        int(seed) & 0xFFFFFFFF,
        (int(seed) >> 32) & 0xFFFFFFFF,
        int(round_) + 2,
        int(client) + 2,
        zlib.crc32(purpose.encode()),
    ]
    return np.random.SeedSequence(words)


def derive_seed(seed: int, round_: int, client: int, purpose: str) -> int:
    """A 63-bit integer seed for the stream (seed, round, client, purpose)."""
    return int(_key(seed, round_, client, purpose).generate_state(2, np.uint64)[0] >> np.uint64(1))


def numpy_rng(seed: int, round_: int, client: int, purpose: str) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(_key(seed, round_, client, purpose)))


def torch_rng(
    seed: int, round_: int, client: int, purpose: str, device: str | torch.device = "cpu"
) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, round_, client, purpose))
    return g
