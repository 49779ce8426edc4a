"""VPP binary-API message definitions: the project's own set, and a loader for ``.api.json``.

The project carries the definitions of the messages it uses in ``vpp/api/**/*.api.json``:
the real files of a VPP build (see ``/usr/share/vpp/api`` on an install), trimmed to the
messages we send or receive, comments stripped, everything else byte-for-byte as vppapigen
wrote it. ``memclnt.api.json`` is kept whole because VPP numbers its 28 messages 1..28 in
file order, and a server (the simulator) needs that order.

CRCs are never computed here: they are read from the definitions and compared (a test
checks ours against a full VPP build's files).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import CodecError, DefinitionError, UnknownMessageError

__all__ = [
    "BASE_TYPES",
    "ApiDefinitions",
    "CodecError",
    "DefinitionError",
    "FieldDef",
    "MessageDef",
    "ModuleDef",
    "ServiceDef",
    "TypeDef",
    "UnknownMessageError",
    "builtin_definitions",
    "load_api_dir",
    "load_api_files",
]

#: wire sizes of the base types (``string`` is special: fixed ``[N]`` or u32-length prefixed)
BASE_TYPES: Mapping[str, int] = MappingProxyType(
    {
        "u8": 1,
        "i8": 1,
        "u16": 2,
        "i16": 2,
        "u32": 4,
        "i32": 4,
        "u64": 8,
        "i64": 8,
        "f64": 8,
        "bool": 1,
        "string": 0,
    }
)

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _short(type_name: str) -> str:
    """``vl_api_address_t`` -> ``address``; base types stay as they are."""
    if type_name.startswith("vl_api_") and type_name.endswith("_t"):
        return type_name[7:-2]
    return type_name


@dataclass(frozen=True, slots=True)
class FieldDef:
    """One field of a message, type or union, in wire order.

    ``length`` is None for a scalar, N > 0 for a fixed array (``string x[N]``: N bytes,
    NUL padded), 0 for a variable one: with ``length_field`` the count is in that earlier
    field; ``string x[]`` is a u32 length + bytes; any other ``x[0]`` takes the rest of
    the message (legacy VLA).
    """

    type: str
    name: str
    length: int | None = None
    length_field: str | None = None
    options: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    @property
    def default(self) -> Any:
        """The ``default`` option, or None."""
        return self.options.get("default")

    def as_json(self) -> list[Any]:
        """The field as an ``.api.json`` list (type names with their ``vl_api_`` prefix)."""
        t = self.type if self.type in BASE_TYPES else f"vl_api_{self.type}_t"
        out: list[Any] = [t, self.name]
        if self.length is not None:
            out.append(self.length)
        if self.length_field is not None:
            out.append(self.length_field)
        if self.options:
            out.append(dict(self.options))
        return out

    @classmethod
    def from_json(cls, item: list[Any], where: str) -> FieldDef:
        opts = [x for x in item if isinstance(x, dict)]
        core = [x for x in item if not isinstance(x, dict)]
        if len(core) < 2 or len(core) > 4 or not all(isinstance(x, str) for x in core[:2]):
            raise DefinitionError(f"{where}: malformed field {item!r}")
        length = None
        length_field = None
        if len(core) >= 3:
            if not isinstance(core[2], int) or core[2] < 0:
                raise DefinitionError(f"{where}.{core[1]}: bad array length {core[2]!r}")
            length = core[2]
        if len(core) == 4:
            if not isinstance(core[3], str):
                raise DefinitionError(f"{where}.{core[1]}: bad length field {core[3]!r}")
            length_field = core[3]
        options = MappingProxyType(dict(opts[0])) if opts else _EMPTY
        return cls(_short(core[0]), core[1], length, length_field, options)


@dataclass(frozen=True, slots=True)
class TypeDef:
    """A type, union, enum, enumflag or alias (``kind``), by its short name."""

    name: str
    kind: str  # "type" | "union" | "enum" | "enumflag" | "alias"
    fields: tuple[FieldDef, ...] = ()
    values: tuple[tuple[str, int], ...] = ()  # enums
    enumtype: str = "u32"  # enums: the wire width
    alias: FieldDef | None = None  # aliases: the aliased type (with length for u8[N])
    crc: str | None = None


@dataclass(frozen=True, slots=True)
class MessageDef:
    """One message: name, CRC (``"0x…"``), fields in wire order (``_vl_msg_id`` first)."""

    name: str
    crc: str
    fields: tuple[FieldDef, ...]
    module: str = ""
    options: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    @property
    def field_names(self) -> tuple[str, ...]:
        """Names of every field, ``_vl_msg_id`` included."""
        return tuple(f.name for f in self.fields)

    @property
    def has_client_index(self) -> bool:
        """True for requests and events (VPP echoes the client handle in events)."""
        return any(f.name == "client_index" for f in self.fields)

    @property
    def has_context(self) -> bool:
        """True for requests, replies and details; False for events such as sw_interface_event."""
        return any(f.name == "context" for f in self.fields)

    @property
    def name_crc(self) -> str:
        """``name_crc8`` as VPP's message table names it."""
        return f"{self.name}_{self.crc[2:]}"

    def field(self, name: str) -> FieldDef:
        """The field called ``name``; KeyError naming message and field otherwise."""
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"message {self.name!r} has no field {name!r}")


@dataclass(frozen=True, slots=True)
class ServiceDef:
    """A request and what answers it: a reply, or details (+ reply when ``stream_msg``)."""

    request: str
    reply: str | None  # None: one-way message ("reply": "null")
    stream: bool = False
    stream_msg: str | None = None
    events: tuple[str, ...] = ()

    @property
    def is_dump(self) -> bool:
        """A legacy dump: details follow, terminated by the reply to a control_ping."""
        return self.stream and self.stream_msg is None


@dataclass(frozen=True, slots=True)
class ModuleDef:
    """One ``.api.json`` file: its module name, file CRC, message names in file order."""

    name: str
    crc: str  # vl_api_version
    version: str
    message_names: tuple[str, ...]
    path: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_json(self) -> str:
        """The module as ``.api.json`` text (what ``get_api_json`` sends per module)."""
        return json.dumps(self.raw, separators=(",", ":"))


class ApiDefinitions:
    """A set of message and type definitions, merged from one or more ``.api.json`` modules."""

    def __init__(self, modules: Iterable[Mapping[str, Any] | tuple[str, Mapping[str, Any]]]):
        msgs: dict[str, MessageDef] = {}
        types: dict[str, TypeDef] = {}
        services: dict[str, ServiceDef] = {}
        mods: dict[str, ModuleDef] = {}
        for item in modules:
            path, raw = item if isinstance(item, tuple) else ("", item)
            self._add_module(raw, path, msgs, types, services, mods)
        self.messages: Mapping[str, MessageDef] = MappingProxyType(msgs)
        self.types: Mapping[str, TypeDef] = MappingProxyType(types)
        self.services: Mapping[str, ServiceDef] = MappingProxyType(services)
        self.modules: Mapping[str, ModuleDef] = MappingProxyType(mods)
        replies: dict[str, str] = {}
        for s in services.values():
            if s.reply:
                replies.setdefault(s.reply, s.request)
            if s.stream_msg:
                replies.setdefault(s.stream_msg, s.request)
        self._request_of = replies
        self._check_references()

    @staticmethod
    def _add_module(
        raw: Mapping[str, Any],
        path: str,
        msgs: dict[str, MessageDef],
        types: dict[str, TypeDef],
        services: dict[str, ServiceDef],
        mods: dict[str, ModuleDef],
    ) -> None:
        where = path or "<json>"
        if not isinstance(raw, Mapping):
            raise DefinitionError(f"{where}: an .api.json module is a JSON object")
        module = str(raw.get("module") or Path(path).name.split(".")[0] or "?")
        try:
            for kind in ("enums", "enumflags"):
                for e in raw.get(kind, ()):
                    opts = [x for x in e[1:] if isinstance(x, dict)]
                    vals = tuple(
                        (str(n), int(v)) for n, v in (x for x in e[1:] if isinstance(x, list))
                    )
                    et = opts[0].get("enumtype", "u32") if opts else "u32"
                    if et not in BASE_TYPES or et in ("string", "f64", "bool"):
                        raise DefinitionError(f"{where}: enum {e[0]}: bad enumtype {et!r}")
                    types.setdefault(e[0], TypeDef(e[0], kind[:-1], values=vals, enumtype=et))
            for kind in ("unions", "types"):
                for t in raw.get(kind, ()):
                    name = t[0]
                    fields = tuple(
                        FieldDef.from_json(f, f"{where}:{name}")
                        for f in t[1:]
                        if isinstance(f, list)
                    )
                    crc = next(
                        (x["crc"] for x in t[1:] if isinstance(x, dict) and "crc" in x), None
                    )
                    types.setdefault(name, TypeDef(name, kind[:-1], fields=fields, crc=crc))
            for name, a in dict(raw.get("aliases", {})).items():
                target = FieldDef(_short(a["type"]), name, a.get("length"))
                types.setdefault(name, TypeDef(name, "alias", alias=target))
            names = []
            for m in raw.get("messages", ()):
                name = m[0]
                meta = next((x for x in m[1:] if isinstance(x, dict)), {})
                if "crc" not in meta:
                    raise DefinitionError(f"{where}: message {name} has no crc")
                fields = tuple(
                    FieldDef.from_json(f, f"{where}:{name}") for f in m[1:] if isinstance(f, list)
                )
                m_opts = MappingProxyType(dict(meta.get("options") or {}))
                msgs[name] = MessageDef(name, meta["crc"], fields, module, m_opts)
                names.append(name)
            for req, s in dict(raw.get("services", {})).items():
                reply = s.get("reply")
                services[req] = ServiceDef(
                    req,
                    None if reply in (None, "null") else reply,
                    bool(s.get("stream", False)),
                    s.get("stream_msg"),
                    tuple(s.get("events", ())),
                )
        except DefinitionError:
            raise
        except (TypeError, KeyError, IndexError, ValueError, AttributeError) as exc:
            raise DefinitionError(f"{where}: malformed .api.json ({exc!r})") from exc
        mod_opts = raw.get("options") or {}
        mods[module] = ModuleDef(
            module,
            str(raw.get("vl_api_version", "")),
            str(mod_opts.get("version", "")) if isinstance(mod_opts, Mapping) else "",
            tuple(names),
            path,
            raw,
        )

    def _check_references(self) -> None:
        """Every field type must resolve: a base type or a known type (found at load time)."""
        for owner, fields in self._all_fields():
            names = set()
            for f in fields:
                if f.type not in BASE_TYPES and f.type not in self.types:
                    raise DefinitionError(f"{owner}.{f.name}: unknown type {f.type!r}")
                if f.length_field is not None and f.length_field not in names:
                    raise DefinitionError(
                        f"{owner}.{f.name}: length field {f.length_field!r} is not an earlier field"
                    )
                names.add(f.name)
        for t in self.types.values():
            if (
                t.alias is not None
                and t.alias.type not in BASE_TYPES
                and t.alias.type not in self.types
            ):
                raise DefinitionError(f"alias {t.name}: unknown type {t.alias.type!r}")

    def _all_fields(self) -> Iterator[tuple[str, tuple[FieldDef, ...]]]:
        for m in self.messages.values():
            yield m.name, m.fields
        for t in self.types.values():
            if t.fields:
                yield t.name, t.fields

    def __contains__(self, name: object) -> bool:
        return name in self.messages

    def __repr__(self) -> str:
        return f"<ApiDefinitions {len(self.messages)} messages, {len(self.modules)} modules>"

    def message(self, name: str) -> MessageDef:
        """The definition of message ``name``; ``UnknownMessageError`` (a KeyError) otherwise."""
        try:
            return self.messages[name]
        except KeyError:
            raise UnknownMessageError(name) from None

    def type(self, name: str) -> TypeDef:
        """The type, union, enum or alias called ``name`` (short name, or ``vl_api_x_t``)."""
        try:
            return self.types[_short(name)]
        except KeyError:
            raise KeyError(f"unknown VPP API type {name!r}") from None

    def name_crc(self, name: str) -> str:
        """``"control_ping_51077d14"``: the key of ``name`` in VPP's message table."""
        return self.message(name).name_crc

    def service(self, name: str) -> ServiceDef:
        """The service entry of request ``name``."""
        try:
            return self.services[name]
        except KeyError:
            self.message(name)  # unknown message: say so
            raise UnknownMessageError(name, "services (not a request)") from None

    def reply_of(self, name: str) -> str | None:
        """The reply of request ``name`` (for a legacy dump: its details message)."""
        return self.service(name).reply

    def details_of(self, name: str) -> str | None:
        """The details message of a dump or stream request, else None."""
        s = self.service(name)
        if s.stream_msg:
            return s.stream_msg
        return s.reply if s.stream else None

    def is_dump(self, name: str) -> bool:
        """True for a legacy dump (details, then the control_ping reply ends the list)."""
        return self.service(name).is_dump

    def request_of(self, reply: str) -> str | None:
        """The request a reply or details message answers, or None (events, requests)."""
        return self._request_of.get(reply)

    def events_of(self, name: str) -> tuple[str, ...]:
        """The events a ``want_*`` request subscribes to."""
        return self.service(name).events

    def kind(self, name: str) -> str:
        """``"request"``, ``"reply"``, ``"details"``, ``"event"`` or ``"other"``."""
        if name in self.services:
            return "request"
        req = self._request_of.get(name)
        if req is not None:
            s = self.services[req]
            return (
                "details" if (s.stream_msg == name or (s.stream and s.reply == name)) else "reply"
            )
        m = self.message(name)
        if m.has_client_index and not m.has_context:
            return "event"
        return "other"

    def name_crc_table(self) -> dict[str, str]:
        """``name_crc`` -> message name, for every message."""
        return {m.name_crc: m.name for m in self.messages.values()}

    def subset(self, names: Iterable[str]) -> ApiDefinitions:
        """A copy holding the modules that define ``names`` (used to compare sets)."""
        wanted = set(names)
        return ApiDefinitions(
            (m.path, m.raw) for m in self.modules.values() if wanted & set(m.message_names)
        )


def load_api_files(paths: Iterable[str | os.PathLike[str]]) -> ApiDefinitions:
    """Load and merge the given ``.api.json`` files (later files win on a name clash)."""
    modules = []
    for p in paths:
        try:
            with open(p, encoding="utf-8") as fh:
                modules.append((str(p), json.load(fh)))
        except (OSError, ValueError) as exc:
            raise DefinitionError(f"{p}: cannot read .api.json ({exc})") from exc
    return ApiDefinitions(modules)


def load_api_dir(path: str | os.PathLike[str]) -> ApiDefinitions:
    """Load every ``*.api.json`` under ``path``, recursively (``/usr/share/vpp/api``)."""
    root = Path(path)
    if not root.is_dir():
        raise DefinitionError(f"{root}: not a directory of .api.json files")
    files = sorted(root.rglob("*.api.json"))
    if not files:
        raise DefinitionError(f"{root}: no .api.json files")
    return load_api_files(files)


def load_api_json_string(text: str | bytes) -> ApiDefinitions:
    """Load the reply of ``get_api_json``: a JSON array of per-module objects."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise DefinitionError(f"get_api_json: not JSON ({exc})") from exc
    if not isinstance(data, list):
        raise DefinitionError("get_api_json: expected a JSON array of modules")
    return ApiDefinitions(data)


#: where the project's own trimmed definitions live (package data)
BUILTIN_API_DIR = Path(__file__).with_name("api")


@functools.cache
def builtin_definitions() -> ApiDefinitions:
    """The project's own definitions of every message it uses (cached)."""
    return load_api_dir(BUILTIN_API_DIR)
