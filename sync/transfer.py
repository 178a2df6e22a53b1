"""Field transfer for one record and one pass (BC: codeunit 5336 "Integration Record Synch.", spec section 2).

Pure domain module: no I/O. The services read a page of source records and their counterparts, ask
``lookup_needs`` which referenced records must be resolved through other mappings' couplings, resolve them in
bulk, and call ``transfer`` once per record with the resolved values (a ``LookupResolution``). ``transfer``
returns the exact JSON body to POST (``inserting=True``) or PATCH (only the fields that differ).

Records are what the APIs return:

* BC: ``{"id", "number", "displayName", "currencyCode", "paymentTermsId", "lastModifiedDateTime", ...}``; BC has
  no null: blank is ``""``, the all-zero GUID, ``0``, ``false``, the enum member ``_x0020_``.
* Dataverse: the row as read with ``TableMapping.dataverse_select()``; record lookups are read as
  ``_<column>_value`` and written as ``<nav>@odata.bind`` = ``/<entity set>(<id>)`` (or ``null`` to clear).
* Option mappings (PAYMENT TERMS, SHIPMENT METHOD): the Dataverse "row" is one option,
  ``{"value": <option value>, "label": <label>}``; the field mapping's column stands for the **label**, so the
  transfer reads and writes ``"label"`` (the service turns it into metadata API calls).

Pass directions: ``ToIntegrationTable`` (source = BC record, destination = Dataverse row) and
``FromIntegrationTable`` (source = Dataverse row, destination = BC record).

Only-modified semantics (BC's Modify / ForceModify): a field is written only when the source value, translated
and truncated to the destination's length, differs from the destination's value after normalisation:
strings are trimmed; ``None`` == ``""`` == BC's zero GUID == the blank enum member ``_x0020_``; GUIDs ignore case
and braces; numbers compare numerically (``1000.8`` == ``1000.80``; ``None`` == 0, as AL reads a null number);
booleans ``None`` == ``false``; text is case-sensitive, except BC **Code** fields (No., Post Code, Country/Region
Code, ...), which BC stores upper-cased and trimmed, so the source is upper-cased and trimmed before comparing and
writing. A BC currency code equal to the LCY code compares equal to blank (the API returns the LCY code for LCY
records). Consequence, and the property the tests check for every default mapping: once ``changes`` has been
written, transferring again from the same source yields no changes at all.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from .errors import Unprocessable
from .mappings import (COMPANY_CONTACT_FROM_ERR, COMPANY_CONTACT_TO_ERR, Direction, FieldMapping, TableMapping,
                       bc_enum_members, bc_properties, decode_bc_enum_member, dataverse_table, is_lcy)

__all__ = [
    "ZERO_GUID", "OPTION_VALUE", "OPTION_LABEL", "LookupResolution", "TransferResult", "lookup_needs", "transfer",
    "lookup_key", "is_blank", "bc_caption", "dataverse_caption", "no_field_mappings_message",
]

ZERO_GUID = "00000000-0000-0000-0000-000000000000"
"""BC's blank GUID (``currencyId`` of LCY customers, ``paymentTermsId`` with no payment terms, ...)."""

OPTION_VALUE = "value"
OPTION_LABEL = "label"
"""Keys of an option (the Dataverse "row" of an option mapping)."""

TO = Direction.TO_INTEGRATION_TABLE
FROM = Direction.FROM_INTEGRATION_TABLE

# BC fields of type Code (upper-cased and trimmed by BC) among the API fields, from the BC table definitions. The API
# metadata says Edm.String for Code and Text alike.
_BC_CODE_FIELDS: Mapping[str, frozenset[str]] = MappingProxyType({
    "customer": frozenset({"number", "country", "postalCode", "salespersonCode", "currencyCode"}),
    "vendor": frozenset({"number", "country", "postalCode", "currencyCode", "irs1099Code"}),
    "contact": frozenset({"number", "country", "postalCode", "companyNumber"}),
    "item": frozenset({"number", "itemCategoryCode", "taxGroupCode", "baseUnitOfMeasureCode",
                       "generalProductPostingGroupCode", "inventoryPostingGroupCode"}),
    "currency": frozenset({"code"}),
    "unitOfMeasure": frozenset({"code", "internationalStandardCode"}),
    "paymentTerm": frozenset({"code"}),
    "shipmentMethod": frozenset({"code"}),
    "salespersonPurchaser": frozenset({"code"}),
})

# BC API fields that are read-only (FlowFields, calculated, system): never in a POST/PATCH body.
_BC_READ_ONLY = frozenset({"id", "lastModifiedDateTime", "balanceDue", "balance", "inventory", "taxAreaDisplayName",
                           "contactBusinessRelation"})

_BC_CAPTIONS: Mapping[str, str] = MappingProxyType({
    "customer": "Customer", "vendor": "Vendor", "contact": "Contact", "currency": "Currency",
    "salespersonPurchaser": "Salesperson/Purchaser", "item": "Item", "unitOfMeasure": "Unit of Measure",
    "paymentTerm": "Payment Terms", "shipmentMethod": "Shipment Method",
})


def bc_caption(entity_type: str) -> str:
    """BC's table caption for an API entity type (``customer`` -> ``Customer``), for messages."""
    return _BC_CAPTIONS.get(entity_type, entity_type[:1].upper() + entity_type[1:])


def dataverse_caption(table: str) -> str:
    """Dataverse tables are named by their logical name in messages (``account``)."""
    return table


def no_field_mappings_message(mapping: TableMapping) -> str:
    """BC's job-level error when a pass has no field mapping to transfer."""
    return (f"There are no field mapping rows for the Integration Table Mapping Name {mapping.name} in the "
            "Integration Field Mapping table")


# ---------------------------------------------------------------------------------------------------------------------
# Lookup resolution
# ---------------------------------------------------------------------------------------------------------------------
_GUID_RE = re.compile(r"\{?[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\}?")


def _guid(text: str) -> str | None:
    """Canonical lower-case GUID if ``text`` is one, else None."""
    text = text.strip()
    if not _GUID_RE.fullmatch(text):
        return None
    return str(uuid.UUID(text.strip("{}")))


def is_blank(value: Any) -> bool:
    """BC's and Dataverse's "no value": None, empty or blank text, the zero GUID, the blank enum member."""
    if value is None:
        return True
    if isinstance(value, str):
        text = decode_bc_enum_member(value).strip()
        return not text or _guid(text) == ZERO_GUID
    return False


def lookup_key(value: Any) -> Any:
    """Normal form of a lookup source value, as a key of ``LookupResolution.values`` and of ``lookup_needs``:
    GUIDs lower-case without braces, codes trimmed and upper-cased (BC codes are upper-case), option values as is."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        return _guid(value) or value.strip().upper()
    return value


@dataclass(frozen=True)
class LookupResolution:
    """The lookup values a page of records needs, resolved by the service before ``transfer``.

    ``values``: ``{(mapping name, source value): target value}``, e.g. To:
    ``("CURRENCY", "EUR") -> "<transactioncurrencyid>"``, ``("PAYMENT TERMS", "<paymentTerm id>") -> 3``;
    From: ``("CURRENCY", "<transactioncurrencyid>") -> "EUR"``, ``("PAYMENT TERMS", 3) -> "<paymentTerm id>"``.
    Company-contact lookups are keyed by their ``Lookup.mapping`` (``"CUSTOMER|VENDOR"``): To, company contact
    number -> account id; From, account id -> company contact number.
    A missing key means "not coupled". Keys are normalised with ``lookup_key``, so any GUID spelling works.
    One resolution serves one pass direction.

    ``lcy_code``: the company's local currency code (BC General Ledger Setup), needed by currency lookups.
    ``lcy_dataverse_currency_id``: the Dataverse transactioncurrency whose ISO code is ``lcy_code`` (found by the
    service by ISO code, not through couplings); None when it doesn't exist in Dataverse.
    """

    values: Mapping[tuple[str, Any], Any] = field(default_factory=dict)
    lcy_code: str | None = None
    lcy_dataverse_currency_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", MappingProxyType(
            {(name, lookup_key(source)): target for (name, source), target in dict(self.values).items()}))
        if self.lcy_dataverse_currency_id is not None:
            object.__setattr__(self, "lcy_dataverse_currency_id", lookup_key(self.lcy_dataverse_currency_id))

    def find(self, mapping: str, source_value: Any) -> tuple[bool, Any]:
        """``(True, target)`` when coupled, ``(False, None)`` when not."""
        key = (mapping, lookup_key(source_value))
        if key in self.values:
            return True, self.values[key]
        return False, None

    def is_lcy_dataverse_currency(self, dataverse_id: Any) -> bool:
        return self.lcy_dataverse_currency_id is not None and isinstance(dataverse_id, str) \
            and lookup_key(dataverse_id) == self.lcy_dataverse_currency_id


def _pass(direction: Direction | str) -> Direction:
    d = Direction(direction)
    if d is Direction.BIDIRECTIONAL:
        raise ValueError("a transfer is one pass: ToIntegrationTable or FromIntegrationTable, not Bidirectional")
    return d


def _source_read_key(mapping: TableMapping, fm: FieldMapping, direction: Direction) -> str | None:
    if direction is TO:
        return fm.bc_field
    if fm.dataverse_column is None:
        return None
    return OPTION_LABEL if mapping.is_option_mapping else fm.dataverse_read_property


def lookup_needs(mapping: TableMapping, records: Iterable[Mapping[str, Any]], direction: Direction | str, *,
                 lcy_code: str | None = None, lcy_dataverse_currency_id: str | None = None) -> dict[str, set]:
    """For each referenced mapping name, the source values ``records`` need translated (normalised with
    ``lookup_key``): To, BC codes / ids (``currencyCode``, ``salespersonCode``, ``paymentTermsId``, ...); From,
    Dataverse ids read from ``_x_value`` or option values. A company-contact lookup's name is its ``Lookup.mapping``
    (``"CUSTOMER|VENDOR"``): To, company contact numbers; From, account ids.

    Blank values need nothing. Currency lookups follow the LCY rule: To, a blank or LCY currency code maps to
    ``lcy_dataverse_currency_id`` (``lcy_code`` is then required); From, the LCY Dataverse currency maps to a blank
    code. Mappings with no need are left out.
    """
    d = _pass(direction)
    lookups = [fm for fm in mapping.field_mappings_for(d) if fm.lookup is not None]
    out: dict[str, set] = {}
    for record in records:
        for fm in lookups:
            lk = fm.lookup
            value = record.get(_source_read_key(mapping, fm, d) or "")
            if lk.lcy_iso_column is not None:  # type: ignore[union-attr]
                if d is TO:
                    if lcy_code is None:
                        raise ValueError(f"lcy_code is required to translate {fm.bc_field} (LCY rule)")
                    if is_lcy(value if isinstance(value, str) else None, lcy_code):
                        continue
                elif lcy_dataverse_currency_id is not None and isinstance(value, str) \
                        and lookup_key(value) == lookup_key(lcy_dataverse_currency_id):
                    continue
            if is_blank(value):
                continue
            out.setdefault(lk.mapping, set()).add(lookup_key(value))  # type: ignore[union-attr]
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Field kinds (from the schema) and normalisation
# ---------------------------------------------------------------------------------------------------------------------
_TEXT, _CODE, _GUID, _ENUM, _NUMBER, _BOOL, _CHOICE, _DATE, _DATETIME, _OTHER = (
    "text", "code", "guid", "enum", "number", "bool", "choice", "date", "datetime", "other")

_BC_EDM_KINDS = {"Edm.String": _TEXT, "Edm.Guid": _GUID, "Edm.Boolean": _BOOL, "Edm.Decimal": _NUMBER,
                 "Edm.Double": _NUMBER, "Edm.Int32": _NUMBER, "Edm.Int64": _NUMBER, "Edm.Date": _DATE,
                 "Edm.DateTimeOffset": _DATETIME}
_DV_KINDS = {"String": _TEXT, "Memo": _TEXT, "Uniqueidentifier": _GUID, "Lookup": _GUID, "Owner": _GUID,
             "Customer": _GUID, "Picklist": _CHOICE, "State": _CHOICE, "Status": _CHOICE, "Boolean": _BOOL,
             "Integer": _NUMBER, "BigInt": _NUMBER, "Money": _NUMBER, "Decimal": _NUMBER, "Double": _NUMBER,
             "DateTime": _DATETIME}


@dataclass(frozen=True)
class _Spec:
    """What the transfer needs to know about a destination field."""

    name: str
    kind: str
    max_length: int | None = None
    can_create: bool = True
    can_update: bool = True
    bc: bool = False                 # a BC field: no null, blank is typed
    blank_enum: str | None = None    # BC enum: its blank member, if any
    lcy_code: str | None = None      # BC currency code field of an LCY lookup: the LCY code compares as blank


def _bc_spec(entity_type: str, name: str) -> _Spec:
    prop = bc_properties(entity_type).get(name)
    writable = name not in _BC_READ_ONLY
    if prop is None:
        return _Spec(name, _OTHER, bc=True, can_create=writable, can_update=writable)
    if prop.enum_type:
        members = bc_enum_members(prop.enum_type)
        blank = next((m for m in members if not decode_bc_enum_member(m).strip()), None)
        return _Spec(name, _ENUM, bc=True, blank_enum=blank, can_create=writable, can_update=writable)
    kind = _BC_EDM_KINDS.get(prop.edm_type, _OTHER)
    if kind == _TEXT and name in _BC_CODE_FIELDS.get(entity_type, ()):
        kind = _CODE
    return _Spec(name, kind, prop.max_length, bc=True, can_create=writable, can_update=writable)


def _dv_spec(table: str, column: str) -> _Spec:
    info = dataverse_table(table)
    col = info.columns.get(column) if info else None
    if col is None:
        return _Spec(column, _OTHER)
    return _Spec(column, _DV_KINDS.get(col.type, _OTHER), col.max_length, col.can_create, col.can_update)


_OPTION_LABEL_SPEC = _Spec(OPTION_LABEL, _TEXT)


def _bc_blank(spec: _Spec) -> Any:
    """The value BC stores for "nothing" in a field of this kind (BC fields are never null)."""
    return {_TEXT: "", _CODE: "", _GUID: ZERO_GUID, _NUMBER: 0, _BOOL: False, _DATE: "0001-01-01",
            _DATETIME: "0001-01-01T00:00:00Z", _ENUM: spec.blank_enum}.get(spec.kind)


def _to_decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, Decimal)):
        try:
            return Decimal(str(value))
        except InvalidOperation:
            return None
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            return None
    return None


def _parse_instant(value: Any) -> Any:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            return value.strip()
        return parsed if parsed.year > 1 else None
    return value


def _normal(value: Any, spec: _Spec) -> Any:
    """The comparable form of a value stored in (or about to be written to) a field of kind ``spec.kind``."""
    kind = spec.kind
    if kind == _NUMBER:
        if value is None:
            return Decimal(0)
        number = _to_decimal(value)
        return number if number is not None else value
    if kind == _BOOL:
        return False if value is None else value
    if value is None:
        return None
    if kind in (_TEXT, _CODE, _ENUM, _OTHER) and isinstance(value, str):
        text = decode_bc_enum_member(value) if kind == _ENUM else value
        text = text.strip()  # Code sources were upper-cased by _prepare; BC stores Code upper-cased
        if spec.lcy_code is not None and is_lcy(text, spec.lcy_code):
            return None
        guid = _guid(text) if kind == _OTHER else None
        if guid is not None:
            return None if guid == ZERO_GUID else guid
        return text or None
    if kind == _GUID and isinstance(value, str):
        guid = _guid(value)
        if guid is None:
            return value.strip() or None
        return None if guid == ZERO_GUID else guid
    if kind in (_DATE, _DATETIME):
        return _parse_instant(value)
    return value


def _same(a: Any, b: Any, spec: _Spec) -> bool:
    return _normal(a, spec) == _normal(b, spec)


def _prepare(value: Any, spec: _Spec) -> Any:
    """The value as it is written to the destination field: Code upper-cased and trimmed, text truncated to the
    field's length; blank becomes BC's typed blank (BC) or null (Dataverse)."""
    if isinstance(value, str) and spec.kind in (_TEXT, _CODE):
        if spec.kind == _CODE:
            value = value.strip().upper()
        if spec.max_length is not None and len(value) > spec.max_length:
            value = value[:spec.max_length]
    if spec.bc:
        if value is None or (spec.kind in (_TEXT, _CODE, _GUID) and is_blank(value)):
            return _bc_blank(spec)
        return value
    if spec.kind in (_TEXT, _GUID) and is_blank(value):
        return None
    return value


# ---------------------------------------------------------------------------------------------------------------------
# The transfer
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class TransferResult:
    """The outcome of transferring one record's fields for one pass.

    ``changes``: the exact JSON body to POST (insert) or PATCH (modify): Dataverse write properties
    (``name``, ``transactioncurrencyid@odata.bind``) or BC field names; JSON-serialisable, never read-only fields.
    Empty when nothing differs. ``changed_fields``: the destination fields (Dataverse column / BC field names)
    in ``changes``. ``bidirectional_fields``: ``(source field, destination field)`` of each Bidirectional field
    mapping that changed a value (BC's "bidirectional field modified", used to detect update conflicts).
    ``errors``: the record fails when not empty (BC's messages; ``message`` is the first, as BC stops there).
    """

    changes: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    changed_fields: list[str] = field(default_factory=list)
    bidirectional_fields: list[tuple[str, str]] = field(default_factory=list)

    @property
    def bidirectional_changed(self) -> bool:
        return bool(self.bidirectional_fields)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    @property
    def message(self) -> str | None:
        return self.errors[0] if self.errors else None

    def to_json(self) -> dict:
        return {"changes": dict(self.changes), "changedFields": list(self.changed_fields),
                "bidirectionalFields": [list(p) for p in self.bidirectional_fields], "errors": list(self.errors)}


class _FieldError(Exception):
    """One field can't be transferred; the record fails with this message."""


@dataclass(frozen=True)
class _Plan:
    write_key: str          # key in the body
    write_value: Any        # value in the body
    read_key: str           # key of the destination's current value
    compare_value: Any      # what the destination holds once written (e.g. the id behind an @odata.bind)
    spec: _Spec
    dest_field: str
    source_field: str


def _show(value: Any) -> str:
    return str(value) if not isinstance(value, str) else value.strip()


def _plan_to(mapping: TableMapping, fm: FieldMapping, source: Mapping[str, Any],
             resolved: LookupResolution) -> _Plan | None:
    column = fm.dataverse_column
    assert column is not None  # To field mappings always have a column (validated)
    raw = fm.constant if fm.bc_field is None else fm.transform(source.get(fm.bc_field))
    raw = _special_to(mapping, fm, source, raw)
    source_field = fm.bc_field or f"(constant {raw!r})"
    if mapping.is_option_mapping:
        spec = _OPTION_LABEL_SPEC
        value = _prepare(raw, spec)
        return _Plan(OPTION_LABEL, value, OPTION_LABEL, value, spec, column, source_field)
    lk = fm.lookup
    if lk is not None:
        target = _translate_to(fm, raw, resolved, source)
        if target is None and fm.not_null:
            return None
        if lk.is_option:
            spec = _dv_spec(mapping.dataverse_table, column)
            return _Plan(column, target, column, target, spec, column, source_field)
        column_spec = _dv_spec(mapping.dataverse_table, column)
        spec = _Spec(column, _GUID, can_create=column_spec.can_create, can_update=column_spec.can_update)
        bind = lk.bind_value(target) if target is not None else None
        return _Plan(lk.bind_key, bind, f"_{column}_value", target, spec, column,  # type: ignore[arg-type]
                     source_field)
    spec = _dv_spec(mapping.dataverse_table, column)
    if fm.option_values is not None:
        if raw is None:
            return None
        try:
            value = fm.option_values.to_dataverse(raw)
        except Unprocessable as exc:
            raise _FieldError(f"{fm.bc_field}: {exc.message}") from None
    else:
        value = _prepare(raw, spec)
    return _Plan(column, value, column, value, spec, column, source_field)


def _translate_to(fm: FieldMapping, raw: Any, resolved: LookupResolution, source: Mapping[str, Any]) -> Any:
    lk = fm.lookup
    assert lk is not None
    if lk.is_company_contact:  # BC: FindParentCRMAccountForContact; a blank company is no relation either
        found, target = (False, None) if is_blank(raw) else resolved.find(lk.mapping, raw)
        if found or fm.clear_value_on_failed_sync:
            return target
        raise _FieldError(COMPANY_CONTACT_TO_ERR.format(number=_show(source.get("number") or "")))
    if lk.lcy_iso_column is not None:
        if resolved.lcy_code is None:
            raise ValueError(f"LookupResolution.lcy_code is required to translate {fm.bc_field} (LCY rule)")
        if is_lcy(raw if isinstance(raw, str) else None, resolved.lcy_code):
            if resolved.lcy_dataverse_currency_id is None:
                raise _FieldError(f"Currency {resolved.lcy_code.strip().upper()} could not be found in Dataverse.")
            return resolved.lcy_dataverse_currency_id
    if is_blank(raw):
        return None
    found, target = resolved.find(lk.mapping, raw)
    if not found:
        if fm.clear_value_on_failed_sync:
            return None
        raise _FieldError(f"{fm.bc_field} {_show(raw)} must be coupled to a Dataverse row.")
    return target


def _plan_from(mapping: TableMapping, fm: FieldMapping, source: Mapping[str, Any],
               resolved: LookupResolution) -> _Plan | None:
    bc_field = fm.bc_field
    assert bc_field is not None  # From field mappings always have a BC field (validated)
    read = _source_read_key(mapping, fm, FROM)
    raw = fm.constant if read is None else fm.transform(source.get(read))
    source_field = fm.dataverse_column or f"(constant {raw!r})"
    spec = _bc_spec(mapping.bc_entity_type, bc_field)
    lk = fm.lookup
    if lk is not None:
        if lk.lcy_iso_column is not None:
            if resolved.lcy_code is None:  # BC returns the LCY code for LCY records: needed to compare
                raise ValueError(f"LookupResolution.lcy_code is required to translate {fm.dataverse_column} "
                                 "(LCY rule)")
            spec = _Spec(spec.name, spec.kind, spec.max_length, spec.can_create, spec.can_update, spec.bc,
                         spec.blank_enum, lcy_code=resolved.lcy_code)
        target = _translate_from(fm, raw, resolved)
        if target is None and fm.not_null:
            return None
        value = _prepare(target, spec)
        return _Plan(bc_field, value, bc_field, value, spec, bc_field, source_field)
    if fm.option_values is not None:
        if raw is None:
            return None
        try:
            value = fm.option_values.to_bc(raw)
        except Unprocessable as exc:
            raise _FieldError(f"{fm.dataverse_column}: {exc.message}") from None
        return _Plan(bc_field, value, bc_field, value, spec, bc_field, source_field)
    value = _prepare(raw, spec)
    return _Plan(bc_field, value, bc_field, value, spec, bc_field, source_field)


def _translate_from(fm: FieldMapping, raw: Any, resolved: LookupResolution) -> Any:
    lk = fm.lookup
    assert lk is not None
    if lk.is_company_contact:  # BC: SetContactParentCompany; no parent account is no company either
        found, target = (False, None) if is_blank(raw) else resolved.find(lk.mapping, raw)
        if found or fm.clear_value_on_failed_sync:
            return target
        raise _FieldError(COMPANY_CONTACT_FROM_ERR)
    if is_blank(raw):
        return None
    if lk.lcy_iso_column is not None and resolved.is_lcy_dataverse_currency(raw):
        return None  # the LCY currency is a blank BC currency code
    found, target = resolved.find(lk.mapping, raw)
    if not found:
        if fm.clear_value_on_failed_sync:
            return None
        raise _FieldError(f"{fm.dataverse_column} {_show(raw)} must be coupled to a Business Central record.")
    return target


def _special_to(mapping: TableMapping, fm: FieldMapping, source: Mapping[str, Any], raw: Any) -> Any:
    """BC's per-table value rules that aren't field mappings (spec 10.5): an empty currency symbol is sent as the
    currency's ISO code (Dataverse requires a symbol)."""
    if mapping.dataverse_table == "transactioncurrency" and fm.dataverse_column == "currencysymbol" \
            and is_blank(raw):
        code = source.get("code")
        return code.strip() if isinstance(code, str) and code.strip() else raw
    return raw


def _create_value_plan(mapping: TableMapping, direction: Direction, name: str, value: Any) -> _Plan:
    if direction is FROM:
        spec = _bc_spec(mapping.bc_entity_type, name)
        return _Plan(name, value, name, value, spec, name, "(create value)")
    spec = _dv_spec(mapping.dataverse_table, name)
    info = dataverse_table(mapping.dataverse_table)
    col = info.columns.get(name) if info else None
    if col is not None and col.is_lookup:
        if len(col.targets) != 1 or dataverse_table(col.targets[0]) is None:
            raise ValueError(f"create value {name}: a lookup to {col.targets} can't be bound unambiguously")
        bind = f"/{dataverse_table(col.targets[0]).entity_set}({value})" if value else None  # type: ignore[union-attr]
        return _Plan(f"{name}@odata.bind", bind, f"_{name}_value", value, spec, name, "(create value)")
    return _Plan(name, value, name, value, spec, name, "(create value)")


def transfer(mapping: TableMapping, direction: Direction | str, source: Mapping[str, Any],
             destination: Mapping[str, Any] | None, resolved: LookupResolution | None = None, *,
             inserting: bool) -> TransferResult:
    """Transfer ``source``'s mapped fields onto ``destination`` for one pass (spec section 2).

    * Field mappings: the enabled ones whose direction is the pass direction or Bidirectional; none -> the record
      fails with BC's "There are no field mapping rows ..." message.
    * Values: constants; transformations (contact name split); option value tables; lookups translated through
      ``resolved`` (To: ``<nav>@odata.bind`` or the option value; From: the BC code / id); an uncoupled lookup
      target fails the record ("<field> <value> must be coupled to a Dataverse row." To, "... must be coupled to
      a Business Central record." From; a company-contact lookup fails with BC's company-link messages, also when
      blank) unless Clear Value on Failed Sync (then null / blank); Not Null: a null translated value is not
      written at all.
    * ``inserting``: every mapped value is written (Dataverse: except nulls, nothing to clear), then the create
      values (``create_values_dataverse`` To, ``create_values_bc`` From: BC's config templates) win over mapped
      values. Otherwise only the fields whose value differs (see the module docstring).
    * Never writes read-only fields; create-only Dataverse columns only on insert, update-only ones only on modify.
    """
    d = _pass(direction)
    if not inserting and destination is None:
        raise ValueError("destination is required unless inserting")
    resolved = resolved or LookupResolution()
    dest: Mapping[str, Any] = destination or {}
    result = TransferResult()
    fms = mapping.field_mappings_for(d)
    if not fms:
        result.errors.append(no_field_mappings_message(mapping))
        return result
    plans: list[tuple[_Plan, bool]] = []
    for fm in fms:
        try:
            plan = _plan_to(mapping, fm, source, resolved) if d is TO else _plan_from(mapping, fm, source, resolved)
        except _FieldError as exc:
            result.errors.append(str(exc))
            continue
        if plan is not None:
            plans.append((plan, fm.direction is Direction.BIDIRECTIONAL))
    if inserting:
        create_values = mapping.create_values_dataverse if d is TO else mapping.create_values_bc
        plans += [(_create_value_plan(mapping, d, name, value), False) for name, value in create_values.items()]
    for plan, bidirectional in plans:
        spec = plan.spec
        if not (spec.can_create if inserting else spec.can_update):
            continue
        if inserting:
            if plan.write_value is None and not spec.bc:
                continue  # nothing to clear on a new Dataverse row
        elif _same(plan.compare_value, dest.get(plan.read_key), spec):
            continue
        if plan.write_key in result.changes:  # a later plan (create value) overrides an earlier one
            result.changed_fields.remove(plan.dest_field)
            result.bidirectional_fields = [p for p in result.bidirectional_fields if p[1] != plan.dest_field]
        result.changes[plan.write_key] = plan.write_value
        result.changed_fields.append(plan.dest_field)
        if bidirectional:
            result.bidirectional_fields.append((plan.source_field, plan.dest_field))
    return result
