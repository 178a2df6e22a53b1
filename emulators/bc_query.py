"""OData query options as Business Central's API v2.0 accepts them: ``$filter``, ``$orderby``, ``$select``.

``$filter`` goes through a real tokenizer and a recursive-descent parser and compiles to a Python predicate.
It accepts the subset BC translates to AL filters (apis.md C6, D): ``eq ne gt ge lt le``, ``and``, ``or`` on one
field only ("The 'OR' operator is not supported on distinct fields"), ``not``, parentheses,
``contains/startswith/endswith``, ``tolower/toupper``, literals (``'O''Brien'``, unquoted GUIDs, DateTimeOffset
and Date, numbers, ``true/false/null``, enum member names quoted). Text comparison is case-sensitive. Everything
else is a ``QueryError`` (HTTP 400): a filter is never silently dropped or widened.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Mapping

from .bc_schema import Prop, decode_member


class QueryError(Exception):
    """A query option BC would refuse with 400."""

    def __init__(self, message: str, code: str = "BadRequest"):
        super().__init__(message)
        self.message = message
        self.code = code


# -- tokenizer ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Token:
    kind: str
    """STRING GUID DATETIME DATE NUMBER IDENT LPAREN RPAREN COMMA EOF"""
    value: Any
    pos: int


_WS = re.compile(r"\s+")
_GUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}(?![0-9A-Za-z_\-])")
_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,7}))?)?(Z|[+-]\d{2}:\d{2})(?![0-9A-Za-z_])")
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?![0-9A-Za-z_:\-])")
_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?(?![0-9A-Za-z_.\-])")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PUNCT = {"(": "LPAREN", ")": "RPAREN", ",": "COMMA"}


def _syntax(pos: int, text: str) -> QueryError:
    return QueryError(f"Syntax error at position {pos} in '{text}'.")


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        m = _WS.match(text, i)
        if m:
            i = m.end()
            continue
        ch = text[i]
        if ch in _PUNCT:
            tokens.append(Token(_PUNCT[ch], ch, i))
            i += 1
            continue
        if ch == "'":
            j, buf = i + 1, []
            while True:
                k = text.find("'", j)
                if k < 0:
                    raise QueryError(f"There is an unterminated string literal at position {i} in '{text}'.")
                buf.append(text[j:k])
                if k + 1 < n and text[k + 1] == "'":
                    buf.append("'")
                    j = k + 2
                    continue
                i = k + 1
                break
            tokens.append(Token("STRING", "".join(buf), i))
            continue
        m = _GUID.match(text, i)
        if m:
            tokens.append(Token("GUID", m.group(0).lower(), i))
            i = m.end()
            continue
        m = _DATETIME.match(text, i)
        if m:
            tokens.append(Token("DATETIME", _parse_datetime_match(m, text, i), i))
            i = m.end()
            continue
        m = _DATE.match(text, i)
        if m:
            try:
                value = date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
            except ValueError:
                raise QueryError(f"The date literal '{m.group(0)}' at position {i} is not valid.") from None
            tokens.append(Token("DATE", value, i))
            i = m.end()
            continue
        m = _NUMBER.match(text, i)
        if m:
            raw = m.group(0)
            if m.group(1) or m.group(2):
                tokens.append(Token("NUMBER", (float(raw), "Edm.Double" if m.group(2) else "Edm.Decimal"), i))
            else:
                v = int(raw)
                tokens.append(Token("NUMBER", (v, "Edm.Int32" if -2**31 <= v < 2**31 else "Edm.Int64"), i))
            i = m.end()
            continue
        m = _IDENT.match(text, i)
        if m:
            tokens.append(Token("IDENT", m.group(0), i))
            i = m.end()
            continue
        raise _syntax(i, text)
    tokens.append(Token("EOF", None, n))
    return tokens


def _parse_datetime_match(m: re.Match, text: str, pos: int) -> datetime:
    y, mo, d, h, mi, s, frac, tz = m.groups()
    try:
        micro = int((frac or "0")[:6].ljust(6, "0"))
        if tz == "Z":
            tzinfo = timezone.utc
        else:
            sign = 1 if tz[0] == "+" else -1
            tzinfo = timezone(sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
        return datetime(int(y), int(mo), int(d), int(h), int(mi), int(s or 0), micro, tzinfo=tzinfo)
    except ValueError:
        raise QueryError(f"The DateTimeOffset literal '{m.group(0)}' at position {pos} is not valid.") from None


@functools.lru_cache(maxsize=1 << 16)
def parse_stored_datetime(value: str) -> datetime:
    """Stored ``lastModifiedDateTime`` values (``2025-02-23T13:34:29.943Z``) as aware datetimes."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# -- parser -------------------------------------------------------------------------------------------------
@dataclass
class _Field:
    prop: Prop
    transform: str | None = None  # tolower / toupper

    @property
    def edm(self) -> str:
        return "Edm.String" if self.transform else self.prop.edm


@dataclass
class _Literal:
    edm: str
    """Edm.String, Edm.Guid, Edm.DateTimeOffset, Edm.Date, Edm.Int32/Int64/Decimal/Double, Edm.Boolean, or
    None for ``null``."""
    value: Any


@dataclass
class _Bool:
    """A compiled boolean expression and the properties it reads (for the distinct-fields ``or`` rule)."""
    pred: Callable[[Mapping[str, Any]], bool]
    fields: frozenset[str]


_COMPARISON = {"eq": "Equal", "ne": "NotEqual", "gt": "GreaterThan", "ge": "GreaterThanOrEqual",
               "lt": "LessThan", "le": "LessThanOrEqual"}
_FLIP = {"eq": "eq", "ne": "ne", "gt": "lt", "ge": "le", "lt": "gt", "le": "ge"}
_KEYWORDS = {"and", "or", "not", "eq", "ne", "gt", "ge", "lt", "le", "true", "false", "null", "in", "has",
             "add", "sub", "mul", "div", "mod"}
_STRING_PREDICATES = {"contains", "startswith", "endswith"}
_STRING_TRANSFORMS = {"tolower", "toupper"}
_NUMERIC = {"Edm.Int32", "Edm.Int64", "Edm.Decimal", "Edm.Double"}


class _Parser:
    def __init__(self, text: str, props: Mapping[str, Prop], type_name: str):
        self.text = text
        self.props = props
        self.type_name = type_name
        self.tokens = tokenize(text)
        self.i = 0

    # token helpers
    def peek(self) -> Token:
        return self.tokens[self.i]

    def next(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def is_word(self, word: str) -> bool:
        tok = self.peek()
        return tok.kind == "IDENT" and tok.value == word

    def expect(self, kind: str) -> Token:
        tok = self.next()
        if tok.kind != kind:
            raise _syntax(tok.pos, self.text)
        return tok

    # grammar
    def parse(self) -> _Bool:
        if self.peek().kind == "EOF":
            raise QueryError("The $filter expression is empty.")
        node = self.parse_or()
        if self.peek().kind != "EOF":
            raise _syntax(self.peek().pos, self.text)
        return node

    def parse_or(self) -> _Bool:
        left = self.parse_and()
        while self.is_word("or"):
            self.next()
            right = self.parse_and()
            fields = left.fields | right.fields
            if len(fields) > 1:
                raise QueryError("The 'OR' operator is not supported on distinct fields on an OData filter.")
            lp, rp = left.pred, right.pred
            left = _Bool(lambda r, lp=lp, rp=rp: lp(r) or rp(r), fields)
        return left

    def parse_and(self) -> _Bool:
        left = self.parse_unary()
        while self.is_word("and"):
            self.next()
            right = self.parse_unary()
            lp, rp = left.pred, right.pred
            left = _Bool(lambda r, lp=lp, rp=rp: lp(r) and rp(r), left.fields | right.fields)
        return left

    def parse_unary(self) -> _Bool:
        if self.is_word("not"):
            self.next()
            inner = self.parse_unary()
            p = inner.pred
            return _Bool(lambda r, p=p: not p(r), inner.fields)
        return self.parse_comparison()

    def parse_comparison(self) -> _Bool:
        left = self.parse_operand()
        tok = self.peek()
        if tok.kind == "IDENT" and tok.value in _COMPARISON:
            self.next()
            right = self.parse_operand()
            if isinstance(right, _Bool):
                raise _syntax(tok.pos, self.text)
            if isinstance(left, _Bool):
                raise _syntax(tok.pos, self.text)
            return self.compile_comparison(left, tok.value, right)
        if tok.kind == "IDENT" and tok.value in ("in", "has"):
            raise QueryError(f"The '{tok.value}' operator is not supported by this endpoint.")
        if tok.kind == "IDENT" and tok.value in ("add", "sub", "mul", "div", "mod"):
            raise QueryError(f"Arithmetic operator '{tok.value}' is not supported in a filter.")
        if isinstance(left, _Bool):
            return left
        if isinstance(left, _Field) and left.edm == "Edm.Boolean":
            name = left.prop.name
            return _Bool(lambda r, name=name: r.get(name) is True, frozenset([name]))
        raise QueryError("The $filter expression must evaluate to a single boolean value.")

    def parse_operand(self):
        tok = self.next()
        if tok.kind == "LPAREN":
            inner = self.parse_or()
            self.expect("RPAREN")
            return inner
        if tok.kind == "STRING":
            return _Literal("Edm.String", tok.value)
        if tok.kind == "GUID":
            return _Literal("Edm.Guid", tok.value)
        if tok.kind == "DATETIME":
            return _Literal("Edm.DateTimeOffset", tok.value)
        if tok.kind == "DATE":
            return _Literal("Edm.Date", tok.value)
        if tok.kind == "NUMBER":
            value, edm = tok.value
            return _Literal(edm, value)
        if tok.kind == "IDENT":
            word = tok.value
            if word in ("true", "false"):
                return _Literal("Edm.Boolean", word == "true")
            if word == "null":
                return _Literal(None, None)
            if self.peek().kind == "LPAREN":
                return self.parse_function(tok)
            if word in _KEYWORDS:
                raise _syntax(tok.pos, self.text)
            if self.peek().kind == "IDENT" and self.peek().value not in _KEYWORDS:
                raise _syntax(self.peek().pos, self.text)
            return _Field(self.prop(word))
        raise _syntax(tok.pos, self.text)

    def prop(self, name: str) -> Prop:
        p = self.props.get(name)
        if p is None:
            raise QueryError(f"Could not find a property named '{name}' on type '{self.type_name}'.")
        return p

    def parse_function(self, name_tok: Token):
        name = name_tok.value
        self.expect("LPAREN")
        args = []
        if self.peek().kind != "RPAREN":
            while True:
                arg = self.parse_operand()
                if isinstance(arg, _Bool):
                    raise _syntax(self.peek().pos, self.text)
                args.append(arg)
                if self.peek().kind == "COMMA":
                    self.next()
                    continue
                break
        self.expect("RPAREN")
        if name in _STRING_TRANSFORMS:
            if len(args) != 1 or not isinstance(args[0], _Field) or args[0].edm != "Edm.String" \
                    or args[0].transform:
                raise self.no_signature(name, "(Edm.String Nullable=true)")
            return _Field(args[0].prop, name)
        if name in _STRING_PREDICATES:
            if len(args) != 2 or not isinstance(args[0], _Field) or args[0].edm != "Edm.String" \
                    or not isinstance(args[1], _Literal) or args[1].edm != "Edm.String":
                raise self.no_signature(name, "(Edm.String Nullable=true, Edm.String Nullable=true)")
            field, lit = args[0], args[1].value
            get = _getter(field)
            if name == "contains":
                pred = lambda r, get=get, lit=lit: lit in get(r)  # noqa: E731
            elif name == "startswith":
                pred = lambda r, get=get, lit=lit: get(r).startswith(lit)  # noqa: E731
            else:
                pred = lambda r, get=get, lit=lit: get(r).endswith(lit)  # noqa: E731
            return _Bool(pred, frozenset([field.prop.name]))
        raise QueryError(f"An unknown function with name '{name}' was found. This may also be a function import "
                         f"or a key lookup on a navigation property, which is not allowed.")

    @staticmethod
    def no_signature(name: str, sig: str) -> QueryError:
        return QueryError(f"No function signature for the function with name '{name}' matches the specified "
                          f"arguments. The function signatures considered are: {name}{sig}.")

    def incompatible(self, left_edm, right_edm, op) -> QueryError:
        return QueryError(
            "A binary operator with incompatible types was detected. Found operand types "
            f"'{left_edm or '<null>'}' and '{right_edm or '<null>'}' for operator kind '{_COMPARISON[op]}'.")

    def compile_comparison(self, left, op: str, right) -> _Bool:
        orig_left, orig_right = left, right
        if isinstance(left, _Literal) and isinstance(right, _Field):
            left, right, op = right, left, _FLIP[op]
        if isinstance(left, _Literal):
            raise QueryError("A filter must compare a property with a constant value; comparing two constants is "
                             "not supported.")
        if isinstance(right, _Field):
            raise QueryError("Comparing two properties is not supported in a filter.")
        field, lit = left, right

        def mismatch():
            return self.incompatible(getattr(orig_left, "edm", None), getattr(orig_right, "edm", None),
                                     op if orig_left is left else _FLIP[op])

        name = field.prop.name
        fields = frozenset([name])
        edm = field.edm
        get = _getter(field)
        if lit.edm is None:  # null
            if op not in ("eq", "ne"):
                raise mismatch()
            if op == "eq":
                return _Bool(lambda r, get=get: get(r) is None, fields)
            return _Bool(lambda r, get=get: get(r) is not None, fields)
        if edm == "Edm.String":
            if lit.edm != "Edm.String":
                raise mismatch()
            value = lit.value
            key = None
        elif edm == "Edm.Guid":
            if lit.edm != "Edm.Guid":
                raise mismatch()
            value = lit.value
            key = None
        elif edm in ("Edm.Decimal", "Edm.Int64"):
            if lit.edm not in _NUMERIC:
                raise mismatch()
            value = lit.value
            key = None
        elif edm == "Edm.Boolean":
            if lit.edm != "Edm.Boolean":
                raise mismatch()
            if op not in ("eq", "ne"):
                raise mismatch()
            value = lit.value
            key = None
        elif edm == "Edm.DateTimeOffset":
            if lit.edm != "Edm.DateTimeOffset":
                raise mismatch()
            value = lit.value
            key = lambda v: None if v is None else parse_stored_datetime(v)  # noqa: E731
        elif edm == "Edm.Date":
            if lit.edm != "Edm.Date":
                raise mismatch()
            value = lit.value.isoformat()
            key = None
        elif field.prop.members:
            if lit.edm != "Edm.String":
                raise mismatch()
            ordinals = {m: o for m, o in field.prop.members}
            by_caption = {decode_member(m): m for m, _ in field.prop.members}
            member = lit.value if lit.value in ordinals else by_caption.get(lit.value)
            if member is None:
                raise QueryError(f"The value '{lit.value}' is not valid for enum type '{edm}'.")
            if op in ("eq", "ne"):
                value, key = member, None
            else:
                value, key = ordinals[member], (lambda v, o=ordinals: o.get(v, -1))
        else:  # pragma: no cover - schema error
            raise mismatch()
        return _Bool(_comparer(get, op, value, key), fields)


def _getter(field: _Field) -> Callable[[Mapping[str, Any]], Any]:
    name = field.prop.name
    if field.transform == "tolower":
        return lambda r: (r.get(name) or "").lower()
    if field.transform == "toupper":
        return lambda r: (r.get(name) or "").upper()
    return lambda r: r.get(name)


def _comparer(get, op, value, key):
    if key is not None:
        base = get
        get = lambda r: key(base(r))  # noqa: E731
    if op == "eq":
        return lambda r: get(r) == value
    if op == "ne":
        return lambda r: get(r) != value

    def ordered(r, cmp={"gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
                        "lt": lambda a, b: a < b, "le": lambda a, b: a <= b}[op]):
        v = get(r)
        return v is not None and cmp(v, value)

    return ordered


def compile_filter(text: str, props: Mapping[str, Prop], type_name: str) -> Callable[[Mapping[str, Any]], bool]:
    """``$filter`` text -> predicate over a stored record. Raises ``QueryError``."""
    return _Parser(text, props, type_name).parse().pred


def parse_orderby(text: str, props: Mapping[str, Prop], type_name: str) -> list[tuple[str, bool]]:
    """``$orderby`` text -> ``[(property, descending)]``."""
    tokens = tokenize(text)
    out: list[tuple[str, bool]] = []
    i = 0
    while True:
        tok = tokens[i]
        if tok.kind != "IDENT" or tok.value in _KEYWORDS:
            raise _syntax(tok.pos, text)
        if tok.value not in props:
            raise QueryError(f"Could not find a property named '{tok.value}' on type '{type_name}'.")
        i += 1
        desc = False
        if tokens[i].kind == "IDENT" and tokens[i].value in ("asc", "desc"):
            desc = tokens[i].value == "desc"
            i += 1
        out.append((tok.value, desc))
        if tokens[i].kind == "COMMA":
            i += 1
            continue
        if tokens[i].kind != "EOF":
            raise _syntax(tokens[i].pos, text)
        return out


def parse_select(text: str, props: Mapping[str, Prop], type_name: str) -> list[str] | None:
    """``$select`` text -> property names in schema order (``None`` = all)."""
    names = [part.strip() for part in text.split(",")]
    if any(not n for n in names):
        raise QueryError(f"Syntax error in $select '{text}'.")
    if "*" in names:
        return None
    for n in names:
        if n not in props:
            if not _IDENT.fullmatch(n):
                raise QueryError(f"Syntax error in $select '{text}'.")
            raise QueryError(f"Could not find a property named '{n}' on type '{type_name}'.")
    wanted = set(names)
    return [p for p in props if p in wanted]
