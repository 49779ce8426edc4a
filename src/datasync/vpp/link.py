"""What every VPP transport gives the client: a connected :class:`Transport` and the
:class:`MessageTable` its handshake produced.

Each transport has its own module with one ``open(...)`` coroutine returning both:
:mod:`datasync.vpp.socket_link` (VPP's API socket), :mod:`datasync.vpp.shm_link` (the
project's shared-memory ring, negotiated on that socket) and :mod:`datasync.vpp.vac`
(a real VPP's shared memory through libvppapiclient). The client only sees this module's
types: what differs between transports is declared on the transport, not asked by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from .codec import codec_for
from .defs import ApiDefinitions
from .errors import VppConnectionError, VppMessageError, VppProtocolError

__all__ = [
    "HANDSHAKE_CONTEXT",
    "SOCKCLNT_CREATE_ID",
    "SOCKCLNT_CREATE_REPLY_ID",
    "FrameSink",
    "MessageTable",
    "Transport",
    "create_request",
    "parse_create_reply",
]

SOCKCLNT_CREATE_ID = 15  # hard-coded by VPP (memclnt messages are numbered 1..28)
SOCKCLNT_CREATE_REPLY_ID = 16
HANDSHAKE_CONTEXT = 124  # what papi sends; any value works
#: what the client always needs, whatever else it requires
CORE_MESSAGES = ("control_ping", "control_ping_reply")


class FrameSink(Protocol):
    """What a transport hands message bodies and connection loss to."""

    def frames_received(self, bodies: list[bytes]) -> None: ...

    def transport_lost(self, exc: BaseException | None) -> None: ...


class Transport(Protocol):
    """A connected transport, as the client drives it."""

    #: "socket", "shm" or "vac"
    kind: str

    @property
    def is_open(self) -> bool: ...

    @property
    def max_body(self) -> int | None:
        """The largest request body it carries (None: any)."""

    @property
    def max_in_flight(self) -> int | None:
        """How many requests may be outstanding at most (None: no limit of its own)."""

    @property
    def hold_abandoned(self) -> bool:
        """True when a timed-out request still occupies the peer's queue until answered,
        so its window slot is freed only by the late reply."""

    @property
    def says_goodbye(self) -> bool:
        """True when closing the transport itself tells VPP goodbye (no sockclnt_delete)."""

    def send(self, body: bytes) -> None: ...

    def send_many(self, bodies: Iterable[bytes]) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    async def wait_closed(self) -> None:
        """Wait until the transport reported its end (bounded by the caller)."""


class MessageTable:
    """One connection's message ids, resolved by ``name_crc`` from VPP's table."""

    def __init__(self, table: Mapping[str, int], defs: ApiDefinitions, client_index: int) -> None:
        self.defs = defs
        self.client_index = client_index
        self.name_to_id: dict[str, int] = {}
        self.by_id: dict[int, tuple[str, Any, bool]] = {}  # id -> (name, codec, has_context)
        self.mismatched: dict[str, str] = {}
        #: request name -> (id, codec, is_dump), filled on first use
        self.requests: dict[str, tuple[int, Any, bool]] = {}
        by_name = {}
        for name_crc, msg_id in table.items():
            name, _, crc = name_crc.rpartition("_")
            by_name[name] = crc
            msg = defs.messages.get(name)
            if msg is None or msg.name_crc != name_crc:
                continue
            self.name_to_id[name] = msg_id
            self.by_id[msg_id] = (name, codec_for(defs, name), msg.has_context)
        for name in defs.messages:
            if name not in self.name_to_id and name in by_name:
                self.mismatched[name] = by_name[name]

    def require(self, names: Iterable[str]) -> MessageTable:
        """This table, or :class:`VppMessageError` naming the first of ``names`` (and of
        the core messages) that VPP does not offer with our CRC."""
        missing = [n for n in (*names, *CORE_MESSAGES) if n not in self.name_to_id]
        if missing:
            raise VppMessageError(missing[0], self.why_missing(missing))
        return self

    def why_missing(self, names: Sequence[str]) -> str:
        parts = []
        for n in names:
            if n in self.mismatched:
                ours = self.defs.name_crc(n) if n in self.defs.messages else "?"
                parts.append(f"{n}: CRC mismatch (ours {ours}, VPP has {n}_{self.mismatched[n]})")
            else:
                parts.append(f"{n}: not offered by VPP")
        return "; ".join(parts)


def create_request(defs: ApiDefinitions, name: str) -> bytes:
    """The ``sockclnt_create`` body that opens a socket connection as client ``name``."""
    body: bytes = codec_for(defs, "sockclnt_create").encode(
        SOCKCLNT_CREATE_ID, {"context": HANDSHAKE_CONTEXT, "name": name[:63]}
    )
    return body


def parse_create_reply(defs: ApiDefinitions, body: bytes, require: Iterable[str]) -> MessageTable:
    """The message table of a ``sockclnt_create_reply`` body; refusals, other messages and
    bodies that do not decode are a :class:`VppConnectionError`."""
    if len(body) < 2 or ((body[0] << 8) | body[1]) != SOCKCLNT_CREATE_REPLY_ID:
        raise VppProtocolError("first message from VPP is not sockclnt_create_reply (id 16)")
    try:
        reply = codec_for(defs, "sockclnt_create_reply").decode(body)
    except Exception as exc:
        raise VppProtocolError(f"bad sockclnt_create_reply: {exc}") from exc
    if reply.response != 0:
        raise VppConnectionError(f"sockclnt_create refused (response {reply.response})")
    table = {e.name: e.index for e in reply.message_table[: reply.count]}
    return MessageTable(table, defs, reply.index).require(require)
