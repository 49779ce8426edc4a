"""Selects compiled modules or their pure-Python twins, with one kill switch.

``DATASYNC_NO_EXTENSIONS=1`` selects the twins. Otherwise the compiled module must
import: a missing extension is an error, never a silent fallback to the slow twin.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

NO_EXTENSIONS = os.environ.get("DATASYNC_NO_EXTENSIONS", "") == "1"

#: name of the component -> "compiled" or "twin", filled as modules are selected.
ACTIVE: dict[str, str] = {}


def select(component: str, compiled: str, twin: str) -> ModuleType:
    """Import ``compiled`` (or ``twin`` when extensions are switched off) and record which."""
    if NO_EXTENSIONS:
        ACTIVE[component] = "twin"
        return importlib.import_module(twin)
    try:
        module = importlib.import_module(compiled)
    except ImportError as exc:
        raise ImportError(
            f"datasync: compiled module {compiled} is missing ({exc}); build the package "
            "(pip install . / make build) or set DATASYNC_NO_EXTENSIONS=1 for the twins"
        ) from exc
    ACTIVE[component] = "compiled"
    return module


#: the modules that select a hot-path component when imported
_SELECTORS = ("datasync.buffer", "datasync.vpp.codec", "datasync.vpp.shm")


def implementation() -> dict[str, str]:
    """Which implementation each hot-path component runs on: "compiled" or "twin" (the one
    way to ask; every component is selected first, so the answer is complete)."""
    for name in _SELECTORS:
        importlib.import_module(name)
    return dict(ACTIVE)
