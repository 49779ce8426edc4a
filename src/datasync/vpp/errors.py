"""Every error the VPP southbound raises, under one base (:class:`VppError`).

``VppError`` is a :class:`datasync.errors.DatasyncError`, so ``except DatasyncError``
still catches all of them; ``retriable`` says whether trying again later may succeed.
The modules that raise them (client, transports, codec, shm, vac) re-export their own
for the import paths that predate this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ClosedError, DatasyncError
from .retvals import RETVAL_TEXT, classify, retval_name

__all__ = [
    "VAC_ERRORS",
    "CodecError",
    "DefinitionError",
    "ShmClosedError",
    "ShmError",
    "ShmFullError",
    "ShmMessageTooLargeError",
    "ShmSegmentError",
    "UnknownMessageError",
    "VacError",
    "VacUnavailableError",
    "VppApiError",
    "VppConnectionError",
    "VppError",
    "VppMessageError",
    "VppMessageTooLargeError",
    "VppProtocolError",
    "VppTimeoutError",
]


class VppError(DatasyncError):
    """Root of the VPP southbound's errors."""


# -- definitions and codec ----------------------------------------------------------------


class DefinitionError(VppError):
    """An ``.api.json`` file is malformed, or a definition references an unknown type."""


class UnknownMessageError(VppError, KeyError):
    """A message name is not in this set of definitions."""

    def __init__(self, name: str, where: str = "definitions") -> None:
        self.name = name
        super().__init__(f"unknown VPP API message {name!r} (not in the {where})")

    def __str__(self) -> str:  # KeyError would repr() the whole message
        return str(self.args[0])


class CodecError(VppError, ValueError):
    """A message could not be encoded or decoded; names the message and the field."""

    def __init__(self, message: str, field: str, reason: str) -> None:
        self.message = message
        self.field = field
        self.reason = reason
        where = f"{message}.{field}" if field else message
        super().__init__(f"{where}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.field, self.reason))


# -- calls --------------------------------------------------------------------------------


class VppApiError(VppError):
    """VPP answered a request with a negative retval."""

    def __init__(
        self, retval: int, message: str = "", op: str = "update", detail: str = ""
    ) -> None:
        self.retval = retval
        self.name = retval_name(retval)
        self.message = message
        self.op = op
        self.outcome = classify(retval, op)
        self.retriable = self.outcome == "retry"
        text = RETVAL_TEXT.get(retval, "unknown error")
        where = f"{message}: " if message else ""
        extra = f" ({detail})" if detail else ""
        super().__init__(f"{where}VPP returned {retval} {self.name}: {text}{extra}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.retval, self.message, self.op))


class VppTimeoutError(VppError, TimeoutError):
    """A call got no reply in time. A timeout is never a success; the late reply is dropped."""

    retriable = True

    def __init__(self, message: str, timeout: float) -> None:
        self.message = message
        self.timeout = timeout
        super().__init__(f"VPP call {message} got no reply within {timeout:g} s")


class VppMessageError(VppError):
    """A message is unknown to our definitions, or VPP does not offer it with our CRC."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"VPP message {name!r}: {reason}")


class VppMessageTooLargeError(VppError, ValueError):
    """One message body is larger than the transport can ever carry (e.g. the shm ring).

    Only that message fails; the connection and every other call are unaffected.
    """

    def __init__(self, size: int, limit: int, name: str | None = None) -> None:
        self.size = size
        self.limit = limit
        self.name = name
        #: how many bodies of the batch were left out for being too large
        self.dropped = 1
        what = f"VPP message {name!r}" if name else "a VPP message"
        super().__init__(
            f"{what} of {size} bytes is larger than the transport carries ({limit} bytes max)"
        )


# -- connections --------------------------------------------------------------------------


class VppConnectionError(VppError, ConnectionError):
    """The VPP API connection is down, could not be made, or was lost mid-call."""

    retriable = True


class VppProtocolError(VppConnectionError):
    """The peer sent something that is not VPP's framing (the connection is dropped)."""


#: libvppapiclient's vac_errno_t: code -> (name, what it means)
VAC_ERRORS: dict[int, tuple[str, str]] = {
    -1: (
        "VAC_SVM_QUEUE_SUB_1",
        "shared-memory queue error (svm_queue -1: queue empty/full, or not connected)",
    ),
    -2: ("VAC_SVM_QUEUE_SUB_2", "shared-memory queue wait expired (svm_queue -2)"),
    -3: ("VAC_NOT_CONNECTED", "not connected to VPP"),
    -4: ("VAC_SHM_NOT_READY", "shared memory not ready (no VPP API region mapped)"),
    -5: ("VAC_TIMEOUT", "timed out"),
}


class VacUnavailableError(VppError):
    """libvppapiclient.so is not installed here (or is not a usable libvppapiclient)."""

    def __init__(self, message: str, tried: Sequence[str] = ()) -> None:
        self.tried = list(tried)
        super().__init__(message)


class VacError(VppConnectionError):
    """A ``vac_*`` call returned an error code; ``code`` and ``code_name`` say which."""

    def __init__(self, code: int, call: str, detail: str = "") -> None:
        self.code = code
        self.call = call
        name, meaning = VAC_ERRORS.get(code, (f"code {code}", "unknown libvppapiclient error"))
        self.code_name = name
        extra = f" ({detail})" if detail else ""
        super().__init__(f"{call} failed: {name} ({code}): {meaning}{extra}")


# -- the shared-memory ring ---------------------------------------------------------------


class ShmError(VppError):
    """A shared-memory ring operation failed; ``reason`` says why, ``code`` is the ring's code."""

    def __init__(self, reason: str, code: int = 0) -> None:
        self.reason = reason
        self.code = code
        super().__init__(f"shm ring: {reason}")


class ShmFullError(ShmError):
    """The ring has no room for the frame now; retry after the peer read."""

    retriable = True


class ShmClosedError(ShmError, ClosedError):
    """The peer closed its end (after every frame it wrote was read), or this end is closed."""

    retriable = True


class ShmMessageTooLargeError(ShmError, ValueError):
    """A body larger than the ring can ever hold."""


class ShmSegmentError(ShmError):
    """A segment received from a peer is invalid or truncated, or could not be created."""
