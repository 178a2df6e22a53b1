"""Coupling of option mappings (PAYMENT TERMS, SHIPMENT METHOD): BC records <-> options of a Dataverse choice column.

BC's "CRM Option Mapping" (spec 3, 4.3, 11.6): the coupling unit is (BC record, option value). An option value is
stored in the coupling store as the pseudo-GUID ``coupling.model.option_value_id(n)``, so couplings, look-ups and
uncoupling work as for record mappings; this module does what differs - the Dataverse side is read and written
through the metadata API (``DataverseClient.option_set`` / ``insert_option``):

* **couple** a BC record with an existing option value (404 when the option set has no such value);
* **create new**, To: the option labelled with the BC code is found (labels are compared case-insensitively and
  trimmed, as Dataverse refuses such duplicates) or inserted, then coupled - so a repeated request, or one after a
  crash between the insert and the coupling, finds the option instead of adding a second. From: a BC record with
  code = label is found (the code is BC's primary key) or created, then coupled; a label longer than BC's code
  (10 characters) is refused with a message saying so, never truncated;
* **match**: BC codes against option labels (the mapping's match criteria; case-insensitive by default), then
  optionally "create new" for the unmatched records.

Option inserts run one at a time (metadata customizations are serialized by Dataverse anyway).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sync import errors, odata, rules
from sync.mappings import Direction, TableMapping, bc_properties
from sync.transfer import OPTION_LABEL, OPTION_VALUE, bc_caption, transfer

from . import service
from .model import Coupling, option_value_id, option_value_of
from .store import CouplingExists

log = logging.getLogger(__name__)

TO = Direction.TO_INTEGRATION_TABLE
FROM = Direction.FROM_INTEGRATION_TABLE

Option = dict[str, Any]
"""``{"value": int, "label": str}`` - an option mapping's Dataverse "row" (``sync.transfer``)."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


# --- options --------------------------------------------------------------------------------------------------------
def label_key(text: Any) -> str:
    """Labels are the same when equal ignoring case and surrounding spaces."""
    return str(text or "").strip().casefold()


def column_of(mapping: TableMapping) -> str:
    """``account.paymenttermscode`` - the choice column of an option mapping, for messages."""
    os_ = mapping.option_set
    return f"{os_.table}.{os_.column}" if os_ else mapping.dataverse_table


def describe(mapping: TableMapping, value: int, label: str | None = None) -> str:
    return f"option {value}" + (f" ({label})" if label else "") + f" of {column_of(mapping)}"


async def read_options(rt: Any, mapping: TableMapping) -> list[Option]:
    os_ = mapping.option_set
    assert os_ is not None, "not an option mapping"
    return await rt.dataverse.option_set(os_.table, os_.column)


def find_value(options: list[Option], value: int) -> Option | None:
    return next((o for o in options if o[OPTION_VALUE] == value), None)


def couplable(option: Option) -> bool:
    """Option values are coupled as pseudo-GUIDs (``option_value_id``): 0 would be the nil GUID, which the coupling
    store refuses, and negative values have no pseudo-GUID. Such options can't be coupled."""
    return isinstance(option.get(OPTION_VALUE), int) and option[OPTION_VALUE] >= 1


def find_label(options: list[Option], label: str) -> list[Option]:
    """The couplable options with this label (case and surrounding spaces ignored)."""
    key = label_key(label)
    return [o for o in options if couplable(o) and label_key(o[OPTION_LABEL]) == key]


def _option_value(mapping: TableMapping, dataverse_id: str | None) -> int:
    value = option_value_of(dataverse_id) if dataverse_id else None
    if value is None:
        raise errors.RequestError(
            f"Table mapping {mapping.name} is an option mapping: it couples Business Central records with "
            f"{column_of(mapping)} option values; give 'dataverseOptionValue' (the option "
            "value) instead of a Dataverse row id.", code="InvalidIds", details={"mapping": mapping.name})
    return value


def coupling_label(c: Coupling) -> str:
    value = option_value_of(c.dataverse_id)
    return f"option {value}" if value is not None else f"row {c.dataverse_id}"


def already_coupled(mapping: TableMapping, exc: CouplingExists) -> errors.Conflict:
    e = exc.existing
    option = describe(mapping, option_value_of(e.dataverse_id) or 0)
    if exc.side == "bc":
        text = (f"Business Central record {e.bc_id} is already coupled to {option} in table mapping "
                f"{mapping.name}.")
    else:
        text = (f"Cannot couple to {option}, because it is already coupled to Business Central record {e.bc_id} "
                f"in table mapping {mapping.name}.")
    return errors.Conflict(text, code="AlreadyCoupled", details={"coupling": service.coupling_json(e)})


def _option_missing(mapping: TableMapping, value: int, options: list[Option]) -> errors.NotFound:
    known = ", ".join(f"{o[OPTION_VALUE]} ({o[OPTION_LABEL]})" for o in options[:20])
    more = ", ..." if len(options) > 20 else ""
    return errors.NotFound(f"The Dataverse option value {value} does not exist in {column_of(mapping)} "
                           f"(options: {known}{more}).",
                           code="RecordNotFound",
                           details={"bcMissing": False, "dataverseMissing": True, "dataverseOptionValue": value})


async def _store(rt: Any, mapping: TableMapping, coupling: Coupling) -> tuple[Coupling, bool]:
    try:
        return await rt.couplings.create(coupling), True
    except CouplingExists as exc:
        if exc.existing.bc_id == coupling.bc_id and exc.existing.dataverse_id == coupling.dataverse_id:
            return exc.existing, False  # a repeat (or a concurrent twin) of this request
        raise already_coupled(mapping, exc) from None


# --- couple an existing pair -----------------------------------------------------------------------------------------
async def couple(rt: Any, mapping: TableMapping, bc_id: str, dataverse_id: str) -> tuple[Coupling, bool]:
    """Couple a BC record with an existing option (``dataverse_id`` is the option's pseudo-GUID)."""
    value = _option_value(mapping, dataverse_id)
    rec, options = await asyncio.gather(rt.bc.get_or_none(mapping.bc_entity_set, bc_id), read_options(rt, mapping))
    option = find_value(options, value)
    if rec is None:
        missing = f"Business Central {mapping.bc_entity_set} record {bc_id}"
        if option is None:
            missing += f" and Dataverse {describe(mapping, value)} do not exist."
        else:
            missing += " does not exist."
        raise errors.NotFound(missing, code="RecordNotFound",
                              details={"bcMissing": True, "dataverseMissing": option is None})
    if option is None:
        raise _option_missing(mapping, value, options)
    service.check_filters(mapping, rec, None)
    return await _store(rt, mapping, Coupling(mapping.name, bc_id, option_value_id(value), coupled_at=_now()))


# --- create new: To (an option for a BC record) ---------------------------------------------------------------------
def label_for(mapping: TableMapping, rec: dict) -> str:
    """The option label a BC record is written as (its code, through the field mapping)."""
    result = transfer(mapping, TO, rec, None, inserting=True)
    if not result.ok:
        raise service._transfer_failed(mapping, result.message)
    label = result.changes.get(OPTION_LABEL)
    if not isinstance(label, str) or not label.strip():
        raise errors.Unprocessable(f"The {bc_caption(mapping.bc_entity_type)} record {rec.get('id')} has no code to "
                                   "use as the option label.", code="TransferFailed")
    return label.strip()


@dataclass
class Placed:
    """How a BC record got its option: ``inserted`` (a new option), ``matched`` (an existing uncoupled option with
    its label) or ``existing`` (it was already coupled so)."""

    coupling: Coupling
    created: bool
    how: str
    option: Option


async def _insert_option(rt: Any, mapping: TableMapping, label: str, options: list[Option]) -> Option:
    """Insert an option; after a lost answer or a refused duplicate (a concurrent insert), look for the label."""
    os_ = mapping.option_set
    try:
        value = await rt.dataverse.insert_option(os_.table, os_.column, label)  # type: ignore[union-attr]
    except (errors.UpstreamOutcomeUnknown, errors.UpstreamValidation):
        fresh = await read_options(rt, mapping)
        options[:] = fresh
        found = find_label(fresh, label)
        if not found:
            raise
        return found[0]
    option = {OPTION_VALUE: value, OPTION_LABEL: label}
    options.append(option)
    return option


async def place_in_dataverse(rt: Any, mapping: TableMapping, rec: dict, options: list[Option], *,
                             job_id: str | None = None) -> Placed:
    """Couple an uncoupled BC record with the option labelled with its code, inserting the option when there is
    none. ``options`` is the option set as read (kept up to date here). A label taken by an option coupled to
    another record is a 409: Dataverse can't hold the same label twice."""
    bc_id = str(rec["id"]).lower()
    label = label_for(mapping, rec)
    matches = find_label(options, label)
    option = None
    if matches:
        coupled = await rt.couplings.get_many_by_dataverse(
            mapping.name, [option_value_id(o[OPTION_VALUE]) for o in matches])
        for o in matches:
            c = coupled.get(option_value_id(o[OPTION_VALUE]))
            if c is None or c.bc_id == bc_id:
                option = o
                break
        if option is None:
            taken = matches[0]
            c = coupled[option_value_id(taken[OPTION_VALUE])]
            raise errors.Conflict(
                f"The {describe(mapping, taken[OPTION_VALUE], taken[OPTION_LABEL])} already exists and is coupled "
                f"to Business Central record {c.bc_id}; Dataverse can't hold two options with the same label. "
                "Rename one of the codes, or uncouple the other record.", code="AlreadyCoupled",
                details={"coupling": service.coupling_json(c)})
        how = "matched"
    else:
        option = await _insert_option(rt, mapping, label, options)
        how = "inserted"
    coupling = rules.after_success(Coupling(mapping.name, bc_id, option_value_id(option[OPTION_VALUE]),
                                            coupled_at=_now()), TO, job_id, rules.bc_timestamp(rec), None)
    stored, created = await _store(rt, mapping, coupling)
    return Placed(stored, created, how if created else "existing", option)


async def _create_option(rt: Any, mapping: TableMapping, bc_id: str, job_id: str | None) -> tuple[Coupling, bool]:
    service._require_direction(mapping, TO)
    rec, options = await asyncio.gather(rt.bc.get_or_none(mapping.bc_entity_set, bc_id), read_options(rt, mapping))
    if rec is None:
        raise errors.NotFound(f"Business Central {mapping.bc_entity_set} record {bc_id} does not exist.",
                              code="RecordNotFound", details={"bcMissing": True, "dataverseMissing": False})
    service.check_filters(mapping, rec, None)
    label = label_for(mapping, rec)
    existing = await rt.couplings.get_by_bc(mapping.name, bc_id)
    if existing is not None:
        value = option_value_of(existing.dataverse_id)
        option = find_value(options, value) if value is not None else None
        if option is None:
            await rt.couplings.delete(existing)  # coupled to a deleted option ("corrupt"): BC removes it first
        elif label_key(option[OPTION_LABEL]) == label_key(label):
            return existing, False  # what this request makes: it already succeeded
        else:
            raise errors.Conflict(f"Business Central record {bc_id} is already coupled to "
                                  f"{describe(mapping, option[OPTION_VALUE], option[OPTION_LABEL])}.",
                                  code="AlreadyCoupled", details={"coupling": service.coupling_json(existing)})
    placed = await place_in_dataverse(rt, mapping, rec, options, job_id=job_id)
    return placed.coupling, placed.created


# --- create new: From (a BC record for an option) -------------------------------------------------------------------
def label_problem(mapping: TableMapping, option: Option) -> str | None:
    """Why an option's label can't become the BC code: blank, or longer than the BC field (BC would truncate it;
    two labels could then give one code)."""
    label = str(option.get(OPTION_LABEL) or "").strip()
    caption = bc_caption(mapping.bc_entity_type)
    for fm in mapping.field_mappings_for(FROM):
        if fm.bc_field is None or fm.dataverse_column is None:
            continue
        prop = bc_properties(mapping.bc_entity_type).get(fm.bc_field)
        if not label:
            return f"The {describe(mapping, option[OPTION_VALUE])} has no label to use as the {caption} {fm.bc_field}."
        limit = prop.max_length if prop is not None else None
        if limit is not None and len(label) > limit:
            return (f"The label '{label}' of {describe(mapping, option[OPTION_VALUE])} is {len(label)} characters "
                    f"long, but the {caption} {fm.bc_field} holds at most {limit}. Shorten the label in Dataverse "
                    f"or couple the option with an existing {caption} record.")
    return None


async def _bc_by_key(rt: Any, mapping: TableMapping, changes: dict) -> dict | None:
    """The BC record holding the code a new record would get (the code is the primary key)."""
    code = changes.get("code")
    if not isinstance(code, str) or not code:
        return None
    found = await rt.bc.list_all(mapping.bc_entity_set, filter=odata.eq("code", code),
                                 select=list(mapping.bc_select()))
    return found[0] if found else None


async def place_in_bc(rt: Any, mapping: TableMapping, option: Option, *, job_id: str | None = None) -> Placed:
    """Couple an uncoupled option with the BC record whose code is its label, creating the record when there is
    none (code = label). The label must fit the code (``label_problem``)."""
    problem = label_problem(mapping, option)
    if problem:
        raise errors.Unprocessable(problem, code="LabelTooLong")
    result = transfer(mapping, FROM, option, None, inserting=True)
    if not result.ok:
        raise service._transfer_failed(mapping, result.message)
    rec = await _bc_by_key(rt, mapping, result.changes)
    how = "matched"
    if rec is not None:
        taken = await rt.couplings.get_by_bc(mapping.name, str(rec["id"]).lower())
        if taken is not None and option_value_of(taken.dataverse_id) != option[OPTION_VALUE]:
            raise errors.Conflict(
                f"The {bc_caption(mapping.bc_entity_type)} record {result.changes.get('code')} already exists and is "
                f"coupled to {describe(mapping, option_value_of(taken.dataverse_id))}.",  # type: ignore[arg-type]
                code="AlreadyCoupled", details={"coupling": service.coupling_json(taken)})
    else:
        try:
            rec = await rt.bc.create(mapping.bc_entity_set, result.changes)
        except (errors.UpstreamOutcomeUnknown, errors.UpstreamValidation):
            rec = await _bc_by_key(rt, mapping, result.changes)  # made by the lost request or a concurrent one
            if rec is None:
                raise
        how = "inserted"
    coupling = rules.after_success(Coupling(mapping.name, str(rec["id"]).lower(),
                                            option_value_id(option[OPTION_VALUE]), coupled_at=_now()),
                                   FROM, job_id, rules.bc_timestamp(rec), None)
    stored, created = await _store(rt, mapping, coupling)
    return Placed(stored, created, how if created else "existing", option)


async def _create_bc_record(rt: Any, mapping: TableMapping, value: int, job_id: str | None) -> tuple[Coupling, bool]:
    service._require_direction(mapping, FROM)
    options = await read_options(rt, mapping)
    option = find_value(options, value)
    if option is None:
        raise _option_missing(mapping, value, options)
    existing = await rt.couplings.get_by_dataverse(mapping.name, option_value_id(value))
    if existing is not None:
        rec = await rt.bc.get_or_none(mapping.bc_entity_set, existing.bc_id, select=["id", "code"])
        if rec is None:
            await rt.couplings.delete(existing)  # coupled to a deleted record: removed first, as BC does
        elif label_key(rec.get("code")) == label_key(option[OPTION_LABEL]):
            return existing, False
        else:
            raise errors.Conflict(f"Cannot create a record for {describe(mapping, value, option[OPTION_LABEL])}, "
                                  f"because it is already coupled to Business Central record {existing.bc_id}.",
                                  code="AlreadyCoupled", details={"coupling": service.coupling_json(existing)})
    placed = await place_in_bc(rt, mapping, option, job_id=job_id)
    return placed.coupling, placed.created


async def create_new(rt: Any, mapping: TableMapping, *, bc_id: str | None, dataverse_id: str | None,
                     job_id: str | None = None) -> tuple[Coupling, bool]:
    """BC's "Create New" for an option mapping: with ``bc_id`` an option (To), with ``dataverse_id`` (an option's
    pseudo-GUID) a BC record (From). Safe to repeat."""
    if bc_id is not None:
        return await _create_option(rt, mapping, bc_id, job_id)
    return await _create_bc_record(rt, mapping, _option_value(mapping, dataverse_id), job_id)


# --- match-based coupling --------------------------------------------------------------------------------------------
async def match_couple(rt: Any, mapping: TableMapping, bc_ids: list[str] | None) -> service.MatchResult:
    """Match-based coupling (spec 4.3) of BC records with options: each criterion compares a BC field with the
    option's label (criteria naming another column never match); priorities and the "unique uncoupled match"
    rule as for record mappings."""
    groups = mapping.match_groups()
    if not groups:
        raise errors.Unprocessable(
            f"You must specify which fields on the table mapping '{mapping.name}' should be used for match-based "
            "coupling (matchCriteria).", code="NoMatchCriteria")
    result = service.MatchResult(mapping.name)
    (coupled_bc, coupled_dv), options = await asyncio.gather(service._coupled_sets(rt, mapping.name),
                                                             read_options(rt, mapping))
    column = mapping.option_set.column  # type: ignore[union-attr]
    indexed = []
    for priority, criteria in groups:
        g = service._Group(priority, criteria)
        for o in filter(couplable, options):
            values = tuple(service._match_value(o[OPTION_LABEL] if c.dataverse_column == column else None,
                                                c.case_sensitive) for c in criteria)
            if any(v is not None for v in values):
                g.rows.append((option_value_id(o[OPTION_VALUE]), values))
        indexed.append(g)
    async for page in service._bc_pages(rt, mapping, bc_ids, result):
        matched: list[tuple[str, str, int]] = []
        for rec in page:
            rec_id = str(rec["id"]).lower()
            if rec_id in coupled_bc:
                result.records.append(service.MatchOutcome(rec_id, "alreadyCoupled"))
                continue
            dv_id, priority, reason = service._find_match(mapping, indexed, rec, coupled_dv)
            if dv_id is None:
                result.records.append(service.MatchOutcome(rec_id, "unmatched", reason=reason))
                continue
            coupled_dv.add(dv_id)
            coupled_bc.add(rec_id)
            matched.append((rec_id, dv_id, priority))  # type: ignore[arg-type]
        if not matched:
            continue
        now = _now()
        created = await rt.couplings.create_many(
            mapping.name, [Coupling(mapping.name, b, d, coupled_at=now) for b, d, _ in matched])
        for (rec_id, dv_id, priority), outcome in zip(matched, created):
            if isinstance(outcome, CouplingExists):
                result.records.append(service.MatchOutcome(rec_id, "unmatched", priority=priority,
                                                           reason=already_coupled(mapping, outcome).message))
            else:
                result.records.append(service.MatchOutcome(rec_id, "coupled", dv_id, priority))
    return result


async def create_new_for_unmatched(rt: Any, mapping: TableMapping, result: service.MatchResult) -> None:
    """"Create New in Case of No Match" for an option mapping: an option per unmatched record, one at a time."""
    service._require_direction(mapping, TO)
    for outcome in result.records:
        if outcome.outcome != "unmatched":
            continue
        try:
            coupling, _ = await create_new(rt, mapping, bc_id=outcome.bc_id, dataverse_id=None)
        except (errors.RequestError, errors.UpstreamError) as exc:
            outcome.outcome, outcome.reason = "failed", f"{outcome.reason} Create new failed: {exc.message}"
            continue
        outcome.outcome, outcome.dataverse_id = "created", coupling.dataverse_id


__all__ = ["Option", "Placed", "label_key", "read_options", "find_value", "find_label", "couple", "create_new",
           "label_for", "label_problem", "place_in_dataverse", "place_in_bc", "match_couple",
           "create_new_for_unmatched", "already_coupled", "describe"]
