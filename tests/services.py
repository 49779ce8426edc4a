"""What a test does when a service it needs (etcd, the tansu broker) is missing: the
package's pytest plugin has the one rule, :func:`datasync.testing.pytest_plugin.missing`."""

from __future__ import annotations

from datasync.testing.pytest_plugin import missing

__all__ = ["missing"]
