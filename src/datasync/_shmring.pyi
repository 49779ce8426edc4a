"""Typing stub for the cffi module built from csrc/build_shmring.py (shared-memory ring)."""

from typing import Any

ffi: Any
lib: Any
