"""The node handshake that opens every tcp:// connection, before any frame is delivered.

The connecting side (client) and the accepting side (server) exchange their listening
addresses, protocol versions and opaque schema fingerprints, and prove to each other
that they know the cluster secret by HMAC-SHA256 challenge-response; the secret never
crosses the wire::

    client -> Hello(version, address, nonce_c, schema, auth)
    server -> Welcome(version, address, nonce_s, schema, auth, proof_s, error)
    client -> Proof(proof_c)
    server -> Verdict(error)

``proof_s = HMAC(secret, "kerna/server" | nonce_c | nonce_s | client | server)``, and
``proof_c`` the same with ``"kerna/client"``: each side signs the other's fresh nonce
with its role and both addresses, so a proof cannot be replayed or reflected. Without
a secret on both sides the proofs are empty and the connection is allowed; a secret on
one side only is refused (a misconfigured cluster fails loudly, not open).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
from typing import TypeVar

import msgspec

from ._base import FrameTooLarge, PeerInfo
from ._tcp_framing import header, read_frame

__all__ = ["PROTOCOL_VERSION", "HandshakeError", "PeerInfo", "accept", "connect"]

PROTOCOL_VERSION = 1
HANDSHAKE_LIMIT = 64 * 1024  # bytes per handshake message (a schema document: <= 48 KiB)
_NONCE = 32


class HandshakeError(ConnectionError):
    """The peer failed the handshake (wrong secret, version, or not a kerna node)."""


class _Hello(msgspec.Struct, array_like=True):
    magic: str
    version: int
    address: str
    nonce: bytes
    schema: bytes
    text: bool  # the schema was a str (msgpack unions cannot hold both bytes and str)
    auth: bool


class _Welcome(msgspec.Struct, array_like=True):
    version: int
    address: str
    nonce: bytes
    schema: bytes
    text: bool  # the schema was a str (msgpack unions cannot hold both bytes and str)
    auth: bool
    proof: bytes
    error: str = ""


class _Proof(msgspec.Struct, array_like=True):
    proof: bytes


class _Verdict(msgspec.Struct, array_like=True):
    error: str = ""


_MAGIC = "kerna-tcp"
_M = TypeVar("_M", bound=msgspec.Struct)


def _proof(
    secret: bytes | None, role: bytes, nc: bytes, ns: bytes, client: str, server: str
) -> bytes:
    if secret is None:
        return b""
    message = b"|".join((b"kerna/" + role, nc, ns, client.encode(), server.encode()))
    return hmac.new(secret, message, hashlib.sha256).digest()


async def _write(writer: asyncio.StreamWriter, message: msgspec.Struct) -> None:
    body = msgspec.msgpack.encode(message)
    writer.write(header(len(body)) + body)
    await writer.drain()


async def _read(reader: asyncio.StreamReader, kind: type[_M]) -> _M:
    try:
        frame = await read_frame(reader, HANDSHAKE_LIMIT)
        if frame is None:
            raise HandshakeError("peer sent a heartbeat before the handshake")
        return msgspec.msgpack.decode(frame, type=kind)
    except asyncio.IncompleteReadError as exc:
        raise HandshakeError("peer closed the connection during the handshake") from exc
    except (msgspec.DecodeError, msgspec.ValidationError, FrameTooLarge, ConnectionError) as exc:
        # Each means "not a kerna node speaking this protocol": refused, nothing decoded.
        raise HandshakeError(f"malformed handshake message: {exc}") from exc


async def connect(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    address: str,
    expected: str,
    secret: bytes | None,
    schema: bytes | str,
) -> PeerInfo:
    """The client's side of the handshake (bound the call with a timeout).

    Raises:
        HandshakeError: the server refused us, or failed to prove the secret.
    """
    nonce_c = os.urandom(_NONCE)
    hello = _Hello(_MAGIC, PROTOCOL_VERSION, address, nonce_c, *_pack(schema), secret is not None)
    await _write(writer, hello)
    welcome = await _read(reader, _Welcome)
    if welcome.error:
        raise HandshakeError(f"{expected} refused the handshake: {welcome.error}")
    if welcome.version != PROTOCOL_VERSION:
        raise HandshakeError(
            f"{expected} speaks protocol {welcome.version}, not {PROTOCOL_VERSION}"
        )
    if welcome.auth != (secret is not None):
        raise HandshakeError(_mixed(expected, ours=secret is not None))
    want = _proof(secret, b"server", nonce_c, welcome.nonce, address, welcome.address)
    if not hmac.compare_digest(want, welcome.proof):
        raise HandshakeError(f"{expected} failed to prove the cluster secret")
    proof_c = _proof(secret, b"client", nonce_c, welcome.nonce, address, welcome.address)
    await _write(writer, _Proof(proof_c))
    verdict = await _read(reader, _Verdict)
    if verdict.error:
        raise HandshakeError(f"{expected} refused the handshake: {verdict.error}")
    return PeerInfo(welcome.address, welcome.version, _unpack(welcome.schema, welcome.text))


async def accept(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    address: str,
    secret: bytes | None,
    schema: bytes | str,
) -> PeerInfo:
    """The server's side of the handshake (bound the call with a timeout).

    Raises:
        HandshakeError: the client is not a kerna node, speaks another version, or
            failed to prove the secret (it was told why before this raises).
    """
    hello = await _read(reader, _Hello)
    nonce_s = os.urandom(_NONCE)
    error = ""
    if hello.magic != _MAGIC:
        error = "not a kerna tcp client"
    elif hello.version != PROTOCOL_VERSION:
        error = f"protocol {hello.version} is not {PROTOCOL_VERSION}"
    elif hello.auth != (secret is not None):
        error = _mixed("the client", ours=secret is not None)
    proof_s = (
        b"" if error else _proof(secret, b"server", hello.nonce, nonce_s, hello.address, address)
    )
    ours = secret is not None
    await _write(
        writer, _Welcome(PROTOCOL_VERSION, address, nonce_s, *_pack(schema), ours, proof_s, error)
    )
    if error:
        raise HandshakeError(f"refused {hello.address!r}: {error}")
    proof = await _read(reader, _Proof)
    want = _proof(secret, b"client", hello.nonce, nonce_s, hello.address, address)
    if not hmac.compare_digest(want, proof.proof):
        await _write(writer, _Verdict("wrong cluster secret"))
        raise HandshakeError(f"refused {hello.address!r}: it failed to prove the cluster secret")
    await _write(writer, _Verdict())
    return PeerInfo(hello.address, hello.version, _unpack(hello.schema, hello.text))


def _pack(schema: bytes | str) -> tuple[bytes, bool]:
    return (schema.encode(), True) if isinstance(schema, str) else (bytes(schema), False)


def _unpack(schema: bytes, text: bool) -> bytes | str:
    try:
        return schema.decode() if text else schema
    except UnicodeDecodeError as exc:
        raise HandshakeError(f"the peer's schema is not UTF-8: {exc}") from exc


def _mixed(who: str, *, ours: bool) -> str:
    if ours:
        return f"a cluster secret is configured here but not at {who}"
    return f"{who} has a cluster secret and this node has none"
