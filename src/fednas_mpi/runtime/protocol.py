"""The wire protocol between the server (rank 0) and the workers: every message tag, the
round's ``Plan``, how per-client states are packed, the order partial sums are folded in,
and both ends of a round's exchange (``dispatch`` on the server, ``work_loop`` on a worker).

Per round:

    server: post the receives of the partial sums, broadcast the ``Plan`` (pickled) and
            the global state (one flat buffer, ``runtime.transport``), send stored
            per-client state to the workers that need it
    worker: run its clients (``RunClients``); send its one pre-reduced buffer (with its
            compute seconds appended), then the metadata of any updated per-client state,
            each client's ``client_aux`` and the clients it dropped, then their values
    server: fold each partial sum in as it arrives (``fold_in_order``), then receive the
            per-client states

Folding order: a partial is added to the running total only once every lower-numbered
worker's partial has been added, so the float64 sum is ((p_1 + p_2) + p_3) + ...
whatever the arrival order: results never depend on timing. With one rank the server runs
the clients itself and adds its one buffer to zeros the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from mpi4py import MPI

from ..algorithms import GlobalModel, RoundContext
from ..algorithms.common.aggregate import ClientSums
from ..flat import Layout, State
from . import comm as mpi

# Every point-to-point tag of a run (plans and the global state are broadcasts).
TAG_PARTIAL = 11  # a worker's pre-reduced partial sum (runtime.transport moves it)
TAG_STATES_META = 12  # worker -> server: (state meta, client aux meta, dropped clients)
TAG_STATES_OUT = 13  # worker -> server: updated per-client states and client aux, one array
TAG_STATES_IN = 14  # server -> worker: the stored states of its clients, one array

#: Runs a rank's clients: (model, clients, ctx, stored states, all of the round's clients
#: sorted) -> (pre-reduced sums, updated client states, each client's ``client_aux``,
#: clients left out for a non-finite result (client -> why), seconds).
RunClients = Callable[
    [GlobalModel, list[int], RoundContext, dict[int, State], list[int]],
    tuple[ClientSums, dict[int, State], dict[int, State], dict[int, str], float],
]


@dataclass
class Plan:
    """What the server broadcasts at the start of a round (small; pickled)."""

    round: int | None  # None tells workers to stop
    stage: str = ""
    assignment: list[list[int]] = field(default_factory=list)  # per worker, client ids
    spec_json: str | None = None  # set when the model spec or layout changed
    layout_meta: list | None = None
    incoming: dict[int, list] = field(default_factory=dict)  # worker -> [(client, layout)]
    exit_code: int = 0  # with round None: the run failed on the server, workers exit with it


@dataclass
class Reports:
    """A round's client results as they reach the server."""

    layout: Layout  # of the summed part (summed_layout)
    total: np.ndarray  # the folded pre-reduced sums (ClientSums buffer)
    states: dict[int, State]  # updated per-client states
    aux: dict[int, State]  # each client's ClientResult.client_aux
    times: dict[str, float]  # compute, comm, fold (seconds)
    dropped: dict[int, str] = field(default_factory=dict)  # clients left out (client -> why)


def concat_states(states: list[tuple[int, State]]) -> tuple[list, np.ndarray]:
    """Per-client states as (metadata, one float64 array) for one message."""
    meta = [(cid, Layout.of(s).to_meta()) for cid, s in states]
    parts = [Layout.of(s).pack(s, dtype=np.dtype(np.float64)) for _, s in states]
    return meta, (np.concatenate(parts) if parts else np.empty(0))


def split_states(meta: list, buf: np.ndarray) -> dict[int, State]:
    """The inverse of ``concat_states``."""
    out, pos = {}, 0
    for cid, lm in meta:
        layout = Layout.from_meta(lm)
        out[int(cid)] = layout.unpack(buf[pos : pos + layout.size])
        pos += layout.size
    return out


def summed_layout(state: State, aux_shapes: dict[str, tuple[int, ...]]) -> Layout:
    """What a round's client results are summed in: the state's entries, then the
    method's mean-reduced aux entries (float64), so both take one pre-reduced buffer."""
    clash = sorted(set(state) & set(aux_shapes))
    if clash:
        raise ValueError(f"aux entries {clash[:3]} have the names of global state entries")
    base = Layout.of(state)
    return Layout(
        base.names + tuple(aux_shapes),
        base.shapes + tuple(tuple(s) for s in aux_shapes.values()),
        base.dtypes + (torch.float64,) * len(aux_shapes),
    )


def fold_in_order(
    reqs: list[MPI.Request], bufs: list[np.ndarray], size: int, poll_s: float
) -> tuple[np.ndarray, float]:
    """Sum ``bufs[i][:size]`` in index order, each folded in as soon as it and every
    buffer before it have arrived (non-blocking), so folding overlaps the slower
    senders' work while the float64 result is the same for any arrival order.
    Returns (total, seconds spent folding after the last arrival)."""
    total = np.zeros(size, dtype=np.float64)
    arrived = [False] * len(reqs)
    pending = list(range(len(reqs)))
    nxt = 0
    tail = 0.0
    while nxt < len(reqs):
        done = [i for i in pending if reqs[i].Test()]
        if not done:
            if poll_s > 0:
                time.sleep(poll_s)
            continue
        for i in done:
            arrived[i] = True
            pending.remove(i)
        t0 = time.perf_counter()
        while nxt < len(reqs) and arrived[nxt]:
            total += bufs[nxt][:size]
            nxt += 1
        if not pending:
            tail += time.perf_counter() - t0
    return total, tail


def dispatch(
    comm: MPI.Comm,
    transport,
    poll: float,
    run_clients: RunClients,
    ctx: RoundContext,
    model: GlobalModel,
    layout: Layout,
    summed: Layout,
    client_metrics: tuple[str, ...],
    assignment: list[list[int]],
    client_states: dict[int, State],
    spec_changed: bool,
) -> Reports:
    """The server's end of a round: run its clients (here or on the workers) and fold
    their partial sums.

    Returns the reports with times ``compute`` (slowest worker), ``comm`` (the rest of
    the wait) and ``fold`` (folding not overlapped with the workers' compute)."""
    round_clients = sorted(c for cs in assignment for c in cs)
    size = ClientSums.buffer_size(summed, client_metrics, len(round_clients))
    if comm.Get_size() == 1:
        sums, states, aux, dropped, seconds = run_clients(
            model, assignment[0], ctx, client_states, round_clients
        )
        t0 = time.perf_counter()
        total = np.zeros(size, dtype=np.float64)
        total += sums.buffer  # as the server adds worker buffers: 0 + p_1 (bit-equal)
        return Reports(
            summed,
            total,
            states,
            aux,
            {"compute": seconds, "comm": 0.0, "fold": time.perf_counter() - t0},
            dropped,
        )
    t_start = time.perf_counter()
    incoming = {
        w: [(c, client_states[c]) for c in cs if c in client_states]
        for w, cs in enumerate(assignment)
    }
    incoming = {w: v for w, v in incoming.items() if v}
    packed = {w: concat_states(v) for w, v in incoming.items()}
    plan = Plan(
        round=ctx.round,
        stage=ctx.stage,
        assignment=assignment,
        spec_json=model.spec_json() if spec_changed else None,
        layout_meta=layout.to_meta() if spec_changed else None,
        incoming={w: meta for w, (meta, _) in packed.items()},
    )
    busy = [w for w, cs in enumerate(assignment) if cs]
    # Post the receives before anything else so early finishers never wait on us.
    bufs = {w: np.empty(size + 1, dtype=np.float64) for w in busy}
    reqs = [transport.irecv(bufs[w], w + 1) for w in busy]
    mpi.bcast_object(comm, plan, poll)
    transport.bcast(np.ascontiguousarray(layout.pack(model.state)))
    for w, (_, buf) in packed.items():
        mpi.send_array(comm, buf, w + 1, TAG_STATES_IN, poll)
    total, fold_tail = fold_in_order(reqs, [bufs[w] for w in busy], size, poll)
    t_arrived = time.perf_counter() - fold_tail
    states: dict[int, State] = {}
    aux: dict[int, State] = {}
    dropped: dict[int, str] = {}
    for w in busy:
        meta, aux_meta, worker_dropped = mpi.recv_object(comm, w + 1, TAG_STATES_META, poll)
        dropped.update(worker_dropped)
        if meta or aux_meta:
            buf = np.empty(sum(Layout.from_meta(m).size for _, m in meta + aux_meta))
            mpi.recv_array(comm, buf, w + 1, TAG_STATES_OUT, poll)
            states.update(split_states(meta, buf))
            aux.update(
                split_states(aux_meta, buf[sum(Layout.from_meta(m).size for _, m in meta) :])
            )
    compute = max((float(bufs[w][-1]) for w in busy), default=0.0)
    t_end = time.perf_counter()
    comm_s = max(t_arrived - t_start - compute, 0.0) + (t_end - t_arrived - fold_tail)
    return Reports(
        summed,
        total,
        states,
        aux,
        {"compute": compute, "comm": comm_s, "fold": fold_tail},
        dropped,
    )


def work_loop(
    comm: MPI.Comm,
    transport,
    poll: float,
    run_clients: RunClients,
    context: Callable[[int, str], RoundContext],
) -> int:
    """A worker's end: follow the server's plans until one says stop; returns the exit
    status that plan carries (non-zero when the run failed on the server)."""
    me = comm.Get_rank() - 1
    spec: dict = {}
    layout: Layout | None = None
    while True:
        plan: Plan = mpi.bcast_object(comm, None, poll)
        if plan.round is None:
            return plan.exit_code
        if plan.spec_json is not None:
            spec, layout = json.loads(plan.spec_json), Layout.from_meta(plan.layout_meta)
        assert layout is not None, "first plan of a run must carry the layout"
        buf = np.empty(layout.size, dtype=layout.wire_dtype())
        transport.bcast(buf)
        states_in: dict[int, State] = {}
        if me in plan.incoming:
            meta = plan.incoming[me]
            sbuf = np.empty(sum(Layout.from_meta(m).size for _, m in meta))
            mpi.recv_array(comm, sbuf, 0, TAG_STATES_IN, poll)
            states_in = split_states(meta, sbuf)
        mine = plan.assignment[me]
        if not mine:
            continue
        model = GlobalModel(spec, layout.unpack(buf))
        ctx = context(plan.round, plan.stage)
        sums, states_out, aux_out, dropped, seconds = run_clients(
            model, mine, ctx, states_in, sorted(c for cs in plan.assignment for c in cs)
        )
        transport.send(np.append(sums.buffer, seconds), 0)
        # the updated client states, then the clients' own aux, in one array
        meta, out = concat_states(sorted(states_out.items()))
        aux_meta, aux_buf = concat_states(sorted(aux_out.items()))
        mpi.send_object(comm, (meta, aux_meta, dropped), 0, TAG_STATES_META, poll)
        if meta or aux_meta:
            mpi.send_array(comm, np.concatenate([out, aux_buf]), 0, TAG_STATES_OUT, poll)


def release_workers(comm: MPI.Comm, poll: float, exit_code: int = 0) -> None:
    """The plan that ends the workers' loops (they exit with ``exit_code``)."""
    if comm.Get_size() > 1:
        mpi.bcast_object(comm, Plan(round=None, exit_code=exit_code), poll)
