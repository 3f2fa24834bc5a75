"""Annealing of the Gumbel-softmax temperature lambda over rounds."""

from __future__ import annotations


def temperature_at(
    round_: int, rounds: int, start: float, end: float, schedule: str, floor: float
) -> float:
    """lambda for a 0-based round: ``start`` at round 0, ``end`` at the last, never below
    ``floor``. linear: straight line; exponential: start * (end/start)^(r/(R-1))."""
    t = 0.0 if rounds <= 1 else min(max(round_ / (rounds - 1), 0.0), 1.0)
    if schedule == "linear":
        lam = start + (end - start) * t
    elif schedule == "exponential":
        lam = start * (end / start) ** t
    elif schedule == "constant":
        lam = start
    else:
        raise ValueError(f"unknown temperature schedule {schedule!r}")
    return max(lam, floor)
