"""The server's rounds of one federated run (the paper's Algorithm 1) and a rank's client
updates; the worker's loop and the messages are ``runtime.protocol``'s.

Rank 0 is the server. Ranks 1..N-1 are workers that each simulate the clients
assigned to them; with one rank, rank 0 also runs the clients, through the
same ``run_clients`` code. Per round (``Simulation.serve``):

    sample K clients (seeded), assign them to workers by work, run their client updates
    (``protocol.dispatch``: the global state out, each worker's one pre-reduced partial
    sum back, folded in worker order), FedAvg, per-client server step, server step,
    evaluate (``runtime.evaluation``), record the round and write its checkpoint
    (``store.record``), report progress

Per round the metrics record ``compute_time`` (slowest worker's client
updates), ``comm_time`` (broadcast, transfers and waiting beyond that compute),
``aggregate_time`` (folding not hidden behind compute, averaging, server step),
``method_time`` (compute + comm + aggregate: the method's own cost, evaluation
apart), ``eval_time`` (server test set - its fixed ``run.eval_subset`` except in the
last round and where an architecture is derived - and the clients' eval splits for
``val_acc``), ``round_time`` (all of the above) and ``checkpoint_time`` (writing
that round's file; measured after the file is written, so it is stored from the
next round's checkpoint on and is NaN for the newest round of a file).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from mpi4py import MPI

from .. import faults
from ..algorithms import Algorithm, ClientData, GlobalModel, RoundContext
from ..algorithms.common.aggregate import ClientSums
from ..config import Config
from ..data import Dataset, Partition
from ..flat import Layout, State
from ..store import Checkpoint
from ..store.record import RunState, append_clients, fixed_record, record_round, write_genotype
from . import guards, protocol
from .devices import Placement, to_json
from .evaluation import Evaluator
from .protocol import summed_layout
from .schedule import assign, sample_clients
from .transport import make_transport


@dataclass(frozen=True)
class Outcome:
    """How ``Simulation.serve`` ended (rounds counted from 1, as the checkpoints are)."""

    model: GlobalModel  # the global model after the last round run
    rounds_done: int  # the newest checkpoint's round (a resumed run's earlier ones included)
    rounds_run: int  # the rounds this call ran
    stopped_after: int | None = None  # stopped on request (preemption) after this round
    stopped_early: int | None = None  # early stopping (run.patience) after this round
    # round -> the clients left out for a non-finite result (client -> why)
    dropped: dict[int, dict[int, str]] = field(default_factory=dict)


def on_cpu(state: State) -> State:
    """``state`` with every tensor on the CPU (the same objects where they already are)."""
    return {k: v if v.device.type == "cpu" else v.detach().cpu() for k, v in state.items()}


def _on_cpu(model: GlobalModel) -> GlobalModel:
    """The server keeps and sends CPU tensors, whatever device a method computed on."""
    return GlobalModel(model.spec, on_cpu(model.state), on_cpu(model.server_state))


def _method_times(metrics: dict[str, float], times: dict[str, float], aggregate: float) -> None:
    """The round's cost components (module docstring); ``aggregate``: the seconds from
    the reports' arrival through the server step."""
    metrics["aggregate_time"] = aggregate + times["fold"]
    metrics["compute_time"] = times["compute"]
    metrics["comm_time"] = times["comm"]
    # the method's own time: what a deployment would spend (evaluation apart)
    metrics["method_time"] = (
        metrics["aggregate_time"] + metrics["compute_time"] + metrics["comm_time"]
    )


class Simulation:
    """One rank's part of a run: ``serve`` on rank 0, ``work_loop`` on the others.

    ``placements``: every rank's device (``runtime.devices.place``), the same on all
    ranks; empty (tests, CPU-only callers): the algorithm's own device, the CPU. This
    rank's device is pinned on the algorithm here, before any client update or evaluation."""

    def __init__(
        self,
        cfg: Config,
        comm: MPI.Comm,
        dataset: Dataset,
        partition: Partition,
        algorithm: Algorithm,
        placements: Sequence[Placement] = (),
    ):
        self.cfg, self.comm = cfg, comm
        self.dataset, self.partition, self.algorithm = dataset, partition, algorithm
        self.poll = cfg.runtime.poll_interval_ms / 1000.0
        self.num_workers = max(comm.Get_size() - 1, 1)
        # Work of a client ~ the samples it trains on; used to balance ranks.
        self.work = partition.train_sizes().astype(np.float64)
        self.placements = list(placements)
        if self.placements:
            algorithm.device = torch.device(self.placements[comm.Get_rank()].device)
        self.transport = None
        self.evaluator = Evaluator(cfg, dataset, algorithm, self.client_data)
        self.poison = faults.client_result_hook()  # read once, off the client loop

    def _open_transport(self) -> None:
        """Collective (serve and work_loop start together): the runtime.transport."""
        devices = [p.device for p in self.placements] or None
        self.transport = make_transport(self.cfg.runtime.transport, self.comm, self.poll, devices)

    def _close_transport(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    # ------------------------------------------------------------ shared
    def client_data(self, cid: int) -> ClientData:
        split = self.partition.clients[cid]
        d = self.dataset
        # train_inputs normalises only this client's images (the pool may be stored as uint8)
        return ClientData(
            cid,
            d.train_inputs(split.train),
            d.train_y[split.train],
            d.train_inputs(split.eval),
            d.train_y[split.eval],
            augment=d.augment,
        ).to(self.algorithm.device)

    def run_clients(
        self,
        model: GlobalModel,
        clients: list[int],
        ctx: RoundContext,
        states_in: dict[int, State],
        round_clients: list[int],
    ) -> tuple[ClientSums, dict[int, State], dict[int, State], dict[int, str], float]:
        """Run the client update of each client in turn; pre-reduce the results (state and
        mean-reduced aux in one buffer). ``round_clients`` (all of the round's clients,
        sorted) fixes the per-client slots. Returns (sums, updated client states, each
        client's ``client_aux``, the clients left out for a non-finite result (client ->
        why), seconds): ``protocol.RunClients``."""
        t0 = time.perf_counter()
        declared = self.algorithm.aux_shapes(model)
        sums = ClientSums(
            summed_layout(model.state, declared), self.algorithm.client_metrics, round_clients
        )
        states_out: dict[int, State] = {}
        aux_out: dict[int, State] = {}
        dropped: dict[int, str] = {}
        for cid in clients:
            res = self.algorithm.client_update(
                model, self.client_data(cid), ctx, states_in.get(cid)
            )
            if set(res.aux) != set(declared):
                raise ValueError(
                    f"{self.algorithm.name}: client {cid} returned aux entries "
                    f"{sorted(res.aux)}, aux_shapes declares {sorted(declared)}"
                )
            state = on_cpu(res.state)
            if self.poison is not None:  # test-only (faults.py): None in a real run
                state = self.poison(ctx.round, cid, state)
            aux, client_aux = on_cpu(res.aux), on_cpu(res.client_aux)
            bad = guards.check_client(
                state,
                res.weight,
                res.metrics,
                res.client_state,
                {"aux": aux, "client aux": client_aux},
            )
            if bad is not None:  # never folded in; the server applies run.on_nonfinite
                dropped[cid] = bad
                continue
            sums.add(
                {**state, **{k: aux[k] for k in declared}}, res.weight, res.metrics, client=cid
            )
            if res.client_state is not None:
                states_out[cid] = on_cpu(res.client_state)
            if client_aux:
                aux_out[cid] = client_aux
        return sums, states_out, aux_out, dropped, time.perf_counter() - t0

    def context(self, round_: int, stage: str | None = None) -> RoundContext:
        return RoundContext(
            round_,
            self.cfg.run.rounds,
            self.cfg.run.seed,
            stage if stage is not None else self.algorithm.stage(round_),
        )

    # ------------------------------------------------------------ server
    def serve(
        self,
        run_dir,
        resume: Checkpoint | None = None,
        on_round: Callable[[int, dict[str, float]], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Outcome:
        """Run the rounds from ``resume`` (or from scratch) to ``run.rounds``. After each
        round's checkpoint, ``should_stop()`` true ends the run early (preemption): the
        workers are released and the outcome's ``stopped_after`` holds the rounds completed.

        A round is Algorithm 1's: sample clients, broadcast and client updates (with the
        fold of their results), aggregate, server step (which may prune), then evaluate
        and record (history, checkpoint); each a method below."""
        cfg = self.cfg
        stopped_after = stopped_early = None
        dropped: dict[int, dict[int, str]] = {}
        self._open_transport()
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        run = self._start(resume)
        done = run.start
        fixed = fixed_record(
            cfg,
            self.partition,
            self.dataset.train_y.numpy(),
            self.comm.Get_size(),
            to_json(self.placements),
        )
        for r in range(run.start, cfg.run.rounds):
            t_round = time.perf_counter()
            ctx = self.context(r)
            clients = sample_clients(
                cfg.run.seed, r, cfg.partition.num_clients, cfg.federation.clients_per_round
            )
            reports = self._client_updates(ctx, run, clients)
            if reports.dropped:
                dropped[r + 1] = dict(reports.dropped)
            t_agg = time.perf_counter()
            averaged, metrics = self._aggregate(ctx, run, clients, reports)
            old_spec = run.model.spec
            self._server_step(ctx, run, averaged, metrics)
            _method_times(metrics, reports.times, time.perf_counter() - t_agg)
            early = self.evaluator.measure(ctx, run, old_spec, averaged, metrics)
            metrics["round_time"] = time.perf_counter() - t_round
            record_round(run_dir, ctx, run, metrics, fixed, early, cfg.store.keep)
            done = r + 1
            if on_round is not None:
                on_round(r, metrics)
            if early:
                stopped_early = r + 1
                break
            if should_stop is not None and r + 1 < cfg.run.rounds and should_stop():
                stopped_after = r + 1
                break
        self.release_workers()
        if stopped_after is None:  # a preempted run is not over
            write_genotype(run_dir, run.model)
        return Outcome(run.model, done, done - run.start, stopped_after, stopped_early, dropped)

    def _start(self, resume: Checkpoint | None) -> RunState:
        """Round 0's run state, or the one a checkpoint holds (with the torch CPU stream)."""
        if resume is None:
            return RunState(_on_cpu(self.algorithm.init_global()), {}, {}, [], {}, 0)
        if resume.rng_torch_cpu is not None:
            torch.set_rng_state(resume.rng_torch_cpu)
        return RunState(
            GlobalModel(resume.spec, resume.state, resume.server_state),
            dict(resume.client_states),
            {k: list(v) for k, v in resume.metrics.items()},
            list(resume.stages),
            dict(resume.client_metrics),
            resume.round,
        )

    def _client_updates(
        self, ctx: RoundContext, run: RunState, clients: list[int]
    ) -> protocol.Reports:
        """Broadcast the global model and run the round's client updates (Algorithm 1,
        lines 4-6), here or on the workers; their results come back folded."""
        assignment = assign(clients, self.work[clients], self.num_workers)
        layout = Layout.of(run.model.state)
        sent = (run.model.spec_json(), layout)
        reports = protocol.dispatch(
            self.comm,
            self.transport,
            self.poll,
            self.run_clients,
            ctx,
            run.model,
            layout,
            summed_layout(run.model.state, self.algorithm.aux_shapes(run.model)),
            self.algorithm.client_metrics,
            assignment,
            run.client_states,
            spec_changed=sent != run.sent,
        )
        run.sent = sent
        return reports

    def _aggregate(
        self, ctx: RoundContext, run: RunState, clients: list[int], reports: protocol.Reports
    ) -> tuple[State, dict[str, float]]:
        """FedAvg of the reports (Algorithm 1, lines 7-8; aux means included), each
        client's own metrics, its new stored state and the method's per-client server
        update. Returns (averaged, the round's metrics so far)."""
        cfg, dropped = self.cfg, reports.dropped
        guards.judge_round(cfg.run.on_nonfinite, ctx.round, clients, dropped)
        sums = ClientSums(reports.layout, self.algorithm.client_metrics, clients)
        averaged, metrics = sums.finish(reports.total)
        run.per_client = append_clients(
            run.per_client,
            guards.mark_dropped(sums.per_client(reports.total), dropped, cfg.run.on_nonfinite),
            len(run.stages),
            cfg.partition.num_clients,
        )
        run.client_states.update(reports.states)
        updated = self.algorithm.server_client_step(
            run.client_states, sorted(int(c) for c in clients), reports.aux, metrics, ctx
        )
        run.client_states.update({c: on_cpu(st) for c, st in updated.items()})
        metrics.update(guards.round_metrics(cfg.run.on_nonfinite, dropped))
        return averaged, metrics

    def _server_step(
        self, ctx: RoundContext, run: RunState, averaged: State, metrics: dict[str, float]
    ) -> None:
        """The method's server step: the next global model (a pruning or a derivation
        changes its spec)."""
        run.model = _on_cpu(self.algorithm.server_step(run.model, averaged, metrics, ctx))
        guards.check_global(run.model.state, ctx.round)

    def release_workers(self, exit_code: int = 0) -> None:
        """End the workers' loops (they exit with ``exit_code``) and close the transport.
        Also the way out after a failed round (non-finite result, storage error): the
        workers then wait for the next plan, so they end cleanly, never by MPI_Abort."""
        protocol.release_workers(self.comm, self.poll, exit_code)
        self._close_transport()

    # ------------------------------------------------------------ worker
    def work_loop(self) -> int:
        """A worker's rounds until the server releases it; returns the exit status the
        server's last plan carries."""
        self._open_transport()
        try:
            return protocol.work_loop(
                self.comm, self.transport, self.poll, self.run_clients, self.context
            )
        finally:
            self._close_transport()
