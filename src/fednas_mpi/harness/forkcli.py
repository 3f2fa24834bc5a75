"""``python -m fednas_mpi ARGS`` many times without paying for the imports each time.

Importing torch and torchvision takes most of a small run's time (5-10 s on 2 busy cores;
the run itself often under a second). ``ForkCLI`` starts one helper process that imports
them (and the fednas_mpi modules that do not start MPI) once, then forks a fresh child per
command; the child runs the package's ``__main__`` exactly as ``python -m fednas_mpi``
does, in a process of its own (MPI starts there, as a singleton, one rank), with its own
exit status, stdout and stderr. A child that hangs is killed after ``timeout``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# The helper process: reads one JSON request per line, answers {"pid": ...} at the fork
# and {"rc": ...} when the child has exited.
_SERVER = r"""
import json, os, runpy, sys
import torch, torchvision  # noqa: F401  (the slow imports, shared by every child)
import fednas_mpi.algorithms, fednas_mpi.cli, fednas_mpi.config  # noqa: F401
import fednas_mpi.data, fednas_mpi.models, fednas_mpi.store  # noqa: F401
assert "mpi4py.MPI" not in sys.modules, "MPI must start in the children, not before fork"
reply = os.fdopen(int(sys.argv[1]), "w", buffering=1)
reply.write('{"ready": true}\n')
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(out, 1)
            os.dup2(err, 2)
            os.chdir(req["cwd"])
            sys.argv = ["fednas-mpi", *req["argv"]]
            try:
                runpy.run_module("fednas_mpi", run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:
                sys.excepthook(*sys.exc_info())  # the CLI's hook: traceback, MPI abort
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    reply.write(json.dumps({"pid": pid}) + "\n")
    _, status = os.waitpid(pid, 0)
    reply.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")
"""


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class ForkCLI:
    def __init__(self, start_timeout: float = 300):
        r, w = os.pipe()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(w)],
            stdin=subprocess.PIPE,
            text=True,
            pass_fds=(w,),
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        os.close(w)
        self._reply = os.fdopen(r, "r")
        assert self._read(start_timeout) == {"ready": True}

    def _read(self, timeout: float) -> dict | None:
        ready, _, _ = select.select([self._reply], [], [], timeout)
        if not ready:
            return None
        line = self._reply.readline()
        if not line:
            raise AssertionError(f"the fork helper died (status {self._proc.wait()})")
        return json.loads(line)

    def run(
        self, argv: list[str], cwd: Path, timeout: float = 300, logs: Path | None = None
    ) -> Result:
        """``python -m fednas_mpi *argv`` in ``cwd``; its output lands in
        (``logs`` or cwd)/cli.{out,err}."""
        out, err = (logs or cwd) / "cli.out", (logs or cwd) / "cli.err"
        req = {"argv": [str(a) for a in argv], "cwd": str(cwd)}
        req.update(stdout=str(out), stderr=str(err))
        self._proc.stdin.write(json.dumps(req) + "\n")
        self._proc.stdin.flush()
        pid = self._read(60)["pid"]
        done = self._read(timeout)
        if done is None:
            os.kill(pid, signal.SIGKILL)
            self._read(60)
            raise AssertionError(
                f"fednas-mpi {argv} hung for {timeout}s\n{out.read_text()}\n{err.read_text()}"
            )
        return Result(done["rc"], out.read_text(), err.read_text())

    def close(self) -> None:
        self._proc.stdin.close()
        self._proc.wait(timeout=60)
        self._reply.close()
