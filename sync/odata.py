"""OData v4 literals, filter expressions and query strings for both BC API v2.0 and Dataverse Web API v9.2.

Pure (no I/O). Everything that puts a value into a URL goes through here, so that no value can change the
meaning of a filter:

* ``literal(value)`` picks the literal form from the **Python type**:

  ========================  =============================================  =============================
  Python type               literal                                        example
  ========================  =============================================  =============================
  ``None``                  ``null``                                       ``null``
  ``bool``                  ``true`` / ``false``                           ``true``
  ``int`` (incl. IntEnum)   decimal digits                                 ``-42``
  ``float`` / ``Decimal``   plain decimal, never exponent (finite only)    ``1000.5``
  ``str``                   single-quoted, embedded ``'`` doubled          ``'O''Brien'``
  ``uuid.UUID`` / ``Guid``  unquoted lower-case canonical GUID             ``b37406e8-eaf1-...``
  ``datetime`` (tz-aware)   unquoted UTC, ms when non-zero, ``Z``          ``2019-08-18T20:05:51.603Z``
  ``date``                  unquoted ``YYYY-MM-DD``                        ``2024-01-31``
  ``Enum`` (non-int)        the literal of its ``.value``                  BC enums: ``'Company'``
  ========================  =============================================  =============================

  **A plain ``str`` that looks like a GUID stays a quoted string literal** (``'b37406e8-…'``): both services
  reject a quoted GUID compared to a Guid field, so wrap it, ``Guid(text)`` or ``uuid.UUID(text)``, to get the
  unquoted form. The type, not the content, decides - so user text can never become anything but a string.
  Naive datetimes are refused (``ValueError``): an unknown offset would silently shift every filter.

* field names are checked against an identifier pattern (letters, digits, ``_``; lookup value properties like
  ``_parentcustomerid_value`` included; ``a/b`` navigation allowed), so a "field" cannot smuggle an operator in.

* the builder (``eq``, ``ne``, ``gt``, ``ge``, ``lt``, ``le``, ``and_``, ``or_``, ``not_``, ``any_of``,
  ``contains``, ``startswith``, ``endswith``) returns ``Expr`` strings; ``and_``/``or_`` parenthesize every
  compound operand (and any plain ``str`` operand, whose structure is unknown), so precedence is never
  left to chance.

* ``query_string(params)`` percent-encodes names and values exactly once (RFC 3986: space is ``%20``, not
  ``+``). It exists because httpx's ``params=`` uses form encoding (space -> ``+``), and apis.md D notes a raw
  ``+`` is ambiguous for these services. Build the expression from raw values, encode once here, never before.
"""
from __future__ import annotations

import enum
import math
import re
import uuid
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, Iterable, Mapping
from urllib.parse import quote

__all__ = [
    "Guid", "Expr", "literal", "field", "key", "eq", "ne", "gt", "ge", "lt", "le", "and_", "or_", "not_",
    "any_of", "contains", "startswith", "endswith", "query_string", "select", "orderby",
]

_FIELD_SEGMENT = r"[A-Za-z_][A-Za-z0-9_]*"
_FIELD_RE = re.compile(rf"{_FIELD_SEGMENT}(?:/{_FIELD_SEGMENT})*")


class Guid(str):
    """A GUID, validated and normalized (lower-case, dashed, no braces); renders as an unquoted OData literal.

    Accepts anything ``uuid.UUID`` accepts (``{...}``, upper case, 32 hex digits) and a ``uuid.UUID``.
    """

    __slots__ = ()

    def __new__(cls, value: "str | uuid.UUID") -> "Guid":
        if isinstance(value, uuid.UUID):
            return super().__new__(cls, str(value))
        if not isinstance(value, str):
            raise TypeError(f"Guid expects str or uuid.UUID, got {type(value).__name__}")
        try:
            canonical = str(uuid.UUID(value.strip()))
        except ValueError:
            raise ValueError(f"not a GUID: {value!r}") from None
        return super().__new__(cls, canonical)


class Expr(str):
    """A filter expression built by this module. ``compound`` tells ``and_``/``or_`` to parenthesize it."""

    __slots__ = ("compound",)

    def __new__(cls, text: str, compound: bool = False) -> "Expr":
        obj = super().__new__(cls, text)
        obj.compound = compound
        return obj


def field(name: str) -> str:
    """Validate a property name (``displayName``, ``_parentcustomerid_value``, ``address/city``)."""
    if not isinstance(name, str) or not _FIELD_RE.fullmatch(name):
        raise ValueError(f"not a valid OData property name: {name!r}")
    return name


def _format_datetime(value: datetime) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("naive datetime in an OData filter: give it a timezone (e.g. timezone.utc)")
    value = value.astimezone(timezone.utc)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    ms = value.microsecond // 1000
    return f"{text}.{ms:03d}Z" if ms else f"{text}Z"


def _format_decimal(value: Decimal) -> str:
    if not value.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    text = format(value, "f")
    return "0" if text in ("-0", "-0.0") else text


def literal(value: Any) -> str:
    """The OData literal for ``value`` (see the module docstring for the type table)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):  # IntEnum included (Dataverse choices)
        return str(int(value))
    if isinstance(value, enum.Enum):
        return literal(value.value)
    if isinstance(value, (Guid, uuid.UUID)):
        return str(Guid(value))
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite number: {value!r}")
        return _format_decimal(Decimal(repr(value)))
    if isinstance(value, Decimal):
        return _format_decimal(value)
    if isinstance(value, datetime):
        return _format_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"no OData literal for {type(value).__name__}: {value!r}")


def key(value: "str | uuid.UUID") -> str:
    """A key segment value for ``set(<key>)``: always a validated GUID (both services key these sets by GUID)."""
    return str(Guid(value))


def _compare(op: str, name: str, value: Any) -> Expr:
    return Expr(f"{field(name)} {op} {literal(value)}")


def eq(name: str, value: Any) -> Expr:
    return _compare("eq", name, value)


def ne(name: str, value: Any) -> Expr:
    return _compare("ne", name, value)


def gt(name: str, value: Any) -> Expr:
    return _compare("gt", name, value)


def ge(name: str, value: Any) -> Expr:
    return _compare("ge", name, value)


def lt(name: str, value: Any) -> Expr:
    return _compare("lt", name, value)


def le(name: str, value: Any) -> Expr:
    return _compare("le", name, value)


def _operand(expr: str) -> str:
    if isinstance(expr, Expr):
        return f"({expr})" if expr.compound else str(expr)
    if isinstance(expr, str):
        if not expr.strip():
            raise ValueError("empty filter expression")
        return f"({expr})"  # structure unknown: keep it a unit
    raise TypeError(f"filter expressions are strings, got {type(expr).__name__}")


def _join(op: str, exprs: Iterable[str]) -> Expr:
    items = list(exprs)
    if not items:
        raise ValueError(f"{op}_() needs at least one expression")
    if len(items) == 1:
        only = items[0]
        return only if isinstance(only, Expr) else Expr(_operand(only))
    return Expr(f" {op} ".join(_operand(e) for e in items), compound=True)


def and_(*exprs: str) -> Expr:
    """``a and b and …``; compound operands are parenthesized."""
    return _join("and", exprs)


def or_(*exprs: str) -> Expr:
    """``a or b or …``; compound operands are parenthesized. (BC allows ``or`` only on one field.)"""
    return _join("or", exprs)


def not_(expr: str) -> Expr:
    inner = expr if isinstance(expr, Expr) else Expr(str(expr), compound=True)
    return Expr(f"not ({inner})")


def any_of(name: str, values: Iterable[Any]) -> Expr:
    """``name eq v1 or name eq v2 …`` (same-field ``or``, which BC allows). Empty ``values`` is a ``ValueError``:
    "match nothing" has no literal form, so callers must skip the query instead."""
    items = list(values)
    if not items:
        raise ValueError("any_of() needs at least one value")
    return or_(*(eq(name, v) for v in items))


def _function(fn: str, name: str, value: str) -> Expr:
    if not isinstance(value, str) or isinstance(value, Guid):
        raise TypeError(f"{fn}() compares text; got {type(value).__name__}")
    return Expr(f"{fn}({field(name)},{literal(value)})")


def contains(name: str, value: str) -> Expr:
    return _function("contains", name, value)


def startswith(name: str, value: str) -> Expr:
    return _function("startswith", name, value)


def endswith(name: str, value: str) -> Expr:
    return _function("endswith", name, value)


def select(fields: Iterable[str]) -> str:
    """``$select`` value from validated names (``a,b,c``)."""
    if isinstance(fields, str):
        fields = [f.strip() for f in fields.split(",")]
    names = [field(f) for f in fields]
    if not names:
        raise ValueError("empty $select")
    return ",".join(names)


_ORDER_RE = re.compile(rf"({_FIELD_SEGMENT}(?:/{_FIELD_SEGMENT})*)(?: (asc|desc))?")


def orderby(items: Iterable[str]) -> str:
    """``$orderby`` value from ``"name"`` / ``"name desc"`` items, each validated."""
    if isinstance(items, str):
        items = [i.strip() for i in items.split(",")]
    out = []
    for item in items:
        if not isinstance(item, str) or not _ORDER_RE.fullmatch(item.strip()):
            raise ValueError(f"not a valid $orderby item: {item!r}")
        out.append(item.strip())
    if not out:
        raise ValueError("empty $orderby")
    return ",".join(out)


# RFC 3986 unreserved plus sub-delims that OData uses literally in expressions; everything else is %-encoded,
# so '&', '#', '+', '%', '=', '/', '?' and spaces inside a value can never leak into the URL's structure.
_SAFE_VALUE = "'(),"


def query_string(params: Mapping[str, Any]) -> str:
    """``$filter=…&$select=…``, percent-encoded exactly once (space -> ``%20``). ``None`` values are skipped."""
    parts = []
    for name, value in params.items():
        if value is None:
            continue
        parts.append(f"{quote(str(name), safe='$')}={quote(str(value), safe=_SAFE_VALUE)}")
    return "&".join(parts)
