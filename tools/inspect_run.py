#!/usr/bin/env python3
"""One run's summary, per-round and per-client tables, JSON or CSV; the same as
`fednas-mpi inspect ...`.

    python tools/inspect_run.py --help
"""

import sys

from fednas_mpi.report.cli import main

if __name__ == "__main__":
    sys.exit(main(["inspect", *sys.argv[1:]]))
