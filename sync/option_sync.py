"""The synchronization pass of an option mapping (spec 11.6; BC: ``CRMIntegrationTableSynch.SynchOption``,
``IntOptionSynchInvoke``): PAYMENT TERMS / SHIPMENT METHOD <-> the options of a Dataverse choice column.

The Dataverse side is the option set, read once per pass through the metadata API (``{"value", "label"}``
"rows", see ``sync.transfer``); options have no modified-on, so only the BC side has watermarks ("Last Synch.
Modified On"), as in BC.

* **ToIntegrationTable** (the defaults' direction): BC records changed since the BC watermark, plus the couplings
  whose last To pass failed. A record without a coupling gets one - with the option labelled with its code (case-
  insensitive) when there is one and it is free (counted Modified: BC's implicit coupling, then nothing to write),
  else with a new option labelled with the code (``InsertOptionValue``, counted Inserted). This happens whatever
  Synch. Only Coupled Records says: BC's option synchronization appends missing options (11.6) - the setting
  is about rows, and an option set is BC's lookup table in Dataverse. A coupled record whose code changed renames
  its option (``UpdateOptionValue``; a label differing only in case is the same label). A coupling to an option
  deleted in Dataverse is a deletion conflict, resolved by the mapping's strategy.
* **FromIntegrationTable**: every option (the option set is small and has no modified-on). An option without a
  coupling gets the BC record whose code is its label, created when missing (code = label); a label longer than
  BC's code (10 characters) fails that option with a message saying so - never truncated. A coupled option whose
  label changed renames the BC code (BC's rename of the primary key).
* With ``PassRequest.ids`` (sync-now, errors page, webhooks): To, BC SystemIds; From, the options' pseudo-GUIDs
  (``coupling.model.option_value_id``). Uncoupled ones are skipped unless ``uncoupled_by_mapping``.

Job rows, error rows, counters and outcomes are those of ``sync.engine`` passes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, AsyncIterator

from coupling import option_service as options_svc
from coupling.jobs import Job, JobError
from coupling.model import RESULT_FAILURE, Coupling, option_value_id, option_value_of

from . import errors, odata, rules
from .mappings import BC, Direction, TableMapping
from .rules import Action, Decision, JobCounters, Outcome, OutcomeKind, Reason
from .transfer import OPTION_LABEL, OPTION_VALUE, bc_caption

log = logging.getLogger(__name__)

TO = Direction.TO_INTEGRATION_TABLE
FROM = Direction.FROM_INTEGRATION_TABLE
PAGE = 1000


@dataclass
class _OptionPass:
    rt: Any
    req: Any  # sync.engine.PassRequest
    job: Job
    counters: JobCounters = field(default_factory=JobCounters)
    outcomes: list[Outcome] = field(default_factory=list)
    errors: list[JobError] = field(default_factory=list)
    options: list[dict] = field(default_factory=list)
    max_seen: datetime | None = None
    coupling_writes: list[Coupling] = field(default_factory=list)

    @property
    def mapping(self) -> TableMapping:
        return self.req.mapping

    @property
    def d(self) -> Direction:
        return Direction(self.req.direction)

    # -- bookkeeping ---------------------------------------------------------------------------------------------
    def record(self, kind: OutcomeKind, reason: Reason | None, message: str | None, bc_id: str | None,
               dataverse_id: str | None) -> None:
        outcome = Outcome(kind, reason, message, bc_id, dataverse_id)
        self.counters.add(outcome)
        if self.req.keep_outcomes:
            self.outcomes.append(outcome)
        if kind is OutcomeKind.FAILED:
            self.errors.append(JobError(self.job.id, self.mapping.name, self.d.value, bc_id, dataverse_id,
                                        message or "failed", datetime.now(timezone.utc)))

    def fail(self, c: Coupling | None, message: str, bc_id: str | None, dataverse_id: str | None,
             reason: Reason = Reason.TRANSFER_FAILED) -> None:
        if c is not None:
            self.coupling_writes.append(rules.after_failure(c, self.d, self.job.id, message))
        self.record(OutcomeKind.FAILED, reason, message, bc_id, dataverse_id)

    def succeed(self, c: Coupling, kind: OutcomeKind, reason: Reason | None, message: str | None,
                bc_rec: dict | None, *, always_write: bool = False) -> None:
        updated = rules.after_success(c, self.d, self.job.id, rules.bc_timestamp(bc_rec) if bc_rec else None, None)
        if always_write or _worth_writing(c, updated):
            self.coupling_writes.append(updated)
        self.record(kind, reason, message, c.bc_id, c.dataverse_id)

    async def flush(self) -> None:
        if not self.coupling_writes:
            return
        writes, self.coupling_writes = self.coupling_writes, []
        results = await self.rt.couplings.update_many(self.mapping.name, writes)
        for c, res in zip(writes, results):
            if isinstance(res, Exception):
                log.warning("coupling %s/%s not saved: %s", c.bc_id, c.dataverse_id, res)

    def coupling_filter(self, c: Coupling | None) -> Coupling | None:
        if c is not None and self.req.clear_skipped and c.skipped:
            from dataclasses import replace

            return replace(c, skipped=False)
        return c

    def uncoupled_allowed(self) -> bool:
        """Sync-now and retries act on coupled records only; scheduled passes and webhooks couple new ones."""
        return self.req.ids is None or self.req.uncoupled_by_mapping

    # -- ToIntegrationTable --------------------------------------------------------------------------------------
    async def _bc_changed(self, since: datetime | None) -> AsyncIterator[list[dict]]:
        service_filter = self.mapping.table_filter.to_odata(BC)  # type: ignore[union-attr]
        bound = rules.bc_query_lower_bound(since)
        changed = odata.gt("lastModifiedDateTime", bound) if bound else None
        flt = " and ".join(f"({p})" for p in (service_filter, changed) if p) or None
        async for page in self.rt.bc.iter_pages(self.mapping.bc_entity_set, filter=flt,
                                                select=list(self.mapping.bc_select()), page_size=PAGE):
            yield page

    async def _bc_by_id(self, ids: list[str]) -> AsyncIterator[list[dict]]:
        for start in range(0, len(ids), PAGE):
            chunk = ids[start:start + PAGE]
            found = await self.rt.bc.get_many(self.mapping.bc_entity_set, chunk, select=list(self.mapping.bc_select()))
            for missing in (i for i in chunk if i not in found):
                self.record(OutcomeKind.FAILED, None, f"The {self.mapping.bc_entity_set} record {missing} does not "
                                                      "exist.", missing, None)
            yield [found[i] for i in chunk if i in found]

    async def to_pass(self) -> None:
        self.options = await options_svc.read_options(self.rt, self.mapping)
        if self.req.ids is not None:
            async for page in self._bc_by_id(self.req.ids):
                await self.to_page(page)
            return
        marks = await self.rt.watermarks.get(self.mapping.name)
        since = marks.bc
        failed: list[str] = []
        async for page in self.rt.couplings.iter_filtered(self.mapping.name, skipped=False, to_result=RESULT_FAILURE):
            failed.extend(c.bc_id for c in page)
        done: set[str] = set()
        async for page in self._bc_changed(since):
            done.update(str(r["id"]).lower() for r in page)
            await self.to_page(page)
        retry = [i for i in failed if i not in done]
        async for page in self._bc_by_id(retry):
            await self.to_page(page)
        new_mark = rules.next_watermark(since, self.max_seen, self.job.started_at)
        if new_mark is not None and new_mark != since:
            await self.rt.watermarks.advance(self.mapping.name, bc=new_mark)

    async def to_page(self, records: list[dict]) -> None:
        if not records:
            return
        for r in records:
            m = rules.bc_timestamp(r)
            if m is not None and (self.max_seen is None or m > self.max_seen):
                self.max_seen = m
        couplings = await self.rt.couplings.get_many_by_bc(self.mapping.name,
                                                           [str(r["id"]).lower() for r in records])
        for rec in records:
            await self.to_record(rec, self.coupling_filter(couplings.get(str(rec["id"]).lower())))
        await self.flush()

    async def to_record(self, rec: dict, c: Coupling | None) -> None:
        m, rid = self.mapping, str(rec["id"]).lower()
        if c is None:
            if not self.uncoupled_allowed():
                self.record(OutcomeKind.SKIPPED, Reason.NOT_COUPLED, "The record is not coupled.", rid, None)
            elif self.req.ids is not None and not m.table_filter.matches(rec):  # type: ignore[union-attr]
                self.record(OutcomeKind.IGNORED, Reason.NOT_COUPLED,
                            "The record is not coupled and is outside the mapping's filter: "
                            + m.table_filter.describe_failures(rec), rid, None)  # type: ignore[union-attr]
            else:
                await self._place_in_dataverse(rec, None, Reason.NOT_COUPLED)
            return
        value = option_value_of(c.dataverse_id)
        option = options_svc.find_value(self.options, value) if value is not None else None
        decision = rules.decide(m, TO, source=rec, coupling=c, destination=option, forced=self.req.forced)
        await self._apply_to(rec, c, option, decision)

    async def _place_in_dataverse(self, rec: dict, old: Coupling | None, reason: Reason | None) -> None:
        rid = str(rec["id"]).lower()
        try:
            if old is not None:
                await self.rt.couplings.delete(old)
            placed = await options_svc.place_in_dataverse(self.rt, self.mapping, rec, self.options,
                                                          job_id=self.job.id)
        except (errors.RequestError, errors.UpstreamError) as exc:
            self.record(OutcomeKind.FAILED, Reason.TRANSFER_FAILED, f"Inserting failed: {exc.message}", rid, None)
            return
        o = placed.option
        what = options_svc.describe(self.mapping, o[OPTION_VALUE], o[OPTION_LABEL])
        if placed.how == "inserted":
            self.record(OutcomeKind.INSERTED, reason, f"New {what}.", rid, placed.coupling.dataverse_id)
        else:  # coupled with the option that has its label (BC's implicit coupling): nothing to write
            self.record(OutcomeKind.MODIFIED, reason, f"Coupled with the existing {what}.", rid,
                        placed.coupling.dataverse_id)

    async def _apply_to(self, rec: dict, c: Coupling, option: dict | None, decision: Decision) -> None:
        rid, did = c.bc_id, c.dataverse_id
        a = decision.action
        if a in (Action.SKIP, Action.IGNORE):
            self.record(decision.outcome_kind, decision.reason, decision.message, rid, did)
        elif a is Action.FAIL:
            message = decision.message or "failed"
            if decision.reason is Reason.DELETION_CONFLICT:
                message = message.replace("record does not exist", "option does not exist").replace(
                    "coupled to a deleted record", "coupled to a deleted option")
            self.fail(c, message, rid, did, decision.reason or Reason.TRANSFER_FAILED)
        elif a is Action.REMOVE_COUPLING:
            await self.rt.couplings.delete(c)
            self.record(OutcomeKind.UNCOUPLED, decision.reason,
                        "The coupling was removed because the coupled option was deleted.", rid, did)
        elif a in (Action.INSERT, Action.RESTORE):
            await self._place_in_dataverse(rec, c, decision.reason)
        elif a is Action.UNCHANGED:
            self.succeed(c, OutcomeKind.UNCHANGED, decision.reason, None, rec)
        else:  # Modify / ForceModify: rename the option when the label really changes
            assert option is not None
            label = decision.changes.get(OPTION_LABEL)
            if label is None or options_svc.label_key(label) == options_svc.label_key(option[OPTION_LABEL]):
                kind = OutcomeKind.MODIFIED if a is Action.FORCE_MODIFY else OutcomeKind.UNCHANGED
                self.succeed(c, kind, None if a is Action.FORCE_MODIFY else Reason.NO_CHANGES, None, rec)
                return
            taken = [o for o in options_svc.find_label(self.options, label)
                     if o[OPTION_VALUE] != option[OPTION_VALUE]]
            if taken:
                current = options_svc.describe(self.mapping, option[OPTION_VALUE], option[OPTION_LABEL])
                self.fail(c, f"Cannot rename {current} to '{label}': option {taken[0][OPTION_VALUE]} already has "
                             "that label.", rid, did)
                return
            os_ = self.mapping.option_set
            try:
                await self.rt.dataverse.update_option_label(os_.table, os_.column,  # type: ignore[union-attr]
                                                            option[OPTION_VALUE], label)
            except (errors.RequestError, errors.UpstreamError) as exc:
                self.fail(c, f"Modifying {options_svc.describe(self.mapping, option[OPTION_VALUE])} failed: "
                             f"{exc.message}", rid, did)
                return
            option[OPTION_LABEL] = label
            self.succeed(c, OutcomeKind.MODIFIED, decision.reason, decision.message, rec, always_write=True)

    # -- FromIntegrationTable ------------------------------------------------------------------------------------
    async def from_pass(self) -> None:
        self.options = await options_svc.read_options(self.rt, self.mapping)
        chosen = self.options
        if self.req.ids is not None:
            by_id = {option_value_id(o[OPTION_VALUE]): o for o in self.options if options_svc.couplable(o)}
            chosen = []
            for i in self.req.ids:
                o = by_id.get(str(i).lower())
                if o is None:
                    value = option_value_of(i)
                    what = options_svc.describe(self.mapping, value) if value is not None else f"Dataverse id {i}"
                    self.record(OutcomeKind.FAILED, None, f"The {what} does not exist.", None, str(i).lower())
                else:
                    chosen.append(o)
        for start in range(0, len(chosen), PAGE):
            await self.from_page(chosen[start:start + PAGE])

    async def from_page(self, options: list[dict]) -> None:
        for o in [o for o in options if not options_svc.couplable(o)]:
            self.record(OutcomeKind.FAILED, None, f"The {options_svc.describe(self.mapping, o[OPTION_VALUE])} can't "
                        "be coupled: option values below 1 have no coupling id.", None, None)
        options = [o for o in options if options_svc.couplable(o)]
        if not options:
            return
        m = self.mapping
        couplings = await self.rt.couplings.get_many_by_dataverse(
            m.name, [option_value_id(o[OPTION_VALUE]) for o in options])
        coupled_bc = [c.bc_id for c in couplings.values()]
        records = await self.rt.bc.get_many(m.bc_entity_set, coupled_bc, select=list(m.bc_select())) \
            if coupled_bc else {}
        for o in options:
            did = option_value_id(o[OPTION_VALUE])
            c = self.coupling_filter(couplings.get(did))
            if c is None:
                if not self.uncoupled_allowed():
                    self.record(OutcomeKind.SKIPPED, Reason.NOT_COUPLED, "The option is not coupled.", None, did)
                else:
                    await self._place_in_bc(o, None, Reason.NOT_COUPLED)
                continue
            if c.skipped:
                self.record(OutcomeKind.SKIPPED, Reason.COUPLING_SKIPPED, "The option is marked as skipped.",
                            c.bc_id, did)
                continue
            problem = options_svc.label_problem(m, o)
            if problem:
                self.fail(c, problem, c.bc_id, did)
                continue
            rec = records.get(c.bc_id)
            decision = rules.decide(m, FROM, source=o, coupling=c, destination=rec, forced=self.req.forced)
            await self._apply_from(o, c, rec, decision)
        await self.flush()

    async def _place_in_bc(self, option: dict, old: Coupling | None, reason: Reason | None) -> None:
        did = option_value_id(option[OPTION_VALUE])
        try:
            if old is not None:
                await self.rt.couplings.delete(old)
            placed = await options_svc.place_in_bc(self.rt, self.mapping, option, job_id=self.job.id)
        except (errors.RequestError, errors.UpstreamError) as exc:
            self.record(OutcomeKind.FAILED, Reason.TRANSFER_FAILED, f"Inserting failed: {exc.message}", None, did)
            return
        caption = bc_caption(self.mapping.bc_entity_type)
        if placed.how == "inserted":
            self.record(OutcomeKind.INSERTED, reason, f"New {caption} record for "
                        f"{options_svc.describe(self.mapping, option[OPTION_VALUE], option[OPTION_LABEL])}.",
                        placed.coupling.bc_id, did)
        else:
            self.record(OutcomeKind.MODIFIED, reason, f"Coupled with the existing {caption} record of the same code.",
                        placed.coupling.bc_id, did)

    async def _apply_from(self, option: dict, c: Coupling, rec: dict | None, decision: Decision) -> None:
        rid, did = c.bc_id, c.dataverse_id
        a = decision.action
        if a in (Action.SKIP, Action.IGNORE):
            self.record(decision.outcome_kind, decision.reason, decision.message, rid, did)
        elif a is Action.FAIL:
            self.fail(c, decision.message or "failed", rid, did, decision.reason or Reason.TRANSFER_FAILED)
        elif a is Action.REMOVE_COUPLING:
            await self.rt.couplings.delete(c)
            self.record(OutcomeKind.UNCOUPLED, decision.reason, decision.message, rid, did)
        elif a in (Action.INSERT, Action.RESTORE):
            await self._place_in_bc(option, c, decision.reason)
        elif a is Action.UNCHANGED or not decision.changes:
            kind = OutcomeKind.MODIFIED if a is Action.FORCE_MODIFY else OutcomeKind.UNCHANGED
            self.succeed(c, kind, decision.reason, None, rec)
        else:  # Modify / ForceModify: rename the BC code
            assert rec is not None
            try:
                after = await self.rt.bc.update(self.mapping.bc_entity_set, rid, decision.changes,
                                                etag=rec.get("@odata.etag") or "*")
            except (errors.RequestError, errors.UpstreamError) as exc:
                self.fail(c, f"Modifying {self.mapping.bc_entity_set} {rid} failed: {exc.message}", rid, did)
                return
            self.succeed(c, OutcomeKind.MODIFIED, decision.reason, decision.message, {**rec, **(after or {})},
                         always_write=True)


def _worth_writing(before: Coupling, after: Coupling) -> bool:
    from dataclasses import replace

    return replace(before, to_job_id=None, from_job_id=None) != replace(after, to_job_id=None, from_job_id=None)


async def run_option_pass(rt: Any, req: Any, *, job: Job | None = None) -> Any:
    """Run one pass of an option mapping as one job (``sync.engine.run_pass`` dispatches here).
    Returns a ``sync.engine.PassResult``."""
    from .engine import PassResult

    mapping, d = req.mapping, Direction(req.direction)
    if not mapping.is_option_mapping:
        raise ValueError(f"{mapping.name} is not an option mapping")
    job = await rt.jobs.start(job or rt.jobs.new_job(mapping.name, d.value, req.kind, details=req.details))
    p = _OptionPass(rt, req, job)
    try:
        if d is TO:
            await p.to_pass()
        else:
            await p.from_pass()
        job.status, job.message = "Finished", None
    except Exception as exc:  # the job row says what stopped it
        job.status = "Failed"
        job.message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        raise
    finally:
        try:
            await p.flush()
        except Exception:  # noqa: BLE001 - the job row must still be written
            log.exception("couplings of %s not saved", mapping.name)
        job.counters = p.counters.to_json()
        if req.keep_outcomes:
            job.outcomes = [o.to_json() for o in p.outcomes]
        if p.errors:
            await rt.jobs.add_errors(job.id, p.errors)
        await rt.jobs.finish(job)
    return PassResult(job, p.counters, p.outcomes)
