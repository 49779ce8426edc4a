"""The fault harness users get with the package, for their own plugins and deployments.

- :mod:`~datasync.testing.failpoints`: named points in the agent where a test makes
  something happen (imported by the agent's hot paths: one flag check when off);
- :mod:`~datasync.testing.netproxy`: a loopback TCP fault proxy (delay, stall, blackhole,
  reset);
- :mod:`~datasync.testing.procs`: etcd, the tansu broker, the VPP simulator and the agent
  as processes on loopback, controlled by PID (``free_port`` and ``wait_for`` too);
- :mod:`~datasync.testing.history` and :mod:`~datasync.testing.recorders`: one timeline of
  what the agent received, decided and asked VPP, and what the store held;
- :mod:`~datasync.testing.invariants`: checkers I1-I15 over a history and the final state;
- :mod:`~datasync.testing.bench`: a full resync of a given config, timed;
- :mod:`~datasync.testing.pytest_plugin`: the ``datasync_*`` pytest fixtures (an entry
  point of the package; see ``examples/user-suite``).

Only ``failpoints`` is imported by the agent itself; the rest by tests.
"""
