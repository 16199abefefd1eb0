"""The only package that imports mpi4py: protocol, worker loop, master engine, job."""
