"""The project's own message definitions, checked against a full VPP build's .api.json files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datasync.vpp.defs import (
    ApiDefinitions,
    DefinitionError,
    UnknownMessageError,
    builtin_definitions,
    load_api_dir,
    load_api_json_string,
)
from datasync.vpp.retvals import RETVAL_NAMES, VppApiError, classify, retval_name
from tests.paths import VPP_API_REFERENCE

REFERENCE = VPP_API_REFERENCE  # vendored under tests/data; DATASYNC_VPP_API_DIR overrides
needs_reference = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason=f"reference .api.json files not found at {REFERENCE}"
)

# Every message the task names, with its reply (legacy dumps: details).
USED = {
    "sockclnt_create": "sockclnt_create_reply",
    "sockclnt_delete": "sockclnt_delete_reply",
    "control_ping": "control_ping_reply",
    "get_api_json": "get_api_json_reply",
    "sock_init_shm": "sock_init_shm_reply",
    "memclnt_keepalive": "memclnt_keepalive_reply",
    "show_version": "show_version_reply",
    "create_loopback": "create_loopback_reply",
    "create_loopback_instance": "create_loopback_instance_reply",
    "delete_loopback": "delete_loopback_reply",
    "tap_create_v3": "tap_create_v3_reply",
    "tap_delete_v2": "tap_delete_v2_reply",
    "memif_socket_filename_add_del": "memif_socket_filename_add_del_reply",
    "memif_socket_filename_add_del_v2": "memif_socket_filename_add_del_v2_reply",
    "memif_create_v2": "memif_create_v2_reply",
    "memif_delete": "memif_delete_reply",
    "sw_interface_set_flags": "sw_interface_set_flags_reply",
    "sw_interface_set_mtu": "sw_interface_set_mtu_reply",
    "hw_interface_set_mtu": "hw_interface_set_mtu_reply",
    "sw_interface_add_del_address": "sw_interface_add_del_address_reply",
    "sw_interface_tag_add_del": "sw_interface_tag_add_del_reply",
    "sw_interface_set_table": "sw_interface_set_table_reply",
    "sw_interface_set_mac_address": "sw_interface_set_mac_address_reply",
    "sw_interface_dump": "sw_interface_details",
    "ip_address_dump": "ip_address_details",
    "sw_interface_tap_v2_dump": "sw_interface_tap_v2_details",
    "memif_dump": "memif_details",
    "want_interface_events": "want_interface_events_reply",
    "bridge_domain_add_del_v2": "bridge_domain_add_del_v2_reply",
    "sw_interface_set_l2_bridge": "sw_interface_set_l2_bridge_reply",
    "bridge_domain_dump": "bridge_domain_details",
    "ip_table_add_del": "ip_table_add_del_reply",
    "ip_route_add_del": "ip_route_add_del_reply",
    "ip_route_dump": "ip_route_details",
    "ip_table_dump": "ip_table_details",
    "sw_interface_get_table": "sw_interface_get_table_reply",
}
DUMPS = {
    "ip_table_dump",
    "sw_interface_dump",
    "ip_address_dump",
    "sw_interface_tap_v2_dump",
    "memif_dump",
    "bridge_domain_dump",
    "ip_route_dump",
}


@pytest.fixture(scope="module")
def ours() -> ApiDefinitions:
    return builtin_definitions()


@pytest.fixture(scope="module")
def reference() -> ApiDefinitions:
    if not REFERENCE.is_dir():
        pytest.skip(f"reference .api.json files not found at {REFERENCE}")
    return load_api_dir(REFERENCE)


def test_builtin_is_cached(ours: ApiDefinitions) -> None:
    assert builtin_definitions() is ours


@pytest.mark.parametrize("request_name", sorted(USED))
def test_used_messages_and_replies(ours: ApiDefinitions, request_name: str) -> None:
    reply = USED[request_name]
    assert ours.reply_of(request_name) == reply
    assert ours.is_dump(request_name) == (request_name in DUMPS)
    assert ours.request_of(reply) == request_name
    req = ours.message(request_name)
    assert req.fields[0].name == "_vl_msg_id"
    assert req.has_context
    # sockclnt_create is the one request without a client index (there is none yet)
    assert req.has_client_index == (request_name != "sockclnt_create")
    assert ours.message(reply).has_context


def test_event_has_no_context(ours: ApiDefinitions) -> None:
    ev = ours.message("sw_interface_event")
    assert ev.has_client_index and not ev.has_context
    assert ours.events_of("want_interface_events") == ("sw_interface_event",)
    assert ours.kind("sw_interface_event") == "event"
    assert ours.kind("sw_interface_details") == "details"
    assert ours.kind("control_ping_reply") == "reply"
    assert ours.kind("control_ping") == "request"


def test_name_crc(ours: ApiDefinitions) -> None:
    assert ours.name_crc("control_ping") == "control_ping_51077d14"
    assert ours.message("control_ping").crc == "0x51077d14"
    assert ours.name_crc_table()["control_ping_reply_f6b0b8ca"] == "control_ping_reply"


def test_memclnt_is_whole_and_in_order(ours: ApiDefinitions) -> None:
    names = ours.modules["memclnt"].message_names
    assert len(names) == 28
    # VPP numbers memclnt 1..28 in file order; papi hard-codes 15 and 16
    assert names.index("sockclnt_create") + 1 == 15
    assert names.index("sockclnt_create_reply") + 1 == 16
    assert names.index("control_ping") + 1 == 23
    assert names.index("get_api_json_reply") + 1 == 28


def test_unknown_message_error_names_it(ours: ApiDefinitions) -> None:
    with pytest.raises(UnknownMessageError, match="no_such_message") as exc:
        ours.message("no_such_message")
    assert isinstance(exc.value, KeyError)
    with pytest.raises(KeyError, match="no_such_message"):
        ours.name_crc("no_such_message")
    with pytest.raises(UnknownMessageError, match="sw_interface_details"):
        ours.reply_of("sw_interface_details")  # a reply is not a service


@needs_reference
def test_every_definition_matches_reference(
    ours: ApiDefinitions, reference: ApiDefinitions
) -> None:
    """Names, field order, types, sizes, options and CRCs: all equal to the real build's."""
    assert len(ours.messages) >= 69
    for name, m in ours.messages.items():
        ref = reference.message(name)
        assert m.crc == ref.crc, name
        assert m.fields == ref.fields, name
        assert m.module == ref.module, name
    for name, t in ours.types.items():
        assert t == reference.types[name], name
    for name, s in ours.services.items():
        assert s == reference.services[name], name


@needs_reference
def test_every_type_used_is_defined(ours: ApiDefinitions) -> None:
    for m in ours.messages.values():
        stack = [f.type for f in m.fields]
        while stack:
            t = stack.pop()
            if t in {"u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64", "f64", "bool", "string"}:
                continue
            td = ours.type(t)
            stack.extend(f.type for f in td.fields)
            if td.alias is not None:
                stack.append(td.alias.type)


def test_vpp_papi_accepts_our_files(tmp_path: Path) -> None:
    """The trimmed files stay valid .api.json: the unmodified vpp-papi loader parses them."""
    from vpp_papi.vpp_papi import VPPApiJSONFiles

    files = sorted(
        Path(builtin_definitions().modules["interface"].path).parent.parent.rglob("*.json")
    )
    _, messages, services = VPPApiJSONFiles.load_api(apifiles=[str(f) for f in files])
    assert "sw_interface_details" in messages and "ip_route_add_del" in messages
    assert services["sw_interface_dump"]["stream"] is True


def test_load_api_json_string(ours: ApiDefinitions) -> None:
    text = "[" + ",".join(m.to_json() for m in ours.modules.values()) + "]"
    again = load_api_json_string(text)
    assert again.messages == ours.messages
    assert again.services == ours.services


def test_load_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="not a directory"):
        load_api_dir(tmp_path / "missing")
    with pytest.raises(DefinitionError, match=r"no \.api\.json"):
        load_api_dir(tmp_path)
    (tmp_path / "bad.api.json").write_text("{nope")
    with pytest.raises(DefinitionError, match=r"bad\.api\.json"):
        load_api_dir(tmp_path)
    (tmp_path / "bad.api.json").write_text(
        json.dumps(
            {"messages": [["m", ["u16", "_vl_msg_id"], ["vl_api_nope_t", "x"], {"crc": "0x1"}]]}
        )
    )
    with pytest.raises(DefinitionError, match=r"m\.x: unknown type 'nope'"):
        load_api_dir(tmp_path)
    (tmp_path / "bad.api.json").write_text(json.dumps({"messages": [["m", ["u16", "_vl_msg_id"]]]}))
    with pytest.raises(DefinitionError, match="no crc"):
        load_api_dir(tmp_path)


# --- retvals -------------------------------------------------------------------------------


@needs_reference
def test_retval_table_matches_vpp() -> None:
    lines = [x for x in (REFERENCE / "vnet_api_errors.txt").read_text().splitlines() if x.strip()]
    assert len(RETVAL_NAMES) == len(lines) == 135
    for line in lines:
        name, value, _text = (p.strip() for p in line.split(",", 2))
        assert RETVAL_NAMES[int(value)] == name


def test_classify() -> None:
    assert classify(0, "create") == "ok"
    assert classify(5, "create") == "ok"
    assert classify(-119, "create") == "benign"  # BD_ALREADY_EXISTS
    assert classify(-119, "update") == "fail"
    assert classify(-6, "delete") == "benign"  # NO_SUCH_ENTRY
    assert classify(-60, "delete") == "benign"  # ADDRESS_NOT_FOUND_FOR_INTERFACE
    assert classify(-2, "delete") == "benign"
    assert classify(-2, "create") == "retry"  # the interface may come later
    assert classify(-120, "delete") == "retry"  # BD_IN_USE
    assert classify(-165) == "retry"  # EAGAIN
    assert classify(-126) == "fail"  # UNSUPPORTED
    assert classify(-7) == "fail"  # INVALID_VALUE
    assert classify(-171) == "fail"  # INVALID_PREFIX_LENGTH
    assert classify(-160) == "benign"  # NO_CHANGE
    assert classify(-9999) == "retry"  # unknown: cautious
    assert retval_name(0) == "OK" and retval_name(-9999) == "UNKNOWN(-9999)"


def test_vpp_api_error() -> None:
    err = VppApiError(-120, "bridge_domain_add_del_v2", "delete")
    assert err.retval == -120 and err.name == "BD_IN_USE" and err.retriable
    assert "bridge_domain_add_del_v2" in str(err) and "BD_IN_USE" in str(err)
    assert not VppApiError(-126).retriable
    import pickle

    again = pickle.loads(pickle.dumps(err))
    assert again.retval == -120 and again.message == "bridge_domain_add_del_v2"
