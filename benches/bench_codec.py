"""VPP message codec: compiled vs twin vs vpp-papi 2.4.2's serializer, side by side.

Four messages the agent sends or receives most, each encoded and decoded:

- ``sw_interface_details``: one row of an interface dump (295 bytes, MAC and fixed strings);
- ``sw_interface_add_del_address``: the address request (34 bytes, prefix given as text);
- ``ip_route_add_del`` with 3 paths (540 bytes, nested unions, 16-label stacks);
- ``bridge_domain_details`` with 8 members (165 bytes, a variable-length array).

vpp-papi runs on the same ``.api.json`` files and the same input values; its ``pack``
and ``unpack`` are what ``VPPApiClient`` calls for every message.
"""

from __future__ import annotations

import importlib
import ipaddress
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from tests.vpp.samples import ADD_ADDR, SW_IF_DETAILS, fib_path

from datasync.vpp import _codec_py
from datasync.vpp.codec import codec_for
from datasync.vpp.defs import builtin_definitions

try:
    _compiled: ModuleType | None = importlib.import_module("datasync._codec_c")
except ImportError:
    _compiled = None

MESSAGES: dict[str, dict[str, Any]] = {
    "sw_interface_details": SW_IF_DETAILS,
    "sw_interface_add_del_address": ADD_ADDR,
    "ip_route_add_del": {
        "client_index": 0x80000001,
        "context": 9,
        "is_add": True,
        "is_multipath": False,
        "route": {
            "table_id": 0,
            "stats_index": 0,
            "prefix": "10.1.0.0/16",
            "n_paths": 3,
            "paths": [
                fib_path(1, {"ip4": ipaddress.IPv4Address("10.0.0.2")}),
                fib_path(2, {"ip4": ipaddress.IPv4Address("10.0.0.3")}),
                fib_path(3, {"ip4": ipaddress.IPv4Address("10.0.0.4")}),
            ],
        },
    },
    "bridge_domain_details": {
        "context": 4,
        "bd_id": 7,
        "flood": True,
        "uu_flood": True,
        "forward": True,
        "learn": True,
        "arp_term": False,
        "arp_ufwd": False,
        "mac_age": 0,
        "bd_tag": "bd7",
        "bvi_sw_if_index": 0xFFFFFFFF,
        "uu_fwd_sw_if_index": 0xFFFFFFFF,
        "n_sw_ifs": 8,
        "sw_if_details": [{"context": 0, "sw_if_index": i + 1, "shg": 0} for i in range(8)],
    },
}
SHORT = {
    "sw_interface_details": "sw_if_details",
    "sw_interface_add_del_address": "add_del_address",
    "ip_route_add_del": "route_3_paths",
    "bridge_domain_details": "bd_details_8",
}
MSG_ID = 321


class _Papi:
    """vpp-papi's serializer behind the codec's encode/decode signature."""

    def __init__(self, msg: Any) -> None:
        self.msg = msg

    def encode(self, msg_id: int, fields: dict[str, Any]) -> bytes:
        return bytes(self.msg.pack(dict(fields, _vl_msg_id=msg_id)))

    def decode(self, data: bytes) -> Any:
        return self.msg.unpack(data)[0]


_papi_messages: dict[str, Any] = {}


def _papi(name: str) -> _Papi:
    if not _papi_messages:
        from vpp_papi.vpp_papi import VPPApiJSONFiles

        root = Path(builtin_definitions().modules["memclnt"].path).parent.parent
        files = sorted(str(p) for p in root.rglob("*.api.json"))
        _, messages, _ = VPPApiJSONFiles.load_api(apifiles=files)
        _papi_messages.update(messages)
    return _Papi(_papi_messages[name])


def _codec(impl: str, name: str) -> Any:
    if impl == "vpp_papi":
        return _papi(name)
    if impl == "compiled":
        if _compiled is None:
            pytest.skip("compiled codec not built")
        return codec_for(builtin_definitions(), name, _compiled)
    return codec_for(builtin_definitions(), name, _codec_py)


IMPLS = ["compiled", "twin", "vpp_papi"]
CASES = [pytest.param(n, id=SHORT[n]) for n in MESSAGES]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", CASES)
def test_encode(benchmark: Any, name: str, impl: str) -> None:
    benchmark.group = f"encode {SHORT[name]}"
    c = _codec(impl, name)
    fields = MESSAGES[name]
    out = benchmark(c.encode, MSG_ID, fields)
    # every implementation produces the same bytes
    assert out == _papi(name).encode(MSG_ID, fields)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", CASES)
def test_decode(benchmark: Any, name: str, impl: str) -> None:
    benchmark.group = f"decode {SHORT[name]}"
    c = _codec(impl, name)
    data = _papi(name).encode(MSG_ID, MESSAGES[name])
    out = benchmark(c.decode, data)
    expected = tuple(_papi(name).decode(data))
    got = tuple(out)
    assert (got[1:] if impl == "vpp_papi" else got) == expected[1:]
