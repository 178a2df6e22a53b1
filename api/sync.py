"""Synchronization functions: sync-now (HTTP), the job log (HTTP), the scheduled sync (timer) and the worker
that runs queued work (queue trigger) - one mapping of a scheduled run, or a large sync-now."""
from __future__ import annotations

import json
import typing
import logging
import uuid
from datetime import datetime, timezone

import azure.functions as func

from sync import errors, schedule
from sync.runtime import get_runtime
from sync.sync_now import MAX_IDS, resolve_direction, sync_now

from . import openapi as oa
from .http import field, guid_list, http_endpoint, int_param, json_response, query_param, read_json, reject_unknown

log = logging.getLogger(__name__)
bp = func.Blueprint()

QUEUE = "sync-work"
QUEUE_CONNECTION = "AzureWebJobsStorage"
INLINE_LIMIT = 100
"""Up to this many records, sync-now answers with the outcomes (200); more: 202 and a job to poll, since
Power Automate waits 120 s at most and Azure cuts HTTP responses at 230 s."""

# --- OpenAPI shapes ----------------------------------------------------------------------------------------------
_COUNTERS = oa.obj("Counters", "Records per outcome (BC's job counters).", {
    name: oa.prop("integer", name.capitalize(), f"Records {name}.")
    for name in ("inserted", "modified", "unchanged", "skipped", "failed")})
_OUTCOME = oa.obj("Record outcome", "What happened to one record.", {
    "result": oa.prop("string", "Result", "inserted, modified, unchanged, skipped, failed, uncoupled or ignored."),
    "reason": oa.prop("string", "Reason", "Why it was skipped, unchanged or failed (a stable code)."),
    "message": oa.prop("string", "Message", "BC's message for a failure or a skip."),
    "bcId": oa.prop("string", "BC record ID", "SystemId of the BC record."),
    "dataverseId": oa.prop("string", "Dataverse row ID", "Id of the Dataverse row."),
})
JOB = oa.define("Job", oa.obj("Job", "One synchronization pass (BC: Integration Synch. Job).", {
    "id": oa.prop("string", "Job ID", "The job's id."),
    "mapping": oa.prop("string", "Table mapping", "The table mapping."),
    "direction": oa.prop("string", "Direction", "ToIntegrationTable or FromIntegrationTable."),
    "kind": oa.prop("string", "Kind", "Synchronization, SyncNow, Coupling or Uncoupling."),
    "status": oa.prop("string", "Status", "Queued, Running, Finished or Failed."),
    "startedAt": oa.prop("string", "Started at", "UTC start time.", format="date-time"),
    "finishedAt": oa.prop("string", "Finished at", "UTC end time, empty while running.", format="date-time"),
    "counters": _COUNTERS,
    "message": oa.prop("string", "Message", "The job-level message, e.g. why it failed."),
}))


def job_json(job, *, with_outcomes: bool = False) -> dict:
    out = {"id": job.id, "mapping": job.mapping, "direction": job.direction, "kind": job.kind,
           "status": job.status, "startedAt": job.started_at, "finishedAt": job.finished_at,
           "counters": job.counters, "message": job.message}
    if with_outcomes and job.outcomes is not None:
        out["records"] = job.outcomes
        out["recordsTruncated"] = bool(getattr(job, "outcomes_truncated", False))
    return out


# --- sync-now ------------------------------------------------------------------------------------------------------
oa.operation(
    "/sync-now", "post", operation_id="SynchronizeNow", summary="Synchronize records now",
    description=("BC's Synchronize Now for coupled records. One record is synchronized in the chosen direction "
                 "(or merged both ways with Bidirectional); several follow BC's list rule: uncoupled and skipped "
                 "records, and records whose destination changed since the last synchronization, are skipped with "
                 f"the reason. Up to {INLINE_LIMIT} records answer 200 with the outcomes; more answer 202 with a "
                 "Location to poll."),
    parameters=[oa.body_param(oa.obj("Sync-now request", "Records and direction.", {
        "mapping": oa.prop("string", "Table mapping", "Name of the table mapping, e.g. CUSTOMER.",
                           **{"x-ms-visibility": "important"}),
        "bcIds": oa.array("BC record IDs", f"SystemIds of BC records (at most {MAX_IDS}).",
                          oa.prop("string", "BC record ID", "SystemId (GUID).")),
        "dataverseIds": oa.array("Dataverse row IDs", f"Ids of Dataverse rows (at most {MAX_IDS}).",
                                 oa.prop("string", "Dataverse row ID", "Row id (GUID).")),
        "direction": oa.prop("string", "Direction", "ToIntegrationTable (send to Dataverse) or FromIntegrationTable "
                             "(get from Dataverse); required for a Bidirectional mapping. Bidirectional merges one "
                             "record both ways.",
                             enum=["ToIntegrationTable", "FromIntegrationTable", "Bidirectional"]),
    }, required=["mapping"]))],
    responses={
        "200": ("Done: the outcome per record.", oa.obj("Sync-now result", "Counts and outcomes.", {
            "mapping": oa.prop("string", "Table mapping", "The table mapping."),
            "direction": oa.prop("string", "Direction", "The direction used."),
            "counts": _COUNTERS,
            "jobs": oa.array("Jobs", "The job of each pass.", oa.prop("string", "Job ID", "A job id.")),
            "records": oa.array("Records", "One outcome per record.", _OUTCOME),
        })),
        "202": ("Accepted: poll the Location (GET /api/jobs/{id}) until the job is Finished.", JOB),
    },
)


@bp.function_name("sync_now")
@bp.route(route="sync-now", methods=["POST"])
@bp.queue_output(arg_name="queue", queue_name=QUEUE, connection=QUEUE_CONNECTION)
@http_endpoint
async def sync_now_http(req: func.HttpRequest, queue: func.Out[str]) -> func.HttpResponse:
    body = read_json(req)
    reject_unknown(body, {"mapping", "bcIds", "dataverseIds", "direction"})
    bc_ids = guid_list(body, "bcIds", max_items=MAX_IDS)
    dv_ids = guid_list(body, "dataverseIds", max_items=MAX_IDS)
    if (bc_ids is None) == (dv_ids is None) or not (bc_ids or dv_ids):
        raise errors.RequestError("Give exactly one non-empty list: 'bcIds' or 'dataverseIds'.", code="InvalidIds")
    requested = field(body, "direction", str)
    rt = get_runtime()
    mapping = await rt.mapping(body.get("mapping"))
    selected = bc_ids or dv_ids or []
    direction = resolve_direction(mapping, requested, single=len(selected) == 1)
    if len(selected) <= INLINE_LIMIT:
        result = await sync_now(rt, mapping, bc_ids=bc_ids, dataverse_ids=dv_ids, direction=direction)
        return json_response(result.to_json())
    job = await rt.jobs.enqueue(rt.jobs.new_job(mapping.name, direction.value, "SyncNow",
                                                details={"direction": direction.value, "selected": len(selected)}))
    queue.set(json.dumps({"kind": "sync-now", "jobId": job.id, "mapping": mapping.name,
                          "direction": direction.value, "bcIds": bc_ids, "dataverseIds": dv_ids}))
    location = req.url.split("/api/", 1)[0] + f"/api/jobs/{job.id}"
    return json_response(job_json(job), 202, headers={"Location": location, "Retry-After": "5"})


# --- jobs ----------------------------------------------------------------------------------------------------------
oa.operation(
    "/jobs", "get", operation_id="ListJobs", summary="List synchronization jobs",
    description="The job log, newest first (BC: Integration Synch. Job List), optionally for one table mapping.",
    parameters=[
        oa.query_param("mapping", "Table mapping", "Only this table mapping's jobs."),
        oa.query_param("pageSize", "Page size", "Jobs per page (1-200, default 50).", kind="integer"),
        oa.query_param("continuation", "Continuation", "The continuation token of the previous page."),
    ],
    responses={"200": ("A page of jobs.", oa.obj("Jobs", "Newest first.", {
        "value": oa.array("Jobs", "The jobs of this page.", JOB),
        "continuation": oa.prop("string", "Continuation", "Pass it back for the next page; absent at the end."),
    }))},
)


@bp.function_name("list_jobs")
@bp.route(route="jobs", methods=["GET"])
@http_endpoint
async def list_jobs(req: func.HttpRequest) -> func.HttpResponse:
    rt = get_runtime()
    name = query_param(req, "mapping")
    mapping = (await rt.mapping(name, member="mapping")).name if name else None
    page_size = int_param(req, "pageSize", default=50, low=1, high=200)
    jobs, token = await rt.jobs.list(mapping, page_size, query_param(req, "continuation"))
    payload: dict = {"value": [job_json(j) for j in jobs]}
    if token:
        payload["continuation"] = token
    return json_response(payload)


oa.operation(
    "/jobs/{id}", "get", operation_id="GetJob", summary="Get a synchronization job",
    description="One job with its per-record outcomes (when kept) and its error rows: poll it after a 202.",
    parameters=[oa.path_param("id", "Job ID", "The job's id.")],
    responses={"200": ("The job.", oa.obj("Job details", "The job, its outcomes and errors.", {
        "job": JOB,
        "records": oa.array("Records", "Per-record outcomes (sync-now jobs).", _OUTCOME),
        "errors": oa.array("Errors", "One row per failed record.", oa.obj("Job error", "A failed record.", {
            "bcId": oa.prop("string", "BC record ID", "SystemId of the BC record."),
            "dataverseId": oa.prop("string", "Dataverse row ID", "Id of the Dataverse row."),
            "message": oa.prop("string", "Message", "Why it failed."),
            "at": oa.prop("string", "At", "When (UTC).", format="date-time"),
        })),
    }))},
)


@bp.function_name("get_job")
@bp.route(route="jobs/{id}", methods=["GET"])
@http_endpoint
async def get_job(req: func.HttpRequest) -> func.HttpResponse:
    job_id = req.route_params.get("id") or ""
    if not job_id.isalnum() or len(job_id) > 64:
        raise errors.RequestError("Not a job id.", code="InvalidId")
    rt = get_runtime()
    job = await rt.jobs.get(job_id)
    if job is None:
        raise errors.NotFound(f"Job {job_id} does not exist.", code="JobNotFound")
    failures = await rt.jobs.list_errors(job.id)
    payload = {"job": job_json(job), "errors": [
        {"bcId": e.bc_id, "dataverseId": e.dataverse_id, "message": e.message, "at": e.at} for e in failures]}
    if job.outcomes is not None:
        payload["records"] = job.outcomes
    return json_response(payload)


# --- the scheduled synchronization --------------------------------------------------------------------------------
@bp.function_name("scheduled_sync")
@bp.timer_trigger(arg_name="timer", schedule="0 * * * * *", run_on_startup=False, use_monitor=True)
@bp.queue_output(arg_name="queue", queue_name=QUEUE, connection=QUEUE_CONNECTION)
async def scheduled_sync(timer: func.TimerRequest, queue: func.Out[typing.List[str]]) -> None:  # noqa: UP006
    # typing.List, not list[str]: the Python worker's binding check rejects the builtin generic (its indexer
    # test says so: "invalid non-type annotation").
    """Ticks every minute; starts a run when SYNC_SCHEDULE fired since the previous tick (see sync.cron)."""
    rt = get_runtime()
    run_id, messages = await schedule.tick(rt, datetime.now(timezone.utc))
    if messages:
        log.info("scheduled run %s: starting %d mappings", run_id, len(messages))
        queue.set(messages)


@bp.function_name("sync_worker")
@bp.queue_trigger(arg_name="msg", queue_name=QUEUE, connection=QUEUE_CONNECTION)
@bp.queue_output(arg_name="queue", queue_name=QUEUE, connection=QUEUE_CONNECTION)
async def sync_worker(msg: func.QueueMessage, queue: func.Out[typing.List[str]]) -> None:
    """Runs one unit of queued work. An exception makes the queue deliver the message again (up to
    maxDequeueCount in host.json); the work is safe to repeat."""
    try:
        work = json.loads(msg.get_body().decode("utf-8"))
        kind = work["kind"]
    except (ValueError, KeyError, UnicodeDecodeError):
        log.error("sync-work: unreadable message dropped: %r", msg.get_body()[:200])
        return
    rt = get_runtime()
    if kind == "mapping":
        result, ready = await schedule.run_scheduled_mapping(rt, work["runId"], work["mapping"],
                                                             owner=str(msg.id or uuid.uuid4()))
        log.info("run %s: %s %s", work["runId"], work["mapping"], result.outcome)
        if ready:
            queue.set(ready)
    elif kind == "sync-now":
        await _queued_sync_now(rt, work)
    else:
        log.error("sync-work: unknown kind %r dropped", kind)


async def _queued_sync_now(rt, work: dict) -> None:
    job = await rt.jobs.get(work["jobId"])
    if job is None or job.status not in ("Queued", "Running"):
        return  # done already (a repeated delivery)
    mapping = await rt.mapping(work["mapping"])
    direction = resolve_direction(mapping, work["direction"], single=False)
    try:
        result = await sync_now(rt, mapping, bc_ids=work.get("bcIds"), dataverse_ids=work.get("dataverseIds"),
                                direction=direction, job=job)
    except errors.SyncError as exc:
        await rt.jobs.finish(job, status="Failed", message=exc.message)
        return
    # The job row tells the whole story: also the records that never reached a pass (not coupled).
    done = await rt.jobs.get(job.id) or job
    await rt.jobs.finish(done, status="Finished" if done.status != "Failed" else "Failed",
                         counters=result.counts(), outcomes=[o.to_json() for o in result.outcomes])
