"""The configuration of ``kerna node``: a TOML file and ``KERNA_*`` environment variables.

The file has one table per section (``[node]``, ``[state]``, ``[transport]``, ``[http]``,
``[log]``); each is decoded into a typed msgspec Struct that forbids unknown keys.

Environment naming rule: every key ``[section] key`` can be set or overridden by
``KERNA_<SECTION>_<KEY>`` in upper case (``[state] url`` is ``KERNA_STATE_URL``,
``[node] lease_ttl`` is ``KERNA_NODE_LEASE_TTL``, ``[http] listen`` is
``KERNA_HTTP_LISTEN``). ``KERNA_CLUSTER`` is accepted for ``[node] cluster`` too (it
is what every node of a cluster shares). The environment wins over the file. A list
(``[node] agents``) is comma-separated in the environment; numbers are parsed.

Validation collects: every unknown section or key, wrong type, out-of-range value,
unreadable secret or token file and agent module that does not import is listed in one
``NodeConfigError``, each line naming where the value came from (the file and key, or
the environment variable) and what was wrong.
"""

from __future__ import annotations

import importlib
import ipaddress
import logging
import math
import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from kerna._errors import ConfigError

__all__ = [
    "HttpSection",
    "LogSection",
    "NodeConfig",
    "NodeConfigError",
    "NodeSection",
    "Secret",
    "StateSection",
    "TransportSection",
    "load_config",
]


def default_node_id() -> str:
    """``hostname-pid``: unique per process on one host, readable in logs."""
    return f"{socket.gethostname()}-{os.getpid()}"


class NodeSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[node]``: who this node is and what it hosts.

    Attributes:
        cluster: the cluster's name (required): nodes of one cluster share it.
        id: this node's id (default ``hostname-pid``).
        agents: modules to load: ``setup(kernel)`` is called if the module defines it,
            else every Agent subclass it defines is registered.
        lease_ttl: seconds a dead node's claims outlive it (its lease's TTL).
        stop_grace: seconds a stop (SIGTERM) lets mailboxes drain.
        ask_timeout: the default ask timeout of the node's kernel.
        timing: time one message in this many per agent type for the wait and
            handling histograms of ``/metrics`` (``Kernel(timing=)``; 1: every
            message, 0: none). Default 16.
        plugins: installed plug-ins (``kerna.plugins`` entry points) to load into the
            kernel's middleware chain; only these are imported (``--no-plugins``: none).
    """

    cluster: str
    id: str = msgspec.field(default_factory=default_node_id)
    agents: list[str] = msgspec.field(default_factory=list)
    lease_ttl: float = 10.0
    stop_grace: float = 10.0
    ask_timeout: float = 30.0
    timing: int = 16
    plugins: list[str] = msgspec.field(default_factory=list)


class StateSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[state]``: the state backend (``memory://`` keeps state in the process)."""

    url: str = "memory://"


class TransportSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[transport]``: how other nodes reach this one.

    Attributes:
        url: the listen URL (``tcp://127.0.0.1:7101``); none: no other node reaches it.
        secret_file: a file holding the cluster's shared secret (surrounding whitespace
            is stripped); relative to the config file's folder.
        advertise: the address announced to peers when it is not the listen URL.
    """

    url: str | None = None
    secret_file: str | None = None
    advertise: str | None = None


class HttpSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[http]``: the probes, metrics and admin API.

    Attributes:
        listen: ``host:port``; a host other than a loopback address requires a token.
        token: the bearer token admin calls must carry (``token_file`` keeps it out of
            the config file).
        token_file: a file holding the token (relative to the config file's folder).
        max_loop_lag: seconds of event-loop lag above which ``/healthz`` fails.
        probe_timeout: seconds ``/readyz`` gives the state backend to answer.
    """

    listen: str = "127.0.0.1:9101"
    token: str | None = None
    token_file: str | None = None
    max_loop_lag: float = 1.0
    probe_timeout: float = 2.0

    def __repr__(self) -> str:  # the token never shows in a log line or a traceback
        shown = {name: getattr(self, name) for name in self.__struct_fields__}
        if shown["token"] is not None:
            shown["token"] = "***"
        return f"HttpSection({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


class LogSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[log]``: ``level`` (a logging level name) and ``format`` (``json`` or ``text``)."""

    level: str = "INFO"
    format: str = "json"


class Secret:
    """A secret value that never shows in a repr or a log line."""

    __slots__ = ("value",)

    def __init__(self, value: bytes) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "Secret(***)"


class NodeConfig(msgspec.Struct, kw_only=True):
    """A validated node configuration (``load_config``).

    Attributes:
        node, state, transport, http, log: the sections.
        secret: the cluster secret read from ``[transport] secret_file``.
        token: the admin token (``[http] token`` or the content of ``token_file``).
        source: the config file, if any.
    """

    node: NodeSection
    state: StateSection
    transport: TransportSection
    http: HttpSection
    log: LogSection
    secret: Secret | None = None
    token: Secret | None = None
    source: str | None = None

    @property
    def listen(self) -> tuple[str, int]:
        """``[http] listen`` as (host, port)."""
        host, port = _split_listen(self.http.listen)
        return host, port


class NodeConfigError(ConfigError):
    """A node configuration with one or more bad values; ``problems`` lists each one
    (where it came from and what was wrong), and the message shows them all."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in the node configuration:\n{lines}")


SECTIONS: dict[str, type[msgspec.Struct]] = {
    "node": NodeSection,
    "state": StateSection,
    "transport": TransportSection,
    "http": HttpSection,
    "log": LogSection,
}
ALIASES = {"KERNA_CLUSTER": ("node", "cluster")}


def env_name(section: str, key: str) -> str:
    """The environment variable of ``[section] key``."""
    return f"KERNA_{section.upper()}_{key.upper()}"


def load_config(
    path: str | os.PathLike[str] | None,
    environ: Mapping[str, str] | None = None,
    *,
    import_agents: bool = True,
) -> NodeConfig:
    """Read, merge and validate a node's configuration.

    Args:
        path: the TOML file; None: the environment alone.
        environ: the environment (default ``os.environ``).
        import_agents: also import ``[node] agents`` and check that each defines
            ``setup(kernel)`` or an Agent subclass (as starting the node would).

    Raises:
        NodeConfigError: one or more bad values, all listed.
    """
    env = os.environ if environ is None else environ
    problems: list[str] = []
    label = "" if path is None else os.fspath(path)
    base = Path.cwd() if path is None else Path(label).resolve().parent
    raw: dict[str, dict[str, tuple[Any, str, bool]]] = {name: {} for name in SECTIONS}
    if path is not None:
        _read_file(label, raw, problems)
    _read_env(env, raw, problems)
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        sections[name] = _decode_section(name, cls, raw[name], problems)
    where = {(s, k): w for s, keys in raw.items() for k, (_, w, _) in keys.items()}

    def at(section: str, key: str) -> str:
        return where.get((section, key), f"[{section}] {key}")

    secret, token = _check(sections, at, base, problems, import_agents)
    if problems:
        raise NodeConfigError(problems)
    return NodeConfig(**sections, secret=secret, token=token, source=label or None)


def _read_file(label: str, raw: dict[str, dict[str, Any]], problems: list[str]) -> None:
    try:
        with open(label, "rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        problems.append(f"{label}: cannot read: {exc.strerror or exc}")
        return
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{label}: not valid TOML: {exc}")
        return
    for section, table in document.items():
        if section not in SECTIONS:
            known = ", ".join(f"[{s}]" for s in SECTIONS)
            problems.append(f"{label}: unknown section [{section}] (known: {known})")
            continue
        if not isinstance(table, dict):
            problems.append(f"{label}: {section} must be a table ([{section}]), got {table!r}")
            continue
        fields = _field_types(SECTIONS[section])
        for key, value in table.items():
            if key not in fields:
                known = ", ".join(fields)
                problems.append(f"{label}: [{section}] {key}: unknown key (known: {known})")
                continue
            raw[section][key] = (value, f"{label}: [{section}] {key}", False)


def _read_env(env: Mapping[str, str], raw: dict[str, dict[str, Any]], problems: list[str]) -> None:
    for section, cls in SECTIONS.items():
        for key in _field_types(cls):
            name = env_name(section, key)
            if name in env:
                raw[section][key] = (env[name], f"env {name}", True)
    for alias, (section, key) in ALIASES.items():
        if alias not in env:
            continue
        name = env_name(section, key)
        if name in env and env[name] != env[alias]:
            problems.append(f"env {alias} and env {name} disagree: {env[alias]!r} vs {env[name]!r}")
        elif name not in env:
            raw[section][key] = (env[alias], f"env {alias}", True)


def _field_types(cls: type[msgspec.Struct]) -> dict[str, Any]:
    return {f.name: f.type for f in msgspec.structs.fields(cls)}


def _decode_section(
    section: str,
    cls: type[msgspec.Struct],
    values: dict[str, tuple[Any, str, bool]],
    problems: list[str],
) -> Any:
    """The section's Struct from its values, or None (each bad value in ``problems``)."""
    types = _field_types(cls)
    good: dict[str, Any] = {}
    ok = True
    for key, (value, where, from_env) in values.items():
        if from_env and types[key] == list[str]:
            value = [part.strip() for part in value.split(",") if part.strip()]
        try:
            good[key] = msgspec.convert(value, types[key], strict=not from_env)
        except msgspec.ValidationError:
            problems.append(f"{where}: expected {_type_text(types[key])}, got {value!r}")
            ok = False
    for field in msgspec.structs.fields(cls):
        if field.required and field.name not in values:
            problems.append(
                f"[{section}] {field.name}: required (or set {env_name(section, field.name)})"
            )
            ok = False
    return cls(**good) if ok else None


def _type_text(form: Any) -> str:
    return {
        str: "a string",
        float: "a number",
        list[str]: "a list of strings",
        str | None: "a string",
    }.get(form, repr(form))


def _check(
    sections: dict[str, Any],
    at: Callable[[str, str], str],
    base: Path,
    problems: list[str],
    import_agents: bool,
) -> tuple[Secret | None, Secret | None]:
    """The checks beyond types, for each section that decoded (one that did not is
    already in ``problems``); returns the secret and the token read from their files."""
    node: NodeSection | None = sections["node"]
    state: StateSection | None = sections["state"]
    transport: TransportSection | None = sections["transport"]
    http: HttpSection | None = sections["http"]
    logs: LogSection | None = sections["log"]
    if node is not None:
        _check_node(node, at, problems)
    if state is not None:
        from kerna.state._registry import backend_class

        _try(problems, at("state", "url"), lambda: backend_class(state.url))
    secret = None
    if transport is not None:
        secret = _check_transport(transport, at, base, problems)
    token = None
    if http is not None:
        token = _check_http(http, at, base, problems)
    if logs is not None:
        if not isinstance(logging.getLevelNamesMapping().get(logs.level.upper()), int):
            problems.append(f"{at('log', 'level')}: not a logging level: {logs.level!r}")
        if logs.format not in ("json", "text"):
            problems.append(f"{at('log', 'format')}: must be 'json' or 'text', got {logs.format!r}")
    if node is not None and import_agents:
        for module in node.agents:
            problem = check_agent_module(module)
            if problem is not None:
                problems.append(f"{at('node', 'agents')}: {problem}")
    return secret, token


def _check_node(node: NodeSection, at: Callable[[str, str], str], problems: list[str]) -> None:
    for key, text in (("cluster", node.cluster), ("id", node.id)):
        if not text or "/" in text or text != text.strip() or " " in text:
            problems.append(f"{at('node', key)}: must be non-empty, without '/' or spaces")
    for key, seconds, zero_ok in (
        ("lease_ttl", node.lease_ttl, False),
        ("stop_grace", node.stop_grace, True),
        ("ask_timeout", node.ask_timeout, False),
    ):
        if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero_ok):
            bound = ">= 0" if zero_ok else "> 0"
            problems.append(
                f"{at('node', key)}: must be a number of seconds {bound}, got {seconds}"
            )
    if node.timing < 0:
        problems.append(f"{at('node', 'timing')}: must be an int >= 0, got {node.timing}")


def _check_transport(
    transport: TransportSection, at: Callable[[str, str], str], base: Path, problems: list[str]
) -> Secret | None:
    from kerna.transports._registry import transport_class

    url = transport.url
    if url is not None:
        _try(problems, at("transport", "url"), lambda: transport_class(url))
    if transport.secret_file is None:
        return None
    where = at("transport", "secret_file")
    if url is None:
        problems.append(
            f"{where}: a secret needs a transport "
            f"(set [transport] url or {env_name('transport', 'url')})"
        )
    return _read_secret(base, transport.secret_file, where, problems)


def _check_http(
    http: HttpSection, at: Callable[[str, str], str], base: Path, problems: list[str]
) -> Secret | None:
    for key, seconds in (
        ("max_loop_lag", http.max_loop_lag),
        ("probe_timeout", http.probe_timeout),
    ):
        if not (math.isfinite(seconds) and seconds > 0):
            problems.append(f"{at('http', key)}: must be a number of seconds > 0, got {seconds}")
    token = None
    if http.token is not None and http.token_file is not None:
        problems.append(f"{at('http', 'token')}: give token or token_file, not both")
    elif http.token is not None:
        if not http.token.strip():
            problems.append(f"{at('http', 'token')}: must not be empty")
        else:
            token = Secret(http.token.strip().encode())
    elif http.token_file is not None:
        token = _read_secret(base, http.token_file, at("http", "token_file"), problems)
    try:
        host, _ = _split_listen(http.listen)
    except ValueError as exc:
        problems.append(f"{at('http', 'listen')}: {exc}")
    else:
        # a token file that could not be read is already a problem of its own
        if not _loopback(host) and http.token is None and http.token_file is None:
            problems.append(
                f"{at('http', 'listen')}: {host!r} is not a loopback address: a token is "
                f"required ([http] token or token_file, or {env_name('http', 'token')})"
            )
    return token


def _try(problems: list[str], where: str, check: Callable[[], object]) -> None:
    try:
        check()
    except ConfigError as exc:
        problems.append(f"{where}: {exc}")


def _read_secret(base: Path, name: str, where: str, problems: list[str]) -> Secret | None:
    path = base / name
    try:
        value = path.read_bytes().strip()
    except OSError as exc:
        problems.append(f"{where}: cannot read {str(path)!r}: {exc.strerror or exc}")
        return None
    if not value:
        problems.append(f"{where}: {str(path)!r} is empty")
        return None
    return Secret(value)


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port_text = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"must be 'host:port' with a port 0-65535, got {listen!r}")
    return host, int(port_text)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_agent_module(module: str) -> str | None:
    """Why the agent module ``module`` cannot be loaded, or None when it can."""
    from kerna import Agent

    try:
        loaded = importlib.import_module(module)
    except Exception as exc:
        return f"module {module!r} does not import: {type(exc).__name__}: {exc}"
    if callable(getattr(loaded, "setup", None)) or agent_classes(loaded):
        return None
    return f"module {module!r} defines neither setup(kernel) nor an {Agent.__name__} subclass"


def agent_classes(module: Any) -> list[type[Any]]:
    """The Agent subclasses ``module`` defines (not those it imports), in source order."""
    from kerna import Agent

    return [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, Agent)
        and value is not Agent
        and value.__module__ == module.__name__
    ]
