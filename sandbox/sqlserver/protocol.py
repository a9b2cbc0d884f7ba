"""TDS 7.4 wire format: packet framing and the tokens an emulated SQL Server exchanges with FreeTDS.

Purpose: turn bytes into typed requests (PRELOGIN, LOGIN7, SQL batch) and typed replies into bytes
(LOGINACK, ENVCHANGE, ERROR/INFO, COLMETADATA/ROW, DONE). Only what pymssql 2.4.6 (FreeTDS 1.5) needs
is covered: int and nvarchar columns, and the PRELOGIN ENCRYPTION option (the TLS itself is in
transport.py, the choice of encryption mode in encryption.py).

Boundaries: pure functions, no sockets, no SQL semantics. Multi-byte integers are little-endian
unless the TDS specification (MS-TDS) says otherwise; those places say so.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

HEADER_SIZE = 8
STATUS_EOM = 0x01  # last packet of a message
DEFAULT_PACKET_SIZE = 4096
MIN_PACKET_SIZE = 512
MAX_PACKET_SIZE = 32767
TDS_74 = 0x74000004  # as carried in LOGIN7 (little-endian) and LOGINACK (big-endian)

# SQL_Latin1_General_CP1_CI_AS: LCID 0x0409 plus comparison flags, then sort id 52 (MS-TDS 2.2.5.1.2).
DEFAULT_COLLATION = bytes((0x09, 0x04, 0xD0, 0x00, 0x34))


class ProtocolError(Exception):
    """The peer sent bytes that are not valid TDS; the connection should be closed."""


class PacketType(enum.IntEnum):
    SQL_BATCH = 0x01
    RPC = 0x03
    REPLY = 0x04
    ATTENTION = 0x06
    LOGIN7 = 0x10
    PRELOGIN = 0x12


class Token(enum.IntEnum):
    COLMETADATA = 0x81
    ERROR = 0xAA
    INFO = 0xAB
    LOGINACK = 0xAD
    ROW = 0xD1
    ENVCHANGE = 0xE3
    DONE = 0xFD


class DoneStatus(enum.IntFlag):
    FINAL = 0x00
    MORE = 0x01
    ERROR = 0x02
    INXACT = 0x04
    COUNT = 0x10
    ATTN = 0x20
    SRVERROR = 0x100


class EnvChange(enum.IntEnum):
    DATABASE = 1
    LANGUAGE = 2
    PACKET_SIZE = 4


class SqlType(enum.Enum):
    """The column types this emulator can send; each maps to a nullable TDS type."""

    INT = "int"
    NVARCHAR = "nvarchar"
    VARIANT = "sql_variant"  # what SERVERPROPERTY() returns; pymssql hands it over as raw bytes


@dataclass(frozen=True)
class Variant:
    """A sql_variant cell: the base type travels with each value."""

    base: SqlType
    value: int | str | None


Cell = int | str | Variant | None


# --- packets -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PacketHeader:
    type: int
    status: int
    length: int
    spid: int
    packet_id: int

    @property
    def is_last(self) -> bool:
        return bool(self.status & STATUS_EOM)


def parse_header(data: bytes) -> PacketHeader:
    """Decode the 8-byte packet header; length and SPID are big-endian on the wire."""
    if len(data) != HEADER_SIZE:
        raise ProtocolError(f"packet header needs {HEADER_SIZE} bytes, got {len(data)}")
    ptype, status, length, spid, packet_id, _window = struct.unpack(">BBHHBB", data)
    if ptype not in PacketType.__members__.values():
        raise ProtocolError(f"unknown packet type 0x{ptype:02x}")
    if not HEADER_SIZE <= length <= MAX_PACKET_SIZE + 1:
        raise ProtocolError(f"bad packet length {length}")
    return PacketHeader(ptype, status, length, spid, packet_id)


def encode_packets(ptype: PacketType, payload: bytes, *, packet_size: int, spid: int = 0) -> list[bytes]:
    """Split one message into packets of at most packet_size bytes, the last flagged EOM."""
    chunk = packet_size - HEADER_SIZE
    pieces = [payload[i : i + chunk] for i in range(0, len(payload), chunk)] or [b""]
    packets = []
    for index, piece in enumerate(pieces):
        status = STATUS_EOM if index == len(pieces) - 1 else 0
        # packet_id wraps at 256 per MS-TDS 2.2.3.1.5.
        header = struct.pack(">BBHHBB", ptype, status, HEADER_SIZE + len(piece), spid, (index + 1) % 256, 0)
        packets.append(header + piece)
    return packets


# --- PRELOGIN ------------------------------------------------------------------------------------

PRELOGIN_VERSION = 0x00
PRELOGIN_ENCRYPTION = 0x01
PRELOGIN_INSTOPT = 0x02
PRELOGIN_THREADID = 0x03
PRELOGIN_MARS = 0x04
PRELOGIN_TERMINATOR = 0xFF


class Encryption(enum.IntEnum):
    """Values of the PRELOGIN ENCRYPTION option (MS-TDS 2.2.6.5), the same byte in both directions."""

    OFF = 0x00  # available but off: only LOGIN7 travels encrypted
    ON = 0x01  # available and on: everything after PRELOGIN is encrypted
    NOT_SUP = 0x02  # not available
    REQ = 0x03  # required


ENCRYPT_NOT_SUP = Encryption.NOT_SUP
_ENCRYPT_CLIENT_CERT = 0x80  # TDS 7.4 flag OR-ed into the client's value; this emulator ignores it


def parse_prelogin(payload: bytes) -> dict[int, bytes]:
    """Return PRELOGIN options by option type; offsets and lengths are big-endian."""
    options: dict[int, bytes] = {}
    pos = 0
    while True:
        if pos >= len(payload):
            raise ProtocolError("PRELOGIN without terminator")
        kind = payload[pos]
        if kind == PRELOGIN_TERMINATOR:
            return options
        if pos + 5 > len(payload):
            raise ProtocolError("truncated PRELOGIN option")
        offset, length = struct.unpack_from(">HH", payload, pos + 1)
        if offset + length > len(payload):
            raise ProtocolError("PRELOGIN option outside the message")
        options[kind] = payload[offset : offset + length]
        pos += 5


def encode_prelogin(options: Sequence[tuple[int, bytes]]) -> bytes:
    """Lay out PRELOGIN options: a table of (type, offset, length) then the data."""
    table_size = 5 * len(options) + 1
    table = b""
    data = b""
    for kind, value in options:
        table += struct.pack(">BHH", kind, table_size + len(data), len(value))
        data += value
    return table + bytes((PRELOGIN_TERMINATOR,)) + data


def prelogin_encryption(options: Mapping[int, bytes]) -> Encryption | None:
    """The ENCRYPTION value a client sent in its PRELOGIN, or None when it sent no such option."""
    raw = options.get(PRELOGIN_ENCRYPTION)
    if not raw:
        return None
    value = raw[0] & ~_ENCRYPT_CLIENT_CERT
    if value not in Encryption.__members__.values():
        raise ProtocolError(f"unknown PRELOGIN encryption value 0x{raw[0]:02x}")
    return Encryption(value)


def build_prelogin_reply(
    *, version: tuple[int, int, int], encryption: Encryption = Encryption.NOT_SUP
) -> bytes:
    """Server PRELOGIN: our version, the negotiated encryption value, no MARS."""
    major, minor, build = version
    return encode_prelogin(
        [
            (PRELOGIN_VERSION, struct.pack(">BBHH", major, minor, build, 0)),
            (PRELOGIN_ENCRYPTION, bytes((encryption,))),
            (PRELOGIN_INSTOPT, b"\x00"),
            (PRELOGIN_THREADID, b""),
            (PRELOGIN_MARS, b"\x00"),
        ]
    )


# --- LOGIN7 --------------------------------------------------------------------------------------

LOGIN7_FIXED_SIZE = 36
# Order of the (offset, length) pairs after the fixed part (MS-TDS 2.2.6.4). "extension" is a byte
# length, the others are UCS-2 character counts; ClientID (6 bytes) sits between database and SSPI.
_LOGIN7_FIELDS = (
    "host_name",
    "user_name",
    "password",
    "app_name",
    "server_name",
    "extension",
    "library_name",
    "language",
    "database",
)


@dataclass(frozen=True)
class Login7:
    tds_version: int
    packet_size: int
    host_name: str
    user_name: str
    password: str
    app_name: str
    server_name: str
    library_name: str
    language: str
    database: str


def obfuscate_password(password: str) -> bytes:
    """What a client sends: UTF-16-LE, then each byte's nibbles swapped and XORed with 0xA5."""
    return bytes((((b << 4) & 0xF0) | (b >> 4)) ^ 0xA5 for b in password.encode("utf-16-le"))


def deobfuscate_password(raw: bytes) -> str:
    """Undo obfuscate_password: XOR 0xA5, swap nibbles, decode UTF-16-LE."""
    plain = bytes((((x ^ 0xA5) << 4) & 0xF0) | ((x ^ 0xA5) >> 4) for x in raw)
    return _decode_ucs2(plain)


def parse_login7(payload: bytes) -> Login7:
    """Decode a LOGIN7 record; string offsets are relative to the start of the record."""
    if len(payload) < LOGIN7_FIXED_SIZE + 4 * len(_LOGIN7_FIELDS):
        raise ProtocolError("LOGIN7 too short")
    _length, tds_version, packet_size = struct.unpack_from("<III", payload, 0)
    values: dict[str, bytes] = {}
    pos = LOGIN7_FIXED_SIZE
    for name in _LOGIN7_FIELDS:
        offset, count = struct.unpack_from("<HH", payload, pos)
        size = count if name == "extension" else 2 * count
        if offset + size > len(payload):
            raise ProtocolError(f"LOGIN7 field {name} outside the record")
        values[name] = payload[offset : offset + size]
        pos += 4
    text = {name: _decode_ucs2(raw) for name, raw in values.items() if name not in ("password", "extension")}
    return Login7(
        tds_version=tds_version,
        packet_size=packet_size,
        password=deobfuscate_password(values["password"]),
        **text,
    )


def encode_login7(login: Login7) -> bytes:
    """Build a LOGIN7 record as a client would; used to unit-test parse_login7."""
    fields = {
        "host_name": login.host_name.encode("utf-16-le"),
        "user_name": login.user_name.encode("utf-16-le"),
        "password": obfuscate_password(login.password),
        "app_name": login.app_name.encode("utf-16-le"),
        "server_name": login.server_name.encode("utf-16-le"),
        "extension": b"",
        "library_name": login.library_name.encode("utf-16-le"),
        "language": login.language.encode("utf-16-le"),
        "database": login.database.encode("utf-16-le"),
    }
    # Variable part starts after the pairs, ClientID, and the SSPI/attach/change-password pairs + cbSSPILong.
    data_start = LOGIN7_FIXED_SIZE + 4 * len(_LOGIN7_FIELDS) + 6 + 4 * 3 + 4
    pairs = b""
    data = b""
    for name in _LOGIN7_FIELDS:
        raw = fields[name]
        count = len(raw) if name == "extension" else len(raw) // 2
        pairs += struct.pack("<HH", data_start + len(data), count)
        data += raw
    tail = b"\x00" * 6 + struct.pack("<HHHHHHI", data_start + len(data), 0, 0, 0, 0, 0, 0)
    body = pairs + tail + data
    # Length, TDSVersion, PacketSize, ClientProgVer, ClientPID, ConnectionID, four flag bytes,
    # ClientTimeZone, ClientLCID (0x0409 = en-US).
    fixed = struct.pack(
        "<IIIIIIBBBBiI",
        LOGIN7_FIXED_SIZE + len(body),
        login.tds_version,
        login.packet_size,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0x0409,
    )
    return fixed + body


# --- SQL batch -----------------------------------------------------------------------------------


def parse_sql_batch(payload: bytes) -> str:
    """Return the SQL text of a batch, skipping the ALL_HEADERS block TDS 7.2+ puts in front."""
    if len(payload) < 4:
        raise ProtocolError("SQL batch too short")
    (headers_length,) = struct.unpack_from("<I", payload, 0)
    if not 4 <= headers_length <= len(payload):
        raise ProtocolError("bad ALL_HEADERS length")
    return _decode_ucs2(payload[headers_length:])


def parse_rpc_name(payload: bytes) -> str:
    """The procedure name of an RPC request, or its well-known id as text (e.g. 'sp_executesql' = 10)."""
    try:
        (headers_length,) = struct.unpack_from("<I", payload, 0)
        (name_length,) = struct.unpack_from("<H", payload, headers_length)
        if name_length == 0xFFFF:  # a well-known procedure id follows instead of a name
            (proc_id,) = struct.unpack_from("<H", payload, headers_length + 2)
            return f"#{proc_id}"
        start = headers_length + 2
        return _decode_ucs2(payload[start : start + 2 * name_length])
    except struct.error as exc:
        raise ProtocolError("truncated RPC request") from exc


def rpc_text(payload: bytes) -> str:
    """An RPC request as a sniffer would read its text: the payload decoded as UTF-16-LE at both byte
    alignments (NVARCHAR parameters may start at an odd offset) and as Latin-1 (VARCHAR ones)."""
    return "\n".join(
        (
            payload.decode("utf-16-le", "replace"),
            payload[1:].decode("utf-16-le", "replace"),
            payload.decode("latin-1"),
        )
    )


def encode_sql_batch(sql: str) -> bytes:
    """A batch with an ALL_HEADERS block holding only a transaction descriptor; for unit tests."""
    txn_header = struct.pack("<IHQI", 18, 2, 0, 1)
    return struct.pack("<I", 4 + len(txn_header)) + txn_header + sql.encode("utf-16-le")


# --- reply tokens --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str
    type: SqlType


def token_loginack(*, prog_name: str, prog_version: tuple[int, int, int]) -> bytes:
    """LOGINACK: interface 1 (T-SQL), TDS version big-endian, program name and version."""
    major, minor, build = prog_version
    body = (
        bytes((1,))
        + struct.pack(">I", TDS_74)
        + _b_varchar(prog_name)
        + struct.pack(">BBH", major, minor, build)
    )
    return _with_length(Token.LOGINACK, body)


def token_envchange(kind: EnvChange, new: str, old: str) -> bytes:
    return _with_length(Token.ENVCHANGE, bytes((kind,)) + _b_varchar(new) + _b_varchar(old))


def token_error(number: int, severity: int, state: int, message: str, *, server_name: str) -> bytes:
    return _message(Token.ERROR, number, severity, state, message, server_name)


def token_info(number: int, state: int, message: str, *, server_name: str) -> bytes:
    # Informational messages carry class 0 (e.g. 5701 "Changed database context").
    return _message(Token.INFO, number, 0, state, message, server_name)


def token_done(status: DoneStatus, *, row_count: int = 0, cur_cmd: int = 0) -> bytes:
    """DONE: status, current command, and a 64-bit row count (TDS 7.2+)."""
    return struct.pack("<BHHQ", Token.DONE, status, cur_cmd, row_count)


def token_colmetadata(columns: Sequence[Column]) -> bytes:
    out = struct.pack("<BH", Token.COLMETADATA, len(columns))
    for column in columns:
        # UserType 0, flags 0x0001 (nullable).
        out += struct.pack("<IH", 0, 0x0001) + _type_info(column.type) + _b_varchar(column.name)
    return out


def token_row(columns: Sequence[Column], values: Sequence[Cell]) -> bytes:
    if len(columns) != len(values):
        raise ValueError("one value per column is needed")
    return bytes((Token.ROW,)) + b"".join(_value(c.type, v) for c, v in zip(columns, values, strict=True))


_INT4 = 0x38
_INTN = 0x26
_NVARCHAR = 0xE7
_SSVARIANT = 0x62
_NVARCHAR_MAX_BYTES = 8000  # nvarchar(4000): the largest non-MAX declaration
_VARIANT_MAX_BYTES = 8016  # what SQL Server declares for sql_variant


def _type_info(sql_type: SqlType) -> bytes:
    if sql_type is SqlType.INT:
        return bytes((_INTN, 4))
    if sql_type is SqlType.VARIANT:
        return bytes((_SSVARIANT,)) + struct.pack("<I", _VARIANT_MAX_BYTES)
    return bytes((_NVARCHAR,)) + struct.pack("<H", _NVARCHAR_MAX_BYTES) + DEFAULT_COLLATION


def _value(sql_type: SqlType, value: Cell) -> bytes:
    if sql_type is SqlType.INT:
        if value is None:
            return b"\x00"
        if not isinstance(value, int):
            raise TypeError(f"int column got {value!r}")
        return b"\x04" + struct.pack("<i", value)
    if sql_type is SqlType.VARIANT:
        if value is not None and not isinstance(value, Variant):
            raise TypeError(f"sql_variant column got {value!r}")
        return _variant_value(value)
    if value is None:
        return b"\xff\xff"  # CHARBIN_NULL
    if not isinstance(value, str):
        raise TypeError(f"nvarchar column got {value!r}")
    raw = value.encode("utf-16-le")[:_NVARCHAR_MAX_BYTES]
    return struct.pack("<H", len(raw)) + raw


def _variant_value(cell: Variant | None) -> bytes:
    """Total length, base type, property bytes, properties, data (MS-TDS 2.2.5.5.4); 0 = NULL."""
    if cell is None or cell.value is None:
        return struct.pack("<I", 0)
    if isinstance(cell.value, int):
        body = bytes((_INT4, 0)) + struct.pack("<i", cell.value)
    else:
        raw = cell.value.encode("utf-16-le")[:_NVARCHAR_MAX_BYTES]
        properties = DEFAULT_COLLATION + struct.pack("<H", _NVARCHAR_MAX_BYTES)
        body = bytes((_NVARCHAR, len(properties))) + properties + raw
    return struct.pack("<I", len(body)) + body


def _message(token: Token, number: int, severity: int, state: int, message: str, server_name: str) -> bytes:
    body = (
        struct.pack("<iBB", number, state, severity)
        + _us_varchar(message)
        + _b_varchar(server_name)
        + _b_varchar("")  # procedure name
        + struct.pack("<i", 1)  # line number
    )
    return _with_length(token, body)


def _with_length(token: Token, body: bytes) -> bytes:
    return struct.pack("<BH", token, len(body)) + body


def _b_varchar(text: str) -> bytes:
    raw = text.encode("utf-16-le")
    return bytes((len(raw) // 2,)) + raw


def _us_varchar(text: str) -> bytes:
    raw = text.encode("utf-16-le")
    return struct.pack("<H", len(raw) // 2) + raw


def _decode_ucs2(raw: bytes) -> str:
    try:
        return raw.decode("utf-16-le")
    except UnicodeDecodeError as exc:
        raise ProtocolError("text is not valid UTF-16") from exc
