"""MPI roles (server and workers), client scheduling, transport helpers, progress."""
