"""cocoi_mpi: coded distributed CNN inference over MPI (the CoCoI scheme)."""

__version__ = "0.1.0"
