"""Small dataset files in the real on-disk formats, for the tests and for benchmarks on machines
without the datasets (``bench/gpu_quick.sh``, ``bench/peers``).

MNIST/Fashion-MNIST: IDX files (gzip) as torchvision keeps them under
ROOT/MNIST/raw/. CIFAR: the python pickles of ROOT/cifar-10-batches-py/ and
ROOT/cifar-100-python/, written byte for byte as Python 2's cPickle wrote the
official files (numpy.core.multiarray._reconstruct, byte strings read back with
encoding latin1).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 00 00 08 ndim, big-endian dims, the data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return (
        bytes([0, 0, 0x08, array.ndim])
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.tobytes()
    )


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def mnist_arrays(n_train: int = 30, n_test: int = 10, seed: int = 0, side: int = 28):
    rng = np.random.default_rng(seed)
    tx = rng.integers(0, 256, (n_train, side, side), dtype=np.uint8)
    ty = (np.arange(n_train) % 10).astype(np.uint8)
    sx = rng.integers(0, 256, (n_test, side, side), dtype=np.uint8)
    sy = (np.arange(n_test) % 10).astype(np.uint8)
    return tx, ty, sx, sy


def write_mnist(directory: Path, arrays=None, gz: bool = True) -> dict[str, Path]:
    """The four MNIST files in ``directory``; returns name -> path."""
    tx, ty, sx, sy = arrays if arrays is not None else mnist_arrays()
    return {
        name: write_idx(directory / name, a, gz)
        for name, a in (
            ("train-images-idx3-ubyte", tx),
            ("train-labels-idx1-ubyte", ty),
            ("t10k-images-idx3-ubyte", sx),
            ("t10k-labels-idx1-ubyte", sy),
        )
    }


def py2_pickle(obj) -> bytes:
    """``obj`` (a dict of str, int, list and uint8 arrays) pickled as Python 2's cPickle did."""
    out = bytearray(b"\x80\x02")  # PROTO 2

    def string(b: bytes) -> None:  # a Python 2 str: SHORT_BINSTRING or BINSTRING
        out.extend(
            b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b
        )

    def integer(i: int) -> None:  # BININT1 or BININT
        out.extend(b"K" + bytes([i]) if 0 <= i < 256 else b"J" + struct.pack("<i", i))

    def emit(v) -> None:
        if isinstance(v, str):
            string(v.encode("latin1"))
        elif isinstance(v, (int, np.integer)):
            integer(int(v))
        elif isinstance(v, list):
            out.extend(b"](")  # EMPTY_LIST MARK ... APPENDS
            for e in v:
                emit(e)
            out.extend(b"e")
        elif isinstance(v, dict):
            out.extend(b"}(")  # EMPTY_DICT MARK ... SETITEMS
            for k, e in v.items():
                emit(k)
                emit(e)
            out.extend(b"u")
        elif isinstance(v, np.ndarray) and v.dtype == np.uint8:
            # _reconstruct(ndarray, (0,), 'b'), then BUILD with
            # (1, shape, dtype('u1') with its state, fortran=False, raw bytes)
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            integer(0)
            out.extend(b"\x85")  # TUPLE1
            string(b"b")
            out.extend(b"\x87R(")  # TUPLE3 REDUCE MARK
            integer(1)
            out.extend(b"(")
            for d in v.shape:
                integer(d)
            out.extend(b"tcnumpy\ndtype\n")
            string(b"u1")
            integer(0)
            integer(1)
            out.extend(b"\x87R(")
            integer(3)
            string(b"|")
            out.extend(b"NNN" + b"J" + struct.pack("<i", -1) + b"J" + struct.pack("<i", -1))
            integer(0)
            out.extend(b"tb\x89")  # TUPLE BUILD NEWFALSE
            string(np.ascontiguousarray(v).tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(f"py2_pickle cannot write {type(v).__name__}")

    emit(obj)
    out.extend(b".")
    return bytes(out)


def cifar_images(n: int, seed: int) -> np.ndarray:
    """(n, 3072) uint8 rows: 1024 red, 1024 green, 1024 blue values, row-major 32x32 each."""
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def write_cifar10(root: Path, per_batch: int | list[int] = 4, n_test: int = 6) -> dict[str, tuple]:
    """ROOT/cifar-10-batches-py/ with five training batches and the test batch;
    ``per_batch``: images per training batch, one count or five."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    sizes = [per_batch] * 5 if isinstance(per_batch, int) else list(per_batch)
    assert len(sizes) == 5, "CIFAR-10 has five training batches"
    written = {}
    for i in range(1, 7):
        name = f"data_batch_{i}" if i <= 5 else "test_batch"
        n = sizes[i - 1] if i <= 5 else n_test
        x = cifar_images(n, i)
        y = [(i + k) % 10 for k in range(n)]
        (d / name).write_bytes(
            py2_pickle(
                {
                    "batch_label": f"batch {i}",
                    "labels": y,
                    "data": x,
                    "filenames": [f"img_{i}_{k}.png" for k in range(n)],
                }
            )
        )
        written[name] = (x, y)
    (d / "batches.meta").write_bytes(
        py2_pickle(
            {
                "label_names": [
                    "airplane",
                    "automobile",
                    "bird",
                    "cat",
                    "deer",
                    "dog",
                    "frog",
                    "horse",
                    "ship",
                    "truck",
                ],
                "num_cases_per_batch": sizes[0],
                "num_vis": 3072,
            }
        )
    )
    return written


def write_cifar100(root: Path, n_train: int = 12, n_test: int = 5) -> dict[str, tuple]:
    """ROOT/cifar-100-python/ with ``train`` and ``test`` (fine and coarse labels)."""
    d = root / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, n, seed in (("train", n_train, 11), ("test", n_test, 12)):
        x = cifar_images(n, seed)
        fine = [(7 * k + seed) % 100 for k in range(n)]
        (d / name).write_bytes(
            py2_pickle(
                {
                    "filenames": [f"{name}_{k}.png" for k in range(n)],
                    "batch_label": name,
                    "fine_labels": fine,
                    "coarse_labels": [f // 5 for f in fine],
                    "data": x,
                }
            )
        )
        written[name] = (x, fine)
    (d / "meta").write_bytes(
        py2_pickle(
            {
                "fine_label_names": [str(i) for i in range(100)],
                "coarse_label_names": [str(i) for i in range(20)],
            }
        )
    )
    return written
