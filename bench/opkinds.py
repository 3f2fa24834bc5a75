"""Where a profiled supernet step spends its time, by kind of op (issue 27).

A torch.profiler trace lists hundreds of op names, most of them helpers (``aten::empty``,
``aten::copy_``, ``aten::reshape``) whose cost belongs to whatever called them: the copies
inside our depthwise backward are depthwise work, the reshapes inside the mix's matrix
product are the mix. So every event's *self* time is charged to the nearest event, itself
first and then its callers, that names a kind; an autograd node of the backward pass that
names none is charged like the forward op that recorded it (the profiler's sequence
numbers link the two: ``BmmBackward0`` is the mix's or a pointwise conv's as its forward
``bmm`` was); a helper with neither (a ``cat`` of the forward) is charged to copies or
autograd overhead by its own name. Shares of self time add up to the profiled step, so
they can be read on a loaded machine where absolute times cannot (though memory-bound ops
suffer more from neighbours than arithmetic-bound ones).
"""

from __future__ import annotations

from collections import Counter

KINDS = (
    "depthwise conv",
    "conv (dense, pointwise)",
    "batchnorm",
    "pooling",
    "relu",
    "mix (eq. 2)",
    "optimiser",
    "copies, cat, slicing",
    "autograd overhead",
    "other",
)
CONVS = {
    "aten::conv2d": 1,  # op name -> position of the weight among its inputs
    "aten::convolution": 1,
    "aten::_convolution": 1,
    "aten::mkldnn_convolution": 1,
    "aten::thnn_conv2d": 1,
    "aten::_slow_conv2d_forward": 1,
    "aten::_conv_depthwise2d": 1,
    "aten::convolution_backward": 2,
}
NAMED = {
    "_Depthwise": "depthwise conv",  # nas/depthwise.py's autograd function
    "_DepthwiseBackward": "depthwise conv",
    "fednas::mix": "mix (eq. 2)",
    "fednas::mix_backward": "mix (eq. 2)",
    "aten::relu": "relu",
    "aten::threshold_backward": "relu",
    "ReluBackward0": "relu",
}
PREFIXES = {
    "Optimizer.": "optimiser",
    "GeneratedBackwardFor_fednas_mix": "mix (eq. 2)",  # the fused mix's autograd node
    "aten::max_pool2d": "pooling",
    "aten::avg_pool2d": "pooling",
    "MaxPool2DWithIndicesBackward": "pooling",
    "AvgPool2DBackward": "pooling",
    "aten::batch_norm": "batchnorm",
    "aten::_batch_norm": "batchnorm",
    "aten::native_batch_norm": "batchnorm",
    "NativeBatchNormBackward": "batchnorm",
}
COPIES = {
    "aten::cat",
    "aten::copy_",
    "aten::narrow",
    "aten::slice",
    "aten::slice_backward",
    "aten::constant_pad_nd",
    "aten::pad",
    "aten::stack",
    "aten::clone",
    "aten::contiguous",
    "aten::split",
    "aten::split_with_sizes",
    "aten::reshape",
    "aten::_unsafe_view",
    "aten::view",
    "aten::as_strided",
    "aten::select",
    "aten::flatten",
    "aten::expand",
    "aten::permute",
    "aten::transpose",
    "aten::t",
    "aten::index",
    "aten::index_select",
}


def _conv_kind(name: str, shapes) -> str:
    """Depthwise when the weight is (channels, 1, k, k) with more than one channel."""
    pos = CONVS[name]
    w = shapes[pos] if shapes and len(shapes) > pos else []
    return "depthwise conv" if len(w) == 4 and w[1] == 1 and w[0] > 1 else "conv (dense, pointwise)"


def specific_kind(name: str, shapes=None, parent: str | None = None) -> str | None:
    """The kind an event names by itself (``parent``: its caller's name), or None for a
    helper."""
    if name == "aten::bmm":
        # the grouped mix calls bmm itself; the pointwise convs reach it through matmul
        return "conv (dense, pointwise)" if parent == "aten::matmul" else "mix (eq. 2)"
    if name in CONVS:
        return _conv_kind(name, shapes)
    if name in NAMED:
        return NAMED[name]
    if name == "aten::matmul" and shapes:
        # eq. 2's (nodes, outputs) @ (batch, outputs, C*H*W) has a 2-D first operand; the
        # grouped pointwise convs' products a 3-D one
        # (the incidence products of eq. 8 have a 1-D second operand: not the mix)
        if len(shapes[0]) == 2 and len(shapes[1]) == 3:
            return "mix (eq. 2)"
        return "conv (dense, pointwise)" if len(shapes[0]) == 3 else None
    for prefix, kind in PREFIXES.items():
        if name.startswith(prefix):
            return kind
    return None


def own_kind(name: str) -> str:
    """The kind of a helper that no caller names."""
    if name in COPIES:
        return "copies, cat, slicing"
    if name.startswith("autograd::") or "AccumulateGrad" in name or "Backward" in name:
        return "autograd overhead"
    return "other"


def _named_kind(event, forward: dict) -> str | None:
    """The kind named by the event or its nearest caller, a backward node standing for the
    forward op that recorded it."""
    e = event
    while e is not None:
        parent = e.cpu_parent.name if e.cpu_parent is not None else None
        kind = specific_kind(e.name, getattr(e, "input_shapes", None), parent)
        if kind is None and _is_node(e.name) and e.sequence_nr in forward:
            kind = _named_kind(forward[e.sequence_nr], {})
        if kind is not None:
            return kind
        e = e.cpu_parent
    return None


def _is_node(name: str) -> bool:
    return "Backward" in name and not name.startswith("autograd::")


def _in_backward(event) -> bool:
    e = event
    while e is not None:
        if e.name.startswith("autograd::engine"):
            return True
        e = e.cpu_parent
    return False


def forward_ops(events) -> dict:
    """sequence number -> the outermost forward op that carries it (its backward node
    carries the same number)."""
    out = {}
    for e in events:
        if e.sequence_nr >= 0 and e.sequence_nr not in out and not _in_backward(e):
            out[e.sequence_nr] = e
    return out


def kind_of(event, forward: dict | None = None) -> str:
    """The kind an event's self time is charged to (``event``: a profiler FunctionEvent,
    with ``cpu_parent`` links; ``forward``: ``forward_ops`` of its trace)."""
    return _named_kind(event, forward or {}) or own_kind(event.name)


def kind_times(events) -> Counter:
    """Self CPU time (us) per kind over a profiler's events (``prof.events()``)."""
    forward = forward_ops(events)
    out: Counter = Counter()
    for e in events:
        out[kind_of(e, forward)] += e.self_cpu_time_total
    return out


def format_shares(times: Counter, steps: int) -> list[str]:
    """One line per kind, largest first: ms per step and share of the total."""
    total = sum(times.values()) or 1.0
    return [
        f"    {times[k] / steps / 1e3:7.2f} ms {times[k] / total:5.1%}  {k}"
        for k in sorted(KINDS, key=lambda k: -times[k])
        if times[k]
    ]
