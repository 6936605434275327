"""tcp:// over mutual TLS, with a throwaway CA: the positive case, and every negative
refused before a frame is delivered."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kerna import ConfigError
from kerna.transports import PeerUnreachable
from kerna.transports.tcp import TcpTransport, tls_contexts

from .tcp_peers import WAIT, node

pytestmark = pytest.mark.anyio

_NOW = datetime.datetime.now(datetime.UTC)
_DAY = datetime.timedelta(days=1)


@dataclass
class Issued:
    cert: Path
    key: Path


class _Ca:
    """A certificate authority that issues leaf certificates into ``folder``."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.name = subject
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_NOW - _DAY)
            .not_valid_after(_NOW + _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.file = folder / f"{name}.pem"
        self.file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        name: str,
        *,
        hosts: tuple[str, ...] = ("127.0.0.1",),
        expired: bool = False,
        self_signed: bool = False,
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        alt: list[x509.GeneralName] = []
        for host in hosts:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt.append(x509.DNSName(host))
        start, end = (_NOW - 3 * _DAY, _NOW - 2 * _DAY) if expired else (_NOW - _DAY, _NOW + _DAY)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject if self_signed else self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .sign(key if self_signed else self.key, hashes.SHA256())
        )
        issued = Issued(self.folder / f"{name}.crt", self.folder / f"{name}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return issued


@dataclass
class Pki:
    ca: Path
    server: ssl.SSLContext
    client: dict[str, ssl.SSLContext | None]
    wrong_name_server: ssl.SSLContext
    files: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = _Ca(folder, "cluster-ca"), _Ca(folder, "other-ca")
    server_files = ca.issue("server")
    server, _ = tls_contexts(str(server_files.cert), str(server_files.key), str(ca.file))
    wrong_name = ca.issue("wrong-name", hosts=("other.example",))
    wrong_name_server, _ = tls_contexts(str(wrong_name.cert), str(wrong_name.key), str(ca.file))

    def client(issued: Issued) -> ssl.SSLContext:
        return tls_contexts(str(issued.cert), str(issued.key), str(ca.file))[1]

    no_cert = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca.file))
    return Pki(
        ca=ca.file,
        server=server,
        client={
            "good": client(ca.issue("client")),
            "no client certificate": no_cert,
            "self-signed": client(ca.issue("selfie", self_signed=True)),
            "wrong CA": client(other.issue("stranger")),
            "expired": client(ca.issue("old", expired=True)),
            "plaintext": None,
        },
        wrong_name_server=wrong_name_server,
        files=server_files,
    )


async def test_mutual_tls_carries_frames_between_nodes_of_one_ca(pki: Pki) -> None:
    async with (
        node(ssl_server=pki.server, ssl_client=pki.client["good"]) as (a, got_a),
        node(ssl_server=pki.server, ssl_client=pki.client["good"]) as (b, got_b),
    ):
        await a.send(b.address, b"over tls")
        await got_b.wait_frames(1)
        await b.send(a.address, b"and back")
        await got_a.wait_frames(1)
        assert got_b.frames == [(a.address, b"over tls")]
        assert got_a.frames == [(b.address, b"and back")]


@pytest.mark.parametrize(
    "client", ["no client certificate", "self-signed", "wrong CA", "expired", "plaintext"]
)
async def test_a_client_without_a_valid_certificate_is_refused_before_any_frame(
    pki: Pki, client: str
) -> None:
    async with (
        node(ssl_server=pki.server, handshake_timeout=2.0) as (b, got),
        node(ssl_client=pki.client[client], connect_timeout=WAIT) as (a, _),
    ):
        with pytest.raises(PeerUnreachable, match=f"cannot reach {b.address}"):
            await asyncio.wait_for(a.send(b.address, b"must not arrive"), WAIT)
        assert got.frames == []
        assert b.peer_info(a.address) is None


async def test_a_server_whose_certificate_names_another_host_is_refused(pki: Pki) -> None:
    async with (
        node(ssl_server=pki.wrong_name_server) as (b, got),
        node(ssl_client=pki.client["good"]) as (a, _),
    ):
        with pytest.raises(PeerUnreachable, match="match|mismatch|certificate"):
            await asyncio.wait_for(a.send(b.address, b"must not arrive"), WAIT)
        assert got.frames == []
        assert a.peer_info(b.address) is None


async def test_tls_files_given_as_the_tls_option_make_mutual_tls(pki: Pki) -> None:
    files = {"certfile": pki.files.cert, "keyfile": pki.files.key, "cafile": pki.ca}
    async with node(tls=files) as (a, _), node(tls=files) as (b, got):
        await a.send(b.address, b"over tls")
        await got.wait_frames(1)
        assert got.frames == [(a.address, b"over tls")]
    async with node(tls=files) as (b, got), node() as (plain, _):
        with pytest.raises(PeerUnreachable):
            await asyncio.wait_for(plain.send(b.address, b"must not arrive"), WAIT)
        assert got.frames == []


def test_a_tls_option_without_its_files_is_a_config_error_naming_them(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="missing: \\['keyfile'\\]"):
        TcpTransport("tcp://127.0.0.1:0", tls={"certfile": pki.files.cert, "cafile": pki.ca})
    with pytest.raises(ConfigError, match="not both"):
        TcpTransport("tcp://127.0.0.1:0", tls={}, ssl_server=pki.server)


def test_unreadable_tls_files_are_a_config_error_naming_them(pki: Pki, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.key")
    with pytest.raises(ConfigError, match="missing.key"):
        tls_contexts(str(pki.files.cert), missing, str(pki.ca))
