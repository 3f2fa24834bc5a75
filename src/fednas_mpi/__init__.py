"""fednas-mpi: an MPI simulator for federated neural architecture search."""

__version__ = "0.1.0"
