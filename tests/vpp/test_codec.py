"""The VPP message codec: compiled and twin, byte-identical with vpp-papi 2.4.2's serializer."""

from __future__ import annotations

import importlib
import ipaddress
import os
import string
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datasync import _extensions
from datasync.vpp import _codec_plan as plan
from datasync.vpp import _codec_py
from datasync.vpp.codec import CodecError, MacAddress, codec_for
from datasync.vpp.defs import ApiDefinitions, builtin_definitions, load_api_dir
from tests.fuzz import examples
from tests.paths import VPP_API_REFERENCE
from tests.vpp.samples import ADD_ADDR, SW_IF_DETAILS, fib_path

REFERENCE = VPP_API_REFERENCE  # vendored under tests/data; DATASYNC_VPP_API_DIR overrides


def _compiled() -> ModuleType | None:
    try:
        return importlib.import_module("datasync._codec_c")
    except ImportError:
        return None


IMPLS = {"twin": _codec_py}
if _compiled() is not None:
    IMPLS["compiled"] = _compiled()  # type: ignore[assignment]


@pytest.fixture(params=sorted(IMPLS, reverse=False), ids=sorted(IMPLS))
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return IMPLS[request.param]


@pytest.fixture(scope="module")
def defs() -> ApiDefinitions:
    return builtin_definitions()


@pytest.fixture(scope="module")
def papi() -> dict[str, Any]:
    """vpp-papi's own message objects, parsed from the same files as ours."""
    from vpp_papi.vpp_papi import VPPApiJSONFiles

    files = sorted(str(p) for p in plan_root().rglob("*.api.json"))
    _, messages, _ = VPPApiJSONFiles.load_api(apifiles=files)
    return messages  # type: ignore[no-any-return]


def plan_root() -> Path:
    return Path(builtin_definitions().modules["memclnt"].path).parent.parent


def papi_pack(papi: dict[str, Any], name: str, msg_id: int, values: dict[str, Any]) -> bytes:
    return bytes(papi[name].pack(dict(values, _vl_msg_id=msg_id)))


def papi_unpack(papi: dict[str, Any], name: str, data: bytes) -> tuple[Any, ...]:
    t, _ = papi[name].unpack(data)
    return tuple(t)[1:]  # without _vl_msg_id (papi renames it _0)


# --- typical messages, checked by hand against vpp-papi --------------------------------------


ROUTE3 = {
    "client_index": 0x80000001,
    "context": 9,
    "is_add": True,
    "is_multipath": False,
    "route": {
        "table_id": 0,
        "stats_index": 0,
        "prefix": ipaddress.ip_network("10.1.0.0/16"),
        "n_paths": 3,
        "paths": [
            fib_path(1, {"ip4": ipaddress.IPv4Address("10.0.0.2")}),
            fib_path(2, {"ip4": b"\x0a\x00\x00\x03"}),
            fib_path(3, {"ip6": ipaddress.IPv6Address("2001:db8::1")}),
        ],
    },
}
BD_DETAILS = {
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
    "sw_if_details": [{"context": 0, "sw_if_index": i + 1, "shg": i % 2} for i in range(8)],
}

SAMPLES = {
    "ip_route_add_del": ROUTE3,
    "sw_interface_details": SW_IF_DETAILS,
    "bridge_domain_details": BD_DETAILS,
    "sw_interface_add_del_address": ADD_ADDR,
    "control_ping": {"client_index": 1, "context": 2},
    "control_ping_reply": {"context": 2, "retval": 0, "client_index": 1, "vpe_pid": 4242},
    "sw_interface_event": {
        "client_index": 1,
        "pid": 7,
        "sw_if_index": 3,
        "flags": 1,
        "deleted": True,
    },
    "sockclnt_create_reply": {
        "client_index": 0,
        "context": 124,
        "response": 0,
        "index": 0x80000000,
        "count": 2,
        "message_table": [
            {"index": 15, "name": "sockclnt_create_cab33a2c"},
            {"index": 16, "name": "sockclnt_create_reply_35166268"},
        ],
    },
    "get_api_json_reply": {"context": 1, "retval": 0, "json": '[{"module": "x"}]'},
    "tap_create_v3": {
        "client_index": 1,
        "context": 1,
        "id": 0xFFFFFFFF,
        "use_random_mac": True,
        "mac_address": b"\x02\x00\x00\x00\x00\x01",
        "num_rx_queues": 1,
        "num_tx_queues": 1,
        "tx_ring_sz": 256,
        "rx_ring_sz": 256,
        "host_mtu_set": True,
        "host_mtu_size": 1500,
        "host_mac_addr_set": False,
        "host_mac_addr": b"",
        "host_ip4_prefix_set": True,
        "host_ip4_prefix": ipaddress.ip_interface("192.168.1.1/24"),
        "host_ip6_prefix_set": False,
        "host_ip6_prefix": "::/0",
        "host_ip4_gw_set": True,
        "host_ip4_gw": "192.168.1.254",
        "host_ip6_gw_set": False,
        "host_ip6_gw": "::",
        "host_namespace_set": False,
        "host_namespace": "",
        "host_if_name_set": True,
        "host_if_name": "tap-host",
        "host_bridge_set": False,
        "host_bridge": "",
        "tap_flags": 0,
        "tag": "vpp-agent/tap0",
    },
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_samples_match_vpp_papi(
    impl: ModuleType, defs: ApiDefinitions, papi: Any, name: str
) -> None:
    c = codec_for(defs, name, impl)
    ours = c.encode(321, SAMPLES[name])
    assert ours == papi_pack(papi, name, 321, SAMPLES[name])
    assert plan_peek(impl, ours) == 321
    decoded = c.decode(ours)
    assert tuple(decoded) == papi_unpack(papi, name, ours)
    # a decoded message encodes back to the same bytes
    assert c.encode(321, decoded._asdict()) == ours
    assert c.encode(321, decoded) == ours


def plan_peek(impl: ModuleType, data: bytes) -> int:
    return int(impl.peek_msg_id(data))


def test_decoded_representation(impl: ModuleType, defs: ApiDefinitions) -> None:
    route = codec_for(defs, "ip_route_add_del", impl).decode(
        codec_for(defs, "ip_route_add_del", impl).encode(1, ROUTE3)
    )
    assert route.route.prefix == ipaddress.ip_network("10.1.0.0/16")
    assert route.route.n_paths == 3 and isinstance(route.route.paths, list)
    nh = route.route.paths[0].nh.address
    assert nh.ip4 == ipaddress.IPv4Address("10.0.0.2")
    assert route.route.paths[2].nh.address.ip6 == ipaddress.IPv6Address("2001:db8::1")
    d = codec_for(defs, "sw_interface_details", impl)
    det = d.decode(d.encode(1, SW_IF_DETAILS))
    assert det.interface_name == "loop0" and det.tag == "vpp-agent/loop0"
    assert isinstance(det.l2_address, MacAddress) and str(det.l2_address) == "de:ad:00:00:00:01"
    assert det.l2_address == b"\xde\xad\x00\x00\x00\x01" == det.l2_address.packed
    assert det.l2_address == "de:ad:00:00:00:01"
    assert det.mtu == [9000, 0, 0, 0]
    assert det.flags == 3 and type(det.flags) is int
    assert "_vl_msg_id" not in d.field_names and d.field_names[0] == "context"
    a = codec_for(defs, "sw_interface_add_del_address", impl)
    assert a.decode(a.encode(1, ADD_ADDR)).prefix == ipaddress.ip_interface("10.0.0.1/24")
    assert a.name == "sw_interface_add_del_address"
    assert a.name_crc == defs.name_crc("sw_interface_add_del_address")


def test_defaults_and_missing_fields(impl: ModuleType, defs: ApiDefinitions) -> None:
    c = codec_for(defs, "sw_interface_dump", impl)
    m = c.decode(c.encode(1))
    assert m.sw_if_index == 0xFFFFFFFF  # [default=0xffffffff] in interface.api
    assert m.name_filter_valid is False and m.name_filter == ""
    bd = codec_for(defs, "bridge_domain_add_del_v2", impl)
    assert bd.decode(bd.encode(1, bd_id=1)).is_add is True  # [default=true]
    r = codec_for(defs, "ip_route_add_del", impl)
    # length fields are filled from their arrays; label_stack may be left out
    paths = [{"sw_if_index": 1, "nh": {"address": {"ip4": "10.0.0.1"}}}]
    msg = r.decode(r.encode(1, route={"prefix": "10.2.0.0/16", "paths": paths}))
    assert msg.route.n_paths == 1
    assert msg.route.paths[0].nh.address.ip4 == ipaddress.IPv4Address("10.0.0.1")
    assert len(msg.route.paths[0].label_stack) == 16


def test_conveniences(impl: ModuleType, defs: ApiDefinitions) -> None:
    a = codec_for(defs, "sw_interface_add_del_address", impl)
    base = a.encode(1, ADD_ADDR)
    for prefix in (ipaddress.ip_interface("10.0.0.1/24"), {"address": "10.0.0.1", "len": 24}):
        assert a.encode(1, {**ADD_ADDR, "prefix": prefix}) == base
    # keyword arguments, alone or on top of a mapping
    assert a.encode(1, **ADD_ADDR) == base
    assert a.encode(1, {**ADD_ADDR, "context": 0}, context=5) == base
    f = codec_for(defs, "sw_interface_set_flags", impl)
    assert f.encode(1, flags="IF_STATUS_API_FLAG_ADMIN_UP") == f.encode(1, flags=1)
    r = codec_for(defs, "ip_route_add_del", impl)
    # a plain address in a union goes to the first arm that takes it
    p1 = {"nh": {"address": "10.0.0.9"}}
    p2 = {"nh": {"address": {"ip4": b"\x0a\x00\x00\x09"}}}
    assert r.encode(1, route={"paths": [p1]}) == r.encode(1, route={"paths": [p2]})
    p6 = {"nh": {"address": "2001:db8::9"}}
    dec = r.decode(r.encode(1, route={"paths": [p6]}))
    assert dec.route.paths[0].nh.address.ip6 == ipaddress.IPv6Address("2001:db8::9")
    m = codec_for(defs, "create_loopback", impl)
    assert m.encode(1, mac_address="02:00:00:00:00:01") == m.encode(
        1, mac_address=MacAddress(b"\x02\x00\x00\x00\x00\x01")
    )


def test_encode_errors_name_the_field(impl: ModuleType, defs: ApiDefinitions) -> None:
    a = codec_for(defs, "sw_interface_add_del_address", impl)
    with pytest.raises(CodecError, match=r"sw_interface_add_del_address.*'bogus'") as exc:
        a.encode(1, {**ADD_ADDR, "bogus": 1})
    assert exc.value.message == "sw_interface_add_del_address"
    with pytest.raises(CodecError, match=r"sw_interface_add_del_address\.sw_if_index: .*range"):
        a.encode(1, {**ADD_ADDR, "sw_if_index": -1})
    with pytest.raises(CodecError, match=r"sw_if_index: expected an integer"):
        a.encode(1, {**ADD_ADDR, "sw_if_index": "x"})
    with pytest.raises(CodecError, match=r"\.prefix: "):
        a.encode(1, {**ADD_ADDR, "prefix": "10.0.0.300/24"})
    with pytest.raises(CodecError, match=r"\.prefix: "):
        a.encode(1, {**ADD_ADDR, "prefix": "10.0.0.1"})
    with pytest.raises(CodecError, match="_vl_msg_id"):
        a.encode(70000, ADD_ADDR)
    r = codec_for(defs, "ip_route_add_del", impl)
    bad = [{"nh": {"address": "10.0.0.1"}}, {"weight": 300}]
    with pytest.raises(CodecError, match=r"ip_route_add_del\.route\.paths\[1\]\.weight: ") as exc:
        r.encode(1, route={"paths": bad})
    assert exc.value.field == "route.paths[1].weight"
    with pytest.raises(
        CodecError, match=r"route\.paths: has 1 elements but its length field says 2"
    ):
        r.encode(1, route={"n_paths": 2, "paths": bad[:1]})
    with pytest.raises(CodecError, match=r"route\.paths\[0\]\.label_stack: has 1 elements"):
        r.encode(1, route={"paths": [{"label_stack": [{}]}]})
    with pytest.raises(CodecError, match=r"nh\.address: .*exactly one"):
        r.encode(1, route={"paths": [{"nh": {"address": {"ip4": "1.1.1.1", "ip6": "::1"}}}]})
    with pytest.raises(CodecError, match=r"nh\.address\.ip5: unknown union arm"):
        r.encode(1, route={"paths": [{"nh": {"address": {"ip5": "1.1.1.1"}}}]})
    with pytest.raises(CodecError, match=r"route\.nope: unknown field"):
        r.encode(1, route={"nope": 1})
    t = codec_for(defs, "sw_interface_tag_add_del", impl)
    with pytest.raises(CodecError, match=r"tag: string of 64 bytes, at most 63"):
        t.encode(1, tag="x" * 64)
    t.encode(1, tag="x" * 63)
    m = codec_for(defs, "create_loopback", impl)
    with pytest.raises(CodecError, match=r"mac_address: "):
        m.encode(1, mac_address="zz:00:00:00:00:01")
    with pytest.raises(CodecError, match=r"mac_address: 7 bytes, at most 6"):
        m.encode(1, mac_address=b"1234567")
    f = codec_for(defs, "sw_interface_set_flags", impl)
    with pytest.raises(CodecError, match=r"flags: 'UP' is not a member of enum if_status_flags"):
        f.encode(1, flags="UP")
    with pytest.raises(CodecError, match="expected a mapping"):
        f.encode(1, [1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_truncated_bytes_raise_codec_error(
    impl: ModuleType, defs: ApiDefinitions, name: str
) -> None:
    c = codec_for(defs, name, impl)
    data = c.encode(1, SAMPLES[name])
    for n in range(len(data)):
        try:
            c.decode(data[:n])
        except CodecError as exc:
            assert exc.message == name
            assert "truncated" in exc.reason, exc
        else:
            # only a trailing variable string / legacy array may legitimately end early
            assert n >= len(data) - 64, (name, n)


def test_decode_errors(impl: ModuleType, defs: ApiDefinitions) -> None:
    c = codec_for(defs, "bridge_domain_details", impl)
    data = bytearray(c.encode(1, BD_DETAILS))
    off = len(data) - 8 * 9 - 4  # n_sw_ifs
    data[off : off + 4] = (0xFFFFFFFF).to_bytes(4, "big")
    with pytest.raises(CodecError, match=r"bridge_domain_details\.sw_if_details: truncated"):
        c.decode(bytes(data))
    with pytest.raises(CodecError, match="_vl_msg_id"):
        c.decode(b"\x00")
    with pytest.raises(CodecError):
        c.decode("text")  # type: ignore[arg-type]
    a = codec_for(defs, "sw_interface_add_del_address", impl)
    bad = bytearray(a.encode(1, ADD_ADDR))
    bad[-1] = 99  # prefix length 99 for IPv4
    with pytest.raises(CodecError, match=r"sw_interface_add_del_address\.prefix: bad"):
        a.decode(bytes(bad))
    # memoryview and bytearray input
    assert a.decode(memoryview(bytes(a.encode(1, ADD_ADDR)))).sw_if_index == 1
    with pytest.raises(CodecError, match="_vl_msg_id"):
        impl.peek_msg_id(b"")


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=400), name=st.sampled_from(sorted(SAMPLES)))
def test_garbage_never_crashes(data: bytes, name: str) -> None:
    for impl in IMPLS.values():
        c = codec_for(builtin_definitions(), name, impl)
        try:
            c.decode(data)
        except CodecError:
            pass


# --- hypothesis: generic values for every message, differential against vpp-papi -----------

_TEXT = st.text(alphabet=string.ascii_letters + string.digits + "/-_.", max_size=20)


def _scalar(op: plan.Op) -> st.SearchStrategy[Any]:
    if op.kind == plan.K_BOOL:
        return st.booleans()
    if op.kind == plan.K_F64:
        return st.floats(allow_nan=False, width=64)
    lo, hi = plan.INT_RANGE[op.kind][1:]
    return st.integers(lo, hi)


_PREFIX_CONVS = {plan.C_PREFIX, plan.C_AWP, plan.C_IP4_PREFIX, plan.C_IP4_AWP}
_PREFIX_CONVS |= {plan.C_IP6_PREFIX, plan.C_IP6_AWP}


def _valid_plen(conv: int, v: dict[str, Any]) -> dict[str, Any]:
    """A prefix given as a mapping, its length brought into its family's range (encoding
    rejects a longer one, as decoding does; test_codec_strict checks that)."""
    if conv in (plan.C_IP4_PREFIX, plan.C_IP4_AWP):
        top = 32
    elif conv in (plan.C_IP6_PREFIX, plan.C_IP6_AWP):
        top = 128
    else:
        addr = v["address"]
        af = addr["af"] if isinstance(addr, dict) else (0 if addr.version == 4 else 1)
        if af > 1:
            return v  # an unknown family decodes to None whatever the length
        top = 32 if af == 0 else 128
    return {**v, "len": v["len"] % (top + 1)}


def value_for(op: plan.Op) -> st.SearchStrategy[Any]:
    """Values vpp-papi and we both accept, for one op (every field given: see papi_defaults)."""
    k = op.kind
    if k <= plan.K_BOOL:
        return _scalar(op)
    if k == plan.K_BYTES:
        raw = st.binary(min_size=op.size, max_size=op.size)
        if op.conv == plan.C_IP4:
            return raw | raw.map(ipaddress.IPv4Address)
        if op.conv == plan.C_IP6:
            return raw | raw.map(ipaddress.IPv6Address)
        return raw
    if k == plan.K_STR:
        return st.text(alphabet=string.ascii_letters + string.digits + "-_/.", max_size=op.size - 1)
    if k == plan.K_VSTR:
        return _TEXT
    if k == plan.K_STRUCT:
        assert op.layout is not None
        s = struct_for(op.layout)
        if op.conv == plan.C_ADDRESS:
            return s | st.ip_addresses()
        if op.conv in _PREFIX_CONVS:
            return s.map(lambda v, conv=op.conv: _valid_plen(conv, v))
        return s
    if k == plan.K_UNION:
        assert op.layout is not None
        return st.one_of(*(value_for(a).map(lambda v, n=a.name: {n: v}) for a in op.layout.ops))
    if k == plan.K_ARRAY:
        assert op.elem is not None
        return st.lists(value_for(op.elem), min_size=op.size, max_size=op.size)
    raise AssertionError(op)


@st.composite
def _struct(draw: Any, layout: plan.Layout, start: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ops = layout.ops
    counts: dict[int, int] = {}
    for i in range(start, len(ops)):
        op = ops[i]
        if op.count_for >= 0:
            counts[i] = draw(st.integers(0, 3))
            out[op.name] = counts[i]
        elif op.len_index >= 0:
            n = counts.get(op.len_index, out.get(ops[op.len_index].name, 0))
            if op.kind == plan.K_VBYTES:
                out[op.name] = draw(st.binary(min_size=n, max_size=n))
            else:
                assert op.elem is not None
                out[op.name] = draw(st.lists(value_for(op.elem), min_size=n, max_size=n))
        else:
            out[op.name] = draw(value_for(op))
    return out


def struct_for(layout: plan.Layout, start: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    return _struct(layout, start)


def _has_none(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, tuple | list):
        return any(_has_none(x) for x in v)
    return False


def _messages(d: ApiDefinitions) -> list[str]:
    return sorted(n for n in d.messages if n not in ("memclnt_create", "memclnt_create_v2"))


@pytest.fixture(scope="module")
def compiler(defs: ApiDefinitions) -> plan.Compiler:
    return plan.Compiler(defs)


@pytest.mark.parametrize("name", _messages(builtin_definitions()))
def test_differential_vs_vpp_papi(
    defs: ApiDefinitions, papi: Any, compiler: plan.Compiler, name: str
) -> None:
    """Every message of ours: same bytes as vpp-papi, same decode, compiled == twin."""
    layout = compiler.message(name)

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(values=struct_for(layout, 1), msg_id=st.integers(0, 0xFFFF))
    def check(values: dict[str, Any], msg_id: int) -> None:
        expected = papi_pack(papi, name, msg_id, values)
        try:
            papi_decoded: tuple[Any, ...] | None = papi_unpack(papi, name, expected)
        except ValueError:
            papi_decoded = None  # e.g. papi's strict ip4_prefix with host bits set
        results = []
        for impl in IMPLS.values():
            c = codec_for(defs, name, impl)
            got = c.encode(msg_id, values)
            assert got == expected
            if papi_decoded is None:
                # papi raised (prefix length 33, host bits in ip4_prefix): we either decode
                # leniently or raise CodecError, never anything else
                try:
                    results.append(c.decode(expected))
                except CodecError:
                    results.append(None)
                continue
            decoded = c.decode(expected)
            assert tuple(decoded) == papi_decoded
            # decoding can lose information (host bits of a prefix; an unknown address
            # family decodes to None), so the round trip is checked on the decoded value
            if not _has_none(decoded):
                assert c.decode(c.encode(msg_id, decoded)) == decoded
            results.append(decoded)
        assert all(r == results[0] for r in results)

    check()


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="reference .api.json files not found")
def test_every_reference_message_compiles() -> None:
    """The codec handles every message of a full VPP build (f64, enums of every width...)."""
    full = load_api_dir(REFERENCE)
    comp = plan.Compiler(full)
    for name in full.messages:
        comp.message(name)


def test_active_implementation() -> None:
    """The compiled codec must be the active one unless extensions are switched off."""
    import datasync.vpp.codec as codec_mod

    assert codec_mod is not None
    expected = "twin" if _extensions.NO_EXTENSIONS else "compiled"
    assert _extensions.implementation().get("codec") == expected


def test_mac_address() -> None:
    m = MacAddress("aa:bb:cc:dd:ee:ff")
    assert str(m) == "aa:bb:cc:dd:ee:ff" and m == b"\xaa\xbb\xcc\xdd\xee\xff"
    assert m == "AA-BB-CC-DD-EE-FF" and m != "aa:bb:cc:dd:ee:00" and m != 5
    assert hash(m) == hash(b"\xaa\xbb\xcc\xdd\xee\xff")
    from vpp_papi.macaddress import MACAddress

    assert MACAddress("aa:bb:cc:dd:ee:ff") == m and m == MACAddress("aa:bb:cc:dd:ee:ff")
    with pytest.raises(ValueError):
        MacAddress(b"\x00")


@pytest.mark.skipif("compiled" not in IMPLS, reason="compiled codec not built")
def test_compiled_constants_match_plan() -> None:
    consts = IMPLS["compiled"].CONSTANTS
    for name, value in consts.items():
        assert getattr(plan, name) == value, name
    assert {n for n in dir(plan) if n[:2] in ("K_", "C_") and n[2:].isupper()} >= set(consts)


# --- compiled == twin on arbitrary (mostly invalid) input ------------------------------------


class _IntSub(int):
    """An int whose ``__index__`` raises: both codecs encode its int value."""

    def __index__(self) -> int:
        raise ValueError("__index__ of an int subclass is not called")

    def __repr__(self) -> str:
        return f"_IntSub({int(self)})"


class _Index:
    def __init__(self, n: int) -> None:
        self.n = n

    def __index__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"_Index({self.n})"


class _BadIndex:
    def __index__(self) -> int:
        raise ValueError("no number here")

    def __repr__(self) -> str:
        return "_BadIndex()"


class _Truthy:
    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return "_Truthy()"


def _iface_or_net(addr: Any, plen: int, net: bool) -> Any:
    plen %= addr.max_prefixlen + 1
    if net:
        return ipaddress.ip_network((addr, plen), strict=False)
    return ipaddress.ip_interface((addr, plen))


_ANY = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=70)
    | st.binary(max_size=20)
    | st.sampled_from(["10.0.0.1", "10.0.0.1/24", "::1", "2001:db8::/64", "aa:bb:cc:dd:ee:ff"])
    | st.ip_addresses(),
    lambda inner: (
        st.lists(inner, max_size=17)
        | st.dictionaries(
            st.sampled_from(["ip4", "ip6", "address", "len", "af", "un", "paths", "n_paths", "x"]),
            inner,
            max_size=3,
        )
    ),
    max_leaves=20,
)


def _outcome(c: Any, msg_id: int, values: dict[str, Any]) -> Any:
    try:
        return ("ok", c.encode(msg_id, values))
    except CodecError as exc:
        return ("error", str(exc), exc.field)
    except Exception as exc:  # a non-CodecError must at least be the same in both
        return ("other", type(exc).__name__)


@pytest.mark.skipif("compiled" not in IMPLS, reason="compiled codec not built")
@settings(max_examples=examples(400), deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), name=st.sampled_from(sorted(SAMPLES)))
def test_compiled_equals_twin_on_any_input(data: Any, name: str) -> None:
    d = builtin_definitions()
    twin = codec_for(d, name, IMPLS["twin"])
    comp = codec_for(d, name, IMPLS["compiled"])
    fields = list(twin.field_names)
    base = dict(SAMPLES[name])
    # replace a few fields (or add unknown ones) with arbitrary values
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from([*fields, "bogus"]))
        base[key] = data.draw(_ANY)
    assert _outcome(comp, 5, base) == _outcome(twin, 5, base)


@pytest.mark.skipif("compiled" not in IMPLS, reason="compiled codec not built")
@settings(max_examples=examples(400), deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), name=st.sampled_from(sorted(SAMPLES)))
def test_compiled_equals_twin_on_corrupt_bytes(data: Any, name: str) -> None:
    d = builtin_definitions()
    twin = codec_for(d, name, IMPLS["twin"])
    comp = codec_for(d, name, IMPLS["compiled"])
    raw = bytearray(twin.encode(5, SAMPLES[name]))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    blob = bytes(raw[:cut])

    def outcome(c: Any) -> Any:
        try:
            return ("ok", c.decode(blob))
        except CodecError as exc:
            return ("error", str(exc))

    assert outcome(comp) == outcome(twin)


# --- the interpreter-specific fast paths and the portable ones (pyx/ds_pyver.h) -------------

_needs_compiled = pytest.mark.skipif("compiled" not in IMPLS, reason="compiled codec not built")


@_needs_compiled
def test_fast_paths_are_on_where_a_layout_is_known() -> None:
    """On CPython 3.11-3.13 the dict walk and the int reads of that version are compiled in
    and pass the import check; a layout that silently failed it would only be slower."""
    paths = IMPLS["compiled"]._fast_paths()
    known = sys.implementation.name == "cpython" and (3, 11) <= sys.version_info[:2] <= (3, 13)
    free_threaded = not getattr(sys, "_is_gil_enabled", lambda: True)()
    if known and not free_threaded:
        assert paths == {"ints": 1, "dicts": 1, "records": 1}


@pytest.fixture
def portable() -> Iterator[ModuleType]:
    """The compiled codec on its portable paths (public C API only), as a CPython without a
    known layout runs it; the import check's choice is restored afterwards."""
    c = IMPLS["compiled"]
    assert c._fast_paths(False) == {"ints": 0, "dicts": 0, "records": 0}
    try:
        yield c
    finally:
        c._fast_paths(True)


@_needs_compiled
def test_portable_paths_encode_and_decode_samples_as_the_twin(
    portable: ModuleType, defs: ApiDefinitions
) -> None:
    for name, values in SAMPLES.items():
        twin = codec_for(defs, name, _codec_py)
        comp = codec_for(defs, name, portable)
        data = twin.encode(5, values)
        assert comp.encode(5, values) == data, name
        assert comp.decode(data) == twin.decode(data), name


# values around every int layout's boundaries: 30-bit digits, compact values, each width
_BITS = (7, 8, 15, 16, 30, 31, 32, 60, 63, 64)
_BOUNDARY_INTS = sorted({s * v for s in (1, -1) for b in _BITS for v in (2**b - 1, 2**b)})
_BOUNDARY_INTS += [0, 2**70]


@_needs_compiled
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "portable"])
def test_ints_at_layout_boundaries_equal_twin(fast: bool, defs: ApiDefinitions) -> None:
    """Every field of every sample set to ints around the digit boundaries: the compiled
    codec on its fast and its portable paths writes or rejects exactly what the twin does."""
    c = IMPLS["compiled"]
    c._fast_paths(fast)
    try:
        for name, sample in SAMPLES.items():
            twin = codec_for(defs, name, _codec_py)
            comp = codec_for(defs, name, c)
            for key in twin.field_names:
                for v in _BOUNDARY_INTS:
                    values = {**sample, key: v}
                    assert _outcome(comp, 5, values) == _outcome(twin, 5, values), (name, key, v)
    finally:
        c._fast_paths(True)


@_needs_compiled
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), name=st.sampled_from(sorted(SAMPLES)))
def test_portable_paths_equal_twin_on_any_input(data: Any, name: str) -> None:
    c = IMPLS["compiled"]
    c._fast_paths(False)
    try:
        d = builtin_definitions()
        twin = codec_for(d, name, IMPLS["twin"])
        comp = codec_for(d, name, c)
        base = dict(SAMPLES[name])
        for _ in range(data.draw(st.integers(1, 3))):
            key = data.draw(st.sampled_from([*twin.field_names, "bogus"]))
            base[key] = data.draw(_ANY)
        assert _outcome(comp, 5, base) == _outcome(twin, 5, base)
    finally:
        c._fast_paths(True)


@settings(max_examples=300, deadline=None)
@given(
    v6=st.booleans(),
    n=st.integers(0, 2**128 - 1),
    plen=st.integers(0, 128),
)
def test_fast_ipaddress_constructors_equal_real_ones(v6: bool, n: int, plen: int) -> None:
    if not v6:
        n &= 0xFFFFFFFF
        plen %= 33
    size = 16 if v6 else 4
    packed = n.to_bytes(size, "big")
    real_addr = ipaddress.ip_address(packed)
    real_net = ipaddress.ip_network((packed, plen), strict=False)
    real_if = ipaddress.ip_interface((packed, plen))
    af = 1 if v6 else 0
    fast_addr = (plan.ip6_from_int if v6 else plan.ip4_from_int)(n)
    fast_net = plan._net(af, n, plen)
    fast_if = plan._iface(af, n, plen)
    for real, fast in ((real_addr, fast_addr), (real_net, fast_net), (real_if, fast_if)):
        assert type(fast) is type(real)
        assert fast == real and hash(fast) == hash(real)
        assert str(fast) == str(real) and repr(fast) == repr(real)
    assert fast_net.broadcast_address == real_net.broadcast_address
    assert fast_net.num_addresses == real_net.num_addresses
    assert fast_if.network == real_if.network and fast_if.with_prefixlen == real_if.with_prefixlen
    assert fast_if.ip == real_if.ip
    if real_net.num_addresses <= 2:
        assert list(fast_net.hosts()) == list(real_net.hosts())
    assert set(vars(fast_net)) == set(vars(real_net))
    assert set(vars(fast_if)) == set(vars(real_if))


def test_encode_argument_errors(impl: ModuleType, defs: ApiDefinitions) -> None:
    c = codec_for(defs, "control_ping", impl)
    with pytest.raises(TypeError):
        c.encode()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        c.encode(1, {}, {})  # type: ignore[call-arg]
    with pytest.raises(CodecError, match=r"control_ping\._vl_msg_id: bad message id"):
        c.encode("1")  # type: ignore[arg-type]
    # any Mapping works, not only dict
    from types import MappingProxyType

    assert c.encode(1, MappingProxyType({"context": 7})) == c.encode(1, {"context": 7})


def test_shared_zero_records_are_equal_values(impl: ModuleType, defs: ApiDefinitions) -> None:
    r = codec_for(defs, "ip_route_add_del", impl)
    m = r.decode(r.encode(1, ROUTE3))
    labels = m.route.paths[0].label_stack
    assert labels == [(0, 0, 0, 0)] * 16
    assert m.route.paths[0].label_stack == m.route.paths[1].label_stack
    assert isinstance(labels[0], tuple) and labels[0].label == 0


@pytest.fixture(scope="module")
def reference_papi() -> Any:
    from vpp_papi.vpp_papi import VPPApiJSONFiles

    files = sorted(str(p) for p in REFERENCE.rglob("*.api.json"))
    _, messages, _ = VPPApiJSONFiles.load_api(apifiles=files)
    return messages


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="reference .api.json files not found")
def test_differential_every_reference_message(reference_papi: Any) -> None:
    """Every message of a full VPP build (411): same bytes and decode as vpp-papi."""
    full = load_api_dir(REFERENCE)
    comp = plan.Compiler(full)
    names = sorted(n for n in full.messages if n in reference_papi)
    assert len(names) > 400

    @settings(max_examples=len(names) * 2, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data: Any) -> None:
        name = data.draw(st.sampled_from(names))
        values = data.draw(struct_for(comp.message(name), 1))
        expected = papi_pack(reference_papi, name, 7, values)
        for impl in IMPLS.values():
            c = codec_for(full, name, impl)
            assert c.encode(7, values) == expected, name
            try:
                want = papi_unpack(reference_papi, name, expected)
            except (ValueError, OverflowError, OSError):
                # papi fails (e.g. a timestamp out of range): ours raises CodecError or decodes
                try:
                    c.decode(expected)
                except CodecError:
                    pass
                continue
            assert tuple(c.decode(expected)) == want, name

    check()


def test_text_encoding(impl: ModuleType, defs: ApiDefinitions) -> None:
    t = codec_for(defs, "sw_interface_tag_add_del", impl)
    assert t.decode(t.encode(1, tag="café")).tag == "café"  # UTF-8, 5 bytes
    with pytest.raises(CodecError, match=r"sw_interface_tag_add_del\.tag: not encodable"):
        t.encode(1, tag="\ud800")
    with pytest.raises(CodecError, match=r"tag: string of 64 bytes, at most 63"):
        t.encode(1, tag="é" * 32)
    j = codec_for(defs, "get_api_json_reply", impl)
    assert j.decode(j.encode(1, json="ünï")).json == "ünï"
    with pytest.raises(CodecError, match=r"mac_address: "):
        codec_for(defs, "create_loopback", impl).encode(1, mac_address="\ud800")


_MUTATING_ENCODE = """
import sys
from datasync.vpp.codec import codec_for
from datasync.vpp.defs import builtin_definitions
import {module} as impl

codec = codec_for(builtin_definitions(), "want_interface_events", impl)


class Evil:
    def __init__(self, d):
        self.d = d

    def __index__(self):
        self.d.pop("context", None)  # frees the next entry's value, which only d held
        return 1


for _ in range(3):
    d = {{}}
    d["client_index"] = Evil(d)
    d["context"] = [object() for _ in range(3)]
    d["enable_disable"] = 1
    d["pid"] = 2
    try:
        codec.encode(1, d)
    except Exception as exc:  # an error is fine here; a crash is not
        print(type(exc).__name__, exc)
print("survived")
"""


def test_a_value_that_changes_its_dict_while_encoded_cannot_crash(impl: ModuleType) -> None:
    """A field's ``__index__`` deletes the next key of the dict being encoded. The encoder
    must not keep pointers into the dict across such a call (it once used the freed
    value). Run under the debug allocator, which turns a use-after-free into a crash."""
    code = _MUTATING_ENCODE.format(module=impl.__name__)
    env = {**os.environ, "PYTHONMALLOC": "debug"}
    out = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0 and "survived" in out.stdout, out.stdout + out.stderr
