#!/usr/bin/env python3
"""Settings side by side, mean ± std over seeds (Markdown or CSV); the same as
`fednas-mpi compare ...`.

    python tools/compare_runs.py --help
"""

import sys

from fednas_mpi.report.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
