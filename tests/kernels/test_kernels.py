"""The fused mixing ops against the plain PyTorch reference (CPU here; CUDA when present)."""

from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

from fednas_mpi import kernels
from fednas_mpi.kernels import reference_gumbel_mix, reference_mix

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def rand_outputs(k, shape=(3, 4, 5, 6), dtype=torch.float32, device="cpu", grad=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(shape, generator=g, dtype=dtype).to(device).requires_grad_(grad)
        for _ in range(k)
    ]


def assert_matches_reference(fused_fn, ref_fn, tensors, rtol=1e-5, atol=1e-5):
    """Forward values and the gradients of ``tensors`` agree (same upstream gradient)."""
    y, gy = grads(fused_fn, tensors)
    r, gr = grads(ref_fn, tensors)
    torch.testing.assert_close(y, r, rtol=rtol, atol=atol)
    for a, b in zip(gy, gr):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    return gy


def grads(fn, tensors):
    out = fn()
    g = torch.Generator().manual_seed(99)
    upstream = torch.randn(out.shape, generator=g, dtype=out.dtype).to(out.device)
    return out, torch.autograd.grad(out, tensors, upstream, allow_unused=True)


@pytest.mark.parametrize("k", range(1, 9))
@pytest.mark.parametrize("device", DEVICES)
def test_mix_forward_and_backward_equal_the_reference(fused, k, device):
    outs = rand_outputs(k, device=device, seed=k)
    w = torch.randn(k, device=device, requires_grad=True)
    assert_matches_reference(
        lambda: kernels.mix(outs, w), lambda: reference_mix(outs, w), [*outs, w]
    )


def test_mix_gradcheck_float64(fused):
    outs = rand_outputs(3, shape=(2, 3, 4, 5), dtype=torch.float64)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: torch.ops.fednas.mix(list(a[:-1]), a[-1]), (*outs, w)
    )


def test_large_tensor_spanning_many_blocks(fused):
    # 3 * 40_000 + 7 elements: several reduction blocks and a ragged tail.
    outs = rand_outputs(4, shape=(120_007,), dtype=torch.float64, seed=3)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    y, gy = grads(lambda: kernels.mix(outs, w), [*outs, w])
    r, gr = grads(lambda: reference_mix(outs, w), [*outs, w])
    torch.testing.assert_close(y, r, rtol=1e-12, atol=1e-12)
    for a, b in zip(gy, gr):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # float32 dot products over 120k elements stay close to the float64 truth
    o32 = [o.detach().float().requires_grad_() for o in outs]
    w32 = w.detach().float().requires_grad_()
    up = torch.randn(120_007)
    (g32,) = torch.autograd.grad(kernels.mix(o32, w32), [w32], up)
    truth = torch.stack([(up.double() * o.detach().double()).sum() for o in o32])
    torch.testing.assert_close(g32.double(), truth, rtol=1e-5, atol=1e-3)


def test_reduction_does_not_depend_on_the_thread_count(fused):
    outs = rand_outputs(5, shape=(64, 16, 16, 16), seed=5)
    w = torch.randn(5, requires_grad=True)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(grads(lambda: kernels.mix(outs, w), [*outs, w]))
    finally:
        torch.set_num_threads(threads)
    for y, g in results[1:]:
        assert torch.equal(y, results[0][0])
        assert all(torch.equal(a, b) for a, b in zip(g, results[0][1]))


@pytest.mark.parametrize("layout", ["transposed", "sliced", "channels_last", "mixed", "expanded"])
def test_non_contiguous_inputs(fused, layout):
    base = rand_outputs(3, shape=(4, 6, 5, 7), grad=False, seed=11)
    if layout == "transposed":
        outs = [b.transpose(1, 3) for b in base]
    elif layout == "sliced":
        outs = [b[:, ::2, 1:, :] for b in base]
    elif layout == "channels_last":
        outs = [b.contiguous(memory_format=torch.channels_last) for b in base]
    elif layout == "mixed":
        outs = [
            base[0],
            base[1].contiguous(memory_format=torch.channels_last),
            base[2].transpose(2, 3).contiguous().transpose(2, 3),
        ]
    else:
        outs = [b[:1].expand(4, 6, 5, 7) for b in base]
    outs = [o.detach().requires_grad_() for o in outs]
    w = torch.randn(3, requires_grad=True)
    assert_matches_reference(
        lambda: kernels.mix(outs, w), lambda: reference_mix(outs, w), [*outs, w]
    )


def test_non_contiguous_upstream_gradient(fused):
    # In a cell the last node's output only feeds torch.cat: its gradient is a strided view.
    outs = rand_outputs(2, shape=(2, 3, 4, 4), seed=2)
    w = torch.randn(2, requires_grad=True)
    other = torch.randn(2, 5, 4, 4)

    def run(fn):
        y = torch.cat([other, fn(outs, w)], dim=1)
        return torch.autograd.grad((y * torch.arange(y.numel()).view_as(y)).sum(), [*outs, w])

    for a, b in zip(run(kernels.mix), run(reference_mix)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_pruned_outputs_are_never_read(fused):
    outs = rand_outputs(4, seed=4)
    w = torch.randn(4, requires_grad=True)
    sparse = [outs[0], None, outs[2], None]
    gy = assert_matches_reference(
        lambda: kernels.mix(sparse, w), lambda: reference_mix(sparse, w), [outs[0], outs[2], w]
    )
    assert gy[-1][1] == 0 and gy[-1][3] == 0
    # gumbel_mix: a masked entry holding NaN is skipped, not multiplied by zero
    poisoned = [outs[0], torch.full_like(outs[1], float("nan")), outs[2], None]
    logits = torch.randn(4, requires_grad=True)
    mask = torch.tensor([True, False, True, True])
    y = kernels.gumbel_mix(poisoned, logits, 0.5, mask=mask)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, reference_gumbel_mix(poisoned, logits, 0.5, mask=mask))


@pytest.mark.parametrize("k", [1, 2, 5, 8])
def test_gumbel_mix_equals_reference(fused, k):
    outs = rand_outputs(k, dtype=torch.float64, seed=20 + k)
    present = [o if i % 3 != 1 or k == 1 else None for i, o in enumerate(outs)]  # None = zero op
    logits = torch.randn(k, dtype=torch.float64, requires_grad=True)
    noise = kernels.reference.masked_logits(torch.randn(k, dtype=torch.float64), None)
    mask = [True] * k if k < 3 else [i != k - 1 for i in range(k)]
    tensors = [o for o in present if o is not None] + [logits]
    assert_matches_reference(
        lambda: kernels.gumbel_mix(present, logits, 0.3, noise, mask),
        lambda: reference_gumbel_mix(present, logits, 0.3, noise, mask),
        tensors,
        rtol=1e-7,
        atol=1e-7,
    )


def test_gumbel_mix_logit_gradient_is_the_softmax_jacobian_of_inner_products(fused):
    outs = rand_outputs(3, shape=(7,), dtype=torch.float64, seed=8)
    logits = torch.tensor([0.2, -0.4, 1.0], dtype=torch.float64, requires_grad=True)
    upstream = torch.linspace(-1, 1, 7, dtype=torch.float64)
    t = 0.7
    y = kernels.gumbel_mix(outs, logits, t)
    (g,) = torch.autograd.grad(y, logits, upstream)
    p = torch.softmax(logits.detach() / t, 0)
    d = torch.stack([(upstream * o.detach()).sum() for o in outs])  # <grad_out, o_k>
    torch.testing.assert_close(g, p * (d - (p * d).sum()) / t)


def test_gumbel_mix_gradcheck(fused):
    outs = rand_outputs(4, shape=(2, 3, 3), dtype=torch.float64, seed=6)
    logits = torch.randn(4, dtype=torch.float64, requires_grad=True)
    noise = torch.randn(4, dtype=torch.float64)

    def f(a, b, c, lg):
        return kernels.gumbel_mix([a, None, b, c], lg, 0.8, noise, [True, True, True, False])

    assert torch.autograd.gradcheck(f, (outs[0], outs[1], outs[2], logits))


def test_hard_variant_is_the_dsnas_estimator(fused):
    outs = rand_outputs(4, shape=(5, 6), dtype=torch.float64, seed=9)
    logits = torch.randn(4, dtype=torch.float64, requires_grad=True)
    noise = torch.randn(4, dtype=torch.float64)
    mask = [True, True, False, True]
    s = kernels.hard_index(logits, noise, mask)
    assert mask[s]
    only = [o if i == s else None for i, o in enumerate(outs)]  # only the sampled op runs
    y = kernels.gumbel_mix(only, logits, 0.5, noise, mask, hard=True)
    assert torch.equal(y, outs[s])  # forward: exactly the sampled op's output
    upstream = torch.randn(5, 6, dtype=torch.float64)
    g_logits, g_out = torch.autograd.grad(y, [logits, outs[s]], upstream)
    p = torch.softmax(logits.detach().masked_fill(~torch.tensor(mask), float("-inf")), 0)
    onehot = torch.nn.functional.one_hot(torch.tensor(s), 4).double()
    torch.testing.assert_close(g_logits, (upstream * outs[s].detach()).sum() * (onehot - p))
    torch.testing.assert_close(g_out, upstream)
    r = reference_gumbel_mix(only, logits, 0.5, noise, mask, hard=True)
    torch.testing.assert_close(torch.autograd.grad(r, logits, upstream)[0], g_logits)
    others = [o if i != s else None for i, o in enumerate(outs)]
    with pytest.raises(RuntimeError, match="sampled entry"):
        kernels.gumbel_mix(others, logits, 0.5, noise, mask, hard=True)


def test_hard_variant_with_a_tensor_mask_equals_the_cpp_op_and_reads_nothing(fused):
    """Issue 27: with the sampled entry known, the hard mix leaves a mask tensor where it
    is and reads no argmax back; its value and gradients are the C++ op's, bit for bit."""
    from syncguard import SyncGuard

    outs = rand_outputs(5, shape=(4, 3), seed=4)
    logits = torch.randn(5, generator=torch.Generator().manual_seed(5), requires_grad=True)
    noise = torch.randn(5, generator=torch.Generator().manual_seed(6))
    mask = torch.tensor([True, False, True, True, False])
    s = kernels.hard_index(logits.detach(), noise, mask)
    only = [o if i == s else None for i, o in enumerate(outs)]
    upstream = torch.randn(4, 3, generator=torch.Generator().manual_seed(7))
    guard = SyncGuard()
    with guard.loop():
        y = kernels.gumbel_mix(only, logits, 0.5, noise, mask, hard=True, index=s)
        got = torch.autograd.grad(y, [logits, outs[s]], upstream)
    assert not guard.violations, guard.violations
    keep = [int(m) for m in mask.tolist()]
    r = torch.ops.fednas.gumbel_mix(only, logits, 0.5, noise, keep, True)
    want = torch.autograd.grad(r, [logits, outs[s]], upstream)
    assert torch.equal(y, r) and torch.equal(y, outs[s])
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    # the same through the host-list mask and without the index (one read: the argmax)
    y2 = kernels.gumbel_mix(only, logits, 0.5, noise, [bool(m) for m in keep], hard=True)
    assert torch.equal(torch.autograd.grad(y2, logits, upstream)[0], want[0])


def test_bad_arguments_are_clear_errors(fused):
    a, b = rand_outputs(2, grad=False)
    with pytest.raises(RuntimeError, match="one entry per output"):
        torch.ops.fednas.mix([a, b], torch.ones(3))
    with pytest.raises(RuntimeError, match="output 1 has shape"):
        torch.ops.fednas.mix([a, b[:1]], torch.ones(2))
    with pytest.raises(RuntimeError, match="temperature must be positive"):
        torch.ops.fednas.gumbel_mix([a, b], torch.zeros(2), 0.0)
    with pytest.raises(ValueError, match="every input was pruned"):
        kernels.mix([None, None], torch.ones(2))


def test_wrappers_check_arguments_before_calling_cpp(fused):
    """The same errors from the Python wrappers, raised before the op runs (a C++ exception
    from the op crashed the process under torch 2.11 on the GPU image)."""
    a, b = rand_outputs(2, grad=False)
    with pytest.raises(RuntimeError, match="one entry per output"):
        kernels.mix([a, b], torch.ones(3))
    with pytest.raises(RuntimeError, match="output 1 has shape"):
        kernels.mix([a, b[:1]], torch.ones(2))
    with pytest.raises(RuntimeError, match="output 1 has shape"):
        kernels.mix([a, b.double()], torch.ones(2))
    with pytest.raises(RuntimeError, match="one entry per output"):
        kernels.gumbel_mix([a, b], torch.zeros(3), 1.0)
    with pytest.raises(RuntimeError, match="temperature must be positive"):
        kernels.gumbel_mix([a, b], torch.zeros(2), 0.0)
    with pytest.raises(RuntimeError, match="temperature must be positive"):
        kernels.gumbel_mix([a, b], torch.zeros(2), float("inf"))
    with pytest.raises(RuntimeError, match="one 0/1 entry per output"):
        kernels.gumbel_mix([a, b], torch.zeros(2), 1.0, mask=[True])


def test_opcheck(fused):
    outs = rand_outputs(3, shape=(2, 3, 4))
    w = torch.randn(3, requires_grad=True)
    for result in (
        opcheck(torch.ops.fednas.mix.default, (outs, w)),
        opcheck(
            torch.ops.fednas.mix_backward.default,
            (torch.randn(2, 3, 4), [o.detach() for o in outs], w.detach(), True),
        ),
        opcheck(
            torch.ops.fednas.gumbel_mix.default,
            (
                [outs[0], None, outs[2]],
                torch.randn(3, requires_grad=True),
                0.5,
                torch.randn(3),
                [1, 1, 0],
                False,
            ),
        ),
    ):
        assert set(result.values()) == {"SUCCESS"}, result


def test_torch_compile_traces_the_op_without_graph_breaks(fused):
    outs = rand_outputs(3, shape=(2, 3, 4))
    w = torch.randn(3, requires_grad=True)

    def f(a, b, c, w):
        return torch.ops.fednas.mix([a, b, c], torch.softmax(w, 0)).square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    y = compiled(*outs, w)
    (gw,) = torch.autograd.grad(y, [w])
    r = f(*outs, w)
    (rw,) = torch.autograd.grad(r, [w])
    torch.testing.assert_close(y, r)
    torch.testing.assert_close(gw, rw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize(
    "dtype,tol",
    [(torch.float32, 1e-5), (torch.float16, 2e-2), (torch.bfloat16, 5e-2), (torch.float64, 1e-12)],
)
@pytest.mark.parametrize("k", [1, 8, 35, 70])  # 35: a node's 5 inputs x 7 ops; 70: chunked
def test_cuda_kernels_equal_the_reference(fused, dtype, tol, k):
    from fednas_mpi.kernels import loader

    assert loader.has_cuda_kernels()
    shape = (8, 16, 9, 9)  # 10368 elements: not a multiple of a block, a warp or a vector
    outs = [
        o.detach().to(dtype).requires_grad_()
        for o in rand_outputs(k, shape=shape, device="cuda", seed=k)
    ]
    wdtype = torch.float64 if dtype == torch.float64 else torch.float32
    w = torch.randn(k, device="cuda", dtype=wdtype, requires_grad=True)
    # one upstream gradient, rounded to the tested dtype, seen by both sides
    up = torch.randn(shape, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    up = up.to(dtype).to("cuda")
    y = kernels.mix(outs, w)
    gy = torch.autograd.grad(y, [*outs, w], up)
    ref_outs = [o.detach().double().requires_grad_() for o in outs]
    wd = w.detach().double().requires_grad_()
    r = reference_mix(ref_outs, wd)
    gr = torch.autograd.grad(r, [*ref_outs, wd], up.double())
    torch.testing.assert_close(y.double(), r, rtol=tol, atol=tol * k)
    for i, (a, b) in enumerate(zip(gy, gr)):
        torch.testing.assert_close(
            a.double(),
            b,
            rtol=tol,
            atol=tol * 50 * k,
            msg=lambda m, i=i: f"gradient {i} of {k + 1}: {m}",
        )


@pytest.mark.parametrize("inputs", ["combinations", "sum"])
def test_search_network_fused_equals_reference(kernel_library, inputs):
    from fednas_mpi.nas import CellSpace
    from fednas_mpi.nas.network import SearchNetwork

    space = CellSpace(3, 2)
    ops, combos = space.full_masks()
    ops[1][3] = ops[4][0] = False  # a few pruned ops, never computed
    masks = {c: {"ops": ops, "combos": combos} for c in ("normal", "reduce")}
    torch.manual_seed(0)
    net = SearchNetwork(1, 10, 4, 3, space, 1, masks, inputs)
    x = torch.randn(6, 1, 12, 12)
    y = torch.arange(6) % 10

    def run():
        net.zero_grad()
        net.set_sampling(0.7, torch.Generator().manual_seed(5))
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}

    kernels.use_reference()
    ref_loss, ref_grads = run()
    kernels.configure("fused", kernel_library)
    try:
        loss, grads_ = run()
    finally:
        kernels.use_reference()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert ref_grads.keys() == grads_.keys()
    for name, g in grads_.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-4, atol=1e-5, msg=name)
