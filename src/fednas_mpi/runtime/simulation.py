"""Server and worker loops of one federated run.

Rank 0 is the server. Ranks 1..N-1 are workers that each simulate the clients
assigned to them; with one rank, rank 0 also runs the clients, through the
same ``run_clients`` code. Per round:

    server: sample K clients (seeded), assign them to workers by work,
            broadcast the plan and the global state (one flat buffer),
            send stored per-client state to the workers that need it
    worker: run the method's client update for each assigned client and fold
            the results (state and ``ClientResult.aux``, both weighted) into one
            pre-reduced buffer; send it, then any updated per-client state and
            each client's ``client_aux``
    server: fold each partial sum in as it arrives (non-blocking receives,
            while slower workers still compute), in worker order, average,
            per-client server step, server step, evaluate on the server test set (and, on
            run.personal_eval_every's schedule, every client's personalised model
            on its eval split), checkpoint, report progress

Folding order: a partial is added to the running total only once every
lower-numbered worker's partial has been added, so the float64 sum is
((p_1 + p_2) + p_3) + ... whatever the arrival order: results never depend on
timing. Per round the metrics record ``compute_time`` (slowest worker's client
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

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import mpi4py
import numpy as np
import torch
from mpi4py import MPI

from .. import __version__, faults, kernels
from ..algorithms import Algorithm, ClientData, GlobalModel, RoundContext
from ..algorithms.common.aggregate import ClientSums
from ..config import Config, to_yaml
from ..data import Dataset, Partition
from ..flat import Layout, State
from ..nas.spec import genotype_of
from ..store import Checkpoint, write_checkpoint
from ..store.checkpoint import prune_old
from . import guards, protocol
from .devices import Placement, to_json
from .protocol import summed_layout
from .schedule import assign, eval_subset, patience_exhausted, sample_clients
from .transport import make_transport


def versions() -> str:
    return json.dumps(
        {
            "fednas_mpi": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "h5py": h5py.__version__,
            "mpi4py": mpi4py.__version__,
            "mpi": MPI.Get_library_version().splitlines()[0].strip(),
        }
    )


def _append_clients(
    history: dict[str, np.ndarray],
    values: dict[str, dict[int, float]],
    rounds_before: int,
    num_clients: int,
) -> dict[str, np.ndarray]:
    """Add one round's row (NaN for clients not sampled) to rounds x clients arrays."""
    out = {}
    for name in set(history) | set(values):
        old = history.get(name)
        if old is None or old.shape != (rounds_before, num_clients):
            old = np.full((rounds_before, num_clients), np.nan)  # a run from before per-client
        row = np.full((1, num_clients), np.nan)
        for c, v in values.get(name, {}).items():
            row[0, c] = v
        out[name] = np.concatenate([old, row])
    return out


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


@dataclass
class _Run:
    """What the server carries from round to round (and stores in every checkpoint)."""

    model: GlobalModel
    client_states: dict[int, State]
    history: dict[str, list[float]]  # metric -> one value per round
    stages: list[str]
    per_client: dict[str, np.ndarray]  # client metric -> rounds x clients
    start: int  # the first round to run
    sent: tuple | None = None  # (spec JSON, layout) the workers hold


class Simulation:
    def __init__(
        self,
        cfg: Config,
        comm: MPI.Comm,
        dataset: Dataset,
        partition: Partition,
        algorithm: Algorithm,
    ):
        self.cfg, self.comm = cfg, comm
        self.dataset, self.partition, self.algorithm = dataset, partition, algorithm
        self.poll = cfg.runtime.poll_interval_ms / 1000.0
        self.num_workers = max(comm.Get_size() - 1, 1)
        # Work of a client ~ the samples it trains on; used to balance ranks.
        self.work = partition.train_sizes().astype(np.float64)
        # every rank's placement (runtime/devices.py), the same on all ranks; [] = all CPU
        self.placements: list[Placement] = []
        self.transport = None
        self._test: tuple[torch.Tensor, torch.Tensor] | None = None
        self._test_sub: tuple[torch.Tensor, torch.Tensor] | None = None
        self._val: tuple[torch.Tensor, torch.Tensor] | None = None

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
            state = faults.poison_client(ctx.round, cid, on_cpu(res.state))
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
    ) -> GlobalModel:
        """Run the rounds from ``resume`` (or from scratch) to ``run.rounds``. After each
        round's checkpoint, ``should_stop()`` true ends the run early (preemption): the
        workers are released and ``self.stopped_after`` holds the rounds completed.

        A round is Algorithm 1's: sample clients, broadcast and client updates (with the
        fold of their results), aggregate, server step (which may prune), then evaluate
        and record (history, checkpoint); each a method below."""
        cfg = self.cfg
        self.stopped_after = self.stopped_early = None
        self._open_transport()
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        run = self._start(resume)
        fixed = self._fixed_record()
        for r in range(run.start, cfg.run.rounds):
            t_round = time.perf_counter()
            ctx = self.context(r)
            clients = sample_clients(
                cfg.run.seed, r, cfg.partition.num_clients, cfg.federation.clients_per_round
            )
            reports = self._client_updates(ctx, run, clients)
            t_agg = time.perf_counter()
            averaged, metrics = self._aggregate(ctx, run, clients, reports)
            old_spec = run.model.spec
            self._server_step(ctx, run, averaged, metrics)
            _method_times(metrics, reports.times, time.perf_counter() - t_agg)
            early = self._evaluate(ctx, run, old_spec, averaged, metrics)
            metrics["round_time"] = time.perf_counter() - t_round
            self._record(run_dir, ctx, run, metrics, fixed, early)
            if on_round is not None:
                on_round(r, metrics)
            if early:
                self.stopped_early = r + 1
                break
            if should_stop is not None and r + 1 < cfg.run.rounds and should_stop():
                self.stopped_after = r + 1
                break
        self.release_workers()
        self._write_genotype(run_dir, run.model)
        return run.model

    def _start(self, resume: Checkpoint | None) -> _Run:
        """Round 0's run state, or the one a checkpoint holds (with the torch CPU stream)."""
        if resume is None:
            return _Run(_on_cpu(self.algorithm.init_global()), {}, {}, [], {}, 0)
        if resume.rng_torch_cpu is not None:
            torch.set_rng_state(resume.rng_torch_cpu)
        return _Run(
            GlobalModel(resume.spec, resume.state, resume.server_state),
            dict(resume.client_states),
            {k: list(v) for k, v in resume.metrics.items()},
            list(resume.stages),
            dict(resume.client_metrics),  # empty from checkpoints before it existed
            resume.round,
        )

    def _fixed_record(self) -> dict:
        """What every checkpoint of this run stores unchanged: config, partition, attrs."""
        cfg = self.cfg
        labels = self.dataset.train_y.numpy()
        partition = {
            "train_sizes": self.partition.train_sizes(),
            "eval_sizes": np.array([len(c.eval) for c in self.partition.clients]),
            "train_hist": self.partition.histograms(labels, "train"),
            "eval_hist": self.partition.histograms(labels, "eval"),
        }
        attrs = {
            "rounds_planned": cfg.run.rounds,
            "world_size": self.comm.Get_size(),
            "seed": cfg.run.seed,
            "algorithm": cfg.algorithm.name,
            "dataset": cfg.data.name,
            "versions": versions(),
            "kernels": kernels.status().backend,
            "devices": to_json(self.placements),
        }
        return {"config_yaml": to_yaml(cfg), "partition": partition, "attrs": attrs}

    def _client_updates(self, ctx: RoundContext, run: _Run, clients: list[int]) -> protocol.Reports:
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
        self, ctx: RoundContext, run: _Run, clients: list[int], reports: protocol.Reports
    ) -> tuple[State, dict[str, float]]:
        """FedAvg of the reports (Algorithm 1, lines 7-8; aux means included), each
        client's own metrics, its new stored state and the method's per-client server
        update. Returns (averaged, the round's metrics so far)."""
        cfg, dropped = self.cfg, reports.dropped
        guards.judge_round(cfg.run.on_nonfinite, ctx.round, clients, dropped)
        sums = ClientSums(reports.layout, self.algorithm.client_metrics, clients)
        averaged, metrics = sums.finish(reports.total)
        run.per_client = _append_clients(
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
        self, ctx: RoundContext, run: _Run, averaged: State, metrics: dict[str, float]
    ) -> None:
        """The method's server step: the next global model (a pruning or a derivation
        changes its spec)."""
        run.model = _on_cpu(self.algorithm.server_step(run.model, averaged, metrics, ctx))
        guards.check_global(run.model.state, ctx.round)

    def _evaluate(
        self,
        ctx: RoundContext,
        run: _Run,
        old_spec: dict,
        averaged: State,
        metrics: dict[str, float],
    ) -> bool:
        """Measure the new global model (apart from the method's time): ``val_acc`` on
        ``run.val_every``'s schedule, then, as that decides whether this round is the
        last, the server test set, the accuracies around a pruning and the personalised
        ones. Returns whether early stopping (``run.patience``) ends the run here."""
        t_eval = time.perf_counter()
        cfg, model, r = self.cfg, run.model, ctx.round
        if cfg.run.val_every and ctx.is_due(cfg.run.val_every):
            metrics["val_loss"], metrics["val_acc"] = self.algorithm.evaluate_global(
                model, *self._val_set(), run.client_states
            )
        early = patience_exhausted(
            [
                *run.history.get("val_acc", [float("nan")] * len(run.stages)),
                metrics.get("val_acc", float("nan")),
            ],
            [self.algorithm.can_stop(i) for i in range(r + 1)],
            cfg.run.patience,
        )
        last = r + 1 == cfg.run.rounds or early
        loss = acc = float("nan")
        changed = model.spec != old_spec
        derived = genotype_of(model.spec) is not None and genotype_of(old_spec) is None
        # the whole test set where a result is read off (the end, the derivation)
        test = self._test_set(whole=last or derived)
        if changed or last or ctx.is_due(cfg.run.eval_every):
            loss, acc = self.algorithm.evaluate_global(model, *test, run.client_states)
            guards.check_loss(loss, r)
        if changed:
            metrics.update(self._prune_accuracies(old_spec, averaged, model, acc, test))
        every = cfg.run.personal_eval_every
        if last or (every and (r + 1) % every == 0):
            metrics.update(self.personal_accuracies(model, run.client_states, ctx))
        metrics.update(global_loss=loss, global_acc=acc, eval_time=time.perf_counter() - t_eval)
        return early

    def _record(
        self,
        run_dir,
        ctx: RoundContext,
        run: _Run,
        metrics: dict[str, float],
        fixed: dict,
        early: bool,
    ) -> None:
        """Append the round to the history and write its checkpoint (then store.keep)."""
        metrics["checkpoint_time"] = float("nan")
        for name in set(run.history) | set(metrics):
            run.history.setdefault(name, [float("nan")] * len(run.stages))
            run.history[name].append(metrics.get(name, float("nan")))
        run.stages.append(ctx.stage)
        t_ckpt = time.perf_counter()
        model, r = run.model, ctx.round
        write_checkpoint(
            run_dir,
            r + 1,
            config_yaml=fixed["config_yaml"],
            spec=model.spec,
            state=model.state,
            server_state=model.server_state,
            client_states=run.client_states,
            metrics={k: np.asarray(v) for k, v in run.history.items()},
            stages=run.stages,
            partition=fixed["partition"],
            attrs={
                **fixed["attrs"],
                "stage": ctx.stage,
                **({"stopped_early": r + 1} if early else {}),
            },
            client_metrics=run.per_client,
        )
        prune_old(run_dir, self.cfg.store.keep)
        # stored from the next round's file on (a file cannot hold its own write time)
        metrics["checkpoint_time"] = run.history["checkpoint_time"][-1] = (
            time.perf_counter() - t_ckpt
        )

    def _write_genotype(self, run_dir, model: GlobalModel) -> None:
        """genotype.json beside the checkpoints once a run that derives one has ended
        (not after a preemption: the run is not over)."""
        genotype = genotype_of(model.spec)
        if genotype is not None and self.stopped_after is None:
            (Path(run_dir) / "genotype.json").write_text(
                json.dumps(genotype.to_dict(), indent=2) + "\n"
            )

    def release_workers(self, exit_code: int = 0) -> None:
        """End the workers' loops (they exit with ``exit_code``) and close the transport.
        Also the way out after a failed round (non-finite result, storage error): the
        workers then wait for the next plan, so they end cleanly, never by MPI_Abort."""
        protocol.release_workers(self.comm, self.poll, exit_code)
        self._close_transport()

    def _test_set(self, whole: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The server test set (its fixed ``run.test_subset``, the whole set when that is 0)
        on the server's device (moved there once); ``whole=False``: its fixed
        ``run.eval_subset`` (all of it when that is 0)."""
        dev = self.algorithm.device
        if self._test is None or self._test[0].device != dev:
            x, y = self.dataset.test_x, self.dataset.test_y
            keep = eval_subset(len(y), self.cfg.run.test_subset, "test_subset")
            if keep is not None:
                x, y = x[torch.from_numpy(keep)], y[torch.from_numpy(keep)]
            self._test = (x.to(dev), y.to(dev))
            idx = eval_subset(len(self._test[1]), self.cfg.run.eval_subset)
            self._test_sub = (
                self._test
                if idx is None
                else tuple(t[torch.from_numpy(idx).to(dev)] for t in self._test)
            )
        return self._test if whole else self._test_sub

    def _val_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The union of every client's eval split (client order), on the server's device:
        the clients' own held-out data, for ``val_acc`` (built once)."""
        if self._val is None:
            parts = [self.client_data(c) for c in range(self.cfg.partition.num_clients)]
            self._val = (torch.cat([p.eval_x for p in parts]), torch.cat([p.eval_y for p in parts]))
        return self._val

    def personal_accuracies(
        self, model: GlobalModel, client_states: dict[int, State], ctx: RoundContext
    ) -> dict[str, float]:
        """Mean and std over all clients (each counted once; empty eval splits left out)
        of the accuracy of each client's personalised model on its eval split (Table 5).

        Runs on the server, which holds the data of every client and their stored state,
        so the result does not depend on the rank count.
        """
        accs = np.array(
            [
                self.algorithm.personal_accuracy(
                    model, self.client_data(c), client_states.get(c), ctx
                )
                for c in range(self.cfg.partition.num_clients)
            ],
            dtype=np.float64,
        )
        accs = accs[np.isfinite(accs)]
        if not accs.size:
            return {}
        return {"personal_acc": float(accs.mean()), "personal_acc_std": float(accs.std())}

    def _prune_accuracies(
        self, old_spec: dict, averaged: State, new: GlobalModel, new_acc: float, test
    ) -> dict[str, float]:
        """The server step changed the architecture (pruning): accuracy of the averaged
        model just before (``acc_before_prune``) and of the new architecture with the
        weights it inherits from it (``acc_after_prune``; paper Table 3). A method that
        re-initialises after pruning (FedNAS) has ``global_acc`` of its fresh network."""
        before = GlobalModel(old_spec, averaged, new.server_state)
        _, acc_before = self.algorithm.evaluate(before, *test)
        if all(new.state[k] is averaged.get(k) for k in new.state):
            acc_after = new_acc  # the new model is the averaged one, restricted
        elif all(k in averaged for k in new.state):
            inherited = GlobalModel(new.spec, {k: averaged[k] for k in new.state}, new.server_state)
            _, acc_after = self.algorithm.evaluate(inherited, *test)
        else:
            acc_after = float("nan")
        return {"acc_before_prune": acc_before, "acc_after_prune": acc_after}

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
