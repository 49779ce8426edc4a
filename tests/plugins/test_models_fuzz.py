"""Fuzzing the value models and config documents: whatever bytes or JSON a store holds,
a plugin either takes the value or rejects it with ``InvalidValueError`` naming the key
(and a field where one is to blame); a config document either gives keys or a
``DocumentError``. Nothing else escapes, so one bad key can never fail a round.

Examples per test: 150, scaled by ``DATASYNC_FUZZ_SCALE`` (see tests/fuzz.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datasync.errors import InvalidValueError
from datasync.plugins import VppPlugins
from datasync.plugins.document import DocumentError, load_document, to_keys
from datasync.plugins.models import BridgeDomain, Interface, Route, VrfTable, _camel
from datasync.vpp.client import VppClient
from tests.fuzz import examples

from .conftest import BD, IF, LABEL, ROUTE, VRF, bd, loop, route, vrf

FUZZ = settings(
    max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.fixture(scope="module")
def cases() -> Iterator[list[tuple[Any, str, type[msgspec.Struct], tuple[str, bytes]]]]:
    """The four plugins (parse needs no VPP), made and closed in a loop of their own."""
    ev_loop = asyncio.new_event_loop()

    async def make() -> VppPlugins:
        return VppPlugins(VppClient("/nonexistent/vpp-api.sock"), LABEL)

    plugins = ev_loop.run_until_complete(make())
    try:
        yield [
            (plugins.interfaces, IF, Interface, loop("x0")),
            (plugins.bridge_domains, BD, BridgeDomain, bd("x0")),
            (plugins.routes, ROUTE, Route, route("10.1.0.0/24", "10.0.0.1")),
            (plugins.vrfs, VRF, VrfTable, vrf(5)),
        ]
    finally:
        ev_loop.run_until_complete(plugins.close())
        ev_loop.close()


# values a JSON document can hold, with the shapes the models care about nearby
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from([
        "10.0.0.1/24", "10.0.0.1/33", "::1/128", "::/129", "fe80::1%eth0/64", "1.2.3.4",
        "02:00:00:00:00:01", "zz:00:00:00:00:01", "SOFTWARE_LOOPBACK", "TAP", "MEMIF",
        "DROP", "INTER_VRF", "loop0", "", "a" * 70, "\x00", "0x10",
    ]),
)  # fmt: skip
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def field_names(model: type[msgspec.Struct]) -> list[str]:
    names = list(model.__struct_fields__)
    return names + [_camel(n) for n in names] + ["unknown_field"]


def check(plugin: Any, key: str, value: bytes) -> None:
    try:
        plugin.parse(key, value)
    except InvalidValueError as exc:
        assert exc.key == key and exc.reason, exc
    finally:
        plugin.desired.pop(key, None)
        plugin.prune()


@FUZZ
@given(st.data())
def test_any_json_object_is_taken_or_rejected_naming_the_key(
    cases: list[Any], data: st.DataObject
) -> None:
    plugin, prefix, model, _valid = data.draw(st.sampled_from(cases))
    doc = data.draw(st.dictionaries(st.sampled_from(field_names(model)), json_values, max_size=8))
    name = data.draw(st.sampled_from(["x0", "loop1", "10.0.0.0/24", "a/b", ""]))
    check(plugin, prefix + name, json.dumps(doc).encode())


@FUZZ
@given(st.integers(0, 3), st.binary(max_size=200))
def test_any_bytes_are_taken_or_rejected_naming_the_key(
    cases: list[Any], case: int, value: bytes
) -> None:
    plugin, prefix, _model, _valid = cases[case]
    check(plugin, prefix + "x0", value)


@FUZZ
@given(st.data())
def test_an_ill_typed_field_is_named_in_the_reason(cases: list[Any], data: st.DataObject) -> None:
    plugin, _prefix, model, (key, valid) = data.draw(st.sampled_from(cases))
    plugin.parse(key, valid)  # the base value is good
    field = data.draw(st.sampled_from([f for f in model.__struct_fields__ if f != "name"]))
    bad = data.draw(st.sampled_from([{"nested": [1]}, [[["deep"]]], "\x00text", 2**70]))
    doc = json.loads(valid) | {data.draw(st.sampled_from([field, _camel(field)])): bad}
    try:
        plugin.parse(key, json.dumps(doc).encode())
    except InvalidValueError as exc:
        assert field in exc.reason or _camel(field) in exc.reason, exc.reason
    else:  # only a field whose every value is acceptable may take it; none of ours does
        raise AssertionError(f"{model.__name__}.{field} took {bad!r}")
    finally:
        plugin.desired.pop(key, None)


sections = st.dictionaries(
    st.sampled_from(["interfaces", "bridgeDomains", "routes", "vrfs", "bogus"]),
    st.lists(st.dictionaries(st.sampled_from(["name", "type", "dstNetwork", "id", "mtu"]),
                             json_values, max_size=4), max_size=3) | json_values,
    max_size=4,
)  # fmt: skip


@FUZZ
@given(st.one_of(st.builds(lambda s: json.dumps({"vppConfig": s}), sections),
                 st.text(max_size=200)))  # fmt: skip
def test_any_config_document_gives_keys_or_a_document_error(text: str) -> None:
    try:
        keys = to_keys(load_document(text, "fuzz.yaml"), LABEL, "fuzz.yaml")
    except DocumentError as exc:
        assert str(exc)
    else:
        assert all(k.startswith(f"/vnf-agent/{LABEL}/config/") for k in keys)
        assert all(isinstance(v, bytes) for v in keys.values())
