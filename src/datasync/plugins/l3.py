"""The VRF-table and route plugins.

VPP keeps no tag on tables and routes, so both correlate by identity (a table by id and
protocol; a route by table, prefix and path) and know their own objects from the
ledger (see :class:`Ledger`): an operator's route or table is never touched. Table 0 is
VPP's own and always there. A vpp-agent route is one path of a FIB entry, so routes are
added and removed as paths (``is_multipath``): two keys with one prefix and two next hops
are two paths of one entry. A route waits (PENDING) for its outgoing interface and its
VRF tables; before a table or an interface goes away, the routes through it are removed.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

import msgspec

from ..errors import InvalidValueError
from ..idx import IdxEvent
from .base import U32_MAX, Call, VppContext, VppPlugin, vrf_index, vrf_name, vrf_table
from .models import (
    ROUTE_PREFIX,
    VRF_PREFIX,
    Route,
    RouteSpec,
    RouteType,
    VrfProtocol,
    VrfTable,
    check_route,
    check_vrf,
    decode,
)

__all__ = ["RoutePlugin", "VrfPlugin"]

log = logging.getLogger("datasync.plugins.l3")

#: fib_path_type: FIB_API_PATH_TYPE_NORMAL, FIB_API_PATH_TYPE_DROP
PATH_NORMAL, PATH_DROP = 0, 2


class VrfPlugin(VppPlugin[VrfTable]):
    """Keeps VPP's VRF tables; owns the VRF IDX map (``IPV4/<id>`` -> id)."""

    name = "vrfs"
    depends_on: Sequence[str] = ()

    def __init__(self, ctx: VppContext, label: str) -> None:
        super().__init__(ctx, VRF_PREFIX.format(label=label))
        self.idx = ctx.vrfs
        self.ledger = ctx.ledger.of(self.name)
        #: tables a key asked for that VPP had already (an operator's): never deleted
        self.adopted = ctx.ledger.of(self.name + ".adopted")
        #: (table id, is IPv6) -> name, as VPP has them
        self.have: dict[tuple[int, bool], str] = {}

    def parse(self, key: str, value: bytes) -> VrfTable:
        m = decode(VrfTable, key, value)
        check_vrf(key, self.name_of(key), m)
        return m

    def forget(self) -> None:
        self.have = {}

    async def read(self) -> None:
        self.have = {
            (int(d.table.table_id), bool(d.table.is_ip6)): str(d.table.name)
            for d in await self.client.dump("ip_table_dump")
        }
        stale = [e.name for e in self.idx if _ident_of_name(e.name) not in self.have]
        await self.announce_deletes(self.idx, stale)
        # the tables this agent made are known on IDX before any of them may be deleted,
        # so that the delete reaches the interfaces and routes that use them
        for value in [*self.ledger.values(), *(self.values[k].decode() for k in self.desired)]:
            ident = _vrf_ident(value)
            if ident[0] and ident in self.have:
                self._put_idx(ident)

    def _put_idx(self, ident: tuple[int, bool]) -> None:
        name = vrf_name(ident[1], ident[0])
        if name not in self.idx:
            self.idx.put(name, vrf_index(ident[1], ident[0]), self.ctx.epoch)

    async def apply(self, keys: Sequence[str], full: bool) -> None:
        deletes: dict[str, tuple[int, bool]] = {}
        creates: list[tuple[str, VrfTable]] = []
        for key in keys:
            m = self.desired.get(key)
            if m is None:
                if self.deleted(key) and key in self.ledger:
                    deletes[key] = _vrf_ident(self.ledger[key])
                continue
            ident = (m.id, m.protocol is VrfProtocol.IPV6)
            if m.id == 0 or ident in self.have:
                if m.id:
                    if key not in self.ledger:
                        self.ctx.ledger.put(self.name + ".adopted", key, "")
                    self.ctx.ledger.put(self.name, key, self.values[key].decode())
                    self._put_idx(ident)
                self.configured(key)
            elif not self.settled(key):
                creates.append((key, m))
        if full:
            for key, value in list(self.ledger.items()):
                if key not in self.values:
                    deletes.setdefault(key, _vrf_ident(value))
        if deletes:
            await self._delete(deletes)
        self.ctx.ledger.save()
        if creates:
            for key, _m in creates:  # the ledger first: a crash never leaves a table unowned
                self.ctx.ledger.put(self.name, key, self.values[key].decode())
            self.ctx.ledger.save()
            calls = []
            for key, m in creates:
                ident = (m.id, m.protocol is VrfProtocol.IPV6)

                def made(
                    _r: Any, key: str = key, ident: tuple[int, bool] = ident, label: str = m.label
                ) -> None:
                    self.have[ident] = label
                    self._put_idx(ident)
                    self.configured(key)
                    log.info("vrfs: created table %s", vrf_name(ident[1], ident[0]))

                table = {"table_id": m.id, "is_ip6": ident[1], "name": m.label}
                calls.append(
                    Call(key, "ip_table_add_del", {"is_add": True, "table": table},
                         "create", "create the table", made)
                )  # fmt: skip
            await self.send(calls)

    async def _delete(self, deletes: dict[str, tuple[int, bool]]) -> None:
        present = {k: i for k, i in deletes.items() if i in self.have and i[0] != 0}
        for key in set(deletes) - set(present):
            self.ctx.ledger.discard(self.name, key)
            self.ctx.ledger.discard(self.name + ".adopted", key)
        names = {vrf_name(i[1], i[0]): k for k, i in present.items()}
        blocked = await self.announce_deletes(self.idx, names)
        calls = []
        for name, key in names.items():
            if name in blocked:
                self.retry_later(key, f"delete waits for its dependents: {blocked[name]}")
                continue
            ident = present[key]
            if key in self.adopted:  # VPP had it before the key: it stays, unused by us
                self.ctx.ledger.discard(self.name, key)
                self.ctx.ledger.discard(self.name + ".adopted", key)
                continue

            def gone(_r: Any, key: str = key, ident: tuple[int, bool] = ident) -> None:
                self.have.pop(ident, None)
                self.ctx.ledger.discard(self.name, key)
                log.info("vrfs: deleted table %s", vrf_name(ident[1], ident[0]))

            calls.append(
                Call(key, "ip_table_add_del",
                     {"is_add": False, "table": {"table_id": ident[0], "is_ip6": ident[1]}},
                     "delete", "delete the table", gone)
            )  # fmt: skip
        await self.send(calls)
        self.ctx.ledger.save()


def _vrf_ident(value: str) -> tuple[int, bool]:
    m = msgspec.json.decode(value)
    return int(m.get("id", 0)), m.get("protocol", 0) in (1, "IPV6")


def _ident_of_name(name: str) -> tuple[int, bool]:
    proto, _, table = name.partition("/")
    return int(table), proto == "IPV6"


#: (table, is IPv6, prefix, sw_if_index, next hop, path table, path type)
RouteIdent = tuple[int, bool, str, int, str, int, int]


class RoutePlugin(VppPlugin[Route]):
    """Keeps VPP's routes (as FIB paths) as the store wants them."""

    name = "routes"
    depends_on: Sequence[str] = ("interfaces", "vrfs")

    def __init__(self, ctx: VppContext, label: str) -> None:
        super().__init__(ctx, ROUTE_PREFIX.format(label=label))
        self.ledger = ctx.ledger.of(self.name)
        #: routes a key asked for that VPP had already (an operator's, or one equal to a
        #: connected route): never removed by the agent
        self.adopted = ctx.ledger.of(self.name + ".adopted")
        #: every path VPP has: identity -> (weight, preference)
        self.present: dict[RouteIdent, tuple[int, int]] = {}
        #: key -> the identity it was applied as
        self.applied: dict[str, RouteIdent] = {}
        #: the canonical identity of every desired key (parsed once, when validated)
        self.specs: dict[str, RouteSpec] = {}
        self.follow(ctx.interfaces, self._dependency_event)
        self.follow(ctx.vrfs, self._dependency_event)

    def parse(self, key: str, value: bytes) -> Route:
        m = decode(Route, key, value)
        self.specs[key] = check_route(key, self.name_of(key), m)
        return m

    def prune(self) -> None:
        self.specs = {k: v for k, v in self.specs.items() if k in self.desired}

    def forget(self) -> None:
        self.present = {}
        self.applied = {}

    async def read(self) -> None:
        tables = [
            {"table": {"table_id": int(d.table.table_id), "is_ip6": bool(d.table.is_ip6)}}
            for d in await self.client.dump("ip_table_dump")
        ]
        present: dict[RouteIdent, tuple[int, int]] = {}
        for req, details in zip(tables, await self.dump_many("ip_route_dump", tables), strict=True):
            is6 = bool(req["table"]["is_ip6"])
            for d in details:
                r = d.route
                prefix = str(r.prefix)  # an IPv4Network/IPv6Network from the codec
                for p in r.paths[: r.n_paths]:
                    nh = p.nh.address.ip6 if is6 else p.nh.address.ip4  # an IPv4/6Address
                    nh_text = str(nh) if int(nh) else ""
                    ident = (int(r.table_id), is6, prefix, int(p.sw_if_index), nh_text,
                             int(p.table_id), int(p.type))  # fmt: skip
                    present[ident] = (int(p.weight), int(p.preference))
        self.present = present
        self.applied = {}

    def _ident(self, spec: RouteSpec, sw_if_index: int) -> RouteIdent:
        return (spec.vrf_id, spec.is_ip6, spec.network, sw_if_index, spec.next_hop,
                spec.path_table, spec.path_type)  # fmt: skip

    def dependencies(self, key: str) -> list[tuple[str, bool]]:
        m = self.desired.get(key)
        if m is None:
            return []
        is6 = self.specs[key].is_ip6
        out = (
            [(m.outgoing_interface, m.outgoing_interface in self.ctx.interfaces)]
            if m.outgoing_interface
            else []
        )
        for table in sorted({m.vrf_id, m.via_vrf_id if m.type is RouteType.INTER_VRF else 0}):
            if table:
                out.append((vrf_name(is6, table), vrf_name(is6, table) in self.ctx.vrfs))
        return out

    def _missing(self, m: Route, is6: bool) -> list[str]:
        out = []
        if m.outgoing_interface and m.outgoing_interface not in self.ctx.interfaces:
            out.append(m.outgoing_interface)
        for table in {m.vrf_id, m.via_vrf_id if m.type is RouteType.INTER_VRF else 0}:
            if table and vrf_name(is6, table) not in self.ctx.vrfs:
                out.append(vrf_name(is6, table))
        return out

    def _sw_if_index(self, m: Route) -> int:
        if not m.outgoing_interface:
            return U32_MAX
        entry = self.ctx.interfaces.lookup(m.outgoing_interface)
        return entry.index if entry is not None else U32_MAX

    def _remove(self, removes: list[Call], key: str, ident: RouteIdent | None) -> None:
        """Remove ``key``'s path, unless it is adopted (VPP had it before the key)."""
        if ident is not None and key not in self.adopted:
            removes.append(self._call(key, ident, False))

    def _call(self, key: str, ident: RouteIdent, add: bool, weight: int = 1, pref: int = 0) -> Call:
        table, is6, prefix, sw_if_index, nh, path_table, kind = ident
        zero = "::" if is6 else "0.0.0.0"
        path = {
            "sw_if_index": sw_if_index,
            "table_id": path_table,
            "weight": weight,
            "preference": pref,
            "type": kind,
            "proto": 1 if is6 else 0,
            "nh": {"address": {"ip6" if is6 else "ip4": ipaddress.ip_address(nh or zero).packed}},
        }

        def done(_r: Any) -> None:
            if add:
                self.present[ident] = (weight, pref)
                self.applied[key] = ident
            else:
                self.present.pop(ident, None)
                if self.applied.get(key) == ident:
                    del self.applied[key]

        return Call(
            key, "ip_route_add_del",
            {"is_add": add, "is_multipath": True,
             "route": {"table_id": table, "prefix": prefix, "n_paths": 1, "paths": [path]}},
            "create" if add else "delete", f"{'add' if add else 'remove'} route", done,
        )  # fmt: skip

    def _old_ident(self, key: str) -> RouteIdent | None:
        """The path VPP has for what ``key`` was applied as (known this run, or from the
        ledger after an agent restart), or None."""
        ident = self.applied.get(key)
        if ident is not None:
            return ident if ident in self.present else None
        value = self.ledger.get(key)
        if value is None:
            return None
        try:
            m = decode(Route, key, value.encode())
            spec = check_route(key, self.name_of(key), m)
        except InvalidValueError:
            return None
        ident = self._ident(spec, self._sw_if_index(m))
        if ident in self.present:
            return ident
        if m.outgoing_interface and m.outgoing_interface not in self.ctx.interfaces:
            # the interface is not known (yet) here: the path through any interface
            rest = ident[:3], ident[4:]
            for found in self.present:
                if (found[:3], found[4:]) == rest:
                    return found
        return None

    async def apply(self, keys: Sequence[str], full: bool) -> None:
        removes: list[Call] = []
        adds: list[tuple[str, Call]] = []
        done_keys: list[str] = []
        gone: list[str] = []
        for key in keys:
            m = self.desired.get(key)
            old = self._old_ident(key)
            if m is None:
                if self.deleted(key):
                    self._remove(removes, key, old)
                    gone.append(key)
                continue
            if self.settled(key):
                continue
            spec = self.specs[key]
            missing = self._missing(m, spec.is_ip6)
            if missing:
                self._remove(removes, key, old)
                self.pending(key, missing, f"waiting for {', '.join(missing)}")
                continue
            ident = self._ident(spec, self._sw_if_index(m))
            weight, pref = m.weight or 1, m.preference
            if old is not None and old != ident:
                self._remove(removes, key, old)
            found = self.present.get(ident)
            if found == (weight, pref):
                if key not in self.ledger:
                    self.ctx.ledger.put(self.name + ".adopted", key, "")
                self.applied[key] = ident
                self.ctx.ledger.put(self.name, key, self.values[key].decode())
                done_keys.append(key)
                continue
            if found is not None:  # another weight or preference: replace the path
                removes.append(self._call(key, ident, False))
            adds.append((key, self._call(key, ident, True, weight, pref)))
        if full:
            for key in list(self.ledger):
                if key not in self.values:
                    self._remove(removes, key, self._old_ident(key))
                    gone.append(key)
        failed = await self.send(removes)
        for key in gone:
            if key not in failed:
                self.ctx.ledger.discard(self.name, key)
                self.ctx.ledger.discard(self.name + ".adopted", key)
        for key, _c in adds:
            self.ctx.ledger.put(self.name, key, self.values[key].decode())
        self.ctx.ledger.save()
        failed |= await self.send([c for k, c in adds if k not in failed])
        for key in done_keys + [k for k, _c in adds]:
            if key not in failed:
                self.configured(key)

    async def _dependency_event(self, ev: IdxEvent) -> None:
        await self.ensure_read()
        if "/" in ev.name:  # a VRF table (interface names have no '/')
            is6, table = ev.name.startswith("IPV6/"), vrf_table(ev.index)

            def hit(i: RouteIdent) -> bool:
                return i[1] == is6 and table in (i[0], i[5])
        else:
            index = ev.index

            def hit(i: RouteIdent) -> bool:
                return i[3] == index

        calls = []
        keys = []
        for key in set(self.applied) | set(self.ledger):
            ident = self._old_ident(key)
            if ident is not None and hit(ident) and key not in self.adopted:
                calls.append(self._call(key, ident, False))
                keys.append(key)
        failed = await self.send(calls)
        if failed:
            raise RuntimeError(f"could not remove the routes {', '.join(sorted(failed))}")
        for key in keys:
            m = self.desired.get(key)
            if m is not None:
                missing = self._missing(m, self.specs[key].is_ip6)
                self.pending(key, missing, f"waiting for {', '.join(missing)}")
        if keys:
            log.info("routes: removed %d route(s) through %s", len(keys), ev.name)
