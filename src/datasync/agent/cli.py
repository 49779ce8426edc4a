"""The ``datasync`` command: the agent, an agentctl-like client of its HTTP API, the demo
and the VPP simulator.

Client commands talk to a running agent over HTTP (``--http``, default 127.0.0.1:9191);
``put``/``get``/``del``/``apply`` write the agent's embedded store through it. ``--json``
prints machine-readable output. Exit codes: 0 ok, 1 failed (the agent said no, or is
not reachable), 2 usage or bad input; errors are one line naming the key or setting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_HTTP = "127.0.0.1:9191"


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# -- talking to the agent ----------------------------------------------------------------


async def _request(http: str, method: str, path: str, body: bytes | None = None) -> Any:
    import aiohttp

    url = f"http://{http}{path}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            session.request(method, url, data=body) as resp,
        ):
            text = await resp.text()
            try:
                doc = json.loads(text) if text else {}
            except json.JSONDecodeError:
                doc = {"text": text}
            if resp.status >= 400 and resp.status != 503:
                err = doc.get("error", text) if isinstance(doc, dict) else text
                raise CliError(f"{method} {path}: {resp.status} {err}")
            return doc
    except aiohttp.ClientError as exc:
        raise CliError(f"agent at {http} not reachable: {exc}") from None
    except TimeoutError:
        raise CliError(f"agent at {http}: no answer within 30 s") from None


def _kv_path(key: str) -> str:
    if not key.startswith("/"):
        raise CliError(f"key {key!r}: keys start with '/'", EXIT_USAGE)
    return "/v1/kv" + quote(key)


def _value(arg: str) -> bytes:
    if arg.startswith("@"):
        try:
            return Path(arg[1:]).read_bytes()
        except OSError as exc:
            raise CliError(f"{arg[1:]}: {exc.strerror or exc}", EXIT_USAGE) from None
    return arg.encode()


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True))


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(c) for c in row))
    Console().print(table)


# -- commands ----------------------------------------------------------------------------


class _AgentStore:
    """The agent's embedded store, through its HTTP API."""

    def __init__(self, http: str) -> None:
        self.http = http

    async def label(self) -> str:
        return str((await _request(self.http, "GET", "/status"))["agent"]["label"])

    async def put(self, key: str, value: bytes) -> int:
        return int((await _request(self.http, "PUT", _kv_path(key), value))["revision"])

    async def delete(self, key: str) -> int:
        return int((await _request(self.http, "DELETE", _kv_path(key)))["revision"])

    async def list(self, prefix: str) -> tuple[int, list[tuple[str, Any]]]:
        doc = await _request(self.http, "GET", "/v1/kv?prefix=" + quote(prefix))
        return int(doc["revision"]), [(kv["key"], kv["value"]) for kv in doc["kvs"]]

    async def close(self) -> None:
        pass


class _EtcdStore:
    """etcd directly (``--etcd``), as vpp-agent users write their config."""

    def __init__(self, endpoints: str, label: str) -> None:
        from ..transport.etcd import EtcdSource

        self._label = label
        self.src = EtcdSource(endpoints=endpoints.split(","), connect_timeout=3, max_retries=2)

    async def label(self) -> str:
        return self._label

    async def put(self, key: str, value: bytes) -> int:
        return await self.src.put(key, value)

    async def delete(self, key: str) -> int:
        return await self.src.delete(key)

    async def list(self, prefix: str) -> tuple[int, list[tuple[str, Any]]]:
        snap = await self.src.snapshot([prefix])
        return snap.revision, [(kv.key, _text(kv.value)) for kv in sorted(snap.kvs)]

    async def close(self) -> None:
        await self.src.close()


def _text(value: bytes) -> Any:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return {"hex": value.hex()}


async def _with_store(a: argparse.Namespace, fn: Any) -> int:
    from ..errors import DatasyncError

    store = _EtcdStore(a.etcd, a.label) if a.etcd else _AgentStore(a.http)
    try:
        return int(await fn(store))
    except DatasyncError as exc:
        raise CliError(str(exc)) from None
    finally:
        await store.close()


async def cmd_put(a: argparse.Namespace) -> int:
    value = _value(a.value)
    try:
        json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CliError(f"value for {a.key}: not valid JSON: {exc}", EXIT_USAGE) from None
    _kv_path(a.key)  # checks the key

    async def run(store: Any) -> int:
        revision = await store.put(a.key, value)
        out = {"key": a.key, "revision": revision}
        print(json.dumps(out) if a.json else f"put {a.key} at revision {revision}")
        return EXIT_OK

    return await _with_store(a, run)


async def cmd_get(a: argparse.Namespace) -> int:
    async def run(store: Any) -> int:
        revision, kvs = await store.list(a.prefix)
        if a.json:
            _print_json({"revision": revision, "kvs": [{"key": k, "value": v} for k, v in kvs]})
        else:
            for key, value in kvs:
                print(key)
                print(value if isinstance(value, str) else json.dumps(value))
        return EXIT_OK

    return await _with_store(a, run)


async def cmd_del(a: argparse.Namespace) -> int:
    _kv_path(a.key)

    async def run(store: Any) -> int:
        revision = await store.delete(a.key)
        out = {"key": a.key, "revision": revision}
        print(json.dumps(out) if a.json else f"deleted {a.key} at revision {revision}")
        return EXIT_OK

    return await _with_store(a, run)


async def cmd_apply(a: argparse.Namespace) -> int:
    from ..plugins.document import DocumentError, kind_prefixes, load_document, to_keys

    try:
        text = Path(a.file).read_bytes()  # noqa: ASYNC240 - a CLI, nothing else on the loop
    except OSError as exc:
        raise CliError(f"{a.file}: {exc.strerror or exc}", EXIT_USAGE) from None

    async def run(store: Any) -> int:
        label = await store.label()
        try:
            keys = to_keys(load_document(text, a.file), label, a.file)
        except DocumentError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
        stale: list[str] = []
        if a.replace:
            for prefix in kind_prefixes(label):
                _rev, have = await store.list(prefix)
                stale += [k for k, _v in have if k not in keys]
        for key, value in keys.items():
            await store.put(key, value)
        for key in stale:
            await store.delete(key)
        if a.json:
            _print_json({"put": sorted(keys), "deleted": sorted(stale)})
        else:
            print(f"applied {a.file}: {len(keys)} keys put, {len(stale)} deleted")
        return EXIT_OK

    return await _with_store(a, run)


async def cmd_watch(a: argparse.Namespace) -> int:
    """Print every change under the prefix (a JSON line each) until interrupted."""
    if a.etcd:
        from ..transport.etcd import EtcdSource

        src = EtcdSource(endpoints=a.etcd.split(","), connect_timeout=3)
        try:
            start = a.start or (await src.snapshot([a.prefix])).revision + 1
            async for batch in src.watch([a.prefix], start):
                for ch in batch:
                    line: dict[str, object] = {
                        "key": ch.key,
                        "op": ch.op.name,
                        "revision": ch.revision,
                    }
                    if ch.value is not None:
                        line["value"] = _text(ch.value)
                    print(json.dumps(line), flush=True)
        finally:
            await src.close()
        return EXIT_OK
    import aiohttp

    url = f"http://{a.http}/v1/watch?prefix={quote(a.prefix)}"
    if a.start:
        url += f"&from={a.start}"
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            if resp.status != 200:
                raise CliError(f"watch: {resp.status} {await resp.text()}")
            async for raw in resp.content:
                print(raw.decode().rstrip("\n"), flush=True)
    except aiohttp.ClientError as exc:
        raise CliError(f"agent at {a.http} not reachable: {exc}") from None
    return EXIT_OK


async def cmd_status(a: argparse.Namespace) -> int:
    doc = await _request(a.http, "GET", "/status")
    if a.json:
        _print_json(doc)
        return EXIT_OK if doc["agent"]["in_sync"] else EXIT_FAILED
    ag = doc["agent"]
    print(
        f"agent {ag['label']}: {ag['state']}, in_sync={ag['in_sync']}, rounds={ag['rounds']}, "
        f"failed_rounds={ag['failed_rounds']}"
    )
    _table(
        "plugins",
        ["plugin", "state", "keys", "error"],
        [
            [
                n,
                p["state"],
                ", ".join(f"{k} {v}" for k, v in p["keys"].items() if v),
                p["error"] or "",
            ]
            for n, p in sorted(doc["plugins"].items())
        ],
    )
    _table(
        "sources",
        ["source", "state", "applied revision", "error"],
        [
            [n, s["state"], s["applied_revision"], s["error"] or ""]
            for n, s in doc["sources"].items()
        ],
    )
    if doc["keys"]:
        _table("keys not CONFIGURED", ["key", "state", "reason"],
               [[k["key"], k["state"], k.get("reason", "")] for k in doc["keys"]])  # fmt: skip
    return EXIT_OK if ag["in_sync"] else EXIT_FAILED


async def cmd_explain(a: argparse.Namespace) -> int:
    doc = await _request(a.http, "GET", "/explain?key=" + quote(a.key))
    if a.json:
        _print_json(doc)
        return EXIT_OK
    if not doc["in_store"] and doc["state"] is None:
        raise CliError(f"key {a.key}: not in the store")
    print(f"{doc['key']} ({doc['plugin']}): {doc['state']}")
    status = doc["status"] or {}
    if status.get("reason"):
        print(f"  reason: {status['reason']}")
    if status.get("next_attempt"):
        when = time.strftime("%H:%M:%S", time.localtime(status["next_attempt"]))
        print(f"  next attempt at {when} (attempt {status.get('attempts', 0) + 1})")
    for dep in doc["depends_on"]:
        print(f"  depends on {dep['name']}: {'exists' if dep['exists'] else 'MISSING (waits)'}")
    return EXIT_OK


async def cmd_plan(a: argparse.Namespace) -> int:
    doc = await _request(a.http, "GET", "/plan")
    if a.json:
        _print_json(doc)
    elif not doc:
        print("nothing to do: VPP holds what the agent holds")
    else:
        _table("a resync would now", ["key", "message", "what"],
               [[c["key"], c["message"], c["what"]] for c in doc])  # fmt: skip
    return EXIT_OK


async def cmd_resync(a: argparse.Namespace) -> int:
    path = "/resync?downstream" if a.downstream else "/resync"
    doc = await _request(a.http, "POST", path)
    if a.wait and not a.downstream:  # a downstream resync is answered when done
        serving = doc["round"]  # the round that carries this request
        async with asyncio.timeout(a.timeout):
            while True:
                st = await _request(a.http, "GET", "/status")
                if st["agent"]["rounds"] >= serving and st["agent"]["in_sync"]:
                    break
                await asyncio.sleep(0.1)
    print(json.dumps(doc) if a.json else f"resync requested ({doc['requested']})")
    return EXIT_OK


async def cmd_history(a: argparse.Namespace) -> int:
    doc = await _request(a.http, "GET", "/history")
    if a.json:
        _print_json(doc)
        return EXIT_OK
    for entry in doc:
        when = time.strftime("%H:%M:%S", time.localtime(entry["time"]))
        if "round" in entry and "started" in entry:
            print(f"{when} round {entry['round']} started: {'; '.join(entry['started'])}")
        elif "round" in entry:
            outcome = "ok" if entry["ok"] else f"FAILED {entry['errors']}"
            took = f"{entry['duration'] * 1000:.1f} ms"
            print(f"{when} round {entry['round']} finished in {took}: {outcome}")
        else:
            reason = f": {entry['reason']}" if entry.get("reason") else ""
            print(f"{when} {entry['state']:10} {entry['key']}{reason}")
    return EXIT_OK


async def cmd_vpp_dump(a: argparse.Namespace) -> int:
    from ..vpp.client import VppClient

    client = VppClient(a.socket, probe_interval=None, reconnect=False, timeout=10)
    try:
        await client.connect()
    except Exception as exc:
        raise CliError(f"VPP at {a.socket} not reachable: {exc}") from None
    try:
        rows: list[list[Any]] = []
        if a.what == "interfaces":
            cols = ["sw_if_index", "name", "tag", "admin", "mtu", "mac"]
            for d in await client.dump("sw_interface_dump", sw_if_index=0xFFFFFFFF):
                admin = "up" if d.flags & 1 else "down"
                row = [d.sw_if_index, d.interface_name, d.tag, admin, d.mtu[0], str(d.l2_address)]
                rows.append(row)
        elif a.what == "bds":
            cols = ["bd_id", "tag", "members", "bvi"]
            for d in await client.dump(
                "bridge_domain_dump", bd_id=0xFFFFFFFF, sw_if_index=0xFFFFFFFF
            ):
                members = [m.sw_if_index for m in d.sw_if_details[: d.n_sw_ifs]]
                bvi = "" if d.bvi_sw_if_index == 0xFFFFFFFF else d.bvi_sw_if_index
                rows.append([d.bd_id, d.bd_tag, members, bvi])
        elif a.what == "vrfs":
            cols = ["table_id", "ipv6", "name"]
            for d in await client.dump("ip_table_dump"):
                rows.append([d.table.table_id, d.table.is_ip6, d.table.name])
        else:
            cols = ["table", "prefix", "paths"]
            for t in await client.dump("ip_table_dump"):
                req = {"table_id": t.table.table_id, "is_ip6": t.table.is_ip6}
                for d in await client.dump("ip_route_dump", table=req):
                    r = d.route
                    paths = [
                        f"sw_if_index {p.sw_if_index} type {p.type}" for p in r.paths[: r.n_paths]
                    ]
                    rows.append([r.table_id, str(r.prefix), "; ".join(paths)])
        if a.json:
            _print_json([dict(zip(cols, row, strict=True)) for row in rows])
        else:
            _table(f"VPP {a.what}", cols, rows)
    finally:
        await client.close()
    return EXIT_OK


def _config_check(argv: Sequence[str]) -> int:
    from ..errors import ConfigError
    from .config import load_config

    parser = argparse.ArgumentParser(prog="datasync config check")
    parser.add_argument("file")
    args = parser.parse_args(argv)
    try:
        load_config(args.file)
    except ConfigError as exc:
        print(f"datasync config check: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.file}: ok")
    return EXIT_OK


def _client_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--http", default=DEFAULT_HTTP, help=f"the agent's HTTP API (default {DEFAULT_HTTP})"
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")
    parser = argparse.ArgumentParser(prog="datasync")
    sub = parser.add_subparsers(dest="command", required=True)
    # handled before parsing (they have their own options); listed for --help
    sub.add_parser("agent", help="run the agent (datasync agent --help)", add_help=False)
    sub.add_parser("config", help="config check FILE: validate a config file", add_help=False)
    sub.add_parser("demo", help="the scripted demo on the built-in simulator", add_help=False)
    sub.add_parser("vppsim", help="run the VPP API simulator", add_help=False)
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--etcd", metavar="ENDPOINTS", help="write etcd directly (host:port,...)")
    store.add_argument("--label", default="vpp1", help="with --etcd: the agent label (apply)")
    p = sub.add_parser("put", parents=[common, store], help="put KEY JSON|@FILE into the store")
    p.add_argument("key")
    p.add_argument("value")
    p.set_defaults(run=cmd_put)
    p = sub.add_parser("get", parents=[common, store], help="get the keys under PREFIX")
    p.add_argument("prefix", nargs="?", default="/")
    p.set_defaults(run=cmd_get)
    p = sub.add_parser("del", parents=[common, store], help="delete KEY")
    p.add_argument("key")
    p.set_defaults(run=cmd_del)
    p = sub.add_parser("apply", parents=[common, store], help="apply a vpp-agent config document")
    p.add_argument("file")
    p.add_argument("--replace", action="store_true", help="delete the keys the file does not hold")
    p.set_defaults(run=cmd_apply)
    p = sub.add_parser("watch", parents=[common, store], help="print changes under PREFIX")
    p.add_argument("prefix", nargs="?", default="/")
    p.add_argument("--from", dest="start", type=int, default=0, help="from this revision on")
    p.set_defaults(run=cmd_watch)
    p = sub.add_parser("status", parents=[common], help="the agent's status (exit 1: not in sync)")
    p.set_defaults(run=cmd_status)
    p = sub.add_parser("explain", parents=[common], help="one key's state and why")
    p.add_argument("key")
    p.set_defaults(run=cmd_explain)
    p = sub.add_parser("plan", parents=[common], help="the VPP writes a resync would make now")
    p.set_defaults(run=cmd_plan)
    p = sub.add_parser("resync", parents=[common], help="request a resync round")
    p.add_argument("--downstream", action="store_true")
    p.add_argument("--wait", action="store_true", help="until in sync again")
    p.add_argument("--timeout", type=float, default=60)
    p.set_defaults(run=cmd_resync)
    p = sub.add_parser("history", parents=[common], help="recent rounds and key-state changes")
    p.set_defaults(run=cmd_history)
    p = sub.add_parser("vpp", parents=[common], help="read VPP directly: vpp dump WHAT")
    vsub = p.add_subparsers(dest="vpp_command", required=True)
    d = vsub.add_parser("dump", parents=[common])
    d.add_argument("what", choices=["interfaces", "bds", "routes", "vrfs"])
    d.add_argument("--socket", default=".datasync/vpp-api.sock", help="VPP's API socket")
    d.set_defaults(run=cmd_vpp_dump)
    return parser


COMMANDS = ("agent", "config", "demo", "vppsim")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``datasync`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "agent":
        from .runtime import main as agent_main

        return agent_main(argv[1:])
    if argv and argv[0] == "demo":
        from .demo import main as demo_main

        return demo_main(argv[1:])
    if argv and argv[0] == "vppsim":
        from ..vpp.sim.server import main as sim_main

        return sim_main(argv[1:])
    if argv[:2] == ["config", "check"]:
        return _config_check(argv[2:])
    parser = _client_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) and EXIT_USAGE
    try:
        return int(asyncio.run(args.run(args)))
    except KeyboardInterrupt:
        return EXIT_OK
    except CliError as exc:
        print(f"datasync {args.command}: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
