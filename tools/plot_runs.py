#!/usr/bin/env python3
"""PNG figures of one or several runs; the same as `fednas-mpi plot ...`.

python tools/plot_runs.py --help
"""

import sys

from fednas_mpi.report.cli import main

if __name__ == "__main__":
    sys.exit(main(["plot", *sys.argv[1:]]))
