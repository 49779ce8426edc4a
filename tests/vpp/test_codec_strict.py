"""Strict encoding, the same in the compiled codec and its twin: bool fields take bools (and
the ints 0 and 1), prefix lengths stop at 32 / 128, ints are read by value."""

from __future__ import annotations

import ipaddress
from collections import namedtuple
from types import ModuleType
from typing import Any

import pytest

from datasync.vpp.codec import CodecError, codec_for
from datasync.vpp.defs import ApiDefinitions, builtin_definitions
from tests.vpp.samples import ADD_ADDR
from tests.vpp.test_codec import IMPLS, ROUTE3, SAMPLES


@pytest.fixture(params=sorted(IMPLS), ids=sorted(IMPLS))
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return IMPLS[request.param]


@pytest.fixture(scope="module")
def defs() -> ApiDefinitions:
    return builtin_definitions()


class RaisingIndex(int):
    """An int whose ``__index__`` raises: encoded by its int value, never called."""

    def __index__(self) -> int:
        raise ValueError("__index__ must not be called")


class Index:
    """Not an int, but an integer through ``__index__``."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __index__(self) -> int:
        return self.n


class BadIndex:
    def __index__(self) -> int:
        raise ValueError("no number here")


class Truthy:
    def __bool__(self) -> bool:
        return True


# --- bools ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["false", "true", "", 2, -1, 1.0, 0.0, None.__class__, b"\x01", [1], Truthy(), Index(1)],
    ids=repr,
)
def test_bool_fields_reject_anything_but_bools_and_0_1(
    impl: ModuleType, defs: ApiDefinitions, value: Any
) -> None:
    a = codec_for(defs, "sw_interface_add_del_address", impl)
    with pytest.raises(
        CodecError, match=r"sw_interface_add_del_address\.is_add: expected a bool"
    ) as e:
        a.encode(1, {**ADD_ADDR, "is_add": value})
    assert e.value.field == "is_add"


def test_bool_fields_take_bools_and_the_ints_0_and_1(
    impl: ModuleType, defs: ApiDefinitions
) -> None:
    a = codec_for(defs, "sw_interface_add_del_address", impl)
    for value, wire in ((True, 1), (1, 1), (RaisingIndex(1), 1), (False, 0), (0, 0)):
        got = a.encode(1, {**ADD_ADDR, "is_add": value})
        assert got == a.encode(1, {**ADD_ADDR, "is_add": bool(wire)})
        assert a.decode(got).is_add is bool(wire)
    # a missing bool takes its default, as before
    bd = codec_for(defs, "bridge_domain_add_del_v2", impl)
    assert bd.decode(bd.encode(1, bd_id=1)).is_add is True


def test_bool_errors_in_every_encoding_path(impl: ModuleType, defs: ApiDefinitions) -> None:
    """Bools at the top of a message, nested in structs, keyword arguments, and messages
    the compiled codec writes in place: every path rejects the same values."""
    r = codec_for(defs, "ip_route_add_del", impl)
    with pytest.raises(CodecError, match=r"ip_route_add_del\.is_multipath: expected a bool"):
        r.encode(1, {**ROUTE3, "is_multipath": "no"})
    det = codec_for(defs, "bridge_domain_details", impl)
    with pytest.raises(CodecError, match=r"bridge_domain_details\.flood: expected a bool"):
        det.encode(1, {**SAMPLES["bridge_domain_details"], "flood": 7})
    ev = codec_for(defs, "sw_interface_event", impl)
    with pytest.raises(CodecError, match=r"sw_interface_event\.deleted: expected a bool"):
        ev.encode(1, **{**SAMPLES["sw_interface_event"], "deleted": "False"})
    assert ev.encode(1, {**SAMPLES["sw_interface_event"], "deleted": 0}) == ev.encode(
        1, {**SAMPLES["sw_interface_event"], "deleted": False}
    )


# --- prefix lengths -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "field", "reason"),
    [
        ("10.0.0.1/33", "prefix", "33 out of range for IPv4 \\[0, 32\\]"),
        ("10.0.0.1/255", "prefix", "255 out of range for IPv4"),
        ("10.0.0.1/256", "prefix", "256 out of range for IPv4"),
        ("::/129", "prefix", "129 out of range for IPv6 \\[0, 128\\]"),
        ("2001:db8::1/200", "prefix", "200 out of range for IPv6"),
        ({"address": "10.0.0.1", "len": 33}, "prefix.len", "33 out of range for IPv4"),
        ({"address": {"af": 1, "un": {"ip6": "::1"}}, "len": 129}, "prefix.len", "129 out of"),
    ],
    ids=str,
)
def test_prefix_lengths_beyond_the_family_are_rejected(
    impl: ModuleType, defs: ApiDefinitions, prefix: Any, field: str, reason: str
) -> None:
    a = codec_for(defs, "sw_interface_add_del_address", impl)
    with pytest.raises(CodecError, match=reason) as e:
        a.encode(1, {**ADD_ADDR, "prefix": prefix})
    assert e.value.field == field


def test_prefix_lengths_at_the_limit_encode_and_decode(
    impl: ModuleType, defs: ApiDefinitions
) -> None:
    a = codec_for(defs, "sw_interface_add_del_address", impl)
    for text in ("10.0.0.1/32", "10.0.0.1/0", "2001:db8::1/128", "::/0"):
        got = a.decode(a.encode(1, {**ADD_ADDR, "prefix": text}))
        assert got.prefix == ipaddress.ip_interface(text)
        assert a.encode(1, {**ADD_ADDR, "prefix": {"address": text.split("/")[0], "len": 0}})
    # an unknown address family decodes to None whatever the length: not checked
    odd = {"address": {"af": 7, "un": {"ip4": "1.2.3.4"}}, "len": 200}
    assert a.decode(a.encode(1, {**ADD_ADDR, "prefix": odd})).prefix is None


def test_ip4_prefix_types_reject_long_lengths(impl: ModuleType, defs: ApiDefinitions) -> None:
    t = codec_for(defs, "tap_create_v3", impl)
    base = SAMPLES["tap_create_v3"]
    with pytest.raises(CodecError, match=r"tap_create_v3\.host_ip4_prefix: .*33 out of range"):
        t.encode(1, {**base, "host_ip4_prefix": "192.168.1.1/33"})
    with pytest.raises(CodecError, match=r"tap_create_v3\.host_ip6_prefix: .*129 out of range"):
        t.encode(1, {**base, "host_ip6_prefix": "::/129"})
    with pytest.raises(CodecError, match=r"tap_create_v3\.host_ip4_prefix\.len: .*40 out of"):
        t.encode(1, {**base, "host_ip4_prefix": {"address": "1.2.3.4", "len": 40}})
    # a record (as decode returns for plain structs) is checked the same way
    rec = namedtuple("ip4_address_with_prefix", ["address", "len"])("1.2.3.4", 33)
    with pytest.raises(CodecError, match=r"host_ip4_prefix\.len: .*33 out of"):
        t.encode(1, {**base, "host_ip4_prefix": rec})


def test_route_prefix_in_a_nested_struct(impl: ModuleType, defs: ApiDefinitions) -> None:
    r = codec_for(defs, "ip_route_add_del", impl)
    with pytest.raises(CodecError, match=r"ip_route_add_del\.route\.prefix: .*33 out of range"):
        r.encode(1, {**ROUTE3, "route": {**ROUTE3["route"], "prefix": "10.1.0.0/33"}})


# --- ints ------------------------------------------------------------------------------------


def test_an_int_subclass_is_encoded_by_its_value(impl: ModuleType, defs: ApiDefinitions) -> None:
    """An int subclass is an int: its value is written and its ``__index__`` (which
    ``struct`` does not call either) is never called, by either implementation."""
    a = codec_for(defs, "sw_interface_add_del_address", impl)
    want = a.encode(1, {**ADD_ADDR, "sw_if_index": 5})
    assert a.encode(1, {**ADD_ADDR, "sw_if_index": RaisingIndex(5)}) == want
    assert (
        a.encode(
            1,
            sw_if_index=RaisingIndex(5),
            **{k: v for k, v in ADD_ADDR.items() if k != "sw_if_index"},
        )
        == want
    )
    # a length field, and a u32 past two 30-bit digits
    bd = codec_for(defs, "bridge_domain_details", impl)
    sample = SAMPLES["bridge_domain_details"]
    assert bd.encode(1, {**sample, "n_sw_ifs": RaisingIndex(8)}) == bd.encode(1, sample)
    big = codec_for(defs, "control_ping_reply", impl)
    assert big.encode(1, context=RaisingIndex(2**32 - 1)) == big.encode(1, context=2**32 - 1)
    with pytest.raises(CodecError, match=r"sw_if_index: -1 out of range"):
        a.encode(1, {**ADD_ADDR, "sw_if_index": RaisingIndex(-1)})


def test_other_objects_are_ints_through_their_index(impl: ModuleType, defs: ApiDefinitions) -> None:
    a = codec_for(defs, "sw_interface_add_del_address", impl)
    want = a.encode(1, {**ADD_ADDR, "sw_if_index": 5})
    assert a.encode(1, {**ADD_ADDR, "sw_if_index": Index(5)}) == want
    with pytest.raises(
        CodecError, match=r"sw_if_index: expected an integer, got BadIndex whose __index__ raised"
    ) as e:
        a.encode(1, {**ADD_ADDR, "sw_if_index": BadIndex()})
    assert e.value.field == "sw_if_index"
    with pytest.raises(CodecError, match=r"sw_if_index: expected an integer, got float"):
        a.encode(1, {**ADD_ADDR, "sw_if_index": 5.0})


# --- compiled == twin on the cases above --------------------------------------------------

STRICT_VALUES: list[Any] = [
    "false",
    "true",
    "",
    2,
    -1,
    0,
    1,
    1.0,
    Truthy(),
    Index(1),
    Index(300),
    BadIndex(),
    RaisingIndex(1),
    RaisingIndex(7),
    RaisingIndex(-5),
    RaisingIndex(2**40),
    "10.0.0.1/33",
    "10.0.0.1/32",
    "::/129",
    "::/128",
    "1.2.3.4/255",
    {"address": "10.0.0.1", "len": 33},
    {"address": "::1", "len": 129},
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_interface("::1/128"),
]


@pytest.mark.skipif("compiled" not in IMPLS, reason="compiled codec not built")
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_compiled_equals_twin_on_strict_values(defs: ApiDefinitions, name: str) -> None:
    from tests.vpp.test_codec import _outcome

    twin = codec_for(defs, name, IMPLS["twin"])
    comp = codec_for(defs, name, IMPLS["compiled"])
    for key in twin.field_names:
        for v in STRICT_VALUES:
            values = {**SAMPLES[name], key: v}
            assert _outcome(comp, 5, values) == _outcome(twin, 5, values), (name, key, v)


def test_an_ipaddress_object_is_no_mac(impl: ModuleType, defs: ApiDefinitions) -> None:
    """The compiled codec once wrote 6 of an IPv6 interface's bytes into a MAC field (the
    strict-values comparison above found it); both reject it now."""
    m = codec_for(defs, "create_loopback", impl)
    for v in (ipaddress.ip_interface("::1/128"), ipaddress.ip_network("::/0")):
        with pytest.raises(CodecError, match=r"create_loopback\.mac_address: "):
            m.encode(1, mac_address=v)
