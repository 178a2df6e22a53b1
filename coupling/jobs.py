"""The synchronization job log: BC's "Integration Synch. Job" (table 5338) and "Integration Synch. Job Errors" (5339).

Layout (log-tail pattern, design-anchors C8):

* Job ids sort newest first: ``{reverse ticks of started_at:019d}{8 random hex}`` where reverse ticks =
  .NET ``DateTime.MaxValue.Ticks`` minus the start time in 100 ns ticks. A plain ``RowKey`` range read therefore
  lists the newest jobs first, and "started before a cutoff" is a ``RowKey`` range too (``cleanup``).
* Table ``jobs``: every job is stored twice with the same data, ``PartitionKey = "~all"`` (the record of truth,
  read by ``get`` and ``cleanup``) and ``PartitionKey = <encoded mapping>`` (a copy, so that listing one
  mapping's jobs is a partition range read). ``~all`` can never be an encoded mapping name (``~`` is always
  followed by two upper-case hex digits there).
* Table ``errors``: ``PartitionKey = <job id>``, ``RowKey = {ticks when added}{batch}{index}`` (insertion order),
  written in entity-group transactions of up to 100 rows; deleting a job deletes its partition.

Consistency: the two job rows are in different partitions, so they can't be written in one transaction. Both
are written with upsert-replace, the ``~all`` row first, so a retried ``start``/``finish`` repairs a missing or
stale copy. If ``finish`` is interrupted between the two writes, the mapping's copy still says ``Running``:
``list(mapping)`` re-reads such rows from ``~all`` (normally zero or one point read per page), so both listings
agree. ``cleanup`` deletes errors, then the copy, then the ``~all`` row: an interrupted cleanup leaves the
``~all`` row, which the next cleanup finds again.
"""
from __future__ import annotations

import asyncio
import json
import re
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Iterable

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableTransactionError, UpdateMode

from sync.errors import RequestError

from .keys import decode_continuation, encode_continuation, encode_key_part
from .model import _truncate, _utc
from .tables import TableNames, TableService

__all__ = [
    "Job", "JobError", "JobStore", "job_id_for", "fit_outcomes",
    "DIRECTIONS", "KINDS", "STATUS_RUNNING", "STATUS_FINISHED", "STATUS_FAILED", "MAX_OUTCOMES_UNITS",
]

DIRECTIONS = ("ToIntegrationTable", "FromIntegrationTable")
KINDS = ("Synchronization", "SyncNow", "Coupling", "Uncoupling")
STATUS_QUEUED, STATUS_RUNNING, STATUS_FINISHED, STATUS_FAILED = "Queued", "Running", "Finished", "Failed"
STATUSES = (STATUS_QUEUED, STATUS_RUNNING, STATUS_FINISHED, STATUS_FAILED)

ALL_PARTITION = "~all"
MAX_PAGE_SIZE = 1000
EGT_MAX_OPS = 100
MAX_OUTCOMES_UNITS = 30_000
"""Outcomes JSON budget in UTF-16 code units (60,000 bytes): a string property holds 64 KiB = 32,768 units."""
MAX_DETAILS_UNITS = 16_000
MAX_TRANSACTION_BYTES = 3_500_000
MAX_ID_CHARS = 100
_CLEANUP_CONCURRENCY = 8

# .NET DateTime ticks (100 ns since 0001-01-01): the log-tail RowKey convention of Table Storage docs
_MAX_TICKS = 3155378975999999999  # DateTime.MaxValue.Ticks
_TICKS_EPOCH = datetime(1, 1, 1, tzinfo=timezone.utc)
_JOB_ID_RE = re.compile(r"[0-9]{19}[0-9a-f]{8}")


# --- pure helpers -----------------------------------------------------------------------------------------------------
def _ticks(at: datetime) -> int:
    delta = at - _TICKS_EPOCH
    return ((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds) * 10


def _reverse_ticks(at: datetime) -> int:
    return _MAX_TICKS - _ticks(at)


def job_id_for(started_at: datetime) -> str:
    """A new job id: sorts before (newer than) every id of an earlier start; the random tail keeps it unique."""
    return f"{_reverse_ticks(_utc(started_at, 'started_at')):019d}{uuid.uuid4().hex[:8]}"


def _check_job_id(job_id: Any) -> str:
    if not isinstance(job_id, str) or not _JOB_ID_RE.fullmatch(job_id):
        raise RequestError("invalid job id", code="InvalidJobId",
                           details={"jobId": job_id if isinstance(job_id, str) else repr(job_id)})
    return job_id


def _utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _json(value: Any) -> str:
    # default=str: outcomes may carry datetimes/UUIDs; they read back as strings
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def fit_outcomes(outcomes: list[dict], limit: int = MAX_OUTCOMES_UNITS) -> tuple[str, int]:
    """The JSON of the longest prefix of ``outcomes`` that fits in ``limit`` UTF-16 units, and its length."""
    parts: list[str] = []
    used = 2  # "[" and "]"
    for item in outcomes:
        text = _json(item)
        cost = _utf16_units(text) + (1 if parts else 0)
        if used + cost > limit:
            break
        parts.append(text)
        used += cost
    return "[" + ",".join(parts) + "]", len(parts)


def _counters(value: Any) -> dict[str, int]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in value.items()):
        raise RequestError("job counters must map names to integers", details={"counters": repr(value)[:200]})
    return dict(value)


def _now() -> datetime:
    return datetime.now(timezone.utc)


# --- records ----------------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One synchronization job (one pass of one mapping in one direction, or a coupling/uncoupling job).

    ``counters`` is free-form (``inserted``, ``modified``, ``unchanged``, ``skipped``, ``failed``, ...).
    ``outcomes`` (per-record results) is kept only as far as it fits in one property; when it was cut,
    ``outcomes_truncated`` is True and ``outcomes`` holds the leading part.
    """

    id: str
    mapping: str
    direction: str
    kind: str
    started_at: datetime
    finished_at: datetime | None = None
    status: str = STATUS_RUNNING
    counters: dict[str, int] = field(default_factory=dict)
    message: str | None = None
    outcomes: list[dict] | None = None
    outcomes_truncated: bool = False
    details: dict | None = None

    def __post_init__(self) -> None:
        _check_job_id(self.id)
        encode_key_part(self.mapping, what="mapping")
        self.direction = str(self.direction)
        if self.direction not in DIRECTIONS:
            raise RequestError(f"direction must be one of {', '.join(DIRECTIONS)}",
                               details={"direction": self.direction})
        self.kind = str(self.kind)
        if self.kind not in KINDS:
            raise RequestError(f"job kind must be one of {', '.join(KINDS)}", details={"kind": self.kind})
        if self.status not in STATUSES:
            raise RequestError(f"job status must be one of {', '.join(STATUSES)}", details={"status": self.status})
        self.started_at = _utc(self.started_at, "started_at")
        self.finished_at = _utc(self.finished_at, "finished_at")
        self.counters = _counters(self.counters)
        self.message = _truncate(self.message)


@dataclass
class JobError:
    """One error row of a job (BC's "Integration Synch. Job Errors"): which record failed, and why."""

    job_id: str
    mapping: str
    direction: str
    bc_id: str | None = None
    dataverse_id: str | None = None
    message: str = ""
    at: datetime = field(default_factory=_now)

    def __post_init__(self) -> None:
        _check_job_id(self.job_id)
        self.at = _utc(self.at, "at")
        self.message = _truncate(self.message if self.message is not None else "") or ""
        # ids are logged as given (an error must never fail to be recorded), only capped
        self.bc_id = str(self.bc_id)[:MAX_ID_CHARS] if self.bc_id is not None else None
        self.dataverse_id = str(self.dataverse_id)[:MAX_ID_CHARS] if self.dataverse_id is not None else None


# --- entity <-> record ------------------------------------------------------------------------------------------------
def _job_entity(job: Job, pk: str) -> dict[str, Any]:
    e: dict[str, Any] = {
        "PartitionKey": pk, "RowKey": _check_job_id(job.id), "Mapping": job.mapping, "Direction": job.direction,
        "Kind": job.kind, "Status": job.status, "StartedAt": _utc(job.started_at, "started_at"),
        "Counters": _json(_counters(job.counters)), "OutcomesTruncated": bool(job.outcomes_truncated),
    }
    optional = {
        "FinishedAt": _utc(job.finished_at, "finished_at"),
        "Message": _truncate(job.message),
        "Outcomes": _json(job.outcomes) if job.outcomes is not None else None,
        "Details": _json(job.details) if job.details is not None else None,
    }
    e.update({k: v for k, v in optional.items() if v is not None})
    return e


def _job_from_entity(e: Any) -> Job:
    outcomes = e.get("Outcomes")
    details = e.get("Details")
    return Job(
        id=e["RowKey"], mapping=e["Mapping"], direction=e["Direction"], kind=e["Kind"],
        started_at=e["StartedAt"], finished_at=e.get("FinishedAt"), status=e["Status"],
        counters=json.loads(e.get("Counters") or "{}"), message=e.get("Message"),
        outcomes=json.loads(outcomes) if outcomes is not None else None,
        outcomes_truncated=bool(e.get("OutcomesTruncated")),
        details=json.loads(details) if details is not None else None)


def _error_from_entity(e: Any) -> JobError:
    return JobError(job_id=e["PartitionKey"], mapping=e["Mapping"], direction=e["Direction"],
                    bc_id=e.get("BcId"), dataverse_id=e.get("DataverseId"), message=e.get("Message") or "",
                    at=e["At"])


def _transaction_chunks(entities: list[dict[str, Any]]) -> Iterable[list[dict[str, Any]]]:
    """Split into transactions of <= 100 entities and <= ~3.5 MB of JSON (the service takes 4 MB): 100 long
    messages of non-Latin text, escaped as ``\\uXXXX``, would not fit in one."""
    chunk: list[dict[str, Any]] = []
    size = 0
    for e in entities:
        cost = len(json.dumps(e, default=str)) + 512  # ensure_ascii: the worst case; + the part's headers
        if chunk and (len(chunk) == EGT_MAX_OPS or size + cost > MAX_TRANSACTION_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(e)
        size += cost
    if chunk:
        yield chunk


def _check_page_size(page_size: Any) -> int:
    if not isinstance(page_size, int) or isinstance(page_size, bool) or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise RequestError(f"page size must be 1..{MAX_PAGE_SIZE}", details={"pageSize": page_size})
    return page_size


# --- the store --------------------------------------------------------------------------------------------------------
class JobStore:
    def __init__(self, service: TableService, names: TableNames):
        self._service = service
        self._names = names

    async def _jobs(self):
        return await self._service.table(self._names.jobs)

    async def _errors(self):
        return await self._service.table(self._names.errors)

    # --- jobs ---------------------------------------------------------------------------------------------------------
    def new_job(self, mapping: str, direction: str, kind: str, *, details: dict | None = None) -> Job:
        """A job starting now (not stored yet: ``start`` stores it). ``details`` must stay small (a few KB)."""
        if details is not None:
            if not isinstance(details, dict):
                raise RequestError("job details must be a JSON object")
            size = _utf16_units(_json(details))
            if size > MAX_DETAILS_UNITS:
                raise RequestError(f"job details are too large ({size} characters, at most {MAX_DETAILS_UNITS})",
                                   details={"size": size, "max": MAX_DETAILS_UNITS})
        started = _now()
        return Job(id=job_id_for(started), mapping=mapping, direction=direction, kind=kind, started_at=started,
                   details=details)

    async def _write(self, job: Job) -> None:
        table = await self._jobs()
        for pk in (ALL_PARTITION, encode_key_part(job.mapping, what="mapping")):  # ~all first: see module doc
            await table.upsert_entity(_job_entity(job, pk), mode=UpdateMode.REPLACE)

    async def enqueue(self, job: Job) -> Job:
        """Store ``job`` as queued (work accepted, not started: an asynchronous sync-now). Returns it."""
        stored = replace(job, status=STATUS_QUEUED, finished_at=None)
        await self._write(stored)
        return stored

    async def start(self, job: Job) -> Job:
        """Store ``job`` as running (2 writes). Returns the stored job."""
        stored = replace(job, status=STATUS_RUNNING, finished_at=None)
        await self._write(stored)
        return stored

    async def finish(self, job: Job, *, status: str | None = None, counters: dict[str, int] | None = None,
                     message: str | None = None, outcomes: list[dict] | None = None) -> Job:
        """Store the job's end: ``finished_at`` = now, and the given (else the job's own) status, counters,
        message and outcomes. A running job ends ``Finished`` unless told otherwise; ``Failed`` is for a
        job-level error (BC's job Message), not for failed records (those are counted).

        Outcomes are cut to what fits in one property (``outcomes_truncated``). Returns the job as stored.
        """
        final = status or (job.status if job.status != STATUS_RUNNING else STATUS_FINISHED)
        if final == STATUS_RUNNING:
            raise RequestError("a finished job can't be Running")
        items = outcomes if outcomes is not None else job.outcomes
        truncated = job.outcomes_truncated if outcomes is None else False
        if items is not None:
            items = list(items)
            text, kept = fit_outcomes(items)
            if kept < len(items):
                items, truncated = json.loads(text), True
        done = replace(job, status=final, finished_at=job.finished_at or _now(),
                       counters=counters if counters is not None else job.counters,
                       message=message if message is not None else job.message,
                       outcomes=items, outcomes_truncated=truncated)
        await self._write(done)
        return done

    async def get(self, job_id: str) -> Job | None:
        """The job, or None (one point read)."""
        key = _check_job_id(job_id)
        table = await self._jobs()
        try:
            entity = await table.get_entity(ALL_PARTITION, key)
        except ResourceNotFoundError:
            return None
        return _job_from_entity(entity)

    async def list(self, mapping: str | None = None, page_size: int = 50,
                   continuation: str | None = None) -> tuple[list[Job], str | None]:
        """One page of jobs, newest first, of one mapping (or of all) and the token of the next page.

        A token is only accepted back for the same listing (else ``RequestError``). A page can hold fewer than
        ``page_size`` jobs while a token is still returned.
        """
        _check_page_size(page_size)
        pk = ALL_PARTITION if mapping is None else encode_key_part(mapping, what="mapping")
        scope = f"jobs|{pk}"
        token = decode_continuation(scope, continuation)
        table = await self._jobs()
        pages = table.query_entities("PartitionKey eq @pk", parameters={"pk": pk},
                                     results_per_page=page_size).by_page(continuation_token=token)
        entities: list[Any] = []
        for _ in range(5):  # the service may answer empty pages with a token: follow a few
            try:
                page = await pages.__anext__()
            except StopAsyncIteration:
                break
            entities = [e async for e in page]
            if entities or not pages.continuation_token:
                break
        jobs = [_job_from_entity(e) for e in entities]
        if mapping is not None:
            jobs = await self._refresh_running(jobs)
        return jobs, encode_continuation(scope, pages.continuation_token)

    async def _refresh_running(self, jobs: list[Job]) -> list[Job]:
        """Copies still marked running may lag behind their ``~all`` row (an interrupted ``finish``)."""
        running = [i for i, j in enumerate(jobs) if j.status == STATUS_RUNNING]
        if not running:
            return jobs
        fresh = await asyncio.gather(*(self.get(jobs[i].id) for i in running))
        out = list(jobs)
        for i, job in zip(running, fresh):
            if job is not None:
                out[i] = job
        return out

    # --- errors -------------------------------------------------------------------------------------------------------
    async def add_errors(self, job_id: str, errors: Iterable[JobError]) -> int:
        """Store the job's error rows (transactions of up to 100); returns how many were stored."""
        _check_job_id(job_id)
        items = list(errors)
        for e in items:
            if e.job_id != job_id:
                raise RequestError("every error must belong to the job", details={"jobId": job_id})
        if not items:
            return 0
        batch = f"{_ticks(_now()):019d}{uuid.uuid4().hex[:6]}"
        entities = []
        for i, e in enumerate(items):
            entity: dict[str, Any] = {
                "PartitionKey": job_id, "RowKey": f"{batch}{i:06d}", "Mapping": e.mapping,
                "Direction": str(e.direction), "Message": _truncate(e.message) or "", "At": _utc(e.at, "at"),
            }
            if e.bc_id is not None:
                entity["BcId"] = str(e.bc_id)[:MAX_ID_CHARS]
            if e.dataverse_id is not None:
                entity["DataverseId"] = str(e.dataverse_id)[:MAX_ID_CHARS]
            entities.append(entity)
        table = await self._errors()
        for chunk in _transaction_chunks(entities):
            await table.submit_transaction([("create", e) for e in chunk])
        return len(entities)

    async def list_errors(self, job_id: str) -> list[JobError]:
        """Every error row of the job, in the order they were added."""
        pk = _check_job_id(job_id)
        table = await self._errors()
        return [_error_from_entity(e) async for e in table.query_entities(
            "PartitionKey eq @pk", parameters={"pk": pk}, results_per_page=MAX_PAGE_SIZE)]

    # --- cleanup ------------------------------------------------------------------------------------------------------
    @staticmethod
    async def _delete_rows(table, keys: list[tuple[str, str]]) -> int:
        """Delete rows of one partition, 100 per transaction; rows already gone are fine."""
        for start in range(0, len(keys), EGT_MAX_OPS):
            chunk = keys[start:start + EGT_MAX_OPS]
            try:
                await table.submit_transaction(
                    [("delete", {"PartitionKey": pk, "RowKey": rk}) for pk, rk in chunk])
            except TableTransactionError as exc:
                if exc.status_code != 404:
                    raise
                for pk, rk in chunk:  # one is gone (a concurrent cleanup): the rest one by one (404 ignored)
                    await table.delete_entity(pk, rk)
        return len(keys)

    async def _delete_job_errors(self, job_id: str) -> int:
        table = await self._errors()
        deleted = 0
        query = table.query_entities("PartitionKey eq @pk", parameters={"pk": job_id}, select=["RowKey"],
                                     results_per_page=MAX_PAGE_SIZE)
        async for page in query.by_page():
            keys = [(job_id, e["RowKey"]) async for e in page]
            deleted += await self._delete_rows(table, keys)
        return deleted

    async def cleanup(self, older_than: datetime, keep_job_ids: set[str] | frozenset[str] = frozenset(), *,
                      page_size: int = MAX_PAGE_SIZE) -> dict[str, int]:
        """Delete the jobs started before ``older_than`` and their error rows, except ``keep_job_ids``.

        BC's "Delete Entries Older Than N Days": the caller passes the job ids a skipped coupling still refers to
        (``to_job_id``/``from_job_id``), whose errors the errors page shows. A job still marked running this
        long after its start is a dead one and is deleted too. Memory is bounded by ``page_size`` jobs.
        Returns ``{"jobs": deleted, "errors": deleted error rows, "kept": old jobs kept}``.
        """
        _check_page_size(page_size)
        cutoff = _utc(older_than, "older_than")
        lo = f"{_reverse_ticks(cutoff) + 1:019d}"  # started strictly before the cutoff
        keep = set(keep_job_ids)
        table = await self._jobs()
        counts = {"jobs": 0, "errors": 0, "kept": 0}
        sem = asyncio.Semaphore(_CLEANUP_CONCURRENCY)

        async def errors_of(job_id: str) -> int:
            async with sem:
                return await self._delete_job_errors(job_id)

        query = table.query_entities("PartitionKey eq @pk and RowKey ge @lo",
                                     parameters={"pk": ALL_PARTITION, "lo": lo},
                                     select=["RowKey", "Mapping"], results_per_page=page_size)
        async for page in query.by_page():
            old = [(e["RowKey"], e.get("Mapping")) async for e in page]
            doomed = [(job_id, mapping) for job_id, mapping in old if job_id not in keep]
            counts["kept"] += len(old) - len(doomed)
            if not doomed:
                continue
            # errors, then the mapping copies, then the ~all rows (the ones the next cleanup would find again)
            counts["errors"] += sum(await asyncio.gather(*(errors_of(job_id) for job_id, _ in doomed)))
            by_partition: dict[str, list[tuple[str, str]]] = {}
            for job_id, mapping in doomed:
                if mapping:
                    pk = encode_key_part(mapping, what="mapping")
                    by_partition.setdefault(pk, []).append((pk, job_id))
            for keys in by_partition.values():
                await self._delete_rows(table, keys)
            counts["jobs"] += await self._delete_rows(table, [(ALL_PARTITION, job_id) for job_id, _ in doomed])
        return counts
