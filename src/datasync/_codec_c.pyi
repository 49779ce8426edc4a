"""Types of the compiled VPP message codec (pyx/_codec.pyx); twin: datasync.vpp._codec_py."""

from collections.abc import Mapping
from typing import Any

from datasync.vpp._codec_plan import Layout

CONSTANTS: dict[str, int]

def peek_msg_id(data: bytes | bytearray | memoryview) -> int: ...
def _fast_paths(on: bool | None = None) -> dict[str, int]:
    """The interpreter-specific fast paths in use ({"ints": 0|1, "dicts": 0|1} from
    pyx/ds_pyver.h, "records": 0|1 for pyx/ds_codec.h's record free list); tests only:
    on=False forces the portable paths, on=True runs the import checks again."""

class MessageCodec:
    name: str
    name_crc: str
    field_names: tuple[str, ...]
    tuple_type: Any
    def __init__(self, layout: Layout, name_crc: str) -> None: ...
    def encode(
        self, msg_id: int, fields: Mapping[str, Any] | None = None, /, **kw: Any
    ) -> bytes: ...
    def decode(self, data: bytes | bytearray | memoryview) -> Any: ...
