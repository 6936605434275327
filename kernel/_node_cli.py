"""``kerna node``, ``kerna status``, ``kerna ask``, ``kerna tell``, ``kerna publish``.

``kerna node [--config node.toml] [--check]`` runs a node (``kerna.node``; the ``node``
extra). The other commands talk to a running node's admin API over HTTP (the standard
library's client: no extra needed)::

    kerna status [--json]
    kerna ask Echo a '{"type": "Ping", "n": 1}' [--timeout 5]
    kerna tell Counter c1 '{"type": "Inc"}'
    kerna publish uploads '{"type": "doc.uploaded", "doc_id": "d1"}'
    kerna deadletters list [--reason R] [--type T] [--message-type M] [--limit N] [--json]
    kerna deadletters replay (--reason R | --type T | --message-type M | --seq N... | --all)
    kerna top [--interval 1] [--once]

A message is a JSON object: ``"type"`` is its wire tag (or the class name, when one
registered type has it) and the other keys are its fields. ``--node`` (default
``$KERNA_NODE_URL`` or ``http://127.0.0.1:9101``) and ``--token`` (default
``$KERNA_HTTP_TOKEN``, the node's own token variable) pick the node.

Exit codes: 0 done, 1 the node refused or failed (the reason on stderr), 2 bad
arguments or configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

__all__ = ["add_node_commands", "call_node", "without_plugins"]

DEFAULT_NODE = "http://127.0.0.1:9101"


def add_node_commands(commands: Any) -> None:
    """Add ``node``, ``status``, ``ask``, ``tell``, ``publish`` and ``deadletters``."""
    node: argparse.ArgumentParser = commands.add_parser(
        "node",
        help="run a node: agents, HTTP probes, metrics and the admin API",
        description=(
            "Run a kerna node until SIGTERM/SIGINT (drains within [node] stop_grace). "
            "Every config key can be set by env KERNA_<SECTION>_<KEY>."
        ),
    )
    node.add_argument("--config", metavar="FILE", help="the node's TOML file (default: env only)")
    node.add_argument("--check", action="store_true", help="validate the configuration and exit")
    node.add_argument(
        "--no-plugins",
        action="store_true",
        help="import no plug-in ([node] plugins ignored)",
    )
    node.set_defaults(run=_node)
    for name, text in (
        ("status", "show a node's status: members, hosted types, active agents, queues"),
        ("ask", "ask an agent through a node and print its reply as JSON"),
        ("tell", "tell an agent a message through a node"),
        ("publish", "publish an event on a topic through a node"),
    ):
        parser: argparse.ArgumentParser = commands.add_parser(name, help=text, description=text)
        _node_options(parser)
        if name == "status":
            parser.add_argument("--json", action="store_true", help="print the status as JSON")
            parser.set_defaults(run=_status)
            continue
        if name == "publish":
            parser.add_argument("topic")
        else:
            parser.add_argument("agent_type", metavar="TYPE")
            parser.add_argument("key", metavar="KEY")
        parser.add_argument("message", metavar="MESSAGE", help='JSON, e.g. \'{"type": "Ping"}\'')
        if name == "ask":
            parser.add_argument(
                "--timeout", type=float, default=None, help="seconds (default: the node's)"
            )
        parser.set_defaults(run=_send, action=name)
    _add_dead_letters(commands)
    from ._top import add_top

    add_top(commands, _node_options)


def _node_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--node",
        default=os.environ.get("KERNA_NODE_URL", DEFAULT_NODE),
        help="the node's HTTP address (default: $KERNA_NODE_URL or %(default)s)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("KERNA_HTTP_TOKEN"),
        help="the node's admin token (default: $KERNA_HTTP_TOKEN)",
    )


def _add_dead_letters(commands: Any) -> None:
    text = "list or replay the dead letters a node keeps"
    parser: argparse.ArgumentParser = commands.add_parser(
        "deadletters", help=text, description=text
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    for name, what in (
        ("list", "list the kept dead letters, oldest first"),
        ("replay", "send the selected dead letters to their agents again, as tells"),
    ):
        action: argparse.ArgumentParser = actions.add_parser(name, help=what, description=what)
        _node_options(action)
        action.add_argument("--reason", help="only this reason (e.g. handler_failed)")
        action.add_argument("--type", dest="agent_type", help="only for this agent type")
        action.add_argument("--message-type", help="only messages of this wire tag")
        if name == "list":
            action.add_argument("--limit", type=int, help="only the newest N")
            action.add_argument("--json", action="store_true", help="print them as JSON")
            action.set_defaults(run=_dead_letters_list)
        else:
            action.add_argument(
                "--seq", type=int, action="append", dest="seqs", help="this record (repeatable)"
            )
            action.add_argument("--all", action="store_true", help="every kept dead letter")
            action.set_defaults(run=_dead_letters_replay)


def _dead_letters_list(args: argparse.Namespace) -> int:
    query = {
        key: value
        for key, value in (
            ("reason", args.reason),
            ("type", args.agent_type),
            ("message_type", args.message_type),
            ("limit", args.limit),
        )
        if value is not None
    }
    path = "/admin/deadletters"
    if query:
        path += "?" + urllib.parse.urlencode(query)
    status, body = call_node(args, "GET", path, None)
    if status != 200:
        return _refused("deadletters list", status, body)
    if args.json:
        print(json.dumps(body, indent=2, sort_keys=True))
        return 0
    for record in body["dead_letters"]:
        message = json.dumps(record["message"], sort_keys=True)
        error = f" ({record['error']})" if record.get("error") else ""
        print(
            f"{record['seq']:>6} {record['reason']:<18} {record['kind']:<5} "
            f"{record['target']} {message}{error}"
        )
    stats = body["stats"]
    print(f"{stats['kept']} kept (of {stats['capacity']}), {stats['evicted']} evicted")
    return 0


def _dead_letters_replay(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {
        key: value
        for key, value in (
            ("reason", args.reason),
            ("agent_type", args.agent_type),
            ("message_type", args.message_type),
            ("seqs", args.seqs),
        )
        if value is not None
    }
    if bool(payload) == args.all:
        print(
            "kerna deadletters replay: name what to replay (--reason, --type, "
            "--message-type, --seq) or --all, not both",
            file=sys.stderr,
        )
        return 2
    if args.all:
        payload["all"] = True
    status, body = call_node(args, "POST", "/admin/deadletters/replay", payload)
    if status != 200:
        return _refused("deadletters replay", status, body)
    print(f"replayed {len(body['replayed'])}")
    for label in ("skipped", "failed"):
        for seq, why in sorted(body[label].items(), key=lambda item: int(item[0])):
            print(f"{label} {seq}: {why}")
    return 1 if body["failed"] else 0


def _node(args: argparse.Namespace) -> int:
    try:
        from kerna.node import configure_logging, load_config, run_node
    except ImportError as exc:
        print(
            f"kerna node: needs the node extra ({exc}): pip install 'kerna[node]'", file=sys.stderr
        )
        return 2
    from ._errors import ConfigError, KernaError

    if os.getcwd() not in sys.path:  # as `python -m` does: agent modules of the cwd import
        sys.path.insert(0, os.getcwd())
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"kerna node: {exc}", file=sys.stderr)
        return 2
    if args.no_plugins:
        config = without_plugins(config)
    if args.check:
        print(f"kerna node: {args.config or 'the environment'}: configuration OK")
        return 0
    configure_logging(config.node.id, config.log.level, config.log.format)
    import asyncio

    try:
        return asyncio.run(run_node(config))
    except (OSError, KernaError, ImportError) as exc:  # could not start: say why, briefly
        print(f"kerna node: cannot start: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def without_plugins(config: Any) -> Any:
    """``config`` with an empty ``[node] plugins`` list (``--no-plugins``)."""
    import msgspec

    return msgspec.structs.replace(config, node=msgspec.structs.replace(config.node, plugins=[]))


def _status(args: argparse.Namespace) -> int:
    status, body = call_node(args, "GET", "/admin/status", None)
    if status != 200:
        return _refused("status", status, body)
    if args.json:
        print(json.dumps(body, indent=2, sort_keys=True))
        return 0
    ready = "ready" if body.get("ready") else "not ready"
    print(f"node {body['node']} (cluster {body['cluster']}) at {body.get('address')}: {ready}")
    members = body.get("members")
    if members is None:
        print("members: none (this node runs alone, in no cluster)")
    else:
        print(f"members: {len(members)}")
        for member in members:
            print(f"  {json.dumps(member, sort_keys=True)}")
    print(f"{'TYPE':<24} {'ACTIVE':>7} {'QUEUED':>7} {'HANDLED':>9} {'FAILED':>7} {'DEAD':>6}")
    for name, stats in sorted(body.get("types", {}).items()):
        print(
            f"{name:<24} {stats['active']:>7} {stats['queued']:>7} {stats['handled']:>9} "
            f"{stats['failed']:>7} {stats['dead_letters']:>6}"
        )
    mismatches = body.get("schema_mismatches") or {}
    for peer, tags in sorted(mismatches.items()):
        print(f"schema mismatch with {peer}: {', '.join(tags)}")
    return 0


def _send(args: argparse.Namespace) -> int:
    try:
        message = json.loads(args.message)
    except json.JSONDecodeError as exc:
        print(f"kerna {args.action}: MESSAGE is not JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(message, dict):
        print(f"kerna {args.action}: MESSAGE must be a JSON object with a 'type'", file=sys.stderr)
        return 2
    payload: dict[str, Any] = {"message": message}
    if args.action == "publish":
        payload["topic"] = args.topic
    else:
        payload["agent_type"] = args.agent_type
        payload["key"] = args.key
    if args.action == "ask" and args.timeout is not None:
        payload["timeout"] = args.timeout
    status, body = call_node(args, "POST", f"/admin/{args.action}", payload)
    if not 200 <= status < 300:  # 0: unreachable
        return _refused(args.action, status, body)
    if args.action == "ask":
        print(json.dumps(body.get("reply")))
    return 0


def call_node(args: argparse.Namespace, method: str, path: str, payload: Any) -> tuple[int, Any]:
    """``(status, decoded JSON body)`` of a call to the node's HTTP API (``args.node``,
    ``args.token``); status 0 when the node cannot be reached."""
    url = args.node.rstrip("/") + path
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if args.token:
        request.add_header("Authorization", f"Bearer {args.token}")
    try:
        with urllib.request.urlopen(request, timeout=_client_timeout(args)) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except json.JSONDecodeError:
            return exc.code, {"error": "http", "message": exc.reason}
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return 0, {"error": "unreachable", "message": f"cannot reach {args.node}: {reason}"}


def _client_timeout(args: argparse.Namespace) -> float:
    # an ask may take its own timeout: wait a little longer than that for the answer
    timeout = getattr(args, "timeout", None)
    return 60.0 if timeout is None else timeout + 10.0


def _refused(action: str, status: int, body: Any) -> int:
    if isinstance(body, dict) and "message" in body:
        kind = body.get("error", "error")
        print(f"kerna {action}: {kind}: {body['message']}", file=sys.stderr)
    else:
        print(f"kerna {action}: HTTP {status}: {body!r}", file=sys.stderr)
    return 1
