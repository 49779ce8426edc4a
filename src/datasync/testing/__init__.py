"""The fault harness users get with the package: agent failpoints
(:mod:`datasync.testing.failpoints`) and a loopback fault proxy
(:mod:`datasync.testing.netproxy`).

``failpoints`` is imported by the agent's hot paths and costs one flag check when off;
``netproxy`` is imported only by tests.
"""
