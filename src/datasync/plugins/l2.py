"""The bridge-domain plugin: bridge domains, their settings, members and BVI.

A bridge domain is the agent's when VPP holds its name in ``bd_tag``. Members are named
interfaces, resolved through the interface IDX map: a member whose interface does not
exist yet leaves the key PENDING (the members that exist are applied), and an interface
announced for deletion is detached first, then the key waits for it again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..idx import IdxEvent
from .base import U32_MAX, Call, VppContext, VppPlugin
from .models import BD_PREFIX, BridgeDomain, check_bridge_domain, decode

__all__ = ["BridgeDomainPlugin"]

log = logging.getLogger("datasync.plugins.l2")

#: l2_port_type: L2_API_PORT_TYPE_NORMAL, L2_API_PORT_TYPE_BVI
PORT_NORMAL, PORT_BVI = 0, 1

Member = tuple[int, bool]  # (split-horizon group, is the BVI)


@dataclass(slots=True)
class VppBridgeDomain:
    bd_id: int
    settings: tuple[Any, ...]
    #: sw_if_index -> (shg, is BVI)
    members: dict[int, Member] = field(default_factory=dict)


def _settings(m: BridgeDomain) -> tuple[Any, ...]:
    return (m.flood, m.unknown_unicast_flood, m.forward, m.learn, m.arp_termination, m.mac_age)


class BridgeDomainPlugin(VppPlugin[BridgeDomain]):
    """Keeps VPP's bridge domains as the store wants them; detaches announced interfaces."""

    name = "bridge-domains"
    depends_on: Sequence[str] = ("interfaces",)

    def __init__(self, ctx: VppContext, label: str) -> None:
        super().__init__(ctx, BD_PREFIX.format(label=label))
        self.have: dict[str, VppBridgeDomain] = {}
        #: keys that left out a member another bridge domain holds: tried again on change
        self.conflicts: set[str] = set()
        self.follow(ctx.interfaces, self._interface_event)

    def parse(self, key: str, value: bytes) -> BridgeDomain:
        m = decode(BridgeDomain, key, value)
        name = self.name_of(key)
        if not m.name:
            m.name = name
        check_bridge_domain(key, name, m)
        return m

    def forget(self) -> None:
        self.have = {}

    async def read(self) -> None:
        have = {}
        for d in await self.client.dump("bridge_domain_dump", bd_id=U32_MAX, sw_if_index=U32_MAX):
            if not d.bd_tag:
                continue
            settings = (
                bool(d.flood), bool(d.uu_flood), bool(d.forward), bool(d.learn),
                bool(d.arp_term), int(d.mac_age),
            )  # fmt: skip
            bvi = int(d.bvi_sw_if_index)
            members = {
                int(m.sw_if_index): (int(m.shg), int(m.sw_if_index) == bvi)
                for m in d.sw_if_details[: d.n_sw_ifs]
            }
            have[str(d.bd_tag)] = VppBridgeDomain(int(d.bd_id), settings, members)
        self.have = have

    def dependencies(self, key: str) -> list[tuple[str, bool]]:
        m = self.desired.get(key)
        if m is None:
            return []
        return [(i.name, i.name in self.ctx.interfaces) for i in m.interfaces]

    def _owners(self) -> dict[str, str]:
        """Interface name -> the bridge domain key that holds it (VPP puts an interface in
        one bridge domain: the first key, in key order, wins)."""
        owners: dict[str, str] = {}
        for key in sorted(self.desired):
            for member in self.desired[key].interfaces:
                owners.setdefault(member.name, key)
        return owners

    async def apply(self, keys: Sequence[str], full: bool) -> None:
        work: dict[str, BridgeDomain] = {}
        deletes: dict[str, str] = {}
        if not full:  # a change may release a member another key waits for
            keys = sorted(set(keys) | self.conflicts)
        for key, name, m in self.to_apply(keys, self.have, deletes):
            h = self.have.get(name)
            if h is not None and h.settings != _settings(m):
                deletes[name] = key  # VPP cannot change these in place: re-create
            work[key] = m
        if full:
            self.orphans(self.have, deletes)
        if deletes:
            for key in await self._delete(deletes):
                work.pop(key, None)
        if work:
            await self._configure(work)

    def _detach_call(self, key: str, h: VppBridgeDomain, sw_if_index: int) -> Call:
        def detached(_r: Any) -> None:
            h.members.pop(sw_if_index, None)

        return Call(
            key, "sw_interface_set_l2_bridge",
            {"rx_sw_if_index": sw_if_index, "bd_id": h.bd_id, "enable": False},
            "delete", f"remove sw_if_index {sw_if_index}", detached,
        )  # fmt: skip

    async def _delete(self, deletes: dict[str, str]) -> set[str]:
        calls = [
            self._detach_call(key or name, self.have[name], sw)
            for name, key in deletes.items()
            for sw in sorted(self.have[name].members)
        ]
        failed = await self.send(calls)
        remove = []
        for name, key in deletes.items():
            if (key or name) in failed:
                continue

            def gone(_r: Any, name: str = name) -> None:
                self.have.pop(name, None)
                log.info("bridge-domains: deleted %s", name)

            remove.append(
                Call(key or name, "bridge_domain_add_del_v2",
                     {"is_add": False, "bd_id": self.have[name].bd_id},
                     "delete", "delete the bridge domain", gone)
            )  # fmt: skip
        return failed | await self.send(remove)

    async def _configure(self, work: dict[str, BridgeDomain]) -> None:
        failed: set[str] = set()
        calls = []
        for key, m in work.items():
            if m.name in self.have:
                continue

            def made(r: Any, m: BridgeDomain = m) -> None:
                self.have[m.name] = VppBridgeDomain(int(r.bd_id), _settings(m))
                log.info("bridge-domains: created %s (bd_id %d)", m.name, int(r.bd_id))

            calls.append(
                Call(key, "bridge_domain_add_del_v2",
                     {"is_add": True, "bd_id": U32_MAX, "bd_tag": m.name, "flood": m.flood,
                      "uu_flood": m.unknown_unicast_flood, "forward": m.forward,
                      "learn": m.learn, "arp_term": m.arp_termination, "mac_age": m.mac_age},
                     "create", "create the bridge domain", made)
            )  # fmt: skip
        failed |= await self.send(calls)
        wanted: dict[str, dict[int, Member]] = {}
        missing: dict[str, list[str]] = {}
        taken: dict[str, list[str]] = {}
        owners = self._owners()
        detach = []
        for key, m in work.items():
            if key in failed:
                continue
            h = self.have[m.name]
            want: dict[int, Member] = {}
            for member in m.interfaces:
                if owners[member.name] != key:
                    taken.setdefault(key, []).append(member.name)
                    continue
                entry = self.ctx.interfaces.lookup(member.name)
                if entry is None:
                    missing.setdefault(key, []).append(member.name)
                else:
                    want[entry.index] = (
                        member.split_horizon_group,
                        member.bridged_virtual_interface,
                    )
            wanted[key] = want
            detach += [self._detach_call(key, h, sw) for sw in sorted(h.members) if sw not in want]
        failed |= await self.send(detach)
        # a BVI moves last: VPP allows one per bridge domain
        attach: list[Call] = []
        for key, m in work.items():
            if key in failed:
                continue
            h = self.have[m.name]
            for sw, mem in sorted(wanted[key].items(), key=lambda x: x[1][1]):
                if h.members.get(sw) == mem:
                    continue

                def attached(
                    _r: Any, h: VppBridgeDomain = h, sw: int = sw, mem: Member = mem
                ) -> None:
                    h.members[sw] = mem

                attach.append(
                    Call(key, "sw_interface_set_l2_bridge",
                         {"rx_sw_if_index": sw, "bd_id": h.bd_id, "enable": True, "shg": mem[0],
                          "port_type": PORT_BVI if mem[1] else PORT_NORMAL},
                         "update", f"add sw_if_index {sw}", attached)
                )  # fmt: skip
        failed |= await self.send(attach)
        for key in work:
            self.conflicts.discard(key)
            if key in failed:
                continue
            if key in taken:
                self.conflicts.add(key)
                others = ", ".join(f"{n} (in {self.name_of(owners[n])})" for n in taken[key])
                self.pending(key, (), f"interface already in another bridge domain: {others}")
            elif key in missing:
                names = missing[key]
                self.pending(key, names, f"waiting for interface {', '.join(names)}")
            else:
                self.configured(key)

    async def _interface_event(self, ev: IdxEvent) -> None:
        await self.ensure_read()
        calls = []
        affected = []
        for name, h in self.have.items():
            if ev.index in h.members:
                key = self.prefix + name
                calls.append(self._detach_call(key, h, ev.index))
                affected.append(key)
        failed = await self.send(calls)
        if failed:
            raise RuntimeError(f"could not detach {ev.name} from {', '.join(sorted(failed))}")
        for key in affected:
            log.info("bridge-domains: detached %s from %s", ev.name, self.name_of(key))
            m = self.desired.get(key)
            if m is not None and any(i.name == ev.name for i in m.interfaces):
                missing = [i.name for i in m.interfaces if i.name not in self.ctx.interfaces]
                self.pending(key, missing, f"waiting for interface {', '.join(missing)}")
