"""A threaded TCP server that speaks TDS 7.4 for one emulated SQL Server instance.

Purpose: accept pymssql (FreeTDS) connections, run the login handshake, feed SQL batches to the
engine and send back what it decided, injecting the faults the instance state asks for.

Boundaries: sockets, threads and message framing live here; what the bytes mean is in protocol.py,
what the SQL does is in engine.py, and everything that must survive a restart is in the
InstanceState. One thread accepts, one thread serves each connection; stop() ends them all.
Encryption: a client whose first byte opens a TLS record speaks TDS 8.0 ("strict", SQL Server
2022): TLS first, PRELOGIN and all else inside it. Otherwise the PRELOGIN answer is encryption.py's
decision (from the instance's certificate and force-encryption switch); each connection reads and
writes through a transport (transport.py) that is swapped for TLS after the handshake and back to
clear text after a login-only LOGIN7.
Whatever arrives outside TLS (LOGIN7's user name and password, batch SQL, RPC payloads) also goes
to the instance's clear-text wire record, for leak checks.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
from collections.abc import Callable

from sandbox.sqlserver import protocol as tds
from sandbox.sqlserver.encryption import TlsMode, negotiate
from sandbox.sqlserver.engine import (
    DATABASES,
    BatchOutcome,
    Session,
    SqlError,
    StatementResult,
    classify_batch,
    execute_batch,
)
from sandbox.sqlserver.state import InstanceState
from sandbox.sqlserver.transport import (
    TLS_HANDSHAKE_RECORD,
    PlainTransport,
    TlsTransport,
    Transport,
    accept_strict_tls,
    accept_tls,
    recv_exact,
    server_context,
    strict_server_context,
)

log = logging.getLogger(__name__)

SERVER_VERSION = (16, 0, 4135)  # SQL Server 2022, reported in PRELOGIN and LOGINACK
FIRST_SPID = 51  # SQL Server numbers user sessions from 51; lower ones are system sessions
MAX_MESSAGE_SIZE = 4 * 1024 * 1024  # far above any batch the tool sends; bounds memory per connection
JOIN_TIMEOUT = 5.0


class TdsServer:
    """One instance's listener on host:port; the InstanceState outlives stop() and start()."""

    def __init__(self, state: InstanceState, host: str, port: int = 1433) -> None:
        self._state = state
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified whenever a client connection ends
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None  # wakes the accept loop on stop()
        self._accept_thread: threading.Thread | None = None
        self._connections: dict[_Connection, threading.Thread] = {}
        self._next_spid = FIRST_SPID

    @property
    def address(self) -> tuple[str, int]:
        """(host, port); with port 0 the real port is known once start() returned."""
        return self._host, self._port

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no client connection is open (each one's session is gone); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._connections, timeout)

    def start(self) -> None:
        if self._listener is not None or self._stopping.is_set():
            raise RuntimeError("a TdsServer can be started once; create a new one to restart")
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        # Lets a new server bind the same address at once although closed connections linger in TIME_WAIT.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self._host, self._port))
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        self._port = listener.getsockname()[1]
        self._listener = listener
        self._wake = socket.socketpair()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"tds-accept-{self._host}:{self._port}", daemon=True
        )
        self._accept_thread.start()

    def stop(self) -> None:
        """Close the listener and every client connection, then wait for their threads."""
        with self._lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
            connections = dict(self._connections)
        if self._wake is not None:
            self._wake[1].send(b"x")
        if self._accept_thread is not None:
            self._accept_thread.join(JOIN_TIMEOUT)
        if self._listener is not None:
            self._listener.close()
        for connection in connections:
            connection.abort()
        for thread in connections.values():
            thread.join(JOIN_TIMEOUT)
        if self._wake is not None:
            for end in self._wake:
                end.close()

    def _accept_loop(self) -> None:
        listener, wake = self._listener, self._wake
        assert listener is not None and wake is not None
        # Wait on a wake-up socket too: closing a socket does not reliably wake accept(). A selector
        # (epoll), not select(): select() refuses descriptors above 1023, which a long test session
        # with many servers reaches.
        with selectors.DefaultSelector() as ready:
            ready.register(listener, selectors.EVENT_READ)
            ready.register(wake[0], selectors.EVENT_READ)
            self._serve_accepts(listener, ready)

    def _serve_accepts(self, listener: socket.socket, ready: selectors.BaseSelector) -> None:
        while True:
            ready.select()
            if self._stopping.is_set():
                return
            try:
                client, _peer = listener.accept()
            except OSError:
                continue
            self._adopt(client)

    def _adopt(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the client may have reset already; serve() will notice
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._stopping.is_set():
                client.close()
                return
            connection = _Connection(client, self._state, self._next_spid, self._stopping, self._forget)
            self._next_spid += 1
            name = f"tds-spid-{connection.spid}"
            thread = threading.Thread(target=connection.serve, name=name, daemon=True)
            self._connections[connection] = thread
        thread.start()

    def _forget(self, connection: _Connection) -> None:
        with self._idle:
            self._connections.pop(connection, None)
            self._idle.notify_all()


class _Stopped(Exception):
    """The server is stopping while this connection waited; it closes without replying."""


class _Connection:
    """One client connection: handshake, then batches until the client or the server closes it."""

    def __init__(
        self,
        sock: socket.socket,
        state: InstanceState,
        spid: int,
        stopping: threading.Event,
        forget: Callable[[_Connection], None],
    ) -> None:
        self.spid = spid
        self._sock = sock
        self._state = state
        self._stopping = stopping
        self._forget = forget
        self._close_lock = threading.Lock()
        self._closed = False
        self._packet_size = tds.DEFAULT_PACKET_SIZE
        self._transport: Transport = PlainTransport(sock)
        self._number = 0  # the instance's number for this connection, known after PRELOGIN

    def serve(self) -> None:
        try:
            self._handshake_then_batches()
        except (OSError, tds.ProtocolError, _Stopped) as exc:
            log.debug("spid %d closed: %r", self.spid, exc)
        except Exception:  # a bug must close this connection only, never the server
            log.exception("spid %d failed", self.spid)
        finally:
            self.abort()
            self._forget(self)

    def abort(self) -> None:
        """Close the socket; safe from any thread and more than once."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(OSError):  # the peer may be gone already
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()

    # --- flow ---

    def _handshake_then_batches(self) -> None:
        mode, message = self._open()
        if message is None:
            return
        if message[0] != tds.PacketType.LOGIN7:
            raise tds.ProtocolError(f"expected LOGIN7, got packet type 0x{message[0]:02x}")
        login_encrypted = self._transport.encrypted
        if mode is TlsMode.LOGIN_ONLY:
            assert isinstance(self._transport, TlsTransport)
            self._transport = self._transport.drop_tls()  # the reply to LOGIN7 goes out in clear text
        login = tds.parse_login7(message[1])
        if not login_encrypted:  # what a sniffer reads: the password is only obfuscated
            self._state.record_clear_text(self._number, "login7-user", login.user_name)
            self._state.record_clear_text(self._number, "login7-password", login.password)
        session = self._login(login, encrypted=login_encrypted)
        if session is None:
            return
        while (message := self._read_message()) is not None:
            if not self._answer(session, *message):
                return

    def _open(self) -> tuple[TlsMode, tuple[int, bytes] | None]:
        """Everything before LOGIN7: (how the connection is encrypted, the first message after it)."""
        if self._starts_with_tls():
            return self._open_strict()
        message = self._read_message()
        if message is not None and message[0] == tds.PacketType.PRELOGIN:
            mode = self._prelogin(message[1])
            if mode is TlsMode.REFUSED:
                return mode, None
            return mode, self._read_message()
        if self._state.force_encryption:
            log.debug("spid %d sent no PRELOGIN to an instance that forces encryption", self.spid)
            return TlsMode.REFUSED, None
        self._number = self._state.new_connection_number()
        return TlsMode.NONE, message

    def _starts_with_tls(self) -> bool:
        """Whether the client's first byte opens a TLS record (TDS 8.0) rather than a TDS packet."""
        first = self._sock.recv(1, socket.MSG_PEEK)
        return first == bytes([TLS_HANDSHAKE_RECORD])

    def _open_strict(self) -> tuple[TlsMode, tuple[int, bytes] | None]:
        """TDS 8.0: TLS on the bare socket, then PRELOGIN inside it (its ENCRYPTION option decides
        nothing any more), as SQL Server 2022 does."""
        certificate = self._state.certificate
        refused = certificate is None or self._state.faults.refuse_strict
        mode = TlsMode.REFUSED if refused else TlsMode.STRICT
        self._number = self._state.record_connection(None, tds.Encryption.NOT_SUP, mode)
        if certificate is None or refused:
            log.debug("spid %d: a TDS 8.0 client, closed (no certificate or refuse_strict)", self.spid)
            return TlsMode.REFUSED, None
        try:
            tls = accept_strict_tls(self._sock, strict_server_context(certificate))
        except (OSError, tds.ProtocolError):
            self._state.record_handshake(self._number, completed=False)
            raise
        self._transport = tls
        self._state.record_handshake(self._number, completed=True, alpn=tls.alpn)
        log.debug("spid %d tls established (strict)", self.spid)
        message = self._read_message()
        if message is not None and message[0] == tds.PacketType.PRELOGIN:
            self._send(tds.build_prelogin_reply(version=SERVER_VERSION, encryption=tds.Encryption.NOT_SUP))
            message = self._read_message()
        return TlsMode.STRICT, message

    def _prelogin(self, payload: bytes) -> TlsMode:
        """Answer PRELOGIN; run the TLS handshake when the answer calls for one."""
        client = tds.prelogin_encryption(tds.parse_prelogin(payload))
        certificate, force = self._state.tls_settings()
        decision = negotiate(client, has_certificate=certificate is not None, force_encryption=force)
        reply, mode = decision.reply, decision.mode
        if mode is TlsMode.FULL and self._state.faults.downgrade_prelogin:
            # The attacker's byte: the client reads OFF and encrypts its LOGIN7 only. The attacker
            # relays the handshake to the real replica, so the emulation simply goes on login-only.
            reply, mode = tds.Encryption.OFF, TlsMode.LOGIN_ONLY
        self._number = self._state.record_connection(client, reply, mode)
        log.debug("spid %d prelogin", self.spid)
        self._send(tds.build_prelogin_reply(version=SERVER_VERSION, encryption=reply))
        if mode in (TlsMode.LOGIN_ONLY, TlsMode.FULL):
            assert certificate is not None and isinstance(self._transport, PlainTransport)
            try:
                self._transport = accept_tls(self._sock, self._transport, server_context(certificate))
            except (OSError, tds.ProtocolError):  # ssl.SSLError is an OSError: an alert, a reset, ...
                self._state.record_handshake(self._number, completed=False)
                raise
            self._state.record_handshake(self._number, completed=True)
            log.debug("spid %d tls established (%s)", self.spid, mode.value)
        return mode

    def _login(self, login: tds.Login7, *, encrypted: bool) -> Session | None:
        database = login.database or "master"
        error = self._login_error(login, database)
        self._state.record_login(self._number, encrypted=encrypted, accepted=error is None)
        if error is not None:
            self._refuse_login(error)
            return None
        if login.packet_size:
            self._packet_size = max(tds.MIN_PACKET_SIZE, min(login.packet_size, tds.MAX_PACKET_SIZE))
        log.debug("spid %d login %r from app %r", self.spid, login.user_name, login.app_name)
        self._send(self._login_ack(database.lower()))
        return Session(login_name=login.user_name, spid=self.spid, database=database.lower())

    def _login_error(self, login: tds.Login7, database: str) -> SqlError | None:
        if self._state.take_login_fault():
            return self._unavailable_error()
        if not self._state.check_login(login.user_name, login.password):
            return SqlError(18456, 14, f"Login failed for user '{login.user_name}'.")
        if database.lower() not in DATABASES:
            message = f'Cannot open database "{database}" requested by the login. The login failed.'
            return SqlError(4060, 11, message)
        return None

    def _unavailable_error(self) -> SqlError:
        message = (
            f"Database 'master' on server '{self._state.server_name}' is not currently available. "
            "Please retry the connection later."
        )
        return SqlError(40613, 17, message)

    def _refuse_login(self, error: SqlError) -> None:
        self._send(self._error_token(error) + tds.token_done(tds.DoneStatus.ERROR))

    def _login_ack(self, database: str) -> bytes:
        server = self._state.server_name
        size = str(self._packet_size)
        return b"".join(
            (
                tds.token_envchange(tds.EnvChange.DATABASE, database, ""),
                tds.token_info(5701, 2, f"Changed database context to '{database}'.", server_name=server),
                tds.token_envchange(tds.EnvChange.LANGUAGE, "us_english", ""),
                tds.token_info(5703, 1, "Changed language setting to us_english.", server_name=server),
                tds.token_envchange(tds.EnvChange.PACKET_SIZE, size, size),
                tds.token_loginack(prog_name="Microsoft SQL Server", prog_version=SERVER_VERSION),
                tds.token_done(tds.DoneStatus.FINAL),
            )
        )

    def _answer(self, session: Session, packet_type: int, payload: bytes) -> bool:
        """Reply to one request; False means the connection must close now."""
        if packet_type == tds.PacketType.SQL_BATCH:
            sql = tds.parse_sql_batch(payload)
            log.debug("spid %d batch: %r", self.spid, sql)
            kind = classify_batch(sql)
            self._state.record_batch(self._number, kind, encrypted=self._transport.encrypted)
            if not self._transport.encrypted:
                self._state.record_clear_text(self._number, "batch", sql)
            outcome = execute_batch(self._state, session, sql)
            if outcome.drop_connection:
                log.debug("spid %d dropped after a committed change (fault)", self.spid)
                return False
            self._send(render_batch_reply(outcome, server_name=self._state.server_name))
            return True
        if packet_type == tds.PacketType.ATTENTION:
            # The client cancelled; nothing is running, so acknowledge at once (FreeTDS waits for this).
            log.debug("spid %d attention", self.spid)
            self._send(tds.token_done(tds.DoneStatus.ATTN))
            return True
        if packet_type == tds.PacketType.RPC:
            if not self._transport.encrypted:
                self._state.record_clear_text(self._number, "rpc", tds.rpc_text(payload))
            error = SqlError(2812, 16, f"Could not find stored procedure '{tds.parse_rpc_name(payload)}'.")
            self._send(self._error_token(error) + tds.token_done(tds.DoneStatus.ERROR))
            return True
        raise tds.ProtocolError(f"unexpected packet type 0x{packet_type:02x} after login")

    def _error_token(self, error: SqlError) -> bytes:
        return tds.token_error(
            error.number, error.severity, error.state, error.message, server_name=self._state.server_name
        )

    # --- framing ---

    def _read_message(self) -> tuple[int, bytes] | None:
        """One request, reassembled from its packets; None when the client closed between requests."""
        first = recv_exact(self._transport, tds.HEADER_SIZE, eof_ok=True)
        if first is None:
            return None
        header = tds.parse_header(first)
        payload = bytearray()
        while True:
            body = recv_exact(self._transport, header.length - tds.HEADER_SIZE, eof_ok=False)
            assert body is not None
            payload += body
            if header.is_last:
                return header.type, bytes(payload)
            if len(payload) > MAX_MESSAGE_SIZE:
                raise tds.ProtocolError("request too large")
            next_header = recv_exact(self._transport, tds.HEADER_SIZE, eof_ok=False)
            assert next_header is not None
            following = tds.parse_header(next_header)
            if following.type != header.type:
                raise tds.ProtocolError("packet type changed inside a message")
            header = following

    def _send(self, payload: bytes) -> None:
        delay = self._state.faults.reply_delay
        # Waiting on the stop event (not time.sleep) lets stop() end a delayed reply at once.
        if delay > 0 and self._stopping.wait(delay):
            raise _Stopped
        size, spid = self._packet_size, self.spid
        packets = tds.encode_packets(tds.PacketType.REPLY, payload, packet_size=size, spid=spid)
        self._transport.sendall(b"".join(packets))  # one write: one TLS record per 16 KiB, not per packet


def render_batch_reply(outcome: BatchOutcome, *, server_name: str) -> bytes:
    """Tokens for a batch: per statement its env change, rows, error, and a DONE (MORE if not last)."""
    results = outcome.results or (StatementResult(),)
    parts = []
    for index, result in enumerate(results):
        last = index == len(results) - 1
        parts.append(_render_statement(result, server_name=server_name, last=last))
    return b"".join(parts)


def _render_statement(result: StatementResult, *, server_name: str, last: bool) -> bytes:
    out = bytearray()
    status = tds.DoneStatus.FINAL if last else tds.DoneStatus.MORE
    row_count = 0
    if result.database_change is not None:
        new, old = result.database_change
        out += tds.token_envchange(tds.EnvChange.DATABASE, new, old)
        out += tds.token_info(5701, 1, f"Changed database context to '{new}'.", server_name=server_name)
    if result.result_set is not None:
        columns = result.result_set.columns
        out += tds.token_colmetadata(columns)
        for row in result.result_set.rows:
            out += tds.token_row(columns, row)
        status |= tds.DoneStatus.COUNT
        row_count = len(result.result_set.rows)
    if result.error is not None:
        err = result.error
        out += tds.token_error(err.number, err.severity, err.state, err.message, server_name=server_name)
        status |= tds.DoneStatus.ERROR
    if result.in_transaction:
        status |= tds.DoneStatus.INXACT
    out += tds.token_done(status, row_count=row_count)
    return bytes(out)
