"""Coupling services: BC's "Set Up Coupling", "Create New", match-based coupling and "Delete Coupling".

They orchestrate the API clients and the coupling store (``sync.runtime.Runtime``); the decisions themselves
(filters, match keys) are pure. Every client error is raised before anything is written.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from sync import errors, lookups, odata, rules
from sync.mappings import BC, DATAVERSE, Direction, MatchCriterion, TableMapping, UpdateConflictResolution
from sync.runtime import Runtime
from sync.transfer import transfer

from .intents import CreateIntent
from .model import Coupling, option_value_of
from .store import CouplingExists

log = logging.getLogger(__name__)

ID_CHUNK = 100
"""Ids per coupling-store or API lookup round."""

ZERO_GUID = "00000000-0000-0000-0000-000000000000"
TO = Direction.TO_INTEGRATION_TABLE
FROM = Direction.FROM_INTEGRATION_TABLE


# --- JSON forms ----------------------------------------------------------------------------------------------------
def coupling_json(c: Coupling) -> dict[str, Any]:
    """A coupling as the API returns it (BC's CRM Integration Record, in BC's words). An option mapping's coupling
    (``dataverseId`` is an option value's pseudo-GUID) also gives ``dataverseOptionValue``."""
    option = option_value_of(c.dataverse_id)
    return {
        "mapping": c.mapping,
        "bcId": c.bc_id,
        "dataverseId": c.dataverse_id,
        **({"dataverseOptionValue": option} if option is not None else {}),
        "coupledAt": c.coupled_at,
        "skipped": c.skipped,
        "lastSynchModifiedOn": c.bc_modified_on,
        "lastSynchDataverseModifiedOn": c.dataverse_modified_on,
        "lastSynchToIntegrationTable": {"result": c.to_result, "jobId": c.to_job_id},
        "lastSynchFromIntegrationTable": {"result": c.from_result, "jobId": c.from_job_id},
        "lastError": c.last_error,
    }


def _options() -> Any:
    """Option mappings (couplings with option values) are handled by ``coupling.option_service``."""
    from . import option_service

    return option_service


def _now() -> datetime:
    return datetime.now(timezone.utc)


# --- couple an existing pair ----------------------------------------------------------------------------------------
async def read_pair(rt: Runtime, mapping: TableMapping, bc_id: str, dataverse_id: str) -> tuple[dict, dict]:
    """Both records, or a 404 naming the side that is missing."""
    bc_rec, dv_row = await asyncio.gather(
        rt.bc.get_or_none(mapping.bc_entity_set, bc_id),
        rt.dataverse.get_or_none(mapping.dataverse_entity_set, dataverse_id, select=mapping.dataverse_select()),
    )
    missing = []
    if bc_rec is None:
        missing.append(f"Business Central {mapping.bc_entity_set} record {bc_id}")
    if dv_row is None:
        missing.append(f"Dataverse {mapping.dataverse_table} row {dataverse_id}")
    if missing:
        raise errors.NotFound(" and ".join(missing) + (" does not exist." if len(missing) == 1 else " do not exist."),
                              code="RecordNotFound",
                              details={"bcMissing": bc_rec is None, "dataverseMissing": dv_row is None})
    return bc_rec, dv_row


def check_filters(mapping: TableMapping, bc_rec: dict | None, dv_row: dict | None) -> None:
    """BC's "The filters applied to table mapping X are preventing ... from displaying" as a 422."""
    problems = []
    if bc_rec is not None and not mapping.table_filter.matches(bc_rec):
        problems.append(("tableFilter", f"Business Central record {bc_rec.get('id')}",
                         mapping.table_filter.describe_failures(bc_rec)))
    if dv_row is not None and not mapping.integration_table_filter.matches(dv_row):
        problems.append(("integrationTableFilter",
                         f"Dataverse {mapping.dataverse_table} row {dv_row.get(mapping.dataverse_primary_id)}",
                         mapping.integration_table_filter.describe_failures(dv_row)))
    if problems:
        text = "; ".join(f"{what} fails the {name} ({why})" for name, what, why in problems)
        raise errors.Unprocessable(
            f"The filters applied to table mapping {mapping.name} are preventing the coupling: {text}.",
            code="OutsideFilter", details={"filters": [name for name, _, _ in problems]})


async def couple_existing(rt: Runtime, mapping: TableMapping, bc_id: str, dataverse_id: str) -> tuple[Coupling, bool]:
    """Couple two existing records. Returns ``(coupling, created)``; repeating the same request returns the same
    coupling with ``created`` False, so a retried call is harmless."""
    if mapping.is_option_mapping:
        return await _options().couple(rt, mapping, bc_id, dataverse_id)
    bc_rec, dv_row = await read_pair(rt, mapping, bc_id, dataverse_id)
    check_filters(mapping, bc_rec, dv_row)
    try:
        return await rt.couplings.create(Coupling(mapping.name, bc_id, dataverse_id, coupled_at=_now())), True
    except CouplingExists as exc:
        existing = exc.existing
        if existing.bc_id == bc_id and existing.dataverse_id == dataverse_id:
            return existing, False
        raise already_coupled(mapping, exc) from None


def already_coupled(mapping: TableMapping, exc: CouplingExists) -> errors.Conflict:
    e = exc.existing
    if exc.side == "bc":
        text = (f"Business Central record {e.bc_id} is already coupled to Dataverse {mapping.dataverse_table} "
                f"row {e.dataverse_id} in table mapping {mapping.name}.")
    else:
        text = (f"Cannot couple to Dataverse {mapping.dataverse_table} row {e.dataverse_id}, because it is already "
                f"coupled to Business Central record {e.bc_id} in table mapping {mapping.name}.")
    return errors.Conflict(text, code="AlreadyCoupled", details={"coupling": coupling_json(e)})


# --- look up ----------------------------------------------------------------------------------------------------------
async def get_coupling(rt: Runtime, mapping: TableMapping, *, bc_id: str | None = None,
                       dataverse_id: str | None = None) -> Coupling:
    if bc_id is not None:
        found = await rt.couplings.get_by_bc(mapping.name, bc_id)
        what = f"Business Central record {bc_id}"
    else:
        found = await rt.couplings.get_by_dataverse(mapping.name, dataverse_id)  # type: ignore[arg-type]
        what = f"Dataverse row {dataverse_id}"
    if found is None:
        raise errors.NotFound(f"{what} is not coupled in table mapping {mapping.name}.", code="NotCoupled")
    return found


# --- match-based coupling --------------------------------------------------------------------------------------------
def _match_value(value: Any, case_sensitive: bool) -> Any:
    """Normalised match key part; None for blank (blank values are never used as criteria, like BC)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text or text == ZERO_GUID:
            return None
        return text if case_sensitive else text.casefold()
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return str(value)


def _dv_property(mapping: TableMapping, criterion: MatchCriterion) -> str:
    fm = mapping.field_mapping(criterion.bc_field, criterion.dataverse_column)
    prop = fm.dataverse_read_property if fm else None
    return prop or criterion.dataverse_column


@dataclass
class _Group:
    """One priority group: the Dataverse rows' normalised values, and indexes built per non-blank subset."""

    priority: int
    criteria: tuple[MatchCriterion, ...]
    rows: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    _indexes: dict[tuple[int, ...], dict[tuple, list[str]]] = field(default_factory=dict)

    def index(self, positions: tuple[int, ...]) -> dict[tuple, list[str]]:
        idx = self._indexes.get(positions)
        if idx is None:
            idx = {}
            for row_id, values in self.rows:
                key = tuple(values[i] for i in positions)
                if any(v is None for v in key):
                    continue
                ids = idx.setdefault(key, [])
                if len(ids) < 2:  # 0, 1 or "several" is all matching needs
                    ids.append(row_id)
            self._indexes[positions] = idx
        return idx


@dataclass
class MatchOutcome:
    bc_id: str
    outcome: str
    dataverse_id: str | None = None
    priority: int | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bcId": self.bc_id, "outcome": self.outcome}
        if self.dataverse_id:
            out["dataverseId"] = self.dataverse_id
            if option_value_of(self.dataverse_id) is not None:
                out["dataverseOptionValue"] = option_value_of(self.dataverse_id)
        if self.priority is not None:
            out["priority"] = self.priority
        if self.reason:
            out["reason"] = self.reason
        return out


OUTCOMES = ("coupled", "created", "alreadyCoupled", "unmatched", "failed", "notFound", "outsideFilter")


@dataclass
class MatchResult:
    mapping: str
    records: list[MatchOutcome] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = {name: 0 for name in OUTCOMES}
        for r in self.records:
            counts[r.outcome] += 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {"mapping": self.mapping, "counts": self.counts(), "records": [r.to_json() for r in self.records]}


async def _coupled_sets(rt: Runtime, mapping: str) -> tuple[set[str], set[str]]:
    """Every coupled BC id and Dataverse id of the mapping, read page by page (O(N / 1000) requests)."""
    bc_ids: set[str] = set()
    dv_ids: set[str] = set()
    async for page in rt.couplings.iter_all(mapping):
        for c in page:
            bc_ids.add(c.bc_id)
            dv_ids.add(c.dataverse_id)
    return bc_ids, dv_ids


async def _index_dataverse(rt: Runtime, mapping: TableMapping,
                           groups: list[tuple[int, tuple[MatchCriterion, ...]]]) -> list[_Group]:
    built = [_Group(p, crit) for p, crit in groups]
    props = [mapping.dataverse_primary_id]
    for g in built:
        props.extend(_dv_property(mapping, c) for c in g.criteria)
    props.extend(mapping.integration_table_filter.fields())
    select = list(dict.fromkeys(props))
    flt = mapping.integration_table_filter.to_odata(DATAVERSE) or None
    async for page in rt.dataverse.iter_pages(mapping.dataverse_entity_set, filter=flt, select=select,
                                              page_size=5000):
        for row in page:
            row_id = str(row[mapping.dataverse_primary_id]).lower()
            for g in built:
                values = tuple(_match_value(row.get(_dv_property(mapping, c)), c.case_sensitive)
                               for c in g.criteria)
                if any(v is not None for v in values):
                    g.rows.append((row_id, values))
    return built


async def _bc_pages(rt: Runtime, mapping: TableMapping, bc_ids: list[str] | None,
                    result: MatchResult) -> Any:
    """BC records to match, page by page: the given ids (missing ones reported) or every record in the Table
    Filter."""
    if bc_ids is None:
        flt = mapping.table_filter.to_odata(BC) or None
        async for page in rt.bc.iter_pages(mapping.bc_entity_set, filter=flt):
            yield page
        return
    for start in range(0, len(bc_ids), 1000):
        chunk = bc_ids[start:start + 1000]
        found = await rt.bc.get_many(mapping.bc_entity_set, chunk)
        page = []
        for bc_id in chunk:
            rec = found.get(bc_id)
            if rec is None:
                result.records.append(MatchOutcome(bc_id, "notFound",
                                                   reason=f"Business Central {mapping.bc_entity_set} record "
                                                          f"{bc_id} does not exist."))
            elif not mapping.table_filter.matches(rec):
                result.records.append(MatchOutcome(bc_id, "outsideFilter",
                                                   reason=mapping.table_filter.describe_failures(rec)))
            else:
                page.append(rec)
        yield page


def _find_match(mapping: TableMapping, groups: list[_Group], rec: dict,
                coupled_dv: set[str]) -> tuple[str | None, int | None, str]:
    """(dataverse id, priority, reason if none): BC's algorithm of section 4.3, priority groups in order."""
    reasons = []
    for g in groups:
        values = [_match_value(rec.get(c.bc_field), c.case_sensitive) for c in g.criteria]
        positions = tuple(i for i, v in enumerate(values) if v is not None)
        if not positions:
            reasons.append(f"priority {g.priority}: no criterion value (blank)")
            continue
        ids = g.index(positions).get(tuple(values[i] for i in positions), [])
        if not ids:
            reasons.append(f"priority {g.priority}: no match")
        elif len(ids) > 1:
            reasons.append(f"priority {g.priority}: several matches")
        elif ids[0] in coupled_dv:
            reasons.append(f"priority {g.priority}: the match {ids[0]} is already coupled")
        else:
            return ids[0], g.priority, ""
    return None, None, "No unique uncoupled match (" + "; ".join(reasons) + ")."


async def match_couple(rt: Runtime, mapping: TableMapping, bc_ids: list[str] | None) -> MatchResult:
    """Match-based coupling (BC section 4.3) of the given BC ids, or of every uncoupled record of the mapping.

    Both sides are read page by page and the Dataverse side is indexed by match key, so the work is
    O(N + M) with O(N / page size) list requests, never N x M.
    """
    if mapping.is_option_mapping:
        return await _options().match_couple(rt, mapping, bc_ids)
    groups = mapping.match_groups()
    if not groups:
        raise errors.Unprocessable(
            f"You must specify which fields on the table mapping '{mapping.name}' should be used for match-based "
            "coupling (matchCriteria).", code="NoMatchCriteria")
    result = MatchResult(mapping.name)
    (coupled_bc, coupled_dv), indexed = await asyncio.gather(
        _coupled_sets(rt, mapping.name), _index_dataverse(rt, mapping, groups))
    async for page in _bc_pages(rt, mapping, bc_ids, result):
        matched: list[tuple[str, str, int]] = []
        for rec in page:
            rec_id = str(rec["id"]).lower()
            if rec_id in coupled_bc:
                result.records.append(MatchOutcome(rec_id, "alreadyCoupled"))
                continue
            dv_id, priority, reason = _find_match(mapping, indexed, rec, coupled_dv)
            if dv_id is None:
                result.records.append(MatchOutcome(rec_id, "unmatched", reason=reason))
                continue
            coupled_dv.add(dv_id)  # claimed: a later BC record can't take it in this run
            coupled_bc.add(rec_id)
            matched.append((rec_id, dv_id, priority))  # type: ignore[arg-type]
        if not matched:
            continue
        now = _now()
        created = await rt.couplings.create_many(
            mapping.name, [Coupling(mapping.name, b, d, coupled_at=now) for b, d, _ in matched])
        for (rec_id, dv_id, priority), outcome in zip(matched, created):
            if isinstance(outcome, CouplingExists):  # coupled meanwhile by another request
                result.records.append(MatchOutcome(rec_id, "unmatched", priority=priority,
                                                   reason=already_coupled(mapping, outcome).message))
            else:
                result.records.append(MatchOutcome(rec_id, "coupled", dv_id, priority))
    return result


def direction_after_match(mapping: TableMapping) -> Direction | None:
    """BC's "Synch. After Match-Based Coupling": the mapping's direction, or for a Bidirectional mapping the side
    its update-conflict resolution favours (None: both ways with normal change detection). None when off."""
    if not mapping.sync_after_match_coupling:
        return None
    if mapping.direction is not Direction.BIDIRECTIONAL:
        return mapping.direction
    favours = {UpdateConflictResolution.SEND_UPDATE_TO_INTEGRATION: TO,
               UpdateConflictResolution.GET_UPDATE_FROM_INTEGRATION: FROM}
    return favours.get(mapping.update_conflict_resolution, Direction.BIDIRECTIONAL)


async def synchronize_after_match(rt: Runtime, mapping: TableMapping, bc_ids: list[str], direction: Direction):
    """Synchronize newly coupled pairs once, in ``direction``, as BC's one-off job after match-based coupling does
    (Bidirectional: a To pass then a From pass with normal change detection)."""
    from sync.engine import PassRequest, run_pass
    from sync.sync_now import SyncNowResult

    result = SyncNowResult(mapping.name, direction)
    dv_ids = None
    for d in ((TO, FROM) if direction is Direction.BIDIRECTIONAL else (direction,)):
        if d is TO:
            ids = bc_ids
        else:
            if dv_ids is None:
                found = await rt.couplings.get_many_by_bc(mapping.name, bc_ids)
                dv_ids = [found[b].dataverse_id for b in bc_ids if b in found]
            ids = dv_ids
        passed = await run_pass(rt, PassRequest(mapping, d, kind="Coupling", ids=ids,
                                                forced=direction is not Direction.BIDIRECTIONAL,
                                                keep_outcomes=len(ids) <= 1000))
        result.passes.append(passed)
        result.outcomes.extend(passed.outcomes)
    return result


# --- uncouple ---------------------------------------------------------------------------------------------------------
@dataclass
class UncoupleResult:
    mapping: str
    uncoupled: int = 0
    not_coupled: int = 0
    child_contacts_uncoupled: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"mapping": self.mapping, "uncoupled": self.uncoupled, "notCoupled": self.not_coupled,
                "childContactsUncoupled": self.child_contacts_uncoupled}


CONTACT_MAPPING = "CONTACT"


async def _uncouple_child_contacts(rt: Runtime, account_ids: list[str]) -> int:
    """Like BC: uncoupling an account also uncouples its coupled child contacts (parentcustomerid = account)."""
    removed = 0
    for start in range(0, len(account_ids), ID_CHUNK):
        chunk = account_ids[start:start + ID_CHUNK]
        flt = odata.any_of("_parentcustomerid_value", [odata.Guid(a) for a in chunk])
        contact_ids = [str(r["contactid"]).lower() async for page in
                       rt.dataverse.iter_pages("contacts", filter=flt, select=["contactid"]) for r in page]
        if contact_ids:
            found = await rt.couplings.get_many_by_dataverse(CONTACT_MAPPING, contact_ids)
            if found:
                removed += await rt.couplings.delete_many(CONTACT_MAPPING, found.values())
    return removed


async def uncouple(rt: Runtime, mapping: TableMapping, *, bc_ids: list[str] | None = None,
                   dataverse_ids: list[str] | None = None, all_records: bool = False) -> UncoupleResult:
    """Delete couplings (never data in BC or Dataverse)."""
    result = UncoupleResult(mapping.name)
    cascade = mapping.dataverse_table == "account" and not mapping.is_option_mapping

    async def remove(couplings: Iterable[Coupling]) -> None:
        couplings = list(couplings)
        if not couplings:
            return
        result.uncoupled += await rt.couplings.delete_many(mapping.name, couplings)
        if cascade:
            result.child_contacts_uncoupled += await _uncouple_child_contacts(
                rt, [c.dataverse_id for c in couplings])

    if all_records:
        # Collect first: deleting while paging would move the continuation under our feet.
        batch: list[Coupling] = []
        async for page in rt.couplings.iter_all(mapping.name):
            batch.extend(page)
        for start in range(0, len(batch), 1000):
            await remove(batch[start:start + 1000])
        return result
    ids = bc_ids if bc_ids is not None else dataverse_ids or []
    getter = rt.couplings.get_many_by_bc if bc_ids is not None else rt.couplings.get_many_by_dataverse
    for start in range(0, len(ids), 1000):
        chunk = ids[start:start + 1000]
        found = await getter(mapping.name, chunk)
        result.not_coupled += len(chunk) - len(found)
        await remove(found.values())
    return result


# --- create new ------------------------------------------------------------------------------------------------------
CREATE_NEW_NAMESPACE = uuid.UUID("0f4e6a43-7a0b-4c55-9a53-2b8f1f6f0c11")


def new_dataverse_id(rt: Runtime, mapping: TableMapping, bc_id: str) -> str:
    """The id a Dataverse row created from ``bc_id`` gets: deterministic, so a repeated create-new finds the row
    an interrupted attempt made instead of making a second one."""
    return str(uuid.uuid5(CREATE_NEW_NAMESPACE, f"{rt.settings.bc_company_id}/{mapping.name}/{bc_id}"))


def _require_direction(mapping: TableMapping, direction: Direction) -> None:
    if not mapping.direction.includes(direction):
        target = "Dataverse" if direction is TO else "Business Central"
        raise errors.Unprocessable(
            f"Table mapping {mapping.name} is {mapping.direction.value}: it does not create records in {target}.",
            code="DirectionNotAllowed", details={"mapping": mapping.name, "direction": mapping.direction.value})


def _transfer_failed(mapping: TableMapping, message: str | None) -> errors.Unprocessable:
    return errors.Unprocessable(f"The record can't be created through table mapping {mapping.name}: {message}",
                                code="TransferFailed")


async def create_new(rt: Runtime, mapping: TableMapping, *, bc_id: str | None,
                     dataverse_id: str | None, job_id: str | None = None) -> tuple[Coupling, bool]:
    """BC's "Create New": create the counterpart of one record in the other system, then couple it.

    Returns ``(coupling, created)``. Safe to repeat: a repeat after success returns the same coupling with
    ``created`` False, and a repeat after a crash between the create and the coupling finds the record the first
    attempt made instead of creating a second one.
    """
    if mapping.is_option_mapping:
        return await _options().create_new(rt, mapping, bc_id=bc_id, dataverse_id=dataverse_id, job_id=job_id)
    if bc_id is not None:
        return await _create_in_dataverse(rt, mapping, bc_id, job_id)
    return await _create_in_bc(rt, mapping, dataverse_id, job_id)  # type: ignore[arg-type]


async def _existing_coupling(rt: Runtime, mapping: TableMapping, *, bc_id: str | None = None,
                             dataverse_id: str | None = None) -> Coupling | None:
    """The record's coupling if its counterpart still exists; a coupling to a deleted record ("corrupt") is
    removed first, as BC does before creating new."""
    c = await (rt.couplings.get_by_bc(mapping.name, bc_id) if bc_id
               else rt.couplings.get_by_dataverse(mapping.name, dataverse_id))  # type: ignore[arg-type]
    if c is None:
        return None
    if bc_id:
        other = await rt.dataverse.get_or_none(mapping.dataverse_entity_set, c.dataverse_id,
                                               select=[mapping.dataverse_primary_id])
    else:
        other = await rt.bc.get_or_none(mapping.bc_entity_set, c.bc_id, select=["id"])
    if other is None:
        await rt.couplings.delete(c)
        return None
    return c


async def _create_in_dataverse(rt: Runtime, mapping: TableMapping, bc_id: str,
                               job_id: str | None = None) -> tuple[Coupling, bool]:
    _require_direction(mapping, TO)
    rec = await rt.bc.get_or_none(mapping.bc_entity_set, bc_id)
    if rec is None:
        raise errors.NotFound(f"Business Central {mapping.bc_entity_set} record {bc_id} does not exist.",
                              code="RecordNotFound", details={"bcMissing": True, "dataverseMissing": False})
    check_filters(mapping, rec, None)
    new_id = new_dataverse_id(rt, mapping, bc_id)
    existing = await _existing_coupling(rt, mapping, bc_id=bc_id)
    if existing is not None:
        if existing.dataverse_id == new_id:
            return existing, False  # this request already succeeded
        raise errors.Conflict(f"Business Central record {bc_id} is already coupled to Dataverse "
                              f"{mapping.dataverse_table} row {existing.dataverse_id}.", code="AlreadyCoupled",
                              details={"coupling": coupling_json(existing)})
    mappings = await rt.mappings()
    resolution = await lookups.resolve(rt, mappings, mapping, [rec], TO)
    result = transfer(mapping, TO, rec, None, resolution, inserting=True)
    if not result.ok:
        raise _transfer_failed(mapping, result.message)
    select = [mapping.dataverse_primary_id, mapping.dataverse_modified_on or "modifiedon", "versionnumber"]
    row = await rt.dataverse.get_or_none(mapping.dataverse_entity_set, new_id, select=select)
    if row is None:
        try:
            row = await rt.dataverse.create(mapping.dataverse_entity_set, result.changes, id=new_id,
                                            return_representation=True, select=select)
        except (errors.UpstreamConcurrency, errors.UpstreamOutcomeUnknown):
            # A duplicate id (an earlier attempt made it) or a lost answer: the row may exist - look, don't replay.
            row = await rt.dataverse.get_or_none(mapping.dataverse_entity_set, new_id, select=select)
            if row is None:
                raise
    coupling = rules.after_success(Coupling(mapping.name, bc_id, new_id, coupled_at=_now()), TO, job_id,
                                   rules.bc_timestamp(rec), rules.dataverse_timestamp(row),
                                   dataverse_version=rules.row_version(row))
    return await _store_new_coupling(rt, mapping, coupling)


async def _store_new_coupling(rt: Runtime, mapping: TableMapping, coupling: Coupling) -> tuple[Coupling, bool]:
    try:
        return await rt.couplings.create(coupling), True
    except CouplingExists as exc:
        if exc.existing.bc_id == coupling.bc_id and exc.existing.dataverse_id == coupling.dataverse_id:
            return exc.existing, False  # a concurrent repeat of this request won
        log.warning("created %s but could not couple it: %s", coupling, exc.message)
        raise already_coupled(mapping, exc) from None


async def _find_created_bc_record(rt: Runtime, mapping: TableMapping, intent: CreateIntent, row: dict,
                                  resolution: Any) -> dict | None:
    """The record an interrupted attempt created: made since the intent, not coupled, and holding the row's
    values (a transfer from the row to it would change nothing - the same test the sync uses for "unchanged")."""
    if intent.bc_id:
        return await rt.bc.get_or_none(mapping.bc_entity_set, intent.bc_id)
    conditions = [odata.ge("lastModifiedDateTime", intent.started_at - timedelta(seconds=1))]
    name = intent.body.get("displayName")
    if isinstance(name, str) and name:
        conditions.append(odata.eq("displayName", name))
    candidates = await rt.bc.list_all(mapping.bc_entity_set, filter=odata.and_(*conditions))
    coupled = await rt.couplings.get_many_by_bc(mapping.name, [str(c["id"]).lower() for c in candidates])
    same = [c for c in candidates if str(c["id"]).lower() not in coupled
            and not transfer(mapping, FROM, row, c, resolution, inserting=False).has_changes]
    return same[0] if len(same) == 1 else None


async def _create_in_bc(rt: Runtime, mapping: TableMapping, dataverse_id: str,
                        job_id: str | None = None) -> tuple[Coupling, bool]:
    _require_direction(mapping, FROM)
    row = await rt.dataverse.get_or_none(mapping.dataverse_entity_set, dataverse_id,
                                         select=[*mapping.dataverse_select(), "versionnumber"])
    if row is None:
        raise errors.NotFound(f"Dataverse {mapping.dataverse_table} row {dataverse_id} does not exist.",
                              code="RecordNotFound", details={"bcMissing": False, "dataverseMissing": True})
    check_filters(mapping, None, row)
    intent = await rt.intents.get(mapping.name, dataverse_id)
    existing = await _existing_coupling(rt, mapping, dataverse_id=dataverse_id)
    if existing is not None:
        if intent is not None and intent.bc_id == existing.bc_id:
            return existing, False  # this request already succeeded
        raise errors.Conflict(f"Dataverse {mapping.dataverse_table} row {dataverse_id} is already coupled to "
                              f"Business Central record {existing.bc_id}.", code="AlreadyCoupled",
                              details={"coupling": coupling_json(existing)})
    mappings = await rt.mappings()
    resolution = await lookups.resolve(rt, mappings, mapping, [row], FROM)
    result = transfer(mapping, FROM, row, None, resolution, inserting=True)
    if not result.ok:
        raise _transfer_failed(mapping, result.message)
    rec = await _find_created_bc_record(rt, mapping, intent, row, resolution) if intent is not None else None
    if rec is None:
        intent = CreateIntent(mapping.name, dataverse_id, _now(), result.changes)
        await rt.intents.put(intent)
        try:
            rec = await rt.bc.create(mapping.bc_entity_set, result.changes)
        except errors.UpstreamOutcomeUnknown:
            rec = await _find_created_bc_record(rt, mapping, intent, row, resolution)
            if rec is None:
                raise
    bc_id = str(rec["id"]).lower()
    if intent.bc_id != bc_id:
        intent.bc_id = bc_id
        await rt.intents.put(intent)
    coupling = rules.after_success(Coupling(mapping.name, bc_id, dataverse_id, coupled_at=_now()), FROM, job_id,
                                   rules.bc_timestamp(rec), rules.dataverse_timestamp(row),
                                   dataverse_version=rules.row_version(row))
    return await _store_new_coupling(rt, mapping, coupling)


async def create_new_for_unmatched(rt: Runtime, mapping: TableMapping, result: MatchResult) -> None:
    """Match-based coupling's "Create New in Case of No Match": a Dataverse row for each unmatched record."""
    if mapping.is_option_mapping:
        return await _options().create_new_for_unmatched(rt, mapping, result)
    _require_direction(mapping, TO)
    limiter = asyncio.Semaphore(8)

    async def one(outcome: MatchOutcome) -> None:
        async with limiter:
            try:
                coupling, _ = await create_new(rt, mapping, bc_id=outcome.bc_id, dataverse_id=None)
            except (errors.RequestError, errors.UpstreamError) as exc:
                outcome.outcome, outcome.reason = "failed", f"{outcome.reason} Create new failed: {exc.message}"
                return
            outcome.outcome, outcome.dataverse_id = "created", coupling.dataverse_id

    await asyncio.gather(*(one(o) for o in result.records if o.outcome == "unmatched"))
