"""The synchronization engine: one pass of one table mapping in one direction (BC's "Integration Table Synch.").

A pass reads its source records page by page (changed since the watermark, plus the couplings that failed last
time, or an explicit id list for sync-now), reads the couplings and the coupled counterparts of a page in bulk,
resolves the page's lookups in bulk, asks the pure rules what to do with each record (``sync.rules.decide``),
writes all the page's changes in ``$batch`` requests, and records the outcome on the couplings (batched
transactions), in the job log and, for failures, in the job's error rows. Watermarks move only when a pass
completes, and never past its start: a pass that dies midway is simply redone by the next run, and everything it
had already written comes back "unchanged" (the couplings' timestamps), so nothing is lost or duplicated.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Iterable

from coupling.jobs import Job, JobError
from coupling.model import RESULT_FAILURE, Coupling

from . import errors, lookups, odata, rules
from .adapters.transport import BatchOp, BatchResult
from .mappings import BC, DATAVERSE, Direction, TableMapping
from .rules import Action, Decision, JobCounters, Outcome, OutcomeKind, Reason

log = logging.getLogger(__name__)

TO = Direction.TO_INTEGRATION_TABLE
FROM = Direction.FROM_INTEGRATION_TABLE
PAGE = 1000
"""Source records handled together: one coupling read round, one counterpart read, one lookup resolution and a
few ``$batch`` writes per page."""
INSERT_CONCURRENCY = 8


# --- the two sides of a pass -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Side:
    """One system as a pass sees it: how to read its records and ids and when they were modified."""

    name: str  # "bc" | "dataverse"
    entity_set: str
    key: str
    select: tuple[str, ...]
    modified_field: str

    def id_of(self, record: dict) -> str:
        return str(record[self.key]).lower()

    def modified_of(self, record: dict) -> datetime | None:
        return rules.parse_timestamp(record.get(self.modified_field))


def sides(mapping: TableMapping, direction: Direction) -> tuple[Side, Side]:
    """(source, destination) of a pass."""
    bc = Side(BC, mapping.bc_entity_set, "id", mapping.bc_select(), "lastModifiedDateTime")
    dv = Side(DATAVERSE, mapping.dataverse_entity_set, mapping.dataverse_primary_id,
              (*mapping.dataverse_select(), "versionnumber"), mapping.dataverse_modified_on or "modifiedon")
    return (bc, dv) if direction is TO else (dv, bc)


def _client(rt: Any, side: Side) -> Any:
    return rt.bc if side.name == BC else rt.dataverse


def _coupled_id(c: Coupling, side: Side) -> str:
    return c.bc_id if side.name == BC else c.dataverse_id


# --- a pass ----------------------------------------------------------------------------------------------------------
@dataclass
class PassRequest:
    """What one pass does.

    ``ids`` None: a scheduled pass (records changed since the watermark, plus the couplings that failed last time,
    and the watermark advances at the end). With ``ids``: exactly those source records (sync-now, errors page).
    ``forced``: BC's ForceModify (single-record sync-now): no unchanged short-cut, no conflict check.
    ``skip_destination_modified``: BC's multi-record sync-now rule (never overwrite newer data).
    ``clear_skipped``: the errors page's Synchronize: skipped couplings are taken up again.
    ``keep_outcomes``: return (and store on the job) one outcome per record.
    ``uncoupled_by_mapping``: with ``ids``, treat uncoupled records as a scheduled pass does (ignored while the
    mapping synchronizes only coupled records, else created when they pass the mapping's filter) instead of
    skipping them as sync-now does - for changes that arrive by webhook.
    """

    mapping: TableMapping
    direction: Direction
    kind: str = "Synchronization"
    ids: list[str] | None = None
    forced: bool = False
    skip_destination_modified: bool = False
    clear_skipped: bool = False
    keep_outcomes: bool = False
    uncoupled_by_mapping: bool = False
    details: dict | None = None


@dataclass
class PassResult:
    job: Job
    counters: JobCounters
    outcomes: list[Outcome] = field(default_factory=list)

    def to_json(self) -> dict:
        out = {"jobId": self.job.id, "mapping": self.job.mapping, "direction": self.job.direction,
               "status": self.job.status, "counters": self.counters.to_json(), "message": self.job.message}
        if self.outcomes:
            out["records"] = [o.to_json() for o in self.outcomes]
        return out


class _Pass:
    def __init__(self, rt: Any, req: PassRequest, job: Job):
        self.rt, self.req, self.job = rt, req, job
        self.mapping = req.mapping
        self.d = req.direction
        self.src, self.dst = sides(self.mapping, self.d)
        self.counters = JobCounters()
        self.outcomes: list[Outcome] = []
        self.errors: list[JobError] = []
        self.max_seen: datetime | None = None
        self.mappings: dict | None = None
        self.lookup_cache = lookups.PassCache()

    # -- reading ---------------------------------------------------------------------------------------------------
    async def _changed_pages(self, since: datetime | None) -> AsyncIterator[list[dict]]:
        client = _client(self.rt, self.src)
        service_filter = self.mapping.filter_for(self.src.name).to_odata(self.src.name)
        if self.src.name == BC:
            bound = rules.bc_query_lower_bound(since)
            changed = odata.gt("lastModifiedDateTime", bound) if bound else None
        else:
            bound = rules.dataverse_query_lower_bound(since)
            changed = odata.gt(self.src.modified_field, bound) if bound else None
        flt = " and ".join(f"({p})" for p in (service_filter, changed) if p) or None
        async for page in client.iter_pages(self.src.entity_set, filter=flt, select=list(self.src.select),
                                            page_size=PAGE):
            yield page

    async def _pages_by_id(self, ids: list[str]) -> AsyncIterator[list[dict]]:
        client = _client(self.rt, self.src)
        for start in range(0, len(ids), PAGE):
            chunk = ids[start:start + PAGE]
            found = await client.get_many(self.src.entity_set, chunk, select=list(self.src.select))
            yield [found[i] for i in chunk if i in found]
            for missing in (i for i in chunk if i not in found):
                self._record(Outcome(OutcomeKind.FAILED, None,
                                     f"The {self.src.entity_set} record {missing} does not exist.",
                                     **self._ids(missing, None)))

    async def _failed_ids(self) -> list[str]:
        """Sources of couplings whose last result in this direction is Failure and that aren't skipped: retried
        every run, whatever the watermark (BC 6.2)."""
        flt = {"to_result": RESULT_FAILURE} if self.d is TO else {"from_result": RESULT_FAILURE}
        ids: list[str] = []
        async for page in self.rt.couplings.iter_filtered(self.mapping.name, skipped=False, **flt):
            ids.extend(_coupled_id(c, self.src) for c in page)
        return ids

    def _ids(self, source_id: str | None, dest_id: str | None) -> dict:
        if self.src.name == BC:
            return {"bc_id": source_id, "dataverse_id": dest_id}
        return {"bc_id": dest_id, "dataverse_id": source_id}

    # -- bookkeeping -----------------------------------------------------------------------------------------------
    def _record(self, outcome: Outcome) -> None:
        self.counters.add(outcome)
        if self.req.keep_outcomes:
            self.outcomes.append(outcome)
        if outcome.result is OutcomeKind.FAILED:
            self.errors.append(JobError(self.job.id, self.mapping.name, self.d.value, outcome.bc_id,
                                        outcome.dataverse_id, outcome.message or "failed",
                                        datetime.now(timezone.utc)))

    # -- one page --------------------------------------------------------------------------------------------------
    async def page(self, records: list[dict]) -> None:
        rt, src, dst = self.rt, self.src, self.dst
        for r in records:
            m = src.modified_of(r)
            if m is not None and (self.max_seen is None or m > self.max_seen):
                self.max_seen = m
        ids = [src.id_of(r) for r in records]
        get_couplings = rt.couplings.get_many_by_bc if src.name == BC else rt.couplings.get_many_by_dataverse
        couplings: dict[str, Coupling] = await get_couplings(self.mapping.name, ids)
        if self.req.clear_skipped:
            couplings = {k: (c if not c.skipped else _unskip(c)) for k, c in couplings.items()}

        # Records whose outcome needs no counterpart: skipped, ignored, unchanged.
        todo: list[tuple[dict, Coupling | None]] = []
        coupling_writes: list[Coupling] = []
        for rec, rid in zip(records, ids):
            c = couplings.get(rid)
            if c is not None and c.skipped:
                self._record(Outcome(OutcomeKind.SKIPPED, Reason.COUPLING_SKIPPED,
                                     "The record is marked as skipped.", **self._ids(rid, _coupled_id(c, dst))))
            elif c is None and self.req.ids is not None and not self.req.uncoupled_by_mapping:
                # sync-now and retries act on coupled records only
                self._record(Outcome(OutcomeKind.SKIPPED, Reason.NOT_COUPLED, "The record is not coupled.",
                                     **self._ids(rid, None)))
            elif c is None and self.req.ids is not None and not self.mapping.sync_only_coupled_records \
                    and not self.mapping.filter_for(src.name).matches(rec):
                # fetched by id: the mapping's filter was not applied by the query
                self._record(Outcome(OutcomeKind.IGNORED, Reason.NOT_COUPLED,
                                     "The record is not coupled and is outside the mapping's filter: "
                                     + self.mapping.filter_for(src.name).describe_failures(rec),
                                     **self._ids(rid, None)))
            elif c is None and self.mapping.sync_only_coupled_records:
                self._record(Outcome(OutcomeKind.IGNORED, Reason.NOT_COUPLED, "The record is not coupled.",
                                     **self._ids(rid, None)))
            elif c is not None and not self.req.forced and not self._source_modified(c, rec):
                self._record(Outcome(OutcomeKind.UNCHANGED, Reason.NOT_MODIFIED, None,
                                     **self._ids(rid, _coupled_id(c, dst))))
            else:
                todo.append((rec, c))
        if not todo:
            return

        dest_ids = [_coupled_id(c, dst) for _, c in todo if c is not None]
        destinations = await _client(rt, dst).get_many(dst.entity_set, dest_ids, select=list(dst.select)) \
            if dest_ids else {}
        if self.mappings is None:
            self.mappings = await rt.mappings()
        resolution = await lookups.resolve(rt, self.mappings, self.mapping, [r for r, _ in todo], self.d,
                                           self.lookup_cache)

        writes: list[tuple[dict, Coupling, Decision, dict]] = []
        inserts: list[tuple[dict, Coupling | None, Decision]] = []
        removals: list[Coupling] = []
        for rec, c in todo:
            rid = src.id_of(rec)
            dest = destinations.get(_coupled_id(c, dst)) if c is not None else None
            if self.req.skip_destination_modified and c is not None and dest is not None:
                dest_modified = (rules.dataverse_modified_since_last_sync(c, dest, dst.modified_field)
                                 if dst.name == DATAVERSE else rules.bc_modified_since_last_sync(c, dest))
                reason = rules.bulk_skip_reason(self.d, c, dest_modified)
                if reason is not None:
                    self._record(Outcome(OutcomeKind.SKIPPED, reason,
                                         "The destination was changed since the last synchronization.",
                                         **self._ids(rid, _coupled_id(c, dst))))
                    continue
            decision = rules.decide(self.mapping, self.d, source=rec, coupling=c, destination=dest,
                                    resolved=resolution, forced=self.req.forced)
            dest_id = _coupled_id(c, dst) if c is not None else None
            if decision.action in (Action.MODIFY, Action.FORCE_MODIFY) and decision.changes:
                writes.append((rec, c, decision, dest))  # type: ignore[arg-type]
            elif decision.action in (Action.INSERT, Action.RESTORE):
                inserts.append((rec, c, decision))
            elif decision.action is Action.REMOVE_COUPLING:
                removals.append(c)  # type: ignore[arg-type]
                self._record(decision.outcome(**self._kw(rid, dest_id)))
            elif decision.action is Action.FAIL:
                if c is not None:
                    coupling_writes.append(decision.coupling_after_failure(c, self.job.id))
                self._record(decision.outcome(**self._kw(rid, dest_id)))
            elif decision.action in (Action.UNCHANGED, Action.FORCE_MODIFY):  # nothing differs
                updated = decision.coupling_after_success(
                    c, self.job.id, **self._stamps(rec, dest))  # type: ignore[arg-type]
                if _worth_writing(c, updated):  # type: ignore[arg-type]
                    coupling_writes.append(updated)
                self._record(decision.outcome(**self._kw(rid, dest_id)))
            else:  # Skip, Ignore
                self._record(decision.outcome(**self._kw(rid, dest_id)))

        coupling_writes += await self._write(writes)
        if removals:
            await rt.couplings.delete_many(self.mapping.name, removals)
        if coupling_writes:
            await self._save_couplings(coupling_writes)
        if inserts:
            await self._insert(inserts)

    def _kw(self, source_id: str, dest_id: str | None) -> dict:
        ids = self._ids(source_id, dest_id)
        return {"bc_id": ids["bc_id"], "dataverse_id": ids["dataverse_id"]}

    def _source_modified(self, c: Coupling, rec: dict) -> bool:
        if self.src.name == BC:
            return rules.bc_modified_since_last_sync(c, rec)
        return rules.dataverse_modified_since_last_sync(c, rec, self.src.modified_field)

    def _stamps(self, source: dict, dest: dict | None) -> dict:
        """Both sides' modified-on, for the coupling (``dest`` as re-read after a write)."""
        bc, dv = (source, dest) if self.src.name == BC else (dest, source)
        dv_field = self.mapping.dataverse_modified_on or "modifiedon"
        return {"bc_modified_on": rules.bc_timestamp(bc) if bc else None,
                "dataverse_modified_on": rules.dataverse_timestamp(dv, dv_field) if dv else None,
                "dataverse_version": rules.row_version(dv) if dv else None}

    # -- writing ---------------------------------------------------------------------------------------------------
    async def _write(self, writes: list[tuple[dict, Coupling, Decision, dict]]) -> list[Coupling]:
        """PATCH every changed counterpart in ``$batch``es; returns the couplings to save."""
        if not writes:
            return []
        dst = self.dst
        ops = []
        for _rec, c, decision, dest in writes:
            etag = dest.get("@odata.etag") or "*"
            if dst.name == DATAVERSE:
                ops.append(BatchOp("PATCH", dst.entity_set, id=_coupled_id(c, dst), body=decision.changes,
                                   etag=etag, select=[dst.key, dst.modified_field, "versionnumber"],
                                   return_representation=True))
            else:
                ops.append(BatchOp.update(dst.entity_set, _coupled_id(c, dst), decision.changes, etag=etag))
        results: list[BatchResult] = await _client(self.rt, dst).batch(ops)
        saved: list[Coupling] = []
        for (rec, c, decision, dest), res in zip(writes, results):
            rid, did = self.src.id_of(rec), _coupled_id(c, dst)
            if res.ok:
                after = {**dest, **(res.body or {})}
                saved.append(decision.coupling_after_success(c, self.job.id, **self._stamps(rec, after)))
                self._record(decision.outcome(**self._kw(rid, did)))
            else:
                message = f"Modifying {dst.entity_set} {did} failed: {res.error.message}"  # type: ignore[union-attr]
                saved.append(decision.coupling_after_failure(c, self.job.id, message))
                self._record(Outcome(OutcomeKind.FAILED, decision.reason, message, **self._kw(rid, did)))
        return saved

    async def _save_couplings(self, couplings: list[Coupling]) -> None:
        results = await self.rt.couplings.update_many(self.mapping.name, couplings)
        for c, res in zip(couplings, results):
            if isinstance(res, Exception):
                log.warning("coupling %s/%s not saved: %s", c.bc_id, c.dataverse_id, res)

    async def _insert(self, inserts: list[tuple[dict, Coupling | None, Decision]]) -> None:
        """Create the counterparts of uncoupled (or restored) records through the crash-safe create-new path."""
        from coupling import service  # the create-new path (deterministic ids / create intents)

        limiter = asyncio.Semaphore(INSERT_CONCURRENCY)

        async def one(rec: dict, c: Coupling | None, decision: Decision) -> None:
            rid = self.src.id_of(rec)
            async with limiter:
                try:
                    if c is not None:  # Restore: the old coupling points at a deleted record
                        await self.rt.couplings.delete(c)
                    coupling, _ = await service.create_new(
                        self.rt, self.mapping, bc_id=rid if self.src.name == BC else None,
                        dataverse_id=rid if self.src.name == DATAVERSE else None, job_id=self.job.id)
                except (errors.RequestError, errors.UpstreamError) as exc:
                    self._record(Outcome(OutcomeKind.FAILED, decision.reason, f"Inserting failed: {exc.message}",
                                         **self._kw(rid, None)))
                    return
            self._record(Outcome(OutcomeKind.INSERTED, decision.reason, decision.message,
                                 **self._kw(rid, _coupled_id(coupling, self.dst))))

        await asyncio.gather(*(one(*i) for i in inserts))


def _unskip(c: Coupling) -> Coupling:
    from dataclasses import replace

    return replace(c, skipped=False)


def _worth_writing(before: Coupling, after: Coupling) -> bool:
    """An unchanged record's coupling is rewritten only when something besides the job id changed, so a run with
    no changes writes nothing."""
    from dataclasses import replace

    return replace(before, to_job_id=None, from_job_id=None) != replace(after, to_job_id=None, from_job_id=None)


async def run_pass(rt: Any, req: PassRequest, *, job: Job | None = None) -> PassResult:
    """Run one pass as one job; the job row and its error rows are written even when the pass fails.
    ``job``: a job row created beforehand (an asynchronous sync-now answered 202 with its id)."""
    mapping, d = req.mapping, Direction(req.direction)
    if not mapping.direction.includes(d):
        raise errors.Unprocessable(f"The Integration Table Mapping {mapping.name} is not configured for {d.value} "
                                   "synchronization.", code="DirectionNotAllowed")
    if mapping.is_option_mapping:  # the Dataverse side is an option set (metadata API): its own pass
        from .option_sync import run_option_pass

        return await run_option_pass(rt, req, job=job)
    job = await rt.jobs.start(job or rt.jobs.new_job(mapping.name, d.value, req.kind, details=req.details))
    p = _Pass(rt, req, job)
    started = job.started_at
    try:
        if req.ids is not None:
            async for page in p._pages_by_id(req.ids):
                if page:
                    await p.page(page)
        else:
            marks = await rt.watermarks.get(mapping.name)
            since = marks.bc if p.src.name == BC else marks.dataverse
            failed = await p._failed_ids()
            done: set[str] = set()
            async for page in p._changed_pages(since):
                done.update(p.src.id_of(r) for r in page)
                await p.page(page)
            retry = [i for i in failed if i not in done]
            async for page in p._pages_by_id(retry):
                if page:
                    await p.page(page)
            new_mark = rules.next_watermark(since, p.max_seen, started)
            if new_mark is not None and new_mark != since:
                await rt.watermarks.advance(mapping.name, **({"bc": new_mark} if p.src.name == BC
                                                              else {"dataverse": new_mark}))
        job.status, job.message = "Finished", None
    except Exception as exc:  # the job row says what stopped it; the caller decides what to answer
        job.status = "Failed"
        job.message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        raise
    finally:
        job.counters = p.counters.to_json()
        if req.keep_outcomes:
            job.outcomes = [o.to_json() for o in p.outcomes]
        if p.errors:
            await rt.jobs.add_errors(job.id, p.errors)
        await rt.jobs.finish(job)
    return PassResult(job, p.counters, p.outcomes)


async def run_mapping(rt: Any, mapping: TableMapping) -> list[PassResult]:
    """A scheduled run of one mapping: the To pass, then the From pass (BC 6.2), as the direction allows."""
    results = []
    for d in (TO, FROM):
        if mapping.direction.includes(d):
            results.append(await run_pass(rt, PassRequest(mapping, d)))
    return results


def direction_passes(direction: Direction) -> Iterable[Direction]:
    return (TO, FROM) if direction is Direction.BIDIRECTIONAL else (direction,)
