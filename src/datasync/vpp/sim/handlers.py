"""The simulator's request handlers: one method per message it serves.

Each handler decodes nothing and encodes nothing itself: it takes the request as the
codec decoded it, asks the :class:`~datasync.vpp.sim.state.Dataplane` (which returns
VPP's real retvals) and answers through the server's ``reply``/``details``. Handlers of
dumps send details only; the client's control_ping ends the dump.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..retvals import INVALID_REGISTRATION, INVALID_SW_IF_INDEX, UNSUPPORTED
from . import model
from .model import U32_MAX, FibPath
from .wire import Connection, Registration

if TYPE_CHECKING:
    from .server import Simulator

__all__ = ["HANDLED", "Handlers"]

log = logging.getLogger("datasync.vpp.sim")

_SHM_DEFAULT = 4 << 20  # bytes per ring: room for get_api_json of a full API dir

#: messages the simulator handles (requests); their replies/details/events follow.
HANDLED = (
    "sockclnt_create",
    "sockclnt_delete",
    "control_ping",
    "get_api_json",
    "sock_init_shm",
    "show_version",
    "create_loopback",
    "create_loopback_instance",
    "delete_loopback",
    "sw_interface_set_flags",
    "sw_interface_set_mtu",
    "hw_interface_set_mtu",
    "sw_interface_add_del_address",
    "sw_interface_tag_add_del",
    "sw_interface_set_mac_address",
    "sw_interface_set_table",
    "sw_interface_get_table",
    "sw_interface_dump",
    "want_interface_events",
    "ip_address_dump",
    "ip_table_add_del",
    "ip_table_dump",
    "ip_route_add_del",
    "ip_route_dump",
    "tap_create_v3",
    "tap_delete_v2",
    "sw_interface_tap_v2_dump",
    "memif_socket_filename_add_del_v2",
    "memif_create_v2",
    "memif_delete",
    "memif_dump",
    "bridge_domain_add_del_v2",
    "sw_interface_set_l2_bridge",
    "bridge_domain_dump",
)


class Handlers:
    """The handlers of ``HANDLED``, by message name, answering through ``sim``."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    # -- memclnt --------------------------------------------------------------

    def sockclnt_create(self, conn: Connection, msg: Any) -> None:
        reg = self.sim.register(conn)
        table = [{"index": i, "name": n} for n, i in self.sim.message_table]
        conn.send(
            self.sim.encode(
                "sockclnt_create_reply",
                {
                    "client_index": 0,
                    "context": msg.context,
                    "response": 0,
                    "index": reg.handle,
                    "count": len(table),
                    "message_table": table,
                },
            )
        )

    def sockclnt_delete(self, reg: Registration, msg: Any) -> None:
        conn = reg.conn
        target = self.sim.registrations.get(int(msg.index))
        if target is None:
            conn.send(
                self.sim.encode("sockclnt_delete_reply", {"context": msg.context, "response": -1})
            )
            return
        conn.send(self.sim.encode("sockclnt_delete_reply", {"context": msg.context, "response": 1}))
        self.sim.unregister(target)
        # VPP closes the socket after the reply
        self.sim.flush()
        if conn.transport is not None:
            conn.transport.close()

    def control_ping(self, reg: Registration, msg: Any) -> None:
        # the message every pipelined benchmark sends: its codec and id looked up once
        encode, reply_id = self._ping_reply
        reg.conn.send(
            encode(
                reply_id,
                {
                    "context": msg.context,
                    "retval": 0,
                    "client_index": msg.client_index,
                    "vpe_pid": self.sim.state.vpe_pid,
                },
            )
        )

    @functools.cached_property
    def _ping_reply(self) -> tuple[Callable[[int, dict[str, Any]], bytes], int]:
        return self.sim.codecs["control_ping_reply"].encode, self.sim.ids["control_ping_reply"]

    def get_api_json(self, reg: Registration, msg: Any) -> None:
        self.sim.reply(reg, "get_api_json", msg.context, 0, {"json": self.sim.api_json()})

    def sock_init_shm(self, reg: Registration, msg: Any) -> None:
        # VPP offers a memfd segment here; we offer the project's own ring (same bodies).
        # The reply goes on the socket, then the fds with SCM_RIGHTS and payload "fdmsg".
        conn = reg.conn
        size = int(msg.requested_size) or _SHM_DEFAULT
        size = 1 << max(16, min(26, (size - 1).bit_length()))
        if conn.shm is not None or not self.sim.allow_shm:
            self.sim.reply(reg, "sock_init_shm", msg.context, UNSUPPORTED, {})
            return
        self.sim.reply(reg, "sock_init_shm", msg.context, 0, {})
        self.sim.flush()
        assert conn.transport is not None
        if conn.transport.get_write_buffer_size():
            # the reply must reach the client before the fds: wait for the socket to drain
            asyncio.get_running_loop().create_task(self._start_shm_later(conn, size))
            return
        self._start_shm(conn, size)

    def _start_shm(self, conn: Connection, size: int) -> None:
        try:
            conn.start_shm(size)
        except Exception as exc:  # no memfd, fd passing failed: the client times out
            log.warning("sim: shared memory setup failed: %s", exc)
            if conn.transport is not None:
                conn.transport.abort()

    async def _start_shm_later(self, conn: Connection, size: int) -> None:
        while conn.transport is not None and conn.transport.get_write_buffer_size():
            if conn.closing:
                return
            await asyncio.sleep(0.001)
        self._start_shm(conn, size)

    def show_version(self, reg: Registration, msg: Any) -> None:
        self.sim.reply(
            reg,
            "show_version",
            msg.context,
            0,
            {
                "program": self.sim.program,
                "version": self.sim.version,
                "build_date": "simulated",
                "build_directory": "/datasync/sim",
            },
        )

    # -- interfaces ------------------------------------------------------------

    def create_loopback(self, reg: Registration, msg: Any) -> None:
        rv, out = self.sim.state.create_loopback(model.mac_bytes(msg.mac_address))
        self.sim.reply(reg, "create_loopback", msg.context, rv, out)

    def create_loopback_instance(self, reg: Registration, msg: Any) -> None:
        instance = int(msg.user_instance) if msg.is_specified else None
        rv, out = self.sim.state.create_loopback(model.mac_bytes(msg.mac_address), instance)
        self.sim.reply(reg, "create_loopback_instance", msg.context, rv, out)

    def delete_loopback(self, reg: Registration, msg: Any) -> None:
        rv, out = self.sim.state.delete_loopback(int(msg.sw_if_index))
        self.sim.reply(reg, "delete_loopback", msg.context, rv, out)

    def sw_interface_set_flags(self, reg: Registration, msg: Any) -> None:
        rv, out = self.sim.state.set_flags(int(msg.sw_if_index), int(msg.flags))
        self.sim.reply(reg, "sw_interface_set_flags", msg.context, rv, out)

    def sw_interface_set_mtu(self, reg: Registration, msg: Any) -> None:
        rv, out = self.sim.state.set_mtu(int(msg.sw_if_index), list(msg.mtu))
        self.sim.reply(reg, "sw_interface_set_mtu", msg.context, rv, out)

    def hw_interface_set_mtu(self, reg: Registration, msg: Any) -> None:
        rv, out = self.sim.state.hw_set_mtu(int(msg.sw_if_index), int(msg.mtu))
        self.sim.reply(reg, "hw_interface_set_mtu", msg.context, rv, out)

    def sw_interface_tag_add_del(self, reg: Registration, msg: Any) -> None:
        rv, out = self.sim.state.set_tag(int(msg.sw_if_index), bool(msg.is_add), str(msg.tag))
        self.sim.reply(reg, "sw_interface_tag_add_del", msg.context, rv, out)

    def sw_interface_set_mac_address(self, reg: Registration, msg: Any) -> None:
        rv, out = self.sim.state.set_mac(int(msg.sw_if_index), model.mac_bytes(msg.mac_address))
        self.sim.reply(reg, "sw_interface_set_mac_address", msg.context, rv, out)

    def sw_interface_add_del_address(self, reg: Registration, msg: Any) -> None:
        addr, length = model.to_interface(msg.prefix)
        rv, out = self.sim.state.add_del_address(
            int(msg.sw_if_index), bool(msg.is_add), bool(msg.del_all), addr, length
        )
        self.sim.reply(reg, "sw_interface_add_del_address", msg.context, rv, out)

    def sw_interface_set_table(self, reg: Registration, msg: Any) -> None:
        rv, out = self.sim.state.set_table(int(msg.sw_if_index), bool(msg.is_ipv6), int(msg.vrf_id))
        self.sim.reply(reg, "sw_interface_set_table", msg.context, rv, out)

    def want_interface_events(self, reg: Registration, msg: Any) -> None:
        enable = bool(msg.enable_disable)
        if enable == (reg.interface_events_pid is not None):
            rv = INVALID_REGISTRATION  # enabling twice or disabling when not enabled
        else:
            rv = 0
            reg.interface_events_pid = int(msg.pid) if enable else None
        self.sim.reply(reg, "want_interface_events", msg.context, rv, {})

    def sw_interface_dump(self, reg: Registration, msg: Any) -> None:
        wanted = int(msg.sw_if_index)
        ifaces = self.sim.state.interfaces
        if wanted in (U32_MAX, 0):
            selected = [ifaces[k] for k in sorted(ifaces)]
        else:
            one = ifaces.get(wanted)
            selected = [one] if one is not None else []
        if msg.name_filter_valid:
            needle = str(msg.name_filter).lower()
            selected = [i for i in selected if needle in i.name.lower()]
        for iface in selected:
            self.sim.details(reg, "sw_interface_details", msg.context, iface_details(iface))

    def ip_address_dump(self, reg: Registration, msg: Any) -> None:
        iface = self.sim.state.interfaces.get(int(msg.sw_if_index))
        if iface is None:
            return
        v6 = bool(msg.is_ipv6)
        for addr, length in iface.addresses:
            if (addr.version == 6) == v6:
                self.sim.details(
                    reg,
                    "ip_address_details",
                    msg.context,
                    {"sw_if_index": iface.sw_if_index, "prefix": model.prefix_struct(addr, length)},
                )

    def ip_table_add_del(self, reg: Registration, msg: Any) -> None:
        t = msg.table
        rv, out = self.sim.state.table_add_del(
            bool(msg.is_add), int(t.table_id), bool(t.is_ip6), str(t.name)
        )
        self.sim.reply(reg, "ip_table_add_del", msg.context, rv, out)

    def ip_table_dump(self, reg: Registration, msg: Any) -> None:
        for table in list(self.sim.state.tables.values()):
            fields = {"table_id": table.table_id, "is_ip6": table.is_ip6, "name": table.name}
            self.sim.details(reg, "ip_table_details", msg.context, {"table": fields})

    def sw_interface_get_table(self, reg: Registration, msg: Any) -> None:
        iface = self.sim.state.interfaces.get(int(msg.sw_if_index))
        if iface is None:
            self.sim.reply_rv(reg, "sw_interface_get_table", msg.context, INVALID_SW_IF_INDEX)
            return
        vrf_id = iface.vrf[1 if msg.is_ipv6 else 0]
        self.sim.reply(reg, "sw_interface_get_table", msg.context, 0, {"vrf_id": vrf_id})

    def ip_route_add_del(self, reg: Registration, msg: Any) -> None:
        route = msg.route
        addr, length = model.to_interface(route.prefix)
        paths = [path_from_wire(p) for p in list(route.paths)[: int(route.n_paths)]]
        rv, out = self.sim.state.route_add_del(
            bool(msg.is_add), bool(msg.is_multipath), int(route.table_id), addr, length, paths
        )
        self.sim.reply(reg, "ip_route_add_del", msg.context, rv, out)

    def ip_route_dump(self, reg: Registration, msg: Any) -> None:
        t = msg.table
        table_id = int(t.table_id)
        is_ip6 = bool(t.is_ip6)
        for (net, length), paths, stats_index in self.sim.state.route_entries(table_id, is_ip6):
            self.sim.details(
                reg,
                "ip_route_details",
                msg.context,
                {
                    "route": {
                        "table_id": table_id,
                        "stats_index": stats_index,
                        "prefix": model.prefix_struct_int(net, length, is_ip6),
                        "n_paths": len(paths),
                        "paths": [p.wire for p in paths],
                    }
                },
            )

    # -- tap / memif -------------------------------------------------------------------

    def tap_create_v3(self, reg: Registration, msg: Any) -> None:
        rv, out = self.sim.state.tap_create(msg, tag=str(msg.tag))
        self.sim.reply(reg, "tap_create_v3", msg.context, rv, out)

    def tap_delete_v2(self, reg: Registration, msg: Any) -> None:
        rv, out = self.sim.state.tap_delete(int(msg.sw_if_index))
        self.sim.reply(reg, "tap_delete_v2", msg.context, rv, out)

    def sw_interface_tap_v2_dump(self, reg: Registration, msg: Any) -> None:
        wanted = int(msg.sw_if_index)
        for iface in self.sim.state.of_kind("tap"):
            idx = iface.sw_if_index
            if wanted not in (U32_MAX, idx):
                continue
            x = iface.extra
            p4 = x.get("host_ip4_prefix")
            p6 = x.get("host_ip6_prefix")
            self.sim.details(
                reg,
                "sw_interface_tap_v2_details",
                msg.context,
                {
                    "sw_if_index": idx,
                    "id": x["id"],
                    "tx_ring_sz": x["tx_ring_sz"],
                    "rx_ring_sz": x["rx_ring_sz"],
                    "host_mtu_size": x["host_mtu_size"],
                    "host_mac_addr": x["host_mac_addr"],
                    "host_ip4_prefix": prefix_or_zero(p4, 4),
                    "host_ip6_prefix": prefix_or_zero(p6, 6),
                    "tap_flags": x["tap_flags"],
                    "dev_name": iface.name,
                    "host_if_name": x["host_if_name"],
                    "host_namespace": x["host_namespace"],
                    "host_bridge": x["host_bridge"],
                },
            )

    def memif_socket_filename_add_del_v2(self, reg: Registration, msg: Any) -> None:
        rv, out = self.sim.state.memif_socket(
            bool(msg.is_add), int(msg.socket_id), str(msg.socket_filename)
        )
        self.sim.reply(reg, "memif_socket_filename_add_del_v2", msg.context, rv, out)

    def memif_create_v2(self, reg: Registration, msg: Any) -> None:
        rv, out = self.sim.state.memif_create(msg)
        self.sim.reply(reg, "memif_create_v2", msg.context, rv, out)

    def memif_delete(self, reg: Registration, msg: Any) -> None:
        rv, out = self.sim.state.memif_delete(int(msg.sw_if_index))
        self.sim.reply(reg, "memif_delete", msg.context, rv, out)

    def memif_dump(self, reg: Registration, msg: Any) -> None:
        for iface in self.sim.state.of_kind("memif"):
            x = iface.extra
            self.sim.details(
                reg,
                "memif_details",
                msg.context,
                {
                    "sw_if_index": iface.sw_if_index,
                    "hw_addr": iface.mac,
                    "id": x["id"],
                    "role": x["role"],
                    "mode": x["mode"],
                    # a memif that never connected has no rings yet: the real VPP shows
                    # ring_size 1 (1 << log2 0), buffer_size 0 and no zero copy
                    "zero_copy": False,
                    "socket_id": x["socket_id"],
                    "ring_size": 1,
                    "buffer_size": 0,
                    "flags": 1 if iface.admin_up else 0,
                    "if_name": iface.name,
                },
            )

    # -- bridge domains ----------------------------------------------------------------

    def bridge_domain_add_del_v2(self, reg: Registration, msg: Any) -> None:
        rv, out = self.sim.state.bd_add_del(msg)
        self.sim.reply(reg, "bridge_domain_add_del_v2", msg.context, rv, out)

    def sw_interface_set_l2_bridge(self, reg: Registration, msg: Any) -> None:
        rv, out = self.sim.state.set_l2_bridge(
            int(msg.rx_sw_if_index),
            int(msg.bd_id),
            int(msg.port_type),
            int(msg.shg),
            bool(msg.enable),
        )
        self.sim.reply(reg, "sw_interface_set_l2_bridge", msg.context, rv, out)

    def bridge_domain_dump(self, reg: Registration, msg: Any) -> None:
        bd_id = int(msg.bd_id)
        if int(msg.sw_if_index) != U32_MAX or bd_id == 0:
            return  # VPP: filtering by interface is not implemented; bd 0 is never shown
        bds = self.sim.state.bridge_domains
        if bd_id == U32_MAX:
            selected = self.sim.state.bd_dump_order()
        else:
            selected = [bds[bd_id]] if bd_id in bds else []
        for bd in selected:
            members = [
                {"context": 0, "sw_if_index": sw, "shg": shg}
                for sw, shg in self.sim.state.bd_members(bd)
            ]
            self.sim.details(
                reg,
                "bridge_domain_details",
                msg.context,
                {
                    "bd_id": bd.bd_id,
                    "flood": bd.flood,
                    "uu_flood": bd.uu_flood,
                    "forward": bd.forward,
                    "learn": bd.learn,
                    "arp_term": bd.arp_term,
                    "arp_ufwd": bd.arp_ufwd,
                    "mac_age": bd.mac_age,
                    "bd_tag": bd.tag,
                    "bvi_sw_if_index": bd.bvi,
                    "uu_fwd_sw_if_index": bd.uu_fwd,
                    "n_sw_ifs": len(members),
                    "sw_if_details": members,
                },
            )


def iface_details(iface: model.Interface) -> dict[str, Any]:
    return {
        "sw_if_index": iface.sw_if_index,
        "sup_sw_if_index": iface.sw_if_index,
        "l2_address": iface.mac,
        "flags": iface.flags,
        "type": 0,
        "link_duplex": 0,
        "link_speed": 0,
        "link_mtu": iface.link_mtu,
        "mtu": list(iface.mtu),
        "interface_name": iface.name,
        "interface_dev_type": iface.dev_type,
        "tag": iface.tag,
    }


def prefix_or_zero(value: Any, version: int) -> Any:
    # tap host prefixes are ip4/ip6_address_with_prefix: plain interface objects
    if value is not None:
        with contextlib.suppress(Exception):
            addr, length = model.to_interface(value)
            return ipaddress.ip_interface((addr, length))
    return ipaddress.ip_interface("0.0.0.0/0" if version == 4 else "::/0")


def path_from_wire(p: Any) -> FibPath:
    proto = int(p.proto)
    nh_raw = p.nh.address
    nh = model.union_address(nh_raw, 1 if proto == 1 else 0)
    return FibPath(
        sw_if_index=int(p.sw_if_index),
        table_id=int(p.table_id),
        rpf_id=int(p.rpf_id),
        weight=int(p.weight) or 1,
        preference=int(p.preference),
        type=int(p.type),
        flags=int(p.flags),
        proto=proto,
        nh=None if int(nh) == 0 else nh,
        via_label=int(p.nh.via_label),
        obj_id=int(p.nh.obj_id),
        classify_table_index=int(p.nh.classify_table_index),
    )
