"""datasync: keep the FD.io VPP dataplane in sync with northbound config stores.

The contracts (``datasync.api``) and errors are imported at once; the orchestrator, the
embedded store and the name-to-index registry on first use (``datasync.Orchestrator``),
so that importing the package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._extensions import implementation
from ._version import __version__
from .api import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    Ack,
    Change,
    ChangeEvent,
    Channel,
    KeyVal,
    Op,
    Plugin,
    Publisher,
    Registration,
    ResyncEvent,
    Snapshot,
    Source,
    SourceState,
    SourceStats,
    Watcher,
)
from .backoff import Backoff
from .errors import (
    AckFailedError,
    AckTimeoutError,
    ClosedError,
    CompactedError,
    ConfigError,
    DatasyncError,
    DependencyCycleError,
    DependencyFailedError,
    DuplicateNameError,
    EscalationError,
    InvalidKeyError,
    InvalidValueError,
    ResyncTimeoutError,
    SourceError,
    SourceUnavailableError,
    StoreResetError,
)

if TYPE_CHECKING:
    from .idx import NameToIndex
    from .resync import Orchestrator, ResyncConfig
    from .transport.local import LocalStore

#: name: the module it is imported from on first use
_LAZY = {
    "LocalStore": ".transport.local",
    "NameToIndex": ".idx",
    "Orchestrator": ".resync",
    "ResyncConfig": ".resync",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'datasync' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "MAX_KEY_BYTES",
    "MAX_VALUE_BYTES",
    "Ack",
    "AckFailedError",
    "AckTimeoutError",
    "Backoff",
    "Change",
    "ChangeEvent",
    "Channel",
    "ClosedError",
    "CompactedError",
    "ConfigError",
    "DatasyncError",
    "DependencyCycleError",
    "DependencyFailedError",
    "DuplicateNameError",
    "EscalationError",
    "InvalidKeyError",
    "InvalidValueError",
    "KeyVal",
    "LocalStore",
    "NameToIndex",
    "Op",
    "Orchestrator",
    "Plugin",
    "Publisher",
    "Registration",
    "ResyncConfig",
    "ResyncEvent",
    "ResyncTimeoutError",
    "Snapshot",
    "Source",
    "SourceError",
    "SourceState",
    "SourceStats",
    "SourceUnavailableError",
    "StoreResetError",
    "Watcher",
    "__version__",
    "implementation",
]
