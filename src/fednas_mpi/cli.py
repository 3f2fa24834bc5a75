"""``fednas-mpi CFG.yaml [--out RUN_DIR] [--set section.key=value ...] [--resume RUN_DIR]``.

Rank 0 validates the command line, the configuration and the run directory
and broadcasts its verdict; every rank then loads the data and the collective
``agree`` makes sure a failure on any rank stops all of them. Bad input is
reported once, by rank 0, and every rank exits with status 2 before round 1.

``fednas-mpi data stats|download ...`` are dataset tools without MPI (``data/cli.py``);
``fednas-mpi inspect|compare|plot ...`` read runs from their checkpoints (``report/cli.py``);
``fednas-mpi export RUN_DIR --out FILE`` writes a run's model for torch alone (``export/``);
``fednas-mpi configs`` lists the shipped run configs (``configs_index.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import __version__
from . import config as config_mod
from .config import Config, ConfigError
from .migrations import from_stored

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_NONFINITE = 4  # a NaN/Inf client result, global model or test loss (run.on_nonfinite)
EXIT_STORAGE = 5  # a checkpoint could not be written (full disk, I/O error, permission)


class UsageError(Exception):
    """A problem with the command line, the run directory or a checkpoint."""


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


_OURS = ("round_", ".round_", "config.yaml")
# what a run directory may hold when a run starts in it with --resume (nothing else)
_RUN_FILES = (*_OURS, "STOP", "genotype.json")


def _check_new_run_dir(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path}: exists and is not a directory; choose another --out")
    if path.is_dir():
        # config.yaml alone: a start that failed before its first round, nothing to lose
        entries = sorted(set(os.listdir(path)) - {"config.yaml"})
        if entries and not overwrite:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise UsageError(
                f"--out {path}: directory is not empty ({shown}); pass --resume {path} to "
                f"continue that run, --overwrite to replace it, or choose another --out"
            )
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UsageError(
            f"--out {path}: cannot write there ({e.strerror}); choose a writable --out"
        ) from None
    if overwrite:
        for name in os.listdir(path):
            if name.startswith(_OURS):
                (path / name).unlink()


def decide(args: argparse.Namespace) -> tuple[Config, Path, object | None]:
    """Validate everything rank 0 can check before training. Raises ConfigError/UsageError."""
    _check_not_moved(args)
    if args.resume is not None:
        return _decide_resume(args)
    if not args.config:
        raise UsageError("missing config file: fednas-mpi CFG.yaml (or --resume RUN_DIR)")
    cfg = config_mod.load_run(args.config, args.overrides)
    _check_extras(cfg)
    _check_genotype(cfg)
    run_dir = (
        Path(args.out)
        if args.out
        else Path("runs") / f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    _check_new_run_dir(run_dir, args.overwrite)
    _begin(run_dir, cfg)
    return cfg, run_dir, None


def _check_not_moved(args: argparse.Namespace) -> None:
    """A config path of the earlier flat configs/ layout: one error naming its new file.

    An error rather than a warning and a run: the old name is fixed once in the script that
    used it, and a run's command line never names a file that does not exist."""
    if not args.config or Path(args.config).exists():
        return
    from .configs_index import moved_to

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


def _decide_resume(args: argparse.Namespace) -> tuple[Config, Path, object | None]:
    """--resume: continue from the newest valid checkpoint, or start when there is none."""
    if not args.resume and not args.out:
        raise UsageError(
            "--resume needs the run directory: --resume RUN_DIR, or CFG.yaml --out RUN_DIR --resume"
        )
    if args.resume and args.out and Path(args.out) != Path(args.resume):
        raise UsageError(
            "--out and --resume name different directories; a resumed run "
            "continues in its own directory, so drop --out"
        )
    run_dir = Path(args.resume or args.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--resume {run_dir}: exists and is not a directory")
    # the store (torch, h5py) is imported only when there is something to read: rank 0
    # decides while the other ranks wait, so a fresh start stays quick
    ckpt, skipped = None, []
    if _holds(run_dir, "round_"):
        from .store import newest_readable

        ckpt, skipped = newest_readable(run_dir)
    if ckpt is None:
        return _start_in(run_dir, args, skipped), run_dir, None
    cfg = _agreeing(args, yaml.safe_load(ckpt.config_yaml), run_dir, ckpt.path)
    _check_extras(cfg)
    for line in skipped:
        print(f"fednas-mpi: warning: {line}", file=sys.stderr)
    _remove_temporaries(run_dir)
    return cfg, run_dir, ckpt


def _agreeing(args: argparse.Namespace, stored_raw, run_dir: Path, source: Path) -> Config:
    """The run's stored config (read from ``source`` through the migrations) with the
    overrides, or CFG when given and it agrees with the stored one in every field that
    changes results."""
    stored = from_stored(stored_raw, args.overrides, source)
    if not args.config:
        return stored
    given = config_mod.load_run(args.config, args.overrides)
    diffs = config_mod.result_affecting_differences(given, stored)
    if diffs:
        flat_g = config_mod.flatten(config_mod.to_dict(given))
        flat_s = config_mod.flatten(config_mod.to_dict(stored))
        lines = [
            f"{k}: run has {flat_s.get(k, '(not set)')!r}, {args.config} has "
            f"{flat_g.get(k, '(not set)')!r}"
            for k in diffs
        ]
        raise ConfigError(
            [
                f"--resume {run_dir}: the config differs from the run's in "
                f"fields that change results; resume without {args.config} "
                f"or fix them:"
            ]
            + lines
        )
    return given


def _start_in(run_dir: Path, args: argparse.Namespace, skipped: list[str]) -> Config:
    """--resume on a directory without a valid checkpoint: start the run there, from CFG
    (checked against a config.yaml an earlier start left) or from that config.yaml."""
    stored = run_dir / "config.yaml"
    if stored.is_file():
        try:
            raw = yaml.safe_load(stored.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise UsageError(f"--resume {run_dir}: cannot read {stored} ({e})") from None
        cfg = _agreeing(args, raw, run_dir, stored)
    elif args.config:
        cfg = config_mod.load_run(args.config, args.overrides)
    else:
        raise UsageError(
            f"--resume {run_dir}: nothing to resume (no checkpoint, no "
            f"config.yaml) and no config given; start it with: fednas-mpi "
            f"CFG.yaml --out {run_dir} --resume"
        )
    _check_extras(cfg)
    _check_genotype(cfg)
    foreign = sorted(
        n for n in (os.listdir(run_dir) if run_dir.is_dir() else []) if not n.startswith(_RUN_FILES)
    )
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UsageError(
            f"--resume {run_dir}: holds no checkpoint and files that are not "
            f"a fednas-mpi run's ({shown}); choose another directory"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--resume {run_dir}: cannot create it ({e.strerror})") from None
    for line in skipped:  # unreadable round files: kept aside, never read again
        print(f"fednas-mpi: warning: {line}; renamed to *.broken", file=sys.stderr)
    if skipped:
        from .store import list_checkpoints

        for _, path in list_checkpoints(run_dir):
            path.rename(path.with_name(path.name + ".broken"))
    print(f"fednas-mpi: {run_dir} holds no checkpoint yet: starting the run there", file=sys.stderr)
    _begin(run_dir, cfg)
    return cfg


def _begin(run_dir: Path, cfg: Config) -> None:
    """A run starts in ``run_dir``: its config.yaml is the first file it writes."""
    _remove_temporaries(run_dir)
    try:
        (run_dir / "config.yaml").write_text(config_mod.to_yaml(cfg))
    except OSError as e:
        raise UsageError(f"cannot write {run_dir / 'config.yaml'} ({e.strerror})") from None


def _holds(run_dir: Path, prefix: str) -> bool:
    return run_dir.is_dir() and any(n.startswith(prefix) for n in os.listdir(run_dir))


def _remove_temporaries(run_dir: Path) -> None:
    """Temporary checkpoint files of a writer that was killed: never complete, removed."""
    if not _holds(run_dir, ".round_"):
        return
    from .store import remove_temporaries

    for path in remove_temporaries(run_dir):
        print(
            f"fednas-mpi: removed {path}, the unfinished checkpoint of a writer that was killed",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["data"]:  # dataset tools: no MPI, no run
        from .data.cli import main as data_main

        return data_main(argv[1:])
    if argv[:1] and argv[0] in ("inspect", "compare", "plot"):  # run-data tools: no MPI
        from .report.cli import main as report_main

        return report_main(argv)
    if argv[:1] == ["configs"]:  # the index of the shipped configs: no MPI
        from .configs_index import main as configs_main

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
            if ckpt is not None and ckpt.attrs.get("stopped_early"):
                decision.done_message = (
                    f"{run_dir}: the run stopped early after round "
                    f"{ckpt.round} (run.patience: validation accuracy "
                    f"stopped improving); nothing to resume."
                )
            elif ckpt is not None and ckpt.round >= cfg.run.rounds:
                decision.done_message = (
                    f"{run_dir}: all {cfg.run.rounds} rounds are done "
                    f"(checkpoint round {ckpt.round}); nothing to resume. "
                    f"Raise run.rounds with --set to extend the run."
                )
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
    from .data import DataError, load_dataset, make_partition
    from .runtime.comm import agree, default_threads
    from .runtime.devices import describe, place
    from .runtime.kernels import setup_kernels
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
    mine, placements, error = place(comm, cfg.runtime)
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
            dataset = load_dataset(cfg.data, cfg.run.seed)
            partition = make_partition(
                dataset.train_y.numpy(),
                cfg.partition,
                cfg.run.seed,
                num_classes=dataset.num_classes,
            )
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
    algorithm.device = torch.device(mine.device)
    sim = Simulation(cfg, comm, dataset, partition, algorithm)
    sim.placements = placements
    stop = StopRequest(run_dir, rank)
    if rank != 0:
        sim.work_loop()
        return sim.exit_code
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
        code = _serve(sim, run_dir, ckpt, on_round, stop)
    finally:
        if board is not None:
            board.close()
    if code:
        return code
    if sim.stopped_after is not None:
        print(
            f"stopped on request after round {sim.stopped_after} (SIGUSR1 or {stop.path}); "
            f"its checkpoint is complete: fednas-mpi --resume {run_dir} continues",
            flush=True,
        )
        return EXIT_STOPPED
    if sim.stopped_early is not None:
        print(
            f"stopped early after round {sim.stopped_early}: val_acc did not improve for "
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


def _serve(sim, run_dir: Path, ckpt, on_round, stop) -> int:
    """Rank 0's rounds; a non-finite result or a failed checkpoint write is reported here,
    once, and every rank exits with its status (the workers are released, not aborted)."""
    from .runtime.guards import NonFiniteError
    from .store import StorageError

    try:
        sim.serve(run_dir, ckpt, on_round=on_round, should_stop=stop)
        return 0
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
    return code


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
