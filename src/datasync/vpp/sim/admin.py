"""A tiny HTTP/1.1 admin endpoint for the simulator's fault API (stdlib asyncio only).

Routes (JSON in, JSON out):

* ``GET /state`` - the whole dataplane; ``GET /counters`` - write-op and protocol counters
* ``POST /fault/restart`` ``{"shuffle": true}`` - state wiped, new vpe_pid, clients dropped
* ``POST /fault/drop`` - close every client connection
* ``POST /fault/item`` ``{"message": "create_loopback", "retval": -126, "count": 1,
  "match": {...}, "until": <unix time>}`` - per-message error injection (``count: null``
  until cleared or ``until``; ``key`` is accepted for ``message``; ``retval`` an i32, as
  VPP's, ``count`` a positive integer)
* ``POST /fault/latency`` ``{"seconds": 0.5, "message": null}`` (finite, 0..600 s)
* ``POST /fault/drift`` ``{"action": "delete_interface", "name": "loop0"}``
* ``POST /fault/clear`` - remove injected errors and latency
* ``POST /counters/reset``

Bad input is a 400 naming the field (a Content-Length that is not a byte count included);
a body over 1 MiB is a 413.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import Simulator

_MAX_BODY = 1 << 20


class AdminServer:
    """Serves the fault API of one :class:`Simulator` over HTTP."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self._server: asyncio.Server | None = None
        self._routes: dict[tuple[str, str], Callable[[dict[str, Any]], Any]] = {
            ("GET", "/state"): lambda _b: self.sim.dump_state(),
            ("GET", "/counters"): lambda _b: self.sim.counters(),
            ("GET", "/health"): lambda _b: {"ok": True, "vpe_pid": self.sim.state.vpe_pid},
            ("POST", "/fault/restart"): self._restart,
            ("POST", "/fault/drop"): lambda _b: {"dropped": self.sim.drop_connections()},
            ("POST", "/fault/item"): self._item,
            ("POST", "/fault/latency"): self._latency,
            ("POST", "/fault/drift"): self._drift,
            ("POST", "/fault/clear"): self._clear,
            ("POST", "/counters/reset"): self._reset,
        }

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; returns the bound (host, port) (port 0 picks a free one)."""
        self._server = await asyncio.start_server(self._handle, host, port)
        addr = self._server.sockets[0].getsockname()
        return str(addr[0]), int(addr[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _restart(self, body: dict[str, Any]) -> dict[str, Any]:
        pid = self.sim.restart(shuffle=bool(body.get("shuffle", True)))
        return {"vpe_pid": pid, "epoch": self.sim.epoch}

    def _item(self, body: dict[str, Any]) -> dict[str, Any]:
        message = body.get("message") or body.get("key")
        if not isinstance(message, str):
            raise ValueError("field 'message' (a VPP message name) is required")
        if "retval" not in body:
            raise ValueError("field 'retval' is required")
        count = body.get("count", 1)
        match = body.get("match")
        if match is not None and not isinstance(match, dict):
            raise ValueError("field 'match' must be an object")
        until = body.get("until")
        if until is not None and (isinstance(until, bool) or not isinstance(until, (int, float))):
            raise ValueError(f"field 'until' must be a unix time (a number), got {until!r}")
        # retval and count go as given: inject_error takes integers only, retval an i32
        self.sim.inject_error(message, body["retval"], count, match, until)
        return {"ok": True}

    def _latency(self, body: dict[str, Any]) -> dict[str, Any]:
        seconds = body.get("seconds")
        if seconds is None and "ms" in body:
            ms = body["ms"]
            if isinstance(ms, bool) or not isinstance(ms, (int, float)):
                raise ValueError(f"field 'ms' must be a number, got {ms!r}")
            seconds = ms / 1000.0
        if seconds is None:
            raise ValueError("field 'seconds' is required")
        message = body.get("message")
        if message is not None and not isinstance(message, str):
            raise ValueError("field 'message' must be a VPP message name or null")
        self.sim.set_latency(seconds, message)  # a finite number within 0..MAX_LATENCY
        return {"ok": True}

    def _drift(self, body: dict[str, Any]) -> dict[str, Any]:
        params = dict(body)
        action = params.pop("action", None)
        if not isinstance(action, str):
            raise ValueError("field 'action' is required")
        self.sim.drift(action, **params)
        return {"ok": True}

    def _clear(self, _body: dict[str, Any]) -> dict[str, Any]:
        self.sim.clear_faults()
        return {"ok": True}

    def _reset(self, _body: dict[str, Any]) -> dict[str, Any]:
        self.sim.reset_counters()
        return {"ok": True}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await reader.readline()
                if not request:
                    return
                parts = request.decode("latin-1").split()
                headers: dict[str, str] = {}
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                if len(parts) != 3:
                    await self._send(writer, HTTPStatus.BAD_REQUEST, {"error": "bad request line"})
                    return
                method, target, _version = parts
                text = headers.get("content-length", "0") or "0"
                length = int(text) if text.isdigit() else -1  # digits only: no sign, no space
                if length < 0:
                    await self._send(
                        writer,
                        HTTPStatus.BAD_REQUEST,
                        {"error": f"Content-Length: {text[:40]!r} is not a byte count"},
                    )
                    return
                if length > _MAX_BODY:
                    await self._send(
                        writer,
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        {"error": f"Content-Length: {length} exceeds {_MAX_BODY} bytes"},
                    )
                    return
                raw = await reader.readexactly(length) if length else b""
                status, payload = self._dispatch(method, target.split("?", 1)[0], raw)
                await self._send(writer, status, payload)
                if headers.get("connection", "").lower() == "close":
                    return
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            return
        finally:
            writer.close()

    def _dispatch(self, method: str, path: str, raw: bytes) -> tuple[HTTPStatus, Any]:
        route = self._routes.get((method, path.rstrip("/") or "/"))
        if route is None:
            known = any(p == path for _, p in self._routes)
            status = HTTPStatus.METHOD_NOT_ALLOWED if known else HTTPStatus.NOT_FOUND
            return status, {"error": f"{method} {path}: no such route"}
        try:
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            return HTTPStatus.OK, route(body)
        except (ValueError, TypeError, KeyError) as exc:
            return HTTPStatus.BAD_REQUEST, {"error": str(exc)}

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: HTTPStatus, payload: Any) -> None:
        data = json.dumps(payload).encode()
        writer.write(
            f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        await writer.drain()
