"""The error hierarchy: one root, retry policy declared on the classes.

Foreign errors (grpc, confluent-kafka, sqlite3, OSError from sockets) are translated
into these at the transport boundary, with ``raise ... from exc``, and nowhere else.
"""

from __future__ import annotations


class DatasyncError(Exception):
    """Root of every error datasync raises on purpose."""

    #: True when trying the same thing again later may succeed.
    retriable: bool = False


class ConfigError(DatasyncError):
    """Invalid configuration found at start-up (unknown dependency, cycle, bad option)."""


class DependencyCycleError(ConfigError):
    """Plugins depend on each other in a cycle; ``cycle`` lists it, first name repeated last."""

    def __init__(self, cycle: list[str]) -> None:
        self.cycle = cycle
        super().__init__("plugin dependency cycle: " + " -> ".join(cycle))


class DuplicateNameError(ConfigError):
    """A watcher registration or plugin name is already taken."""


class InvalidKeyError(DatasyncError, ValueError):
    """A key is empty, malformed, or outside the watched prefixes."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"invalid key {key!r}: {reason}")


class InvalidValueError(DatasyncError, ValueError):
    """A value could not be decoded or violates its model; terminal until the value changes."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"invalid value for key {key!r}: {reason}")


class ResyncTimeoutError(DatasyncError):
    """A plugin or watcher did not call ``done()`` in time. A timeout is never a success."""

    retriable = True


class DependencyFailedError(DatasyncError):
    """A plugin was skipped because a dependency did not finish its resync successfully."""

    retriable = True


class EscalationError(DatasyncError):
    """Too many failed rounds: the "brute force" path. The agent exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int) -> None:
        self.exit_code = exit_code
        super().__init__(message)


class AckTimeoutError(DatasyncError):
    """Not every IDX watcher acknowledged a notification in time."""

    retriable = True

    def __init__(self, message: str, missing: list[str]) -> None:
        self.missing = missing
        super().__init__(message)


class SourceError(DatasyncError):
    """A northbound source failed."""


class SourceUnavailableError(SourceError):
    """The source cannot be reached now (disconnected, broker down)."""

    retriable = True


class CompactedError(SourceError):
    """The revision asked for is compacted away; only a full relist at a fresh revision helps."""

    retriable = True

    def __init__(self, message: str, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(message)


class StoreResetError(SourceError):
    """The store went back in time (restored backup, new cluster id, emptied log): relist."""

    retriable = True


class ClosedError(DatasyncError):
    """The object was closed."""


class AckFailedError(DatasyncError):
    """An IDX watcher acknowledged a notification with an error; ``errors`` by watcher."""

    retriable = True

    def __init__(self, message: str, errors: dict[str, BaseException]) -> None:
        self.errors = errors
        super().__init__(message)
