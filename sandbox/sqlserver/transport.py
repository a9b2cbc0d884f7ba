"""The byte stream a TDS connection reads and writes through: clear text, or TLS as SQL Server does it.

Purpose: hide from the TDS framing whether bytes travel in clear or inside TLS. SQL Server speaks
TLS in two ways, both handled here:
- TDS 8.0 "strict" (SQL Server 2022): TLS first, on the bare socket, before any TDS byte, with ALPN
  ``tds/8.0`` (``accept_strict_tls``); PRELOGIN and everything after it travel inside TLS, so nothing
  an on-path attacker can rewrite decides whether the connection is encrypted;
- TDS 7.x: the TLS handshake records travel inside TDS packets of type PRELOGIN (0x12), in both
  directions (``accept_tls``), after an unauthenticated PRELOGIN exchange in clear text; only after
  the handshake does TLS run directly on the socket, with the TDS packets inside it
  (``TlsTransport``); with login-only encryption both sides drop TLS right after LOGIN7, without a
  TLS close (``TlsTransport.drop_tls``).

Boundaries: sockets and ``ssl`` only; what the TDS messages mean is protocol.py's and server.py's.
The TLS engine is ``ssl.MemoryBIO`` + ``SSLContext.wrap_bio``, so this module decides where the
encrypted bytes go. Under TDS 7.x servers speak TLS 1.2 without session tickets: SQL Server does
not offer TLS 1.3 there, and FreeTDS's client (OpenSSL 1.1.1 in pymssql 2.4.6) handshakes with this.
Under TDS 8.0 they speak TLS 1.2 or 1.3, as SQL Server 2022 does.
"""

from __future__ import annotations

import functools
import socket
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from sandbox.sqlserver import protocol as tds
from sandbox.sqlserver.certs import ServerCertificate

RECV_CHUNK = 16384  # one TLS record at most
TLS_HANDSHAKE_RECORD = 0x16  # the first byte of a TLS ClientHello: a TDS 8.0 (strict) client
TDS8_ALPN = "tds/8.0"  # the ALPN protocol of TDS 8.0 (MS-TDS 2.1)
HANDSHAKE_PACKET_SIZE = 4096  # what FreeTDS and SQL Server use before LOGIN7 negotiates a size
MAX_HANDSHAKE_BYTES = 256 * 1024  # far above any real handshake; bounds memory per connection


class Transport(Protocol):
    """What the TDS framing needs: read up to n bytes (b"" at end of stream), write all bytes."""

    @property
    def encrypted(self) -> bool: ...

    def recv(self, size: int) -> bytes: ...

    def sendall(self, data: bytes) -> None: ...


class PlainTransport:
    """Clear text on the socket; may start with bytes a TLS layer had already read past its end."""

    def __init__(self, sock: socket.socket, buffered: bytes = b"") -> None:
        self._sock = sock
        self._buffer = buffered

    @property
    def encrypted(self) -> bool:
        return False

    def recv(self, size: int) -> bytes:
        if self._buffer:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
            return data
        return self._sock.recv(size)

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)


class TlsTransport:
    """TLS records directly on the socket (after the handshake), TDS packets inside them."""

    def __init__(
        self, sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
    ) -> None:
        self._sock = sock
        self._tls = tls
        self._incoming = incoming
        self._outgoing = outgoing

    @property
    def encrypted(self) -> bool:
        return True

    @property
    def cipher(self) -> tuple[str, str, int] | None:
        """(cipher name, protocol version, secret bits), as ssl reports it."""
        return self._tls.cipher()

    @property
    def alpn(self) -> str | None:
        """The ALPN protocol the handshake agreed on, if any."""
        return self._tls.selected_alpn_protocol()

    def recv(self, size: int) -> bytes:
        while True:
            try:
                return self._tls.read(size)
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):  # close_notify, or a close without it
                return b""
            if self._incoming.eof:  # the peer closed inside a TLS record
                return b""
            raw = self._sock.recv(RECV_CHUNK)
            if not raw:
                self._incoming.write_eof()
            else:
                self._incoming.write(raw)

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = self._tls.write(view)
            view = view[written:]
            self._sock.sendall(self._outgoing.read())

    def drop_tls(self) -> PlainTransport:
        """Go back to clear text without a TLS close, as after a login-only encrypted LOGIN7."""
        if self._tls.pending():
            raise tds.ProtocolError("encrypted data after LOGIN7 on a login-only encrypted connection")
        return PlainTransport(self._sock, buffered=self._incoming.read())


def recv_exact(transport: Transport, size: int, *, eof_ok: bool) -> bytes | None:
    """Exactly size bytes; None if the stream ended before the first one and eof_ok."""
    chunks = bytearray()
    while len(chunks) < size:
        chunk = transport.recv(size - len(chunks))
        if not chunk:
            if eof_ok and not chunks:
                return None
            raise tds.ProtocolError("connection closed inside a packet")
        chunks += chunk
    return bytes(chunks)


def accept_tls(sock: socket.socket, transport: PlainTransport, context: ssl.SSLContext) -> TlsTransport:
    """Run the server side of the TLS handshake inside PRELOGIN packets; return the TLS stream.

    Raises ssl.SSLError when the client aborts the handshake (e.g. it does not trust the
    certificate: it sends an alert) and tds.ProtocolError when it closes or sends something else.
    """

    def send(flight: bytes) -> None:
        size = HANDSHAKE_PACKET_SIZE
        transport.sendall(b"".join(tds.encode_packets(tds.PacketType.PRELOGIN, flight, packet_size=size)))

    def receive() -> bytes:
        header_bytes = recv_exact(transport, tds.HEADER_SIZE, eof_ok=False)
        assert header_bytes is not None
        header = tds.parse_header(header_bytes)
        if header.type != tds.PacketType.PRELOGIN:
            raise tds.ProtocolError(f"expected a TLS handshake packet, got packet type 0x{header.type:02x}")
        body = recv_exact(transport, header.length - tds.HEADER_SIZE, eof_ok=False)
        assert body is not None
        return body

    return _handshake(sock, context, send, receive)


def accept_strict_tls(sock: socket.socket, context: ssl.SSLContext) -> TlsTransport:
    """Run the server side of a TDS 8.0 handshake: TLS records straight on the socket, before any TDS.

    Raises ssl.SSLError when the client aborts the handshake and tds.ProtocolError when it closes.
    """

    def receive() -> bytes:
        raw = sock.recv(RECV_CHUNK)
        if not raw:
            raise tds.ProtocolError("connection closed inside the TLS handshake")
        return raw

    return _handshake(sock, context, sock.sendall, receive)


def _handshake(
    sock: socket.socket,
    context: ssl.SSLContext,
    send: Callable[[bytes], object],
    receive: Callable[[], bytes],
) -> TlsTransport:
    """The server side of a TLS handshake whose records travel through ``send`` and ``receive``."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=True)
    received = 0
    while True:
        try:
            tls.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        finally:
            # Whatever TLS produced goes out even when the handshake failed (an alert for the client).
            flight = outgoing.read()
            if flight:
                send(flight)
        if done:
            return TlsTransport(sock, tls, incoming, outgoing)
        data = receive()
        received += len(data)
        if received > MAX_HANDSHAKE_BYTES:
            raise tds.ProtocolError("TLS handshake too large")
        incoming.write(data)


@functools.lru_cache(maxsize=64)
def server_context(certificate: ServerCertificate) -> ssl.SSLContext:
    """A TLS 1.2 server context serving this certificate (cached: contexts are safe to share)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_TICKET
    _load(context, certificate)
    return context


@functools.lru_cache(maxsize=64)
def strict_server_context(certificate: ServerCertificate) -> ssl.SSLContext:
    """A TDS 8.0 server context: TLS 1.2 or 1.3, ALPN ``tds/8.0`` (cached)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_TICKET
    context.set_alpn_protocols([TDS8_ALPN])
    _load(context, certificate)
    return context


def _load(context: ssl.SSLContext, certificate: ServerCertificate) -> None:
    # load_cert_chain reads files only: hand it the PEM bytes through a private temporary folder.
    with tempfile.TemporaryDirectory(prefix="tds-cert-") as folder:
        cert, key = Path(folder) / "server.crt", Path(folder) / "server.key"
        certificate.write(cert, key)
        context.load_cert_chain(cert, key)
