"""Run-data tools: inspect, compare and plot runs from their HDF5 checkpoints.

``fednas-mpi inspect|compare|plot`` (``report/cli.py``) read only complete checkpoint
files, so they work on finished, interrupted and still running runs alike.
"""

from .runs import ReportError, Run, Setting, group_settings, load_run, load_runs

__all__ = ["ReportError", "Run", "Setting", "group_settings", "load_run", "load_runs"]
