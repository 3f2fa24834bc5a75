"""Export a run's model as a file that loads with torch alone (``fednas-mpi export``).

``export_run`` reads a checkpoint, rebuilds the dataset and the clients' partition from
the stored config (as the report tools do), builds the model the way the method evaluates
it (``build``), recalibrates the BatchNorm of search-space networks on training data
(``deploy.recalibrate``: the clients' train splits, never the test set), writes the
``torch.export`` program with its description (``artifact``) and measures the file it
wrote, loaded back, against the method's own evaluation.
"""

from __future__ import annotations

from .build import PERSONAL, ExportError
from .pipeline import export_run
from .preprocessing import preprocessing

__all__ = ["ExportError", "PERSONAL", "export_run", "preprocessing"]
