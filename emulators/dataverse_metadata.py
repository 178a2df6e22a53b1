"""Option-set metadata of the emulated Dataverse (choice columns): read the options, add, relabel and delete one.

Requests (relative to ``/api/data/v9.2/``), as the Web API defines them:

* ``GET EntityDefinitions(LogicalName='account')/Attributes(LogicalName='paymenttermscode')
  /Microsoft.Dynamics.CRM.PicklistAttributeMetadata?$select=LogicalName&$expand=OptionSet`` -> the attribute with
  ``OptionSet.Options[]``: ``Value``, ``Label.LocalizedLabels[]`` (``Label``, ``LanguageCode``) and
  ``Label.UserLocalizedLabel`` (the label in the user's language, 1033). ``StateAttributeMetadata`` /
  ``StatusAttributeMetadata`` casts work for statecode / statuscode. ``EntityDefinitions(LogicalName='x')`` and
  ``.../Attributes(LogicalName='y')`` without a cast answer the few basic properties.
* ``POST InsertOptionValue`` ``{"EntityLogicalName", "AttributeLogicalName", "Label": {"LocalizedLabels":
  [{"Label", "LanguageCode"}]}, "Value"?}`` -> ``{"NewOptionValue": n}``. Without ``Value`` the service picks the
  next free value in the publisher's range: the default publisher's option value prefix is 10000, so custom options
  get 100000000, 100000001, ... (what a real org does for BC's added payment terms).
* ``POST UpdateOptionValue`` (``Value``, ``Label``, ``MergeLabels``) relabels an option; ``POST DeleteOptionValue``
  (``Value``) removes one (rows keep the value they hold, as in Dataverse).

Options come from the column's schema (``dataverse_columns``). An added option is a valid value of the column at
once: the emulator's write validation reads the same ``Column.options``. Each emulator has its own copy (the
``Column`` is replaced, never mutated, because the schema's dicts are shared by every emulator of the process).

Approximations (documented, not verified against a live org): error codes - a duplicate value or label, a missing
base-language (1033) label and a non-choice attribute answer 400 ``0x80040203`` (InvalidArgument) with a plain
message; an unknown table or column answers 404 ``0x80040217`` ("Could not find ..."). A label is a duplicate when
it equals another option's label in the same language ignoring case and surrounding spaces (SQL collation).
Metadata operations refuse to run inside a ``$batch`` changeset (they can't be rolled back here). No ``PublishXml``
is needed: the option is usable immediately.
"""
from __future__ import annotations

import json
import re
import uuid
import weakref
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from emulators.dataverse_schema import OPTION_TYPES, Column, Table
from emulators.server import Response

if TYPE_CHECKING:  # pragma: no cover
    from emulators.dataverse import DataverseEmulator, _Call

BASE_LANGUAGE = 1033
CUSTOM_OPTION_START = 100_000_000
"""First value the default publisher (option value prefix 10000) gives a custom option."""
INT32_MAX = 2 ** 31 - 1

ACTIONS = ("InsertOptionValue", "UpdateOptionValue", "DeleteOptionValue")
_ENTITY_SEGMENT = re.compile(r"^EntityDefinitions\(\s*LogicalName\s*=\s*'([^']*)'\s*\)$")
_ATTRIBUTE_SEGMENT = re.compile(r"^Attributes\(\s*LogicalName\s*=\s*'([^']*)'\s*\)$")
_CASTS = {"Picklist": "PicklistAttributeMetadata", "State": "StateAttributeMetadata",
          "Status": "StatusAttributeMetadata"}
_NS = uuid.UUID("3b1f6f0e-8f59-4a8e-9d0c-6d1de3a9c0a1")
_ATTRIBUTE_PROPS = ("LogicalName", "SchemaName", "MetadataId", "AttributeType", "AttributeTypeName",
                    "EntityLogicalName", "IsCustomAttribute", "DefaultFormValue")
_ENTITY_PROPS = ("LogicalName", "SchemaName", "MetadataId", "EntitySetName", "PrimaryIdAttribute",
                 "PrimaryNameAttribute", "ObjectTypeCode")


def _error(status: int, code: str, message: str):
    from emulators.dataverse import DataverseError

    return DataverseError(status, code, message)


def _invalid(message: str):
    return _error(400, "0x80040203", message)


# --- per-emulator state -------------------------------------------------------------------------------------------
@dataclass
class _State:
    """Labels in languages other than the base language, and which options were added (not managed)."""

    other_labels: dict[tuple[str, str, int], dict[int, str]] = field(default_factory=dict)
    added: set[tuple[str, str, int]] = field(default_factory=set)


_STATES: "weakref.WeakKeyDictionary[Any, _State]" = weakref.WeakKeyDictionary()


def _state(emu: "DataverseEmulator") -> _State:
    state = _STATES.get(emu)
    if state is None:
        state = _STATES[emu] = _State()
    return state


# --- routing (called by DataverseEmulator._route, under the emulator's lock) ---------------------------------------
def handles(first_segment: str) -> bool:
    """Whether the first path segment is a metadata resource or action this module answers."""
    return first_segment.startswith("EntityDefinitions") or first_segment in ACTIONS


def route(emu: "DataverseEmulator", call: "_Call", segments: list[str], base: str) -> Response:
    first = segments[0]
    if first in ACTIONS:
        if len(segments) != 1:
            raise _error(404, "0x80060888", f"Resource not found for the segment '{segments[1]}'.")
        if call.method != "POST":
            raise emu._method_not_allowed(call)
        if call.in_changeset:
            raise _invalid(f"{first} can't be part of a changeset in the emulator.")
        body = _json_body(call)
        if first == "InsertOptionValue":
            value = _insert(emu, body)
            emu._counted_write(call)
            return Response.json(200, {"@odata.context": f"{base}$metadata#Microsoft.Dynamics.CRM."
                                                         "InsertOptionValueResponse", "NewOptionValue": value})
        if first == "UpdateOptionValue":
            _update(emu, body)
        else:
            _delete(emu, body)
        emu._counted_write(call)
        return Response.empty(204)
    if call.method != "GET":
        raise emu._method_not_allowed(call)
    m = _ENTITY_SEGMENT.match(first)
    if not m:
        raise _invalid(f"The key of EntityDefinitions must be LogicalName='<table>' in the emulator; got {first!r}.")
    t = _table(emu, m.group(1))
    if len(segments) == 1:
        return _entity_response(call, t, base)
    am = _ATTRIBUTE_SEGMENT.match(segments[1])
    if not am:
        raise _error(404, "0x80060888", f"Resource not found for the segment '{segments[1]}'.")
    col = _column(t, am.group(1))
    cast = None
    if len(segments) >= 3:
        cast = segments[2]
        prefix = "Microsoft.Dynamics.CRM."
        wanted = _CASTS.get(col.type)
        if not cast.startswith(prefix) or cast[len(prefix):] != wanted:
            raise _error(404, "0x80060888", f"Resource not found for the segment '{cast}'.")
        if len(segments) > 3:
            raise _error(404, "0x80060888", f"Resource not found for the segment '{segments[3]}'.")
    return _attribute_response(emu, call, t, col, cast, base)


def _json_body(call: "_Call") -> dict:
    try:
        data = json.loads(call.body.decode("utf-8")) if call.body else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid(f"Invalid JSON. {exc}") from None
    if not isinstance(data, dict):
        raise _invalid("A JSON object was expected as the request body.")
    return data


def _table(emu: "DataverseEmulator", logical: str) -> Table:
    t = emu.tables.get(logical)
    if t is None:
        raise _error(404, "0x80040217", f"Could not find entity with name '{logical}'.")
    return t


def _column(t: Table, name: str) -> Column:
    col = t.columns.get(name)
    if col is None:
        raise _error(404, "0x80040217", f"Could not find attribute with name '{name}' on entity '{t.logical}'.")
    return col


def _picklist(emu: "DataverseEmulator", body: dict) -> tuple[Table, Column]:
    if body.get("OptionSetName"):
        raise _invalid("Global option sets are not emulated: give EntityLogicalName and AttributeLogicalName.")
    entity, attribute = body.get("EntityLogicalName"), body.get("AttributeLogicalName")
    if not isinstance(entity, str) or not entity or not isinstance(attribute, str) or not attribute:
        raise _invalid("EntityLogicalName and AttributeLogicalName are required for a local option set.")
    t = _table(emu, entity)
    col = _column(t, attribute)
    if col.type != "Picklist":
        raise _invalid(f"Attribute '{attribute}' of entity '{entity}' is not a picklist attribute "
                       f"(it is {col.type}).")
    return t, col


def _labels(body: dict, member: str = "Label", *, required: bool = True) -> dict[int, str]:
    """``{language code: text}`` from a Label complex value; the base language is required."""
    label = body.get(member)
    if label is None and not required:
        return {}
    items = label.get("LocalizedLabels") if isinstance(label, dict) else None
    if not isinstance(items, list) or not items:
        raise _invalid(f"{member} must be a Label with at least one LocalizedLabel.")
    out: dict[int, str] = {}
    for item in items:
        text = item.get("Label") if isinstance(item, dict) else None
        lang = item.get("LanguageCode") if isinstance(item, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise _invalid(f"{member}: every LocalizedLabel needs a non-empty Label.")
        if isinstance(lang, bool) or not isinstance(lang, int):
            raise _invalid(f"{member}: every LocalizedLabel needs an integer LanguageCode.")
        out[lang] = text
    if BASE_LANGUAGE not in out and required:
        raise _invalid(f"The label for base language code {BASE_LANGUAGE} is not set.")
    return out


def _same_label(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()


def _labels_of(emu: "DataverseEmulator", t: Table, col: Column, value: int) -> dict[int, str]:
    out = {BASE_LANGUAGE: (col.options or {})[value]}
    out.update(_state(emu).other_labels.get((t.logical, col.name, value), {}))
    return out


def _check_unique_labels(emu: "DataverseEmulator", t: Table, col: Column, labels: dict[int, str],
                         except_value: int | None = None) -> None:
    for value in col.options or {}:
        if value == except_value:
            continue
        existing = _labels_of(emu, t, col, value)
        for lang, text in labels.items():
            if lang in existing and _same_label(existing[lang], text):
                raise _invalid(f"An option with the label '{text}' (language {lang}) already exists in the option "
                               f"set {t.logical}_{col.name} (value {value}).")


def _set_options(t: Table, col: Column, options: dict[int, str]) -> None:
    """Replace the column (its options dict is shared with the schema module and other emulators)."""
    new = replace(col, options=options)
    t.columns[col.name] = new
    t.by_api_name[new.api_name] = new


def _value(body: dict, *, required: bool) -> int | None:
    value = body.get("Value")
    if value is None:
        if required:
            raise _invalid("Value is required.")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not -2 ** 31 <= value <= INT32_MAX:
        raise _invalid(f"Value must be an Int32; got {json.dumps(value)}.")
    return value


def _insert(emu: "DataverseEmulator", body: dict) -> int:
    t, col = _picklist(emu, body)
    labels = _labels(body)
    options = dict(col.options or {})
    value = _value(body, required=False)
    if value is None:
        value = max([CUSTOM_OPTION_START - 1, *options]) + 1
        if value > INT32_MAX:
            raise _invalid(f"No free option value is left in the option set {t.logical}_{col.name}.")
    elif value in options:
        raise _invalid(f"An option with the value {value} already exists in the option set "
                       f"{t.logical}_{col.name}.")
    _check_unique_labels(emu, t, col, labels)
    options[value] = labels[BASE_LANGUAGE]
    _set_options(t, col, options)
    state = _state(emu)
    state.added.add((t.logical, col.name, value))
    others = {k: v for k, v in labels.items() if k != BASE_LANGUAGE}
    if others:
        state.other_labels[(t.logical, col.name, value)] = others
    return value


def _existing_value(t: Table, col: Column, body: dict) -> int:
    value = _value(body, required=True)
    if value not in (col.options or {}):
        raise _error(404, "0x80040217", f"The option value {value} was not found in the option set "
                                        f"{t.logical}_{col.name}.")
    return value  # type: ignore[return-value]


def _update(emu: "DataverseEmulator", body: dict) -> None:
    t, col = _picklist(emu, body)
    value = _existing_value(t, col, body)
    labels = _labels(body, required=False)
    merge = body.get("MergeLabels", True)
    if not isinstance(merge, bool):
        raise _invalid("MergeLabels must be true or false.")
    if not labels:
        return
    current = _labels_of(emu, t, col, value)
    new = {**current, **labels} if merge else dict(labels)
    if BASE_LANGUAGE not in new:
        raise _invalid(f"The label for base language code {BASE_LANGUAGE} is not set.")
    _check_unique_labels(emu, t, col, new, except_value=value)
    _set_options(t, col, {**(col.options or {}), value: new[BASE_LANGUAGE]})
    key = (t.logical, col.name, value)
    others = {k: v for k, v in new.items() if k != BASE_LANGUAGE}
    state = _state(emu)
    if others:
        state.other_labels[key] = others
    else:
        state.other_labels.pop(key, None)


def _delete(emu: "DataverseEmulator", body: dict) -> None:
    t, col = _picklist(emu, body)
    value = _existing_value(t, col, body)
    options = dict(col.options or {})
    del options[value]
    _set_options(t, col, options)
    state = _state(emu)
    state.other_labels.pop((t.logical, col.name, value), None)
    state.added.discard((t.logical, col.name, value))


# --- reads ----------------------------------------------------------------------------------------------------------
def _label_json(labels: dict[int, str], managed: bool) -> dict:
    localized = [{"Label": text, "LanguageCode": lang, "IsManaged": managed, "MetadataId": None, "HasChanged": None}
                 for lang, text in sorted(labels.items())]
    user = next((item for item in localized if item["LanguageCode"] == BASE_LANGUAGE), None)
    return {"LocalizedLabels": localized, "UserLocalizedLabel": user}


def _options_json(emu: "DataverseEmulator", t: Table, col: Column) -> list[dict]:
    added = _state(emu).added
    out = []
    for value in col.options or {}:
        managed = (t.logical, col.name, value) not in added
        out.append({"Value": value, "Color": None, "IsManaged": managed, "ExternalValue": None, "ParentValues": [],
                    "Tag": None, "IsHidden": False, "MetadataId": None, "HasChanged": None,
                    "Label": _label_json(_labels_of(emu, t, col, value), managed),
                    "Description": {"LocalizedLabels": [], "UserLocalizedLabel": None}})
    return out


def _metadata_id(*parts: str) -> str:
    return str(uuid.uuid5(_NS, "/".join(parts)))


def _select(call: "_Call", allowed: tuple[str, ...], type_name: str) -> list[str]:
    raw = call.query.get("$select")
    if not raw:
        return list(allowed)
    names = [n.strip() for n in raw.split(",") if n.strip()]
    for name in names:
        if name not in allowed:
            raise _error(400, "0x80060888", f"Could not find a property named '{name}' on type "
                                            f"'Microsoft.Dynamics.CRM.{type_name}'.")
    return names


def _check_options(call: "_Call", allowed: set[str]) -> None:
    for name in call.query:
        if name.startswith("$") and name not in allowed:
            raise _error(400, "0x80060888", f"The query parameter {name} is not supported")


def _entity_response(call: "_Call", t: Table, base: str) -> Response:
    _check_options(call, {"$select"})
    values = {"LogicalName": t.logical, "SchemaName": t.logical[:1].upper() + t.logical[1:],
              "MetadataId": _metadata_id(t.logical), "EntitySetName": t.set, "PrimaryIdAttribute": t.pk,
              "PrimaryNameAttribute": t.primary_name, "ObjectTypeCode": None}
    names = _select(call, _ENTITY_PROPS, "EntityMetadata")
    body = {"@odata.context": f"{base}$metadata#EntityDefinitions({','.join(names)})/$entity"}
    body.update({n: values[n] for n in dict.fromkeys([*names, "MetadataId"])})
    return Response.json(200, body)


def _attribute_response(emu: "DataverseEmulator", call: "_Call", t: Table, col: Column, cast: str | None,
                        base: str) -> Response:
    _check_options(call, {"$select", "$expand"})
    type_name = cast.rsplit(".", 1)[1] if cast else "AttributeMetadata"
    names = _select(call, _ATTRIBUTE_PROPS, type_name)
    expand = [e.strip() for e in (call.query.get("$expand") or "").split(",") if e.strip()]
    wanted: list[str] = []
    for e in expand:
        nav = e.split("(", 1)[0].strip()
        if cast is None or nav not in ("OptionSet", "GlobalOptionSet"):
            raise _error(400, "0x80060888", f"Could not find a property named '{nav}' on type "
                                            f"'Microsoft.Dynamics.CRM.{type_name}'.")
        wanted.append(nav)
    values = {"LogicalName": col.name, "SchemaName": col.name, "MetadataId": _metadata_id(t.logical, col.name),
              "AttributeType": col.type, "AttributeTypeName": {"Value": f"{col.type}Type"},
              "EntityLogicalName": t.logical, "IsCustomAttribute": col.name.startswith(("bcbi_", "nav_")),
              "DefaultFormValue": None}
    path = f"EntityDefinitions('{t.logical}')/Attributes"
    suffix = f"/{cast}" if cast else ""
    shown = ",".join(names + [f"{n}()" for n in wanted])
    body: dict[str, Any] = {"@odata.context": f"{base}$metadata#{path}{suffix}({shown})/$entity"}
    body.update({n: values[n] for n in dict.fromkeys([*names, "MetadataId"])})  # the key is always returned
    for nav in wanted:
        if nav == "GlobalOptionSet":
            body["GlobalOptionSet"] = None  # every emulated choice column has a local option set
            continue
        body["OptionSet@odata.context"] = (f"{base}$metadata#{path}({values['MetadataId']}){suffix}"
                                           "/OptionSet/$entity")
        body["OptionSet"] = {
            "MetadataId": _metadata_id(t.logical, col.name, "optionset"), "HasChanged": None,
            "IsCustomOptionSet": False, "IsGlobal": False, "IsManaged": True, "Name": f"{t.logical}_{col.name}",
            "ExternalTypeName": None, "OptionSetType": col.type, "IntroducedVersion": "5.0.0.0",
            "ParentOptionSetName": None,
            "Description": {"LocalizedLabels": [], "UserLocalizedLabel": None},
            "DisplayName": _label_json({BASE_LANGUAGE: col.name}, True),
            "IsCustomizable": {"Value": True, "CanBeChanged": True, "ManagedPropertyLogicalName": "iscustomizable"},
            "Options": _options_json(emu, t, col),
        }
    return Response.json(200, body)


# --- direct API for tests and seeding (as an administrator would, through the same code) ---------------------------
def options(emu: "DataverseEmulator", table: str, column: str) -> dict[int, str]:
    """``{value: base-language label}`` of a choice column as the emulator holds it now."""
    with emu.lock:
        col = _column(_table(emu, table), column)
        if col.type not in OPTION_TYPES:
            raise ValueError(f"{table}.{column} is not a choice column")
        return dict(col.options or {})


def insert_option(emu: "DataverseEmulator", table: str, column: str, label: str, value: int | None = None) -> int:
    """Add an option (``InsertOptionValue``); returns its value."""
    body: dict[str, Any] = {"EntityLogicalName": table, "AttributeLogicalName": column,
                            "Label": {"LocalizedLabels": [{"Label": label, "LanguageCode": BASE_LANGUAGE}]}}
    if value is not None:
        body["Value"] = value
    with emu.lock:
        return _insert(emu, body)


def update_option(emu: "DataverseEmulator", table: str, column: str, value: int, label: str) -> None:
    """Relabel an option (``UpdateOptionValue``, base language)."""
    with emu.lock:
        _update(emu, {"EntityLogicalName": table, "AttributeLogicalName": column, "Value": value,
                      "Label": {"LocalizedLabels": [{"Label": label, "LanguageCode": BASE_LANGUAGE}]}})


def delete_option(emu: "DataverseEmulator", table: str, column: str, value: int) -> None:
    """Remove an option (``DeleteOptionValue``)."""
    with emu.lock:
        _delete(emu, {"EntityLogicalName": table, "AttributeLogicalName": column, "Value": value})
