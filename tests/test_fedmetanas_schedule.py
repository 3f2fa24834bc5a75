"""FedMetaNAS's schedules: temperature over the anneal span, pruning thresholds after it."""

import pytest

from fednas_mpi.algorithms import DataInfo
from fednas_mpi.algorithms.fedmetanas import FedMetaNAS
from fednas_mpi.config import from_dict


def _algo(**fm):
    cfg = from_dict({"run": {"rounds": 10}, "model": {"name": "darts"},
                     "algorithm": {"name": "fedmetanas", "fedmetanas": {
                         "anneal_fraction": 0.6, "op_threshold": 0.05, "combo_threshold": 0.1,
                         "settle_threshold": 0.5, **fm}}})
    return FedMetaNAS(cfg, DataInfo((1, 8, 8), 10))


def test_temperature_reaches_its_end_at_the_anneal_span_and_stays():
    a = _algo(temperature_start=1.0, temperature_end=0.04)
    assert a.anneal_span == 6
    assert a.temperature(0) == pytest.approx(1.0)
    assert a.temperature(5) == pytest.approx(0.04)
    assert a.temperature(9) == pytest.approx(0.04)
    assert all(a.temperature(r) > a.temperature(r + 1) for r in range(5))


def test_thresholds_rise_linearly_from_the_anneal_span_to_the_final_round():
    a = _algo()
    for r in range(6):  # rounds 0..5 anneal (span 6): configured thresholds
        assert a.thresholds(r) == (0.05, 0.1)
    # rounds 6..9 settle; the final round (index 9) reaches the settle threshold
    assert a.thresholds(9) == pytest.approx((0.5, 0.5))
    assert a.thresholds(7) == pytest.approx((0.05 + 0.45 * 2 / 4, 0.1 + 0.4 * 2 / 4))


def test_thresholds_with_an_earlier_final_round_and_no_settle_phase():
    a = _algo(final_round=8)
    assert a.thresholds(7) == pytest.approx((0.5, 0.5))  # 1-based round 8 is index 7
    b = _algo(anneal_fraction=1.0)
    assert all(b.thresholds(r) == (0.05, 0.1) for r in range(10))


def test_stages_name_the_search_and_the_rounds_after_the_derivation():
    assert [_algo().stage(r) for r in (0, 9)] == ["search", "search"]
    a = _algo(final_round=8)
    assert [a.stage(r) for r in (6, 7, 8, 9)] == ["search", "search", "derived", "derived"]
