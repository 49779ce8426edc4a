"""``datasync demo``: the core at work on the embedded store and an in-memory dataplane.

Two plugins in the shape of the brief's example: interfaces, and bridge domains
that depend on them. The bridge-domain plugin watches the interface IDX mapping;
when the interface plugin must delete an interface, it announces the delete on IDX,
waits until the bridge-domain plugin detached it and called ``done()``, and only then
deletes it. The demo then injects a dataplane restart and shows the resync.

Keys and JSON follow the vpp-agent layout, so the same data works with the VPP
plugins later: ``/vnf-agent/<label>/config/vpp/v2/interfaces/<name>`` and
``/vnf-agent/<label>/config/vpp/l2/v2/bridge-domain/<name>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..api import ChangeEvent, KeyVal, Op, ResyncEvent
from ..errors import InvalidValueError
from ..idx import IdxEvent, NameToIndex
from ..resync import Orchestrator, ResyncConfig, RoundFinished, RoundStarted
from ..transport.local import LocalStore

log = logging.getLogger("datasync.demo")

IF_PREFIX = "/vnf-agent/{label}/config/vpp/v2/interfaces/"
BD_PREFIX = "/vnf-agent/{label}/config/vpp/l2/v2/bridge-domain/"


class DanglingReferenceError(RuntimeError):
    """The fake dataplane refuses what a real VPP would leave inconsistent."""


@dataclass
class FakeDataplane:
    """An in-memory dataplane that records every operation in order."""

    interfaces: dict[str, int] = field(default_factory=dict)
    bridge_domains: dict[str, set[str]] = field(default_factory=dict)
    ops: list[tuple[str, ...]] = field(default_factory=list)
    _next_index: int = 1

    def create_interface(self, name: str) -> int:
        index = self._next_index
        self._next_index += 1
        self.interfaces[name] = index
        self.ops.append(("create-if", name))
        return index

    def delete_interface(self, name: str) -> None:
        holders = sorted(bd for bd, members in self.bridge_domains.items() if name in members)
        if holders:
            self.ops.append(("VIOLATION delete-if in bd", name, *holders))
            raise DanglingReferenceError(f"interface {name} is still in bridge domain {holders}")
        del self.interfaces[name]
        self.ops.append(("delete-if", name))

    def set_bd(self, bd: str, members: set[str]) -> None:
        missing = sorted(m for m in members if m not in self.interfaces)
        if missing:
            raise DanglingReferenceError(f"bridge domain {bd}: no interface {missing}")
        if self.bridge_domains.get(bd) != members:
            self.bridge_domains[bd] = set(members)
            self.ops.append(("set-bd", bd, *sorted(members)))

    def detach(self, bd: str, name: str) -> None:
        self.bridge_domains[bd].discard(name)
        self.ops.append(("detach", bd, name))

    def delete_bd(self, bd: str) -> None:
        del self.bridge_domains[bd]
        self.ops.append(("delete-bd", bd))

    def restart(self) -> None:
        """Lose all state, as a crashed VPP does."""
        self.interfaces.clear()
        self.bridge_domains.clear()
        self.ops.append(("restart",))


def _name_of(kv_key: str, prefix: str) -> str:
    return kv_key[len(prefix) :]


#: values above this are invalid (the sources deliver them; validation rejects them)
MAX_VALUE_BYTES = 1 << 20


def parse_json(key: str, value: bytes) -> dict[str, Any]:
    """Decode a JSON object value; errors name the key."""
    if len(value) > MAX_VALUE_BYTES:
        raise InvalidValueError(key, f"{len(value)} bytes exceeds {MAX_VALUE_BYTES}")
    try:
        doc = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidValueError(key, f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidValueError(key, f"expected a JSON object, got {type(doc).__name__}")
    return doc


class InterfacePlugin:
    """Creates and deletes interfaces; owns the interface IDX mapping."""

    depends_on: Sequence[str] = ()

    def __init__(self, dp: FakeDataplane, idx: NameToIndex, label: str, ack_timeout: float = 5):
        self.name = "interfaces"
        self.prefix = IF_PREFIX.format(label=label)
        self.prefixes = [self.prefix]
        self.dp = dp
        self.idx = idx
        self.ack_timeout = ack_timeout
        #: keys whose values were rejected, with the reason (terminal until they change)
        self.invalid: dict[str, str] = {}

    def _desired(self, kvs: dict[str, KeyVal]) -> tuple[set[str], set[str]]:
        """Names with valid values, and names whose values are invalid.

        An invalid value is terminal until it changes: it is not applied, and what the
        dataplane already has for that name is left alone (in resync and change alike).
        """
        valid, invalid = set(), set()
        for key, kv in kvs.items():
            name = _name_of(key, self.prefix)
            try:
                parse_json(key, kv.value)
            except InvalidValueError as exc:
                self.invalid[key] = exc.reason
                log.warning("%s", exc)
                invalid.add(name)
                continue
            self.invalid.pop(key, None)
            valid.add(name)
        return valid, invalid

    async def _delete(self, name: str) -> None:
        note = self.idx.delete(name)
        if note is not None:
            log.info("interfaces: announced delete of %s on IDX, waiting for watchers", name)
            await note.wait(self.ack_timeout)
        self.dp.delete_interface(name)
        log.info("interfaces: deleted %s", name)

    def _create(self, name: str) -> None:
        index = self.dp.create_interface(name)
        self.idx.put(name, index)
        log.info("interfaces: created %s (index %d)", name, index)

    async def resync(self, ev: ResyncEvent) -> None:
        desired, invalid = self._desired(dict(ev.kvs))
        for name in sorted(set(self.dp.interfaces) - desired - invalid):
            await self._delete(name)
        for name in sorted(desired - set(self.dp.interfaces)):
            self._create(name)
        for name in sorted(desired & set(self.dp.interfaces)):
            if self.idx.lookup(name) is None:  # e.g. found in the dataplane after a restart
                self.idx.put(name, self.dp.interfaces[name])

    async def change(self, ev: ChangeEvent) -> None:
        for ch in ev.changes:
            name = _name_of(ch.key, self.prefix)
            if ch.op is Op.DELETE:
                self.invalid.pop(ch.key, None)
                if name in self.dp.interfaces:
                    await self._delete(name)
                continue
            assert ch.value is not None
            valid, _ = self._desired({ch.key: KeyVal(ch.key, ch.value, ch.revision)})
            if not valid:
                continue
            if name not in self.dp.interfaces:
                self._create(name)


class BridgeDomainPlugin:
    """Keeps bridge domains and their members; detaches interfaces announced on IDX."""

    depends_on: Sequence[str] = ("interfaces",)

    def __init__(self, dp: FakeDataplane, idx: NameToIndex, label: str) -> None:
        self.name = "bridge-domains"
        self.prefix = BD_PREFIX.format(label=label)
        self.prefixes = [self.prefix]
        self.dp = dp
        self.desired: dict[str, set[str]] = {}
        self.invalid: dict[str, str] = {}
        self._sub = idx.watch(self.name)
        self._idx_task = asyncio.ensure_future(self._follow_idx())

    async def _follow_idx(self) -> None:
        async for ev in self._sub:
            self._on_idx(ev)

    def _on_idx(self, ev: IdxEvent) -> None:
        try:
            if ev.op is Op.DELETE:
                for bd, members in self.dp.bridge_domains.items():
                    if ev.name in members:
                        self.dp.detach(bd, ev.name)
                        log.info("bridge-domains: detached %s from %s", ev.name, bd)
            else:
                self._apply_all()  # a member that was missing may be there now
        except Exception as exc:
            ev.done(exc)
        else:
            ev.done()

    def _parse(self, key: str, value: bytes) -> set[str] | None:
        try:
            doc = parse_json(key, value)
            members = {i["name"] for i in doc.get("interfaces", [])}
        except InvalidValueError as exc:
            self.invalid[key] = exc.reason
            log.warning("%s", exc)
            return None
        except (TypeError, KeyError) as exc:
            self.invalid[key] = f"bad interfaces list: {exc!r}"
            log.warning("invalid value for key %r: bad interfaces list", key)
            return None
        self.invalid.pop(key, None)
        return members

    def _apply_all(self) -> None:
        for bd, members in self.desired.items():
            # Members whose interface does not exist yet stay pending, never dangling.
            self.dp.set_bd(bd, {m for m in members if m in self.dp.interfaces})

    async def resync(self, ev: ResyncEvent) -> None:
        self.desired = {}
        for key, kv in ev.kvs.items():
            members = self._parse(key, kv.value)
            if members is not None:
                self.desired[_name_of(key, self.prefix)] = members
        for bd in sorted(set(self.dp.bridge_domains) - set(self.desired)):
            self.dp.delete_bd(bd)
        self._apply_all()

    async def change(self, ev: ChangeEvent) -> None:
        for ch in ev.changes:
            bd = _name_of(ch.key, self.prefix)
            if ch.op is Op.DELETE:
                self.desired.pop(bd, None)
                if bd in self.dp.bridge_domains:
                    self.dp.delete_bd(bd)
                continue
            assert ch.value is not None
            members = self._parse(ch.key, ch.value)
            if members is not None:
                self.desired[bd] = members
        self._apply_all()

    async def close(self) -> None:
        self._sub.close()
        self._idx_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._idx_task


def _iface(name: str) -> bytes:
    return json.dumps({"name": name, "type": "SOFTWARE_LOOPBACK", "enabled": True}).encode()


def _bd(name: str, members: Sequence[str]) -> bytes:
    return json.dumps({"name": name, "interfaces": [{"name": m} for m in members]}).encode()


async def run_demo(data_dir: Path, label: str = "demo") -> int:
    """The scripted demo; returns the process exit code."""
    store = LocalStore(data_dir / "datasync.db", poll_interval=0.05)
    if_p, bd_p = IF_PREFIX.format(label=label), BD_PREFIX.format(label=label)
    await store.txn(
        {if_p + "loop0": _iface("loop0"), if_p + "loop1": _iface("loop1"),
         bd_p + "bd1": _bd("bd1", ["loop0", "loop1"])},
        [if_p + "stale0"],
    )  # fmt: skip

    # The dataplane as a previous run left it: stale0 is no longer wanted, but it is
    # still a member of bd1, so it must be detached before it may be deleted.
    dp = FakeDataplane()
    idx = NameToIndex("interfaces")
    for name in ("loop0", "stale0"):
        idx.put(name, dp.create_interface(name))
    dp.set_bd("bd1", {"loop0", "stale0"})

    orch = Orchestrator([store], ResyncConfig(resync_timeout=5, backoff_initial=0.2))
    orch.add_listener(_print_event)
    ifs = InterfacePlugin(dp, idx, label)
    bds = BridgeDomainPlugin(dp, idx, label)
    orch.add_plugin(bds)
    orch.add_plugin(ifs)
    step = _Steps()
    try:
        step("start-up resync: the store wants loop0, loop1 and bd1{loop0, loop1}")
        await orch.start()
        await orch.wait_in_sync(10)
        _show(dp)

        step("live change: add loop2 to bd1, and a malformed value")
        await store.txn({if_p + "loop2": _iface("loop2"),
                         bd_p + "bd1": _bd("bd1", ["loop0", "loop1", "loop2"])})  # fmt: skip
        await store.put(if_p + "broken", b"{not json")
        await _settle(orch, lambda: "loop2" in dp.bridge_domains.get("bd1", set()))
        _show(dp)
        print(f"  rejected keys: {ifs.invalid}")

        step("live delete: loop1 (IDX delete -> detach from bd1 -> delete)")
        await store.delete(if_p + "loop1")
        await _settle(orch, lambda: "loop1" not in dp.interfaces)
        _show(dp)

        step("fault: the dataplane restarts and loses its state; a plugin reports it")
        dp.restart()
        idx.clear()
        orch.report_error("interfaces", RuntimeError("dataplane restarted"))
        await asyncio.sleep(0)
        await orch.wait_in_sync(10)
        _show(dp)

        violations = [op for op in dp.ops if op[0].startswith("VIOLATION")]
        st = orch.status()
        print()
        print(
            f"status: {st.state.name}, in_sync={st.in_sync}, rounds={st.rounds}, "
            f"failed_rounds={st.failed_rounds}, "
            f"dangling-reference violations={len(violations)}"
        )
        print("dataplane operations in order:")
        for op in dp.ops:
            print("   ", " ".join(op))
        return 0 if st.in_sync and not violations else 1
    finally:
        await bds.close()
        await orch.stop()
        await store.close()


class _Steps:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, text: str) -> None:
        self.n += 1
        print(f"\n== {self.n}. {text}")


def _print_event(ev: object) -> None:
    if isinstance(ev, RoundStarted):
        print(f"  [round {ev.round}] started: {'; '.join(ev.reasons)}")
    elif isinstance(ev, RoundFinished):
        outcome = "in sync" if ev.ok else f"FAILED {dict(ev.errors)}"
        print(f"  [round {ev.round}] finished in {ev.duration * 1000:.1f} ms: {outcome}")


def _show(dp: FakeDataplane) -> None:
    bds = {bd: sorted(m) for bd, m in sorted(dp.bridge_domains.items())}
    print(f"  dataplane: interfaces={sorted(dp.interfaces)} bridge_domains={bds}")


async def _settle(orch: Orchestrator, cond: Any) -> None:
    async with asyncio.timeout(10):
        while not cond():  # noqa: ASYNC110 - the demo polls its fake dataplane
            await asyncio.sleep(0.01)
    await orch.wait_in_sync(10)


def main(argv: Sequence[str] | None = None) -> int:
    """``datasync demo [--data-dir DIR] [--label LABEL] [-v]``."""
    parser = argparse.ArgumentParser(prog="datasync demo", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="store directory (default: a temp dir)")
    parser.add_argument("--label", default="demo", help="agent label in the keys")
    parser.add_argument("-v", "--verbose", action="store_true", help="log plugin actions")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="  %(name)s: %(message)s",
        stream=sys.stdout,
    )
    import uvloop

    from .. import implementation
    from ..buffer import IMPLEMENTATION

    print(f"datasync demo on uvloop; event buffer: {IMPLEMENTATION} ({implementation()})")
    if args.data_dir is not None:
        return uvloop.run(run_demo(args.data_dir, args.label))
    with tempfile.TemporaryDirectory(prefix="datasync-demo-") as tmp:
        return uvloop.run(run_demo(Path(tmp), args.label))
