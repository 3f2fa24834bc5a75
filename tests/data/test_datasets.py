"""Dataset loaders on small files in the real formats; errors; resize; augmentation."""

from __future__ import annotations

import gzip
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from debian_data import need_fashion_mnist

from fednas_mpi.algorithms.common.training import sgd_epochs
from fednas_mpi.config import DataConfig, PartitionConfig
from fednas_mpi.data import DataError, Dataset, load_dataset, make_partition, vision
from fednas_mpi.data.augment import CropFlip, random_crop_flip
from fednas_mpi.data.datasets import resize_images
from fednas_mpi.harness.datafiles import (
    mnist_arrays,
    py2_pickle,
    write_cifar10,
    write_cifar100,
    write_mnist,
)

MNIST_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


def load(name: str, root: Path, **kw) -> Dataset:
    return load_dataset(DataConfig(name=name, root=str(root), **kw), 0)


@pytest.fixture
def no_debian(monkeypatch, tmp_path):
    """Point the Debian Fashion-MNIST directory somewhere empty (or given)."""

    def use(directory: Path | None = None) -> Path:
        directory = directory or tmp_path / "no-debian"
        src = vision.SOURCES["fashion_mnist"]
        monkeypatch.setitem(
            vision.SOURCES,
            "fashion_mnist",
            replace(
                src, extra_dirs=((directory, "Debian: apt-get install dataset-fashion-mnist"),)
            ),
        )
        return directory

    return use


# ---------------------------------------------------------------- MNIST and Fashion-MNIST


@pytest.mark.parametrize(
    ("name", "subdir", "mean", "std"),
    [("mnist", "MNIST", 0.1307, 0.3081), ("fashion_mnist", "FashionMNIST", 0.2860, 0.3530)],
)
def test_idx_gzip_loader_reads_what_was_written(tmp_path, no_debian, name, subdir, mean, std):
    no_debian()
    tx, ty, sx, sy = mnist_arrays(30, 10)
    write_mnist(tmp_path / subdir / "raw", (tx, ty, sx, sy))
    ds = load(name, tmp_path)
    assert ds.name == name and ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    # stored as uint8, the official test split is the server test set
    assert ds.train_data.dtype == torch.uint8
    assert np.array_equal(ds.train_data.numpy()[:, 0], tx)
    assert np.array_equal(ds.test_data.numpy()[:, 0], sx)
    assert ds.train_y.tolist() == ty.tolist() and ds.test_y.tolist() == sy.tolist()
    assert ds.train_y.dtype == torch.int64
    # model inputs: (pixel / 255 - mean) / std, computed by hand for one pixel
    x = ds.train_inputs(np.array([3]))
    assert x.dtype == torch.float32 and x.shape == (1, 1, 28, 28)
    assert x[0, 0, 5, 7].item() == pytest.approx((tx[3, 5, 7] / 255 - mean) / std, abs=1e-5)
    assert torch.equal(ds.test_x, ds.inputs(ds.test_data))
    assert torch.equal(ds.train_x[3:4], x)


def test_uncompressed_idx_files_are_read_too(tmp_path):
    arrays = mnist_arrays(12, 4, seed=3)
    write_mnist(tmp_path / "MNIST" / "raw", arrays, gz=False)
    ds = load("mnist", tmp_path)
    assert np.array_equal(ds.train_data.numpy()[:, 0], arrays[0])


def test_fashion_mnist_root_first_then_debian_directory(tmp_path, no_debian):
    debian = no_debian(tmp_path / "debian")
    write_mnist(debian, mnist_arrays(20, 5, seed=1))
    ds = load("fashion_mnist", tmp_path / "root")  # nothing under the root: Debian's files
    assert len(ds.train_y) == 20
    write_mnist(tmp_path / "root" / "FashionMNIST" / "raw", mnist_arrays(16, 5, seed=2))
    assert len(load("fashion_mnist", tmp_path / "root").train_y) == 16  # the root wins


def test_real_fashion_mnist_from_debian_package(tmp_path):
    need_fashion_mnist()
    ds = load("fashion_mnist", tmp_path / "empty-root")
    assert ds.train_data.shape == (60000, 1, 28, 28) and ds.test_data.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.train_y.numpy()).tolist() == [6000] * 10
    assert np.bincount(ds.test_y.numpy()).tolist() == [1000] * 10
    # the published normalisation constants fit the real training set
    pixels = ds.train_data.to(torch.float64) / 255
    assert pixels.mean().item() == pytest.approx(0.2860, abs=1e-3)
    assert pixels.std().item() == pytest.approx(0.3530, abs=1e-3)
    # the paper's partition setup on it: Dir(0.1), 600 + 600 per client
    labels = ds.train_y.numpy()
    cfg = PartitionConfig(
        scheme="dirichlet", alpha=0.1, num_clients=20, train_size=600, eval_size=600
    )
    part = make_partition(labels, cfg, 0)
    train, held = part.histograms(labels, "train"), part.histograms(labels, "eval")
    assert train.sum(axis=1).tolist() == [600] * 20 and held.sum(axis=1).tolist() == [600] * 20
    assert np.abs(train - held).max() <= 1  # eval follows each client's own mix
    everything = np.concatenate([np.concatenate([c.train, c.eval]) for c in part.clients])
    assert len(np.unique(everything)) == 20 * 1200  # disjoint
    assert (train.max(axis=1) / 600).mean() > 0.5  # Dir(0.1): one class dominates a client


# ---------------------------------------------------------------- CIFAR


def test_cifar10_python_batches(tmp_path):
    written = write_cifar10(tmp_path, per_batch=4, n_test=6)
    ds = load("cifar10", tmp_path)
    assert ds.num_classes == 10 and ds.input_shape == (3, 32, 32)
    assert ds.train_data.shape == (20, 3, 32, 32) and ds.test_data.shape == (6, 3, 32, 32)
    # batches in order 1..5; a row is 1024 red, 1024 green, 1024 blue values
    x2, y2 = written["data_batch_2"]
    assert ds.train_y[4:8].tolist() == y2
    img = ds.train_data[5].numpy()
    assert img[0, 0, 0] == x2[1, 0] and img[1, 0, 0] == x2[1, 1024]
    assert img[2, 31, 31] == x2[1, 3071] and img[0, 1, 2] == x2[1, 32 + 2]
    xt, yt = written["test_batch"]
    assert ds.test_y.tolist() == yt
    assert np.array_equal(ds.test_data.numpy().reshape(6, -1), xt)
    x = ds.train_inputs(np.array([5]))
    assert x[0, 1, 0, 0].item() == pytest.approx((x2[1, 1024] / 255 - 0.4822) / 0.2435, abs=1e-5)


def test_cifar100_uses_fine_labels(tmp_path):
    written = write_cifar100(tmp_path, n_train=12, n_test=5)
    ds = load("cifar100", tmp_path)
    assert ds.num_classes == 100
    assert ds.train_y.tolist() == written["train"][1]
    assert ds.test_y.tolist() == written["test"][1]
    assert np.array_equal(ds.train_data.numpy().reshape(12, -1), written["train"][0])


def test_cifar_batch_pickled_by_python3_also_loads(tmp_path):
    write_cifar10(tmp_path)
    x = np.full((2, 3072), 7, dtype=np.uint8)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": x, b"labels": [3, 4]}, f, protocol=4)
    assert load("cifar10", tmp_path).test_y.tolist() == [3, 4]


# ---------------------------------------------------------------- missing and corrupt files


def test_missing_cifar_names_files_root_and_command(tmp_path):
    with pytest.raises(DataError) as info:
        load("cifar10", tmp_path / "data")
    msg = str(info.value)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        assert name in msg
    assert str(tmp_path / "data" / "cifar-10-batches-py") in msg
    assert f"fednas-mpi data download cifar10 --root {tmp_path / 'data'}" in msg
    assert "data.download: true" in msg


def test_missing_cifar100_and_mnist_name_their_own_files(tmp_path):
    with pytest.raises(DataError, match=r"train, test in") as info:
        load("cifar100", tmp_path)
    assert "cifar-100-python" in str(info.value)
    assert f"data download cifar100 --root {tmp_path}" in str(info.value)
    with pytest.raises(DataError) as info:
        load("mnist", tmp_path)
    msg = str(info.value)
    assert all(f"{n}[.gz]" in msg for n in MNIST_FILES)
    assert str(tmp_path / "MNIST" / "raw") in msg and f"--root {tmp_path}" in msg


def test_one_missing_file_is_reported(tmp_path):
    files = write_mnist(tmp_path / "MNIST" / "raw")
    files["t10k-labels-idx1-ubyte"].unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load("mnist", tmp_path)


def test_missing_fashion_mnist_names_both_places(tmp_path, no_debian):
    debian = no_debian()
    with pytest.raises(DataError) as info:
        load("fashion_mnist", tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in msg and str(debian) in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert f"fednas-mpi data download fashion_mnist --root {tmp_path}" in msg


def test_relative_root_is_shown_absolute_in_the_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(name="cifar10", root="data"), 0)
    assert f"--root {tmp_path / 'data'}" in str(info.value)


def test_bad_magic_number_names_the_file(tmp_path):
    files = write_mnist(tmp_path / "MNIST" / "raw")
    labels = files["train-labels-idx1-ubyte"]
    data = bytearray(gzip.decompress(labels.read_bytes()))
    data[3] = 3  # claims three dimensions: an image file, not a label file
    labels.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(DataError) as info:
        load("mnist", tmp_path)
    assert str(labels) in str(info.value) and "bad magic number 00000803" in str(info.value)


def test_truncated_idx_names_the_file(tmp_path):
    files = write_mnist(tmp_path / "MNIST" / "raw", gz=False)
    images = files["t10k-images-idx3-ubyte"]
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError) as info:
        load("mnist", tmp_path)
    assert str(images) in str(info.value) and "truncated" in str(info.value)


def test_truncated_gzip_names_the_file(tmp_path):
    files = write_mnist(tmp_path / "MNIST" / "raw")
    images = files["train-images-idx3-ubyte"]
    images.write_bytes(images.read_bytes()[:200])
    with pytest.raises(DataError) as info:
        load("mnist", tmp_path)
    assert str(images) in str(info.value) and "corrupt or truncated" in str(info.value)


def test_images_and_labels_that_disagree(tmp_path):
    tx, ty, sx, sy = mnist_arrays(30, 10)
    write_mnist(tmp_path / "MNIST" / "raw", (tx, ty[:29], sx, sy))
    with pytest.raises(DataError, match="30 images but .* 29 labels"):
        load("mnist", tmp_path)
    tx, ty, sx, sy = mnist_arrays(30, 10)
    ty[4] = 10
    write_mnist(tmp_path / "MNIST" / "raw", (tx, ty, sx, sy))
    with pytest.raises(DataError, match=r"labels outside 0\.\.9"):
        load("mnist", tmp_path)


def test_truncated_cifar_pickle_names_the_file(tmp_path):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:1000])
    with pytest.raises(DataError) as info:
        load("cifar10", tmp_path)
    assert str(batch) in str(info.value) and "corrupt or truncated" in str(info.value)


def test_cifar_pickle_that_is_not_a_batch(tmp_path):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(py2_pickle({"data": np.zeros((2, 100), dtype=np.uint8), "labels": [0, 1]}))
    with pytest.raises(DataError, match=r"expected uint8 \(N, 3072\)"):
        load("cifar10", tmp_path)
    batch.write_bytes(py2_pickle({"pixels": np.zeros((2, 3072), dtype=np.uint8)}))
    with pytest.raises(DataError, match="needs keys 'data'"):
        load("cifar10", tmp_path)


def test_cifar_pickle_cannot_run_code(tmp_path):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(b"\x80\x02cos\nsystem\nU\x04trueK\x01\x85R.")  # os.system('true')
    with pytest.raises(DataError, match="refusing to load os.system"):
        load("cifar10", tmp_path)


# ---------------------------------------------------------------- download


class FakeTorchvisionCIFAR10:
    """Stands in for torchvision.datasets.CIFAR10(download=True): writes the files."""

    calls: list = []

    def __init__(self, root, train, download):
        FakeTorchvisionCIFAR10.calls.append((root, train, download))
        write_cifar10(Path(root))


def test_download_true_fetches_missing_files_through_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets

    FakeTorchvisionCIFAR10.calls = []
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeTorchvisionCIFAR10)
    ds = load("cifar10", tmp_path / "d", download=True)
    assert len(ds.train_y) == 20
    assert FakeTorchvisionCIFAR10.calls == [
        (str(tmp_path / "d"), True, True),
        (str(tmp_path / "d"), False, True),
    ]
    load("cifar10", tmp_path / "d", download=True)  # present now: no second download
    assert len(FakeTorchvisionCIFAR10.calls) == 2


def test_failed_download_is_one_data_error(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*a, **kw):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataError, match="downloading MNIST into .* failed .*unreachable"):
        load("mnist", tmp_path, download=True)


# ---------------------------------------------------------------- resize and normalisation


def test_resize_shapes_dtype_and_values(tmp_path):
    tx, ty, sx, sy = mnist_arrays(6, 3)
    tx[0] = 200  # a constant image stays constant at any size
    write_mnist(tmp_path / "MNIST" / "raw", (tx, ty, sx, sy))
    ds = load("mnist", tmp_path, resize=14)
    assert ds.input_shape == (1, 14, 14) and ds.test_data.shape == (3, 1, 14, 14)
    assert ds.train_data.dtype == torch.uint8
    assert (ds.train_data[0] == 200).all()
    # antialiased bilinear as PIL does it (a triangle filter as wide as the shrink), up to
    # rounding
    from PIL import Image

    for k in range(6):
        pil = np.asarray(Image.fromarray(tx[k]).resize((14, 14), Image.BILINEAR))
        assert np.abs(ds.train_data[k, 0].numpy().astype(int) - pil).max() <= 1


def test_resize_cifar_and_float_data():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    assert resize_images(x, 16).shape == (2, 3, 16, 16)
    assert resize_images(x, 32) is x
    assert resize_images(x[:0], 8).shape == (0, 3, 8, 8)
    # chunks give the same result as one pass
    assert torch.equal(resize_images(x, 16, chunk=1), resize_images(x, 16))


def test_digits_resize_keeps_labels():
    ds = load_dataset(DataConfig(resize=16), 0)
    assert ds.input_shape == (1, 16, 16) and ds.train_data.dtype == torch.float32
    assert torch.equal(ds.train_y, load_dataset(DataConfig(), 0).train_y)


def test_float_data_is_already_normalised():
    x = torch.randn(4, 1, 8, 8)
    ds = Dataset("synthetic", x, torch.zeros(4, dtype=torch.int64), x, torch.zeros(4), 2)
    assert ds.train_x is x and ds.inputs(x) is x


# ---------------------------------------------------------------- augmentation


def test_crop_flip_matches_a_hand_computed_result():
    x = torch.tensor(
        [
            [[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]],
            [[[10.0, 11.0, 12.0], [13.0, 14.0, 15.0], [16.0, 17.0, 18.0]]],
        ]
    )
    # the draws seed 17 gives: row offsets, column offsets, flips
    g = torch.Generator().manual_seed(17)
    assert torch.randint(0, 3, (2,), generator=g).tolist() == [0, 0]
    assert torch.randint(0, 3, (2,), generator=g).tolist() == [2, 1]
    assert (torch.rand(2, generator=g) < 0.5).tolist() == [True, False]
    out = random_crop_flip(x, torch.Generator().manual_seed(17), padding=1, fill=-1.0)
    # image 0: window rows 0-2, columns 2-4 of the padded image, then mirrored
    assert out[0, 0].tolist() == [[-1, -1, -1], [-1, 3, 2], [-1, 6, 5]]
    # image 1: window rows 0-2, columns 1-3, not mirrored
    assert out[1, 0].tolist() == [[-1, -1, -1], [10, 11, 12], [13, 14, 15]]
    assert x[0, 0, 0].tolist() == [1, 2, 3]  # input untouched


def test_crop_flip_per_channel_fill_determinism_and_shape():
    x = torch.randn(64, 3, 8, 8)
    fill = (-1.0, -2.0, -3.0)
    aug = CropFlip(2, fill)
    a = aug(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(1)))
    for ch, value in enumerate(fill):  # padding shows up with its channel's fill only
        padded = a[:, ch][~torch.isin(a[:, ch], x[:, ch])]
        assert len(padded) > 0 and (padded == value).all()


def test_without_padding_only_flips():
    x = torch.randn(50, 2, 5, 5)
    out = random_crop_flip(x, torch.Generator().manual_seed(3), padding=0)
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 10 < sum(flipped) < 40


def test_cifar_augment_config(tmp_path):
    write_cifar10(tmp_path)
    ds = load("cifar10", tmp_path, augment=True)
    assert ds.augment == CropFlip(
        4,
        tuple(
            -m / s for m, s in zip(vision.SOURCES["cifar10"].mean, vision.SOURCES["cifar10"].std)
        ),
    )
    # a black pixel, padded in, is exactly where black pixels land after normalisation
    black = Dataset(
        "b",
        torch.zeros(1, 3, 1, 1, dtype=torch.uint8),
        torch.zeros(1),
        None,
        None,
        10,
        ds.mean,
        ds.std,
    ).train_x.flatten()
    assert torch.allclose(black, torch.tensor(ds.augment.fill))
    assert load("cifar10", tmp_path, augment=True, resize=16).augment.padding == 2
    assert load("cifar10", tmp_path).augment is None


def test_sgd_epochs_augments_every_training_batch():
    seen = []

    def augment(x, g):
        seen.append(x.shape[0])
        return torch.zeros_like(x)  # the model then sees only zeros

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    x, y = torch.randn(10, 1, 2, 2), torch.arange(10) % 2
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    seen_inputs = []
    net.register_forward_pre_hook(lambda m, inp: seen_inputs.append(inp[0].clone()))
    sgd_epochs(net, x, y, opt, 4, 2, torch.Generator().manual_seed(0), augment=augment)
    assert seen == [4, 4, 2, 4, 4, 2]
    assert all((t == 0).all() for t in seen_inputs)
