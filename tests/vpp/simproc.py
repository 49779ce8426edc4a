"""``datasync vppsim`` as a separate process: moved into the package
(:class:`datasync.testing.procs.SimProcess`); this module keeps the old import path."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from datasync.testing.procs import SimProcess

__all__ = ["SimProcess", "simulator_process"]


@contextlib.contextmanager
def simulator_process(admin: bool = False) -> Iterator[SimProcess]:
    """A simulator process (with its admin API when ``admin``), stopped at exit."""
    with SimProcess.started(admin=admin) as sim:
        yield sim
