"""The agent's HTTP API (aiohttp) and its Prometheus metrics (prometheus-client).

``GET /healthz`` (the loop answers), ``GET /readyz`` (200 only when in sync, else 503 with
the reason), ``GET /status``, ``POST /resync``, ``GET /metrics``, ``GET /idx``,
``GET /history``, and the embedded store under ``/v1/kv``: ``GET /v1/kv?prefix=P``,
``GET|PUT|DELETE /v1/kv/<key>`` (the key is the rest of the path, leading ``/`` kept).
With ``agent.test_mode`` on (fault tests only) the failpoints of
:mod:`datasync.testing.failpoints` are served too: ``GET /test/failpoints`` (hit counts),
``PUT /test/failpoints/<name>`` (body: an action such as ``pause`` or ``2*raise(OSError)``),
``DELETE /test/failpoints[/<name>]`` (off, paused hits released) and
``POST /test/failpoints/<name>/release``, and ``GET /test/history?since=N``: what the
plugins were handed and decided, rounds and status samples, as
:mod:`datasync.testing.history` events after the first N; without it those paths are 404.
Request bodies are limited (``http.max_body_bytes``); listeners are on loopback unless
configured otherwise.
"""

from __future__ import annotations

import base64
import collections
import json
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from ..errors import DatasyncError, InvalidKeyError, InvalidValueError
from ..plugins import KeyState
from ..resync import RoundFinished, RoundStarted
from ..testing import failpoints
from .config import parse_hostport

if TYPE_CHECKING:
    from .runtime import Agent

__all__ = ["HttpApi", "status_document"]

CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"
#: round durations (seconds) of the histogram
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def status_document(agent: Agent) -> dict[str, Any]:
    """The agent's status as JSON: agent, plugins, sources, southbound, and every key
    that is not CONFIGURED with its state and reason."""
    st = agent.orch.status()
    states = agent.plugins.states
    return {
        "agent": {
            "label": agent.label,
            "state": st.state.name,
            "in_sync": st.in_sync,
            "round_running": st.round_running,
            "rounds": st.rounds,
            "failed_rounds": st.failed_rounds,
            "uptime_seconds": round(time.time() - agent.started, 3),
        },
        "plugins": {
            name: {
                "state": p.state.name,
                "since": p.since,
                "error": p.error,
                "keys": {s.value: n for s, n in states.plugins()[name].counts().items()}
                if name in states.plugins()
                else {},
            }
            for name, p in st.plugins.items()
        },
        "sources": {
            name: {
                "state": s.state.name,
                "since": s.since,
                "snapshot_revision": s.snapshot_revision,
                "applied_revision": s.applied_revision,
                "error": s.error,
            }
            for name, s in st.sources.items()
        },
        "southbound": {
            name: {"up": sb.up, "since": sb.since, "reason": sb.reason}
            for name, sb in st.southbound.items()
        },
        "keys": [s.to_json() for s in states if s.state is not KeyState.CONFIGURED],
    }


class _Metrics:
    """A collector that reads the agent's state at scrape time (no bookkeeping on the
    hot path), plus the round-duration histogram fed by the orchestrator's events."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.buckets = [0] * (len(_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.rounds = 0
        self.failed = 0

    def round_finished(self, ev: RoundFinished) -> None:
        self.rounds += 1
        self.failed += not ev.ok
        self.duration_sum += ev.duration
        for i, bound in enumerate(_BUCKETS):
            if ev.duration <= bound:
                self.buckets[i] += 1
                break
        else:
            self.buckets[-1] += 1

    def collect(self) -> Any:
        agent = self.agent
        st = agent.orch.status()
        yield CounterMetricFamily("datasync_rounds", "Resync rounds finished", value=self.rounds)
        yield CounterMetricFamily(
            "datasync_failed_rounds", "Resync rounds that failed", value=self.failed
        )
        cumulative, acc = [], 0
        for bound, n in zip([*map(str, _BUCKETS), "+Inf"], self.buckets, strict=True):
            acc += n
            cumulative.append((bound, acc))
        yield HistogramMetricFamily(
            "datasync_round_duration_seconds", "Resync round duration",
            buckets=cumulative, sum_value=self.duration_sum,
        )  # fmt: skip
        g = GaugeMetricFamily("datasync_in_sync", "1 when the agent is in sync")
        g.add_metric([], 1.0 if st.in_sync else 0.0)
        yield g
        keys = GaugeMetricFamily(
            "datasync_keys", "Keys by plugin and state", labels=["plugin", "state"]
        )
        for name, states in agent.plugins.states.plugins().items():
            for state, n in states.counts().items():
                keys.add_metric([name, state.value], n)
        yield keys
        src = GaugeMetricFamily(
            "datasync_source_up", "1 while a source is connected", labels=["source"]
        )
        rev = GaugeMetricFamily(
            "datasync_source_applied_revision", "Applied revision", labels=["source"]
        )
        received = GaugeMetricFamily(
            "datasync_source_received_revision",
            "Highest revision the source's watch delivered (applied or not yet)",
            labels=["source"],
        )
        for name, s in st.sources.items():
            src.add_metric([name], 1.0 if s.state.name == "CONNECTED" else 0.0)
            rev.add_metric([name], s.applied_revision)
        buffers = agent.orch.buffer_stats()  # one snapshot for the received and buffer gauges
        for name, b in buffers.items():
            received.add_metric([name], b["received_revision"])
        yield src
        yield rev
        yield received
        buffered = GaugeMetricFamily(
            "datasync_buffered_changes", "Changes waiting in the event buffer", labels=["source"]
        )
        coalesced = CounterMetricFamily(
            "datasync_coalesced_changes", "Changes replaced by a newer one of their key",
            labels=["source"],
        )  # fmt: skip
        filtered = CounterMetricFamily(
            "datasync_filtered_changes",
            "Changes dropped by the revision filter (at or below what was applied)",
            labels=["source"],
        )
        for name, b in buffers.items():
            buffered.add_metric([name], b["buffered"])
            coalesced.add_metric([name], b["coalesced"])
            filtered.add_metric([name], b["filtered"])
        yield buffered
        yield coalesced
        yield filtered
        sb = GaugeMetricFamily(
            "datasync_southbound_up", "1 while VPP is connected", labels=["name"]
        )
        for name, s2 in st.southbound.items():
            sb.add_metric([name], 1.0 if s2.up else 0.0)
        if not st.southbound:
            sb.add_metric(["vpp"], 1.0 if agent.client.connected else 0.0)
        yield sb
        stats = agent.client.stats
        vpp = CounterMetricFamily("datasync_vpp_requests", "VPP API requests sent")
        vpp.add_metric([], stats.get("requests", 0))
        yield vpp
        tmo = CounterMetricFamily("datasync_vpp_timeouts", "VPP API requests that timed out")
        tmo.add_metric([], stats.get("timeouts", 0))
        yield tmo


class HttpApi:
    """The aiohttp application of one agent."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.host, self.port = parse_hostport(agent.config.http.listen)
        self.metrics = _Metrics(agent)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.metrics)
        self.vpp_batches = Histogram(
            "datasync_vpp_batch_seconds",
            "Time for one pipelined batch of VPP requests of one message kind",
            ["message"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.vpp_writes = Counter(
            "datasync_vpp_plugin_requests",
            "VPP requests the plugins sent, by message",
            ["message"],
            registry=self.registry,
        )
        agent.plugins.ctx.batch_observers.append(self._observe_batch)
        #: recent rounds and key-state transitions, bounded
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)
        self.app = web.Application(client_max_size=agent.config.http.max_body_bytes)
        self.app.add_routes([
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/status", self.status),
            web.post("/resync", self.resync),
            web.get("/metrics", self.metrics_text),
            web.get("/idx", self.idx),
            web.get("/plan", self.plan),
            web.get("/explain", self.explain),
            web.get("/history", self.history_doc),
            web.get("/configuration", self.config_get),
            web.put("/configuration", self.config_put),
            web.post("/configuration/validate", self.config_validate),
            web.get("/v1/kv", self.kv_list),
            web.get("/v1/watch", self.kv_watch),
            web.get("/v1/kv/{key:.+}", self.kv_get),
            web.put("/v1/kv/{key:.+}", self.kv_put),
            web.delete("/v1/kv/{key:.+}", self.kv_delete),
        ])  # fmt: skip
        if agent.config.agent.test_mode:
            self.app.add_routes([
                web.get("/test/failpoints", self.failpoints_get),
                web.put("/test/failpoints/{name}", self.failpoint_put),
                web.delete("/test/failpoints", self.failpoint_delete),
                web.delete("/test/failpoints/{name}", self.failpoint_delete),
                web.post("/test/failpoints/{name}/release", self.failpoint_release),
                web.get("/test/history", self.test_history),
            ])  # fmt: skip
        self._runner: web.AppRunner | None = None
        agent.orch.add_listener(self._on_event)
        for states in agent.plugins.states.plugins().values():
            states.add_listener(self._on_key)

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        # the bound port (a configured port 0 picks a free one)
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- events ------------------------------------------------------------------------

    def _observe_batch(self, msg: str, n: int, seconds: float) -> None:
        self.vpp_batches.labels(msg).observe(seconds)
        self.vpp_writes.labels(msg).inc(n)

    def _on_event(self, ev: object) -> None:
        if isinstance(ev, RoundStarted):
            self.history.append(
                {"time": time.time(), "round": ev.round, "started": list(ev.reasons)}
            )
        elif isinstance(ev, RoundFinished):
            self.metrics.round_finished(ev)
            self.history.append({
                "time": time.time(), "round": ev.round, "ok": ev.ok,
                "duration": ev.duration, "errors": {k: str(v) for k, v in ev.errors.items()},
            })  # fmt: skip

    def _on_key(self, plugin: str, key: str, status: Any) -> None:
        entry: dict[str, Any] = {"time": time.time(), "plugin": plugin, "key": key}
        if status is None:
            entry["state"] = "REMOVED"
        else:
            entry["state"] = status.state.value
            if status.reason:
                entry["reason"] = status.reason
        self.history.append(entry)

    # -- handlers ----------------------------------------------------------------------

    async def healthz(self, _req: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(self, _req: web.Request) -> web.Response:
        st = self.agent.orch.status()
        if st.in_sync:
            return web.json_response({"ready": True})
        reasons = []
        if st.round_running:
            reasons.append("a resync round is running")
        for name, p in st.plugins.items():
            if p.state.name != "IN_SYNC":
                reasons.append(
                    f"plugin {name} is {p.state.name}" + (f": {p.error}" if p.error else "")
                )
        for name, s in st.sources.items():
            if s.state.name != "CONNECTED":
                reasons.append(f"source {name} is {s.state.name}")
        for name, sb in st.southbound.items():
            if not sb.up:
                reasons.append(f"{name} is down: {sb.reason}")
        return web.json_response(
            {"ready": False, "reasons": reasons or ["not in sync yet"]}, status=503
        )

    async def status(self, _req: web.Request) -> web.Response:
        return web.json_response(status_document(self.agent))

    async def resync(self, req: web.Request) -> web.Response:
        """A full round (sources read again), or with ``?downstream`` the intent the agent
        holds re-applied to VPP (answered when done: 200, or 503 if VPP failed)."""
        before = self.agent.orch.status().rounds
        if "downstream" in req.query:
            try:
                await self.agent.plugins.reapply()
            except DatasyncError as exc:
                return web.json_response({"requested": "downstream", "error": str(exc)}, status=503)
            return web.json_response(
                {"requested": "downstream", "done": True, "rounds_before": before}
            )
        number = self.agent.orch.request_resync("requested over HTTP")
        return web.json_response(
            {"requested": "full", "rounds_before": before, "round": number}, status=202
        )

    # -- failpoints (agent.test_mode only) ------------------------------------------------

    async def failpoints_get(self, _req: web.Request) -> web.Response:
        return web.json_response({"enabled": failpoints.ENABLED, "hits": failpoints.hits()})

    async def failpoint_put(self, req: web.Request) -> web.Response:
        name = req.match_info["name"]
        action = (await req.text()).strip()
        try:
            failpoints.enable(name, action)
        except ValueError as exc:
            return web.json_response({"error": str(exc), "failpoint": name}, status=400)
        return web.json_response({"failpoint": name, "action": action})

    async def failpoint_delete(self, req: web.Request) -> web.Response:
        name = req.match_info.get("name")
        failpoints.disable(name)
        return web.json_response({"failpoint": name or "*", "action": "off"})

    async def failpoint_release(self, req: web.Request) -> web.Response:
        name = req.match_info["name"]
        failpoints.release(name)
        return web.json_response({"failpoint": name, "released": True})

    async def test_history(self, req: web.Request) -> web.Response:
        """The agent's own history (datasync.testing.history events as JSON) after the
        first ``since`` events; ``next`` is the cursor for the following poll."""
        try:
            since = int(req.query.get("since", "0"))
        except ValueError:
            return web.json_response({"error": "since: expected an integer"}, status=400)
        events = self.agent.test_history.since(since)
        return web.json_response(
            {"next": max(since, 0) + len(events), "events": [e.to_json() for e in events]}
        )

    async def metrics_text(self, _req: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def plan(self, _req: web.Request) -> web.Response:
        """The VPP writes a downstream resync would make now (a dry run)."""
        try:
            calls = await self.agent.plugins.plan()
        except DatasyncError as exc:
            return web.json_response({"error": str(exc)}, status=503)
        return web.json_response([
            {"key": c.key, "message": c.msg, "op": c.op, "what": c.what} for c in calls
        ])  # fmt: skip

    async def explain(self, req: web.Request) -> web.Response:
        """One key: its plugin, value, state and reason, and what it depends on."""
        key = req.query.get("key", "")
        for plugin in self.agent.plugins.plugins:
            if not key.startswith(plugin.prefix):
                continue
            status = plugin.states.get(key)
            return web.json_response({
                "key": key,
                "plugin": plugin.name,
                "in_store": key in plugin.values,
                "state": status.state.value if status is not None else None,
                "status": status.to_json() if status is not None else None,
                "depends_on": [{"name": n, "exists": e} for n, e in plugin.dependencies(key)],
            })  # fmt: skip
        return web.json_response({"error": f"key {key}: no plugin watches it"}, status=404)

    async def idx(self, _req: web.Request) -> web.Response:
        ctx = self.agent.plugins.ctx
        return web.json_response({
            "interfaces": {e.name: e.index for e in ctx.interfaces},
            "vrf-tables": {e.name: e.index for e in ctx.vrfs},
        })  # fmt: skip

    async def history_doc(self, _req: web.Request) -> web.Response:
        return web.json_response(list(self.history))

    def _store(self) -> Any:
        store = self.agent.local
        if store is None:
            raise web.HTTPConflict(text="the embedded store is not enabled (sources.local)")
        return store

    @staticmethod
    def _key(req: web.Request) -> str:
        key = req.match_info["key"]
        return key if key.startswith("/") else "/" + key

    async def kv_list(self, req: web.Request) -> web.Response:
        prefix = req.query.get("prefix", "/")
        snap = await self._store().snapshot([prefix])
        return web.json_response({
            "revision": snap.revision,
            "kvs": [{"key": kv.key, "value": _text(kv.value), "revision": kv.revision}
                    for kv in sorted(snap.kvs)],
        })  # fmt: skip

    # -- REST configuration (vpp-agent's), a push source ---------------------------------

    def _rest(self) -> Any:
        if self.agent.rest is None:
            raise web.HTTPConflict(text="the REST source is not enabled (sources.rest)")
        return self.agent.rest

    async def _body(self, req: web.Request) -> bytes | web.Response:
        """The request's body, or the 413 response naming the limit."""
        try:
            return await req.read()
        except web.HTTPRequestEntityTooLarge:
            limit = self.agent.config.http.max_body_bytes
            return web.json_response(
                {"error": f"body exceeds the limit of {limit} bytes"}, status=413
            )

    async def _document(self, req: web.Request) -> dict[str, bytes] | web.Response:
        """The keys of the request's document, or the 400/413 response naming why."""
        from ..plugins.document import DocumentError, load_document, to_keys

        body = await self._body(req)
        if isinstance(body, web.Response):
            return body
        try:
            return to_keys(load_document(body, "body"), self.agent.label, "body")
        except DocumentError as exc:
            return web.json_response({"error": str(exc)}, status=400)

    async def config_get(self, req: web.Request) -> web.Response:
        """The REST source's configuration as a vpp-agent document (``?format=yaml``)."""
        from ..plugins.document import from_keys

        doc = from_keys(await self._rest().content(), self.agent.label)
        if req.query.get("format") == "yaml" or "yaml" in req.headers.get("Accept", ""):
            import yaml

            return web.Response(
                text=yaml.safe_dump(doc, sort_keys=False), content_type="application/yaml"
            )
        return web.json_response(doc)

    async def config_put(self, req: web.Request) -> web.Response:
        """Push a document: ``?replace`` deletes this source's keys it does not hold,
        ``?wait=SECONDS`` answers once every key has a state (or at the deadline),
        ``X-Request-Id`` (or ``?request_id=``) makes a retry a no-op."""
        keys = await self._document(req)
        if isinstance(keys, web.Response):
            return keys
        try:
            wait = float(req.query["wait"]) if "wait" in req.query else None
            generation = int(req.query["generation"]) if "generation" in req.query else None
        except ValueError:
            return web.json_response({"error": "wait and generation are numbers"}, status=400)
        request_id = req.headers.get("X-Request-Id") or req.query.get("request_id", "")
        try:
            reply = await self._rest().push(
                keys, replace="replace" in req.query, request_id=request_id,
                generation=generation, wait=wait,
            )  # fmt: skip
        except (InvalidKeyError, InvalidValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        status = 200 if reply.complete or wait is None else 504
        return web.json_response(reply.to_json(), status=status)

    async def config_validate(self, req: web.Request) -> web.Response:
        """Per-key results of a document, nothing applied."""
        keys = await self._document(req)
        if isinstance(keys, web.Response):
            return keys
        results = []
        for key, value in keys.items():
            plugin = next((p for p in self.agent.plugins.plugins if key.startswith(p.prefix)), None)
            try:
                if plugin is not None:
                    plugin.validate(key, value)
                results.append({"key": key, "state": "VALID"})
            except InvalidValueError as exc:
                results.append({"key": key, "state": "INVALID", "reason": exc.reason})
        return web.json_response({"results": results})

    async def kv_watch(self, req: web.Request) -> web.StreamResponse:
        """Changes under ``prefix`` as JSON lines, from revision ``from`` (default: the
        next one), until the client goes away."""
        store = self._store()
        prefix = req.query.get("prefix", "/")
        try:
            start = int(req.query["from"]) if "from" in req.query else 0
        except ValueError:
            return web.json_response({"error": "from: not a revision"}, status=400)
        if start <= 0:
            start = (await store.snapshot([prefix])).revision + 1
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(req)
        stream = store.watch([prefix], start)
        try:
            async for batch in stream:
                for ch in batch:
                    line = {"key": ch.key, "op": ch.op.name, "revision": ch.revision}
                    if ch.value is not None:
                        line["value"] = _text(ch.value)
                    await resp.write(json.dumps(line).encode() + b"\n")
        except (ConnectionResetError, DatasyncError):
            pass
        finally:
            await stream.aclose()
        return resp

    async def kv_get(self, req: web.Request) -> web.Response:
        key = self._key(req)
        snap = await self._store().snapshot([key])
        kv = next((kv for kv in snap.kvs if kv.key == key), None)
        if kv is None:
            return web.json_response({"error": f"key {key} not found"}, status=404)
        return web.json_response({"key": key, "value": _text(kv.value), "revision": kv.revision})

    async def kv_put(self, req: web.Request) -> web.Response:
        key = self._key(req)
        body = await self._body(req)
        if isinstance(body, web.Response):
            return body
        try:
            revision = await self._store().put(key, body)
        except (InvalidKeyError, InvalidValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except DatasyncError as exc:
            return web.json_response({"error": str(exc)}, status=500)
        return web.json_response({"key": key, "revision": revision})

    async def kv_delete(self, req: web.Request) -> web.Response:
        key = self._key(req)
        try:
            revision = await self._store().delete(key)
        except (InvalidKeyError, InvalidValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"key": key, "revision": revision})


def _text(value: bytes) -> Any:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode()}
