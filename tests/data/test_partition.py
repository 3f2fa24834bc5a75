"""Client partitions (IID, Dirichlet, label skew; whole pool or fixed sizes) and digits."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from fednas_mpi.config import ConfigError, DataConfig, PartitionConfig, from_dict
from fednas_mpi.data import (
    DataError,
    Partition,
    dataset_and_partition,
    load_dataset,
    make_partition,
)
from fednas_mpi.data.partition import (
    apportion,
    choose_classes,
    draw_counts,
    stratified_eval_split,
)

# 403 synthetic labels over 5 classes, in a fixed shuffled order.
CLASS_COUNTS = [40, 61, 80, 101, 121]
SYNTH = np.random.default_rng(123).permutation(np.repeat(np.arange(5), CLASS_COUNTS))

# scikit-learn's digits: images per class, and the server test set per class,
# round(0.2 * count) worked out by hand (178 * 0.2 = 35.6 -> 36, 177 * 0.2 = 35.4 -> 35, ...).
DIGITS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
DIGITS_TEST_COUNTS = [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]


def pcfg(**kw) -> PartitionConfig:
    base = dict(num_clients=8, alpha=0.5, eval_fraction=0.25, min_train=8)
    base.update(kw)
    return PartitionConfig(**base)


def check_partition(
    part: Partition, labels: np.ndarray, cfg: PartitionConfig, num: int, den: int
) -> None:
    """Every invariant of a partition; ``eval_fraction == num / den`` exactly."""
    assert cfg.eval_fraction == num / den
    n = len(labels)
    assert len(part.clients) == cfg.num_clients
    assert part.num_classes == int(labels.max()) + 1
    everything = np.concatenate([np.concatenate([c.train, c.eval]) for c in part.clients])
    # disjoint (no index twice) and covering (every index once)
    assert len(everything) == n
    assert np.array_equal(np.sort(everything), np.arange(n))
    for c in part.clients:
        assert np.issubdtype(c.train.dtype, np.integer)
        assert np.array_equal(c.train, np.sort(c.train))
        assert np.array_equal(c.eval, np.sort(c.eval))
        assert len(c.train) >= cfg.min_train
        # eval follows the client's own label distribution: floor(fraction * count) per class
        whole = Counter(labels[np.concatenate([c.train, c.eval])].tolist())
        held = Counter(labels[c.eval].tolist())
        for cls, count in whole.items():
            assert held[cls] == (count * num) // den, (cls, count, held[cls])
        assert set(held) <= set(whole)


def mean_max_share(part: Partition, labels: np.ndarray) -> float:
    shares = []
    for c in part.clients:
        ys = labels[np.concatenate([c.train, c.eval])]
        shares.append(np.bincount(ys).max() / len(ys))
    return float(np.mean(shares))


def same(a: Partition, b: Partition) -> bool:
    return all(
        np.array_equal(x.train, y.train) and np.array_equal(x.eval, y.eval)
        for x, y in zip(a.clients, b.clients, strict=True)
    )


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(), 0)


# ---------------------------------------------------------------- synthetic labels


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_partition_invariants_synthetic(scheme, seed):
    cfg = pcfg(scheme=scheme)
    part = make_partition(SYNTH, cfg, seed)
    check_partition(part, SYNTH, cfg, 1, 4)


def test_iid_sizes_differ_by_at_most_one_before_eval_split():
    part = make_partition(SYNTH, pcfg(scheme="iid"), 3)
    sizes = sorted(len(c.train) + len(c.eval) for c in part.clients)
    # 403 = 3 * 51 + 5 * 50
    assert sizes == [50] * 5 + [51] * 3


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_same_seed_same_partition_other_seed_different(scheme):
    cfg = pcfg(scheme=scheme)
    a, b, c = (make_partition(SYNTH, cfg, s) for s in (11, 11, 12))
    assert same(a, b)
    assert not same(a, c)


def test_iid_and_dirichlet_differ_for_the_same_seed():
    a = make_partition(SYNTH, pcfg(scheme="iid"), 5)
    b = make_partition(SYNTH, pcfg(scheme="dirichlet"), 5)
    assert not same(a, b)


def test_small_alpha_is_much_more_skewed_than_iid():
    iid = make_partition(SYNTH, pcfg(scheme="iid"), 1)
    skewed = make_partition(SYNTH, pcfg(scheme="dirichlet", alpha=0.1), 1)
    check_partition(skewed, SYNTH, pcfg(alpha=0.1), 1, 4)
    s_iid, s_dir = mean_max_share(iid, SYNTH), mean_max_share(skewed, SYNTH)
    # IID shares track the global mix (largest class 121 / 403 = 0.30)
    assert s_iid < 0.45
    assert s_dir > 0.6
    assert s_dir > s_iid + 0.25


def test_zero_eval_fraction_keeps_everything_for_training():
    cfg = pcfg(scheme="dirichlet", eval_fraction=0.0)
    part = make_partition(SYNTH, cfg, 2)
    check_partition(part, SYNTH, cfg, 0, 1)
    assert all(len(c.eval) == 0 for c in part.clients)
    assert part.train_sizes().sum() == len(SYNTH)


def test_train_sizes():
    part = make_partition(SYNTH, pcfg(scheme="dirichlet"), 4)
    sizes = part.train_sizes()
    assert sizes.dtype == np.int64
    assert sizes.tolist() == [len(c.train) for c in part.clients]


@pytest.mark.parametrize("split", ["train", "eval"])
def test_histograms_match_a_hand_count(split):
    part = make_partition(SYNTH, pcfg(scheme="dirichlet"), 6)
    hist = part.histograms(SYNTH, split)
    assert hist.shape == (8, 5)
    for k, c in enumerate(part.clients):
        idx = getattr(c, split)
        for cls in range(5):
            assert hist[k, cls] == sum(1 for i in idx if SYNTH[i] == cls)
    total = part.histograms(SYNTH, "train") + part.histograms(SYNTH, "eval")
    assert total.sum(axis=0).tolist() == CLASS_COUNTS


def test_histograms_default_to_train():
    part = make_partition(SYNTH, pcfg(scheme="iid"), 6)
    assert np.array_equal(part.histograms(SYNTH), part.histograms(SYNTH, "train"))


def test_histograms_count_classes_a_client_lacks_as_zero():
    labels = np.array([0, 0, 0, 0, 2, 2, 2, 2])
    part = Partition(
        [
            stratified_eval_split(np.array([0, 1, 2, 3]), labels, 0.0, None),
            stratified_eval_split(np.array([4, 5, 6, 7]), labels, 0.0, None),
        ],
        num_classes=3,
    )
    assert part.histograms(labels).tolist() == [[4, 0, 0], [0, 0, 4]]


def test_stratified_eval_split_rounds_down_per_class():
    labels = np.array([0] * 7 + [1] * 3 + [2] * 1)
    split = stratified_eval_split(np.arange(11), labels, 0.3, np.random.default_rng(0))
    # floor(0.3 * 7) = 2, floor(0.3 * 3) = 0 (0.3 * 3 = 0.8999...), floor(0.3 * 1) = 0
    assert np.bincount(labels[split.eval], minlength=3).tolist() == [2, 0, 0]
    assert np.bincount(labels[split.train], minlength=3).tolist() == [5, 3, 1]


def test_stratified_eval_split_of_an_empty_share():
    # A Dirichlet draw can leave a client with no samples at all; its split is empty.
    labels = np.array([0, 1, 1])
    split = stratified_eval_split(
        np.empty(0, dtype=np.int64), labels, 0.2, np.random.default_rng(0)
    )
    assert len(split.train) == 0
    assert len(split.eval) == 0


def test_dirichlet_draw_with_an_empty_client_is_redrawn():
    # With alpha = 0.1 and seed 2, a draw gives one client no samples at all; such a
    # draw fails min_train and must be redrawn, not crash.
    cfg = pcfg(scheme="dirichlet", alpha=0.1)
    part = make_partition(SYNTH, cfg, 2)
    check_partition(part, SYNTH, cfg, 1, 4)


@pytest.mark.parametrize(
    ("n", "kw"),
    [
        (100, dict(num_clients=10, min_train=9, eval_fraction=0.2)),  # 90 > 80
        (100, dict(num_clients=11, min_train=10, eval_fraction=0.0)),  # 110 > 100
        (40, dict(num_clients=8, min_train=8, eval_fraction=0.25)),  # 64 > 30
    ],
)
@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_infeasible_request_raises_naming_min_train(n, kw, scheme):
    labels = np.arange(n) % 5
    with pytest.raises(DataError) as info:
        make_partition(labels, PartitionConfig(scheme=scheme, **kw), 0)
    msg = str(info.value)
    assert "partition.min_train" in msg
    assert str(kw["num_clients"] * kw["min_train"]) in msg
    assert str(n) in msg


def test_feasibility_boundary_is_accepted():
    # 10 clients x 8 = 80 = 100 * (1 - 0.2): exactly enough
    labels = np.arange(100) % 5
    cfg = PartitionConfig(scheme="iid", num_clients=10, min_train=8, eval_fraction=0.2)
    part = make_partition(labels, cfg, 0)
    check_partition(part, labels, cfg, 1, 5)


def test_dirichlet_that_never_satisfies_min_train_raises():
    # feasible on paper (4 x 20 = 80 <= 100) but a tiny alpha puts nearly each class
    # on one client, so with 2 classes at most 2 clients get data
    labels = np.arange(100) % 2
    cfg = PartitionConfig(
        scheme="dirichlet", alpha=1e-4, num_clients=4, min_train=20, eval_fraction=0.0
    )
    with pytest.raises(DataError) as info:
        make_partition(labels, cfg, 0, max_tries=5)
    assert "partition.min_train" in str(info.value)
    assert "5 tries" in str(info.value)


# ---------------------------------------------------------------- digits


def test_digits_shapes_and_types(digits):
    assert digits.name == "digits"
    assert digits.num_classes == 10
    assert digits.input_shape == (1, 8, 8)
    assert digits.train_x.dtype == torch.float32 and digits.test_x.dtype == torch.float32
    assert digits.train_y.dtype == torch.int64 and digits.test_y.dtype == torch.int64
    assert len(digits.train_x) == len(digits.train_y) == 1797 - sum(DIGITS_TEST_COUNTS)
    assert len(digits.test_x) == len(digits.test_y) == sum(DIGITS_TEST_COUNTS)


def test_digits_test_set_size_per_class(digits):
    assert np.bincount(load_digits().target).tolist() == DIGITS_COUNTS
    assert [max(1, round(0.2 * c)) for c in DIGITS_COUNTS] == DIGITS_TEST_COUNTS
    assert np.bincount(digits.test_y.numpy(), minlength=10).tolist() == DIGITS_TEST_COUNTS
    train_counts = np.bincount(digits.train_y.numpy(), minlength=10).tolist()
    assert train_counts == [a - b for a, b in zip(DIGITS_COUNTS, DIGITS_TEST_COUNTS, strict=True)]


def test_digits_train_pool_is_normalised(digits):
    x = digits.train_x.numpy().astype(np.float64)
    assert abs(x.mean()) < 1e-5
    assert abs(x.std() - 1.0) < 1e-5
    # the test set uses the same (train) statistics, so it is only roughly normalised
    xt = digits.test_x.numpy().astype(np.float64)
    assert abs(xt.mean()) < 0.1
    assert abs(xt.std() - 1.0) < 0.1


def _original_rows(ds) -> tuple[list[bytes], list[bytes]]:
    """Undo the normalisation and return each image (pixel values 0..16) as bytes + label."""
    x = torch.cat([ds.train_x, ds.test_x]).numpy().astype(np.float64)
    lo, hi = x.min(), x.max()  # the images of pixel value 0 and 16 (both occur in digits)
    pixels = (x - lo) / (hi - lo) * 16.0
    ints = np.rint(pixels)
    assert np.abs(pixels - ints).max() < 1e-3  # one affine map for train and test alike
    ints = ints.astype(np.uint8).reshape(len(x), 64)
    y = torch.cat([ds.train_y, ds.test_y]).numpy()
    rows = [bytes([int(lab)]) + r.tobytes() for lab, r in zip(y, ints, strict=True)]
    n = len(ds.train_x)
    return rows[:n], rows[n:]


def test_digits_test_set_is_disjoint_from_train_pool(digits):
    bunch = load_digits()
    originals = [
        bytes([int(lab)]) + img.astype(np.uint8).reshape(64).tobytes()
        for lab, img in zip(bunch.target, bunch.images, strict=True)
    ]
    assert len(set(originals)) == 1797  # no duplicate images, so bytes identify an image
    train, test = _original_rows(digits)
    assert set(train).isdisjoint(test)
    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    assert set(train) | set(test) == set(originals)


def test_digits_holdout_depends_on_seed(digits):
    again = load_dataset(DataConfig(), 0)
    assert torch.equal(again.test_x, digits.test_x)
    assert torch.equal(again.train_y, digits.train_y)
    other = load_dataset(DataConfig(), 1)
    assert not torch.equal(other.test_x, digits.test_x)
    # per-class sizes do not depend on the seed
    assert np.bincount(other.test_y.numpy()).tolist() == DIGITS_TEST_COUNTS


def test_digits_test_fraction():
    ds = load_dataset(DataConfig(test_fraction=0.5), 0)
    # round(0.5 * count) for even counts is count / 2; 177, 183, 181, 181, 179 are odd and
    # round half to even: 88.5 -> 88, 91.5 -> 92, 90.5 -> 90, 90.5 -> 90, 89.5 -> 90
    expected = [89, 91, 88, 92, 90, 91, 90, 90, 87, 90]
    assert np.bincount(ds.test_y.numpy()).tolist() == expected


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
@pytest.mark.parametrize("seed", [0, 3])
def test_partition_invariants_digits(digits, scheme, seed):
    labels = digits.train_y.numpy()
    cfg = PartitionConfig(scheme=scheme)  # 10 clients, alpha 0.5, eval 0.2, min_train 8
    part = make_partition(labels, cfg, seed)
    check_partition(part, labels, cfg, 1, 5)
    assert same(part, make_partition(labels, cfg, seed))
    assert not same(part, make_partition(labels, cfg, seed + 100))


def test_iid_sizes_digits(digits):
    labels = digits.train_y.numpy()
    part = make_partition(labels, PartitionConfig(scheme="iid", num_clients=20), 0)
    sizes = [len(c.train) + len(c.eval) for c in part.clients]
    # 1438 = 20 * 71 + 18: 18 clients of 72, 2 of 71
    assert sorted(sizes) == [71] * 2 + [72] * 18


def test_small_alpha_skew_digits(digits):
    labels = digits.train_y.numpy()
    iid = make_partition(labels, PartitionConfig(scheme="iid"), 1)
    skewed_cfg = PartitionConfig(scheme="dirichlet", alpha=0.1)
    skewed = make_partition(labels, skewed_cfg, 1)
    check_partition(skewed, labels, skewed_cfg, 1, 5)
    s_iid, s_dir = mean_max_share(iid, labels), mean_max_share(skewed, labels)
    assert s_iid < 0.2  # ten balanced classes: about 0.1 each
    assert s_dir > 0.4
    assert s_dir > 3 * s_iid


def test_small_alpha_digits_seed_with_empty_client(digits):
    # seed 0 hits a draw where a client gets no digits at all; it must be redrawn
    labels = digits.train_y.numpy()
    cfg = PartitionConfig(scheme="dirichlet", alpha=0.1)
    part = make_partition(labels, cfg, 0)
    check_partition(part, labels, cfg, 1, 5)


def test_infeasible_digits_raises(digits):
    labels = digits.train_y.numpy()
    # 1438 * 0.8 = 1150 training samples at most; 100 x 12 = 1200 asked for
    cfg = PartitionConfig(num_clients=100, min_train=12)
    with pytest.raises(DataError, match=r"partition\.min_train"):
        make_partition(labels, cfg, 0)


# ---------------------------------------------------------------- label skew, whole pool


@pytest.mark.parametrize("seed", [0, 5])
def test_label_skew_whole_pool_invariants(seed):
    cfg = pcfg(scheme="label_skew", tau=2)
    part = make_partition(SYNTH, cfg, seed)
    check_partition(part, SYNTH, cfg, 1, 4)  # 8 clients x 2 classes cover all 5 classes
    for c in part.clients:
        assert len(np.unique(SYNTH[np.concatenate([c.train, c.eval])])) == 2


def test_label_skew_whole_pool_shares_a_class_equally():
    part = make_partition(SYNTH, pcfg(scheme="label_skew", tau=2, eval_fraction=0.0), 1)
    hist = part.histograms(SYNTH)
    for cls in range(5):
        counts = hist[:, cls][hist[:, cls] > 0]
        assert counts.max() - counts.min() <= 1  # np.array_split among its holders


def test_label_skew_that_never_satisfies_min_train_raises():
    # 40 clients x 1 class over 5 classes: class 0 (40 images) is cut 8 ways = 5 each
    cfg = PartitionConfig(
        scheme="label_skew", tau=1, num_clients=40, min_train=6, eval_fraction=0.0
    )
    with pytest.raises(DataError) as info:
        make_partition(SYNTH, cfg, 0, max_tries=3)
    assert "label_skew (tau=1)" in str(info.value) and "partition.min_train" in str(info.value)


# ---------------------------------------------------------------- fixed sizes

# 10 classes x 300 images, shuffled
BIG = np.random.default_rng(7).permutation(np.repeat(np.arange(10), 300))


def fixed(scheme: str, **kw) -> PartitionConfig:
    base = dict(scheme=scheme, num_clients=8, train_size=60, eval_size=30, alpha=0.3, tau=4)
    base.update(kw)
    return PartitionConfig(**base)


def replace_cfg(cfg: PartitionConfig, **kw) -> PartitionConfig:
    return dataclasses.replace(cfg, **kw)


def check_fixed(part: Partition, labels: np.ndarray, cfg: PartitionConfig) -> None:
    """Exact sizes, sorted integer indices, train and eval disjoint within every client,
    and disjoint across clients unless cfg.overlap."""
    assert len(part.clients) == cfg.num_clients
    for c in part.clients:
        assert len(c.train) == cfg.train_size and len(c.eval) == cfg.eval_size
        for idx in (c.train, c.eval):
            assert idx.dtype == np.int64 and np.array_equal(idx, np.unique(idx))
        assert len(np.intersect1d(c.train, c.eval)) == 0
    everything = np.concatenate([np.concatenate([c.train, c.eval]) for c in part.clients])
    assert everything.min() >= 0 and everything.max() < len(labels)
    if not cfg.overlap:
        assert len(np.unique(everything)) == len(everything)


SCHEMES = ["iid", "dirichlet", "label_skew"]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("seed", [0, 3])
def test_fixed_sizes_disjoint(scheme, seed):
    cfg = fixed(scheme)
    check_fixed(make_partition(BIG, cfg, seed), BIG, cfg)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_fixed_sizes_disjoint_can_use_the_whole_pool(scheme):
    # 10 x (200 + 100) = 3000: every image, once
    cfg = fixed(scheme, num_clients=10, train_size=200, eval_size=100, tau=10)
    part = make_partition(BIG, cfg, 0)
    check_fixed(part, BIG, cfg)
    everything = np.concatenate([np.concatenate([c.train, c.eval]) for c in part.clients])
    assert np.array_equal(np.sort(everything), np.arange(3000))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_fixed_sizes_with_overlap(scheme):
    # 20 x (150 + 150) = 6000 > 3000: only possible when clients may share images
    cfg = fixed(scheme, num_clients=20, train_size=150, eval_size=150, overlap=True)
    part = make_partition(BIG, cfg, 0)
    check_fixed(part, BIG, cfg)
    everything = np.concatenate([np.concatenate([c.train, c.eval]) for c in part.clients])
    assert len(np.unique(everything)) < len(everything)
    with pytest.raises(DataError, match="partition.overlap: true"):
        make_partition(BIG, replace_cfg(cfg, overlap=False), 0)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("overlap", [False, True])
def test_fixed_sizes_same_seed_same_partition(scheme, overlap):
    cfg = fixed(scheme, overlap=overlap)
    a, b, c = (make_partition(BIG, cfg, s) for s in (4, 4, 5))
    assert same(a, b)
    assert not same(a, c)


@pytest.mark.parametrize("tau", [1, 4, 8])
@pytest.mark.parametrize("overlap", [False, True])
def test_label_skew_exactly_tau_classes_with_about_equal_counts(tau, overlap):
    cfg = fixed("label_skew", tau=tau, num_clients=10, train_size=80, eval_size=40, overlap=overlap)
    part = make_partition(BIG, cfg, 2)
    check_fixed(part, BIG, cfg)
    train, held = part.histograms(BIG, "train"), part.histograms(BIG, "eval")
    both = train + held
    for k in range(10):
        present = np.flatnonzero(both[k])
        assert len(present) == tau
        assert both[k, present].max() - both[k, present].min() <= 1  # 120 / tau each
        # the eval split holds the same classes in the same proportions
        assert np.array_equal(np.flatnonzero(held[k]), present)
        assert np.array_equal(np.flatnonzero(train[k]), present)
    usage = (both > 0).sum(axis=0)
    assert usage.max() - usage.min() <= 1  # every class used about equally
    assert usage.sum() == 10 * tau


def test_choose_classes_balances_usage():
    for m, tau, c in [(10, 4, 10), (7, 3, 5), (100, 8, 10), (3, 5, 100)]:
        chosen = choose_classes(m, tau, c, np.random.default_rng(0))
        assert all(len(x) == tau == len(np.unique(x)) for x in chosen)
        usage = np.bincount(np.concatenate(chosen), minlength=c)
        assert usage.max() - usage.min() <= 1


def test_smaller_alpha_is_measurably_more_skewed_fixed_sizes():
    shares, present = [], []
    for alpha in (10.0, 1.0, 0.3, 0.1):
        cfg = fixed(
            "dirichlet", alpha=alpha, num_clients=50, train_size=60, eval_size=60, overlap=True
        )
        hist = make_partition(BIG, cfg, 0).histograms(BIG)
        shares.append(float((hist.max(axis=1) / 60).mean()))
        present.append(float((hist > 0).sum(axis=1).mean()))
    assert shares == sorted(shares) and present == sorted(present, reverse=True)
    assert shares[0] < 0.3 and shares[-1] > 0.6
    assert shares[-1] > shares[-2] + 0.1  # Dir(0.1) vs Dir(0.3): the paper's two settings
    assert present[0] > 9 and present[-1] < 4


@pytest.mark.parametrize("scheme", SCHEMES)
def test_eval_follows_the_clients_own_distribution(scheme):
    cfg = fixed(scheme)  # 60 train + 30 eval: one third of every class is held out
    part = make_partition(BIG, cfg, 1)
    train, held = part.histograms(BIG, "train"), part.histograms(BIG, "eval")
    total = train + held
    assert np.all(np.abs(held - total * 30 / 90) < 1)
    assert np.all(held[total == 0] == 0)


def test_iid_fixed_sizes_follow_the_pool_mix():
    labels = SYNTH  # classes of 40, 61, 80, 101, 121 images
    cfg = PartitionConfig(scheme="iid", num_clients=6, train_size=50, eval_size=50, overlap=True)
    hist = make_partition(labels, cfg, 0).histograms(labels, "train")
    expected = np.array(CLASS_COUNTS) / len(labels) * 50
    assert np.all(np.abs(hist - expected) < 1)


def test_zero_eval_size_keeps_nothing_for_eval():
    cfg = fixed("dirichlet", eval_size=0)
    part = make_partition(BIG, cfg, 0)
    check_fixed(part, BIG, cfg)


def test_apportion_and_draw_counts_by_hand():
    assert apportion(np.array([1, 1, 1]), 10).tolist() == [4, 3, 3]
    assert apportion(np.array([0.0, 0.25, 0.75]), 6).tolist() == [0, 2, 4]  # 1.5, 4.5
    assert apportion(np.array([2, 1]), 0).tolist() == [0, 0]
    # class 0 runs out after 2: the rest goes to class 1, the other class the client has
    assert draw_counts(np.array([0.5, 0.5, 0.0]), 10, np.array([2, 20, 5])).tolist() == [2, 8, 0]
    # all of the client's classes run out: the rest is spread over what is left (3 : 5)
    assert draw_counts(np.array([1.0, 0, 0]), 6, np.array([2, 3, 5])).tolist() == [2, 2, 2]


# ---------------------------------------------------------------- infeasible requests


def test_disjoint_request_larger_than_the_pool():
    cfg = fixed("dirichlet", num_clients=30, train_size=60, eval_size=41)
    with pytest.raises(DataError) as info:
        make_partition(BIG, cfg, 0)
    msg = str(info.value)
    for text in (
        "partition.num_clients",
        "partition.train_size=60",
        "partition.eval_size=41",
        "3030 images",
        "holds 3000",
        "partition.overlap: true",
    ):
        assert text in msg, text


def test_overlapping_request_larger_than_the_pool():
    cfg = fixed("iid", train_size=2500, eval_size=501, overlap=True)
    with pytest.raises(DataError) as info:
        make_partition(BIG, cfg, 0)
    assert "partition.train_size=2500" in str(info.value) and "3001" in str(info.value)


def test_tau_larger_than_the_number_of_classes():
    with pytest.raises(DataError, match=r"partition.tau = 6: .* has 5; use a value in \[1, 5\]"):
        make_partition(SYNTH, pcfg(scheme="label_skew", tau=6), 0)
    with pytest.raises(DataError, match="partition.tau = 11"):
        make_partition(BIG, fixed("label_skew", tau=11), 0)


@pytest.mark.parametrize("alpha", [0.0, -0.5])
def test_alpha_must_be_positive(alpha):
    # the config loader rejects it already; the partitioner does not rely on that
    with pytest.raises(DataError, match="partition.alpha"):
        make_partition(SYNTH, pcfg(alpha=alpha), 0)
    with pytest.raises(ConfigError, match="partition.alpha"):
        from_dict({"partition": {"alpha": alpha}})


def test_label_skew_running_out_of_a_class():
    # 10 clients x 1 class over 5 classes: each class feeds 2 clients x 40 = 80, but class 0
    # has 40 images
    cfg = PartitionConfig(scheme="label_skew", tau=1, num_clients=10, train_size=30, eval_size=10)
    with pytest.raises(DataError) as info:
        make_partition(SYNTH, cfg, 0)
    msg = str(info.value)
    assert "80 images of class 0" in msg and "holds 40" in msg
    assert "partition.overlap: true" in msg and "partition.tau" in msg
    # with overlap each client needs only 40 of class 0's 40
    make_partition(SYNTH, replace_cfg(cfg, overlap=True), 0)
    with pytest.raises(DataError, match="41 images of class 0 from one client"):
        make_partition(SYNTH, replace_cfg(cfg, overlap=True, eval_size=11), 0)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"partition": {"eval_size": 10}}, "partition.eval_size = 10: needs partition.train_size"),
        ({"partition": {"overlap": True}}, "partition.overlap = True: only applies"),
        ({"data": {"name": "mnist", "augment": True}}, "data.augment = True"),
        ({"partition": {"tau": 0}}, "partition.tau = 0: out of range"),
        ({"partition": {"train_size": -1}}, "partition.train_size = -1: out of range"),
    ],
)
def test_config_rejects_inconsistent_partition_and_data_fields(raw, key):
    with pytest.raises(ConfigError) as info:
        from_dict(raw)
    assert len(info.value.problems) == 1 and info.value.problems[0].startswith(key)


def test_paper_setup_config_values():
    cfg = from_dict(
        {
            "data": {"name": "cifar10", "augment": True},
            "partition": {
                "scheme": "label_skew",
                "tau": 8,
                "num_clients": 100,
                "train_size": 600,
                "eval_size": 600,
                "overlap": True,
            },
        }
    )
    assert (cfg.partition.tau, cfg.partition.train_size, cfg.partition.overlap) == (8, 600, True)


def test_num_classes_of_the_dataset_sets_the_histogram_width():
    labels = np.arange(40) % 4  # classes 0..3 of a 6-class dataset
    part = make_partition(labels, pcfg(scheme="iid", num_clients=2), 0, num_classes=6)
    assert part.num_classes == 6 and part.histograms(labels).shape == (2, 6)
    with pytest.raises(DataError, match=r"partition.tau = 7: .* has 6"):
        make_partition(labels, pcfg(scheme="label_skew", tau=7), 0, num_classes=6)


@pytest.mark.parametrize("seed", [0, 3])
def test_a_configs_dataset_and_partition_follow_its_seed(digits, seed):
    """What run, export and ``data stats`` all partition: cfg.data's dataset with its
    holdout drawn by run.seed, and cfg.partition over its train split seeded alike."""
    cfg = from_dict({"run": {"seed": seed}, "partition": {"scheme": "dirichlet", "num_clients": 6}})
    dataset, part = dataset_and_partition(cfg)
    expected = load_dataset(DataConfig(), seed)
    assert torch.equal(dataset.train_y, expected.train_y)
    assert torch.equal(dataset.test_x, expected.test_x)
    labels = expected.train_y.numpy()
    check_partition(part, labels, cfg.partition, 1, 5)
    assert same(part, make_partition(labels, cfg.partition, seed))
    assert not same(part, make_partition(labels, cfg.partition, seed + 1))
