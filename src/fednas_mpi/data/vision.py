"""Image datasets read from torchvision's on-disk files: MNIST, Fashion-MNIST, CIFAR-10/100.

Each source declares the files it needs and the directories they are looked
for in, so a missing dataset is one error that names the files, the root and
the command that fetches them. The readers are strict: a bad magic number, a
truncated file or a malformed pickle is a DataError naming the file.

The files are read here rather than through torchvision's dataset classes
because those check md5 sums of the whole official files (so small test files
in the same format cannot be read) and report corruption as bare numpy or
pickle errors; torchvision is still what downloads them (``fetch``).
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # train x, y, test x, y


@dataclass(frozen=True)
class Source:
    """Where a dataset's files live and how to read them."""

    name: str  # config name (data.name)
    title: str  # human name for messages
    num_classes: int
    mean: tuple[float, ...]  # per channel, pixel values scaled to [0, 1]
    std: tuple[float, ...]
    subdir: str  # directory under data.root (torchvision's layout)
    files: tuple[str, ...]  # names needed in one directory
    gzip_ok: bool  # a file may also be present as NAME.gz
    read: Callable[[dict[str, Path], int], Arrays]
    extra_dirs: tuple[tuple[Path, str], ...] = ()  # (directory, how it gets there)
    torchvision_class: str = ""

    def directories(self, root: str | Path) -> list[tuple[Path, str]]:
        """Directories searched in order, each with a note for messages."""
        return [
            (Path(root).expanduser() / self.subdir, f"data.root = {str(root)!r}"),
            *self.extra_dirs,
        ]

    def candidates(self, directory: Path, name: str) -> list[Path]:
        return [directory / name] + ([directory / f"{name}.gz"] if self.gzip_ok else [])

    def locate_in(self, directory: Path) -> dict[str, Path] | None:
        """Every needed file in ``directory`` (plain preferred to .gz), or None."""
        found = {}
        for name in self.files:
            hit = next((p for p in self.candidates(directory, name) if p.is_file()), None)
            if hit is None:
                return None
            found[name] = hit
        return found

    def locate(self, root: str | Path) -> dict[str, Path] | None:
        """The files from the first directory holding all of them, or None."""
        for directory, _ in self.directories(root):
            found = self.locate_in(directory)
            if found is not None:
                return found
        return None

    def missing_message(self, root: str | Path) -> str:
        """One message: the files looked for, where, and the command that fetches them."""
        shown = ", ".join(n + ("[.gz]" if self.gzip_ok else "") for n in self.files)
        places = "\n".join(
            f"    {Path(d).expanduser().resolve()}  ({note})" for d, note in self.directories(root)
        )
        absolute = Path(root).expanduser().resolve()
        return (
            f"{self.title} not found: looked for {shown} in\n{places}\n"
            f"  On a machine with internet (e.g. a cluster login node) run\n"
            f"    fednas-mpi data download {self.name} --root {absolute}\n"
            f"  or set data.download: true to fetch it when the run starts."
        )


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(
            f"{path}: cannot read ({e}); the file is corrupt or truncated, fetch it again"
        ) from None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` dimensions (plain or gzip), validated.

    Layout: two zero bytes, type code 0x08 (unsigned byte), the number of
    dimensions, each dimension as a big-endian uint32, then the data.
    """
    data = _read_bytes(path)
    expected = bytes([0, 0, 0x08, ndim])
    if len(data) < 4 or data[:4] != expected:
        got = data[:4].hex() if len(data) >= 4 else f"only {len(data)} byte(s)"
        raise DataError(
            f"{path}: bad magic number {got} (expected {expected.hex()}: an IDX file "
            f"of unsigned bytes with {ndim} dimension(s)); the file is corrupt or "
            f"not what its name says, fetch it again"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated header ({len(data)} bytes); fetch the file again")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    size = int(np.prod(dims))
    if len(data) - header != size:
        raise DataError(
            f"{path}: truncated or padded: header says {'x'.join(map(str, dims))} "
            f"= {size} bytes of data, file holds {len(data) - header}; fetch it "
            f"again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _read_idx_pair(images: Path, labels: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(images, 3)
    y = read_idx(labels, 1)
    if len(x) != len(y):
        raise DataError(
            f"{images} holds {len(x)} images but {labels} holds {len(y)} labels; "
            f"the files do not belong together, fetch them again"
        )
    _check_labels(y, num_classes, labels)
    return x[:, None], y.astype(np.int64)  # (N, 1, H, W)


def _check_labels(y: np.ndarray, num_classes: int, path: Path) -> None:
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(
            f"{path}: labels outside 0..{num_classes - 1} (found {int(y.min())}.."
            f"{int(y.max())}); the file is corrupt, fetch it again"
        )


def _read_mnist_like(files: dict[str, Path], num_classes: int) -> Arrays:
    tx, ty = _read_idx_pair(
        files["train-images-idx3-ubyte"], files["train-labels-idx1-ubyte"], num_classes
    )
    sx, sy = _read_idx_pair(
        files["t10k-images-idx3-ubyte"], files["t10k-labels-idx1-ubyte"], num_classes
    )
    return tx, ty, sx, sy


MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


# ---------------------------------------------------------------- CIFAR python pickles


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR batches hold: dicts, lists, strings and numpy arrays.

    The official files were written by Python 2's cPickle with numpy 1; numpy 2
    moved ``numpy.core`` to ``numpy._core``. Anything else is refused, so a
    stray or hostile pickle cannot run code.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"): ("numpy", "ndarray"),
        ("numpy", "dtype"): ("numpy", "dtype"),
        ("_codecs", "encode"): ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        target = self._ALLOWED.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(*target)


def _load_batch(path: Path) -> dict[str, object]:
    try:
        with open(path, "rb") as f:
            # latin1 turns Python 2 byte strings (the pixel data) back into bytes-like text
            # that numpy accepts, as torchvision does.
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); fetch it again") from None
    except Exception as e:  # unpickling a damaged file can raise almost anything
        raise DataError(
            f"{path}: not a readable CIFAR python batch ({type(e).__name__}: {e}); "
            f"the file is corrupt or truncated, fetch it again"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}: not a CIFAR python batch (a {type(obj).__name__}, expected a "
            f"dict); fetch it again"
        )
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _read_cifar_batches(
    paths: list[Path], label_key: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for path in paths:
        batch = _load_batch(path)
        x, y = batch.get("data"), batch.get(label_key)
        if not isinstance(x, np.ndarray) or y is None:
            raise DataError(
                f"{path}: a CIFAR batch needs keys 'data' (uint8 array) and "
                f"{label_key!r}; found {sorted(batch)}; fetch it again"
            )
        y = np.asarray(y, dtype=np.int64)
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y):
            raise DataError(
                f"{path}: 'data' is {x.dtype} {x.shape} with {len(y)} labels; "
                f"expected uint8 (N, 3072) with N labels; fetch it again"
            )
        _check_labels(y, num_classes, path)
        xs.append(x.reshape(-1, 3, 32, 32))
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _cifar_reader(train: tuple[str, ...], test: tuple[str, ...], label_key: str):
    def read(files: dict[str, Path], num_classes: int) -> Arrays:
        tx, ty = _read_cifar_batches([files[n] for n in train], label_key, num_classes)
        sx, sy = _read_cifar_batches([files[n] for n in test], label_key, num_classes)
        return tx, ty, sx, sy

    return read


CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))

# Normalisation constants: the usual per-dataset training-set statistics (DARTS
# uses these for CIFAR); fixed rather than recomputed so that a run does not
# depend on which files (full or subset) were present.
SOURCES: dict[str, Source] = {
    "mnist": Source(
        "mnist",
        "MNIST",
        10,
        (0.1307,),
        (0.3081,),
        "MNIST/raw",
        MNIST_FILES,
        True,
        _read_mnist_like,
        torchvision_class="MNIST",
    ),
    "fashion_mnist": Source(
        "fashion_mnist",
        "Fashion-MNIST",
        10,
        (0.2860,),
        (0.3530,),
        "FashionMNIST/raw",
        MNIST_FILES,
        True,
        _read_mnist_like,
        extra_dirs=((DEBIAN_FASHION_MNIST, "Debian: apt-get install dataset-fashion-mnist"),),
        torchvision_class="FashionMNIST",
    ),
    "cifar10": Source(
        "cifar10",
        "CIFAR-10",
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        "cifar-10-batches-py",
        (*CIFAR10_TRAIN, "test_batch"),
        False,
        _cifar_reader(CIFAR10_TRAIN, ("test_batch",), "labels"),
        torchvision_class="CIFAR10",
    ),
    "cifar100": Source(
        "cifar100",
        "CIFAR-100",
        100,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        "cifar-100-python",
        ("train", "test"),
        False,
        _cifar_reader(("train",), ("test",), "fine_labels"),
        torchvision_class="CIFAR100",
    ),
}


def read_source(source: Source, root: str | Path) -> Arrays:
    """(train x, train y, test x, test y) with x uint8 (N, C, H, W); DataError if missing."""
    files = source.locate(root)
    if files is None:
        raise DataError(source.missing_message(root))
    return source.read(files, source.num_classes)


def fetch(name: str, root: str | Path) -> Path:
    """Download a dataset into ``root`` (torchvision's layout) unless it is already there."""
    source = SOURCES.get(name)
    if source is None:
        raise DataError(
            f"{name}: nothing to download (datasets with files: "
            f"{', '.join(SOURCES)}; digits ships with scikit-learn)"
        )
    directory = Path(root) / source.subdir
    if source.locate_in(directory) is not None:
        return directory
    import torchvision.datasets as tvd

    cls = getattr(tvd, source.torchvision_class)
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as e:  # network, HTTP and archive errors of every kind
        raise DataError(
            f"downloading {source.title} into {root} failed ({type(e).__name__}: "
            f"{e}); run this on a machine with internet and copy {directory} "
            f"over"
        ) from None
    if source.locate_in(directory) is None:
        raise DataError(f"downloaded {source.title} but {source.missing_message(root)}")
    return directory
