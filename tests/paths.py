"""Where the tests find their reference data.

The real VPP ``.api.json`` files and retval table (from a VPP build that accepted
all their CRCs) are vendored under ``tests/data/vpp-api`` so the suite is the same
on every machine; ``DATASYNC_VPP_API_DIR`` points at another copy (for example a
real install's ``/usr/share/vpp/api``).
"""

from __future__ import annotations

import os
from pathlib import Path

VPP_API_REFERENCE = Path(
    os.environ.get("DATASYNC_VPP_API_DIR", Path(__file__).parent / "data" / "vpp-api")
)


def vpp_api_files() -> list[str]:
    """Every ``.api.json`` file of the reference, sorted."""
    return sorted(str(p) for p in VPP_API_REFERENCE.rglob("*.api.json"))
