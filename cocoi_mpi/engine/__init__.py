"""The Engine interface the models run through, LocalEngine, the proxies that stand in for
distributed convs and blocks (the row statuses are in cocoi_mpi.statuses).
"""
