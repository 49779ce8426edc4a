"""vpp-agent's configuration document, turned into keys and values.

A YAML or JSON document ``{vppConfig: {interfaces: [...], bridgeDomains: [...], routes:
[...], vrfs: [...]}}`` (vpp-agent's ``ConfigData``, field names in either style) becomes
the keys the plugins watch: an interface or bridge domain by its name, a route and a VRF
table by the key vpp-agent derives from the value. Errors name the item and the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import msgspec
import yaml

from ..errors import InvalidValueError
from .models import (
    BD_PREFIX,
    IF_PREFIX,
    ROUTE_PREFIX,
    VRF_PREFIX,
    BridgeDomain,
    Interface,
    Route,
    VrfTable,
    decode,
    parse_address,
    parse_network,
    route_key,
    vrf_key,
)

__all__ = ["DocumentError", "from_keys", "kind_prefixes", "load_document", "to_keys"]

#: document section -> (model, key prefix template); both naming styles accepted
_KINDS: dict[str, tuple[type[msgspec.Struct], str]] = {
    "interfaces": (Interface, IF_PREFIX),
    "bridgeDomains": (BridgeDomain, BD_PREFIX),
    "routes": (Route, ROUTE_PREFIX),
    "vrfs": (VrfTable, VRF_PREFIX),
}
_ALIASES = {"bridge_domains": "bridgeDomains", "vrf_tables": "vrfs", "vrfTables": "vrfs"}


class DocumentError(InvalidValueError):
    """A configuration document that cannot be turned into keys."""


def kind_prefixes(label: str) -> list[str]:
    """The key prefixes of every kind a document holds."""
    return [prefix.format(label=label) for _model, prefix in _KINDS.values()]


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when the wheel has it


def load_document(text: str | bytes, where: str = "document") -> Mapping[str, Any]:
    """Parse YAML (a superset of JSON); errors name the line. A JSON document is parsed by
    msgspec (much faster); one that does not parse is read again as YAML for the line."""
    raw = text.encode() if isinstance(text, str) else text
    doc: Any = None
    if raw.lstrip()[:1] == b"{":
        try:
            doc = msgspec.json.decode(raw)
        except (msgspec.DecodeError, RecursionError):
            doc = None
    if doc is None:
        try:
            doc = yaml.load(raw, Loader=_LOADER)  # a safe loader (CSafeLoader or SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" at line {mark.line + 1}" if mark is not None else ""
            raise DocumentError(where, f"not valid YAML or JSON{line}: {exc}") from None
        except RecursionError:
            raise DocumentError(where, "nested too deeply") from None
    if not isinstance(doc, dict):
        raise DocumentError(where, "expected a mapping with vppConfig")
    return doc


def to_keys(doc: Mapping[str, Any], label: str, where: str = "document") -> dict[str, bytes]:
    """The keys and JSON values of a document. An item whose key cannot be made (no name,
    a route whose value does not decode) is a :class:`DocumentError`; any other bad value
    goes in as it is, and its plugin marks the key INVALID naming the field."""
    config = doc.get("vppConfig", doc.get("vpp_config"))
    if not isinstance(config, dict):
        raise DocumentError(where, "missing vppConfig (a mapping)")
    out: dict[str, bytes] = {}
    for section, items in config.items():
        kind = _ALIASES.get(section, section)
        if kind not in _KINDS:
            raise DocumentError(
                where, f"vppConfig.{section}: not supported (one of {', '.join(_KINDS)})"
            )
        if not isinstance(items, list):
            raise DocumentError(where, f"vppConfig.{section}: expected a list")
        model, prefix_t = _KINDS[kind]
        prefix = prefix_t.format(label=label)
        for i, item in enumerate(items):
            value = json.dumps(item).encode()
            name = f"vppConfig.{section}[{i}]"
            if kind in ("interfaces", "bridgeDomains"):
                # the key needs the name only: a bad value is the key's INVALID state
                item_name = item.get("name") if isinstance(item, dict) else None
                if not isinstance(item_name, str) or not item_name:
                    raise DocumentError(name, "field name: must be a non-empty string")
                key = prefix + item_name
            else:
                # a route's or table's key is derived from its value: it must decode
                try:
                    m = decode(model, name, value)
                    if isinstance(m, Route):
                        parse_network(name, m.dst_network, "dst_network")
                        if m.next_hop_addr:
                            parse_address(name, m.next_hop_addr, "next_hop_addr")
                except InvalidValueError as exc:
                    raise DocumentError(name, exc.reason) from None
                key = prefix + (route_key(m) if isinstance(m, Route) else vrf_key(m))  # type: ignore[arg-type]  # m is a Route or a VrfTable
            if key in out:
                raise DocumentError(name, f"gives key {key} a second time")
            out[key] = value
    return out


def from_keys(kvs: Mapping[str, bytes], label: str) -> dict[str, Any]:
    """The document of ``kvs`` (the inverse of :func:`to_keys`; values kept as stored,
    keys of other kinds left out)."""
    config: dict[str, list[Any]] = {}
    for section, (_model, prefix_t) in _KINDS.items():
        prefix = prefix_t.format(label=label)
        items = []
        for key in sorted(k for k in kvs if k.startswith(prefix)):
            try:
                items.append(json.loads(kvs[key]))
            except ValueError:
                continue  # not a JSON value: not a document item
        if items:
            config[section] = items
    return {"vppConfig": config}
