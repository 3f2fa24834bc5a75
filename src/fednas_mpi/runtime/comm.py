"""Thin helpers over mpi4py: abort on any exception, polite waiting, buffer messages.

Idle ranks wait by polling their request with a short sleep instead of
blocking in MPI: MPICH and Open MPI spin in blocking calls, and on an
oversubscribed node (9 ranks on 2 cores, or ranks sharing a GPU's host cores)
a spinning idle rank takes a core from a computing one.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from mpi4py import MPI


def install_abort_hooks(comm: MPI.Comm) -> None:
    """An uncaught exception in any thread of any rank prints once, tagged, and aborts the job."""
    rank = comm.Get_rank()

    def hook(exc_type, exc, tb) -> None:
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        tagged = "".join(f"[rank {rank}] {line}\n" for line in text.rstrip().splitlines())
        try:
            sys.stderr.write(tagged)
            sys.stderr.flush()
            # mpirun forwards each rank's stderr through its launcher processes, which the
            # abort kills: give them a moment to pass the traceback on (seen lost in CI).
            time.sleep(0.5)
        finally:
            comm.Abort(1 if exc_type is not KeyboardInterrupt else 130)

    sys.excepthook = hook
    threading.excepthook = lambda a: hook(a.exc_type, a.exc_value, a.exc_traceback)


def wait(req: MPI.Request, poll_s: float) -> None:
    if poll_s <= 0:
        req.Wait()
        return
    while not req.Test():
        time.sleep(poll_s)


def wait_all(reqs: list[MPI.Request], poll_s: float) -> None:
    if poll_s <= 0:
        MPI.Request.Waitall(reqs)
        return
    while not MPI.Request.Testall(reqs):
        time.sleep(poll_s)


def probe(comm: MPI.Comm, source: int, tag: int, poll_s: float) -> None:
    """Return once a message from ``source`` with ``tag`` can be received."""
    if poll_s <= 0:
        comm.Probe(source=source, tag=tag)
        return
    while not comm.Iprobe(source=source, tag=tag):
        time.sleep(poll_s)


def bcast_array(comm: MPI.Comm, buf: np.ndarray, poll_s: float, root: int = 0) -> None:
    wait(comm.Ibcast(buf, root=root), poll_s)


def bcast_object(comm: MPI.Comm, obj, poll_s: float, root: int = 0):
    """Broadcast a small picklable object (plans, specs), waiting politely."""
    n = np.zeros(1, dtype=np.int64)
    data = b""
    if comm.Get_rank() == root:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        n[0] = len(data)
    bcast_array(comm, n, poll_s, root)
    payload = (
        np.frombuffer(data, dtype=np.uint8).copy()
        if comm.Get_rank() == root
        else np.empty(int(n[0]), dtype=np.uint8)
    )
    bcast_array(comm, payload, poll_s, root)
    return obj if comm.Get_rank() == root else pickle.loads(payload.tobytes())


def send_array(comm: MPI.Comm, buf: np.ndarray, dest: int, tag: int, poll_s: float) -> None:
    wait(comm.Isend(buf, dest=dest, tag=tag), poll_s)


def recv_array(comm: MPI.Comm, buf: np.ndarray, source: int, tag: int, poll_s: float) -> None:
    probe(comm, source, tag, poll_s)
    comm.Recv(buf, source=source, tag=tag)


def send_object(comm: MPI.Comm, obj, dest: int, tag: int, poll_s: float) -> None:
    wait(comm.isend(obj, dest=dest, tag=tag), poll_s)


def recv_object(comm: MPI.Comm, source: int, tag: int, poll_s: float):
    probe(comm, source, tag, poll_s)
    return comm.recv(source=source, tag=tag)


def agree(comm: MPI.Comm, error: str | None) -> str | None:
    """Collective: the lowest-ranked error any rank reports, or None on every rank."""
    errors = comm.allgather(error)
    return next((e for e in errors if e), None)


@contextmanager
def node_local(comm: MPI.Comm) -> Iterator[MPI.Comm]:
    """Collective: the ranks of ``comm`` on this node (MPI shared-memory split), freed after."""
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        yield local
    finally:
        local.Free()


def node_local_size(comm: MPI.Comm) -> int:
    with node_local(comm) as local:
        return local.Get_size()


def default_threads(comm: MPI.Comm) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // node_local_size(comm))
