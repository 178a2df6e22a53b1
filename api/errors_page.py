"""HTTP functions of the synchronization errors page (BC: Coupled Data Synchronization Errors): list the skipped
couplings, retry, synchronize, restore, find for deleted, and clean up the job log. Uncoupling from the page is
``POST /api/uncouple``."""
from __future__ import annotations

import azure.functions as func

from sync import errors, errors_page
from sync.runtime import get_runtime
from sync.sync_now import resolve_direction

from . import openapi as oa
from .http import field, guid_list, http_endpoint, int_param, json_response, query_param, read_json, reject_unknown

bp = func.Blueprint()

MAX_RETRY_IDS = 10_000

# --- OpenAPI shapes ----------------------------------------------------------------------------------------------
_MAPPING = oa.prop("string", "Table mapping", "Name of the table mapping, e.g. CUSTOMER, VENDOR, CONTACT, ITEM-PRODUCT.",
                   **{"x-ms-visibility": "important"})
_BC_ID = oa.prop("string", "BC record ID", "SystemId (GUID) of the Business Central record.")
_DV_ID = oa.prop("string", "Dataverse row ID", "Primary id (GUID) of the Dataverse row.")


def _selection(summary: str, description: str, limit: int, extra: dict | None = None) -> dict:
    return oa.obj(summary, description, {
        "mapping": _MAPPING,
        "bcIds": oa.array("BC record IDs", f"The skipped records to handle, by BC SystemId (at most {limit}).",
                          oa.prop("string", "BC record ID", "SystemId (GUID).")),
        "all": oa.prop("boolean", "All", "Handle every skipped coupling of the table mapping instead of bcIds."),
        **(extra or {}),
    }, required=["mapping"])


ERROR_ENTRY = oa.define("SynchronizationError", oa.obj(
    "Synchronization error", "A skipped coupling with its latest error.", {
        "mapping": oa.prop("string", "Table mapping", "The table mapping of the coupling."),
        "bcId": _BC_ID,
        "dataverseId": _DV_ID,
        "lastError": oa.prop("string", "Error message", "The latest synchronization error of the coupling."),
        "direction": oa.prop("string", "Failed direction", "ToIntegrationTable or FromIntegrationTable: the pass "
                             "that failed (ToIntegrationTable when both did); empty when marked by find deleted."),
        "jobId": oa.prop("string", "Job ID", "The job of the failure (GET /api/jobs/{id} shows its error rows)."),
        "bcExists": oa.prop("boolean", "BC record exists", "Whether the Business Central record still exists."),
        "dataverseExists": oa.prop("boolean", "Dataverse row exists", "Whether the Dataverse row still exists."),
        "coupledAt": oa.prop("string", "Coupled at", "When the coupling was made (UTC).", format="date-time"),
    }))
_NOTE = oa.obj("Record outcome", "What the action did for one selected record.", {
    "bcId": _BC_ID,
    "dataverseId": _DV_ID,
    "outcome": oa.prop("string", "Outcome", "A stable code, e.g. restored, failed, notRestorable, "
                       "nothingToRestore, notCoupled, notSkipped, bcRecordMissing, dataverseRowMissing."),
    "message": oa.prop("string", "Message", "Why, for people."),
    "recreated": oa.prop("string", "Recreated side", "Restore: bc or dataverse, the side that was created again."),
})
_COUNTERS = oa.obj("Counters", "Records per outcome.", {
    name: oa.prop("integer", name.capitalize(), f"Records {name}.")
    for name in ("inserted", "modified", "unchanged", "skipped", "failed")})
_SYNC_OUTCOME = oa.obj("Record outcome", "What happened to one record.", {
    "result": oa.prop("string", "Result", "inserted, modified, unchanged, skipped or failed."),
    "reason": oa.prop("string", "Reason", "Why it was skipped, unchanged or failed (a stable code)."),
    "message": oa.prop("string", "Message", "The message of a failure or a skip."),
    "bcId": _BC_ID,
    "dataverseId": _DV_ID,
})


def _bc_ids(body: dict, limit: int) -> list[str] | None:
    """The selection: a non-empty 'bcIds' (returned) or "all": true (None)."""
    bc_ids = guid_list(body, "bcIds", max_items=limit)
    all_records = field(body, "all", bool, default=False)
    if (bc_ids is not None) == all_records or (bc_ids is not None and not bc_ids):
        raise errors.RequestError("Give exactly one of a non-empty 'bcIds' or \"all\": true.", code="InvalidIds")
    return bc_ids


# --- the list ----------------------------------------------------------------------------------------------------
oa.operation(
    "/errors", "get", operation_id="ListSynchronizationErrors", summary="List synchronization errors",
    description=("The skipped couplings (BC: Coupled Data Synchronization Errors), with the latest error, the failed "
                 "direction and job, and whether each record still exists; a page at a time. Without a mapping: "
                 "every record mapping."),
    parameters=[
        oa.query_param("mapping", "Table mapping", "Only this table mapping's errors.", visibility="important"),
        oa.query_param("pageSize", "Page size", "Errors per page (1-1000, default 100).", kind="integer"),
        oa.query_param("continuation", "Continuation", "The continuation token of the previous page."),
    ],
    responses={"200": ("A page of errors.", oa.obj("Synchronization errors", "Skipped couplings.", {
        "value": oa.array("Errors", "The errors of this page.", ERROR_ENTRY),
        "continuation": oa.prop("string", "Continuation", "Pass it back for the next page; absent at the end."),
    }))},
)


@bp.function_name("list_sync_errors")
@bp.route(route="errors", methods=["GET"])
@http_endpoint
async def list_sync_errors(req: func.HttpRequest) -> func.HttpResponse:
    page_size = int_param(req, "pageSize", default=100, low=1, high=1000)
    rt = get_runtime()
    name = query_param(req, "mapping")
    if name:
        mappings = [await rt.mapping(name, member="mapping")]
    else:
        every = await rt.mappings()
        mappings = [every[n] for n in sorted(every) if not every[n].is_option_mapping]
    entries, token = await errors_page.list_errors(rt, mappings, page_size, query_param(req, "continuation"))
    payload: dict = {"value": [e.to_json() for e in entries]}
    if token:
        payload["continuation"] = token
    return json_response(payload)


# --- retry -------------------------------------------------------------------------------------------------------
oa.operation(
    "/errors/retry", "post", operation_id="RetrySkippedRecords", summary="Retry skipped records",
    description=("BC's Retry and Retry All: clears the skipped mark so the next scheduled synchronization retries the "
                 "records (their failed result is kept). Only where the BC record exists, and for a failed "
                 "FromIntegrationTable pass where the Dataverse row exists too."),
    parameters=[oa.body_param(_selection("Retry request", "Exactly one of bcIds or all.", MAX_RETRY_IDS))],
    responses={"200": ("What was retried.", oa.obj("Retry result", "Count and the records not retried.", {
        "mapping": oa.prop("string", "Table mapping", "The table mapping."),
        "retried": oa.prop("integer", "Retried", "Couplings no longer skipped."),
        "notRetried": oa.array("Not retried", "The selected records left as they were, with the reason.", _NOTE),
    }))},
)


@bp.function_name("retry_skipped")
@bp.route(route="errors/retry", methods=["POST"])
@http_endpoint
async def retry_skipped(req: func.HttpRequest) -> func.HttpResponse:
    body = read_json(req)
    reject_unknown(body, {"mapping", "bcIds", "all"})
    bc_ids = _bc_ids(body, MAX_RETRY_IDS)
    rt = get_runtime()
    mapping = await rt.mapping(body.get("mapping"))
    result = await errors_page.retry(rt, mapping, bc_ids=bc_ids)
    return json_response(result.to_json())


# --- synchronize -------------------------------------------------------------------------------------------------
oa.operation(
    "/errors/synchronize", "post", operation_id="SynchronizeSkippedRecords",
    summary="Synchronize skipped records now",
    description=("BC's Synchronize on the errors page: clears the skipped mark and synchronizes the records now in the "
                 "chosen direction, whichever side changed (e.g. to settle an update conflict). Records whose "
                 f"counterpart is missing are skipped with the reason. At most {errors_page.ACTION_LIMIT} records."),
    parameters=[oa.body_param(_selection(
        "Synchronize request", "Exactly one of bcIds or all, and the direction.", errors_page.ACTION_LIMIT, {
            "direction": oa.prop("string", "Direction", "ToIntegrationTable (send the BC data to Dataverse) or "
                                 "FromIntegrationTable (get the Dataverse data); required for a Bidirectional "
                                 "mapping.", enum=["ToIntegrationTable", "FromIntegrationTable"]),
        }))],
    responses={"200": ("The outcome per record.", oa.obj("Synchronize result", "Counts and outcomes.", {
        "mapping": oa.prop("string", "Table mapping", "The table mapping."),
        "direction": oa.prop("string", "Direction", "The direction used."),
        "counts": _COUNTERS,
        "jobs": oa.array("Jobs", "The job of the pass.", oa.prop("string", "Job ID", "A job id.")),
        "records": oa.array("Records", "One outcome per selected record.", _SYNC_OUTCOME),
    }))},
)


@bp.function_name("synchronize_skipped")
@bp.route(route="errors/synchronize", methods=["POST"])
@http_endpoint
async def synchronize_skipped(req: func.HttpRequest) -> func.HttpResponse:
    body = read_json(req)
    reject_unknown(body, {"mapping", "bcIds", "all", "direction"})
    bc_ids = _bc_ids(body, errors_page.ACTION_LIMIT)
    requested = field(body, "direction", str)
    rt = get_runtime()
    mapping = await rt.mapping(body.get("mapping"))
    errors_page.require_record_mapping(mapping)
    direction = resolve_direction(mapping, requested, single=False)
    result = await errors_page.synchronize(rt, mapping, direction, bc_ids=bc_ids)
    return json_response(result.to_json())


# --- restore -----------------------------------------------------------------------------------------------------
oa.operation(
    "/errors/restore", "post", operation_id="RestoreDeletedRecords", summary="Restore deleted records",
    description=("BC's Restore Records: for each selected skipped coupling whose BC record or Dataverse row was "
                 "deleted, creates it again from the other side and couples the two. Couplings with both or neither "
                 f"side missing are reported, not changed. At most {errors_page.ACTION_LIMIT} records."),
    parameters=[oa.body_param(_selection("Restore request", "Exactly one of bcIds or all.",
                                         errors_page.ACTION_LIMIT))],
    responses={"200": ("The outcome per record.", oa.obj("Restore result", "Counts and outcomes.", {
        "mapping": oa.prop("string", "Table mapping", "The table mapping."),
        "counts": oa.obj("Counts", "Records per outcome.", {
            name: oa.prop("integer", name[0].upper() + name[1:], f"Records with outcome {name}.")
            for name in errors_page.RESTORE_OUTCOMES}),
        "records": oa.array("Records", "One outcome per selected record.", _NOTE),
    }))},
)


@bp.function_name("restore_deleted")
@bp.route(route="errors/restore", methods=["POST"])
@http_endpoint
async def restore_deleted(req: func.HttpRequest) -> func.HttpResponse:
    body = read_json(req)
    reject_unknown(body, {"mapping", "bcIds", "all"})
    bc_ids = _bc_ids(body, errors_page.ACTION_LIMIT)
    rt = get_runtime()
    mapping = await rt.mapping(body.get("mapping"))
    result = await errors_page.restore(rt, mapping, bc_ids=bc_ids)
    return json_response(result.to_json())


# --- find for deleted --------------------------------------------------------------------------------------------
oa.operation(
    "/errors/find-deleted", "post", operation_id="FindDeletedRecords",
    summary="Find couplings of deleted BC records",
    description=("BC's Find for Deleted: checks every coupling of the table mapping and marks skipped those whose "
                 "Business Central record no longer exists, so they show on the errors page to restore or uncouple."),
    parameters=[oa.body_param(oa.obj("Find deleted request", "The table mapping.", {"mapping": _MAPPING},
                                     required=["mapping"]))],
    responses={"200": ("Counts.", oa.obj("Find deleted result", "Counts.", {
        "mapping": oa.prop("string", "Table mapping", "The table mapping."),
        "checked": oa.prop("integer", "Checked", "Couplings checked."),
        "marked": oa.prop("integer", "Marked", "Couplings of deleted BC records now marked skipped."),
        "alreadySkipped": oa.prop("integer", "Already skipped", "Couplings of deleted BC records already skipped."),
        "changedMeanwhile": oa.prop("integer", "Changed meanwhile", "Couplings changed by someone else meanwhile."),
    }))},
)


@bp.function_name("find_deleted")
@bp.route(route="errors/find-deleted", methods=["POST"])
@http_endpoint
async def find_deleted(req: func.HttpRequest) -> func.HttpResponse:
    body = read_json(req)
    reject_unknown(body, {"mapping"})
    rt = get_runtime()
    mapping = await rt.mapping(body.get("mapping"))
    result = await errors_page.find_deleted(rt, mapping)
    return json_response(result.to_json())


# --- clean up the job log ----------------------------------------------------------------------------------------
oa.operation(
    "/errors/cleanup", "post", operation_id="CleanUpJobLog", summary="Delete old jobs and their errors",
    description=("BC's Delete Entries Older Than N Days: deletes the synchronization jobs started more than N days ago "
                 "and their error rows, keeping the jobs a skipped coupling still points to."),
    parameters=[{**oa.body_param(oa.obj("Cleanup request", "How old; the body may be empty.", {
        "days": oa.prop("integer", "Days", "Delete entries older than this many days (1-3650, default 7)."),
    }), description="The request (may be empty)."), "required": False}],
    responses={"200": ("Counts.", oa.obj("Cleanup result", "Counts.", {
        "olderThan": oa.prop("string", "Older than", "Jobs started before this time (UTC) were considered.",
                             format="date-time"),
        "deletedJobs": oa.prop("integer", "Deleted jobs", "Jobs deleted."),
        "deletedErrors": oa.prop("integer", "Deleted errors", "Error rows deleted with them."),
        "keptJobs": oa.prop("integer", "Kept jobs", "Old jobs kept because a skipped coupling points to them."),
    }))},
)


@bp.function_name("cleanup_job_log")
@bp.route(route="errors/cleanup", methods=["POST"])
@http_endpoint
async def cleanup_job_log(req: func.HttpRequest) -> func.HttpResponse:
    body = read_json(req, required=False)
    reject_unknown(body, {"days"})
    days = field(body, "days", int, default=errors_page.DEFAULT_CLEANUP_DAYS)
    result = await errors_page.cleanup(get_runtime(), days)  # checks the range before anything is read
    return json_response(result)
