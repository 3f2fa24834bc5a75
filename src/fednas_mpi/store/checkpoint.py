"""One self-contained HDF5 file per round, written atomically.

Layout of ``RUN_DIR/round_NNNNN.h5`` (NNNNN = rounds completed):

    /                      attrs: format, format_version, round, rounds_planned, stage,
                                  config (resolved YAML, headed by its schema_version:
                                  older ones are read through fednas_mpi.migrations),
                                  spec (JSON), versions (JSON),
                                  world_size, seed, created, kernels,
                                  devices (JSON: each rank's host, node-local rank, device)
    /state/<name>          global model tensors (weights and architecture parameters)
    /server_state/<name>   server-only tensors of the method (may be empty)
    /clients/<id>/<name>   persistent per-client state (personalised methods)
    /metrics/<name>        1-D float64, entry i = round i+1 (NaN where not measured)
    /metrics/stage         1-D strings, the stage of each round
    /client_metrics/<name> 2-D float64 (rounds, clients): each sampled client's own value
                           (weight = its training samples, then the method's client
                           metrics), NaN where the client was not sampled (older
                           files lack records: ``migrations.checkpoint_records``)
    /partition/train_sizes, eval_sizes (clients,), train_hist, eval_hist (clients, classes)
    /rng                   attrs: seed, scheme; dataset torch_cpu (rank 0 generator state)

Tensors keep their dtype; each dataset has an attribute ``dtype`` with the torch
dtype name. A file is built in memory, written as ``.round_NNNNN.h5.tmp-PID``,
fsynced and renamed: it is complete or absent. A failed write (full disk, I/O error, permission)
removes the temporary file, leaves the earlier files alone and raises ``StorageError``
naming the file, the cause and the newest intact checkpoint.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import h5py
import numpy as np
import torch

from .. import faults
from ..flat import State
from ..migrations import checkpoint_records, drop_legacy_entries, version_in_text

FORMAT = "fednas-mpi-checkpoint"
FORMAT_VERSION = 1
_NAME = re.compile(r"^round_(\d{5,})\.h5$")
_TEMPORARY = re.compile(r"^\.round_(\d{5,})\.h5\.tmp-(\d+)$")
T = TypeVar("T")
# h5py reports a failed write as RuntimeError/OSError text carrying the C errno
_H5_ERRNO = re.compile(r"errno\s*=\s*(\d+)")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file."""


class StorageError(OSError):
    """A checkpoint could not be written. ``path`` is the file, ``cause`` the reason in
    words (with the errno's name when known), ``newest`` the newest checkpoint that still
    reads back whole (None if there is none). The temporary file has been removed."""

    def __init__(self, path: Path, cause: str, code: int | None, newest: Path | None):
        super().__init__(code or 0, cause, str(path))
        self.path, self.cause, self.code, self.newest = path, cause, code, newest

    def __str__(self) -> str:
        return f"cannot write checkpoint {self.path}: {self.cause}"


def errno_of(exc: BaseException) -> int | None:
    """The operating system's error number behind ``exc`` (an OSError, or h5py's text
    ``errno = N`` anywhere in its chain), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno:
            return exc.errno
        m = _H5_ERRNO.search(str(exc))
        if m and int(m.group(1)):
            return int(m.group(1))
        exc = exc.__cause__ or exc.__context__
    return None


def _cause(exc: BaseException) -> tuple[str, int | None]:
    code = errno_of(exc)
    if code is None:
        return f"{type(exc).__name__}: {exc}", None
    name = errno.errorcode.get(code, str(code))
    hint = {
        errno.ENOSPC: "the file system is full",
        errno.EDQUOT: "the disk quota is used up",
        errno.EIO: "the storage reported an I/O error",
        errno.EACCES: "no permission to write there",
        errno.EPERM: "no permission to write there",
        errno.EROFS: "the file system is read-only",
    }.get(code)
    text = f"{os.strerror(code)} ({name})"
    return (f"{text}: {hint}" if hint else text), code


@dataclass
class Checkpoint:
    round: int
    config_yaml: str
    spec: dict
    state: State
    server_state: State = field(default_factory=dict)
    client_states: dict[int, State] = field(default_factory=dict)
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    stages: list[str] = field(default_factory=list)
    client_metrics: dict[str, np.ndarray] = field(default_factory=dict)
    rng_torch_cpu: torch.Tensor | None = None
    attrs: dict = field(default_factory=dict)
    path: Path | None = None


def checkpoint_path(run_dir: str | Path, round_: int) -> Path:
    return Path(run_dir) / f"round_{round_:05d}.h5"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(round, path) of files named like checkpoints, oldest first (not validated)."""
    out = []
    for p in Path(run_dir).iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def _write_tensors(group: h5py.Group, tensors: State) -> None:
    for name, t in tensors.items():
        arr = t.detach().cpu()
        if arr.dtype == torch.bfloat16:
            arr = arr.float()  # HDF5 has no bfloat16; the dtype attr restores it
        ds = group.create_dataset(name, data=arr.numpy())
        ds.attrs["dtype"] = str(t.dtype).removeprefix("torch.")


def _read_tensors(group: h5py.Group) -> State:
    out = {}
    # h5py iterates in name order; the writer's order (the layout's) is kept in "order".
    for name in group.attrs.get("order", list(group)):
        ds = group[name]
        t = torch.from_numpy(np.asarray(ds[()]))
        out[name] = t.to(getattr(torch, ds.attrs.get("dtype", str(t.dtype)[6:])))
    return out


def _tensor_group(parent: h5py.Group, name: str, tensors: State) -> None:
    g = parent.create_group(name)
    g.attrs["order"] = list(tensors)
    _write_tensors(g, tensors)


def _encode(
    round_: int,
    config_yaml: str,
    spec: dict,
    state: State,
    server_state: State,
    client_states: dict[int, State],
    metrics: dict[str, np.ndarray],
    stages: list[str],
    partition: dict[str, np.ndarray],
    attrs: dict,
    client_metrics: dict[str, np.ndarray] | None,
) -> memoryview:
    """The checkpoint as the bytes of an HDF5 file, built in memory. HDF5 never touches the
    disk: a full disk or an I/O error then meets a plain write(2) (a clean OSError with its
    errno), never HDF5's flush at close, which reports such errors from deallocators (as
    'Exception ignored', through sys.excepthook, at worst by crashing)."""
    buf = io.BytesIO()
    with h5py.File(buf, "w", libver="latest") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["round"] = int(round_)
        f.attrs["config"] = config_yaml
        f.attrs["spec"] = json.dumps(spec, sort_keys=True)
        f.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for k, v in attrs.items():
            f.attrs[k] = v
        _tensor_group(f, "state", state)
        _tensor_group(f, "server_state", server_state)
        clients = f.create_group("clients")
        for cid in sorted(client_states):
            _tensor_group(clients, str(cid), client_states[cid])
        m = f.create_group("metrics")
        for name, values in metrics.items():
            m.create_dataset(name, data=np.asarray(values, dtype=np.float64))
        m.create_dataset("stage", data=np.array(stages, dtype=h5py.string_dtype()))
        if client_metrics:
            cm = f.create_group("client_metrics")
            for name, values in client_metrics.items():
                cm.create_dataset(name, data=np.asarray(values, dtype=np.float64))
        p = f.create_group("partition")
        for name, values in partition.items():
            p.create_dataset(name, data=values)
        rng = f.create_group("rng")
        rng.attrs["seed"] = attrs.get("seed", 0)
        rng.attrs["scheme"] = "every draw seeded from (seed, round, client, purpose)"
        rng.create_dataset("torch_cpu", data=torch.get_rng_state().numpy())
        f.flush()
    return buf.getbuffer()


def write_checkpoint(
    run_dir: str | Path,
    round_: int,
    *,
    config_yaml: str,
    spec: dict,
    state: State,
    server_state: State,
    client_states: dict[int, State],
    metrics: dict[str, np.ndarray],
    stages: list[str],
    partition: dict[str, np.ndarray],
    attrs: dict,
    client_metrics: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write round ``round_``'s checkpoint atomically and return its path."""
    final = checkpoint_path(run_dir, round_)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        data = _encode(
            round_,
            config_yaml,
            spec,
            state,
            server_state,
            client_states,
            metrics,
            stages,
            partition,
            attrs,
            client_metrics,
        )
        with open(tmp, "wb") as fh:
            half = len(data) // 2
            fh.write(data[:half])
            fh.flush()
            faults.during_checkpoint_write(round_, tmp)
            fh.write(data[half:])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except (OSError, RuntimeError) as e:  # write(2)'s errors; h5py's (encoding) too
        _remove_quietly(tmp)
        cause, code = _cause(e)
        raise StorageError(final, cause, code, _newest_intact(run_dir)) from e
    except BaseException:
        _remove_quietly(tmp)
        raise
    return final


def _newest_intact(run_dir: str | Path) -> Path | None:
    try:
        newest, _ = find_latest(run_dir)
    except (OSError, RuntimeError):  # the storage may fail the reads as well
        return None
    return newest.path if newest is not None else None


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as e:  # an I/O error may refuse this too; say so, do not mask the first
        print(f"fednas-mpi: warning: could not remove {path}: {e.strerror}", file=sys.stderr)


def remove_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete the temporary files (``.round_NNNNN.h5.tmp-PID``) a killed writer left in
    ``run_dir``; returns the ones removed. They are never complete checkpoints (a finished
    file is renamed), so nothing is lost. Call it only when no writer is running there."""
    removed = []
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return removed
    for p in sorted(run_dir.iterdir()):
        if _TEMPORARY.match(p.name) and p.is_file():
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories
    finally:
        os.close(fd)


def read_checkpoint(path: str | Path, *, tensors: bool = True) -> Checkpoint:
    """Load a checkpoint; any defect raises CheckpointError naming the file."""
    path = Path(path)
    try:
        # Files are immutable once renamed into place: no lock needed, and none taken, so a
        # reader never blocks a writer nor fails on file systems without locking.
        with h5py.File(path, "r", locking=False) as f:
            if f.attrs.get("format") != FORMAT:
                raise CheckpointError(
                    f"{path}: not a fednas-mpi checkpoint (no format attribute {FORMAT!r})"
                )
            version = int(f.attrs["format_version"])
            if version > FORMAT_VERSION:
                raise CheckpointError(
                    f"{path}: format version {version} is newer than this "
                    f"fednas-mpi reads ({FORMAT_VERSION}); upgrade fednas-mpi"
                )
            ck = Checkpoint(
                round=int(f.attrs["round"]),
                config_yaml=str(f.attrs["config"]),
                spec=json.loads(f.attrs["spec"]),
                state={},
                attrs={k: _plain(v) for k, v in f.attrs.items()},
                path=path,
            )
            ck.stages = [
                s.decode() if isinstance(s, bytes) else str(s) for s in f["metrics/stage"][()]
            ]
            metrics, client_metrics = checkpoint_records(
                {k: v[()] for k, v in f["metrics"].items() if k != "stage"},
                {k: v[()] for k, v in f["client_metrics"].items()}
                if "client_metrics" in f
                else None,
                len(ck.stages),
                version_in_text(ck.config_yaml),
            )
            ck.metrics = {k: np.asarray(v, dtype=np.float64) for k, v in metrics.items()}
            ck.client_metrics = {k: np.asarray(v) for k, v in client_metrics.items()}
            if tensors:
                ck.state = drop_legacy_entries(_read_tensors(f["state"]), "state")
                ck.server_state = _read_tensors(f["server_state"])
                ck.client_states = {
                    int(c): drop_legacy_entries(_read_tensors(g), "client")
                    for c, g in f["clients"].items()
                }
                ck.rng_torch_cpu = torch.from_numpy(np.asarray(f["rng/torch_cpu"][()]))
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable or incomplete checkpoint ({e})") from None
    return ck


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode()
    return v


def newest_readable(
    run_dir: str | Path, load: Callable[[Path], T] = read_checkpoint, attempts: int = 3
) -> tuple[T | None, list[str]]:
    """The newest checkpoint of ``run_dir`` that reads back whole: ``load(path)`` of it (by
    default the whole Checkpoint) and a note ``"PATH: why"`` for each newer file passed
    over; (None, notes) when none reads (``no_readable_message`` words that).

    The one policy for everything that picks "the newest" (resume, export, report, data
    stats): files are tried newest first; one that ``load`` fails on (CheckpointError,
    OSError, KeyError, ValueError: truncated, foreign, missing a group) is skipped with its
    reason. Safe while a run writes: temporaries are never opened, and a file that
    vanishes while being read (``store.keep`` removed it) is not a defect: the directory is
    listed again, up to ``attempts`` times, as a newer file has appeared meanwhile.
    """
    run_dir = Path(run_dir)
    skipped: dict[Path, str] = {}
    for _ in range(attempts):
        try:
            files = list_checkpoints(run_dir)
        except FileNotFoundError:
            return None, [f"{run_dir}: no such directory"]
        except OSError as e:
            return None, [f"{run_dir}: cannot list the directory ({e.strerror or e})"]
        vanished = False
        for _, path in reversed(files):
            if path in skipped:
                continue
            try:
                return load(path), list(skipped.values())
            except (CheckpointError, OSError, KeyError, ValueError) as e:
                if not path.exists():
                    vanished = True
                    break
                text = str(e)
                skipped[path] = text if text.startswith(str(path)) else f"{path}: {text}"
        if not vanished:
            break
    return None, list(skipped.values())


def no_readable_message(run_dir: str | Path, skipped: list[str]) -> str:
    """Why ``newest_readable`` found nothing: the directory, then each file's reason."""
    why = "".join(f"; skipped {s}" for s in skipped if not s.startswith(f"{run_dir}: "))
    own = [s for s in skipped if s.startswith(f"{run_dir}: ")]
    if own:
        return own[0]
    return f"{run_dir}: no readable checkpoint (round_NNNNN.h5){why}"


def find_latest(run_dir: str | Path) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint that reads back whole, and a note for each newer one skipped
    (``newest_readable`` with the whole checkpoint)."""
    return newest_readable(run_dir)


def prune_old(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` round files (keep=0 keeps everything)."""
    if keep <= 0:
        return
    for _, path in list_checkpoints(run_dir)[:-keep]:
        # only after the newest file was written, so an intact one always remains; a file
        # that cannot be removed (I/O error) is left and reported, not fatal
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            print(
                f"fednas-mpi: warning: store.keep: could not remove {path}: {e.strerror}",
                file=sys.stderr,
            )
