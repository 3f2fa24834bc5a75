"""Atomic per-round HDF5 checkpoints: round trip, atomicity, discovery, pruning."""

from __future__ import annotations

import errno
import json
import os
import shutil

import h5py
import numpy as np
import pytest
import torch

from fednas_mpi import faults
from fednas_mpi.config import SCHEMA_VERSION, VERSION_KEY
from fednas_mpi.store import (
    CheckpointError,
    StorageError,
    checkpoint_path,
    find_latest,
    list_checkpoints,
    newest_readable,
    no_readable_message,
    read_checkpoint,
    remove_temporaries,
    write_checkpoint,
)
from fednas_mpi.store.checkpoint import FORMAT, FORMAT_VERSION, errno_of, prune_old

# a config as a run writes it today: the schema version first (older files have none, and
# read through migrations.checkpoint_records)
CONFIG_YAML = f"{VERSION_KEY}: {SCHEMA_VERSION}\nrun:\n  name: test\n  seed: 7\n"
SPEC = {"kind": "cnn", "channels": [16, 32], "nested": {"a": 1.5, "b": None}}


def make_state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # keys deliberately not in name order
    return {
        "z.weight": torch.randn(3, 4, generator=g),
        "a.bias": torch.randn(5, generator=g, dtype=torch.float64),
        "m.steps": torch.tensor([1, -2, 2**40], dtype=torch.int64),
        "b.scalar": torch.tensor(0.1, dtype=torch.float32),
        "c.special": torch.tensor([float("nan"), -0.0, float("inf"), 1e-45]),
    }


def make_kwargs(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(100 + seed)
    return dict(
        config_yaml=CONFIG_YAML,
        spec=SPEC,
        state=make_state(seed),
        server_state={
            "velocity.z": torch.randn(3, 4, generator=g),
            "count": torch.tensor(4, dtype=torch.int64),
        },
        client_states={
            2: {"y.head": torch.randn(2, generator=g), "b.alpha": torch.randn(3, generator=g)},
            10: {"y.head": torch.zeros(2), "b.alpha": torch.ones(3)},
            0: {"y.head": torch.full((2,), 3.0), "b.alpha": torch.arange(3.0)},
        },
        metrics={"test_acc": np.array([0.5, np.nan, 0.75]), "loss": [2.0, 1.5, 1.0]},
        stages=["search", "search", "train"],
        partition={
            "train_sizes": np.array([10, 20, 30], dtype=np.int64),
            "eval_sizes": np.array([2, 5, 7], dtype=np.int64),
            "train_hist": np.arange(6, dtype=np.int64).reshape(3, 2),
            "eval_hist": np.ones((3, 2), dtype=np.int64),
        },
        attrs={
            "seed": 7,
            "world_size": 3,
            "rounds_planned": 10,
            "stage": "train",
            "versions": json.dumps({"fednas_mpi": "0.1.0"}),
        },
    )


def bits(t: torch.Tensor) -> bytes:
    return t.contiguous().numpy().tobytes()


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(b) == list(a)  # same key order
    for k in a:
        assert b[k].dtype == a[k].dtype, k
        assert tuple(b[k].shape) == tuple(a[k].shape), k
        assert bits(b[k]) == bits(a[k]), k


def leftovers(run_dir) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir())


# ---------------------------------------------------------------- round trip


def test_round_trip(tmp_path):
    kw = make_kwargs()
    torch.manual_seed(1234)
    rng_before = torch.get_rng_state().clone()
    path = write_checkpoint(tmp_path, 3, **kw)
    assert path == tmp_path / "round_00003.h5"
    assert path.name == "round_00003.h5"
    assert leftovers(tmp_path) == ["round_00003.h5"]  # no temporary file remains

    ck = read_checkpoint(path)
    assert ck.path == path
    assert ck.round == 3
    assert ck.config_yaml == CONFIG_YAML
    assert ck.spec == SPEC
    assert_same_state(kw["state"], ck.state)
    assert_same_state(kw["server_state"], ck.server_state)
    assert sorted(ck.client_states) == [0, 2, 10]
    for cid, st in kw["client_states"].items():
        assert_same_state(st, ck.client_states[cid])
    assert sorted(ck.metrics) == ["loss", "test_acc"]
    assert ck.metrics["test_acc"].dtype == np.float64
    np.testing.assert_array_equal(ck.metrics["test_acc"], [0.5, np.nan, 0.75])
    np.testing.assert_array_equal(ck.metrics["loss"], [2.0, 1.5, 1.0])
    assert ck.stages == ["search", "search", "train"]
    assert torch.equal(ck.rng_torch_cpu, rng_before)

    assert ck.attrs["format"] == FORMAT
    assert ck.attrs["format_version"] == FORMAT_VERSION
    assert ck.attrs["round"] == 3 and type(ck.attrs["round"]) is int
    assert ck.attrs["config"] == CONFIG_YAML
    assert json.loads(ck.attrs["spec"]) == SPEC
    assert ck.attrs["seed"] == 7
    assert ck.attrs["world_size"] == 3
    assert ck.attrs["rounds_planned"] == 10
    assert ck.attrs["stage"] == "train"
    assert json.loads(ck.attrs["versions"]) == {"fednas_mpi": "0.1.0"}
    assert isinstance(ck.attrs["created"], str) and ck.attrs["created"]

    with h5py.File(path, "r") as f:
        for name, arr in kw["partition"].items():
            np.testing.assert_array_equal(f["partition"][name][()], arr)
            assert f["partition"][name].dtype == arr.dtype
        assert f["rng"].attrs["seed"] == 7
        assert f["state/z.weight"].attrs["dtype"] == "float32"
        assert f["state/a.bias"].attrs["dtype"] == "float64"
        assert f["state/m.steps"].attrs["dtype"] == "int64"


def test_read_without_tensors(tmp_path):
    kw = make_kwargs()
    path = write_checkpoint(tmp_path, 4, **kw)
    ck = read_checkpoint(path, tensors=False)
    assert ck.round == 4
    assert ck.state == {} and ck.server_state == {} and ck.client_states == {}
    assert ck.rng_torch_cpu is None
    assert ck.stages == ["search", "search", "train"]
    np.testing.assert_array_equal(ck.metrics["loss"], [2.0, 1.5, 1.0])
    assert ck.client_metrics == {}  # written without per-client metrics (older runs)


def test_per_client_metrics_round_trip(tmp_path):
    acc = np.array([[0.5, np.nan, 0.25], [np.nan, 0.75, 1.0]])
    path = write_checkpoint(tmp_path, 2, **make_kwargs(), client_metrics={"local_acc": acc})
    ck = read_checkpoint(path, tensors=False)
    assert list(ck.client_metrics) == ["local_acc"]
    np.testing.assert_array_equal(ck.client_metrics["local_acc"], acc)


def test_round_trip_of_empty_parts(tmp_path):
    state = {"w": torch.ones(2)}
    path = write_checkpoint(
        tmp_path,
        1,
        config_yaml=f"{VERSION_KEY}: {SCHEMA_VERSION}\n",
        spec={},
        state=state,
        server_state={},
        client_states={},
        metrics={},
        stages=[],
        partition={},
        attrs={},
    )
    ck = read_checkpoint(path)
    assert_same_state(state, ck.state)
    assert ck.server_state == {} and ck.client_states == {}
    assert ck.metrics == {} and ck.stages == []
    assert ck.spec == {} and ck.config_yaml == f"{VERSION_KEY}: {SCHEMA_VERSION}\n"


def test_a_file_from_before_the_records_reads_them_as_unknown(tmp_path):
    """A checkpoint whose config records no schema version (written before 16) and lacks
    the records started later reads in today's shape (migrations.checkpoint_records):
    method time NaN per round, no per-client rows; what it holds is unchanged."""
    kw = make_kwargs()
    kw["config_yaml"] = "run:\n  name: test\n"
    ck = read_checkpoint(write_checkpoint(tmp_path, 3, **kw))
    assert sorted(ck.metrics) == ["loss", "method_time", "test_acc"]
    assert ck.metrics["method_time"].dtype == np.float64
    assert np.isnan(ck.metrics["method_time"]).all() and len(ck.metrics["method_time"]) == 3
    np.testing.assert_array_equal(ck.metrics["loss"], [2.0, 1.5, 1.0])
    assert ck.client_metrics == {}


def test_bfloat16_and_bool_round_trip(tmp_path):
    state = {
        "h": torch.tensor([1.5, -2.0, 0.0078125], dtype=torch.bfloat16),
        "mask": torch.tensor([True, False]),
    }
    path = write_checkpoint(tmp_path, 2, **{**make_kwargs(), "state": state})
    back = read_checkpoint(path).state
    assert list(back) == ["h", "mask"]
    assert back["h"].dtype == torch.bfloat16 and torch.equal(back["h"], state["h"])
    assert back["mask"].dtype == torch.bool and torch.equal(back["mask"], state["mask"])


def test_checkpoint_path_names():
    assert checkpoint_path("runs/x", 3).name == "round_00003.h5"
    assert checkpoint_path("runs/x", 0).name == "round_00000.h5"
    assert checkpoint_path("runs/x", 123456).name == "round_123456.h5"
    assert str(checkpoint_path("runs/x", 12).parent) == "runs/x"


def test_overwrite_same_round(tmp_path):
    write_checkpoint(tmp_path, 5, **make_kwargs(0))
    kw = make_kwargs(1)
    write_checkpoint(tmp_path, 5, **kw)
    assert leftovers(tmp_path) == ["round_00005.h5"]
    assert_same_state(kw["state"], read_checkpoint(tmp_path / "round_00005.h5").state)


# ---------------------------------------------------------------- atomicity


def test_failure_in_flush_leaves_nothing(tmp_path, monkeypatch):
    def boom(self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(h5py.File, "flush", boom)
    # h5py's write failures (RuntimeError or OSError) become one StorageError naming the file
    with pytest.raises(StorageError, match="round_00003.h5: RuntimeError: disk on fire"):
        write_checkpoint(tmp_path, 3, **make_kwargs())
    assert leftovers(tmp_path) == []


def test_failure_on_bad_tensor_leaves_nothing(tmp_path):
    kw = make_kwargs()
    kw["client_states"] = {1: {"ok": torch.ones(2), "bad": "not a tensor"}}
    with pytest.raises(AttributeError):
        write_checkpoint(tmp_path, 3, **kw)
    assert leftovers(tmp_path) == []


def test_failure_keeps_older_checkpoint_intact(tmp_path, monkeypatch):
    kw = make_kwargs()
    write_checkpoint(tmp_path, 2, **kw)

    def boom(src, dst):
        raise OSError("rename refused")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="rename refused"):
        write_checkpoint(tmp_path, 3, **make_kwargs(1))
    assert leftovers(tmp_path) == ["round_00002.h5"]
    monkeypatch.undo()
    ck, skipped = find_latest(tmp_path)
    assert ck.round == 2 and skipped == []
    assert_same_state(kw["state"], ck.state)


def test_temp_file_name_is_hidden_and_per_process(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((os.path.basename(src), os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    write_checkpoint(tmp_path, 7, **make_kwargs())
    assert seen == [(f".round_00007.h5.tmp-{os.getpid()}", "round_00007.h5")]


# ---------------------------------------------------------------- discovery


def truncated_copy(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])


def write_foreign(path):
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.arange(3))
        f.attrs["owner"] = "someone else"


def test_find_latest_skips_truncated_and_foreign_files(tmp_path):
    kw = make_kwargs()
    good = write_checkpoint(tmp_path, 3, **kw)
    truncated_copy(good, tmp_path / "round_00009.h5")
    write_foreign(tmp_path / "round_00007.h5")

    ck, skipped = find_latest(tmp_path)
    assert ck is not None and ck.round == 3 and ck.path == good
    assert_same_state(kw["state"], ck.state)
    assert len(skipped) == 2
    assert "round_00009.h5" in skipped[0]  # newest first
    assert "round_00007.h5" in skipped[1]
    assert "not a fednas-mpi checkpoint" in skipped[1]


def test_find_latest_returns_newest_valid(tmp_path):
    for r in (1, 2, 10):
        write_checkpoint(tmp_path, r, **make_kwargs(r))
    ck, skipped = find_latest(tmp_path)
    assert ck.round == 10 and skipped == []
    assert_same_state(make_state(10), ck.state)


def test_find_latest_with_nothing_usable(tmp_path):
    assert find_latest(tmp_path) == (None, [])
    write_foreign(tmp_path / "round_00001.h5")
    ck, skipped = find_latest(tmp_path)
    assert ck is None
    assert len(skipped) == 1 and "round_00001.h5" in skipped[0]


# ------------------------------------------------ the one "newest readable" policy


@pytest.mark.parametrize("defect", ["corrupt", "truncated"])
def test_newest_readable_skips_a_bad_newest_file_and_says_why(tmp_path, defect):
    good = write_checkpoint(tmp_path, 2, **make_kwargs())
    bad = tmp_path / "round_00003.h5"
    if defect == "corrupt":
        bad.write_bytes(b"\x89HDF\r\n garbage " * 64)
    else:
        truncated_copy(good, bad)
    ck, skipped = newest_readable(tmp_path)
    assert ck.round == 2 and ck.path == good
    assert len(skipped) == 1 and skipped[0].startswith(f"{bad}: ")


def test_newest_readable_with_a_custom_load_skips_what_it_cannot_read(tmp_path):
    """A caller reading more than the checkpoint (data stats: a partition group) gets
    the same policy: a file lacking what it reads is passed over."""
    write_checkpoint(tmp_path, 1, **make_kwargs())
    newer = write_checkpoint(tmp_path, 2, **make_kwargs())
    with h5py.File(newer, "a") as f:
        del f["partition/train_hist"]

    def load(path):
        with h5py.File(path, "r") as f:
            return path, np.asarray(f["partition/train_hist"][()])

    (path, hist), skipped = newest_readable(tmp_path, load)
    assert path.name == "round_00001.h5" and hist.shape == (3, 2)
    assert len(skipped) == 1 and "round_00002.h5" in skipped[0]


def test_newest_readable_none_names_the_directory_and_the_reasons(tmp_path):
    missing = tmp_path / "absent"
    ck, skipped = newest_readable(missing)
    assert ck is None and no_readable_message(missing, skipped) == f"{missing}: no such directory"
    assert newest_readable(tmp_path) == (None, [])
    assert (
        no_readable_message(tmp_path, []) == f"{tmp_path}: no readable checkpoint (round_NNNNN.h5)"
    )
    write_foreign(tmp_path / "round_00001.h5")
    (tmp_path / "round_00002.h5").write_bytes(b"truncated")
    ck, skipped = newest_readable(tmp_path)
    msg = no_readable_message(tmp_path, skipped)
    assert ck is None and msg.startswith(f"{tmp_path}: no readable checkpoint")
    assert "round_00002.h5: unreadable" in msg and "not a fednas-mpi checkpoint" in msg
    assert msg.index("round_00002.h5") < msg.index("round_00001.h5")  # newest first


def test_newest_readable_tolerates_a_file_removed_by_store_keep(tmp_path):
    """While a reader falls back past a bad newest file, the writer adds a round and
    store.keep removes the oldest: the vanished file is no defect; the directory is read
    again and the new round is the answer."""
    write_checkpoint(tmp_path, 1, **make_kwargs(1))
    (tmp_path / "round_00002.h5").write_bytes(b"truncated")
    calls = []

    def load(path):
        calls.append(path.name)
        if path.name == "round_00001.h5" and len(calls) == 2:
            write_checkpoint(tmp_path, 3, **make_kwargs(3))
            prune_old(tmp_path, 2)  # round 1 goes
        return read_checkpoint(path)

    ck, skipped = newest_readable(tmp_path, load)
    assert ck.round == 3
    assert calls == ["round_00002.h5", "round_00001.h5", "round_00003.h5"]
    assert len(skipped) == 1 and "round_00002.h5" in skipped[0]


# ------------------------------------------------ checkpoints of earlier versions


def test_checkpoints_with_the_old_in_state_channel_drop_it_on_read(tmp_path):
    """Files written before ClientResult.aux held FedRLNAS's round sums as rl.* state
    entries and PerFedRLNAS's reports as pending.* client entries; they read without."""
    kw = make_kwargs()
    old = dict(
        kw,
        state={
            **kw["state"],
            "rl.inv_n": torch.zeros((), dtype=torch.float64),
            "rl.count_normal": torch.zeros(5, 8, dtype=torch.float64),
        },
        client_states={
            **kw["client_states"],
            4: {
                "alpha_normal": torch.ones(5, 8, dtype=torch.float64),
                "pending.acc": torch.tensor(0.5, dtype=torch.float64),
            },
        },
    )
    ck = read_checkpoint(write_checkpoint(tmp_path, 1, **old))
    assert_same_state(kw["state"], ck.state)
    assert list(ck.client_states[4]) == ["alpha_normal"]
    assert_same_state(kw["client_states"][2], ck.client_states[2])


def test_read_truncated_raises_naming_file(tmp_path):
    good = write_checkpoint(tmp_path, 3, **make_kwargs())
    bad = tmp_path / "round_00009.h5"
    truncated_copy(good, bad)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(bad)
    assert str(bad) in str(info.value)


def test_read_foreign_raises_naming_file(tmp_path):
    bad = tmp_path / "round_00004.h5"
    write_foreign(bad)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(bad)
    assert str(bad) in str(info.value)
    assert "not a fednas-mpi checkpoint" in str(info.value)


def test_read_non_hdf5_and_missing_raise_naming_file(tmp_path):
    junk = tmp_path / "round_00001.h5"
    junk.write_text("hello")
    with pytest.raises(CheckpointError, match="round_00001.h5"):
        read_checkpoint(junk)
    missing = tmp_path / "round_00002.h5"
    with pytest.raises(CheckpointError, match="round_00002.h5"):
        read_checkpoint(missing)


def test_read_incomplete_and_newer_format_raise(tmp_path):
    good = write_checkpoint(tmp_path, 1, **make_kwargs())
    incomplete = tmp_path / "round_00002.h5"
    shutil.copy(good, incomplete)
    with h5py.File(incomplete, "a") as f:
        del f["metrics"]
    with pytest.raises(CheckpointError, match="round_00002.h5"):
        read_checkpoint(incomplete)

    newer = tmp_path / "round_00003.h5"
    shutil.copy(good, newer)
    with h5py.File(newer, "a") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(newer)
    assert "round_00003.h5" in str(info.value) and "newer" in str(info.value)

    ck, skipped = find_latest(tmp_path)
    assert ck.round == 1 and len(skipped) == 2


def test_list_checkpoints_ignores_other_names(tmp_path):
    for name in ("round_00001.h5", "round_00012.h5", "round_100000.h5", "round_00002.h5"):
        (tmp_path / name).write_bytes(b"")
    for name in (
        "round_1.h5.tmp",
        ".round_00001.h5.tmp-12",
        "round_1.h5",
        "round_0001.h5",
        "round_00003.h5.bak",
        "xround_00004.h5",
        "round_00005.hdf5",
        "notes.txt",
        "round_abcde.h5",
    ):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "round_00006.h5").mkdir()  # a directory is not a checkpoint
    got = list_checkpoints(tmp_path)
    assert [r for r, _ in got] == [1, 2, 12, 100000]
    assert [p.name for _, p in got] == [
        "round_00001.h5",
        "round_00002.h5",
        "round_00012.h5",
        "round_100000.h5",
    ]
    assert all(p.parent == tmp_path for _, p in got)


def test_prune_old_keeps_newest(tmp_path):
    for r in (1, 2, 3, 4, 5):
        write_checkpoint(tmp_path, r, **make_kwargs())
    (tmp_path / "notes.txt").write_text("keep me")
    prune_old(tmp_path, keep=2)
    assert leftovers(tmp_path) == ["notes.txt", "round_00004.h5", "round_00005.h5"]
    prune_old(tmp_path, keep=5)
    assert leftovers(tmp_path) == ["notes.txt", "round_00004.h5", "round_00005.h5"]
    prune_old(tmp_path, keep=1)
    assert leftovers(tmp_path) == ["notes.txt", "round_00005.h5"]


def test_prune_old_zero_keeps_all(tmp_path):
    for r in (1, 2, 3):
        (tmp_path / f"round_{r:05d}.h5").write_bytes(b"")
    prune_old(tmp_path, keep=0)
    assert len(list_checkpoints(tmp_path)) == 3


# ---------------------------------------------------------------- storage errors

# What h5py 3 raises when write(2) fails on a full tmpfs (recorded on one): the errno is
# only in the text.
H5_ENOSPC = (
    "Can't synchronously write data (file write failed: time = Tue Dec  1 10:59:39 "
    "2026\n, filename = '/mnt/.round_00002.h5.tmp-4672', file descriptor = 3, "
    "errno = 28, error message = 'No space left on device', buf = 0x5558d0e81b00, "
    "total write size = 361088, bytes this sub-write = 361088, offset = 45056)"
)


def test_errno_is_found_in_h5py_text_and_exception_chains():
    assert errno_of(RuntimeError(H5_ENOSPC)) == errno.ENOSPC
    assert errno_of(OSError(errno.EIO, "Input/output error")) == errno.EIO
    try:
        try:
            raise PermissionError(errno.EACCES, "Permission denied")
        except OSError as e:
            raise RuntimeError("Unable to create file") from e
    except RuntimeError as outer:
        assert errno_of(outer) == errno.EACCES
    assert errno_of(RuntimeError("no number here")) is None


@pytest.mark.parametrize(
    "action,code,words",
    [
        ("enospc", errno.ENOSPC, "file system is full"),
        ("eio", errno.EIO, "I/O error"),
        ("eacces", errno.EACCES, "no permission"),
    ],
)
def test_injected_write_error_is_one_storage_error(tmp_path, monkeypatch, action, code, words):
    for r in (1, 2):
        write_checkpoint(tmp_path, r, **make_kwargs(r))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setenv(faults.CHECKPOINT, f"3:{action}")
    faults.checkpoint_faults.cache_clear()
    try:
        with pytest.raises(StorageError) as info:
            write_checkpoint(tmp_path, 3, **make_kwargs(3))
    finally:
        monkeypatch.delenv(faults.CHECKPOINT)
        faults.checkpoint_faults.cache_clear()
    e = info.value
    assert e.code == code and e.path == tmp_path / "round_00003.h5"
    assert words in e.cause and errno.errorcode[code] in e.cause
    assert e.newest == tmp_path / "round_00002.h5"
    assert str(e).startswith(f"cannot write checkpoint {tmp_path / 'round_00003.h5'}: ")
    # temporary removed, the earlier files byte for byte as they were
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_keep_under_a_failed_write_never_loses_the_newest_intact_file(tmp_path, monkeypatch):
    for r in (1, 2, 3):
        write_checkpoint(tmp_path, r, **make_kwargs(r))
        prune_old(tmp_path, 2)

    def full(round_, path):  # a writer monkeypatched to meet a full disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(faults, "during_checkpoint_write", full)
    with pytest.raises(StorageError):
        write_checkpoint(tmp_path, 4, **make_kwargs(4))
    assert leftovers(tmp_path) == ["round_00002.h5", "round_00003.h5"]
    assert find_latest(tmp_path)[0].round == 3


def test_remove_temporaries_takes_only_unfinished_files(tmp_path):
    write_checkpoint(tmp_path, 1, **make_kwargs())
    (tmp_path / ".round_00002.h5.tmp-123").write_bytes(b"half")
    (tmp_path / ".round_00003.h5.tmp-99999").write_bytes(b"")
    (tmp_path / ".round_00002.h5.tmp-x").write_bytes(b"not ours")
    removed = remove_temporaries(tmp_path)
    assert [p.name for p in removed] == [".round_00002.h5.tmp-123", ".round_00003.h5.tmp-99999"]
    assert leftovers(tmp_path) == [".round_00002.h5.tmp-x", "round_00001.h5"]
    assert remove_temporaries(tmp_path / "absent") == []


def test_full_tmpfs_is_a_storage_error(tmp_path):
    """A real full file system: a 256 KiB tmpfs (needs root and mount; skipped otherwise)."""
    from tmpfs import mounted_tmpfs

    with mounted_tmpfs(tmp_path / "mnt", "256k") as mnt:
        small = {**make_kwargs(), "state": {"w": torch.zeros(1000)}}
        write_checkpoint(mnt, 1, **small)
        before = (mnt / "round_00001.h5").read_bytes()
        with pytest.raises(StorageError) as info:
            write_checkpoint(mnt, 2, **{**small, "state": {"w": torch.zeros(200_000)}})
        assert info.value.code == errno.ENOSPC and info.value.newest == mnt / "round_00001.h5"
        assert leftovers(mnt) == ["round_00001.h5"]
        assert (mnt / "round_00001.h5").read_bytes() == before
