"""FedMetaNAS's schedules: the temperature anneals over the search rounds; stages."""

import pytest

from fednas_mpi.algorithms import DataInfo
from fednas_mpi.algorithms.fedmetanas import FedMetaNAS
from fednas_mpi.config import from_dict


def _algo(**fm):
    cfg = from_dict(
        {
            "run": {"rounds": 10},
            "model": {"name": "darts"},
            "algorithm": {"name": "fedmetanas", "fedmetanas": fm},
        }
    )
    return FedMetaNAS(cfg, DataInfo((1, 8, 8), 10))


def test_temperature_reaches_its_end_at_the_final_derivation_and_stays():
    a = _algo(temperature_start=1.0, temperature_end=0.04, final_round=6)
    assert a.search_rounds == 6
    assert a.temperature(0) == pytest.approx(1.0)
    assert a.temperature(5) == pytest.approx(0.04)
    assert a.temperature(9) == pytest.approx(0.04)
    assert all(a.temperature(r) > a.temperature(r + 1) for r in range(5))
    # without final_round the search is the whole run
    b = _algo(temperature_start=1.0, temperature_end=0.04)
    assert b.search_rounds == 10 and b.temperature(9) == pytest.approx(0.04)


def test_pruning_rounds_start_after_the_warm_up_and_prune_start():
    f = _algo(prune_start=2, prune_every=2, arch_warmup_rounds=3).cfg.algorithm.fedmetanas
    assert [d for d in range(1, 11) if f.prunes_after(d)] == [4, 6, 8, 10]
    f = _algo(prune_start=5, prune_every=1).cfg.algorithm.fedmetanas
    assert [d for d in range(1, 8) if f.prunes_after(d)] == [5, 6, 7]
    assert not any(
        _algo(prune_every=0).cfg.algorithm.fedmetanas.prunes_after(d) for d in range(1, 11)
    )


def test_stages_name_the_search_and_the_rounds_after_the_derivation():
    assert [_algo().stage(r) for r in (0, 9)] == ["search", "search"]
    a = _algo(final_round=8)
    assert [a.stage(r) for r in (6, 7, 8, 9)] == ["search", "search", "derived", "derived"]


def test_settle_window_prunes_every_round_with_shrinking_gaps():
    a = _algo(
        final_round=10,
        settle_rounds=3,
        prune_every=4,
        prune_start=1,
        arch_warmup_rounds=2,
        prune_gap=2.0,
        combo_prune_gap=1.0,
    )
    gaps = {r + 1: a.prune_gaps(r) for r in range(10)}
    assert gaps[1] is None and gaps[2] is None  # warm-up
    assert gaps[3] == (2.0, 1.0)  # first pruning round after the warm-up (every 4)
    assert gaps[4] is None and gaps[5] is None and gaps[6] is None
    # rounds 7, 8, 9 settle: 3/4, 2/4, 1/4 of the gaps; round 10 derives (no pruning)
    assert gaps[7] == pytest.approx((1.5, 0.75)) and gaps[9] == pytest.approx((0.5, 0.25))
    assert gaps[8] == pytest.approx((1.0, 0.5)) and gaps[10] is None
    assert _algo(final_round=10, settle_rounds=0, prune_every=0).prune_gaps(8) is None
