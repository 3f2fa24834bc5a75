"""How the round's bulk data travels: the global state (broadcast) and each worker's one
pre-reduced partial sum (worker -> rank 0). Plans and per-client states stay on MPI.

- ``MpiTransport``: contiguous host buffers over mpi4py. The buffers are always on the
  host: states live on the CPU whatever device a rank computes on (its networks load them),
  so there is no device buffer for a CUDA-aware MPI to send.
- ``TorchTransport``: ``torch.distributed`` initialised from MPI: rank 0 picks a free TCP
  port and broadcasts its address and the port over MPI, every rank calls
  ``init_process_group(tcp://ADDR:PORT)``. gloo when any rank of the exchange is on the
  CPU (rank 0 with ``runtime.server_device: cpu``, and every CPU-only run: how CI tests
  it), NCCL when every rank has a GPU. With a CPU rank 0 and GPU workers the GPU ranks
  also get an NCCL group of their own (``gpu_group``, rank 0 left out) for worker-side
  collectives; the round's exchange itself does not use it, as every buffer goes to or
  from rank 0. The NCCL paths are not exercised here (no GPU in CI).

Both move the same bytes and the server folds them in the same order, so results are
identical (tested). Receives are non-blocking requests with ``Test()``, polled politely.
"""

from __future__ import annotations

import datetime
import socket
import threading
import time

import numpy as np
import torch
from mpi4py import MPI

from . import comm as mpi
from .protocol import TAG_PARTIAL  # every tag of the protocol is there


class MpiTransport:
    name = "mpi"

    def __init__(self, comm: MPI.Comm, poll_s: float):
        self.comm, self.poll = comm, poll_s

    def bcast(self, buf: np.ndarray) -> None:
        mpi.bcast_array(self.comm, buf, self.poll)

    def send(self, buf: np.ndarray, dest: int) -> None:
        mpi.send_array(self.comm, buf, dest, TAG_PARTIAL, self.poll)

    def irecv(self, buf: np.ndarray, source: int):
        return self.comm.Irecv(buf, source=source, tag=TAG_PARTIAL)

    def close(self) -> None:
        pass


class _Work:
    """A torch.distributed request with MPI's ``Test()``.

    gloo's point-to-point requests report completion only through ``wait()``, so a helper
    thread waits (gloo blocks on a condition variable there, without spinning) and
    ``Test()`` reads its flag; a failed transfer is raised by ``Test()``."""

    def __init__(self, work):
        self.done = threading.Event()
        self.error: BaseException | None = None

        def wait() -> None:
            try:
                work.wait()
            except BaseException as e:  # noqa: BLE001 - handed to the polling thread
                self.error = e
            self.done.set()

        threading.Thread(target=wait, daemon=True).start()

    def Test(self) -> bool:  # noqa: N802 - the mpi4py name, so both transports poll alike
        if not self.done.is_set():
            return False
        if self.error is not None:
            raise self.error
        return True


def _address(comm: MPI.Comm) -> str:
    """An address of rank 0 the other ranks can reach: loopback on one node, else its IP."""
    if mpi.node_local_size(comm) == comm.Get_size():
        return "127.0.0.1"
    host = socket.gethostname()
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


class TorchTransport:
    name = "torch"

    def __init__(
        self,
        comm: MPI.Comm,
        poll_s: float,
        devices: list[str] | None = None,
        timeout_s: float = 7 * 86400.0,
    ):
        # A long timeout: a worker's round may take hours at paper scale, and a failing rank
        # aborts the whole job through the MPI abort hooks anyway.
        import torch.distributed as dist

        self.comm, self.poll, self.dist = comm, poll_s, dist
        devices = devices or ["cpu"] * comm.Get_size()  # every rank's device, in rank order
        self.backend = "nccl" if all(d.startswith("cuda") for d in devices) else "gloo"
        rendezvous = None
        if comm.Get_rank() == 0:
            with socket.socket() as s:  # a free port; the tiny race with others is tolerated
                s.bind(("", 0))
                rendezvous = (_address(comm), s.getsockname()[1])
        else:
            _address(comm)  # collective
        addr, port = mpi.bcast_object(comm, rendezvous, poll_s)
        self.owned = not dist.is_initialized()
        if self.owned:
            dist.init_process_group(
                self.backend,
                init_method=f"tcp://{addr}:{port}",
                rank=comm.Get_rank(),
                world_size=comm.Get_size(),
                timeout=datetime.timedelta(seconds=timeout_s),
            )
        self.device = (
            torch.device(devices[comm.Get_rank()])
            if self.backend == "nccl"
            else torch.device("cpu")
        )
        gpu_ranks = [r for r, d in enumerate(devices) if d.startswith("cuda")]
        self.gpu_group = None
        if self.backend == "gloo" and len(gpu_ranks) > 1:  # pragma: no cover - needs GPUs
            # every rank takes part in creating a group, members or not
            self.gpu_group = dist.new_group(gpu_ranks, backend="nccl")

    def _tensor(self, buf: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(buf)
        return t if self.device.type == "cpu" else t.to(self.device)  # pragma: no branch

    def _done(self, work) -> None:
        w = _Work(work)
        while not w.Test():
            time.sleep(self.poll)

    def bcast(self, buf: np.ndarray) -> None:
        t = self._tensor(buf)
        self._done(self.dist.broadcast(t, src=0, async_op=True))
        if t.device.type != "cpu":  # pragma: no cover - needs a GPU
            buf[...] = t.cpu().numpy()

    def send(self, buf: np.ndarray, dest: int) -> None:
        self._done(self.dist.isend(self._tensor(buf), dst=dest, tag=TAG_PARTIAL))

    def irecv(self, buf: np.ndarray, source: int):
        t = self._tensor(buf)
        work = _Work(self.dist.irecv(t, src=source, tag=TAG_PARTIAL))
        if t.device.type != "cpu":  # pragma: no cover - needs a GPU
            return _CopyBack(work, t, buf)
        return work

    def close(self) -> None:
        if self.owned and self.dist.is_initialized():
            self.dist.destroy_process_group()


class _CopyBack:  # pragma: no cover - needs a GPU
    def __init__(self, work: _Work, t: torch.Tensor, buf: np.ndarray):
        self.work, self.t, self.buf = work, t, buf

    def Test(self) -> bool:  # noqa: N802
        if self.work.Test():
            self.buf[...] = self.t.cpu().numpy()
            return True
        return False


def make_transport(name: str, comm: MPI.Comm, poll_s: float, devices: list[str] | None = None):
    if name == "torch" and comm.Get_size() > 1:
        return TorchTransport(comm, max(poll_s, 1e-4), devices)
    return MpiTransport(comm, poll_s)
