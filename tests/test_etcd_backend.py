"""etcd-specific behaviour of ``EtcdBackend`` (the shared semantics are in
test_state_conformance.py): URL and option errors, unreachable members, failover to
the next endpoint, ambiguous writes, TLS and authentication passed through."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aetcd
import pytest

from kerna import Compacted, ConfigError, DecodeError, OutcomeUnknown, Unavailable
from kerna.state import Put, StateBackend, connect
from kerna.state._etcd import EtcdBackend
from kerna.testing import EtcdMember, data_root, free_ports, require_server, skip_missing_servers

from .conftest import assert_no_stray_tasks

pytestmark = pytest.mark.anyio

FAST = {"timeout": 1.0, "probe_interval": 0.1, "probe_timeout": 0.3}


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("etcd://", {}, "names no endpoint"),
        ("etcd://h1:2379,", {}, "has no host"),
        ("etcd://h1:port", {}, "bad port 'port'"),
        ("etcd://h1:70000", {}, "bad port '70000'"),
        ("etcd://h1:2379/prefix", {}, "must not contain a path"),
        ("etcd://h1:2379?timeout=3", {}, "must not contain a query"),
        ("etcd://user:pw@h1:2379", {}, "use the username/password options"),
        ("etcd://[::1:2379", {}, "bad endpoint"),
        ("etcd://h1", {"timeout": 0}, "timeout must be a number of seconds > 0"),
        ("etcd://h1", {"timeout": "5"}, "timeout must be a number"),
        ("etcd://h1", {"probe_interval": -1}, "probe_interval must be"),
        ("etcd://h1", {"probe_timeout": True}, "probe_timeout must be"),
        ("etcd://h1", {"tiemout": 1}, "unknown etcd options: tiemout"),
        ("etcd://h1", {"ca_cert": "/nonexistent/ca.pem"}, "ca_cert: cannot read"),
        ("etcd://h1", {"ca_cert": 42}, "ca_cert must be a file path"),
        ("etcd://h1", {"username": "root"}, "username and password go together"),
        ("etcd://h1", {"password": ""}, "password must be a non-empty string"),
    ],
)
async def test_bad_urls_and_options_name_what_is_wrong(
    url: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace("[", r"\[")):
        await connect(url, **options)


async def test_client_key_and_certificate_go_together(tmp_path: Path) -> None:
    pem = tmp_path / "client.pem"
    pem.write_text("not checked before connecting")
    with pytest.raises(ConfigError, match="cert_key and cert_cert go together"):
        await connect("etcd://h1", cert_cert=str(pem))


async def test_endpoints_are_parsed_with_default_ports() -> None:
    backend = EtcdBackend(["h1", "h2:2380", "[::1]", "[::1]:2381"])  # not connected yet
    assert backend.endpoints == ("h1:2379", "h2:2380", "[::1]:2379", "[::1]:2381")
    assert backend.url == "etcd://h1:2379,h2:2380,[::1]:2379,[::1]:2381"
    assert backend.endpoint is None
    await backend.aclose()
    with pytest.raises(ConfigError, match="bad port"):
        EtcdBackend(["h1:0"])


async def test_unreachable_endpoint_is_unavailable_within_the_timeout() -> None:
    (port,) = free_ports(1)
    before = asyncio.all_tasks()
    start = time.monotonic()
    with pytest.raises(Unavailable, match=f"127.0.0.1:{port}") as info:
        await connect(f"etcd://127.0.0.1:{port}", timeout=0.5)
    elapsed = time.monotonic() - start
    assert 0.4 < elapsed < 1.5, elapsed
    assert not isinstance(info.value, OutcomeUnknown)
    assert "within 0.5 s" in str(info.value)
    assert_no_stray_tasks(before)
    # The process lives on and the next attempt behaves the same.
    with pytest.raises(Unavailable):
        await connect(f"etcd://127.0.0.1:{port}", timeout=0.2)


async def test_failover_from_a_dead_first_endpoint(etcd_server: EtcdMember) -> None:
    (dead,) = free_ports(1)
    backend = await connect(f"etcd://127.0.0.1:{dead},{etcd_server.endpoint}", **FAST)
    try:
        assert isinstance(backend, EtcdBackend)
        assert backend.endpoint == etcd_server.endpoint
        rev = await backend.put("failover/k", b"v")
        kv = await backend.get("failover/k")
        assert kv is not None
        assert kv.mod_revision == rev
    finally:
        await backend.aclose()


async def test_a_write_to_a_frozen_member_is_ambiguous_and_a_read_is_not(
    etcd_server: EtcdMember,
) -> None:
    backend = await connect(etcd_server.url, timeout=0.5, probe_timeout=0.3)
    try:
        rev = await backend.put("ambiguous/k", b"before")
        etcd_server.pause()
        try:
            with pytest.raises(OutcomeUnknown, match="may or may not have been applied") as info:
                await backend.put("ambiguous/k", b"after", expected=rev)
            assert info.value.ambiguous is True
            assert isinstance(info.value, Unavailable)
            start = time.monotonic()
            with pytest.raises(Unavailable, match=etcd_server.endpoint) as read_info:
                await backend.get("ambiguous/k")
            assert not getattr(read_info.value, "ambiguous", False)
            assert time.monotonic() - start < 1.0
        finally:
            etcd_server.resume()
        # The caller re-reads to learn what happened (here, either may be true: the
        # request sat unread in the frozen member's socket when the client gave up).
        kv = await backend.get("ambiguous/k")
        assert kv is not None
        assert kv.value in (b"before", b"after")
        if kv.value == b"before":
            await backend.put("ambiguous/k", b"after", expected=kv.mod_revision)
    finally:
        await backend.aclose()
        etcd_server.ensure_running()


async def test_aclose_ends_open_watches_and_the_probe(etcd_server: EtcdMember) -> None:
    before = asyncio.all_tasks()
    backend = await connect(etcd_server.url, **FAST)
    start = (await backend.range("closing/")).revision + 1
    seen: list[int] = []
    first = asyncio.Event()

    async def follow() -> None:
        async for event in backend.watch("closing/", start):
            seen.append(event.revision)
            first.set()

    follower = asyncio.ensure_future(follow())
    rev = await backend.put("closing/a", b"1")
    async with asyncio.timeout(5):
        await first.wait()
    await backend.aclose()
    async with asyncio.timeout(2):
        await follower  # ended, not cancelled
    assert seen == [rev]
    assert_no_stray_tasks(before)
    with pytest.raises(ConfigError, match="closed"):
        await backend.get("closing/a")


async def test_leases_round_up_to_whole_seconds(etcd_server: EtcdMember) -> None:
    backend = await connect(etcd_server.url, **FAST)
    try:
        lease = await backend.lease_grant(0.2)
        assert await backend.lease_keepalive(lease) == 1.0
        await backend.lease_revoke(lease)
    finally:
        await backend.aclose()


async def test_watch_and_range_over_every_key(etcd_server: EtcdMember) -> None:
    backend = await connect(etcd_server.url, **FAST)
    try:
        rev = await backend.put("\u00e9v\u00e9nement/1", b"x")
        page = await backend.range("", start_after="\u00e9v\u00e9nement/")
        assert page.kvs[0].key == "\u00e9v\u00e9nement/1"
        async with asyncio.timeout(5):
            async for event in backend.watch("", rev):
                assert event.kv.key == "\u00e9v\u00e9nement/1"
                break
        with pytest.raises(Compacted):
            async for _ in backend.watch("", 0):
                pass
        empty = await backend.range("\u00e9v\u00e9nement/", start_after="\u00e9v\u00e9nement0")
        assert (empty.kvs, empty.more) == ((), False)
        assert empty.revision >= rev
    finally:
        await backend.aclose()


async def test_keys_that_are_not_utf8_are_a_decode_error(etcd_server: EtcdMember) -> None:
    host, port = etcd_server.endpoint.split(":")
    backend = await connect(etcd_server.url, **FAST)
    async with aetcd.Client(host, int(port)) as raw:
        await raw.put(b"binary/\xff", b"x")
        try:
            with pytest.raises(DecodeError, match="not UTF-8"):
                await backend.range("binary/")
            result = await backend.txn([], [Put("binary/ok", b"y")])  # the rest still works
            assert result.succeeded
        finally:
            await raw.delete(b"binary/\xff")  # other tests share the server
            await backend.aclose()


# -- TLS and authentication, against a member of their own -------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_certs(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=kerna test CA", cwd=d)  # fmt: skip
    for name, usage in (("server", "serverAuth"), ("client", "clientAuth")):
        (d / f"{name}.ext").write_text(f"subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n")
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=kerna-{name}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=d)  # fmt: skip


@pytest.fixture(scope="module")
def secure_etcd() -> Iterator[tuple[EtcdMember, Path]]:
    """A member that requires TLS with client certificates and a password (user root)."""
    if shutil.which("openssl") is None:
        require_server("openssl is needed to make test certificates (apt-get install openssl)")
    root = data_root("kerna-etcd-")
    certs = root / "certs"
    certs.mkdir()
    _make_certs(certs)
    client, peer, health = free_ports(3)
    tls = ["--cert-file", str(certs / "server.crt"), "--key-file", str(certs / "server.key"),
           "--client-cert-auth", "--trusted-ca-file", str(certs / "ca.crt")]  # fmt: skip
    member = EtcdMember(
        "secure", root, client, peer, f"secure=http://127.0.0.1:{peer}", tls, health_port=health
    )
    try:
        with skip_missing_servers():
            member.start()
        ctl = ["etcdctl", f"--endpoints=https://{member.endpoint}", f"--cacert={certs / 'ca.crt'}",
               f"--cert={certs / 'client.crt'}", f"--key={certs / 'client.key'}"]  # fmt: skip
        env = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}
        for command in (["user", "add", "root", "--new-user-password=s3cret"], ["auth", "enable"]):
            subprocess.run([*ctl, *command], check=True, capture_output=True, env=env)
        yield member, certs
    finally:
        member.kill()
        shutil.rmtree(root, ignore_errors=True)


async def test_tls_with_client_certificate_and_password(
    secure_etcd: tuple[EtcdMember, Path],
) -> None:
    member, certs = secure_etcd
    tls = {
        "ca_cert": str(certs / "ca.crt"),
        "cert_key": str(certs / "client.key"),
        "cert_cert": certs / "client.crt",  # a Path works too
    }
    backend: StateBackend = await connect(
        member.url, username="root", password="s3cret", **tls, **FAST
    )
    try:
        rev = await backend.put("secure/k", b"v")
        kv = await backend.get("secure/k")
        assert kv is not None
        assert kv.mod_revision == rev
        start = rev
        async with asyncio.timeout(5):
            async for event in backend.watch("secure/", start):
                assert event.revision == rev
                break
    finally:
        await backend.aclose()

    with pytest.raises(ConfigError, match="username/password"):
        await connect(member.url, username="root", password="wrong", **tls, **FAST)
    with pytest.raises(Unavailable, match=member.endpoint):  # no client certificate
        await connect(member.url, ca_cert=tls["ca_cert"], username="root", password="s3cret",
                      timeout=0.5)  # fmt: skip
    with pytest.raises(Unavailable):  # plain text to a TLS port
        await connect(member.url, timeout=0.5)
