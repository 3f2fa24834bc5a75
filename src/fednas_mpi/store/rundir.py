"""Run-directory and resume policy: where a run's files go, what a directory may hold
when a run starts in it, and what ``--resume`` does with what it finds there (continue
from the newest valid checkpoint, or start the run when there is none yet).

Rank 0 decides before any other rank loads anything, so this module reads a checkpoint
(importing torch and h5py) only when the directory holds one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from .. import config as config_mod
from ..config import Config, ConfigError
from ..migrations import from_stored

#: Validates a config before a run starts (``starting``) or continues; raises
#: UsageError or ConfigError.
Check = Callable[[Config, bool], None]


class UsageError(Exception):
    """A problem with the command line, the run directory or a checkpoint."""


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


def decide(args: argparse.Namespace, check: Check) -> tuple[Config, Path, object | None]:
    """The run directory of the command line ``args`` and the config to run there: a new
    run in a new (or empty) directory, or ``--resume``'s start-or-continue. Returns
    (config, run directory, the checkpoint to resume from or None); ``check(cfg,
    starting)`` validates the config. Raises ConfigError/UsageError."""
    if args.resume is not None:
        return _decide_resume(args, check)
    if not args.config:
        raise UsageError("missing config file: fednas-mpi CFG.yaml (or --resume RUN_DIR)")
    cfg = config_mod.load_run(args.config, args.overrides)
    check(cfg, True)
    run_dir = (
        Path(args.out)
        if args.out
        else Path("runs") / f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    _check_new_run_dir(run_dir, args.overwrite)
    _begin(run_dir, cfg)
    return cfg, run_dir, None


def _decide_resume(args: argparse.Namespace, check: Check) -> tuple[Config, Path, object | None]:
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
        from .checkpoint import newest_readable

        ckpt, skipped = newest_readable(run_dir)
    if ckpt is None:
        return _start_in(run_dir, args, skipped, check), run_dir, None
    cfg = _agreeing(args, yaml.safe_load(ckpt.config_yaml), run_dir, ckpt.path)
    check(cfg, False)
    for line in skipped:
        print(f"fednas-mpi: warning: {line}", file=sys.stderr)
    _remove_temporaries(run_dir)
    return cfg, run_dir, ckpt


def _agreeing(args: argparse.Namespace, stored_raw, run_dir: Path, source: Path) -> Config:
    """The run's stored config with the overrides, or CFG when given and it agrees with the
    stored one in every field that changes results."""
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


def _start_in(run_dir: Path, args: argparse.Namespace, skipped: list[str], check: Check) -> Config:
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
    check(cfg, True)
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
        from .checkpoint import list_checkpoints

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
    from .checkpoint import remove_temporaries

    for path in remove_temporaries(run_dir):
        print(
            f"fednas-mpi: removed {path}, the unfinished checkpoint of a writer that was killed",
            file=sys.stderr,
        )


def nothing_to_resume(ckpt, cfg: Config, run_dir: Path) -> str | None:
    """The message when a resumed run has nothing left to run, else None."""
    if ckpt is not None and ckpt.attrs.get("stopped_early"):
        return (
            f"{run_dir}: the run stopped early after round "
            f"{ckpt.round} (run.patience: validation accuracy "
            f"stopped improving); nothing to resume."
        )
    if ckpt is not None and ckpt.round >= cfg.run.rounds:
        return (
            f"{run_dir}: all {cfg.run.rounds} rounds are done "
            f"(checkpoint round {ckpt.round}); nothing to resume. "
            f"Raise run.rounds with --set to extend the run."
        )
    return None
