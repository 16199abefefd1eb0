"""The old home of the trace code, now in :mod:`.schema`, :mod:`.writer` and :mod:`.reader`.

Kept only for importers not yet moved to those modules (issue 17): cocoi_mpi/runtime/job.py
(``TraceWriter``; runtime/ is being restructured separately) and cocoi_mpi/latency/fit.py
(``read_trace``). New code imports from the modules above.
"""

from .reader import read_trace  # re-export: latency/fit.py imports it from here
from .writer import TraceWriter  # re-export: runtime/job.py imports it from here

__all__ = ["TraceWriter", "read_trace"]
