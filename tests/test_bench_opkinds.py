"""bench/opkinds.py (issue 27): a profiled step's self time charged to kinds of op, each
helper to the nearest caller that names a kind, on a small hand-built step whose every op
is known."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F
from torch.profiler import ProfilerActivity, profile

from fednas_mpi.nas.depthwise import depthwise_conv2d

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def opkinds():
    spec = importlib.util.spec_from_file_location("bench_opkinds", ROOT / "bench" / "opkinds.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_opkinds"] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("bench_opkinds", None)


@pytest.fixture(scope="module")
def events():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 6, 6, generator=g, requires_grad=True)
    dw = torch.randn(4, 1, 3, 3, generator=g, requires_grad=True)  # nas.depthwise's
    dw2 = torch.randn(4, 1, 5, 5, generator=g, requires_grad=True)  # aten's own backward
    pw = torch.randn(6, 4, 1, 1, generator=g, requires_grad=True)
    grouped_pw = torch.randn(2, 6, 3, generator=g, requires_grad=True)  # 2 groups of 6x3
    mixw = torch.randn(3, 2, generator=g, requires_grad=True)
    opt = torch.optim.SGD([dw, dw2, pw, grouped_pw, mixw], lr=0.1, momentum=0.9)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        y = depthwise_conv2d(F.relu(x), dw, 1, 1, 1) + F.conv2d(x, dw2, None, 1, 2, 1, 4)
        y = F.batch_norm(F.conv2d(y, pw), None, None, None, None, True, 0.0, 1e-5)
        # nas.grouped's pointwise convs: a matmul of (groups, out, in) weights
        y = torch.matmul(grouped_pw, y.reshape(2, 2, 3, 36)).reshape(2, 12, 6, 6)
        y = torch.cat([F.max_pool2d(y, 3, 1, 1), y], 1)  # (2, 24, 6, 6)
        # eq. 2 as the grouped forward forms it: (3, 2) @ (2, 2, 432), a bmm of its own
        out = torch.bmm(mixw.expand(2, 3, 2), y.reshape(2, 2, -1))
        (out * out).sum().backward()
        opt.step()
    return prof.events()


def test_every_op_of_the_step_is_charged_to_its_kind(opkinds, events):
    times = opkinds.kind_times(events)
    for kind in (
        "depthwise conv",
        "conv (dense, pointwise)",
        "batchnorm",
        "pooling",
        "relu",
        "mix (eq. 2)",
        "optimiser",
        "copies, cat, slicing",
        "autograd overhead",
    ):
        assert times[kind] > 0, kind
    assert set(times) <= set(opkinds.KINDS)
    # the shares split the step's self time, nothing counted twice or left out
    assert sum(times.values()) == pytest.approx(sum(e.self_cpu_time_total for e in events))


def test_convolutions_by_their_weights_and_helpers_by_their_callers(opkinds, events):
    forward = opkinds.forward_ops(events)
    kinds = {}
    for e in events:
        kind = opkinds.kind_of(e, forward)
        if e.name == "aten::mkldnn_convolution" or e.name == "aten::convolution_backward":
            w = e.input_shapes[1 if e.name == "aten::mkldnn_convolution" else 2]
            want = "depthwise conv" if w[1] == 1 else "conv (dense, pointwise)"
            assert kind == want, (e.name, w)
        kinds.setdefault(e.name, set()).add(kind)
    assert kinds["aten::flip"] == {"depthwise conv"}  # inside nas.depthwise's backward
    # the backward nodes are charged as the forward ops that recorded them
    assert kinds["ConvolutionBackward0"] == {"depthwise conv", "conv (dense, pointwise)"}
    assert kinds["aten::bmm"] == {"mix (eq. 2)", "conv (dense, pointwise)"}
    assert kinds["BmmBackward0"] == {"mix (eq. 2)", "conv (dense, pointwise)"}
    assert kinds["NativeBatchNormBackward0"] == {"batchnorm"}
    assert "copies, cat, slicing" in kinds["aten::cat"]  # a forward cat has no caller
    assert opkinds.specific_kind("aten::matmul", [[3, 4], [4]]) is None  # eq. 8's
    assert opkinds.specific_kind("aten::matmul", [[3, 2], [2, 2, 5]]) == "mix (eq. 2)"
    assert opkinds.own_kind("autograd::engine::evaluate_function: X") == "autograd overhead"
