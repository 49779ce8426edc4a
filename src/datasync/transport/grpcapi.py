"""The gRPC configuration API (``datasync.v1.Config``, see ``proto/config.proto``): a push
source served by grpc.aio, with the standard health service and server reflection (so
grpcurl-style tools work).

``SetConfig`` writes the gRPC source (a :class:`~datasync.transport.push.PushSource`);
``GetConfig`` reads it; ``Status`` is the agent's status; ``Subscribe`` streams key-state
changes from the moment the call's initial metadata is sent (a client awaits
``call.initial_metadata()`` to know it is subscribed). A slow subscriber is never silently
skipped: when its queue is full it gets a ``resynced`` marker, then the current state of
every key, then live changes again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..errors import InvalidKeyError, InvalidValueError
from .proto import config_pb2 as pb
from .proto import config_pb2_grpc as pb_grpc
from .push import PushSource

__all__ = ["GrpcApi"]

SERVICE = pb.DESCRIPTOR.services_by_name["Config"].full_name
_STATES = {name: value for name, value in pb.KeyState.items()}

#: states a plugin reports, as (state, reason); ``None`` for a key without one
KeyStates = Callable[[], Mapping[str, tuple[str, str]]]


def _state(name: str) -> str:
    """The proto enum name of a key state (protobuf takes the name)."""
    return name if name in _STATES else "KEY_STATE_UNSPECIFIED"


#: put in a subscriber's queue when it fell behind (the queue is emptied first)
_BEHIND = pb.KeyStateEvent(resynced=True)


class _Subscriber:
    def __init__(self, prefix: str, size: int) -> None:
        self.prefix = prefix
        # one slot more than the limit: room for the _BEHIND marker
        self.queue: asyncio.Queue[pb.KeyStateEvent] = asyncio.Queue(size + 1)
        self.size = size
        self.behind = False

    def offer(self, ev: pb.KeyStateEvent) -> None:
        if self.behind or not ev.key.startswith(self.prefix):
            return
        if self.queue.qsize() < self.size:
            self.queue.put_nowait(ev)
            return
        # the reader gets the current state of every key instead of a gap
        self.behind = True
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(_BEHIND)


class _Servicer(pb_grpc.ConfigServicer):
    def __init__(self, api: GrpcApi) -> None:
        self.api = api

    async def SetConfig(self, request: Any, context: Any) -> Any:
        src = self.api.source
        updates = {kv.key: bytes(kv.value) for kv in request.updates}
        if len(updates) != len(request.updates):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a key is given twice")
        wait = (request.wait_seconds or 10.0) if request.wait else None
        try:
            reply = await src.push(
                updates,
                list(request.deletes),
                replace=request.overwrite_all,
                request_id=request.request_id,
                generation=request.generation if request.HasField("generation") else None,
                wait=wait,
            )
        except (InvalidKeyError, InvalidValueError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if wait is not None and not reply.complete:
            # answered at the deadline: the results say PENDING, never success
            context.set_code(grpc.StatusCode.DEADLINE_EXCEEDED)
            context.set_details(f"not every key was disposed of within {wait} s")
        return pb.SetConfigReply(
            revision=reply.revision,
            results=[
                pb.KeyResult(key=r.key, state=_state(r.state), reason=r.reason)
                for r in reply.results
            ],
            complete=reply.complete,
            duplicate=reply.duplicate,
        )

    async def GetConfig(self, request: Any, context: Any) -> Any:
        snap = await self.api.source.snapshot([request.prefix or "/"])
        kvs = [
            pb.KeyValue(key=kv.key, value=kv.value)
            for kv in sorted(snap.kvs)
            if not kv.key.startswith("/_datasync/")
        ]
        return pb.GetConfigReply(revision=snap.revision, kvs=kvs)

    async def Status(self, request: Any, context: Any) -> Any:
        doc = self.api.status()
        agent = doc.get("agent", {})
        return pb.StatusReply(
            in_sync=bool(agent.get("in_sync")),
            state=str(agent.get("state", "")),
            json=json.dumps(doc),
        )

    async def Subscribe(self, request: Any, context: Any) -> AsyncIterator[Any]:
        sub = _Subscriber(request.prefix, self.api.subscriber_queue)
        self.api.subscribers.add(sub)
        try:
            # the initial metadata says "subscribed": every change from now on reaches this
            # stream (grpc.aio would send it only with the first event, so a client could
            # not tell when changes it makes start to be seen)
            await context.send_initial_metadata(())
            while True:
                ev = await sub.queue.get()
                if ev is not _BEHIND:
                    yield ev
                    continue
                current = sorted(self.api.key_states().items())  # taken before any yield
                sub.behind = False
                yield pb.KeyStateEvent(resynced=True)
                for key, (state, reason) in current:
                    if key.startswith(sub.prefix):
                        yield pb.KeyStateEvent(key=key, state=_state(state), reason=reason)
        finally:
            self.api.subscribers.discard(sub)


class GrpcApi:
    """The gRPC server of one agent."""

    def __init__(
        self,
        source: PushSource,
        listen: tuple[str, int],
        *,
        status: Callable[[], dict[str, Any]],
        key_states: KeyStates,
        max_message_bytes: int = 4 << 20,
        subscriber_queue: int = 1000,
    ) -> None:
        self.source = source
        self.host, self.port = listen
        self.status = status
        self.key_states = key_states
        self.max_message_bytes = max_message_bytes
        self.subscriber_queue = subscriber_queue
        self.subscribers: set[_Subscriber] = set()
        self._server: grpc.aio.Server | None = None

    def key_changed(self, _plugin: str, key: str, status: Any) -> None:
        """A key-state listener (``KeyStates.add_listener``): feeds the subscribers."""
        if not self.subscribers:
            return
        if status is None:
            ev = pb.KeyStateEvent(key=key, removed=True)
        else:
            ev = pb.KeyStateEvent(key=key, state=_state(status.state.value), reason=status.reason)
        for sub in list(self.subscribers):
            sub.offer(ev)

    async def start(self) -> None:
        limit = self.max_message_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ]
        )
        pb_grpc.add_ConfigServicer_to_server(_Servicer(self), server)  # type: ignore[no-untyped-call]
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            [SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        self.port = server.add_insecure_port(f"{self.host}:{self.port}")
        await server.start()
        await health_servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=1.0)
            self._server = None
