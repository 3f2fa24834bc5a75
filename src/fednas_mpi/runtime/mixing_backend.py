"""The mixing backend of a whole job (the kernels themselves are the ``kernels`` package):
one rank per node builds the fused library, all ranks agree on the backend."""

from __future__ import annotations

from mpi4py import MPI

from .. import kernels
from ..kernels.loader import LoadResult
from . import comm as mpi


def setup_kernels(backend: str, comm: MPI.Comm, poll_s: float) -> tuple[kernels.Status, str]:
    """Load the fused library on every rank (JIT-building once per node if needed) and
    configure ``backend``; returns (status, error). ``error`` is non-empty, on every rank,
    when ``kernels.backend: fused`` cannot be honoured.

    Every rank ends on the same path: if one rank cannot load the library, all use the
    reference, so results never depend on which node a client ran on.
    """
    if backend == "reference":
        return kernels.configure("reference"), ""
    with mpi.node_local(comm) as local:
        wait = None
        if local.Get_size() > 1:
            # The others wait politely (polling) while the node's first rank compiles.
            def wait() -> None:
                mpi.wait(local.Ibarrier(), max(poll_s, 0.01))

        result = kernels.load(builder=local.Get_rank() == 0, wait_for_builder=wait)
    failed = mpi.agree(
        comm,
        None
        if result.ok
        else f"rank {comm.Get_rank()} could not load the fused kernels: {result.error}",
    )
    if failed is not None and result.ok:
        result = LoadResult(False, result.source, result.path, failed)
    try:
        status = kernels.configure(backend, result, announce=comm.Get_rank() == 0)
    except kernels.KernelError as e:
        return kernels.Status("reference", reason=str(e)), str(e)
    return status, ""
