"""``kerna node``'s configuration: TOML + environment, every bad value in one error."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from pathlib import Path

import pytest

from kerna.node import NodeConfigError, kernel_options, load_config
from kerna.node._logs import JsonFormatter
from kerna.node._messages import BadMessage, decode_message

from .node_agents import Inc, Ping


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


GOOD = """
[node]
cluster = "shop"
id = "n1"
agents = ["tests.node_agents"]
lease_ttl = 2.0
[state]
url = "memory://"
[http]
listen = "127.0.0.1:9101"
"""


def test_every_bad_value_is_named_in_one_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[node]
cluster = "shop"
lease_ttl = -1
stop_grace = "soon"
agents = ["tests.no_such_module", "json"]
colour = "blue"
[state]
url = "nope://x"
[http]
listen = "localhost"
[log]
level = "LOUD"
[extra]
x = 1
""",
    )
    with pytest.raises(NodeConfigError) as caught:
        load_config(path, {})
    text = str(caught.value)
    problems = caught.value.problems
    assert f"{path}: [node] stop_grace: expected a number, got 'soon'" in problems
    assert f"{path}: [node] colour: unknown key" in text
    assert f"{path}: unknown section [extra]" in text
    # [node] did not decode (stop_grace): its own range checks wait for a good
    # section, but every other section's problems are still listed
    assert f"{path}: [state] url: no state backend for scheme 'nope'" in text
    assert f"{path}: [http] listen: must be 'host:port'" in text
    assert f"{path}: [log] level: not a logging level: 'LOUD'" in text
    assert len(problems) == 6, problems


def test_semantic_problems_of_one_section_are_all_listed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[node]
cluster = "a/b"
lease_ttl = -1
ask_timeout = 0
agents = ["tests.no_such_module", "json"]
[log]
format = "xml"
""",
    )
    with pytest.raises(NodeConfigError) as caught:
        load_config(path, {})
    problems = caught.value.problems
    assert problems == [
        f"{path}: [node] cluster: must be non-empty, without '/' or spaces",
        f"{path}: [node] lease_ttl: must be a number of seconds > 0, got -1.0",
        f"{path}: [node] ask_timeout: must be a number of seconds > 0, got 0.0",
        f"{path}: [log] format: must be 'json' or 'text', got 'xml'",
        f"{path}: [node] agents: module 'tests.no_such_module' does not import: "
        "ModuleNotFoundError: No module named 'tests.no_such_module'",
        f"{path}: [node] agents: module 'json' defines neither setup(kernel) nor an Agent subclass",
    ]


def test_a_missing_cluster_names_the_key_and_its_variable(tmp_path: Path) -> None:
    with pytest.raises(
        NodeConfigError, match=r"\[node\] cluster: required \(or set KERNA_NODE_CLUSTER\)"
    ):
        load_config(write(tmp_path, "[node]\nid = 'n1'\n"), {})


def test_the_environment_overrides_the_file(tmp_path: Path) -> None:
    env = {
        "KERNA_STATE_URL": "sqlite:///x.db",
        "KERNA_NODE_ID": "n9",
        "KERNA_CLUSTER": "other",
        "KERNA_HTTP_LISTEN": "127.0.0.1:9999",
        "KERNA_NODE_LEASE_TTL": "2.5",
        "KERNA_NODE_AGENTS": "tests.node_agents, tests.node_plain_agents",
        "KERNA_REQUIRE_SERVERS": "1",  # other KERNA_ variables are not config keys
    }
    config = load_config(write(tmp_path, GOOD), env)
    assert config.state.url == "sqlite:///x.db"
    assert config.node.id == "n9"
    assert config.node.cluster == "other"
    assert config.listen == ("127.0.0.1", 9999)
    assert config.node.lease_ttl == 2.5
    assert config.node.agents == ["tests.node_agents", "tests.node_plain_agents"]


def test_a_bad_environment_value_is_named_by_its_variable(tmp_path: Path) -> None:
    env = {"KERNA_NODE_LEASE_TTL": "ten", "KERNA_CLUSTER": "a", "KERNA_NODE_CLUSTER": "b"}
    with pytest.raises(NodeConfigError) as caught:
        load_config(write(tmp_path, GOOD), env)
    assert caught.value.problems == [
        "env KERNA_CLUSTER and env KERNA_NODE_CLUSTER disagree: 'a' vs 'b'",
        "env KERNA_NODE_LEASE_TTL: expected a number, got 'ten'",
    ]


def test_the_environment_alone_configures_a_node() -> None:
    config = load_config(None, {"KERNA_CLUSTER": "shop"})
    assert config.node.id == f"{socket.gethostname()}-{os.getpid()}"  # the default id
    assert config.state.url == "memory://"
    assert config.listen == ("127.0.0.1", 9101)


def test_listening_beyond_loopback_requires_a_token(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("127.0.0.1:9101", "0.0.0.0:9101"))
    with pytest.raises(NodeConfigError, match=r"'0.0.0.0' is not a loopback address: a token"):
        load_config(path, {})
    config = load_config(path, {"KERNA_HTTP_TOKEN": "t0ken"})
    assert config.token is not None
    assert config.token.value == b"t0ken"
    assert "t0ken" not in repr(config)
    (tmp_path / "token").write_text("from-file\n")
    config = load_config(path, {"KERNA_HTTP_TOKEN_FILE": "token"})  # next to node.toml
    assert config.token is not None
    assert config.token.value == b"from-file"


def test_the_secret_file_is_read_and_given_to_the_transport(tmp_path: Path) -> None:
    text = GOOD + '[transport]\nurl = "tcp://127.0.0.1:0"\nsecret_file = "secret"\n'
    path = write(tmp_path, text)
    with pytest.raises(NodeConfigError, match=r"\[transport\] secret_file: cannot read"):
        load_config(path, {})
    (tmp_path / "secret").write_text("s3cret\n")
    config = load_config(path, {})
    options = kernel_options(config)
    assert options["transport"] == "tcp://127.0.0.1:0"
    assert options["transport_options"] == {"secret": b"s3cret"}
    assert options["state"] == "memory://"
    assert options["lease_ttl"] == 2.0
    assert "s3cret" not in repr(config)


def test_a_secret_without_a_transport_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s")
    path = write(tmp_path, GOOD + '[transport]\nsecret_file = "secret"\n')
    with pytest.raises(NodeConfigError, match=r"a secret needs a transport"):
        load_config(path, {})


def test_a_json_message_decodes_into_its_registered_type() -> None:
    types = {"tests.node_agents.Ping": Ping, "tests.node_agents.Inc": Inc}
    assert decode_message({"type": "Ping", "n": 1}, types) == Ping(n=1)
    assert decode_message({"type": "tests.node_agents.Ping", "n": 2}, types) == Ping(n=2)
    with pytest.raises(BadMessage, match=r"Expected `int`, got `str` - at `\$.n`"):
        decode_message({"type": "Ping", "n": "x"}, types)
    with pytest.raises(BadMessage, match=r"missing required field `n`"):
        decode_message({"type": "Ping"}, types)
    with pytest.raises(BadMessage, match=r"unknown field \$.paws \(fields: pause\)"):
        decode_message({"type": "Inc", "paws": 1}, types)
    with pytest.raises(BadMessage, match=r"no registered message type 'Pong'"):
        decode_message({"type": "Pong", "n": 1}, types)
    with pytest.raises(BadMessage, match=r"has no 'type'"):
        decode_message({"n": 1}, types)


def test_json_log_lines_carry_the_node_agent_and_correlation_ids() -> None:
    record = logging.makeLogRecord(
        {
            "name": "kerna.activation",
            "levelno": logging.WARNING,
            "levelname": "WARNING",
            "msg": "%s failed",
            "args": ("Echo/a",),
            "agent_id": "Echo/a",
            "correlation_id": 7,
        }
    )
    line = JsonFormatter("n1").format(record)
    entry = json.loads(line)
    assert entry["message"] == "Echo/a failed"
    assert (entry["node"], entry["agent_id"], entry["correlation_id"]) == ("n1", "Echo/a", 7)
    assert entry["level"] == "WARNING"
    assert entry["ts"].endswith("Z")
    assert "\n" not in line


def test_the_readme_node_config_is_valid(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    (block,) = re.findall(r"^```toml\n(.*?)^```", readme, re.DOTALL | re.MULTILINE)
    (tmp_path / "secret").write_text("s")
    (tmp_path / "admin-token").write_text("t")
    config = load_config(write(tmp_path, block), {}, import_agents=False)
    assert config.node.agents == ["myapp.agents"]
    assert config.secret is not None
    assert config.token is not None
