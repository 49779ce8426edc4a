"""Recorders that fill a :class:`~datasync.testing.history.History` while a test runs.

- :class:`EtcdTruthWatcher`: the store's ground truth, from ``etcdctl watch --rev=1 -w json``
  (a process of its own, independent of the agent's etcd client); :class:`KafkaTruthWatcher`
  the same for a Kafka topic, read from the earliest offset;
- :class:`VppWireRecorder`: every VPP API call and its retval, with the dataplane's boot
  epoch (the vpe_pid of its ``control_ping_reply``), read off the binary-API socket by a
  small AF_UNIX proxy the agent connects to instead of VPP (works with the simulator and
  with a real VPP; the agent must use the socket transport, ``vpp.connect = "socket"``:
  shared-memory traffic does not cross the socket);
- :class:`AgentRecorder`: an agent process's rounds, key decisions and status samples,
  polled from its HTTP API (``/history``, ``/status``);
- :func:`record_orchestrator` and :class:`RecordingPlugin`: the same in-process, from an
  :class:`~datasync.resync.Orchestrator`'s events, the plugins' key states and the changes
  each plugin is handed.

Every recorder is a context manager (``start()``/``close()``) and runs in a thread, so sync
and async tests use them alike.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .history import Event, History
from .procs import ETCDCTL

__all__ = [
    "AgentRecorder",
    "EtcdTruthWatcher",
    "KafkaTruthWatcher",
    "RecordingPlugin",
    "VppWireRecorder",
    "record_orchestrator",
]

#: key states (``datasync.plugins.KeyState`` values) as history decisions
STATE_DECISIONS = {
    "CONFIGURED": "applied",
    "PENDING": "pending",
    "INVALID": "invalid",
    "FAILED": "failed",
    "RETRYING": "retrying",
    "REMOVED": "removed",
}


class _Recorder:
    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


# -- the store's ground truth ----------------------------------------------------------------


class EtcdTruthWatcher(_Recorder):
    """Watches every key (or ``prefix``) of the etcd at ``endpoints`` from ``revision``
    (1: the whole history still in the store) and records each event as ``truth``.

    :attr:`confirmed` is the newest revision the watcher has seen; :meth:`wait_caught_up`
    blocks until it reaches a revision, so a test compacts only what the ground truth
    already holds. The watcher re-watches from ``confirmed + 1`` when etcdctl exits (a
    killed or restarted member), and records ``truth.compacted`` when it is told the
    history it asked for is gone.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        history: History,
        prefix: str = "",
        revision: int = 1,
        log: Path | None = None,
    ) -> None:
        self.endpoints = list(endpoints)
        self.history = history
        self.prefix = prefix
        self.confirmed = revision - 1
        self.log = log
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._seen = threading.Condition()

    def start(self) -> EtcdTruthWatcher:
        self._thread = threading.Thread(target=self._run, name="etcd-truth", daemon=True)
        self._thread.start()
        return self

    def _spawn(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [ETCDCTL, "--endpoints=" + ",".join(self.endpoints), "watch", "--prefix",
             self.prefix, f"--rev={self.confirmed + 1}", "-w", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            text=True, env={**os.environ, "ETCDCTL_API": "3"},
        )  # fmt: skip

    def _run(self) -> None:
        while not self._closed.is_set():
            self._proc = proc = self._spawn()
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("{"):
                    self._on_response(json.loads(line))
            proc.wait()
            self._closed.wait(0.2)  # etcd restarting: watch again from confirmed + 1

    def _on_response(self, resp: dict[str, Any]) -> None:
        if resp.get("CompactRevision"):
            self.history.mark("truth.compacted", revision=resp["CompactRevision"])
            self.confirmed = max(self.confirmed, int(resp["CompactRevision"]) - 1)
        for ev in resp.get("Events") or []:
            kv = ev["kv"]
            key = base64.b64decode(kv["key"]).decode("utf-8", "surrogateescape")
            value = base64.b64decode(kv["value"]) if "value" in kv else None
            op = "delete" if ev.get("type") == 1 else "put"
            self.history.truth(key, op, int(kv["mod_revision"]), value if op == "put" else None)
        rev = int(resp.get("Header", {}).get("revision", 0))
        with self._seen:
            self.confirmed = max(self.confirmed, rev)
            self._seen.notify_all()

    def wait_caught_up(self, revision: int, timeout: float = 10.0) -> None:
        """Until the watcher has seen ``revision``; TimeoutError otherwise."""
        with self._seen:
            if not self._seen.wait_for(lambda: self.confirmed >= revision, timeout):
                raise TimeoutError(
                    f"the ground-truth watcher is at revision {self.confirmed}, "
                    f"not {revision}, after {timeout}s"
                )

    def close(self) -> None:
        self._closed.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)
        if self._thread is not None:
            self._thread.join(5)


class KafkaTruthWatcher(_Recorder):
    """Reads ``topic`` from the earliest offset with a consumer of its own (no group, no
    commits) and records each record as ``truth``: ``revision`` is the offset, ``source``
    ``<topic>/<partition>``, a tombstone (no value) a delete. :meth:`wait_caught_up`
    blocks until a partition's records up to an offset are in."""

    def __init__(self, bootstrap: str, topic: str, history: History) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.history = history
        #: partition -> the newest offset recorded
        self.confirmed: dict[int, int] = {}
        self._closed = threading.Event()
        self._seen = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self) -> KafkaTruthWatcher:
        from confluent_kafka import Consumer, TopicPartition

        from .procs import quiet_kafka_logger

        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap, "group.id": "datasync-truth",
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "topic.metadata.refresh.interval.ms": 1000,
        }  # fmt: skip
        config["logger"] = quiet_kafka_logger
        consumer = Consumer(config)
        meta = consumer.list_topics(self.topic, timeout=10).topics[self.topic]
        consumer.assign([TopicPartition(self.topic, p, 0) for p in meta.partitions])
        self._thread = threading.Thread(
            target=self._run, args=(consumer,), name="kafka-truth", daemon=True
        )
        self._thread.start()
        return self

    def _run(self, consumer: Any) -> None:
        try:
            while not self._closed.is_set():
                msg = consumer.poll(0.1)
                if msg is None or msg.error() is not None:
                    continue
                raw = msg.key() or b""
                key = raw.decode("utf-8", "surrogateescape")
                value = msg.value()
                source = f"{msg.topic()}/{msg.partition()}"
                op = "put" if value is not None else "delete"
                self.history.truth(key, op, msg.offset(), value, source=source)
                with self._seen:
                    self.confirmed[msg.partition()] = msg.offset()
                    self._seen.notify_all()
        finally:
            consumer.close()

    def wait_caught_up(self, offset: int, partition: int = 0, timeout: float = 10.0) -> None:
        """Until the record at ``offset`` of ``partition`` is recorded; TimeoutError otherwise."""
        with self._seen:
            if not self._seen.wait_for(
                lambda: self.confirmed.get(partition, -1) >= offset, timeout
            ):
                raise TimeoutError(
                    f"the Kafka ground-truth watcher is at offset "
                    f"{self.confirmed.get(partition)} of partition {partition}, not {offset}"
                )

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(5)


# -- VPP calls -------------------------------------------------------------------------------

_HDR = 16  # the socket framing: >QII, the length at bytes 8..11


class _FrameSplitter:
    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out = []
        while len(self.buf) >= _HDR:
            n = int.from_bytes(self.buf[8:12], "big")
            if len(self.buf) < _HDR + n:
                break
            out.append(bytes(self.buf[_HDR : _HDR + n]))
            del self.buf[: _HDR + n]
        return out


class _WireConn:
    """One client connection: requests by context, the message table, the boot epoch."""

    def __init__(self, rec: VppWireRecorder) -> None:
        self.rec = rec
        self.names: dict[int, str] = {}
        self.pending: dict[int, str] = {}
        self.first_reply = True

    def request(self, body: bytes) -> None:
        if len(body) < 10 or not self.names:
            return  # sockclnt_create (before the table) or garbage
        name = self.names.get(int.from_bytes(body[0:2], "big"), "")
        context = int.from_bytes(body[6:10], "big")
        if name.endswith("_dump"):
            self.rec.history.sb(name, None, self.rec.epoch)
        elif name:
            self.pending[context] = name

    def reply(self, body: bytes) -> None:
        if self.first_reply:  # sockclnt_create_reply: the message table
            self.first_reply = False
            self._table(body)
            return
        if len(body) < 10:
            return
        name = self.names.get(int.from_bytes(body[0:2], "big"), "")
        if not name.endswith("_reply"):
            return  # details and events carry no retval
        context = int.from_bytes(body[2:6], "big")
        retval = int.from_bytes(body[6:10], "big", signed=True)
        if name == "control_ping_reply" and len(body) >= 18:
            self.rec.epoch = int.from_bytes(body[14:18], "big")
        request = self.pending.pop(context, None)
        if request is not None and request != "control_ping":
            self.rec.history.sb(request, retval, self.rec.epoch)

    def _table(self, body: bytes) -> None:
        if len(body) < 20:
            return
        count = int.from_bytes(body[18:20], "big")
        off = 20
        for _ in range(count):
            if off + 66 > len(body):
                break
            index = int.from_bytes(body[off : off + 2], "big")
            raw = body[off + 2 : off + 66].split(b"\0", 1)[0].decode("ascii", "replace")
            self.names[index] = raw.rsplit("_", 1)[0]  # name_crc -> name
            off += 66


class VppWireRecorder(_Recorder):
    """An AF_UNIX proxy in front of the VPP API socket ``upstream``: point the agent at
    :attr:`path` and every call it makes is recorded as ``sb`` (message, retval, epoch;
    dumps with retval None, the ping probes left out)."""

    def __init__(self, upstream: str, history: History, path: str | None = None) -> None:
        self.upstream = upstream
        self.history = history
        self.path = path or upstream + ".rec"
        self.epoch = 0
        self._sock: socket.socket | None = None
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []

    def start(self) -> VppWireRecorder:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        os.fchmod(sock.fileno(), 0o600)
        sock.bind(self.path)
        sock.listen(16)
        sock.settimeout(0.2)
        self._sock = sock
        self._spawn(self._accept)
        return self

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=target, args=args, name="vpp-wire-recorder", daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._closed.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                up.connect(self.upstream)
            except OSError:
                client.close()  # VPP is down: the agent sees a refused connection
                up.close()
                continue
            client.settimeout(None)
            self._conns += [client, up]
            conn = _WireConn(self)
            self._spawn(self._pump, client, up, conn.request)
            self._spawn(self._pump, up, client, conn.reply)

    def _pump(self, src: socket.socket, dst: socket.socket, seen: Callable[[bytes], None]) -> None:
        frames = _FrameSplitter()
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                for body in frames.feed(data):
                    seen(body)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        if self._sock is not None:
            self._sock.close()
        for s in self._conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in self._threads:
            t.join(2)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


# -- the agent's decisions -------------------------------------------------------------------


def _applied(revs: dict[str, int], source: str | None) -> int:
    """The applied revision of ``source``; of the most advanced source when None."""
    if source is not None:
        return revs.get(source, 0)
    return max(revs.values(), default=0)


def _status_sample(doc: dict[str, Any], source: str | None) -> dict[str, Any]:
    agent = doc.get("agent", {})
    revs = {n: s.get("applied_revision", 0) for n, s in doc.get("sources", {}).items()}
    return {
        "in_sync": bool(agent.get("in_sync")),
        "round_running": bool(agent.get("round_running")),
        "rounds": agent.get("rounds", 0),
        "applied_revision": _applied(revs, source),
        "sources": revs,
    }


class AgentRecorder(_Recorder):
    """Polls an agent process's HTTP API (``http``: host:port) every ``interval`` seconds:
    ``/status`` as ``status`` samples, and the agent's own events. An agent in test mode
    serves them at ``/test/history`` (every change its plugins were handed, as ``nb``, with
    source and revision; each key's decisions with the revision they concern; rounds), and
    they are taken as they are; another agent's ``/history`` gives
    ``round.started``/``round.finished`` markers and key ``decision`` events only. A
    sample's ``applied_revision`` is that of ``source`` (of the most advanced source when
    None); ``sources`` has them all."""

    def __init__(
        self, http: str, history: History, interval: float = 0.1, source: str | None = None
    ) -> None:
        self.http = http
        self.source = source
        self.history = history
        self.interval = interval
        self._seen: set[str] = set()
        #: how many of the agent's /test/history events were taken (None: not known yet
        #: whether the agent serves it; False: it does not)
        self._cursor: int | bool | None = None
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> AgentRecorder:
        self._thread = threading.Thread(target=self._run, name="agent-recorder", daemon=True)
        self._thread.start()
        return self

    def _get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(f"http://{self.http}{path}", timeout=2) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None  # paused, killed or restarting: the gap shows in the samples

    def poll(self) -> None:
        """One round of polling (the thread calls it; a test may call it to catch up)."""
        status = self._get("/status")
        if status is None:
            return  # paused, killed or restarting: the gap shows in the samples
        self.history.status(**_status_sample(status, self.source))
        if self._cursor is not False and self._poll_test_history():
            return
        for entry in self._get("/history") or []:
            ident = json.dumps(entry, sort_keys=True)
            if ident in self._seen:
                continue
            self._seen.add(ident)
            t = entry.get("time")
            if "started" in entry:
                extra = {"round": entry["round"], "reasons": entry["started"]}
                self.history.add("phase", t=t, op="round.started", extra=extra)
            elif "ok" in entry:
                extra = {"round": entry["round"], "ok": entry["ok"]}
                self.history.add("phase", t=t, op="round.finished", extra=extra)
            elif "key" in entry:
                decision = STATE_DECISIONS.get(entry.get("state", ""), "")
                if decision:
                    why, plugin = entry.get("reason", ""), entry.get("plugin", "")
                    self.history.add(
                        "decision", t=t, key=entry["key"], decision=decision, reason=why,
                        plugin=plugin,
                    )  # fmt: skip

    def _poll_test_history(self) -> bool:
        cursor = int(self._cursor or 0)
        doc = self._get(f"/test/history?since={cursor}")
        if not isinstance(doc, dict):
            if self._cursor is None:
                self._cursor = False  # up, but not in test mode: /history it is
            return False
        if doc["next"] < cursor:  # a new agent process: its history starts again
            cursor = 0
            doc = self._get("/test/history?since=0")
            if not isinstance(doc, dict):
                return True
        # status samples are this recorder's own (one sampler keeps them in time order)
        self.history.extend(Event.from_json(e) for e in doc["events"] if e["kind"] != "status")
        self._cursor = int(doc["next"])
        return True

    def _run(self) -> None:
        while not self._closed.wait(self.interval):
            self.poll()

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(5)
        self.poll()


# -- in-process --------------------------------------------------------------------------------


def record_orchestrator(
    orch: Any,
    history: History,
    key_states: Any = None,
    source: str | None = None,
    revisions: Mapping[str, int] | None = None,
) -> None:
    """Record an in-process orchestrator's rounds (markers) and a status sample at each of
    its events (``applied_revision`` as :class:`AgentRecorder` has it); with ``key_states``
    (a ``datasync.plugins.StateRegistry``, e.g. ``PluginSet.states``) every key-state
    change as a decision, at the key's revision in ``revisions`` (the ``revisions`` of
    :class:`RecordingPlugin` wrappers: the revision of the value the plugin holds)."""
    from ..resync import RoundFinished, RoundStarted

    def sample() -> None:
        st = orch.status()
        revs = {n: s.applied_revision for n, s in st.sources.items()}
        history.status(in_sync=st.in_sync, round_running=st.round_running, rounds=st.rounds,
                       applied_revision=_applied(revs, source), sources=revs)  # fmt: skip

    def on_event(ev: object) -> None:
        if isinstance(ev, RoundStarted):
            history.mark("round.started", round=ev.round, reasons=list(ev.reasons))
        elif isinstance(ev, RoundFinished):
            history.mark("round.finished", round=ev.round, ok=ev.ok)
        sample()

    orch.add_listener(on_event)
    if key_states is not None:
        for states in key_states.plugins().values():
            states.add_listener(
                lambda plugin, key, status: history.decision(
                    key,
                    "removed" if status is None else STATE_DECISIONS[status.state.value],
                    "" if status is None else status.reason,
                    plugin=plugin,
                    revision=(revisions or {}).get(key, 0),
                )
            )


class RecordingPlugin:
    """Wraps a plugin: each change it is handed is recorded as ``nb`` (with its source and
    revision), each resync's keys as ``nb`` with ``extra.snapshot``; when its ``change``
    returns, every change of the event is ``applied`` at its revision, or ``failed`` with
    the error it raised or acknowledged (per-key outcomes of a plugin that keeps key states
    come from :func:`record_orchestrator`)."""

    def __init__(
        self,
        plugin: Any,
        history: History,
        decisions: bool = True,
        revisions: dict[str, int] | None = None,
    ) -> None:
        self.plugin = plugin
        self.history = history
        #: record applied/failed when ``change`` returns (off for plugins whose key states
        #: :func:`record_orchestrator` records: their outcome is not the return)
        self.decisions = decisions
        #: each key's revision as last handed to the plugin (shareable between wrappers)
        self.revisions: dict[str, int] = {} if revisions is None else revisions

    @property
    def name(self) -> str:
        return str(self.plugin.name)

    @property
    def prefixes(self) -> Sequence[str]:
        return tuple(self.plugin.prefixes)

    @property
    def depends_on(self) -> Sequence[str]:
        return tuple(getattr(self.plugin, "depends_on", ()))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.plugin, name)

    async def resync(self, ev: Any) -> None:
        sources = list(ev.revisions)
        source = sources[0] if len(sources) == 1 else ""
        for kv in ev.kvs.values():
            self.revisions[kv.key] = kv.revision
            self.history.received(source, kv.key, "put", kv.revision, plugin=self.name,
                                  extra={"snapshot": True})  # fmt: skip
        await self.plugin.resync(ev)

    async def change(self, ev: Any) -> None:
        h = self.history
        for c in ev.changes:
            self.revisions[c.key] = c.revision
            h.received(ev.source, c.key, c.op.name.lower(), c.revision, plugin=self.name)
        if not self.decisions:
            await self.plugin.change(ev)
            return
        err: BaseException | None = None
        try:
            await self.plugin.change(ev)
        except Exception as exc:  # the orchestrator reports it: recorded, then passed on
            err = exc
            raise
        finally:
            if err is None and ev.ack.is_done:
                err = ev.ack.error
            for c in ev.changes:
                if err is None:
                    h.decision(c.key, "applied", revision=c.revision, plugin=self.name)
                else:
                    h.decision(c.key, "failed", str(err), revision=c.revision, plugin=self.name)
