"""Named tensors <-> one flat numpy buffer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fednas_mpi.flat import Layout


def f32_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    special = torch.tensor(
        [0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-45, 3.4028235e38, -1.5],
        dtype=torch.float32,
    )
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(4, generator=g),
        "scalar": torch.tensor(2.5),  # 0-d
        "special": special,
        "empty": torch.empty(0, 5),
        "fc.weight": torch.randn(7, 5, generator=g).t(),  # not contiguous
        "deep": torch.randn(2, 1, 3, 1, 2, generator=g),
    }


def bits(t: torch.Tensor) -> bytes:
    return t.contiguous().numpy().tobytes()


def assert_bit_exact(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert b[k].dtype == a[k].dtype, k
        assert tuple(b[k].shape) == tuple(a[k].shape), k
        assert bits(b[k]) == bits(a[k]), k


def test_layout_of_records_names_shapes_dtypes_in_order():
    state = f32_state()
    lay = Layout.of(state)
    assert lay.names == (
        "conv.weight",
        "conv.bias",
        "scalar",
        "special",
        "empty",
        "fc.weight",
        "deep",
    )
    assert lay.shapes == ((4, 3, 3, 3), (4,), (), (8,), (0, 5), (5, 7), (2, 1, 3, 1, 2))
    assert lay.dtypes == (torch.float32,) * 7
    assert lay.sizes == [108, 4, 1, 8, 0, 35, 12]
    assert lay.size == 168


def test_float32_round_trip_is_bit_exact():
    state = f32_state()
    lay = Layout.of(state)
    buf = lay.pack(state)
    assert buf.dtype == np.float32
    assert buf.shape == (lay.size,)
    back = lay.unpack(buf)
    assert_bit_exact(state, back)


def test_pack_concatenates_in_layout_order():
    state = {
        "b": torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
        "a": torch.tensor(5.0),
        "c": torch.tensor([6.0, 7.0]),
    }
    buf = Layout.of(state).pack(state)
    assert buf.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]


def test_pack_of_transposed_tensor_uses_logical_order():
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3).t()  # [[0,3],[1,4],[2,5]]
    buf = Layout.of({"t": t}).pack({"t": t})
    assert buf.tolist() == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]


def test_unpack_returns_copies_not_views():
    state = {"w": torch.ones(3)}
    lay = Layout.of(state)
    buf = lay.pack(state)
    back = lay.unpack(buf)
    buf[:] = 7.0
    assert back["w"].tolist() == [1.0, 1.0, 1.0]
    back["w"][0] = -1.0
    assert buf.tolist() == [7.0, 7.0, 7.0]


def test_pack_detaches_grad_tensors():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    state = {"w": w * 1}
    back = Layout.of(state).unpack(Layout.of(state).pack(state))
    assert back["w"].tolist() == [1.0, 2.0]
    assert not back["w"].requires_grad


def test_pack_into_given_buffer():
    state = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor(3.0)}
    lay = Layout.of(state)
    out = np.full(lay.size, -1.0, dtype=np.float32)
    res = lay.pack(state, out=out)
    assert res is out
    assert out.tolist() == [1.0, 2.0, 3.0]


def test_pack_with_explicit_dtype():
    state = {"a": torch.tensor([0.1, 0.2])}
    buf = Layout.of(state).pack(state, dtype=np.float64)
    assert buf.dtype == np.float64
    assert buf.tolist() == [float(np.float32(0.1)), float(np.float32(0.2))]


@pytest.mark.parametrize(
    ("dtypes", "wire"),
    [
        ([torch.float32, torch.float32], np.float32),
        ([torch.float32], np.float32),
        ([torch.float32, torch.float64], np.float64),
        ([torch.float64], np.float64),
        ([torch.float32, torch.int64], np.float64),
        ([torch.int32, torch.float32], np.float64),
        ([torch.float32, torch.float16], np.float64),
        ([torch.bool, torch.float32], np.float64),
    ],
)
def test_wire_dtype(dtypes, wire):
    state = {f"t{i}": torch.zeros(2, dtype=d) for i, d in enumerate(dtypes)}
    lay = Layout.of(state)
    assert lay.wire_dtype() == np.dtype(wire)
    assert lay.pack(state).dtype == np.dtype(wire)


def test_empty_layout():
    lay = Layout.of({})
    assert lay.size == 0
    assert lay.wire_dtype() == np.float32  # vacuously all float32
    assert lay.pack({}).shape == (0,)
    assert lay.unpack(np.empty(0, np.float32)) == {}


def test_mixed_state_round_trips_through_float64():
    g = torch.Generator().manual_seed(1)
    state = {
        "w": torch.randn(3, 4, generator=g),  # float32
        "d": torch.randn(5, generator=g, dtype=torch.float64),
        "steps": torch.tensor(123456789, dtype=torch.int64),  # 0-d integer
        "big": torch.tensor([2**52, -(2**52) + 1, 0, -1], dtype=torch.int64),
        "counts": torch.tensor([[1, -2], [3, 2**31 - 1]], dtype=torch.int32),
        "small": torch.tensor([-128, 127, 0], dtype=torch.int8),
        "mask": torch.tensor([True, False, True]),
        "half": torch.tensor([0.5, -1.25, 65504.0], dtype=torch.float16),
    }
    lay = Layout.of(state)
    buf = lay.pack(state)
    assert buf.dtype == np.float64
    assert buf.size == 12 + 5 + 1 + 4 + 4 + 3 + 3 + 3
    back = lay.unpack(buf)
    assert_bit_exact(state, back)


def test_integers_survive_small_float_noise():
    # a sum of packed buffers divided back can carry rounding noise; ints are rounded
    state = {"n": torch.tensor([3, -7, 10], dtype=torch.int64)}
    lay = Layout.of(state)
    buf = lay.pack(state) + np.array([1e-9, -1e-9, 0.4])
    assert lay.unpack(buf)["n"].tolist() == [3, -7, 10]


def test_unpack_of_float32_buffer_into_float64_state_widens():
    state = {"d": torch.tensor([0.25, 1.5], dtype=torch.float64)}
    lay = Layout.of(state)
    back = lay.unpack(np.array([0.25, 1.5], dtype=np.float32))
    assert back["d"].dtype == torch.float64
    assert back["d"].tolist() == [0.25, 1.5]


@pytest.mark.parametrize(
    "other",
    [
        ["b", "a", "c"],  # swapped
        ["a", "b"],  # missing
        ["a", "b", "c", "d"],  # extra
        ["a", "b", "x"],  # renamed
    ],
)
def test_pack_rejects_keys_that_do_not_match(other):
    lay = Layout.of({"a": torch.zeros(1), "b": torch.zeros(2), "c": torch.zeros(3)})
    with pytest.raises(ValueError, match="do not match the layout"):
        lay.pack({k: torch.zeros(1) for k in other})


def test_unpack_rejects_short_buffer_and_ignores_tail():
    state = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor(3.0)}
    lay = Layout.of(state)
    with pytest.raises(ValueError, match="smaller than layout"):
        lay.unpack(np.zeros(2, dtype=np.float32))
    back = lay.unpack(np.array([1.0, 2.0, 3.0, 99.0], dtype=np.float32))
    assert back["a"].tolist() == [1.0, 2.0]
    assert back["b"].item() == 3.0


def test_meta_round_trip():
    state = {
        "w": torch.zeros(2, 3),
        "s": torch.tensor(1, dtype=torch.int64),
        "d": torch.zeros(4, dtype=torch.float64),
        "m": torch.zeros(0, dtype=torch.bool),
    }
    lay = Layout.of(state)
    meta = lay.to_meta()
    assert meta == [
        ("w", (2, 3), "float32"),
        ("s", (), "int64"),
        ("d", (4,), "float64"),
        ("m", (0,), "bool"),
    ]
    assert Layout.from_meta(meta) == lay
    # survives a JSON trip (tuples come back as lists)
    again = Layout.from_meta(json.loads(json.dumps(meta)))
    assert again == lay
    assert again.shapes == ((2, 3), (), (4,), (0,))
    assert again.wire_dtype() == np.float64


def test_meta_layout_unpacks_what_the_original_packed():
    state = f32_state()
    lay = Layout.of(state)
    remote = Layout.from_meta(json.loads(json.dumps(lay.to_meta())))
    assert_bit_exact(state, remote.unpack(lay.pack(state)))
