"""OData query options of the Dataverse emulator: a real tokenizer and parser for ``$filter``, plus ``$select``,
``$orderby`` and key segments (``accounts(accountnumber='A''1')``).

The subset is what the Web API documents (apis.md A5, Part D): ``eq ne gt ge lt le``, ``and or not``, parentheses,
``contains/startswith/endswith``, ``Microsoft.Dynamics.CRM.In/NotIn``; literals ``'text'`` (quote doubled), unquoted
GUIDs, unquoted ISO dates and date-times, numbers, ``null``, ``true``/``false``. Anything else is a 400 with the
service's error code 0x80060888 - never a 500 and never a wider result than asked. Text comparisons are
case-insensitive, like the SQL collation behind Dataverse; comparisons with a null column value are false except
``eq null`` / ``ne null`` (SQL semantics of FetchXML conditions).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Callable

from emulators.dataverse_schema import Column, Ref, Table

QUERY_ERROR = "0x80060888"

_GUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DATETIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,7})?)?(?:Z|[+-]\d{2}:\d{2})")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_WORD_CHAR = re.compile(r"[A-Za-z0-9_.:'\"]")

CMP_OPS = {"eq": "Equal", "ne": "NotEqual", "gt": "GreaterThan", "ge": "GreaterThanOrEqual",
           "lt": "LessThan", "le": "LessThanOrEqual"}
_NUMERIC = frozenset({"Edm.Int32", "Edm.Int64", "Edm.Decimal", "Edm.Double"})


class QueryError(Exception):
    """A 400 (or other status) answer of the service for a query option, with its code and message."""

    def __init__(self, message: str, code: str = QUERY_ERROR, status: int = 400):
        super().__init__(message)
        self.message, self.code, self.status = message, code, status


def not_found_property(name: str, table: Table) -> QueryError:
    return QueryError(f"Could not find a property named '{name}' on type '{table.odata_type}'.")


# --- tokenizer ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Token:
    kind: str
    """``( ) , [ ] = /``, ``STRING``, ``DQSTRING``, ``GUID``, ``DATETIME``, ``DATE``, ``NUMBER``, ``IDENT``, ``EOF``."""
    value: Any
    pos: int


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
            continue
        if c in "(),[]=/":
            tokens.append(Token(c, c, i))
            i += 1
            continue
        if c == "'":
            j, buf = i + 1, []
            while True:
                if j >= n:
                    raise QueryError(f"There is an unterminated string literal at position {i} in '{text}'.")
                if text[j] == "'":
                    if j + 1 < n and text[j + 1] == "'":
                        buf.append("'")
                        j += 2
                        continue
                    break
                buf.append(text[j])
                j += 1
            tokens.append(Token("STRING", "".join(buf), i))
            i = j + 1
            _expect_delimiter(text, i)
            continue
        if c == '"':
            j, buf = i + 1, []
            while True:
                if j >= n:
                    raise QueryError(f"There is an unterminated string literal at position {i} in '{text}'.")
                if text[j] == "\\" and j + 1 < n:
                    buf.append(text[j + 1])
                    j += 2
                    continue
                if text[j] == '"':
                    break
                buf.append(text[j])
                j += 1
            tokens.append(Token("DQSTRING", "".join(buf), i))
            i = j + 1
            _expect_delimiter(text, i)
            continue
        m = _GUID_RE.match(text, i)
        if m and not (m.end() < n and _WORD_CHAR.match(text[m.end()])):
            tokens.append(Token("GUID", m.group().lower(), i))
            i = m.end()
            continue
        if c.isdigit() or (c == "-" and i + 1 < n and text[i + 1].isdigit()):
            for kind, rx in (("DATETIME", _DATETIME_RE), ("DATE", _DATE_RE), ("NUMBER", _NUMBER_RE)):
                m = rx.match(text, i)
                if m and not (m.end() < n and _WORD_CHAR.match(text[m.end()])):
                    tokens.append(Token(kind, m.group(), i))
                    i = m.end()
                    break
            else:
                raise QueryError(f"Syntax error at position {i} in '{text}'.")
            continue
        m = _IDENT_RE.match(text, i)
        if m:
            tokens.append(Token("IDENT", m.group(), i))
            i = m.end()
            continue
        raise QueryError(f"Syntax error: character '{c}' is not valid at position {i} in '{text}'.")
    tokens.append(Token("EOF", None, n))
    return tokens


def _expect_delimiter(text: str, i: int) -> None:
    if i < len(text) and _WORD_CHAR.match(text[i]):
        raise QueryError(f"Syntax error at position {i} in '{text}'.")


# --- AST ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lit:
    edm: str | None
    """``None`` for ``null``."""
    value: Any
    pos: int


@dataclass(frozen=True)
class Prop:
    name: str
    pos: int


@dataclass(frozen=True)
class Cmp:
    op: str
    left: Any
    right: Any
    pos: int


@dataclass(frozen=True)
class BoolOp:
    op: str
    """``and`` / ``or``."""
    left: Any
    right: Any


@dataclass(frozen=True)
class Not:
    operand: Any


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple
    pos: int


@dataclass(frozen=True)
class QueryFunction:
    """``Microsoft.Dynamics.CRM.<Name>(Param=value,...)``."""

    name: str
    params: dict
    pos: int


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def next(self) -> Token:
        t = self.tokens[self.i]
        self.i += 1
        return t

    def error(self, tok: Token | None = None) -> QueryError:
        tok = tok or self.tok
        return QueryError(f"Syntax error at position {tok.pos} in '{self.text}'.")

    def expect(self, kind: str) -> Token:
        if self.tok.kind != kind:
            raise self.error()
        return self.next()

    def is_word(self, *words: str) -> bool:
        return self.tok.kind == "IDENT" and self.tok.value in words

    def parse(self):
        if self.tok.kind == "EOF":
            raise QueryError(f"Expression expected at position 0 in '{self.text}'.")
        node = self.parse_or()
        if self.tok.kind != "EOF":
            raise self.error()
        return node

    def parse_or(self):
        left = self.parse_and()
        while self.is_word("or"):
            self.next()
            left = BoolOp("or", left, self.parse_and())
        return left

    def parse_and(self):
        left = self.parse_not()
        while self.is_word("and"):
            self.next()
            left = BoolOp("and", left, self.parse_not())
        return left

    def parse_not(self):
        if self.is_word("not"):
            self.next()
            return Not(self.parse_not())
        return self.parse_cmp()

    def parse_cmp(self):
        left = self.parse_primary()
        if self.tok.kind == "IDENT" and self.tok.value in CMP_OPS:
            op = self.next()
            right = self.parse_primary()
            return Cmp(op.value, left, right, op.pos)
        if self.is_word("add", "sub", "mul", "div", "mod", "has"):
            raise QueryError(f"The operator '{self.tok.value}' is not supported in a Dataverse $filter "
                             f"(position {self.tok.pos} in '{self.text}').")
        return left

    def parse_primary(self):
        tok = self.tok
        if tok.kind == "(":
            self.next()
            node = self.parse_or()
            self.expect(")")
            return node
        if tok.kind == "STRING":
            self.next()
            return Lit("Edm.String", tok.value, tok.pos)
        if tok.kind == "GUID":
            self.next()
            return Lit("Edm.Guid", tok.value, tok.pos)
        if tok.kind == "DATETIME":
            self.next()
            return Lit("Edm.DateTimeOffset", _parse_datetime(tok.value, self.text, tok.pos), tok.pos)
        if tok.kind == "DATE":
            self.next()
            try:
                d = date.fromisoformat(tok.value)
            except ValueError:
                raise QueryError(f"The date '{tok.value}' at position {tok.pos} is not valid.") from None
            return Lit("Edm.Date", datetime(d.year, d.month, d.day, tzinfo=timezone.utc), tok.pos)
        if tok.kind == "NUMBER":
            self.next()
            return _number_literal(tok)
        if tok.kind == "IDENT":
            self.next()
            word = tok.value
            if word == "null":
                return Lit(None, None, tok.pos)
            if word in ("true", "false"):
                return Lit("Edm.Boolean", word == "true", tok.pos)
            if self.tok.kind == "(":
                return self.parse_call(tok)
            if self.tok.kind == "/":
                raise QueryError(f"Navigation paths and lambda operators are not supported by the emulator's "
                                 f"$filter (position {self.tok.pos} in '{self.text}').")
            if "." in word:
                raise self.error(tok)
            return Prop(word, tok.pos)
        raise self.error()

    def parse_call(self, name_tok: Token):
        name = name_tok.value
        self.expect("(")
        if name.startswith("Microsoft.Dynamics.CRM."):
            params: dict[str, Any] = {}
            if self.tok.kind != ")":
                while True:
                    key = self.expect("IDENT").value
                    self.expect("=")
                    params[key] = self.parse_param_value()
                    if self.tok.kind == ",":
                        self.next()
                        continue
                    break
            self.expect(")")
            return QueryFunction(name[len("Microsoft.Dynamics.CRM."):], params, name_tok.pos)
        args = []
        if self.tok.kind != ")":
            while True:
                args.append(self.parse_or())
                if self.tok.kind == ",":
                    self.next()
                    continue
                break
        self.expect(")")
        return Call(name, tuple(args), name_tok.pos)

    def parse_param_value(self):
        tok = self.tok
        if tok.kind == "STRING":
            self.next()
            return tok.value
        if tok.kind == "NUMBER":
            self.next()
            return _number_literal(tok).value
        if tok.kind == "[":
            self.next()
            values = []
            if self.tok.kind != "]":
                while True:
                    t = self.next()
                    if t.kind == "DQSTRING":
                        values.append(t.value)
                    elif t.kind == "NUMBER":
                        values.append(_number_literal(t).value)
                    else:
                        raise self.error(t)
                    if self.tok.kind == ",":
                        self.next()
                        continue
                    break
            self.expect("]")
            return values
        raise self.error()


def _number_literal(tok: Token) -> Lit:
    text = tok.value
    if "e" in text.lower():
        return Lit("Edm.Double", float(text), tok.pos)
    if "." in text:
        return Lit("Edm.Decimal", float(text), tok.pos)
    v = int(text)
    return Lit("Edm.Int32" if -2**31 <= v < 2**31 else "Edm.Int64", v, tok.pos)


def _parse_datetime(text: str, whole: str = "", pos: int = 0) -> datetime:
    s = text.replace("Z", "+00:00")
    frac = re.search(r"\.(\d+)", s)
    if frac and len(frac.group(1)) > 6:
        s = s.replace(frac.group(0), "." + frac.group(1)[:6])
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise QueryError(f"The date-time '{text}' at position {pos} in '{whole}' is not valid.") from None
    return dt.astimezone(timezone.utc)


def parse_filter(text: str):
    return _Parser(text).parse()


# --- compile to a predicate over stored rows ----------------------------------------------------------------
Row = dict
Pred = Callable[[Row], bool]


def _norm(col: Column, value: Any) -> Any:
    """Comparable form of a stored value: text case-folded, GUIDs lower-case, lookups by id."""
    if value is None:
        return None
    if isinstance(value, Ref):
        return value.id
    if col.type in ("String", "Memo"):
        return value.casefold()
    if col.type == "Uniqueidentifier":
        return value.lower()
    return value


def _getter(col: Column) -> Callable[[Row], Any]:
    name = col.name
    if col.is_lookup:
        return lambda row: (row.get(name) or (None, None))[1]
    if col.type in ("String", "Memo"):
        return lambda row: (v.casefold() if (v := row.get(name)) is not None else None)
    if col.type == "Uniqueidentifier":
        return lambda row: (v.lower() if (v := row.get(name)) is not None else None)
    return lambda row: row.get(name)


def _compatible(a: str, b: str) -> bool:
    if a == b:
        return True
    if a in _NUMERIC and b in _NUMERIC:
        return True
    dates = {"Edm.DateTimeOffset", "Edm.Date"}
    return a in dates and b in dates


_OPS = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b, "lt": lambda a, b: a < b, "le": lambda a, b: a <= b,
}


class _Compiler:
    def __init__(self, table: Table):
        self.table = table

    def column(self, prop: Prop) -> Column:
        col = self.table.by_api_name.get(prop.name)
        if col is None:
            raise not_found_property(prop.name, self.table)
        return col

    def boolean(self, node) -> Pred:
        if isinstance(node, BoolOp):
            left, right = self.boolean(node.left), self.boolean(node.right)
            if node.op == "and":
                return lambda row: left(row) and right(row)
            return lambda row: left(row) or right(row)
        if isinstance(node, Not):
            inner = self.boolean(node.operand)
            return lambda row: not inner(row)
        if isinstance(node, Cmp):
            return self.comparison(node)
        if isinstance(node, Call):
            return self.call(node)
        if isinstance(node, QueryFunction):
            return self.query_function(node)
        raise QueryError("The $filter expression must evaluate to a single boolean value.")

    def comparison(self, node: Cmp) -> Pred:
        if not isinstance(node.left, Prop):
            if isinstance(node.right, Prop):
                raise QueryError("The left side of a comparison in $filter must be a column of the table "
                                 f"(position {node.pos}).")
            raise QueryError(f"A comparison in $filter needs a column of the table (position {node.pos}).")
        col = self.column(node.left)
        get = _getter(col)
        kind = CMP_OPS[node.op]
        right = node.right
        if isinstance(right, Prop):
            rcol = self.column(right)
            if not _compatible(col.edm, rcol.edm):
                raise _incompatible(col.edm, rcol.edm, kind)
            rget, op = _getter(rcol), _OPS[node.op]
            return lambda row: (a := get(row)) is not None and (b := rget(row)) is not None and op(a, b)
        if not isinstance(right, Lit):
            raise QueryError(f"The right side of a comparison in $filter must be a literal or a column "
                             f"(position {node.pos}).")
        if right.edm is None:
            if node.op == "eq":
                return lambda row: get(row) is None
            if node.op == "ne":
                return lambda row: get(row) is not None
            return lambda row: False
        if not _compatible(col.edm, right.edm):
            raise _incompatible(col.edm, right.edm, kind)
        value = right.value
        if col.edm == "Edm.String":
            value = value.casefold()
        elif col.edm == "Edm.Boolean" and node.op not in ("eq", "ne"):
            raise _incompatible(col.edm, right.edm, kind)
        op = _OPS[node.op]
        return lambda row: (a := get(row)) is not None and op(a, value)

    def call(self, node: Call) -> Pred:
        if node.name not in ("contains", "startswith", "endswith"):
            if node.name in ("tolower", "toupper", "trim", "length", "indexof", "substring", "concat", "year",
                             "month", "day", "hour", "minute", "second", "round", "floor", "ceiling", "any",
                             "all", "cast", "isof"):
                raise QueryError(f"The function '{node.name}' is not supported by Dataverse $filter.")
            raise QueryError(f"An unknown function with name '{node.name}' was found. This may also be a function "
                             "import or a key lookup on a navigation property, which is not allowed.")
        signature = QueryError(
            f"No function signature for the function with name '{node.name}' matches the specified arguments. "
            f"The function signatures considered are: {node.name}(Edm.String Nullable=true, "
            "Edm.String Nullable=true).")
        if len(node.args) != 2 or not isinstance(node.args[0], Prop) or not isinstance(node.args[1], Lit):
            raise signature
        col = self.column(node.args[0])
        lit = node.args[1]
        if col.edm != "Edm.String" or lit.edm != "Edm.String":
            raise signature
        get, needle = _getter(col), lit.value.casefold()
        if node.name == "contains":
            return lambda row: (v := get(row)) is not None and needle in v
        if node.name == "startswith":
            return lambda row: (v := get(row)) is not None and v.startswith(needle)
        return lambda row: (v := get(row)) is not None and v.endswith(needle)

    def query_function(self, node: QueryFunction) -> Pred:
        if node.name not in ("In", "NotIn"):
            raise QueryError(f"The query function 'Microsoft.Dynamics.CRM.{node.name}' is not supported by the "
                             "emulator.")
        if set(node.params) != {"PropertyName", "PropertyValues"}:
            raise QueryError(f"Microsoft.Dynamics.CRM.{node.name} expects the parameters PropertyName and "
                             "PropertyValues.")
        name, values = node.params["PropertyName"], node.params["PropertyValues"]
        if not isinstance(name, str) or not isinstance(values, list) or not values:
            raise QueryError(f"Invalid parameters for Microsoft.Dynamics.CRM.{node.name}.")
        col = self.table.by_api_name.get(name) or self.table.columns.get(name)
        if col is None:
            raise not_found_property(name, self.table)
        wanted = {_norm(col, convert_text_value(col, v)) for v in values}
        get = _getter(col)
        if node.name == "In":
            return lambda row: (v := get(row)) is not None and v in wanted
        return lambda row: (v := get(row)) is not None and v not in wanted


def _incompatible(left: str, right: str, kind: str) -> QueryError:
    return QueryError("A binary operator with incompatible types was detected. Found operand types "
                      f"'{left}' and '{right}' for operator kind '{kind}'.")


def convert_text_value(col: Column, value: Any) -> Any:
    """A value written as text or JSON number (query-function arrays) in the column's stored type."""
    try:
        if col.edm == "Edm.Guid":
            if not isinstance(value, str) or not _GUID_RE.fullmatch(value):
                raise ValueError
            return Ref("", value.lower()) if col.is_lookup else value.lower()
        if col.edm in ("Edm.Int32", "Edm.Int64"):
            return int(value)
        if col.edm in ("Edm.Decimal", "Edm.Double"):
            return float(value)
        if col.edm == "Edm.DateTimeOffset":
            return _parse_datetime(str(value))
        if col.edm == "Edm.Boolean":
            return {"true": True, "false": False}[str(value).lower()]
        return str(value)
    except (ValueError, KeyError, QueryError):
        raise QueryError(f"The value '{value}' is not valid for the property '{col.api_name}' of type "
                         f"'{col.edm}'.") from None


def compile_filter(text: str, table: Table) -> Pred:
    return _Compiler(table).boolean(parse_filter(text))


# --- $select / $orderby / key segments ----------------------------------------------------------------------
def parse_select(text: str | None, table: Table) -> list[Column] | None:
    if text is None or not text.strip():
        return None
    cols: list[Column] = []
    for raw in text.split(","):
        name = raw.strip()
        col = table.by_api_name.get(name)
        if col is None:
            raise not_found_property(name, table)
        if col not in cols:
            cols.append(col)
    return cols


def parse_orderby(text: str | None, table: Table) -> list[tuple[Column, bool]]:
    """``[(column, descending)]``."""
    if text is None or not text.strip():
        return []
    out: list[tuple[Column, bool]] = []
    for raw in text.split(","):
        toks = tokenize(raw)
        if not toks or toks[0].kind != "IDENT" or len(toks) > 3:
            raise QueryError(f"Syntax error in $orderby '{text}'.")
        col = table.by_api_name.get(toks[0].value)
        if col is None:
            raise not_found_property(toks[0].value, table)
        desc = False
        if toks[1].kind == "IDENT":
            if toks[1].value not in ("asc", "desc") or toks[2].kind != "EOF":
                raise QueryError(f"Syntax error in $orderby '{text}'.")
            desc = toks[1].value == "desc"
        elif toks[1].kind != "EOF":
            raise QueryError(f"Syntax error in $orderby '{text}'.")
        out.append((col, desc))
    return out


def parse_key_segment(text: str) -> str | dict[str, Lit]:
    """The inside of ``set(...)``: a GUID (primary key) or ``name=literal[,name=literal]`` (alternate key)."""
    toks = tokenize(text)
    if len(toks) == 2 and toks[0].kind == "GUID":
        return toks[0].value
    out: dict[str, Lit] = {}
    i = 0
    while True:
        if toks[i].kind != "IDENT" or toks[i + 1].kind != "=":
            raise QueryError(f"Bad Request - Error in query syntax: invalid key segment '({text})'.")
        name, lit_tok = toks[i].value, toks[i + 2]
        if lit_tok.kind == "STRING":
            lit = Lit("Edm.String", lit_tok.value, lit_tok.pos)
        elif lit_tok.kind == "GUID":
            lit = Lit("Edm.Guid", lit_tok.value, lit_tok.pos)
        elif lit_tok.kind == "NUMBER":
            lit = _number_literal(lit_tok)
        elif lit_tok.kind == "DATETIME":
            lit = Lit("Edm.DateTimeOffset", _parse_datetime(lit_tok.value), lit_tok.pos)
        else:
            raise QueryError(f"Bad Request - Error in query syntax: invalid key segment '({text})'.")
        out[name] = lit
        i += 3
        if toks[i].kind == "EOF":
            return out
        if toks[i].kind != ",":
            raise QueryError(f"Bad Request - Error in query syntax: invalid key segment '({text})'.")
        i += 1


def sort_key_value(col: Column, value: Any) -> Any:
    """JSON-safe, comparable form of a stored value for ordering and paging cursors (nulls first)."""
    if value is None:
        return [0, None]
    v = _norm(col, value)
    if isinstance(v, datetime):
        v = v.strftime("%Y-%m-%dT%H:%M:%S")
    elif isinstance(v, bool):
        v = int(v)
    return [1, v]


def compare_keys(a: list, b: list, descending: list[bool]) -> int:
    for (an, av), (bn, bv), desc in zip(a, b, descending):
        if an != bn:
            r = -1 if an < bn else 1
        elif av == bv:
            continue
        else:
            r = -1 if av < bv else 1
        return -r if desc else r
    return 0
