"""Agent-process rows: ``datasync agent`` as a process of its own on a real etcd, driving
``datasync vppsim --strict`` (another process, which outlives the agent as a VPP does),
crashed by a failpoint's ``exit(137)`` or paused with SIGSTOP, by PID. The history comes
from the agent's HTTP API (``AgentRecorder``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from datasync.testing import invariants as inv
from datasync.testing.history import History
from datasync.testing.procs import AgentProcess, SimProcess, wait_for
from datasync.testing.recorders import AgentRecorder
from datasync.transport.etcd import EtcdSource
from tests.etcd.etcdserver import EtcdCluster

from .harness import IF, LABEL, interfaces, loop_if
from .stores import store_now

pytestmark = pytest.mark.etcd

Record = Callable[[str, object], None]
WAIT = 60.0  # a safety net for slow process start-ups on 2 cores, never a goal


@pytest.fixture
def vppsim(tmp_path: Path) -> Iterator[SimProcess]:
    sim = SimProcess(tmp_path / "sim", args=["--strict", "--seed", "1"]).start()
    try:
        yield sim
    finally:
        sim.close()


def agent_config(endpoints: list[str], sim: SimProcess, label: str = LABEL) -> str:
    eps = ", ".join(f'"{e}"' for e in endpoints)
    return (
        f'[agent]\nlabel = "{label}"\n'
        '[sources]\norder = ["etcd"]\n[sources.local]\nenabled = false\n'
        "[sources.rest]\nenabled = false\n"
        f"[sources.etcd]\nendpoints = [{eps}]\nconnect_timeout = 2.0\nrequest_timeout = 5.0\n"
        f'[vpp]\nconnect = "socket"\nsocket = "{sim.path}"\nprobe_interval = 0.5\n'
        "[resync]\nbackoff_initial = 0.1\nbackoff_max = 1.0\n"
    )


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _write(endpoints: list[str], puts: dict[str, bytes], deletes: list[str] = ()) -> int:  # type: ignore[assignment]
    src = EtcdSource(name="pub", endpoints=endpoints, recycle_interval=None)
    try:
        return await src.txn(puts, list(deletes))
    finally:
        await src.close()


def write(history: History, endpoints: list[str], puts: dict[str, bytes],
          deletes: list[str] | None = None) -> int:  # fmt: skip
    rev = int(run(_write(endpoints, puts, deletes or [])))
    for key, value in puts.items():
        history.truth(key, "put", rev, value)
    for key in deletes or []:
        history.truth(key, "delete", rev)
    return rev


def wait_converged(agent: AgentProcess, sim: SimProcess, endpoints: list[str],
                   timeout: float = WAIT) -> tuple[dict[str, bytes], int]:  # fmt: skip
    """The agent in sync at etcd's head and VPP's tagged interfaces those of the store."""
    store, head = run(store_now(endpoints))
    want = {k[len(IF) :] for k in store if k.startswith(IF)}

    def done() -> bool:
        st = agent.get("/status") or {}
        src = st.get("sources", {}).get("etcd", {})
        return bool(
            st.get("agent", {}).get("in_sync")
            and src.get("applied_revision", 0) >= head
            and {i["tag"] for i in sim.state()["interfaces"] if i["tag"]} == want
        )

    wait_for(done, timeout, 0.1, f"the agent in sync at etcd revision {head}")
    return store, head


def creates(sim: SimProcess) -> int:
    return int(sim.counters()["writes"].get("interface", {}).get("create", 0))


def since(history: History, t0: float) -> History:
    """The events of ``history`` from ``t0`` on (one agent run's)."""
    out = History(seed=history.seed)
    for ev in history.events:
        if ev.t >= t0:
            fields = {k: getattr(ev, k) for k in ev.__dataclass_fields__ if k != "kind"}
            out.add(ev.kind, **fields)
    return out


def report(agent: AgentProcess, history: History, store: dict[str, bytes], head: int,
           expect: inv.Expect, record: Record, sb_writes: int) -> None:  # fmt: skip
    """The invariants over the run; I6 (the watermark never regresses) per agent run: a
    restarted agent starts from 0 before its first round, which is not a regression."""
    agent.recorder.poll()
    final = agent.final(store=store, store_revision=head, source="etcd")
    rep = inv.check(history, final, expect, only=[i for i in inv.CHECKS if i != "I6"])
    starts = history.marks("agent.started")
    last_run = since(history, starts[-1].t) if starts else history
    rep.verdicts.append(inv.CHECKS["I6"](last_run, final, expect))
    t = inv.convergence_time(history, final)
    record("t_conv", None if t is None else round(t, 3))
    rounds = int(agent.status()["agent"].get("rounds", 1))
    record("relists", max(0, rounds - 1))  # of the agent's last run
    record("sb_writes", sb_writes)
    record("invariants", "; ".join(str(v) for v in rep.verdicts if not v.ok) or "ok")
    record("unchecked", " ".join(v.id for v in rep.unchecked))
    rep.raise_for_failures()


@pytest.mark.parametrize(
    "failpoint",
    ["sb.before_call=exit(137)@3", "plugin.bridge-domains.resync=exit(137)",
     "checkpoint.before_commit_rev=exit(137)"],
)  # fmt: skip
def test_f20_agent_crash_mid_resync_restart_no_duplicates_then_zero_writes(
    etcd1: EtcdCluster,
    vppsim: SimProcess,
    tmp_path: Path,
    history: History,
    record_property: Record,
    failpoint: str,
) -> None:
    """F20: the agent dies (exit 137) in its first resync; while it is down one interface's
    key is deleted and another's added; after the restart VPP holds exactly the store: no
    interface created twice, the orphan deleted, no dangling reference; a second restart
    with no change in the store makes 0 VPP writes."""
    eps = etcd1.endpoints
    write(history, eps, interfaces(8))
    agent = AgentProcess(tmp_path / "agent" / "data")
    agent.configure(agent_config(eps, vppsim))
    with AgentRecorder(agent.http, history, source="etcd") as rec:
        agent.recorder = rec
        try:
            agent.start(env={"DATASYNC_FAILPOINTS": failpoint})
        except RuntimeError:
            pass  # it may die before its HTTP API is up
        assert agent.proc is not None
        code = agent.proc.wait(WAIT)
        assert code == 137, agent.output()[-2000:]
        name = failpoint.partition("=")[0]
        assert f"failpoint {name} hit: exit(137)" in agent.output()  # I15
        history.mark("fault.injected", failpoint=failpoint)
        made = creates(vppsim)
        agent.proc = None
        write(history, eps, dict([loop_if("lo20", "10.20.0.1/32")]), [IF + "lo5"])
        agent.start()
        history.mark("agent.started")
        history.mark("fault.healed")
        store, head = wait_converged(agent, vppsim, eps)
        counters = vppsim.counters()
        assert counters["violations"] == 0
        # each interface created at most once ever: lo5 only if it was made before the crash
        assert creates(vppsim) <= made + 1 + (0 if made else 8), counters["writes"]
        tags = {i["tag"] for i in vppsim.state()["interfaces"] if i["tag"]}
        assert "lo5" not in tags and "lo20" in tags
        assert agent.stop() == 0
        vppsim.post("/counters/reset")
        agent.start()
        history.mark("agent.started")
        wait_converged(agent, vppsim, eps)
        again = vppsim.counters()
        assert again["write_ops"] == 0, again["writes"]
        report(agent, history, store, head, inv.Expect(fault="fault.injected"),
               record_property, sb_writes=int(again["changes"]))  # fmt: skip
        assert agent.stop() == 0


def test_f21_agent_paused_store_changed_and_compacted_then_resumed(
    etcd1: EtcdCluster,
    vppsim: SimProcess,
    tmp_path: Path,
    history: History,
    record_property: Record,
) -> None:
    """F21: the agent is SIGSTOPped longer than its watch timeouts; meanwhile keys change,
    one is deleted and the store is compacted to its head; on SIGCONT the agent notices
    (a compacted watch: one relist), and VPP ends as the store, with no stale value
    applied over a newer one."""
    eps = etcd1.endpoints
    write(history, eps, interfaces(8))
    agent = AgentProcess(tmp_path / "agent" / "data")
    agent.configure(agent_config(eps, vppsim))
    with AgentRecorder(agent.http, history, source="etcd") as rec:
        agent.recorder = rec
        agent.start()
        wait_converged(agent, vppsim, eps)
        history.mark("fault.injected")
        agent.pause()
        for i in range(5):
            write(history, eps, dict([loop_if(f"lo{i}", f"10.{120 + i}.0.1/32")]))
        head = write(history, eps, {}, [IF + "lo7"])
        etcd1.compact(head)
        time.sleep(2.0)  # the pause outlasts the source's request timeout (fault length)
        agent.resume()
        history.mark("fault.healed")
        store, head = wait_converged(agent, vppsim, eps)
        assert vppsim.counters()["violations"] == 0
        report(agent, history, store, head, inv.Expect(max_relists=1, fault="fault.injected"),
               record_property, sb_writes=int(vppsim.counters()["changes"]))  # fmt: skip
        assert agent.stop() == 0
