"""Table mappings and field mappings as data (BC: Integration Table Mapping 5335 / Integration Field Mapping 5336).

Pure domain module: no I/O, no ``azure`` imports. The sync engine, the HTTP functions and the storage of overrides
call what is here; the default mappings themselves live in ``sync.mapping_defaults``.

Vocabulary is BC's: a *table mapping* pairs a BC entity set with a Dataverse table (the *integration table*); its
*field mappings* say which BC field goes to which Dataverse column and in which *direction*
(``ToIntegrationTable`` = BC -> Dataverse, ``FromIntegrationTable`` = Dataverse -> BC, ``Bidirectional``).
*Synch. only coupled records* (``sync_only_coupled_records``) keeps scheduled jobs to already-coupled pairs.

JSON names (``to_json``, PATCH bodies, stored overrides) are camelCase. Enum values are BC's AL member names
without spaces, so a BC consultant recognises them:

* direction: ``Bidirectional`` | ``ToIntegrationTable`` | ``FromIntegrationTable``
* updateConflictResolution: ``None`` | ``SendUpdateToIntegration`` ("Send data update to integration table")
  | ``GetUpdateFromIntegration`` ("Get data update from integration table")
* deletionConflictResolution: ``None`` | ``RestoreRecords`` | ``RemoveCoupling`` (BC caption "Delete coupling")

On input the AL spellings with spaces ("Send Update to Integration") are accepted too (case and spaces ignored).

Errors: a malformed request (not an object, unknown key, wrong JSON type) raises ``RequestError`` (400); a
well-formed setting that BC's rules or the schema refuse (unknown field, option value that doesn't exist,
Bidirectional option mapping, ...) raises ``Unprocessable`` (422). ``details`` names the mapping and the setting.

Schema facts (field names, types, lengths, enum members, option values) are embedded at the end of this module,
copied from the reference schema files, because those files aren't deployed; a unit test keeps them identical.
"""
from __future__ import annotations

import csv
import heapq
import io
import json
import re
import uuid
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from enum import StrEnum
from functools import lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from . import odata
from .errors import RequestError, Unprocessable

__all__ = [
    "BC", "DATAVERSE", "Direction", "UpdateConflictResolution", "DeletionConflictResolution", "Transformation",
    "BcProperty", "DataverseColumn", "DataverseTableInfo", "bc_entity_types", "bc_properties", "bc_enum_members",
    "dataverse_table", "decode_bc_enum_member", "bc_enum_member",
    "FILTER_OPS", "Condition", "Filter", "Lookup", "OptionValueMap", "FieldMapping", "MatchCriterion", "OptionSet",
    "TableMapping", "is_lcy",
    "OPTION_MAPPING_DIRECTION_ERR", "COMPANY_CONTACT_TO_ERR", "COMPANY_CONTACT_FROM_ERR",
    "validate_field_mapping", "validate_table_mapping", "validate_mappings", "dependency_order",
    "to_json", "from_json", "PATCHABLE_KEYS", "apply_patch", "overrides_from_patch", "apply_overrides",
    "apply_overrides_report",
]

BC = "bc"
DATAVERSE = "dataverse"
_SERVICES = (BC, DATAVERSE)


# ---------------------------------------------------------------------------------------------------------------------
# Enums (values are BC's names)
# ---------------------------------------------------------------------------------------------------------------------
class Direction(StrEnum):
    """Sync direction of a table mapping or a field mapping (BC option
    ``Bidirectional,ToIntegrationTable,FromIntegrationTable``)."""

    BIDIRECTIONAL = "Bidirectional"
    TO_INTEGRATION_TABLE = "ToIntegrationTable"
    FROM_INTEGRATION_TABLE = "FromIntegrationTable"

    def includes(self, pass_direction: "Direction") -> bool:
        """Whether a mapping with this direction takes part in a pass of ``pass_direction`` (To or From)."""
        return self is Direction.BIDIRECTIONAL or self is pass_direction

    @property
    def passes(self) -> tuple["Direction", ...]:
        """The passes a scheduled run makes, in BC's order: To first, then From."""
        if self is Direction.BIDIRECTIONAL:
            return (Direction.TO_INTEGRATION_TABLE, Direction.FROM_INTEGRATION_TABLE)
        return (self,)


class UpdateConflictResolution(StrEnum):
    """BC enum 5338 "Integration Update Conflict Resolution" (both sides changed a Bidirectional field)."""

    NONE = "None"
    SEND_UPDATE_TO_INTEGRATION = "SendUpdateToIntegration"
    GET_UPDATE_FROM_INTEGRATION = "GetUpdateFromIntegration"


class DeletionConflictResolution(StrEnum):
    """BC enum 5337 "Integration Deletion Conflict Resolution" (the coupled counterpart was deleted)."""

    NONE = "None"
    RESTORE_RECORDS = "RestoreRecords"
    REMOVE_COUPLING = "RemoveCoupling"


class Transformation(StrEnum):
    """A transformation rule applied to the source value before transfer (BC: Integration Field Mapping field 13).

    Only the three parts of BC's ``Contact.NameBreakdown`` exist here: the BC API exposes a contact's
    ``displayName`` but not its First Name / Middle Name / Surname, which BC's default CONTACT mapping syncs to
    ``firstname`` / ``middlename`` / ``lastname``. Splitting the name exactly as BC does keeps both sides equal.
    """

    FIRST_NAME = "FirstName"
    MIDDLE_NAME = "MiddleName"
    SURNAME = "Surname"

    def apply(self, value: Any) -> Any:
        if value is None:
            return None
        first, middle, surname = _name_breakdown(str(value))
        return {Transformation.FIRST_NAME: first, Transformation.MIDDLE_NAME: middle,
                Transformation.SURNAME: surname}[self]


def _name_breakdown(name: str) -> tuple[str, str, str]:
    """BC ``Contact.NameBreakdown``: last word -> Surname (if >1 word), the one before -> Middle Name (if >2 words),
    everything else -> First Name. Words are separated by spaces; repeated spaces don't make empty words."""
    parts = [p for p in name.split(" ") if p]
    n = len(parts)
    first, middle, surname = "", "", ""
    for i, part in enumerate(parts, start=1):
        if i == n and n > 1:
            surname = part
        elif i == n - 1 and n > 2:
            middle = part
        else:
            first = f"{first} {part}".lstrip(" ")
    return first, middle, surname


def _norm_token(text: str) -> str:
    return re.sub(r"[\s_]", "", text).casefold()


def _parse_enum(cls: type[StrEnum], value: Any, key: str, mapping: str | None = None) -> Any:
    """Canonical member of ``cls`` for ``value``; case, spaces and underscores are ignored, so BC's AL spelling
    ("Send Update to Integration") is accepted too."""
    allowed = ", ".join(m.value for m in cls)
    if not isinstance(value, str):
        raise RequestError(f"'{key}' must be a string, one of: {allowed}; got {_show(value)}",
                           details=_details(mapping, key))
    wanted = _norm_token(value)
    for member in cls:
        if _norm_token(member.value) == wanted:
            return member
    raise RequestError(f"'{key}' must be one of: {allowed}; got {value!r}", details=_details(mapping, key))


def _details(mapping: str | None, key: str | None = None, **more: Any) -> dict:
    out: dict[str, Any] = {}
    if mapping:
        out["mapping"] = mapping
    if key:
        out["setting"] = key
    out.update({k: v for k, v in more.items() if v is not None})
    return out


def _show(value: Any) -> str:
    """A value as JSON text, for messages (so ``true`` vs ``"true"`` is visible)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


# ---------------------------------------------------------------------------------------------------------------------
# Schema facts (parsed from the embedded copies at the end of the module, at first use)
# ---------------------------------------------------------------------------------------------------------------------
_ENUM_PREFIX = "Microsoft.NAV."


@dataclass(frozen=True)
class BcProperty:
    """One property of a BC API v2.0 entity type (from its ``$metadata``)."""

    entity_type: str
    name: str
    edm_type: str
    nullable: bool
    max_length: int | None

    @property
    def enum_type(self) -> str | None:
        """``customerBlocked`` for ``Microsoft.NAV.customerBlocked``; ``None`` for Edm types."""
        return self.edm_type[len(_ENUM_PREFIX):] if self.edm_type.startswith(_ENUM_PREFIX) else None


_LOOKUP_TYPES = frozenset({"Lookup", "Owner", "Customer"})
_CHOICE_TYPES = frozenset({"Picklist", "State", "Status"})


@dataclass(frozen=True)
class DataverseColumn:
    """One column of a Dataverse table: type, max length, access, option values, lookup targets.

    ``access``: ``None`` = create and update, ``"Insert"`` = create only, ``"Modify"`` = update only (e.g. statecode),
    ``"Read"`` = read-only.
    """

    table: str
    name: str
    type: str
    max_length: int | None = None
    access: str | None = None
    options: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))
    targets: tuple[str, ...] = ()

    @property
    def is_lookup(self) -> bool:
        return self.type in _LOOKUP_TYPES

    @property
    def is_choice(self) -> bool:
        return self.type in _CHOICE_TYPES

    @property
    def read_property(self) -> str:
        """Property name in Web API responses: ``_<column>_value`` for lookups."""
        return f"_{self.name}_value" if self.is_lookup else self.name

    @property
    def can_create(self) -> bool:
        return self.access in (None, "Insert")

    @property
    def can_update(self) -> bool:
        return self.access in (None, "Modify")


@dataclass(frozen=True)
class DataverseTableInfo:
    logical_name: str
    entity_set: str
    primary_id: str
    primary_name: str
    ownership: str
    columns: Mapping[str, DataverseColumn]


def _schema_text(name: str) -> str:
    """Schema facts shipped with the app in ``sync/schema/`` (copies of the reference schema files; the test
    ``test_mapping_defaults_schema.py`` checks they are identical, so refresh them by copying the files again)."""
    return resources.files("sync.schema").joinpath(name).read_text(encoding="utf-8")


@lru_cache(maxsize=None)
def _bc_schema() -> Mapping[str, Mapping[str, BcProperty]]:
    out: dict[str, dict[str, BcProperty]] = {}
    for row in csv.DictReader(io.StringIO(_schema_text("bc-api-v2-properties.csv"))):
        prop = BcProperty(row["entityType"], row["property"], row["type"], row["nullable"] != "false",
                          int(row["maxLength"]) if row["maxLength"] else None)
        out.setdefault(prop.entity_type, {})[prop.name] = prop
    return MappingProxyType({k: MappingProxyType(v) for k, v in out.items()})


@lru_cache(maxsize=None)
def _bc_enums() -> Mapping[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for row in csv.DictReader(io.StringIO(_schema_text("bc-api-v2-enums.csv"))):
        out.setdefault(row["enumType"], []).append(row["member"])
    return MappingProxyType({k: tuple(v) for k, v in out.items()})


@lru_cache(maxsize=None)
def _dv_schema() -> Mapping[str, DataverseTableInfo]:
    raw = json.loads(_schema_text("dataverse-columns.json"))
    out = {}
    for table, info in raw.items():
        columns = {
            name: DataverseColumn(
                table=table, name=name, type=col["type"], max_length=col.get("max"), access=col.get("access"),
                options=MappingProxyType({int(k): v for k, v in col.get("options", {}).items()}),
                targets=tuple(col.get("targets", ())))
            for name, col in info["columns"].items()}
        out[table] = DataverseTableInfo(table, info["set"], info["pk"], info["primary_name"], info["ownership"],
                                        MappingProxyType(columns))
    return MappingProxyType(out)


def bc_entity_types() -> frozenset[str]:
    return frozenset(_bc_schema())


def bc_properties(entity_type: str) -> Mapping[str, BcProperty]:
    """Properties of a BC API v2.0 entity type (``customer``, ``paymentTerm``, ...); empty for an unknown type."""
    return _bc_schema().get(entity_type, MappingProxyType({}))


def bc_enum_members(enum_type: str) -> tuple[str, ...]:
    """Members of a BC enum type as the API serializes them (``_x0020_`` for the blank member)."""
    return _bc_enums().get(enum_type, ())


def dataverse_table(logical_name: str) -> DataverseTableInfo | None:
    return _dv_schema().get(logical_name)


_XML_ESCAPE_RE = re.compile(r"_x([0-9A-Fa-f]{4})_")


def decode_bc_enum_member(member: str) -> str:
    """``_x0020_`` -> ``" "``, ``Non_x002D_Inventory`` -> ``Non-Inventory`` (the API's XML-name escaping)."""
    return _XML_ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), member)


def bc_enum_member(enum_type: str, value: str) -> str | None:
    """The serialized member of ``enum_type`` that ``value`` names (as serialized or decoded), else ``None``."""
    members = bc_enum_members(enum_type)
    if value in members:
        return value
    for member in members:
        if decode_bc_enum_member(member) == value:
            return member
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Filters as data (BC: Table Filter / Integration Table Filter)
# ---------------------------------------------------------------------------------------------------------------------
FILTER_OPS = ("eq", "ne", "in")
"""``eq`` / ``ne`` compare with one value; ``in`` with a non-empty list (rendered as a same-field ``or``, which
BC accepts without ``$schemaversion=2.1``)."""

_BC_KINDS = {"Edm.String": "string", "Edm.Guid": "guid", "Edm.Boolean": "bool", "Edm.Decimal": "number",
             "Edm.Double": "number", "Edm.Int32": "integer", "Edm.Int64": "integer", "Edm.Date": "date",
             "Edm.DateTimeOffset": "datetime"}
_DV_KINDS = {"String": "string", "Memo": "string", "Uniqueidentifier": "guid", "Lookup": "guid", "Owner": "guid",
             "Customer": "guid", "Picklist": "choice", "State": "choice", "Status": "choice", "Boolean": "bool",
             "Integer": "integer", "BigInt": "integer", "Money": "number", "Decimal": "number", "Double": "number",
             "DateTime": "datetime"}


@dataclass(frozen=True)
class _FieldInfo:
    name: str              # canonical field / column name
    kind: str              # string guid enum bool number integer date datetime choice
    odata_name: str        # name in $filter and in records (``_x_value`` for Dataverse lookups)
    max_length: int | None = None
    enum_type: str | None = None
    options: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))


def _field_info(service: str, entity: str, name: str) -> _FieldInfo | None:
    if service == BC:
        prop = bc_properties(entity).get(name)
        if prop is None:
            return None
        if prop.enum_type:
            return _FieldInfo(name, "enum", name, enum_type=prop.enum_type)
        return _FieldInfo(name, _BC_KINDS.get(prop.edm_type, "string"), name, max_length=prop.max_length)
    table = dataverse_table(entity)
    if table is None:
        return None
    column = table.columns.get(name)
    if column is None:
        m = re.fullmatch(r"_(\w+)_value", name)
        column = table.columns.get(m.group(1)) if m else None
        if column is None or not column.is_lookup:
            return None
    return _FieldInfo(column.name, _DV_KINDS.get(column.type, "string"), column.read_property,
                      max_length=column.max_length, options=column.options)


def _parse_datetime(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError("no offset")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _entity_label(service: str, entity: str) -> str:
    return f"BC entity '{entity}'" if service == BC else f"Dataverse table '{entity}'"


def _coerce_value(service: str, entity: str, info: _FieldInfo, value: Any, *, key: str,
                  mapping: str | None) -> Any:
    """Check one value (filter value, constant, create value) against the field's schema type; return its
    canonical form.

    Wrong JSON type -> RequestError; a value the field can never hold (unknown enum member or option value,
    text longer than the field) -> Unprocessable.
    """
    where = f"'{key}': {info.name}"
    det = _details(mapping, key, field=info.name)
    if value is None:
        if service == BC:
            raise RequestError(f"{where}: BC fields have no null; compare with '' or the blank member instead",
                               details=det)
        return None
    kind = info.kind
    if kind in ("string", "enum", "guid", "date", "datetime"):
        if not isinstance(value, str):
            raise RequestError(f"{where} expects a string, got {_show(value)}", details=det)
    if kind == "string":
        if info.max_length is not None and len(value) > info.max_length:
            raise Unprocessable(f"{where}: {value!r} is longer than the field allows ({info.max_length} "
                                "characters)", details=det)
        return value
    if kind == "enum":
        member = bc_enum_member(info.enum_type or "", value)
        if member is None:
            members = ", ".join(f"'{m}'" for m in bc_enum_members(info.enum_type or ""))
            raise Unprocessable(f"{where}: {value!r} is not a member of BC enum {info.enum_type} ({members})",
                                details=det)
        return member
    if kind == "guid":
        try:
            return str(odata.Guid(value))
        except ValueError:
            raise RequestError(f"{where} expects a GUID, got {value!r}", details=det) from None
    if kind == "date":
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            raise RequestError(f"{where} expects a date (YYYY-MM-DD), got {value!r}", details=det) from None
    if kind == "datetime":
        try:
            _parse_datetime(value)
        except ValueError:
            raise RequestError(f"{where} expects an ISO 8601 date-time with offset (e.g. 2024-01-31T12:00:00Z), "
                               f"got {value!r}", details=det) from None
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise RequestError(f"{where} expects true or false (JSON boolean), got {_show(value)}", details=det)
        return value
    if kind in ("choice", "integer"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise RequestError(f"{where} expects an integer, got {_show(value)}", details=det)
        if kind == "choice" and value not in info.options:
            opts = ", ".join(f"{k} ({v})" for k, v in info.options.items())
            raise Unprocessable(f"{where}: {value} is not an option value of {entity}.{info.name} ({opts})",
                                details=det)
        return value
    if kind == "number":
        if not _is_number(value):
            raise RequestError(f"{where} expects a number, got {_show(value)}", details=det)
        return value
    return value  # pragma: no cover - every schema type has a kind


@dataclass(frozen=True)
class Condition:
    """``field op value``. ``value`` is a JSON scalar, or a tuple of them for ``in``."""

    field: str
    op: str
    value: Any

    @property
    def values(self) -> tuple:
        return tuple(self.value) if self.op == "in" else (self.value,)

    def to_json(self) -> dict:
        return {"field": self.field, "op": self.op,
                "value": list(self.value) if self.op == "in" else self.value}


@dataclass(frozen=True)
class Filter:
    """Conditions AND-ed together, on one side: ``service`` ``"bc"`` (a Table Filter, on BC entity type ``entity``)
    or ``"dataverse"`` (an Integration Table Filter, on Dataverse table ``entity``).

    No conditions = no filter (every record). Usable in memory (``matches``) and as OData (``to_odata``).
    Text comparison follows each service: BC ``eq`` is case-sensitive, Dataverse is case-insensitive.
    Dataverse lookup columns are named by their column name (``transactioncurrencyid``) and read/filtered as
    ``_transactioncurrencyid_value``.
    """

    service: str
    entity: str
    conditions: tuple[Condition, ...] = ()

    def __post_init__(self) -> None:
        if self.service not in _SERVICES:
            raise ValueError(f"service must be 'bc' or 'dataverse', got {self.service!r}")
        object.__setattr__(self, "conditions", tuple(self.conditions))

    # -- construction / JSON ------------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, data: Any, *, service: str, entity: str, key: str = "filter",
                  mapping: str | None = None) -> "Filter":
        """Parse ``[{"field": ..., "op": "eq"|"ne"|"in", "value": ...}, ...]``, checking names and values
        against the schema of ``entity``."""
        if not isinstance(data, list):
            raise RequestError(f"'{key}' must be a list of conditions like "
                               '[{"field": "statecode", "op": "eq", "value": 0}], got ' + _show(data),
                               details=_details(mapping, key))
        return cls(service, entity, tuple(
            _parse_condition(item, service=service, entity=entity, key=key, mapping=mapping) for item in data))

    def to_json(self) -> list[dict]:
        return [c.to_json() for c in self.conditions]

    @property
    def is_empty(self) -> bool:
        return not self.conditions

    def fields(self) -> tuple[str, ...]:
        """Record properties ``matches`` reads (``_x_value`` for Dataverse lookups): add them to ``$select``."""
        out: list[str] = []
        for c in self.conditions:
            info = self._info(c)
            if info.odata_name not in out:
                out.append(info.odata_name)
        return tuple(out)

    def _info(self, c: Condition) -> _FieldInfo:
        info = _field_info(self.service, self.entity, c.field)
        if info is None:
            raise Unprocessable(f"'{c.field}' is not a field of {_entity_label(self.service, self.entity)}",
                                details={"field": c.field})
        return info

    # -- in memory --------------------------------------------------------------------------------------------
    def failing_conditions(self, record: Mapping[str, Any]) -> list[Condition]:
        """The conditions ``record`` (a BC entity or Dataverse row as the API returns it) does not satisfy."""
        return [c for c in self.conditions if not self._condition_matches(c, record)]

    def matches(self, record: Mapping[str, Any]) -> bool:
        return not self.failing_conditions(record)

    def describe_failures(self, record: Mapping[str, Any]) -> str:
        """The conditions ``record`` fails, as text (``""`` when it matches) - for "outside the filter" errors."""
        return " and ".join(self.describe_condition(c) for c in self.failing_conditions(record))

    def _condition_matches(self, c: Condition, record: Mapping[str, Any]) -> bool:
        info = self._info(c)
        actual = record.get(info.odata_name, record.get(info.name))
        hit = any(self._equal(info, actual, expected) for expected in c.values)
        return not hit if c.op == "ne" else hit

    def _equal(self, info: _FieldInfo, actual: Any, expected: Any) -> bool:
        if expected is None:
            return actual is None
        kind = info.kind
        if kind == "string":
            if actual is None and self.service == BC:
                actual = ""  # BC text is never null
            if not isinstance(actual, str):
                return False
            return actual == expected if self.service == BC else actual.casefold() == expected.casefold()
        if kind == "guid":
            return isinstance(actual, str) and actual.strip("{}").lower() == expected.lower()
        if kind == "enum":
            return isinstance(actual, str) and decode_bc_enum_member(actual) == decode_bc_enum_member(expected)
        if kind == "bool":
            return isinstance(actual, bool) and actual is expected
        if kind in ("choice", "integer", "number"):
            return _is_number(actual) and actual == expected
        if kind == "datetime":
            try:
                return isinstance(actual, str) and _parse_datetime(actual) == _parse_datetime(expected)
            except ValueError:
                return False
        return actual == expected

    # -- text -------------------------------------------------------------------------------------------------
    def describe(self) -> str:
        """Human text, e.g. ``statecode = 0 (Active) and customertypecode = 3 (Customer)``."""
        if not self.conditions:
            return "(no filter)"
        return " and ".join(self.describe_condition(c) for c in self.conditions)

    def describe_condition(self, c: Condition) -> str:
        info = _field_info(self.service, self.entity, c.field) or _FieldInfo(c.field, "string", c.field)
        shown = [_describe_value(info, v) for v in c.values]
        if c.op == "eq":
            return f"{c.field} = {shown[0]}"
        if c.op == "ne":
            return f"{c.field} <> {shown[0]}"
        return f"{c.field} is one of {', '.join(shown)}"

    def to_odata(self, service: str | None = None) -> str:
        """The ``$filter`` text; ``""`` when there are no conditions (then send no ``$filter`` at all: an empty
        filter must never be sent as a condition that widens or breaks the query)."""
        if service is not None and service != self.service:
            raise ValueError(f"this filter is for {self.service}, not {service}")
        exprs = []
        for c in self.conditions:
            info = self._info(c)
            values = [_odata_value(info, v) for v in c.values]
            if c.op == "eq":
                exprs.append(odata.eq(info.odata_name, values[0]))
            elif c.op == "ne":
                exprs.append(odata.ne(info.odata_name, values[0]))
            else:
                exprs.append(odata.any_of(info.odata_name, values))
        # compound parts (``in``) always parenthesized, so the text can be AND-ed with more conditions as is
        return " and ".join(f"({e})" if e.compound else str(e) for e in exprs)


def _describe_value(info: _FieldInfo, value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if info.kind == "enum":
        text = decode_bc_enum_member(value)
        return "' ' (blank)" if not text.strip() else f"'{text}'"
    if info.kind == "choice" and value in info.options:
        return f"{value} ({info.options[value]})"
    if info.kind in ("string",):
        return f"'{value}'"
    return str(value)


def _odata_value(info: _FieldInfo, value: Any) -> Any:
    if value is None:
        return None
    if info.kind == "guid":
        return odata.Guid(value)
    if info.kind == "date":
        return date.fromisoformat(value)
    if info.kind == "datetime":
        return _parse_datetime(value)
    return value


_CONDITION_KEYS = frozenset({"field", "op", "value"})


def _parse_condition(item: Any, *, service: str, entity: str, key: str, mapping: str | None) -> Condition:
    det = _details(mapping, key)
    if not isinstance(item, dict):
        raise RequestError(f"'{key}': each condition must be an object with field, op and value; got {_show(item)}",
                           details=det)
    extra = sorted(set(item) - _CONDITION_KEYS)
    missing = sorted(_CONDITION_KEYS - set(item))
    if extra or missing:
        raise RequestError(f"'{key}': a condition has exactly the keys field, op, value"
                           + (f"; unknown: {', '.join(extra)}" if extra else "")
                           + (f"; missing: {', '.join(missing)}" if missing else ""), details=det)
    name, op, value = item["field"], item["op"], item["value"]
    if not isinstance(name, str) or not name:
        raise RequestError(f"'{key}': 'field' must be a non-empty string, got {_show(name)}", details=det)
    if op not in FILTER_OPS:
        raise RequestError(f"'{key}': 'op' must be one of {', '.join(FILTER_OPS)}; got {_show(op)}", details=det)
    info = _field_info(service, entity, name)
    if info is None:
        raise Unprocessable(f"'{key}': '{name}' is not a field of {_entity_label(service, entity)}",
                            details=_details(mapping, key, field=name))
    if op == "in":
        if not isinstance(value, list) or not value:
            raise RequestError(f"'{key}': 'in' needs a non-empty list of values for {name}, got {_show(value)}",
                               details=det)
        coerced: Any = tuple(_coerce_value(service, entity, info, v, key=key, mapping=mapping) for v in value)
    else:
        if isinstance(value, (list, dict)):
            raise RequestError(f"'{key}': '{op}' compares {name} with one value, got {_show(value)}", details=det)
        coerced = _coerce_value(service, entity, info, value, key=key, mapping=mapping)
    return Condition(info.name, op, coerced)


def _check_filter(f: Filter, *, service: str, entity: str, key: str, mapping: str | None) -> None:
    """Re-validate a Filter built in code (defaults) exactly as a JSON one would be."""
    if f.service != service or f.entity != entity:
        raise Unprocessable(f"'{key}' must be a filter on {_entity_label(service, entity)}, "
                            f"not on {_entity_label(f.service, f.entity)}", details=_details(mapping, key))
    again = Filter.from_json(f.to_json(), service=service, entity=entity, key=key, mapping=mapping)
    if again != f:
        raise Unprocessable(f"'{key}' is not in canonical form: {f.to_json()} (expected {again.to_json()})",
                            details=_details(mapping, key))


# ---------------------------------------------------------------------------------------------------------------------
# Field mappings, table mappings
# ---------------------------------------------------------------------------------------------------------------------
COMPANY_CONTACT_TO_ERR = ("The contact {number} must have a contact company that has a business relation to a "
                          "customer or vendor.")
"""BC's ContactMustBeRelatedToCustomerOrVendorErr (CDS Int. Table. Subscriber; %1 = the contact's No.)."""
COMPANY_CONTACT_FROM_ERR = "The contact cannot be synchronized because the company does not exist."
"""BC's ContactMissingCompanyErr (CRM Int. Table. Subscriber)."""


def is_lcy(currency_code: str | None, lcy_code: str) -> bool:
    """BC's LCY rule (bc-integration-semantics 11.5): a blank Currency Code means the local currency, and so does
    the LCY code itself (the BC API returns the LCY code, with an all-zero ``currencyId``, for LCY records).

    ``lcy_code`` is the company's LCY (General Ledger Setup), a setting the engine passes in - never a constant.
    """
    if not isinstance(lcy_code, str) or not lcy_code.strip():
        raise ValueError("lcy_code is required (the BC company's local currency code, e.g. 'USD')")
    code = (currency_code or "").strip()
    return not code or code.upper() == lcy_code.strip().upper()


@dataclass(frozen=True)
class Lookup:
    """Translate a field's value through another table mapping's couplings (BC: lookup / foreign-key translation).

    To (BC -> Dataverse): the BC field holds the referenced BC record's ``bc_key`` (``"id"`` = its SystemId, e.g.
    ``paymentTermsId``; ``"code"`` = its code, e.g. ``currencyCode``, ``salespersonCode``); the engine finds that
    record, then its coupling in ``mapping``, and writes the coupled Dataverse id. From: the reverse. Blank (empty,
    null, or BC's all-zero GUID) maps to null and back. Not coupled: Clear Value on Failed Sync -> null/blank, else the record fails with
    "<field> <value> must be coupled to a Dataverse row.".

    Record lookups write ``<bind_property>@odata.bind`` = ``/<target_entity_set>(<id>)`` and read
    ``_<column>_value``. Option lookups (``bind_property`` None; the referenced mapping is an option mapping) write
    and read the option value itself, e.g. ``paymenttermscode: 3``.

    ``lcy_iso_column`` (currency lookups only): BC's LCY rule applies. A BC value for which ``is_lcy(value, lcy)`` is
    true maps to the Dataverse row of the referenced table whose ``lcy_iso_column`` equals the LCY code (no coupling
    needed); From, that row maps to a blank BC value.

    **Company-contact lookups** (``bc_key`` = ``COMPANY_CONTACT``; only CONTACT's ``companyNumber <->
    parentcustomerid``): the BC value is the number of a company contact, and ``mapping`` names several table
    mappings joined by ``|`` (``"CUSTOMER|VENDOR"``, BC's dependency-filter notation), tried in that order. To: the
    company contact -> the customer / vendor it has a business relation with (BC API: their ``contactsInformation``)
    -> that record's coupling -> the account. From: the account -> a coupled customer / vendor -> its company contact.
    Not found, or blank, fails the record with BC's messages (``COMPANY_CONTACT_TO_ERR`` /
    ``COMPANY_CONTACT_FROM_ERR``), unless Clear Value on Failed Sync.
    """

    COMPANY_CONTACT = "companyContact"

    mapping: str
    bc_key: str = "id"
    bind_property: str | None = None
    target_entity_set: str | None = None
    lcy_iso_column: str | None = None

    @property
    def is_option(self) -> bool:
        return self.bind_property is None

    @property
    def is_company_contact(self) -> bool:
        return self.bc_key == Lookup.COMPANY_CONTACT

    @property
    def mappings(self) -> tuple[str, ...]:
        """The table mappings the lookup goes through: one, or several for company-contact lookups."""
        return tuple(self.mapping.split("|"))

    @property
    def bind_key(self) -> str | None:
        return f"{self.bind_property}@odata.bind" if self.bind_property else None

    def bind_value(self, dataverse_id: "str | uuid.UUID") -> str:
        if not self.target_entity_set:
            raise ValueError(f"lookup through {self.mapping} is an option lookup: write the option value itself")
        return f"/{self.target_entity_set}({odata.key(dataverse_id)})"

    def is_lcy(self, bc_value: str | None, lcy_code: str) -> bool:
        return self.lcy_iso_column is not None and is_lcy(bc_value, lcy_code)

    def to_json(self) -> dict:
        return {"mapping": self.mapping, "bcKey": self.bc_key, "bindProperty": self.bind_property,
                "targetEntitySet": self.target_entity_set, "lcyIsoColumn": self.lcy_iso_column,
                "bindKey": self.bind_key}


def _same_option(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return decode_bc_enum_member(a) == decode_bc_enum_member(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


@dataclass(frozen=True)
class OptionValueMap:
    """Explicit value table for one field mapping: (BC value, Dataverse option value) pairs.

    BC values are enum member names (as the API serializes them), booleans or numbers. When several pairs share a
    value on one side, the first pair wins in that direction (e.g. product statecode 1, 2 and 3 all give
    ``blocked = true``; ``true`` gives 1).
    """

    pairs: tuple[tuple[Any, int], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "pairs", tuple((b, d) for b, d in self.pairs))

    def to_dataverse(self, bc_value: Any) -> int:
        for b, d in self.pairs:
            if _same_option(b, bc_value):
                return d
        raise Unprocessable(f"The value {_show(bc_value)} has no option mapping to Dataverse "
                            f"(mapped values: {', '.join(_show(b) for b, _ in self.pairs)}).")

    def to_bc(self, option_value: Any) -> Any:
        for b, d in self.pairs:
            if _same_option(d, option_value):
                return b
        raise Unprocessable(f"The Dataverse option value {_show(option_value)} has no option mapping to Business "
                            f"Central (mapped values: {', '.join(_show(d) for _, d in self.pairs)}).")

    def to_json(self) -> list[dict]:
        return [{"bc": b, "dataverse": d} for b, d in self.pairs]


@dataclass(frozen=True)
class FieldMapping:
    """One Integration Field Mapping row.

    ``bc_field`` None = no BC field: ``constant`` is written to Dataverse (direction To). ``dataverse_column`` None =
    no Dataverse column: ``constant`` is written to BC (direction From). Disabled rows are ignored.
    ``not_null``: a lookup whose translated value is null is not written at all (e.g. ownerid).
    ``clear_value_on_failed_sync``: an uncoupled lookup target writes null/blank instead of failing the record.
    ``transformation`` is applied to the source value (the field's direction is its transformation direction).
    In an **option mapping** the Dataverse side is the option-set column itself and the BC value is matched with,
    and written as, the option's **label**.
    """

    bc_field: str | None
    dataverse_column: str | None
    direction: Direction = Direction.BIDIRECTIONAL
    constant: Any = None
    enabled: bool = True
    lookup: Lookup | None = None
    option_values: OptionValueMap | None = None
    transformation: Transformation | None = None
    clear_value_on_failed_sync: bool = False
    not_null: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", Direction(self.direction))
        if self.transformation is not None:
            object.__setattr__(self, "transformation", Transformation(self.transformation))

    @property
    def label(self) -> str:
        arrow = {Direction.BIDIRECTIONAL: "<->", Direction.TO_INTEGRATION_TABLE: "->",
                 Direction.FROM_INTEGRATION_TABLE: "<-"}[self.direction]
        bc = self.bc_field if self.bc_field is not None else f"(constant {_show(self.constant)})"
        dv = self.dataverse_column if self.dataverse_column is not None else f"(constant {_show(self.constant)})"
        return f"{bc} {arrow} {dv}"

    def applies_to(self, pass_direction: Direction) -> bool:
        """Enabled and transferred in a pass of ``pass_direction``."""
        return self.enabled and self.direction.includes(pass_direction)

    @property
    def dataverse_read_property(self) -> str | None:
        """Property to ``$select`` and read: ``_<column>_value`` for record lookups."""
        if self.dataverse_column is None:
            return None
        if self.lookup is not None and not self.lookup.is_option:
            return f"_{self.dataverse_column}_value"
        return self.dataverse_column

    @property
    def dataverse_write_property(self) -> str | None:
        """Property to write: ``<navigation property>@odata.bind`` for record lookups."""
        if self.dataverse_column is None:
            return None
        if self.lookup is not None and not self.lookup.is_option:
            return self.lookup.bind_key
        return self.dataverse_column

    def transform(self, value: Any) -> Any:
        return self.transformation.apply(value) if self.transformation is not None else value

    def to_json(self) -> dict:
        return {
            "bcField": self.bc_field, "dataverseColumn": self.dataverse_column, "direction": self.direction.value,
            "constant": self.constant, "enabled": self.enabled,
            "lookup": self.lookup.to_json() if self.lookup else None,
            "optionValues": self.option_values.to_json() if self.option_values else None,
            "transformation": self.transformation.value if self.transformation else None,
            "clearValueOnFailedSync": self.clear_value_on_failed_sync, "notNull": self.not_null,
            "dataverseReadProperty": self.dataverse_read_property,
            "dataverseWriteProperty": self.dataverse_write_property,
        }


@dataclass(frozen=True)
class MatchCriterion:
    """Match-based coupling: compare this field mapping's BC value with its Dataverse column.

    Priority 0 is tried first; criteria of one priority are AND-ed; the next priority is tried only when the
    previous one found no unique uncoupled match. Text is compared case-insensitively unless ``case_sensitive``.
    """

    bc_field: str
    dataverse_column: str
    priority: int = 0
    case_sensitive: bool = False

    def to_json(self) -> dict:
        return {"bcField": self.bc_field, "dataverseColumn": self.dataverse_column, "priority": self.priority,
                "caseSensitive": self.case_sensitive}


@dataclass(frozen=True)
class OptionSet:
    """The Dataverse option set an option mapping couples BC records with (BC: "CRM Option Mapping").

    Option values and labels are read through the metadata API (``metadata_path``); new options are added there.
    """

    table: str
    column: str

    @property
    def metadata_path(self) -> str:
        """Relative to ``/api/data/v9.2/``: the column's options (value + label)."""
        return (f"EntityDefinitions(LogicalName='{self.table}')/Attributes(LogicalName='{self.column}')"
                "/Microsoft.Dynamics.CRM.PicklistAttributeMetadata?$select=LogicalName&$expand=OptionSet")

    def to_json(self) -> dict:
        return {"table": self.table, "column": self.column, "metadataPath": self.metadata_path}


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class TableMapping:
    """One Integration Table Mapping: a BC entity set <-> a Dataverse table, with its field mappings and settings.

    ``create_values_bc`` / ``create_values_dataverse`` play BC's config templates: values set on records **created**
    in that system by the sync (e.g. ``customertypecode`` 3 on accounts created from CUSTOMER). As in BC, a template
    value wins over a mapped value.
    ``dependencies``: mappings to synchronize first in a full synchronization (BC's Dependency Filter).
    ``create_new_if_no_match``: match-based coupling creates a new Dataverse row for BC records without a unique
    match (only for To/Bidirectional mappings). ``webhook_capable``: BC sends webhooks for the entity set.
    An option mapping (``option_set`` set) couples BC records with option values; its ``dataverse_primary_id`` is
    the option column and it has no ``modifiedon``.
    """

    name: str
    bc_entity_set: str
    bc_entity_type: str
    dataverse_table: str
    dataverse_entity_set: str
    dataverse_primary_id: str
    dataverse_primary_name: str | None
    direction: Direction
    field_mappings: tuple[FieldMapping, ...]
    dataverse_modified_on: str | None = "modifiedon"
    sync_only_coupled_records: bool = True
    table_filter: Filter | None = None
    integration_table_filter: Filter | None = None
    update_conflict_resolution: UpdateConflictResolution = UpdateConflictResolution.NONE
    deletion_conflict_resolution: DeletionConflictResolution = DeletionConflictResolution.NONE
    dependencies: tuple[str, ...] = ()
    match_criteria: tuple[MatchCriterion, ...] = ()
    sync_after_match_coupling: bool = False
    create_new_if_no_match: bool = False
    create_values_bc: Mapping[str, Any] = field(default_factory=dict)
    create_values_dataverse: Mapping[str, Any] = field(default_factory=dict)
    webhook_capable: bool = False
    option_set: OptionSet | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "direction", Direction(self.direction))
        set_(self, "update_conflict_resolution", UpdateConflictResolution(self.update_conflict_resolution))
        set_(self, "deletion_conflict_resolution", DeletionConflictResolution(self.deletion_conflict_resolution))
        set_(self, "field_mappings", tuple(self.field_mappings))
        set_(self, "dependencies", tuple(self.dependencies))
        set_(self, "match_criteria", tuple(self.match_criteria))
        set_(self, "create_values_bc", _frozen(self.create_values_bc))
        set_(self, "create_values_dataverse", _frozen(self.create_values_dataverse))
        if self.table_filter is None:
            set_(self, "table_filter", Filter(BC, self.bc_entity_type))
        if self.integration_table_filter is None:
            set_(self, "integration_table_filter", Filter(DATAVERSE, self.dataverse_table))

    @property
    def is_option_mapping(self) -> bool:
        return self.option_set is not None

    def filter_for(self, service: str) -> Filter:
        """The Table Filter (``"bc"``) or the Integration Table Filter (``"dataverse"``)."""
        if service == BC:
            return self.table_filter  # type: ignore[return-value]
        if service == DATAVERSE:
            return self.integration_table_filter  # type: ignore[return-value]
        raise ValueError(f"service must be 'bc' or 'dataverse', got {service!r}")

    def field_mappings_for(self, pass_direction: Direction) -> tuple[FieldMapping, ...]:
        """Enabled field mappings transferred in a pass of ``pass_direction`` (its own direction or Bidirectional)."""
        return tuple(f for f in self.field_mappings if f.applies_to(Direction(pass_direction)))

    def field_mapping(self, bc_field: str | None = None, dataverse_column: str | None = None) -> FieldMapping | None:
        for f in self.field_mappings:
            if (bc_field is None or f.bc_field == bc_field) and \
                    (dataverse_column is None or f.dataverse_column == dataverse_column):
                return f
        return None

    def match_groups(self) -> list[tuple[int, tuple[MatchCriterion, ...]]]:
        """Match criteria grouped by priority, lowest (first tried) first."""
        groups: dict[int, list[MatchCriterion]] = {}
        for c in self.match_criteria:
            groups.setdefault(c.priority, []).append(c)
        return [(p, tuple(groups[p])) for p in sorted(groups)]

    def bc_select(self) -> tuple[str, ...]:
        """BC properties a sync reads: id, lastModifiedDateTime, mapped fields, filter fields."""
        props = bc_properties(self.bc_entity_type)
        out = [p for p in ("id", "lastModifiedDateTime") if p in props]
        for f in self.field_mappings:
            if f.enabled and f.bc_field and f.bc_field not in out:
                out.append(f.bc_field)
        for name in self.table_filter.fields():  # type: ignore[union-attr]
            if name not in out:
                out.append(name)
        if "number" in props and "number" not in out and any(
                f.enabled and f.lookup is not None and f.lookup.is_company_contact for f in self.field_mappings):
            out.append("number")  # BC's company-link error names the contact by its number
        return tuple(out)

    def dataverse_select(self) -> tuple[str, ...]:
        """Dataverse properties a sync reads (lookups as ``_x_value``); empty for option mappings (metadata API)."""
        if self.is_option_mapping:
            return ()
        out = [self.dataverse_primary_id]
        if self.dataverse_modified_on:
            out.append(self.dataverse_modified_on)
        for f in self.field_mappings:
            prop = f.dataverse_read_property
            if f.enabled and prop and prop not in out:
                out.append(prop)
        for name in self.integration_table_filter.fields():  # type: ignore[union-attr]
            if name not in out:
                out.append(name)
        return tuple(out)


# ---------------------------------------------------------------------------------------------------------------------
# Validation (BC's rules, plus the schema)
# ---------------------------------------------------------------------------------------------------------------------
OPTION_MAPPING_DIRECTION_ERR = ("Option mappings can only synchronize from integration table or to integration "
                                "table.")


def _fail(mapping: str | None, message: str, key: str | None = None, **more: Any) -> Unprocessable:
    return Unprocessable(message, details=_details(mapping, key, **more))


def _bc_info(m: TableMapping, name: str) -> _FieldInfo | None:
    return _field_info(BC, m.bc_entity_type, name)


def _dv_info(m: TableMapping, name: str) -> _FieldInfo | None:
    return _field_info(DATAVERSE, m.dataverse_table, name)


def validate_field_mapping(fm: FieldMapping, m: TableMapping, all_names: Iterable[str] | None = None) -> None:
    """Check one field mapping of ``m`` (raises ``Unprocessable``)."""
    where = f"Field mapping {fm.label} of table mapping {m.name}"
    key = "fieldMappings"
    if fm.bc_field is None and fm.dataverse_column is None:
        raise _fail(m.name, f"{where} names neither a BC field nor a Dataverse column.", key)
    if fm.constant is None and (fm.bc_field is None or fm.dataverse_column is None):
        raise _fail(m.name, f"{where} has no source field and no constant value.", key)
    if fm.constant is not None:
        if fm.bc_field is not None and fm.dataverse_column is not None:
            raise _fail(m.name, f"{where}: a constant value needs the source side to be empty "
                                "(no BC field for To, no Dataverse column for From).", key)
        expected = Direction.TO_INTEGRATION_TABLE if fm.bc_field is None else Direction.FROM_INTEGRATION_TABLE
        if fm.direction is not expected:
            raise _fail(m.name, f"{where}: a constant written to "
                                f"{'Dataverse' if fm.bc_field is None else 'Business Central'} must have direction "
                                f"'{expected.value}'.", key)
    bc = _bc_info(m, fm.bc_field) if fm.bc_field is not None else None
    dv = _dv_info(m, fm.dataverse_column) if fm.dataverse_column is not None else None
    if fm.bc_field is not None and bc is None:
        raise _fail(m.name, f"{where}: '{fm.bc_field}' is not a field of BC entity '{m.bc_entity_type}'.", key)
    if fm.dataverse_column is not None and (dv is None or dv.name != fm.dataverse_column):
        raise _fail(m.name, f"{where}: '{fm.dataverse_column}' is not a column of Dataverse table "
                            f"'{m.dataverse_table}'.", key)
    if fm.constant is not None:
        target_service, target_entity, info = (DATAVERSE, m.dataverse_table, dv) if fm.bc_field is None \
            else (BC, m.bc_entity_type, bc)
        canonical = _coerce_value(target_service, target_entity, info, fm.constant, key=key,  # type: ignore[arg-type]
                                  mapping=m.name)
        if canonical != fm.constant:
            raise _fail(m.name, f"{where}: write the constant as {_show(canonical)}.", key)
    if fm.not_null and fm.clear_value_on_failed_sync:
        raise _fail(m.name, f"{where}: 'Not Null' and 'Clear Value on Failed Sync' can't both be set.", key)
    if (fm.not_null or fm.clear_value_on_failed_sync) and fm.lookup is None:
        raise _fail(m.name, f"{where}: 'Not Null' and 'Clear Value on Failed Sync' only apply to lookups.", key)
    if fm.lookup is not None and fm.option_values is not None:
        raise _fail(m.name, f"{where}: a field is translated either through a lookup or an option value table, "
                            "not both.", key)
    if fm.transformation is not None:
        if fm.direction is Direction.BIDIRECTIONAL:
            raise _fail(m.name, f"{where}: a transformation applies in one direction; the field mapping can't be "
                                "Bidirectional.", key)
        if fm.lookup is not None or fm.option_values is not None or fm.constant is not None:
            raise _fail(m.name, f"{where}: transformations apply to plain values only.", key)
    if fm.lookup is not None:
        lk = fm.lookup
        if m.name in lk.mappings:
            raise _fail(m.name, f"{where}: a lookup can't go through its own table mapping.", key)
        if len(lk.mappings) > 1 and not lk.is_company_contact:
            raise _fail(m.name, f"{where}: only a company-contact lookup (bcKey '{Lookup.COMPANY_CONTACT}') goes "
                                "through several table mappings.", key)
        if len(set(lk.mappings)) != len(lk.mappings) or not all(lk.mappings):
            raise _fail(m.name, f"{where}: lookup through '{lk.mapping}' names a table mapping twice or an empty "
                                "name.", key)
        for ref in lk.mappings:
            if all_names is not None and ref not in set(all_names):
                raise _fail(m.name, f"{where}: lookup through unknown table mapping '{ref}'.", key)
        if lk.is_company_contact:
            if m.bc_entity_type != "contact" or fm.bc_field != "companyNumber" or lk.is_option \
                    or lk.lcy_iso_column is not None:
                raise _fail(m.name, f"{where}: a company-contact lookup maps a contact's companyNumber to a record "
                                    "lookup column (no option values, no LCY rule).", key)
        if (lk.bind_property is None) != (lk.target_entity_set is None):
            raise _fail(m.name, f"{where}: a record lookup needs both its bind navigation property and its "
                                "target entity set (an option lookup needs neither).", key)
        if fm.bc_field is None or fm.dataverse_column is None:
            raise _fail(m.name, f"{where}: a lookup needs a BC field and a Dataverse column.", key)
        if lk.is_option and not (dv is not None and dv.kind == "choice"):
            raise _fail(m.name, f"{where}: an option lookup needs an option-set column.", key)
        if not lk.is_option and not (dv is not None and dv.kind == "guid"):
            raise _fail(m.name, f"{where}: a record lookup needs a lookup column.", key)
    if fm.option_values is not None:
        if not fm.option_values.pairs:
            raise _fail(m.name, f"{where}: the option value table is empty.", key)
        if dv is None or dv.kind != "choice" or bc is None:
            raise _fail(m.name, f"{where}: an option value table maps a BC field to an option-set column.", key)
        for b, d in fm.option_values.pairs:
            if d not in dv.options:
                raise _fail(m.name, f"{where}: {d} is not an option value of {m.dataverse_table}."
                                    f"{fm.dataverse_column}.", key)
            if _coerce_value(BC, m.bc_entity_type, bc, b, key=key, mapping=m.name) != b:
                raise _fail(m.name, f"{where}: write the BC value {_show(b)} as it is serialized.", key)


def validate_table_mapping(m: TableMapping, all_names: Iterable[str] | None = None) -> None:
    """Check a table mapping like BC does; ``all_names`` (every mapping's name) enables the dependency and lookup
    checks. Raises ``Unprocessable``. Dependency cycles need every mapping: see ``validate_mappings``."""
    names = set(all_names) if all_names is not None else None
    if not isinstance(m.name, str) or not m.name.strip():
        raise _fail(None, "A table mapping needs a name.")
    if not bc_properties(m.bc_entity_type):
        raise _fail(m.name, f"Unknown BC entity type '{m.bc_entity_type}'.")
    table = dataverse_table(m.dataverse_table)
    if table is None:
        raise _fail(m.name, f"Unknown Dataverse table '{m.dataverse_table}'.")
    if m.is_option_mapping:
        os_ = m.option_set
        col = table.columns.get(os_.column)  # type: ignore[union-attr]
        if os_.table != m.dataverse_table or col is None or not col.is_choice:  # type: ignore[union-attr]
            raise _fail(m.name, f"The option set of table mapping {m.name} must be an option-set column of "
                                f"'{m.dataverse_table}'.")
        if m.dataverse_primary_id != os_.column:  # type: ignore[union-attr]
            raise _fail(m.name, f"An option mapping's integration table UID is its option column "
                                f"('{os_.column}').")  # type: ignore[union-attr]
        if m.direction is Direction.BIDIRECTIONAL:
            raise _fail(m.name, OPTION_MAPPING_DIRECTION_ERR, "direction")
    elif m.dataverse_primary_id not in table.columns:
        raise _fail(m.name, f"'{m.dataverse_primary_id}' is not a column of '{m.dataverse_table}'.")

    seen: set[tuple[str | None, str | None]] = set()
    for fm in m.field_mappings:
        validate_field_mapping(fm, m, names)
        ident = (fm.bc_field, fm.dataverse_column)
        if fm.constant is None and ident in seen:
            raise _fail(m.name, f"Field mapping {fm.label} appears twice in table mapping {m.name}.",
                        "fieldMappings")
        seen.add(ident)

    if not any(f.enabled and f.direction in (m.direction, Direction.BIDIRECTIONAL) for f in m.field_mappings):
        raise _fail(m.name, "You must set the direction of at least one enabled integration field mapping to "
                            f"'{m.direction.value}'.", "direction")

    _check_filter(m.table_filter, service=BC, entity=m.bc_entity_type, key="tableFilter",  # type: ignore[arg-type]
                  mapping=m.name)
    _check_filter(m.integration_table_filter, service=DATAVERSE,  # type: ignore[arg-type]
                  entity=m.dataverse_table, key="integrationTableFilter", mapping=m.name)

    used: set[tuple[str, str]] = set()
    for c in m.match_criteria:
        text = f"Match criterion {c.bc_field} <-> {c.dataverse_column}"
        if isinstance(c.priority, bool) or not isinstance(c.priority, int) or c.priority < 0:
            raise _fail(m.name, f"{text}: the match priority must be an integer of 0 or more (0 is tried first).",
                        "matchCriteria")
        fm = next((f for f in m.field_mappings
                   if f.bc_field == c.bc_field and f.dataverse_column == c.dataverse_column), None)
        if fm is None:
            raise _fail(m.name, f"{text} is not a field mapping of table mapping {m.name}.", "matchCriteria")
        if not fm.enabled:
            raise _fail(m.name, f"{text}: the field mapping is disabled.", "matchCriteria")
        if fm.constant is not None:
            raise _fail(m.name, f"{text}: field mappings with a constant value can't be used for match-based "
                                "coupling.", "matchCriteria")
        if fm.lookup is not None or fm.option_values is not None or fm.transformation is not None:
            raise _fail(m.name, f"{text}: the two values have different types (the field is translated), so it "
                                "can't be used for match-based coupling.", "matchCriteria")
        if (c.bc_field, c.dataverse_column) in used:
            raise _fail(m.name, f"{text} is given twice.", "matchCriteria")
        used.add((c.bc_field, c.dataverse_column))

    if m.create_new_if_no_match and m.direction is Direction.FROM_INTEGRATION_TABLE:
        raise _fail(m.name, f"Table mapping {m.name} synchronizes from the integration table only, so match-based "
                            "coupling can't create new Dataverse rows: set createNewIfNoMatch to false.",
                    "createNewIfNoMatch")

    for dep in m.dependencies:
        if dep == m.name:
            raise _fail(m.name, f"Table mapping {m.name} can't depend on itself.", "dependencies")
        if names is not None and dep not in names:
            raise _fail(m.name, f"Table mapping {m.name} depends on unknown table mapping '{dep}'.", "dependencies")
    if len(set(m.dependencies)) != len(m.dependencies):
        raise _fail(m.name, f"Table mapping {m.name} names a dependency twice.", "dependencies")

    for service, entity, values, key in ((BC, m.bc_entity_type, m.create_values_bc, "createValuesBc"),
                                         (DATAVERSE, m.dataverse_table, m.create_values_dataverse,
                                          "createValuesDataverse")):
        for name, value in values.items():
            info = _field_info(service, entity, name)
            if info is None or info.name != name:
                raise _fail(m.name, f"'{key}': '{name}' is not a field of {_entity_label(service, entity)}.", key)
            if _coerce_value(service, entity, info, value, key=key, mapping=m.name) != value:
                raise _fail(m.name, f"'{key}': write {name} as it is serialized.", key)


_PREFERRED_ORDER = ("SALESPEOPLE", "CURRENCY", "PAYMENT TERMS", "SHIPMENT METHOD", "UNIT OF MEASURE", "CUSTOMER",
                    "VENDOR", "CONTACT", "ITEM-PRODUCT")
"""Tie-break between mappings whose dependencies allow either order (BC's prioritized mapping list)."""


def dependency_order(mappings: Mapping[str, TableMapping]) -> list[str]:
    """Names in an order where every mapping comes after its dependencies (for full synchronization).

    Raises ``Unprocessable`` for an unknown dependency or a dependency cycle (naming the cycle).
    """
    def rank(name: str) -> tuple[int, str]:
        return (_PREFERRED_ORDER.index(name) if name in _PREFERRED_ORDER else len(_PREFERRED_ORDER), name)

    waiting: dict[str, set[str]] = {}
    for name, m in mappings.items():
        for dep in m.dependencies:
            if dep not in mappings:
                raise _fail(name, f"Table mapping {name} depends on unknown table mapping '{dep}'.", "dependencies")
        waiting[name] = set(m.dependencies)
    ready = [rank(n) for n, deps in waiting.items() if not deps]
    heapq.heapify(ready)
    out: list[str] = []
    while ready:
        _, name = heapq.heappop(ready)
        out.append(name)
        for other, deps in waiting.items():
            if name in deps:
                deps.discard(name)
                if not deps:
                    heapq.heappush(ready, rank(other))
    if len(out) < len(waiting):
        cycle = _find_cycle({n: d for n, d in waiting.items() if d})
        raise _fail(cycle[0], "The table mapping dependencies form a cycle: " + " -> ".join(cycle) + ".",
                    "dependencies", cycle=cycle)
    return out


def _find_cycle(graph: Mapping[str, set[str]]) -> list[str]:
    """A cycle in ``graph`` (every node there has an unmet dependency, so one exists): [a, b, ..., a]."""
    start = sorted(graph)[0]
    path = [start]
    while True:
        nxt = sorted(d for d in graph[path[-1]] if d in graph)[0]
        if nxt in path:
            return path[path.index(nxt):] + [nxt]
        path.append(nxt)


def validate_mappings(mappings: Mapping[str, TableMapping]) -> list[str]:
    """Validate every mapping together (names, lookups, dependencies, no cycles); returns ``dependency_order``."""
    for key, m in mappings.items():
        if key != m.name:
            raise _fail(m.name, f"Table mapping {m.name} is registered under another name ('{key}').")
        validate_table_mapping(m, mappings.keys())
    return dependency_order(mappings)


# ---------------------------------------------------------------------------------------------------------------------
# JSON (GET /api/mappings) and back
# ---------------------------------------------------------------------------------------------------------------------
def to_json(m: TableMapping) -> dict:
    """The mapping as GET /api/mappings returns it: camelCase, stable key order, JSON-serializable.

    ``tableFilterOData`` / ``integrationTableFilterOData`` and the ``dataverse*Property`` / ``bindKey`` /
    ``metadataPath`` entries are derived, for information; ``from_json`` ignores them.
    """
    return {
        "name": m.name,
        "bcEntitySet": m.bc_entity_set,
        "bcEntityType": m.bc_entity_type,
        "dataverseTable": m.dataverse_table,
        "dataverseEntitySet": m.dataverse_entity_set,
        "dataversePrimaryId": m.dataverse_primary_id,
        "dataversePrimaryName": m.dataverse_primary_name,
        "dataverseModifiedOn": m.dataverse_modified_on,
        "optionSet": m.option_set.to_json() if m.option_set else None,
        "direction": m.direction.value,
        "syncOnlyCoupledRecords": m.sync_only_coupled_records,
        "updateConflictResolution": m.update_conflict_resolution.value,
        "deletionConflictResolution": m.deletion_conflict_resolution.value,
        "tableFilter": m.table_filter.to_json(),  # type: ignore[union-attr]
        "tableFilterOData": m.table_filter.to_odata(),  # type: ignore[union-attr]
        "integrationTableFilter": m.integration_table_filter.to_json(),  # type: ignore[union-attr]
        "integrationTableFilterOData": m.integration_table_filter.to_odata(),  # type: ignore[union-attr]
        "matchCriteria": [c.to_json() for c in m.match_criteria],
        "syncAfterMatchCoupling": m.sync_after_match_coupling,
        "createNewIfNoMatch": m.create_new_if_no_match,
        "createValuesBc": dict(m.create_values_bc),
        "createValuesDataverse": dict(m.create_values_dataverse),
        "dependencies": list(m.dependencies),
        "webhookCapable": m.webhook_capable,
        "fieldMappings": [f.to_json() for f in m.field_mappings],
    }


def _req(data: Mapping[str, Any], key: str, types: type | tuple[type, ...], *, nullable: bool = False,
         where: str = "mapping") -> Any:
    if not isinstance(data, Mapping) or key not in data:
        raise RequestError(f"{where}: '{key}' is missing")
    value = data[key]
    if value is None and nullable:
        return None
    allowed = types if isinstance(types, tuple) else (types,)
    if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
        raise RequestError(f"{where}: '{key}' has the wrong type: {_show(value)}")
    return value


def _criterion_from_json(data: Any, where: str) -> MatchCriterion:
    return MatchCriterion(_req(data, "bcField", str, where=where), _req(data, "dataverseColumn", str, where=where),
                          _req(data, "priority", int, where=where), _req(data, "caseSensitive", bool, where=where))


def _lookup_from_json(data: Any, where: str) -> Lookup | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise RequestError(f"{where}: 'lookup' must be an object or null")
    return Lookup(mapping=_req(data, "mapping", str, where=where), bc_key=_req(data, "bcKey", str, where=where),
                  bind_property=_req(data, "bindProperty", str, nullable=True, where=where),
                  target_entity_set=_req(data, "targetEntitySet", str, nullable=True, where=where),
                  lcy_iso_column=_req(data, "lcyIsoColumn", str, nullable=True, where=where))


def _field_mapping_from_json(data: Any) -> FieldMapping:
    if not isinstance(data, dict):
        raise RequestError("fieldMappings: each field mapping must be an object")
    where = f"field mapping {data.get('bcField')!r}/{data.get('dataverseColumn')!r}"
    option_values = data.get("optionValues")
    if option_values is not None:
        if not isinstance(option_values, list) or not all(isinstance(p, dict) for p in option_values):
            raise RequestError(f"{where}: 'optionValues' must be a list of {{bc, dataverse}} objects or null")
        option_values = OptionValueMap(tuple((_req(p, "bc", (str, bool, int, float), where=where),
                                              _req(p, "dataverse", int, where=where)) for p in option_values))
    transformation = _req(data, "transformation", str, nullable=True, where=where)
    return FieldMapping(
        bc_field=_req(data, "bcField", str, nullable=True, where=where),
        dataverse_column=_req(data, "dataverseColumn", str, nullable=True, where=where),
        direction=_parse_enum(Direction, data.get("direction"), "direction"),
        constant=data.get("constant"),
        enabled=_req(data, "enabled", bool, where=where),
        lookup=_lookup_from_json(data.get("lookup"), where),
        option_values=option_values,
        transformation=_parse_enum(Transformation, transformation, "transformation") if transformation else None,
        clear_value_on_failed_sync=_req(data, "clearValueOnFailedSync", bool, where=where),
        not_null=_req(data, "notNull", bool, where=where),
    )


def from_json(data: Any) -> TableMapping:
    """Rebuild a TableMapping from ``to_json`` output (derived entries ignored). Not validated: call
    ``validate_table_mapping`` on the result."""
    if not isinstance(data, dict):
        raise RequestError("a table mapping must be a JSON object")
    name = _req(data, "name", str)
    where = f"table mapping {name}"
    bc_type = _req(data, "bcEntityType", str, where=where)
    dv_table = _req(data, "dataverseTable", str, where=where)
    option_set = _req(data, "optionSet", dict, nullable=True, where=where)
    criteria = _req(data, "matchCriteria", list, where=where)
    return TableMapping(
        name=name,
        bc_entity_set=_req(data, "bcEntitySet", str, where=where),
        bc_entity_type=bc_type,
        dataverse_table=dv_table,
        dataverse_entity_set=_req(data, "dataverseEntitySet", str, where=where),
        dataverse_primary_id=_req(data, "dataversePrimaryId", str, where=where),
        dataverse_primary_name=_req(data, "dataversePrimaryName", str, nullable=True, where=where),
        dataverse_modified_on=_req(data, "dataverseModifiedOn", str, nullable=True, where=where),
        option_set=OptionSet(_req(option_set, "table", str, where=where), _req(option_set, "column", str, where=where))
        if option_set else None,
        direction=_parse_enum(Direction, data.get("direction"), "direction", name),
        sync_only_coupled_records=_req(data, "syncOnlyCoupledRecords", bool, where=where),
        update_conflict_resolution=_parse_enum(UpdateConflictResolution, data.get("updateConflictResolution"),
                                               "updateConflictResolution", name),
        deletion_conflict_resolution=_parse_enum(DeletionConflictResolution, data.get("deletionConflictResolution"),
                                                 "deletionConflictResolution", name),
        table_filter=Filter.from_json(data.get("tableFilter"), service=BC, entity=bc_type, key="tableFilter",
                                      mapping=name),
        integration_table_filter=Filter.from_json(data.get("integrationTableFilter"), service=DATAVERSE,
                                                  entity=dv_table, key="integrationTableFilter", mapping=name),
        match_criteria=tuple(_criterion_from_json(c, where) for c in criteria),
        sync_after_match_coupling=_req(data, "syncAfterMatchCoupling", bool, where=where),
        create_new_if_no_match=_req(data, "createNewIfNoMatch", bool, where=where),
        create_values_bc=_req(data, "createValuesBc", dict, where=where),
        create_values_dataverse=_req(data, "createValuesDataverse", dict, where=where),
        dependencies=tuple(_req(data, "dependencies", list, where=where)),
        webhook_capable=_req(data, "webhookCapable", bool, where=where),
        field_mappings=tuple(_field_mapping_from_json(f) for f in _req(data, "fieldMappings", list, where=where)),
    )


# ---------------------------------------------------------------------------------------------------------------------
# PATCH /api/mappings/{name} and stored overrides
# ---------------------------------------------------------------------------------------------------------------------
PATCHABLE_KEYS = ("direction", "syncOnlyCoupledRecords", "updateConflictResolution", "deletionConflictResolution",
                  "tableFilter", "integrationTableFilter", "matchCriteria", "syncAfterMatchCoupling",
                  "createNewIfNoMatch")
"""The table-level settings PATCH accepts (and stored overrides may hold), in the order they are applied."""

_BOOL_KEYS = {"syncOnlyCoupledRecords": "sync_only_coupled_records",
              "syncAfterMatchCoupling": "sync_after_match_coupling",
              "createNewIfNoMatch": "create_new_if_no_match"}
_CRITERION_KEYS = ("bcField", "dataverseColumn", "priority", "caseSensitive")


def _parse_match_criteria(m: TableMapping, value: Any, key: str = "matchCriteria") -> tuple[MatchCriterion, ...]:
    det = _details(m.name, key)
    if not isinstance(value, list):
        raise RequestError(f"'{key}' must be a list like "
                           '[{"bcField": "displayName", "dataverseColumn": "name", "priority": 0, '
                           '"caseSensitive": false}], got ' + _show(value), details=det)
    out = []
    for item in value:
        if not isinstance(item, dict):
            raise RequestError(f"'{key}': each criterion must be an object, got {_show(item)}", details=det)
        extra = sorted(set(item) - set(_CRITERION_KEYS))
        if extra:
            raise RequestError(f"'{key}': unknown key(s) {', '.join(extra)}; a criterion has "
                               f"{', '.join(_CRITERION_KEYS)}", details=det)
        bc, dv = item.get("bcField"), item.get("dataverseColumn")
        for k, v in (("bcField", bc), ("dataverseColumn", dv)):
            if v is not None and (not isinstance(v, str) or not v):
                raise RequestError(f"'{key}': '{k}' must be a non-empty string, got {_show(v)}", details=det)
        if bc is None and dv is None:
            raise RequestError(f"'{key}': a criterion names its field mapping by bcField and/or dataverseColumn",
                               details=det)
        priority = item.get("priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise RequestError(f"'{key}': 'priority' must be an integer (0 is tried first), got {_show(priority)}",
                               details=det)
        case_sensitive = item.get("caseSensitive", False)
        if not isinstance(case_sensitive, bool):
            raise RequestError(f"'{key}': 'caseSensitive' must be true or false (JSON boolean), got "
                               f"{_show(case_sensitive)}", details=det)
        if bc is not None and bc not in bc_properties(m.bc_entity_type):
            raise Unprocessable(f"'{key}': '{bc}' is not a field of BC entity '{m.bc_entity_type}'",
                                details=_details(m.name, key, field=bc))
        if dv is not None and (_dv_info(m, dv) is None or _dv_info(m, dv).name != dv):  # type: ignore[union-attr]
            raise Unprocessable(f"'{key}': '{dv}' is not a column of Dataverse table '{m.dataverse_table}'",
                                details=_details(m.name, key, field=dv))
        found = [f for f in m.field_mappings if f.bc_field is not None and f.dataverse_column is not None
                 and (bc is None or f.bc_field == bc) and (dv is None or f.dataverse_column == dv)]
        named = " <-> ".join(x for x in (bc, dv) if x)
        if not found:
            choices = ", ".join(f"{f.bc_field} <-> {f.dataverse_column}" for f in m.field_mappings
                                if f.bc_field and f.dataverse_column)
            raise Unprocessable(f"'{key}': {named} is not a field mapping of table mapping {m.name} "
                                f"(field mappings: {choices})", details=_details(m.name, key, field=bc or dv))
        if len(found) > 1:
            raise Unprocessable(f"'{key}': {named} names several field mappings; give both bcField and "
                                "dataverseColumn", details=_details(m.name, key, field=bc or dv))
        out.append(MatchCriterion(found[0].bc_field, found[0].dataverse_column,  # type: ignore[arg-type]
                                  priority, case_sensitive))
    return tuple(out)


def apply_patch(mapping: TableMapping, patch: Any, *, all_names: Iterable[str] | None = None) -> TableMapping:
    """The mapping with the PATCH body's table-level settings applied, validated like BC does.

    Accepts only ``PATCHABLE_KEYS``. Changing an option mapping's direction changes its field mappings' direction
    too (as BC does). Changing the direction to FromIntegrationTable turns ``createNewIfNoMatch`` off unless the
    patch sets it (From mappings can't create Dataverse rows). Never mutates ``mapping``.
    """
    name = mapping.name
    if not isinstance(patch, dict):
        raise RequestError(f"The body must be a JSON object with some of: {', '.join(PATCHABLE_KEYS)}",
                           details=_details(name))
    unknown = [k for k in patch if k not in PATCHABLE_KEYS]
    if unknown:
        read_only = [k for k in unknown if k in _READ_ONLY_KEYS]
        if read_only:
            raise RequestError(f"'{read_only[0]}' can't be changed: PATCH changes table-level settings only "
                               f"({', '.join(PATCHABLE_KEYS)})", details=_details(name, read_only[0]))
        raise RequestError(f"Unknown setting '{unknown[0]}'; PATCH accepts: {', '.join(PATCHABLE_KEYS)}",
                           details=_details(name, unknown[0]))
    changes: dict[str, Any] = {}
    for key in PATCHABLE_KEYS:
        if key not in patch:
            continue
        value = patch[key]
        if key == "direction":
            changes["direction"] = _parse_enum(Direction, value, key, name)
        elif key == "updateConflictResolution":
            changes["update_conflict_resolution"] = _parse_enum(UpdateConflictResolution, value, key, name)
        elif key == "deletionConflictResolution":
            changes["deletion_conflict_resolution"] = _parse_enum(DeletionConflictResolution, value, key, name)
        elif key in _BOOL_KEYS:
            if not isinstance(value, bool):
                raise RequestError(f"'{key}' must be true or false (JSON boolean), got {_show(value)}",
                                   details=_details(name, key))
            changes[_BOOL_KEYS[key]] = value
        elif key == "tableFilter":
            changes["table_filter"] = Filter.from_json(value, service=BC, entity=mapping.bc_entity_type, key=key,
                                                       mapping=name)
        elif key == "integrationTableFilter":
            changes["integration_table_filter"] = Filter.from_json(value, service=DATAVERSE,
                                                                   entity=mapping.dataverse_table, key=key,
                                                                   mapping=name)
        elif key == "matchCriteria":
            changes["match_criteria"] = _parse_match_criteria(mapping, value, key)
    new_direction = changes.get("direction")
    if new_direction is not None and new_direction is not mapping.direction:
        if mapping.is_option_mapping and new_direction is not Direction.BIDIRECTIONAL:
            changes["field_mappings"] = tuple(replace(f, direction=new_direction) for f in mapping.field_mappings)
        if new_direction is Direction.FROM_INTEGRATION_TABLE and "createNewIfNoMatch" not in patch:
            changes["create_new_if_no_match"] = False
    result = replace(mapping, **changes)
    validate_table_mapping(result, all_names)
    return result


def overrides_from_patch(patched: TableMapping, patch: Mapping[str, Any],
                         previous: Mapping[str, Any] | None = None) -> dict:
    """The overrides to store after a successful ``apply_patch``: the previous overrides plus every patched key,
    in canonical JSON form (read from ``patched``). Keys the patch changed implicitly (see ``apply_patch``) are
    stored too, so re-applying the overrides to the defaults gives ``patched`` again."""
    out = {k: v for k, v in (previous or {}).items() if k in PATCHABLE_KEYS}
    current = to_json(patched)
    keys = set(patch)
    if "direction" in patch and "createNewIfNoMatch" not in patch and \
            patched.direction is Direction.FROM_INTEGRATION_TABLE:
        keys.add("createNewIfNoMatch")
    for key in PATCHABLE_KEYS:
        if key in keys:
            out[key] = current[key]
    return out


def apply_overrides_report(defaults: TableMapping, stored: Any, *,
                           all_names: Iterable[str] | None = None) -> tuple[TableMapping, list[str]]:
    """Layer stored overrides (a JSON object of ``PATCHABLE_KEYS``) onto the default mapping.

    Never raises: unknown keys and values that no longer validate are ignored. Returns the effective mapping and
    one log-friendly line per ignored override. All keys are tried together first (they may depend on each other,
    e.g. direction and createNewIfNoMatch); if that fails, key by key in ``PATCHABLE_KEYS`` order.
    """
    if stored is None:
        return defaults, []
    if not isinstance(stored, Mapping):
        return defaults, [f"{defaults.name}: stored overrides are not a JSON object ({type(stored).__name__}); "
                          "ignored"]
    ignored = [f"{defaults.name}: unknown setting '{k}' ignored" for k in stored if k not in PATCHABLE_KEYS]
    known = {k: stored[k] for k in PATCHABLE_KEYS if k in stored}
    if not known:
        return defaults, ignored
    try:
        return apply_patch(defaults, known, all_names=all_names), ignored
    except RequestError:
        pass
    result = defaults
    for key, value in known.items():
        try:
            result = apply_patch(result, {key: value}, all_names=all_names)
        except RequestError as exc:
            ignored.append(f"{defaults.name}: stored '{key}' ignored: {exc.message}")
    return result, ignored


def apply_overrides(defaults: TableMapping, stored: Any, *, all_names: Iterable[str] | None = None) -> TableMapping:
    """``apply_overrides_report`` without the report."""
    return apply_overrides_report(defaults, stored, all_names=all_names)[0]


_READ_ONLY_KEYS = frozenset({
    "name", "bcEntitySet", "bcEntityType", "dataverseTable", "dataverseEntitySet", "dataversePrimaryId",
    "dataversePrimaryName", "dataverseModifiedOn", "optionSet", "tableFilterOData", "integrationTableFilterOData",
    "createValuesBc", "createValuesDataverse", "dependencies", "webhookCapable", "fieldMappings"})
