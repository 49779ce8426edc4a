"""How hard the fuzz tests search: each runs ``examples(n)`` hypothesis examples, n in the
quick mode of every test run and CI, ``n * DATASYNC_FUZZ_SCALE`` when that is set
(``make test-faults`` sets 20)."""

from __future__ import annotations

import os


def examples(n: int) -> int:
    return n * max(1, int(os.environ.get("DATASYNC_FUZZ_SCALE", "1")))
