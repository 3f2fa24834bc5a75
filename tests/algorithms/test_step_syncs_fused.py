"""Issue 27: FedDSNAS's step loop on the fused mixing kernels reads from the host no more
than on the reference (its one declared read per step: the sampled ops). Before, the fused
hard mix read each edge's op mask and its argmax back, twice per edge and step."""

from __future__ import annotations

from test_step_syncs import _run


def test_feddsnas_step_loop_on_fused_kernels_has_only_its_declared_reads(fused):
    guard, result = _run("feddsnas", "reference", "cpu")
    assert guard.loops == 1
    assert not guard.violations, "\n".join(
        f"{n} x {kind} {op} at {where}" for (kind, op, where), n in guard.summary().items()
    )
    assert dict(guard.allowed_reads) == {"single path ops": 20 // 4}
