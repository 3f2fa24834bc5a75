"""fednas-mpi: an MPI simulator for federated neural architecture search."""

# The one place config is handed the table of methods: every way into the package passes
# here, so no caller can forget it, and config itself imports nothing above it. Both are
# torch-free, so importing the package (and loading a YAML) imports no torch.
from . import config
from .algorithms import registry

config.use_catalogue(registry)

__version__ = "0.1.0"
