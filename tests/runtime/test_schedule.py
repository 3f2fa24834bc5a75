"""Client sampling per round and longest-processing-time assignment to workers."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from fednas_mpi.runtime.schedule import assign, loads, sample_clients

# ---------------------------------------------------------------- sample_clients


@pytest.mark.parametrize(("m", "k"), [(10, 5), (20, 1), (7, 7), (100, 13)])
def test_sample_is_k_distinct_sorted_ids_in_range(m, k):
    for r in range(1, 6):
        s = sample_clients(3, r, m, k)
        assert len(s) == k
        assert len(set(s)) == k
        assert s == sorted(s)
        assert all(type(c) is int and 0 <= c < m for c in s)


def test_sample_all_clients():
    assert sample_clients(0, 1, 6, 6) == [0, 1, 2, 3, 4, 5]


def test_sample_is_deterministic_in_seed_and_round():
    a = [sample_clients(42, r, 50, 8) for r in range(1, 11)]
    # asked in another order, interleaved with other seeds: same answers
    b = {}
    for r in reversed(range(1, 11)):
        sample_clients(7, r, 50, 8)
        b[r] = sample_clients(42, r, 50, 8)
    assert a == [b[r] for r in range(1, 11)]


def test_sample_does_not_depend_on_global_random_state():
    before = sample_clients(5, 3, 40, 6)
    np.random.seed(123)
    np.random.rand(10)
    torch.manual_seed(99)
    torch.rand(10)
    random.seed(7)
    assert sample_clients(5, 3, 40, 6) == before
    np.random.seed(0)
    torch.manual_seed(0)
    assert sample_clients(5, 3, 40, 6) == before


def test_sample_does_not_consume_global_random_state():
    np.random.seed(11)
    torch.manual_seed(11)
    sample_clients(1, 1, 30, 5)
    a, b = np.random.rand(), torch.rand(1).item()
    np.random.seed(11)
    torch.manual_seed(11)
    assert (np.random.rand(), torch.rand(1).item()) == (a, b)


def test_sample_differs_across_rounds_and_seeds():
    rounds = [tuple(sample_clients(0, r, 100, 10)) for r in range(1, 21)]
    assert len(set(rounds)) == 20
    seeds = [tuple(sample_clients(s, 1, 100, 10)) for s in range(20)]
    assert len(set(seeds)) == 20


def test_sample_covers_clients_over_many_rounds():
    # no client is systematically left out: with 10 of 20 per round for 60 rounds,
    # each client is picked about 30 times
    counts = np.zeros(20, dtype=int)
    for r in range(1, 61):
        counts[sample_clients(9, r, 20, 10)] += 1
    assert counts.sum() == 600
    assert counts.min() >= 15 and counts.max() <= 45


# ---------------------------------------------------------------- assign


def check_assignment(out, clients, num_workers):
    assert len(out) == num_workers
    flat = [c for cs in out for c in cs]
    assert sorted(flat) == sorted(clients)  # each client exactly once
    for cs in out:
        assert cs == sorted(cs)
        assert all(type(c) is int for c in cs)


def test_hand_worked_example_positional():
    # heaviest first: 0(5) 1(4) 2(3) 3(3) 4(3); loads (w0, w1):
    # 0 -> w0 (5, 0); 1 -> w1 (5, 4); 2 -> w1 (5, 7); 3 -> w0 (8, 7); 4 -> w1 (8, 10)
    out = assign([0, 1, 2, 3, 4], [5, 4, 3, 3, 3], 2)
    assert out == [[0, 3], [1, 2, 4]]
    assert loads(out, np.array([5, 4, 3, 3, 3])) == [8.0, 10.0]


def test_hand_worked_example_with_ids_and_ties():
    # work is given per position; ties in work go to the lower client id:
    # order 2(5) 4(4) 1(3) 7(3) 9(3)
    # 2 -> w0 (5, 0); 4 -> w1 (5, 4); 1 -> w1 (5, 7); 7 -> w0 (8, 7); 9 -> w1 (8, 10)
    out = assign([7, 2, 9, 4, 1], [3, 5, 3, 4, 3], 2)
    assert out == [[2, 7], [1, 4, 9]]


def test_equal_loads_go_to_the_lower_worker():
    # 0(2) -> w0; 1(2) -> w1; loads tie at 2: 2(1) -> w0; 3(1) -> w1
    assert assign([0, 1, 2, 3], [2, 2, 1, 1], 2) == [[0, 2], [1, 3]]
    # all equal work on 3 workers: round robin by id
    assert assign([5, 3, 1, 4, 2, 0], [1.0] * 6, 3) == [[0, 3], [1, 4], [2, 5]]


def test_hand_worked_example_three_workers():
    # order 10(7) 11(6) 12(5) 13(4) 14(3) 15(2) 16(2)
    # 10 -> w0 (7,0,0); 11 -> w1 (7,6,0); 12 -> w2 (7,6,5); 13 -> w2 (7,6,9);
    # 14 -> w1 (7,9,9); 15 -> w0 (9,9,9); 16 -> w0 (11,9,9)
    out = assign([10, 11, 12, 13, 14, 15, 16], [7, 6, 5, 4, 3, 2, 2], 3)
    assert out == [[10, 15, 16], [11, 14], [12, 13]]


def test_single_worker_gets_everything_sorted():
    assert assign([9, 3, 5], [1, 2, 3], 1) == [[3, 5, 9]]


def test_more_workers_than_clients_leaves_idle_workers():
    out = assign([4, 8], [1.0, 3.0], 5)
    # 8 (heavier) -> w0, 4 -> w1, the rest idle
    assert out == [[8], [4], [], [], []]


def test_no_clients():
    assert assign([], [], 3) == [[], [], []]


def test_needs_a_worker():
    with pytest.raises(ValueError):
        assign([1, 2], [1, 1], 0)


def test_accepts_numpy_inputs():
    clients = np.array([3, 1, 2], dtype=np.int64)
    work = np.array([1.0, 2.0, 3.0])
    out = assign(clients, work, 2)
    assert out == [[2], [1, 3]]
    assert all(type(c) is int for cs in out for c in cs)


@pytest.mark.parametrize("trial", range(25))
def test_lpt_bound_and_determinism_on_random_inputs(trial):
    rng = np.random.default_rng(trial)
    n = int(rng.integers(1, 40))
    w = int(rng.integers(1, 9))
    clients = sorted(rng.choice(1000, size=n, replace=False).tolist())
    rng.shuffle(clients)
    work = rng.exponential(10.0, size=n).round(1).tolist()
    if trial % 3 == 0:
        work = rng.integers(1, 4, size=n).astype(float).tolist()  # many ties
    out = assign(clients, work, w)
    check_assignment(out, clients, w)
    assert assign(clients, work, w) == out
    work_of = dict(zip(clients, work, strict=True))
    per_worker = [sum(work_of[c] for c in cs) for cs in out]
    total, biggest = sum(work), max(work)
    assert max(per_worker) <= total / w + biggest + 1e-9


def test_loads_sums_work_by_client_id():
    work_of = np.array([0.0, 1.5, 2.0, 4.0])
    assert loads([[1, 3], [], [2]], work_of) == [5.5, 0.0, 2.0]


# ---------------------------------------------------------------- early stopping, subsets


def test_patience_counts_validations_in_the_last_stoppable_stretch_only():
    from fednas_mpi.runtime.schedule import patience_exhausted

    nan = float("nan")
    vals = [0.9, 0.95, 0.2, 0.3, 0.4, 0.35, 0.38]
    # rounds 0-1 cannot stop (search, however good their values); from round 2 on the
    # best is 0.4 (round 4), followed by two validations without beating it
    can = [False, False, True, True, True, True, True]
    assert not patience_exhausted(vals, can, 3)
    assert patience_exhausted(vals, can, 2)
    assert not patience_exhausted(vals[:6], can[:6], 2)
    # rounds without a validation (NaN) do not count; ties do not reset the count
    assert patience_exhausted([0.5, nan, 0.5, nan, 0.5], [True] * 5, 2)
    assert not patience_exhausted([0.5, nan, 0.6, nan], [True] * 4, 1)
    # patience 0 never stops, nor does a round that cannot stop
    assert not patience_exhausted(vals, can, 0)
    assert not patience_exhausted(vals, can[:-1] + [False], 1)


def test_eval_subset_is_fixed_sorted_and_whole_when_off():
    from fednas_mpi.runtime.schedule import eval_subset

    a, b = eval_subset(1000, 100), eval_subset(1000, 100)
    assert a is not None and len(a) == 100 == len(set(a.tolist()))
    assert (a == b).all() and (np.diff(a) > 0).all() and a.max() < 1000
    assert eval_subset(1000, 0) is None and eval_subset(50, 100) is None


def test_test_subset_is_the_test_set_of_every_evaluation(tmp_path):
    """run.test_subset fixes the server test set for every evaluation, the last round and
    the eval_subset rounds included (eval_subset drawn from it); 0 keeps the whole set."""
    import torch
    from mpi4py import MPI

    from fednas_mpi.algorithms import Algorithm, ClientResult, DataInfo, GlobalModel
    from fednas_mpi.config import from_dict
    from fednas_mpi.data import Dataset, make_partition
    from fednas_mpi.runtime.schedule import eval_subset
    from fednas_mpi.runtime.simulation import Simulation

    seen: list[list[int]] = []

    class Probe(Algorithm):
        name = "probe"
        client_metrics = ()

        def init_global(self):
            return GlobalModel({}, {"w": torch.zeros(1, dtype=torch.float64)})

        def client_update(self, model, data, ctx, client_state):
            return ClientResult({"w": model.state["w"]}, float(data.num_train), {})

        def server_step(self, model, averaged, metrics, ctx):
            return GlobalModel(model.spec, averaged)

        def evaluate(self, model, x, y):
            if len(y) and bool((x == 1).all()):  # the server test set (clients: zeros)
                seen.append(y.tolist())
            return 0.0, 0.5

    def run(test_subset, eval_subset_size, out):
        seen.clear()
        cfg = from_dict(
            {
                "run": {
                    "seed": 1,
                    "rounds": 2,
                    "test_subset": test_subset,
                    "eval_subset": eval_subset_size,
                },
                "partition": {"num_clients": 4, "min_train": 4},
                "federation": {"clients_per_round": 2},
            }
        )
        x = torch.zeros(120, 1, 4, 4)
        y = torch.arange(120) % 3
        test_y = torch.arange(50)  # labels = indices: what was evaluated is readable
        dataset = Dataset("synthetic", x, y, torch.ones(50, 1, 4, 4), test_y, num_classes=50)
        partition = make_partition(y.numpy(), cfg.partition, cfg.run.seed)
        sim = Simulation(
            cfg, MPI.COMM_SELF, dataset, partition, Probe(cfg, DataInfo((1, 4, 4), 50))
        )
        sim.serve(out)
        return [list(s) for s in seen]

    whole = run(0, 0, tmp_path / "a")
    assert whole == [list(range(50))] * 2
    fixed = run(20, 0, tmp_path / "b")
    keep = eval_subset(50, 20, "test_subset").tolist()
    assert fixed == [keep] * 2 and len(keep) == 20 and keep != list(range(20))
    both = run(20, 8, tmp_path / "c")
    sub = [keep[i] for i in eval_subset(20, 8)]
    assert both == [sub, keep]  # round 1 on the eval subset of the fixed set, the last on it
