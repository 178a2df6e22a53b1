"""BC's "Coupled Data Synchronization Errors" page (page 5333, spec section 9) as services.

The page lists the skipped couplings (same failure twice, or marked by Find for Deleted) with their latest error and
whether each side still exists, and offers: Retry (clear skipped; the next scheduled run retries), Synchronize (clear
skipped and synchronize now in a chosen direction), Restore Records (recreate the missing side and couple it again),
Find for Deleted (mark couplings whose BC record is gone) and the job log's "Delete Entries Older Than N Days".
Uncoupling from the page is the ordinary uncouple service.

Every check that can refuse a request (option mapping, too many records) runs before anything is written. Reads of
BC and Dataverse are in bulk, per page of couplings (``get_many``), never one request per record.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator

from coupling import service
from coupling.model import RESULT_FAILURE, Coupling
from coupling.store import CouplingExists

from . import errors, rules
from .mappings import Direction, TableMapping
from .sync_now import sync_now

log = logging.getLogger(__name__)

TO = Direction.TO_INTEGRATION_TABLE
FROM = Direction.FROM_INTEGRATION_TABLE

ACTION_LIMIT = 100
"""Skipped couplings one Synchronize or Restore request handles: both answer with the outcomes, and a response
must come well within the 230 s Azure allows an HTTP request (Power Automate waits 120 s)."""
ID_CHUNK = 1000
RESTORE_CONCURRENCY = 8
DEFAULT_CLEANUP_DAYS = 7
BC_RECORD_DELETED = "The Business Central record was deleted."


# --- small helpers ---------------------------------------------------------------------------------------------------
def require_record_mapping(mapping: TableMapping) -> None:
    """The page handles record mappings: an option mapping's Dataverse side is an option of a choice column, not
    a row (its existence and its restore go through the metadata API)."""
    if mapping.is_option_mapping:
        raise errors.Unprocessable(
            f"Table mapping {mapping.name} is an option mapping; the synchronization errors page handles record "
            "mappings only.", code="OptionMapping", details={"mapping": mapping.name})


def failing_direction(c: Coupling) -> tuple[str | None, str | None]:
    """(direction, job id) of the coupling's failure; ToIntegrationTable preferred when both failed (BC)."""
    if c.to_result == RESULT_FAILURE:
        return TO.value, c.to_job_id
    if c.from_result == RESULT_FAILURE:
        return FROM.value, c.from_job_id
    return None, None


async def _existing_ids(rt: Any, mapping: TableMapping, couplings: list[Coupling],
                        dataverse_of: list[Coupling] | None = None) -> tuple[set[str], set[str]]:
    """Which BC ids of ``couplings`` and which Dataverse ids of ``dataverse_of`` (default: the same couplings)
    still exist: one bulk read per side, both at once."""
    bc_ids = [c.bc_id for c in couplings]
    dv_ids = [c.dataverse_id for c in (couplings if dataverse_of is None else dataverse_of)]

    async def none() -> dict:
        return {}

    bc_found, dv_found = await asyncio.gather(
        rt.bc.get_many(mapping.bc_entity_set, bc_ids, select=["id"]) if bc_ids else none(),
        rt.dataverse.get_many(mapping.dataverse_entity_set, dv_ids, select=[mapping.dataverse_primary_id])
        if dv_ids else none())
    return {str(k).lower() for k in bc_found}, {str(k).lower() for k in dv_found}


@dataclass
class RecordNote:
    """What an action did (or why it did nothing) for one selected record."""

    bc_id: str
    dataverse_id: str | None
    outcome: str
    message: str | None = None
    recreated: str | None = None  # restore: "bc" or "dataverse"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bcId": self.bc_id, "dataverseId": self.dataverse_id, "outcome": self.outcome}
        if self.message:
            out["message"] = self.message
        if self.recreated:
            out["recreated"] = self.recreated
        return out

    def as_sync_outcome(self) -> dict[str, Any]:
        """The sync-now shape (``result`` skipped, ``reason`` the code) for Synchronize's answer."""
        return {"result": "skipped", "reason": self.outcome, "message": self.message, "bcId": self.bc_id,
                "dataverseId": self.dataverse_id}


def _not_coupled(mapping: TableMapping, bc_id: str) -> RecordNote:
    return RecordNote(bc_id, None, "notCoupled",
                      f"Business Central record {bc_id} is not coupled in table mapping {mapping.name}.")


def _not_skipped(c: Coupling) -> RecordNote:
    return RecordNote(c.bc_id, c.dataverse_id, "notSkipped",
                      "The coupling is not skipped, so it is not on the synchronization errors page.")


def _changed(c: Coupling) -> RecordNote:
    return RecordNote(c.bc_id, c.dataverse_id, "changedMeanwhile",
                      "The coupling was changed or uncoupled meanwhile; list the errors again and retry.")


async def _skipped_pages(rt: Any, mapping: TableMapping, bc_ids: list[str] | None,
                         notes: list[RecordNote]) -> AsyncIterator[list[Coupling]]:
    """The selected skipped couplings a page at a time: those of ``bc_ids`` (ids that are not coupled or not
    skipped go to ``notes``), or with ``bc_ids`` None every skipped coupling of the mapping."""
    if bc_ids is None:
        async for page in rt.couplings.iter_filtered(mapping.name, skipped=True):
            yield page
        return
    for start in range(0, len(bc_ids), ID_CHUNK):
        chunk = bc_ids[start:start + ID_CHUNK]
        found = await rt.couplings.get_many_by_bc(mapping.name, chunk)
        page = []
        for bc_id in chunk:
            c = found.get(bc_id)
            if c is None:
                notes.append(_not_coupled(mapping, bc_id))
            elif not c.skipped:
                notes.append(_not_skipped(c))
            else:
                page.append(c)
        if page:
            yield page


def _too_many(mapping: TableMapping, count: int, what: str) -> errors.Unprocessable:
    return errors.Unprocessable(
        f"Table mapping {mapping.name} has {count} skipped couplings to {what}; one request handles at most "
        f"{ACTION_LIMIT}. List them (GET /api/errors) and pass their 'bcIds' in selections of up to "
        f"{ACTION_LIMIT}.", code="TooManyRecords", details={"count": count, "limit": ACTION_LIMIT})


# --- the list --------------------------------------------------------------------------------------------------------
@dataclass
class ErrorEntry:
    """One line of the errors page."""

    coupling: Coupling
    bc_exists: bool
    dataverse_exists: bool

    def to_json(self) -> dict[str, Any]:
        c = self.coupling
        direction, job_id = failing_direction(c)
        return {"mapping": c.mapping, "bcId": c.bc_id, "dataverseId": c.dataverse_id, "lastError": c.last_error,
                "direction": direction, "jobId": job_id, "bcExists": self.bc_exists,
                "dataverseExists": self.dataverse_exists, "coupledAt": c.coupled_at}


def _encode_token(mapping: str, inner: str | None) -> str:
    payload = json.dumps({"m": mapping, "t": inner}, separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(payload).decode("ascii").rstrip("=")


def _decode_token(text: str, names: list[str]) -> tuple[str, str | None]:
    """(mapping, the store's token for it); the store checks its own token against the mapping's listing."""
    bad = errors.RequestError("Invalid continuation token: pass back the one the previous page returned, with "
                              "the same 'mapping'.", code="InvalidContinuationToken")
    if len(text) > 8192:
        raise bad
    try:
        data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        raise bad from None
    if not isinstance(data, dict) or set(data) != {"m", "t"} or data["m"] not in names \
            or not (data["t"] is None or isinstance(data["t"], str)):
        raise bad
    return data["m"], data["t"]


async def list_errors(rt: Any, mappings: list[TableMapping], page_size: int = 100,
                      continuation: str | None = None) -> tuple[list[ErrorEntry], str | None]:
    """One page of skipped couplings of ``mappings`` (in the given order) with each side's existence, and the
    token of the next page (None at the end). A page can hold fewer entries while a token is returned.

    Unlike BC's page, listing deletes nothing (BC drops couplings whose two sides are both gone while loading):
    a GET never writes; such entries show both flags false and can be uncoupled.
    """
    for m in mappings:
        require_record_mapping(m)
    by_name = {m.name: m for m in mappings}
    names = [m.name for m in mappings]
    index, inner = (0, None)
    if continuation:
        name, inner = _decode_token(continuation, names)
        index = names.index(name)
    found: list[Coupling] = []
    next_token: str | None = None
    while index < len(names):
        items, inner = await rt.couplings.list(names[index], page_size - len(found), inner, skipped=True)
        found.extend(items)
        if inner is None:
            index += 1
        if len(found) >= page_size or inner is not None:
            break
    if index < len(names):
        next_token = _encode_token(names[index], inner)
    entries: list[ErrorEntry] = []
    groups: dict[str, list[Coupling]] = {}
    for c in found:
        groups.setdefault(c.mapping, []).append(c)
    checks = await asyncio.gather(*(_existing_ids(rt, by_name[name], group) for name, group in groups.items()))
    exists = dict(zip(groups, checks))
    for c in found:
        bc_ids, dv_ids = exists[c.mapping]
        entries.append(ErrorEntry(c, c.bc_id in bc_ids, c.dataverse_id in dv_ids))
    return entries, next_token


# --- retry -----------------------------------------------------------------------------------------------------------
@dataclass
class RetryResult:
    mapping: str
    retried: int = 0
    not_retried: list[RecordNote] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"mapping": self.mapping, "retried": self.retried,
                "notRetried": [n.to_json() for n in self.not_retried]}


async def retry(rt: Any, mapping: TableMapping, *, bc_ids: list[str] | None = None) -> RetryResult:
    """BC's Retry / Retry All (``bc_ids`` None): clear ``skipped`` and leave the Failure result, so the next
    scheduled run takes the record up again with the failed-not-skipped couplings it retries every run.

    As in BC, only where the BC record still exists; and for a failed FromIntegrationTable pass only where the
    Dataverse row still exists too: a retried pass whose source record is gone would fail every run without the
    coupling ever being marked skipped again. Those are restored or uncoupled instead.
    """
    require_record_mapping(mapping)
    result = RetryResult(mapping.name)
    async for page in _skipped_pages(rt, mapping, bc_ids, result.not_retried):
        from_failed = [c for c in page if c.from_result == RESULT_FAILURE]
        bc_found, dv_found = await _existing_ids(rt, mapping, page, from_failed)
        ready: list[Coupling] = []
        for c in page:
            if c.bc_id not in bc_found:
                result.not_retried.append(RecordNote(
                    c.bc_id, c.dataverse_id, "bcRecordMissing",
                    "The Business Central record no longer exists: restore it or uncouple the record."))
            elif c.from_result == RESULT_FAILURE and c.dataverse_id not in dv_found:
                result.not_retried.append(RecordNote(
                    c.bc_id, c.dataverse_id, "dataverseRowMissing",
                    "The Dataverse row no longer exists: restore it or uncouple the record."))
            else:
                ready.append(replace(c, skipped=False))
        if not ready:
            continue
        for c, res in zip(ready, await rt.couplings.update_many(mapping.name, ready)):
            if isinstance(res, Exception):
                result.not_retried.append(_changed(c))
            else:
                result.retried += 1
    return result


# --- synchronize -----------------------------------------------------------------------------------------------------
@dataclass
class SynchronizeResult:
    mapping: str
    direction: Direction
    jobs: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counters = rules.JobCounters()
        for r in self.records:
            counters.add(r["result"])
        return counters.to_json()

    def to_json(self) -> dict[str, Any]:
        return {"mapping": self.mapping, "direction": self.direction.value, "counts": self.counts(),
                "jobs": self.jobs, "records": self.records}


async def _collect(rt: Any, mapping: TableMapping, bc_ids: list[str] | None, notes: list[RecordNote],
                   what: str) -> list[Coupling]:
    """The selected skipped couplings, at most ``ACTION_LIMIT`` (more with ``bc_ids`` None: 422)."""
    selected: list[Coupling] = []
    async for page in _skipped_pages(rt, mapping, bc_ids, notes):
        selected.extend(page)
    if len(selected) > ACTION_LIMIT:
        raise _too_many(mapping, len(selected), what)
    return selected


async def synchronize(rt: Any, mapping: TableMapping, direction: Direction, *,
                      bc_ids: list[str] | None = None) -> SynchronizeResult:
    """BC's Synchronize on the errors page: clear ``skipped``, then synchronize the records now in ``direction``
    (forced, like a one-off job: the caller chose whose data wins, e.g. to settle an update conflict).

    Offered, as in BC, only where both records exist (else: restore or uncouple). ``skipped`` is cleared first, so
    a failed direction that is not the one synchronized is retried by the next scheduled run; a synchronization
    failing again the same way marks the coupling skipped again.
    """
    require_record_mapping(mapping)
    notes: list[RecordNote] = []
    selected = await _collect(rt, mapping, bc_ids, notes, "synchronize")
    bc_found, dv_found = await _existing_ids(rt, mapping, selected) if selected else (set(), set())
    ready: list[Coupling] = []
    for c in selected:
        missing = [side for side, ok in (("Business Central record", c.bc_id in bc_found),
                                         ("Dataverse row", c.dataverse_id in dv_found)) if not ok]
        if missing:
            notes.append(RecordNote(c.bc_id, c.dataverse_id, "recordMissing",
                                    f"The {' and the '.join(missing)} no longer exist"
                                    f"{'s' if len(missing) == 1 else ''}: restore it or uncouple the record."))
        else:
            ready.append(replace(c, skipped=False))
    result = SynchronizeResult(mapping.name, direction)
    cleared: list[str] = []
    if ready:
        for c, res in zip(ready, await rt.couplings.update_many(mapping.name, ready)):
            if isinstance(res, Exception):
                notes.append(_changed(c))
            else:
                cleared.append(c.bc_id)
    result.records.extend(n.as_sync_outcome() for n in notes)
    if cleared:
        synced = await sync_now(rt, mapping, bc_ids=cleared, direction=direction, clear_skipped=True)
        result.jobs = [p.job.id for p in synced.passes]
        result.records.extend(o.to_json() for o in synced.outcomes)
    return result


# --- restore ---------------------------------------------------------------------------------------------------------
RESTORE_OUTCOMES = ("restored", "failed", "notRestorable", "nothingToRestore", "notCoupled", "notSkipped",
                    "changedMeanwhile")


@dataclass
class RestoreResult:
    mapping: str
    records: list[RecordNote] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = {name: 0 for name in RESTORE_OUTCOMES}
        for r in self.records:
            counts[r.outcome] += 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {"mapping": self.mapping, "counts": self.counts(), "records": [r.to_json() for r in self.records]}


async def restore(rt: Any, mapping: TableMapping, *, bc_ids: list[str] | None = None) -> RestoreResult:
    """BC's Restore Records: for each selected skipped coupling with exactly one side missing, delete the stale
    coupling and create the missing record from the existing one, coupled (the crash-safe create-new path: a
    repeat after an interruption finds the record the first attempt made).

    Both sides missing: reported ``notRestorable`` (uncouple it); both present: ``nothingToRestore``. When the
    create fails (filters, a field that can't be transferred, the mapping's direction), the old skipped coupling is
    put back so the record stays on the errors page, and the failure is reported.
    """
    require_record_mapping(mapping)
    result = RestoreResult(mapping.name)
    todo: list[tuple[Coupling, bool]] = []  # (coupling, the BC record exists)
    async for page in _skipped_pages(rt, mapping, bc_ids, result.records):
        bc_found, dv_found = await _existing_ids(rt, mapping, page)
        for c in page:
            bc_ok, dv_ok = c.bc_id in bc_found, c.dataverse_id in dv_found
            if bc_ok and dv_ok:
                result.records.append(RecordNote(c.bc_id, c.dataverse_id, "nothingToRestore",
                                                 "Both records exist; retry or synchronize instead."))
            elif not bc_ok and not dv_ok:
                result.records.append(RecordNote(c.bc_id, c.dataverse_id, "notRestorable",
                                                 "Both records were deleted; uncouple the record."))
            else:
                todo.append((c, bc_ok))
    if len(todo) > ACTION_LIMIT:
        raise _too_many(mapping, len(todo), "restore")
    limiter = asyncio.Semaphore(RESTORE_CONCURRENCY)

    async def one(c: Coupling, bc_exists: bool) -> RecordNote:
        async with limiter:
            if not await rt.couplings.delete(c):
                return _changed(c)
            try:
                coupling, _ = await service.create_new(rt, mapping, bc_id=c.bc_id if bc_exists else None,
                                                       dataverse_id=None if bc_exists else c.dataverse_id)
            except Exception as exc:
                try:
                    await rt.couplings.create(replace(c, etag=None))
                except CouplingExists:
                    pass  # coupled again meanwhile: nothing to put back
                if not isinstance(exc, (errors.RequestError, errors.UpstreamError)):
                    raise
                return RecordNote(c.bc_id, c.dataverse_id, "failed", f"Restoring failed: {exc.message}")
        return RecordNote(coupling.bc_id, coupling.dataverse_id, "restored",
                          recreated="dataverse" if bc_exists else "bc")

    result.records.extend(await asyncio.gather(*(one(c, bc_exists) for c, bc_exists in todo)))
    return result


# --- find for deleted ------------------------------------------------------------------------------------------------
@dataclass
class FindDeletedResult:
    mapping: str
    checked: int = 0
    marked: int = 0
    already_skipped: int = 0
    changed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"mapping": self.mapping, "checked": self.checked, "marked": self.marked,
                "alreadySkipped": self.already_skipped, "changedMeanwhile": self.changed}


async def find_deleted(rt: Any, mapping: TableMapping) -> FindDeletedResult:
    """BC's Find for Deleted: mark skipped every coupling of the mapping whose BC record no longer exists, with
    the last error "The Business Central record was deleted.", so it shows on the errors page to be restored or
    uncoupled.

    Only the BC side is checked, as in BC (the issue asks for BC's action): deletions are never propagated and no
    pass looks for them, but a deleted Dataverse row is found by the synchronization itself - the next
    ToIntegrationTable pass of the changed BC record meets it as a deletion conflict (fail, restore or remove
    coupling, per the mapping) - whereas a deleted BC record never shows up as a changed source again, so in a
    mapping that is not synchronized from Dataverse its broken coupling would go unnoticed for ever. Every
    coupling is read page by page and each page's BC records are checked with one bulk read.
    """
    require_record_mapping(mapping)
    result = FindDeletedResult(mapping.name)
    async for page in rt.couplings.iter_all(mapping.name):
        result.checked += len(page)
        found, _ = await _existing_ids(rt, mapping, page, [])
        gone = [c for c in page if c.bc_id not in found]
        result.already_skipped += sum(c.skipped for c in gone)
        marks = [replace(c, skipped=True, last_error=BC_RECORD_DELETED) for c in gone if not c.skipped]
        if marks:
            for res in await rt.couplings.update_many(mapping.name, marks):
                if isinstance(res, Exception):
                    result.changed += 1
                else:
                    result.marked += 1
    return result


# --- clean up the job log --------------------------------------------------------------------------------------------
async def cleanup(rt: Any, days: int = DEFAULT_CLEANUP_DAYS, *, now: datetime | None = None) -> dict[str, Any]:
    """BC's "Delete Entries Older Than N Days": delete the jobs started more than ``days`` days ago and their
    error rows, keeping every job a skipped coupling (of any mapping) still points to (its last To or From job):
    the errors page's error belongs to it."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650:
        raise errors.RequestError("'days' must be an integer from 1 to 3650.", code="InvalidField",
                                  details={"field": "days"})
    keep: set[str] = set()
    for name in await rt.mappings():
        async for page in rt.couplings.iter_filtered(name, skipped=True):
            keep.update(j for c in page for j in (c.to_job_id, c.from_job_id) if j)
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=days)
    counts = await rt.jobs.cleanup(cutoff, keep)
    return {"olderThan": cutoff, "deletedJobs": counts["jobs"], "deletedErrors": counts["errors"],
            "keptJobs": counts["kept"]}
