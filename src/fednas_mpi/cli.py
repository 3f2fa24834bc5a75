"""``fednas-mpi CFG.yaml [--out RUN_DIR] [--set section.key=value ...] [--resume RUN_DIR]``.

Rank 0 validates the command line, the configuration and the run directory
and broadcasts its verdict; every rank then loads the data and the collective
``agree`` makes sure a failure on any rank stops all of them. Bad input is
reported once, by rank 0, and every rank exits with status 2 before round 1.

``fednas-mpi data stats|download ...`` are dataset tools without MPI (``data/cli.py``);
``fednas-mpi inspect|compare|plot ...`` read runs from their checkpoints (``report/cli.py``);
``fednas-mpi export RUN_DIR --out FILE`` writes a run's model for torch alone (``export/``);
``fednas-mpi configs`` lists the shipped run configs (``shipped_configs.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from . import config as config_mod
from .config import Config, ConfigError
from .store import rundir
from .store.rundir import UsageError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_NONFINITE = 4  # a NaN/Inf client result, global model or test loss (run.on_nonfinite)
EXIT_STORAGE = 5  # a checkpoint could not be written (full disk, I/O error, permission)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *a, rank: int = 0, **kw):
        super().__init__(*a, **kw)
        self.rank = rank

    def _print_message(self, message, file=None):
        if self.rank == 0:
            super()._print_message(message, file)


def build_parser(rank: int = 0) -> argparse.ArgumentParser:
    p = _Parser(
        prog="fednas-mpi",
        rank=rank,
        description="Federated neural architecture search simulator; launch with "
        "`mpirun -n N fednas-mpi CFG.yaml` (rank 0 aggregates, ranks 1..N-1 "
        "simulate clients; -n 1 runs everything in one process).",
        epilog="Tools without mpirun: fednas-mpi configs (the shipped configs), "
        "fednas-mpi data stats|download, "
        "fednas-mpi inspect RUN_DIR, fednas-mpi compare RUN_DIR..., "
        "fednas-mpi plot RUN_DIR..., fednas-mpi export RUN_DIR --out FILE "
        "(each with --help).",
    )
    p.add_argument("config", nargs="?", help="YAML run configuration (optional with --resume)")
    p.add_argument(
        "--out",
        metavar="RUN_DIR",
        help="run directory for the checkpoints (default runs/NAME-TIMESTAMP); "
        "must be new or empty",
    )
    p.add_argument(
        "--set",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        dest="overrides",
        help="override one config value (repeatable)",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        nargs="?",
        const="",
        help="continue the run in RUN_DIR from its newest valid checkpoint, or, "
        "when it holds none yet, start it (from CFG or the run's stored "
        "config.yaml); bare --resume with --out RUN_DIR: start or resume "
        "there",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="allow --out to name a directory holding an earlier run; its checkpoints are deleted",
    )
    p.add_argument("--version", action="version", version=f"fednas-mpi {__version__}")
    return p


@dataclass
class Decision:
    """Rank 0's verdict on the inputs, broadcast to every rank."""

    error: str | None = None
    done_message: str | None = None  # nothing to run (e.g. resumed run already complete)
    config: dict | None = None
    run_dir: str | None = None
    resume: bool = False


def decide(args: argparse.Namespace) -> tuple[Config, Path, object | None]:
    """Validate everything rank 0 can check before training (the run-directory and resume
    policy is ``store/rundir.py``'s). Raises ConfigError/UsageError."""
    _check_not_moved(args)
    return rundir.decide(args, _check_config)


def _check_config(cfg: Config, starting: bool) -> None:
    """What ``rundir.decide`` checks of a config beyond its validation: the optional
    packages it asks for, and, for a run that starts, the genotype it names."""
    _check_extras(cfg)
    if starting:
        _check_genotype(cfg)


def _check_not_moved(args: argparse.Namespace) -> None:
    """A config path of the earlier flat configs/ layout: one error naming its new file.

    An error rather than a warning and a run: the old name is fixed once in the script that
    used it, and a run's command line never names a file that does not exist."""
    if not args.config or Path(args.config).exists():
        return
    from .shipped_configs import moved_to

    new = moved_to(args.config)
    if new is None:
        return
    resume = (
        (" (or leave CFG out: --resume reads RUN_DIR/config.yaml once a run has started there)")
        if args.resume is not None
        else ""
    )
    raise UsageError(
        f"{args.config} has moved to {new} (configs/ is now "
        f"SCALE/DATASET/METHOD.yaml; fednas-mpi configs lists it): give {new} "
        f"instead{resume}"
    )


def _check_extras(cfg: Config) -> None:
    """Optional packages the config asks for are there (before round 1, not after it)."""
    if cfg.store.tensorboard:
        from .report.tensorboard import TensorBoardUnavailable, check_available

        try:
            check_available()
        except TensorBoardUnavailable as e:
            raise UsageError(str(e)) from None


def _check_genotype(cfg: Config) -> None:
    """A genotype the config names reads and fits its network (a run that starts; a
    resumed one has the spec in its checkpoint and never reads the source again)."""
    if cfg.algorithm.name == "random_nas" and cfg.algorithm.random_nas.genotype:
        from .nas import CellSpace
        from .nas.published import GenotypeError, source_spec

        d = cfg.model.darts
        try:
            source_spec(
                CellSpace(d.nodes, d.input_k, tuple(d.primitives)),
                cfg.algorithm.random_nas.genotype,
            )
        except GenotypeError as e:
            raise UsageError(f"algorithm.random_nas.genotype: {e}") from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["data"]:  # dataset tools: no MPI, no run
        from .data.cli import main as data_main

        return data_main(argv[1:])
    if argv[:1] and argv[0] in ("inspect", "compare", "plot"):  # run-data tools: no MPI
        from .report.cli import main as report_main

        return report_main(argv)
    if argv[:1] == ["configs"]:  # the index of the shipped configs: no MPI
        from .shipped_configs import main as configs_main

        return configs_main(argv[1:])
    if argv[:1] == ["export"]:  # a run's model as a torch.export file: no MPI
        from .export.cli import main as export_main

        return export_main(argv[1:])
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    from .runtime.comm import bcast_object, install_abort_hooks

    install_abort_hooks(comm)
    args = build_parser(rank).parse_args(argv)

    ckpt = None
    decision = Decision()
    if rank == 0:
        try:
            cfg, run_dir, ckpt = decide(args)
            decision = Decision(
                config=config_mod.to_dict(cfg), run_dir=str(run_dir), resume=ckpt is not None
            )
            decision.done_message = rundir.nothing_to_resume(ckpt, cfg, run_dir)
        except (ConfigError, UsageError) as e:
            decision = Decision(error=str(e))
    # Polling, not MPI's spinning bcast: the other ranks would take cores from rank 0 while it
    # decides (reading checkpoints, importing torch) on an oversubscribed node.
    decision = bcast_object(comm, decision, 0.005)
    if decision.error:
        if rank == 0:
            print(f"fednas-mpi: error: {decision.error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if decision.done_message:
        if rank == 0:
            print(decision.done_message)
        return 0
    cfg = config_mod.from_dict(decision.config)
    try:
        return run(cfg, comm, Path(decision.run_dir), ckpt)
    except KeyboardInterrupt:
        _interrupted(rank, Path(decision.run_dir))


def _interrupted(rank: int, run_dir: Path) -> None:
    """Ctrl-C: one line from rank 0 instead of a traceback per rank, then every rank leaves
    at once (without MPI_Finalize, which would wait for ranks that are gone). Checkpoints
    are renamed into place whole, and a file being written is deleted, so the newest one
    is complete."""
    if rank == 0:
        from .store import list_checkpoints

        files = list_checkpoints(run_dir) if run_dir.is_dir() else []
        done = files[-1][0] if files else 0
        if done:
            line = f"interrupted at round {done + 1}; resume with: fednas-mpi --resume {run_dir}"
        else:
            line = (
                "interrupted in round 1, before the first checkpoint; nothing to resume "
                "(run the command again with --overwrite)"
            )
        # on a terminal the progress bar has no newline yet
        print(f"{chr(10) if sys.stdout.isatty() else ''}fednas-mpi: {line}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


def run(cfg: Config, comm, run_dir: Path, ckpt) -> int:
    import torch

    from .algorithms import DataInfo, get_algorithm
    from .data import DataError, dataset_and_partition
    from .runtime.comm import agree, default_threads
    from .runtime.devices import describe, place
    from .runtime.mixing_backend import setup_kernels
    from .runtime.preempt import EXIT_STOPPED, StopRequest
    from .runtime.progress import Progress
    from .runtime.simulation import Simulation

    rank = comm.Get_rank()
    torch.set_num_threads(cfg.runtime.threads_per_rank or default_threads(comm))
    status, error = setup_kernels(cfg.kernels.backend, comm, cfg.runtime.poll_interval_ms / 1e3)
    if error:
        if rank == 0:
            print(f"fednas-mpi: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _, placements, error = place(comm, cfg.runtime)
    if error:
        if rank == 0:
            print(f"fednas-mpi: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    error = None
    if cfg.data.download:
        # Rank 0 alone downloads (ranks would race on the same files); agree() waits for it.
        error = agree(comm, _prefetch(cfg) if rank == 0 else None)
    if error is None:
        try:
            dataset, partition = dataset_and_partition(cfg)
        except DataError as e:
            error = f"[rank {rank}] {e}"
        error = agree(comm, error)
    if error:
        if rank == 0:
            print(f"fednas-mpi: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT

    algorithm = get_algorithm(cfg.algorithm.name)(
        cfg, DataInfo(dataset.input_shape, dataset.num_classes)
    )
    sim = Simulation(cfg, comm, dataset, partition, algorithm, placements)
    stop = StopRequest(run_dir, rank)
    if rank != 0:
        return sim.work_loop()
    if stop.path.exists():
        print(
            f"fednas-mpi: warning: {stop.path} exists: the run stops after its next round; "
            f"delete it to run on",
            file=sys.stderr,
        )
    start = ckpt.round if ckpt is not None else 0
    print(
        f"fednas-mpi {__version__}: {cfg.algorithm.name} on {cfg.data.name}, "
        f"{cfg.partition.num_clients} clients ({cfg.partition.scheme}), "
        f"{status.backend} mixing, "
        f"{cfg.federation.clients_per_round} per round, {comm.Get_size()} rank(s); "
        f"{'resuming at round ' + str(start + 1) if ckpt else 'starting'} -> {run_dir}",
        flush=True,
    )
    print(f"devices: {describe(placements)}", flush=True)
    progress = Progress(cfg.run.rounds, start)
    watchers = [progress.update]
    board = None
    if cfg.store.tensorboard:
        from .report.tensorboard import TensorBoardLog

        board = TensorBoardLog(run_dir, start)
        watchers.append(board)
        print(f"tensorboard: tensorboard --logdir {board.logdir}", flush=True)

    def on_round(r: int, metrics: dict) -> None:
        for watch in watchers:
            watch(r, metrics)

    try:
        code, outcome = _serve(sim, run_dir, ckpt, on_round, stop)
    finally:
        if board is not None:
            board.close()
    if code:
        return code
    if outcome.stopped_after is not None:
        print(
            f"stopped on request after round {outcome.stopped_after} (SIGUSR1 or {stop.path}); "
            f"its checkpoint is complete: fednas-mpi --resume {run_dir} continues",
            flush=True,
        )
        return EXIT_STOPPED
    if outcome.stopped_early is not None:
        print(
            f"stopped early after round {outcome.stopped_early}: val_acc did not improve for "
            f"{cfg.run.patience} validations (run.patience)",
            flush=True,
        )
    accs = _final_accuracies(run_dir)
    if accs:
        final, best = accs
        print(
            f"done: final global accuracy {final:.4f}, best {best:.4f}; checkpoints in {run_dir}",
            flush=True,
        )
    return 0


def _serve(sim, run_dir: Path, ckpt, on_round, stop) -> tuple[int, object]:
    """Rank 0's rounds: (0, their ``Outcome``); a non-finite result or a failed checkpoint
    write is reported here, once, and every rank exits with its status (the workers are
    released, not aborted): (that status, None)."""
    from .runtime.guards import NonFiniteError
    from .store import StorageError

    try:
        return 0, sim.serve(run_dir, ckpt, on_round=on_round, should_stop=stop)
    except NonFiniteError as e:
        print(
            f"\nfednas-mpi: error: {e}\nThe checkpoints of the earlier rounds are intact: "
            f"after a fix, fednas-mpi --resume {run_dir} [--set algorithm.KEY=VALUE] "
            f"continues from the newest, or add --set run.on_nonfinite=skip_client to "
            f"drop such clients.",
            file=sys.stderr,
            flush=True,
        )
        code = EXIT_NONFINITE
    except StorageError as e:
        newest = (
            f"the newest intact checkpoint is {e.newest}"
            if e.newest is not None
            else "no checkpoint of this run is intact yet"
        )
        print(
            f"\nfednas-mpi: error: {e}. The temporary file was removed and earlier "
            f"checkpoints are untouched; {newest}. Free space (or fix the cause), then "
            f"continue: fednas-mpi --resume {run_dir}",
            file=sys.stderr,
            flush=True,
        )
        code = EXIT_STORAGE
    sim.release_workers(code)
    return code, None


def _prefetch(cfg: Config) -> str | None:
    """Download the configured dataset if its files are missing; the error, or None."""
    from .data import DataError, prefetch

    try:
        prefetch(cfg.data)
    except DataError as e:
        return f"[rank 0] {e}"
    return None


def _final_accuracies(run_dir: Path) -> tuple[float, float] | None:
    import numpy as np

    from .store import newest_readable, read_checkpoint

    ckpt, _ = newest_readable(run_dir, lambda p: read_checkpoint(p, tensors=False))
    if ckpt is None or "global_acc" not in ckpt.metrics:
        return None
    acc = ckpt.metrics["global_acc"]
    acc = acc[np.isfinite(acc)]
    return (float(acc[-1]), float(acc.max())) if acc.size else None
