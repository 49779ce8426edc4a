"""Sample VPP messages shared by the codec tests and benchmarks."""

from __future__ import annotations

from typing import Any

LABELS = [{"is_uniform": 0, "label": 0, "ttl": 0, "exp": 0}] * 16


def fib_path(i: int, nh: Any) -> dict[str, Any]:
    return {
        "sw_if_index": i,
        "table_id": 0,
        "rpf_id": 0,
        "weight": 1,
        "preference": 0,
        "type": 0,
        "flags": 0,
        "proto": 0,
        "nh": {"address": nh, "via_label": 0, "obj_id": 0, "classify_table_index": 0xFFFFFFFF},
        "n_labels": 0,
        "label_stack": LABELS,
    }


SW_IF_DETAILS = {
    "context": 3,
    "sw_if_index": 1,
    "sup_sw_if_index": 1,
    "l2_address": "de:ad:00:00:00:01",
    "flags": 3,
    "type": 0,
    "link_duplex": 0,
    "link_speed": 0,
    "link_mtu": 9000,
    "mtu": [9000, 0, 0, 0],
    "sub_id": 0,
    "sub_number_of_tags": 0,
    "sub_outer_vlan_id": 0,
    "sub_inner_vlan_id": 0,
    "sub_if_flags": 0,
    "vtr_op": 0,
    "vtr_push_dot1q": 0,
    "vtr_tag1": 0,
    "vtr_tag2": 0,
    "outer_tag": 0,
    "b_dmac": b"\x00" * 6,
    "b_smac": b"\x00" * 6,
    "b_vlanid": 0,
    "i_sid": 0,
    "interface_name": "loop0",
    "interface_dev_type": "Loopback",
    "tag": "vpp-agent/loop0",
}
ADD_ADDR = {
    "client_index": 0x80000001,
    "context": 5,
    "sw_if_index": 1,
    "is_add": True,
    "del_all": False,
    "prefix": "10.0.0.1/24",
}
