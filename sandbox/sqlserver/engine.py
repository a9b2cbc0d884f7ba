"""A tiny T-SQL interpreter: the statements a credential-rotation tool sends to SQL Server.

Purpose: given the instance state, one session and one batch of SQL text, decide what SQL Server
would answer (result sets, errors, database changes) and apply committed password changes.
Supported: any SET; USE; BEGIN/COMMIT/ROLLBACK TRAN; IF <expr> <op> <expr> <statement> [ELSE ...];
SELECT of literals, @@SERVERNAME/@@TRANCOUNT/@@SPID/@@VERSION, SUSER_SNAME(), DB_NAME(),
IS_SRVROLEMEMBER(), SERVERPROPERTY() and CAST, optionally FROM sys.dm_hadr_availability_replica_states
with a WHERE of ANDed comparisons; ALTER LOGIN ... WITH PASSWORD = ... [OLD_PASSWORD = ...];
INSERT [INTO] <table> [(columns)] VALUES (...)[, (...)] (an application's write: only the count of rows
is kept, per table, once committed; every table exists, and on an Availability Group replica only the
PRIMARY accepts writes, as if every user database were in the group).
Anything else is a syntax error (102), never a silent success.

Boundaries: no sockets and no wire format. Like SQL Server, the whole batch is parsed first (a
syntax error runs nothing) and then run statement by statement (a statement error does not stop
the batch). Password changes stay in the session until the transaction commits.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sandbox.sqlserver.protocol import Cell, Column, SqlType, Variant
from sandbox.sqlserver.state import InstanceState

PRODUCT_VERSION = "16.0.4135.4"
VERSION_BANNER = f"Microsoft SQL Server 2022 (RTM-CU15) - {PRODUCT_VERSION} (X64) (emulated)"
DATABASES = ("master", "tempdb", "model", "msdb")
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 128
DEFAULT_NVARCHAR_CAST_LENGTH = 30  # CAST(x AS nvarchar) without a length means nvarchar(30)


# --- results -------------------------------------------------------------------------------------


class SqlError(Exception):
    """A SQL Server error message: number, class (severity), state and text."""

    def __init__(self, number: int, severity: int, message: str, state: int = 1) -> None:
        super().__init__(number, message)
        self.number = number
        self.severity = severity
        self.state = state
        self.message = message


def syntax_error(near: str) -> SqlError:
    return SqlError(102, 15, f"Incorrect syntax near '{near}'.")


def cannot_alter_login(name: str) -> SqlError:
    message = f"Cannot alter the login '{name}', because it does not exist or you do not have permission."
    return SqlError(15151, 16, message)


_POLICY_PREFIX = (
    "Password validation failed. The password does not meet the operating system policy requirements"
)
PASSWORD_TOO_SHORT = SqlError(15116, 16, f"{_POLICY_PREFIX} because it is too short.")
PASSWORD_TOO_LONG = SqlError(15156, 16, f"{_POLICY_PREFIX} because it is too long.")
PASSWORD_NOT_COMPLEX = SqlError(15118, 16, f"{_POLICY_PREFIX} because it is not complex enough.")


@dataclass(frozen=True)
class ResultSet:
    columns: tuple[Column, ...]
    rows: tuple[tuple[Cell, ...], ...]


@dataclass(frozen=True)
class StatementResult:
    """What one statement produced; exactly one DONE token is sent for it."""

    result_set: ResultSet | None = None
    error: SqlError | None = None
    database_change: tuple[str, str] | None = None  # (new, old)
    in_transaction: bool = False


@dataclass(frozen=True)
class BatchOutcome:
    results: tuple[StatementResult, ...]
    drop_connection: bool = False  # a fault fired: close the socket without replying


@dataclass
class Session:
    """Per-connection state; discarding it (connection closed) discards uncommitted changes."""

    login_name: str
    spid: int = 51
    database: str = "master"
    trancount: int = 0
    pending: dict[str, str] = field(default_factory=dict)  # login name -> uncommitted password
    pending_rows: dict[str, int] = field(default_factory=dict)  # table -> uncommitted INSERTed rows


# --- lexer ---------------------------------------------------------------------------------------


class Kind(enum.Enum):
    WORD = "word"  # keyword or regular identifier
    QUOTED = "quoted"  # [delimited] or "delimited" identifier
    STRING = "string"
    NUMBER = "number"
    VARIABLE = "variable"  # @local or @@global
    SYMBOL = "symbol"


@dataclass(frozen=True)
class Tok:
    kind: Kind
    text: str  # as written, for error messages
    value: str  # identifier/literal value with quoting removed; upper-cased for WORD
    national: bool = False  # N'...' literal

    def is_word(self, *words: str) -> bool:
        return self.kind is Kind.WORD and self.value in words

    def is_symbol(self, *symbols: str) -> bool:
        return self.kind is Kind.SYMBOL and self.text in symbols


_SIMPLE = re.compile(
    r"(?P<ws>\s+)|(?P<line_comment>--[^\n]*)"
    r"|(?P<variable>@@?[\w@#$]+)"
    r"|(?P<number>\d+)"
    r"|(?P<word>[^\W\d][\w@#$]*)"
    r"|(?P<symbol>>=|<=|<>|!=|!<|!>|[(),.=<>;*+\-/])"
)


def tokenize(sql: str) -> list[Tok]:
    tokens: list[Tok] = []
    pos = 0
    while pos < len(sql):
        pos = _scan_one(sql, pos, tokens)
    return tokens


def _scan_one(sql: str, pos: int, out: list[Tok]) -> int:
    if sql.startswith("/*", pos):
        return _skip_block_comment(sql, pos)
    if sql[pos] == "'" or (sql[pos] in "nN" and sql.startswith("'", pos + 1)):
        return _scan_delimited(sql, pos, out)
    if sql[pos] in '["':
        return _scan_delimited(sql, pos, out)
    match = _SIMPLE.match(sql, pos)
    if match is None:
        raise syntax_error(sql[pos])
    kind = match.lastgroup
    text = match.group()
    if kind == "variable":
        out.append(Tok(Kind.VARIABLE, text, text.upper()))
    elif kind == "number":
        out.append(Tok(Kind.NUMBER, text, text))
    elif kind == "word":
        out.append(Tok(Kind.WORD, text, text.upper()))
    elif kind == "symbol":
        out.append(Tok(Kind.SYMBOL, text, text))
    return match.end()


def _skip_block_comment(sql: str, pos: int) -> int:
    depth = 0  # T-SQL block comments nest
    while pos < len(sql):
        if sql.startswith("/*", pos):
            depth, pos = depth + 1, pos + 2
        elif sql.startswith("*/", pos):
            depth, pos = depth - 1, pos + 2
            if depth == 0:
                return pos
        else:
            pos += 1
    raise SqlError(113, 15, "Missing end comment mark '*/'.")


_CLOSERS = {"'": "'", "[": "]", '"': '"'}


def _scan_delimited(sql: str, pos: int, out: list[Tok]) -> int:
    """Strings and delimited identifiers; a doubled closing character stands for itself."""
    start = pos
    national = sql[pos] in "nN"
    if national:
        pos += 1
    opener = sql[pos]
    closer = _CLOSERS[opener]
    pos += 1
    chars: list[str] = []
    while True:
        end = sql.find(closer, pos)
        if end < 0:
            raise SqlError(105, 15, f"Unclosed quotation mark after the character string '{sql[pos:]}'.")
        chars.append(sql[pos:end])
        if sql.startswith(closer * 2, end):
            chars.append(closer)
            pos = end + 2
            continue
        pos = end + 1
        break
    value = "".join(chars)
    if opener == "'":
        if not national:
            value = _as_varchar(value)
        out.append(Tok(Kind.STRING, sql[start:pos], value, national))
    else:
        out.append(Tok(Kind.QUOTED, sql[start:pos], value))
    return pos


def _as_varchar(text: str) -> str:
    """A literal without N is varchar in the default code page: characters outside it become '?'."""
    return text.encode("cp1252", errors="replace").decode("cp1252")


# --- syntax tree ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Const:
    value: int | str | None
    type: SqlType


@dataclass(frozen=True)
class GlobalVar:
    name: str  # upper-case, with @@


@dataclass(frozen=True)
class FuncCall:
    name: str  # upper-case
    args: tuple[Expr, ...]


@dataclass(frozen=True)
class Cast:
    expr: Expr
    type: SqlType
    length: int | None  # characters for nvarchar; None = MAX or not applicable


@dataclass(frozen=True)
class ColumnRef:
    name: str


Expr = Const | GlobalVar | FuncCall | Cast | ColumnRef


@dataclass(frozen=True)
class Comparison:
    left: Expr
    op: str
    right: Expr


@dataclass(frozen=True)
class SelectItem:
    expr: Expr
    alias: str | None


@dataclass(frozen=True)
class SetOption:
    pass


@dataclass(frozen=True)
class Use:
    database: str


@dataclass(frozen=True)
class BeginTran:
    pass


@dataclass(frozen=True)
class CommitTran:
    pass


@dataclass(frozen=True)
class RollbackTran:
    pass


@dataclass(frozen=True)
class Select:
    items: tuple[SelectItem, ...]
    source: tuple[str, ...] | None  # multi-part object name as written
    where: tuple[Comparison, ...]


@dataclass(frozen=True)
class AlterLoginPassword:
    login: str
    password: str
    old_password: str | None


@dataclass(frozen=True)
class Insert:
    table: tuple[str, ...]  # multi-part object name as written
    rows: int


@dataclass(frozen=True)
class If:
    condition: Comparison
    then: Statement
    otherwise: Statement | None


Statement = (
    SetOption | Use | BeginTran | CommitTran | RollbackTran | Select | AlterLoginPassword | Insert | If
)


# --- parser --------------------------------------------------------------------------------------

# Words that begin a statement; a SET option list or a transaction name ends before one of them.
_STATEMENT_STARTS = frozenset(
    ("ALTER", "BEGIN", "COMMIT", "CREATE", "DECLARE", "DELETE", "DROP", "ELSE", "EXEC", "EXECUTE", "GO",
     "IF", "INSERT", "PRINT", "RETURN", "ROLLBACK", "SAVE", "SELECT", "SET", "UPDATE", "USE", "WHILE")
)  # fmt: skip
# Words that cannot be a column alias written without AS.
_RESERVED = _STATEMENT_STARTS | frozenset(
    ("AND", "AS", "FROM", "GROUP", "HAVING", "ON", "OR", "ORDER", "UNION", "WHERE", "WITH")
)
# Which outcomes of comparing left with right (-1, 0, 1) make each operator true.
_COMPARISON_ORDERS = {
    "=": (0,), "<>": (-1, 1), "!=": (-1, 1), ">": (1,), "<": (-1,),
    ">=": (0, 1), "<=": (-1, 0), "!<": (0, 1), "!>": (-1, 0),
}  # fmt: skip
_COMPARISONS = tuple(_COMPARISON_ORDERS)


def parse_batch(sql: str) -> list[Statement]:
    return _Parser(tokenize(sql)).batch()


class _Parser:
    def __init__(self, tokens: list[Tok]) -> None:
        self._tokens = tokens
        self._pos = 0

    # token helpers

    def _peek(self, ahead: int = 0) -> Tok | None:
        index = self._pos + ahead
        return self._tokens[index] if index < len(self._tokens) else None

    def _next(self) -> Tok:
        tok = self._peek()
        if tok is None:
            raise self._error()
        self._pos += 1
        return tok

    def _error(self) -> SqlError:
        tok = self._peek()
        if tok is not None:
            return syntax_error(tok.text)
        # SQL Server names the last token when the batch ends too early.
        return syntax_error(self._tokens[-1].text if self._tokens else "")

    def _accept_word(self, *words: str) -> bool:
        tok = self._peek()
        if tok is not None and tok.is_word(*words):
            self._pos += 1
            return True
        return False

    def _accept_symbol(self, symbol: str) -> bool:
        tok = self._peek()
        if tok is not None and tok.is_symbol(symbol):
            self._pos += 1
            return True
        return False

    def _expect_word(self, *words: str) -> None:
        if not self._accept_word(*words):
            raise self._error()

    def _expect_symbol(self, symbol: str) -> None:
        if not self._accept_symbol(symbol):
            raise self._error()

    def _identifier(self) -> str:
        tok = self._peek()
        if tok is None or tok.kind not in (Kind.WORD, Kind.QUOTED):
            raise self._error()
        self._pos += 1
        return tok.text if tok.kind is Kind.WORD else tok.value

    def _string(self) -> str:
        tok = self._peek()
        if tok is None or tok.kind is not Kind.STRING:
            raise self._error()
        self._pos += 1
        return tok.value

    # statements

    def batch(self) -> list[Statement]:
        statements: list[Statement] = []
        while self._peek() is not None:
            if self._accept_symbol(";"):
                continue
            statements.append(self._statement())
        return statements

    def _statement(self) -> Statement:
        tok = self._peek()
        if tok is None or tok.kind is not Kind.WORD:
            raise self._error()
        handlers: dict[str, Callable[[], Statement]] = {
            "SET": self._set,
            "USE": self._use,
            "BEGIN": self._begin,
            "COMMIT": self._commit,
            "ROLLBACK": self._rollback,
            "SELECT": self._select,
            "ALTER": self._alter,
            "INSERT": self._insert,
            "IF": self._if,
        }
        handler = handlers.get(tok.value)
        if handler is None:
            raise self._error()
        self._pos += 1
        return handler()

    def _set(self) -> Statement:
        # Session options are accepted as given; only their extent matters.
        first = self._next()
        if first.kind is Kind.VARIABLE:
            raise SqlError(137, 15, f'Must declare the scalar variable "{first.text}".')
        while (tok := self._peek()) is not None and not tok.is_symbol(";"):
            if tok.kind is Kind.WORD and tok.value in _STATEMENT_STARTS:
                break
            self._pos += 1
        return SetOption()

    def _use(self) -> Statement:
        return Use(self._identifier())

    def _begin(self) -> Statement:
        self._expect_word("TRAN", "TRANSACTION")
        self._transaction_name()
        return BeginTran()

    def _commit(self) -> Statement:
        if self._accept_word("TRAN", "TRANSACTION"):
            self._transaction_name()
        else:
            self._accept_word("WORK")
        return CommitTran()

    def _rollback(self) -> Statement:
        if self._accept_word("TRAN", "TRANSACTION"):
            self._transaction_name()
        else:
            self._accept_word("WORK")
        return RollbackTran()

    def _transaction_name(self) -> None:
        tok = self._peek()
        if tok is not None and tok.kind in (Kind.WORD, Kind.QUOTED) and tok.value not in _STATEMENT_STARTS:
            self._pos += 1

    def _if(self) -> Statement:
        condition = self._comparison()
        then = self._statement()
        self._accept_symbol(";")
        otherwise = self._statement() if self._accept_word("ELSE") else None
        return If(condition, then, otherwise)

    def _alter(self) -> Statement:
        self._expect_word("LOGIN")
        login = self._identifier()
        self._expect_word("WITH")
        self._expect_word("PASSWORD")
        self._expect_symbol("=")
        password = self._string()
        old_password = None
        # Grammar: PASSWORD = 'new' [OLD_PASSWORD = 'old'], with no comma between the two.
        if self._accept_word("OLD_PASSWORD"):
            self._expect_symbol("=")
            old_password = self._string()
        return AlterLoginPassword(login, password, old_password)

    def _insert(self) -> Statement:
        self._accept_word("INTO")
        table = self._object_name()
        if self._accept_symbol("("):
            self._identifier()
            while self._accept_symbol(","):
                self._identifier()
            self._expect_symbol(")")
        self._expect_word("VALUES")
        rows = 0
        while True:
            self._expect_symbol("(")
            self._expr()
            while self._accept_symbol(","):
                self._expr()
            self._expect_symbol(")")
            rows += 1
            if not self._accept_symbol(","):
                return Insert(table, rows)

    def _select(self) -> Statement:
        items = [self._select_item()]
        while self._accept_symbol(","):
            items.append(self._select_item())
        source = None
        where: list[Comparison] = []
        if self._accept_word("FROM"):
            source = self._object_name()
            if self._accept_word("WHERE"):
                where.append(self._comparison())
                while self._accept_word("AND"):
                    where.append(self._comparison())
        return Select(tuple(items), source, tuple(where))

    def _select_item(self) -> SelectItem:
        first, second = self._peek(), self._peek(1)
        if (
            first is not None
            and first.kind in (Kind.WORD, Kind.QUOTED)
            and first.value not in _RESERVED
            and second is not None
            and second.is_symbol("=")
        ):  # alias = expression
            alias = self._identifier()
            self._pos += 1
            return SelectItem(self._expr(), alias)
        expr = self._expr()
        if self._accept_word("AS"):
            name = self._next()
            if name.kind not in (Kind.WORD, Kind.QUOTED, Kind.STRING):
                raise syntax_error(name.text)
            return SelectItem(expr, name.text if name.kind is Kind.WORD else name.value)
        tok = self._peek()
        if tok is not None and tok.kind in (Kind.WORD, Kind.QUOTED) and tok.value not in _RESERVED:
            return SelectItem(expr, self._identifier())
        return SelectItem(expr, None)

    def _object_name(self) -> tuple[str, ...]:
        parts = [self._identifier()]
        while self._accept_symbol("."):
            parts.append(self._identifier())
        return tuple(parts)

    def _comparison(self) -> Comparison:
        left = self._expr()
        tok = self._next()
        if not tok.is_symbol(*_COMPARISONS):
            raise syntax_error(tok.text)
        return Comparison(left, tok.text, self._expr())

    # expressions

    def _expr(self) -> Expr:
        tok = self._next()
        if tok.kind is Kind.NUMBER:
            return Const(int(tok.value), SqlType.INT)
        if tok.is_symbol("-") and (num := self._peek()) is not None and num.kind is Kind.NUMBER:
            self._pos += 1
            return Const(-int(num.value), SqlType.INT)
        if tok.kind is Kind.STRING:
            return Const(tok.value, SqlType.NVARCHAR)
        if tok.is_symbol("("):
            inner = self._expr()
            self._expect_symbol(")")
            return inner
        if tok.kind is Kind.VARIABLE:
            if not tok.value.startswith("@@"):
                raise SqlError(137, 15, f'Must declare the scalar variable "{tok.text}".')
            return GlobalVar(tok.value)
        if tok.kind is Kind.WORD:
            return self._word_expr(tok)
        if tok.kind is Kind.QUOTED:
            return ColumnRef(tok.value)
        raise syntax_error(tok.text)

    def _word_expr(self, tok: Tok) -> Expr:
        if tok.value == "NULL":
            return Const(None, SqlType.INT)  # an untyped NULL is int in SQL Server
        if tok.value == "SYSTEM_USER":
            return FuncCall("SUSER_SNAME", ())
        if tok.value in _RESERVED:
            raise syntax_error(tok.text)
        if not self._accept_symbol("("):
            return ColumnRef(tok.text)
        if tok.value == "CAST":
            return self._cast()
        args: list[Expr] = []
        if not self._accept_symbol(")"):
            args.append(self._expr())
            while self._accept_symbol(","):
                args.append(self._expr())
            self._expect_symbol(")")
        return FuncCall(tok.value, tuple(args))

    def _cast(self) -> Expr:
        expr = self._expr()
        self._expect_word("AS")
        type_tok = self._next()
        name = type_tok.value.upper()
        length: int | None = None
        if name in ("NVARCHAR", "VARCHAR", "NCHAR", "CHAR"):
            length = DEFAULT_NVARCHAR_CAST_LENGTH
            if self._accept_symbol("("):
                size = self._next()
                length = None if size.is_word("MAX") else _positive_int(size)
                self._expect_symbol(")")
        self._expect_symbol(")")
        sql_type = _CAST_TYPES.get(name)
        if sql_type is None:
            raise SqlError(243, 16, f"Type {type_tok.value} is not a defined system type.")
        return Cast(expr, sql_type, None if name == "SYSNAME" else length)


_CAST_TYPES = {
    "INT": SqlType.INT,
    "NVARCHAR": SqlType.NVARCHAR,
    "VARCHAR": SqlType.NVARCHAR,
    "NCHAR": SqlType.NVARCHAR,
    "CHAR": SqlType.NVARCHAR,
    "SYSNAME": SqlType.NVARCHAR,
}


def _positive_int(tok: Tok) -> int:
    if tok.kind is not Kind.NUMBER or int(tok.value) == 0:
        raise syntax_error(tok.text)
    return int(tok.value)


# --- evaluation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Value:
    type: SqlType  # INT or NVARCHAR; for a variant, its base type
    data: int | str | None
    variant: bool = False  # sql_variant (SERVERPROPERTY); must be CAST to reach the client


_HADR_VIEW = "dm_hadr_availability_replica_states"
_HADR_COLUMNS = {
    "replica_id": SqlType.NVARCHAR,
    "role": SqlType.INT,
    "role_desc": SqlType.NVARCHAR,
    "is_local": SqlType.INT,
    "operational_state_desc": SqlType.NVARCHAR,
    "connected_state_desc": SqlType.NVARCHAR,
    "synchronization_health_desc": SqlType.NVARCHAR,
}
_ROLE_NUMBERS = {"RESOLVING": 0, "PRIMARY": 1, "SECONDARY": 2}

Row = dict[str, Value]


_KNOWN_FUNCTIONS = (
    "SUSER_SNAME", "SUSER_NAME", "ORIGINAL_LOGIN", "DB_NAME", "SERVERPROPERTY", "IS_SRVROLEMEMBER",
)  # fmt: skip
_FIXED_SERVER_ROLES = (
    "sysadmin", "serveradmin", "securityadmin", "processadmin",
    "setupadmin", "bulkadmin", "diskadmin", "dbcreator",
)  # fmt: skip


class _Evaluator:
    """Evaluates expressions for one statement in the context of a session."""

    def __init__(self, state: InstanceState, session: Session) -> None:
        self._state = state
        self._session = session

    def value(self, expr: Expr, row: Row) -> Value:
        match expr:
            case Const(value=data, type=sql_type):
                return Value(sql_type, data)
            case GlobalVar(name=name):
                return self._global(name)
            case FuncCall(name=name, args=args):
                return self._function(name, [self.value(arg, row) for arg in args])
            case Cast(expr=inner, type=sql_type, length=length):
                return _cast(self.value(inner, row), sql_type, length)
            case ColumnRef(name=name):
                column = row.get(name.lower())
                if column is None:
                    raise SqlError(207, 16, f"Invalid column name '{name}'.")
                return column
        raise AssertionError(f"unhandled expression {expr!r}")

    def holds(self, comparison: Comparison, row: Row) -> bool:
        left = _plain(self.value(comparison.left, row))
        right = _plain(self.value(comparison.right, row))
        return _compare(left, comparison.op, right)

    def _global(self, name: str) -> Value:
        values = {
            "@@SERVERNAME": Value(SqlType.NVARCHAR, self._state.server_name),
            "@@TRANCOUNT": Value(SqlType.INT, self._session.trancount),
            "@@SPID": Value(SqlType.INT, self._session.spid),
            "@@VERSION": Value(SqlType.NVARCHAR, VERSION_BANNER),
        }
        if name not in values:
            raise SqlError(137, 15, f'Must declare the scalar variable "{name}".')
        return values[name]

    def _function(self, name: str, args: list[Value]) -> Value:
        if name in ("SUSER_SNAME", "SUSER_NAME", "ORIGINAL_LOGIN") and not args:
            return Value(SqlType.NVARCHAR, self._state.login_name(self._session.login_name))
        if name == "DB_NAME" and not args:
            return Value(SqlType.NVARCHAR, self._session.database)
        if name == "SERVERPROPERTY" and len(args) == 1:
            return self._server_property(str(_plain(args[0]).data))
        if name == "IS_SRVROLEMEMBER" and len(args) == 1:
            return Value(SqlType.INT, self._role_member(str(_plain(args[0]).data)))
        if name in _KNOWN_FUNCTIONS:
            raise SqlError(174, 15, f"The {name.lower()} function requires a different number of arguments.")
        raise SqlError(195, 15, f"'{name}' is not a recognized built-in function name.")

    def _server_property(self, prop: str) -> Value:
        properties: dict[str, Value] = {
            "ISHADRENABLED": Value(SqlType.INT, int(self._state.hadr_enabled)),
            "SERVERNAME": Value(SqlType.NVARCHAR, self._state.server_name),
            "MACHINENAME": Value(SqlType.NVARCHAR, self._state.server_name),
            "PRODUCTVERSION": Value(SqlType.NVARCHAR, PRODUCT_VERSION),
            "EDITION": Value(SqlType.NVARCHAR, "Developer Edition (64-bit)"),
        }
        found = properties.get(prop.upper(), Value(SqlType.NVARCHAR, None))
        return Value(found.type, found.data, variant=True)

    def _role_member(self, role: str) -> int | None:
        """IS_SRVROLEMEMBER: logins here hold sysadmin or nothing; an unknown role gives NULL."""
        if role.lower() not in _FIXED_SERVER_ROLES:
            return None
        return int(role.lower() == "sysadmin" and self._state.is_sysadmin(self._session.login_name))


def _scalar(data: Cell) -> int | str | None:
    if isinstance(data, Variant):
        raise AssertionError("variants do not nest")
    return data


def _plain(value: Value) -> Value:
    return Value(value.type, value.data)


def _cast(value: Value, target: SqlType, length: int | None) -> Value:
    if value.data is None:
        return Value(target, None)
    if target is SqlType.NVARCHAR:
        text = str(value.data)
        return Value(target, text if length is None else text[:length])
    if isinstance(value.data, int):
        return Value(target, value.data)
    try:
        return Value(target, int(value.data.strip()))
    except ValueError:
        message = f"Conversion failed when converting the nvarchar value '{value.data}' to data type int."
        raise SqlError(245, 16, message) from None


def _compare(left: Value, op: str, right: Value) -> bool:
    if left.data is None or right.data is None:
        return False  # comparisons with NULL are unknown, which filters like false
    if left.type is SqlType.INT or right.type is SqlType.INT:  # int has precedence: the other side converts
        a, b = _to_int(left), _to_int(right)
        order = (a > b) - (a < b)
    else:
        x, y = str(left.data).casefold(), str(right.data).casefold()  # case-insensitive collation
        order = (x > y) - (x < y)
    return order in _COMPARISON_ORDERS[op]


def _to_int(value: Value) -> int:
    data = _cast(value, SqlType.INT, None).data
    assert isinstance(data, int)  # callers rule out NULL
    return data


# --- password policy -----------------------------------------------------------------------------


def check_password_policy(password: str) -> SqlError | None:
    """The Windows password policy SQL Server applies when CHECK_POLICY is ON (the default)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return PASSWORD_TOO_SHORT
    if len(password) > MAX_PASSWORD_LENGTH:
        return PASSWORD_TOO_LONG
    if len(character_classes(password)) < 3:
        return PASSWORD_NOT_COMPLEX
    return None


def character_classes(password: str) -> set[str]:
    """Which of upper, lower, digit, symbol occur; uncased letters (e.g. CJK) count as symbols."""
    classes = set()
    for char in password:
        if char.isupper():
            classes.add("upper")
        elif char.islower():
            classes.add("lower")
        elif char in "0123456789":
            classes.add("digit")
        else:
            classes.add("symbol")
    return classes


# --- execution -----------------------------------------------------------------------------------


class _Dropped(Exception):
    """A drop-after-change fault fired: the batch ends and the connection closes unanswered."""


class _Executor:
    def __init__(self, state: InstanceState, session: Session) -> None:
        self._state = state
        self._session = session
        self._eval = _Evaluator(state, session)

    def run(self, statement: Statement) -> StatementResult:
        try:
            result = self._dispatch(statement)
        except SqlError as error:
            result = StatementResult(error=error)
        in_tran = self._session.trancount > 0
        return StatementResult(result.result_set, result.error, result.database_change, in_tran)

    def _dispatch(self, statement: Statement) -> StatementResult:
        match statement:
            case SetOption():
                return StatementResult()
            case Use(database=database):
                return self._use(database)
            case BeginTran():
                self._session.trancount += 1
                return StatementResult()
            case CommitTran():
                return self._commit()
            case RollbackTran():
                return self._rollback()
            case If(condition=condition, then=then, otherwise=otherwise):
                branch = then if self._eval.holds(condition, {}) else otherwise
                return StatementResult() if branch is None else self._dispatch(branch)
            case Select():
                return StatementResult(result_set=self._select(statement))
            case AlterLoginPassword():
                return self._alter_login(statement)
            case Insert():
                return self._insert(statement)
        raise AssertionError(f"unhandled statement {statement!r}")

    def _use(self, database: str) -> StatementResult:
        if database.lower() not in DATABASES:
            message = f"Database '{database}' does not exist. Make sure that the name is entered correctly."
            raise SqlError(911, 16, message)
        old = self._session.database
        self._session.database = database.lower()
        return StatementResult(database_change=(self._session.database, old))

    def _commit(self) -> StatementResult:
        if self._session.trancount == 0:
            raise SqlError(3902, 16, "The COMMIT TRANSACTION request has no corresponding BEGIN TRANSACTION.")
        self._session.trancount -= 1
        if self._session.trancount == 0:
            self._make_effective()
        return StatementResult()

    def _rollback(self) -> StatementResult:
        if self._session.trancount == 0:
            message = "The ROLLBACK TRANSACTION request has no corresponding BEGIN TRANSACTION."
            raise SqlError(3903, 16, message)
        self._session.trancount = 0  # ROLLBACK without a savepoint undoes all nesting levels
        self._session.pending.clear()
        self._session.pending_rows.clear()
        return StatementResult()

    def _make_effective(self) -> None:
        for table, rows in self._session.pending_rows.items():
            self._state.write_rows(table, rows)
        self._session.pending_rows.clear()
        if not self._session.pending:
            return
        self._state.apply_password_changes(self._session.pending)
        self._session.pending.clear()
        if self._state.take_drop_fault():
            raise _Dropped

    def _select(self, select: Select) -> ResultSet:
        schema, rows = self._source(select.source)
        typed = [self._eval.value(item.expr, schema) for item in select.items]
        columns = tuple(
            Column(_column_name(item), SqlType.VARIANT if value.variant else value.type)
            for item, value in zip(select.items, typed, strict=True)
        )
        out = []
        for row in rows:
            if all(self._eval.holds(condition, row) for condition in select.where):
                out.append(tuple(self._cell(item.expr, row) for item in select.items))
        return ResultSet(columns, tuple(out))

    def _cell(self, expr: Expr, row: Row) -> Cell:
        value = self._eval.value(expr, row)
        if value.variant:  # like SQL Server: pymssql then returns raw bytes, hence CAST in real clients
            return Variant(value.type, _scalar(value.data))
        return value.data

    def _source(self, name: tuple[str, ...] | None) -> tuple[Row, list[Row]]:
        """Schema row (typed NULLs, used to type columns of empty results) and data rows."""
        if name is None:
            return {}, [{}]
        schema_ok = len(name) == 1 or name[-2].lower() == "sys"
        if name[-1].lower() != _HADR_VIEW or not schema_ok or len(name) > 3:
            raise SqlError(208, 16, f"Invalid object name '{'.'.join(name)}'.")
        schema = {column: Value(sql_type, None) for column, sql_type in _HADR_COLUMNS.items()}
        if not self._state.hadr_enabled:
            return schema, []
        role = self._state.role
        row: Row = {
            "replica_id": Value(SqlType.NVARCHAR, f"{self._state.server_name}-replica"),
            "role": Value(SqlType.INT, _ROLE_NUMBERS[role]),
            "role_desc": Value(SqlType.NVARCHAR, role),
            "is_local": Value(SqlType.INT, 1),
            "operational_state_desc": Value(SqlType.NVARCHAR, "ONLINE"),
            "connected_state_desc": Value(SqlType.NVARCHAR, "CONNECTED"),
            "synchronization_health_desc": Value(SqlType.NVARCHAR, _health(role, self._state.synchronized)),
        }
        return schema, [row]

    def _alter_login(self, stmt: AlterLoginPassword) -> StatementResult:
        caller = self._session.login_name
        target = self._state.login_name(stmt.login)
        is_admin = self._state.is_sysadmin(caller)
        is_self = target is not None and target.casefold() == caller.casefold()
        if target is None or not (is_admin or is_self):
            raise cannot_alter_login(stmt.login)
        # Without ALTER ANY LOGIN, changing one's own password requires proving the old one.
        if stmt.old_password is None and not is_admin:
            raise cannot_alter_login(stmt.login)
        if stmt.old_password is not None and stmt.old_password != self._current_password(target):
            raise cannot_alter_login(stmt.login)
        policy_error = check_password_policy(stmt.password)
        if policy_error is not None:
            raise policy_error
        if self._state.faults.reject_password_changes:
            raise PASSWORD_NOT_COMPLEX
        if self._state.faults.ignore_password_changes:
            return StatementResult()
        self._session.pending[target] = stmt.password
        if self._session.trancount == 0:
            self._make_effective()
        return StatementResult()

    def _insert(self, stmt: Insert) -> StatementResult:
        database = self._session.database
        if self._state.hadr_enabled and self._state.role == "SECONDARY":
            message = f'Failed to update database "{database}" because the database is read-only.'
            raise SqlError(3906, 16, message)
        if self._state.hadr_enabled and self._state.role != "PRIMARY":
            raise SqlError(
                983,
                14,
                f"Unable to access availability database '{database}' because the database replica is not "
                "in the PRIMARY or SECONDARY role. Connections to an availability database is permitted "
                "only when the database replica is in the PRIMARY or SECONDARY role. Try the operation "
                "again later.",
            )
        table = stmt.table[-1]
        self._session.pending_rows[table] = self._session.pending_rows.get(table, 0) + stmt.rows
        if self._session.trancount == 0:
            self._make_effective()
        return StatementResult()

    def _current_password(self, login: str) -> str | None:
        """The password as this session sees it, including its own uncommitted change."""
        if login in self._session.pending:
            return self._session.pending[login]
        return self._state.password_of(login)


def _health(role: str, synchronized: bool) -> str:
    """A primary is healthy; a secondary once it has caught up with the primary's log (a replica
    without a role cannot take part in a failover)."""
    if role == "PRIMARY" or (role == "SECONDARY" and synchronized):
        return "HEALTHY"
    return "NOT_HEALTHY"


def _column_name(item: SelectItem) -> str:
    if item.alias is not None:
        return item.alias
    return item.expr.name if isinstance(item.expr, ColumnRef) else ""


_ALTER_LOGIN = re.compile(r"\balter\s+login\b", re.IGNORECASE)
_FIRST_WORD = re.compile(r"\s*([A-Za-z_]+)")
_TRANSACTION = re.compile(r"\b(begin|commit|rollback|save)\s+tran", re.IGNORECASE)
_KIND_OF_FIRST_WORD = {
    "select": "select",
    "set": "set",
    "use": "use",
    "begin": "transaction",
    "commit": "transaction",
    "rollback": "transaction",
    "save": "transaction",
    "insert": "insert",
}


def classify_batch(sql: str) -> str:
    """A short kind for a batch, kept in the encryption record instead of its text (never a secret).

    "alter-login" if the words ALTER LOGIN appear anywhere, even in a comment or a literal (the
    record errs towards treating a batch as sensitive); else by its first word "select", "set",
    "use", "insert", "transaction" (BEGIN/COMMIT/ROLLBACK/SAVE, also "IF @@TRANCOUNT > 0 COMMIT TRAN"),
    or "other".
    """
    if _ALTER_LOGIN.search(sql):
        return "alter-login"
    first = _FIRST_WORD.match(sql)
    word = first.group(1).lower() if first else ""
    if word == "if" and _TRANSACTION.search(sql):
        return "transaction"
    return _KIND_OF_FIRST_WORD.get(word, "other")


def execute_batch(state: InstanceState, session: Session, sql: str) -> BatchOutcome:
    """Run one batch. A syntax error runs nothing; a statement error lets the next statement run."""
    try:
        statements: Sequence[Statement] = parse_batch(sql)
    except SqlError as error:
        return BatchOutcome((StatementResult(error=error, in_transaction=session.trancount > 0),))
    executor = _Executor(state, session)
    results: list[StatementResult] = []
    for statement in statements:
        try:
            results.append(executor.run(statement))
        except _Dropped:
            return BatchOutcome(tuple(results), drop_connection=True)
    return BatchOutcome(tuple(results))
