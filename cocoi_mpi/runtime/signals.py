"""SIGTERM/SIGINT on the master: note the signal, let the run stop at a safe point.

Slurm sends SIGTERM at the time limit and mpirun forwards it (and SIGINT) to every
rank. Raising from the handler could tear an HDF5 write in half, so the handler only
records the signal; the master's wait loop and request loop check it. A second
signal while the first is being handled raises KeyboardInterrupt: the user insists.
"""

from __future__ import annotations

import signal

HANDLED = (signal.SIGTERM, signal.SIGINT)


class SignalFlag:
    """A context manager that installs the recording handler and restores the old ones."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> SignalFlag:
        for sig in HANDLED:
            self._old[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _record(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
        self.signum = signum

    def name(self) -> str | None:
        """The signal's name (e.g. 'SIGTERM') once one arrived, else None."""
        return None if self.signum is None else signal.Signals(self.signum).name
