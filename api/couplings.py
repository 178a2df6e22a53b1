"""HTTP functions for coupling: couple (existing pair or create new), match-based coupling, look up, uncouple."""
from __future__ import annotations

import azure.functions as func

from coupling import service
from coupling.model import option_value_id
from sync import errors
from sync.runtime import get_runtime
from sync.sync_now import resolve_direction, sync_now

from . import openapi as oa
from .http import (field, guid, guid_list, http_endpoint, int_param, json_response, query_param, read_json,
                   reject_unknown)

bp = func.Blueprint()

SYNC_DIRECTIONS = ("ToIntegrationTable", "FromIntegrationTable")

# --- OpenAPI shapes ----------------------------------------------------------------------------------------------
_MAPPING = oa.prop("string", "Table mapping", "Name of the table mapping, e.g. CUSTOMER, VENDOR, CONTACT, ITEM-PRODUCT.",
                   **{"x-ms-visibility": "important"})
_BC_ID = oa.prop("string", "BC record ID", "SystemId (GUID) of the Business Central record.")
_DV_ID = oa.prop("string", "Dataverse row ID", "Primary id (GUID) of the Dataverse row.")
_OPTION_VALUE = oa.prop("integer", "Dataverse option value",
                        "Option mappings (PAYMENT TERMS, SHIPMENT METHOD): the value of the option in the Dataverse "
                        "choice column, e.g. 3. Couplings store it as the pseudo-GUID dataverseId "
                        "00000000-0000-0000-0000-<value in 12 hex digits>.")
_RESULT = oa.obj("Last result", "Result and job of the last synchronization in that direction.", {
    "result": oa.prop("string", "Result", "Success or Failure; empty when never synchronized in that direction."),
    "jobId": oa.prop("string", "Job ID", "The synchronization job of that result."),
})
COUPLING = oa.define("Coupling", oa.obj("Coupling", "One BC record coupled with one Dataverse row.", {
    "mapping": oa.prop("string", "Table mapping", "The table mapping of the coupling."),
    "bcId": _BC_ID,
    "dataverseId": _DV_ID,
    "dataverseOptionValue": _OPTION_VALUE,
    "coupledAt": oa.prop("string", "Coupled at", "When the coupling was made (UTC).", format="date-time"),
    "skipped": oa.prop("boolean", "Skipped", "Excluded from synchronization until retried (errors page)."),
    "lastSynchModifiedOn": oa.prop("string", "BC modified on at last synch",
                                   "The BC record's lastModifiedDateTime at the last successful synchronization.",
                                   format="date-time"),
    "lastSynchDataverseModifiedOn": oa.prop("string", "Dataverse modified on at last synch",
                                            "The Dataverse row's modifiedon at the last successful synchronization.",
                                            format="date-time"),
    "lastSynchToIntegrationTable": _RESULT,
    "lastSynchFromIntegrationTable": _RESULT,
    "lastError": oa.prop("string", "Last error", "The latest synchronization error of the coupling, if any."),
}))
_COUPLE_RESULT = oa.obj("Couple result", "The coupling and whether this request made it.", {
    "coupling": COUPLING,
    "created": oa.prop("boolean", "Created", "False when the same coupling already existed (a repeated request)."),
    "synchronization": oa.obj("Synchronization", "With syncAfterCoupling: what the synchronization did.", {
        "direction": oa.prop("string", "Direction", "The direction synchronized."),
        "jobs": oa.array("Jobs", "The job of the pass.", oa.prop("string", "Job ID", "A job id.")),
    }),
})

oa.operation(
    "/couple", "post", operation_id="CoupleRecords", summary="Couple a BC record with a Dataverse row",
    description=("Couples an existing Business Central record with an existing Dataverse row (BC: Set Up Coupling), "
                 "or, with createNew, creates the counterpart of one record in the other system and couples it "
                 "(BC: Create New). Repeating the same request never creates a second record. Option mappings "
                 "(PAYMENT TERMS, SHIPMENT METHOD) couple with an option value (dataverseOptionValue) instead of a "
                 "row; createNew with bcId adds an option labelled with the BC code (or finds the option that has "
                 "that label), with dataverseOptionValue it creates a BC record whose code is the label."),
    parameters=[oa.body_param(oa.obj("Couple request", "What to couple.", {
        "mapping": _MAPPING,
        "bcId": _BC_ID,
        "dataverseId": _DV_ID,
        "dataverseOptionValue": _OPTION_VALUE,
        "createNew": oa.prop("boolean", "Create new", "Create the counterpart of the single id given, then couple."),
        "syncAfterCoupling": oa.prop("string", "Synchronize after coupling",
                                     "ToIntegrationTable (use the BC data) or FromIntegrationTable (use the Dataverse "
                                     "data): synchronize the pair right after coupling.",
                                     enum=list(SYNC_DIRECTIONS), **{"x-ms-visibility": "advanced"}),
    }, required=["mapping"]))],
    responses={"201": ("Coupled.", _COUPLE_RESULT), "200": ("Already coupled exactly so.", _COUPLE_RESULT)},
)


@bp.function_name("couple")
@bp.route(route="couple", methods=["POST"])
@http_endpoint
async def couple(req: func.HttpRequest) -> func.HttpResponse:
    body = read_json(req)
    reject_unknown(body, {"mapping", "bcId", "dataverseId", "dataverseOptionValue", "createNew", "syncAfterCoupling"})
    create_new = field(body, "createNew", bool, default=False)
    sync_after = field(body, "syncAfterCoupling", str)
    if sync_after is not None and sync_after not in SYNC_DIRECTIONS:
        raise errors.RequestError(f"'syncAfterCoupling' must be one of {', '.join(SYNC_DIRECTIONS)}.",
                                  code="InvalidField", details={"field": "syncAfterCoupling"})
    bc_id = guid(body["bcId"], "bcId") if body.get("bcId") is not None else None
    dv_id = guid(body["dataverseId"], "dataverseId") if body.get("dataverseId") is not None else None
    option = _option_value(body)
    if option is not None:
        if dv_id is not None:
            raise errors.RequestError("Give 'dataverseId' (a row) or 'dataverseOptionValue' (an option of an option "
                                      "mapping), not both.", code="InvalidIds")
        dv_id = option_value_id(option)
    if create_new:
        if (bc_id is None) == (dv_id is None):
            raise errors.RequestError("With 'createNew', give exactly one of 'bcId' (create in Dataverse) or "
                                      "'dataverseId' / 'dataverseOptionValue' (create in Business Central).",
                                      code="InvalidIds")
    elif bc_id is None or dv_id is None:
        raise errors.RequestError("Give both 'bcId' and 'dataverseId' ('dataverseOptionValue' for an option mapping), "
                                  "or one of them with \"createNew\": true.", code="InvalidIds")
    rt = get_runtime()
    mapping = await rt.mapping(body.get("mapping"))
    if mapping.is_option_mapping and body.get("dataverseId") is not None:
        raise errors.RequestError(f"Table mapping {mapping.name} is an option mapping: give 'dataverseOptionValue' "
                                  "(the option value) instead of 'dataverseId'.", code="InvalidIds",
                                  details={"field": "dataverseId"})
    if option is not None and not mapping.is_option_mapping:
        raise errors.RequestError(f"'dataverseOptionValue' is for option mappings; table mapping {mapping.name} "
                                  "couples Dataverse rows: give 'dataverseId'.", code="InvalidIds",
                                  details={"field": "dataverseOptionValue"})
    direction = resolve_direction(mapping, sync_after, single=True) if sync_after is not None else None
    if create_new:
        coupling, created = await service.create_new(rt, mapping, bc_id=bc_id, dataverse_id=dv_id)
    else:
        coupling, created = await service.couple_existing(rt, mapping, bc_id, dv_id)  # type: ignore[arg-type]
    payload: dict = {"coupling": service.coupling_json(coupling), "created": created}
    if direction is not None:
        synced = await sync_now(rt, mapping, bc_ids=[coupling.bc_id], direction=direction)
        payload["synchronization"] = synced.to_json()
        found = await rt.couplings.get_by_bc(mapping.name, coupling.bc_id)
        payload["coupling"] = service.coupling_json(found or coupling)
    return json_response(payload, 201 if created else 200)


def _option_value(body: dict) -> int | None:
    """``dataverseOptionValue``: an option value, or None when absent. Couplings store option values as pseudo-GUIDs,
    so only values from 1 up can be coupled (0 would be the nil GUID)."""
    value = field(body, "dataverseOptionValue", int)
    if value is not None and not 1 <= value <= 2 ** 31 - 1:
        raise errors.RequestError("'dataverseOptionValue' must be an option value: an integer from 1 to 2147483647.",
                                  code="InvalidField", details={"field": "dataverseOptionValue"})
    return value


oa.operation(
    "/couple/match", "post", operation_id="CoupleByMatch", summary="Couple records by matching fields",
    description=("Match-based coupling: couples uncoupled BC records of a table mapping with the Dataverse rows whose "
                 "match fields (the mapping's matchCriteria, by priority) hold the same values. Zero or several "
                 "matches, or a match already coupled, leave the record uncoupled with the reason. Option mappings "
                 "match the BC code with the option labels (case-insensitive); createNewIfNoMatch, their default, "
                 "adds an option for each unmatched code."),
    parameters=[oa.body_param(oa.obj("Match request", "What to match.", {
        "mapping": _MAPPING,
        "bcIds": oa.array("BC record IDs", "The BC records to couple; leave out for every uncoupled record.",
                          oa.prop("string", "BC record ID", "SystemId (GUID).")),
        "createNewIfNoMatch": oa.prop("boolean", "Create new if no match",
                                      "Create a Dataverse row (an option, for an option mapping) for each record "
                                      "without a unique match, and couple it. Default: the mapping's setting."),
        "syncAfterCoupling": oa.prop("string", "Synchronize after coupling",
                                     "Synchronize the newly coupled pairs in this direction (default: the mapping's "
                                     "syncAfterMatchCoupling setting and conflict resolution, as BC does).",
                                     enum=list(SYNC_DIRECTIONS), **{"x-ms-visibility": "advanced"}),
    }, required=["mapping"]))],
    responses={"200": ("The outcome per record.", oa.obj("Match result", "Counts and per-record outcomes.", {
        "mapping": oa.prop("string", "Table mapping", "The table mapping."),
        "counts": oa.obj("Counts", "How many records ended each way.", {
            name: oa.prop("integer", name[0].upper() + name[1:], f"Records with outcome {name}.")
            for name in service.OUTCOMES}),
        "records": oa.array("Records", "One outcome per BC record.", oa.obj("Record outcome", "What happened.", {
            "bcId": _BC_ID, "dataverseId": _DV_ID, "dataverseOptionValue": _OPTION_VALUE,
            "outcome": oa.prop("string", "Outcome", "coupled, created, alreadyCoupled, unmatched, failed, "
                                                    "notFound or outsideFilter."),
            "priority": oa.prop("integer", "Priority", "The match priority group that matched."),
            "reason": oa.prop("string", "Reason", "Why the record was not coupled."),
        })),
    }))},
)


@bp.function_name("couple_match")
@bp.route(route="couple/match", methods=["POST"])
@http_endpoint
async def couple_match(req: func.HttpRequest) -> func.HttpResponse:
    body = read_json(req)
    reject_unknown(body, {"mapping", "bcIds", "createNewIfNoMatch", "syncAfterCoupling"})
    bc_ids = guid_list(body, "bcIds")
    create_new = field(body, "createNewIfNoMatch", bool)
    sync_after = field(body, "syncAfterCoupling", str)
    if sync_after is not None and sync_after not in SYNC_DIRECTIONS:
        raise errors.RequestError(f"'syncAfterCoupling' must be one of {', '.join(SYNC_DIRECTIONS)}.",
                                  code="InvalidField", details={"field": "syncAfterCoupling"})
    rt = get_runtime()
    mapping = await rt.mapping(body.get("mapping"))
    direction = resolve_direction(mapping, sync_after, single=False) if sync_after is not None \
        else service.direction_after_match(mapping)
    if create_new is None:
        create_new = mapping.create_new_if_no_match
    result = await service.match_couple(rt, mapping, bc_ids)
    if create_new:
        await service.create_new_for_unmatched(rt, mapping, result)
    payload = result.to_json()
    coupled = [r.bc_id for r in result.records if r.outcome == "coupled"]
    if direction is not None and coupled:
        synced = await service.synchronize_after_match(rt, mapping, coupled, direction)
        payload["synchronization"] = {"direction": direction.value, "counts": synced.counts(),
                                      "jobs": [p.job.id for p in synced.passes]}
    return json_response(payload)


oa.operation(
    "/couplings/{mapping}", "get", operation_id="GetCouplings", summary="Get couplings of a table mapping",
    description=("With bcId, dataverseId or dataverseOptionValue: the coupling of that record or option (404 when "
                 "it is not coupled). Without: the mapping's couplings, a page at a time with a continuation token."),
    parameters=[
        oa.path_param("mapping", "Table mapping", "Name of the table mapping, e.g. CUSTOMER."),
        oa.query_param("bcId", "BC record ID", "SystemId of a BC record: return its coupling."),
        oa.query_param("dataverseId", "Dataverse row ID", "Id of a Dataverse row: return its coupling."),
        oa.query_param("dataverseOptionValue", "Dataverse option value",
                       "Option mappings: an option value; return its coupling.", kind="integer"),
        oa.query_param("pageSize", "Page size", "Couplings per page (1-1000, default 100).", kind="integer"),
        oa.query_param("continuation", "Continuation", "The continuation token of the previous page."),
    ],
    responses={"200": ("The coupling, or a page of couplings.", oa.obj(
        "Couplings", "A coupling (with bcId or dataverseId) or a page of couplings.", {
            "coupling": COUPLING,
            "value": oa.array("Couplings", "The couplings of this page.", COUPLING),
            "continuation": oa.prop("string", "Continuation", "Pass it back for the next page; absent at the end."),
        }))},
)


@bp.function_name("get_couplings")
@bp.route(route="couplings/{mapping}", methods=["GET"])
@http_endpoint
async def get_couplings(req: func.HttpRequest) -> func.HttpResponse:
    bc_id, dv_id = query_param(req, "bcId"), query_param(req, "dataverseId")
    if query_param(req, "dataverseOptionValue") is not None:
        if dv_id:
            raise errors.RequestError("Give dataverseId or dataverseOptionValue, not both.", code="InvalidIds")
        dv_id = option_value_id(int_param(req, "dataverseOptionValue", default=1, low=1, high=2 ** 31 - 1))
    if bc_id and dv_id:
        raise errors.RequestError("Give bcId or dataverseId, not both.", code="InvalidIds")
    rt = get_runtime()
    mapping = await rt.mapping(req.route_params.get("mapping"), in_path=True)
    if bc_id or dv_id:
        found = await service.get_coupling(
            rt, mapping, bc_id=guid(bc_id, "bcId") if bc_id else None,
            dataverse_id=guid(dv_id, "dataverseId") if dv_id else None)
        return json_response({"coupling": service.coupling_json(found)})
    page_size = int_param(req, "pageSize", default=100, low=1, high=1000)
    items, token = await rt.couplings.list(mapping.name, page_size, query_param(req, "continuation"))
    payload: dict = {"value": [service.coupling_json(c) for c in items]}
    if token:
        payload["continuation"] = token
    return json_response(payload)


oa.operation(
    "/uncouple", "post", operation_id="UncoupleRecords", summary="Uncouple records",
    description=("Deletes couplings (BC: Delete Coupling); never deletes data in Business Central or Dataverse. "
                 "Uncoupling an account also uncouples its coupled child contacts."),
    parameters=[oa.body_param(oa.obj("Uncouple request", "Exactly one of bcIds, dataverseIds or all.", {
        "mapping": _MAPPING,
        "bcIds": oa.array("BC record IDs", "Uncouple these BC records.",
                          oa.prop("string", "BC record ID", "SystemId (GUID).")),
        "dataverseIds": oa.array("Dataverse row IDs", "Uncouple these Dataverse rows.",
                                 oa.prop("string", "Dataverse row ID", "Row id (GUID).")),
        "all": oa.prop("boolean", "All", "Uncouple every coupling of the table mapping."),
    }, required=["mapping"]))],
    responses={"200": ("What was uncoupled.", oa.obj("Uncouple result", "Counts.", {
        "mapping": oa.prop("string", "Table mapping", "The table mapping."),
        "uncoupled": oa.prop("integer", "Uncoupled", "Couplings deleted."),
        "notCoupled": oa.prop("integer", "Not coupled", "Ids given that had no coupling."),
        "childContactsUncoupled": oa.prop("integer", "Child contacts uncoupled",
                                          "Couplings of the accounts' child contacts deleted with them."),
    }))},
)


@bp.function_name("uncouple")
@bp.route(route="uncouple", methods=["POST"])
@http_endpoint
async def uncouple(req: func.HttpRequest) -> func.HttpResponse:
    body = read_json(req)
    reject_unknown(body, {"mapping", "bcIds", "dataverseIds", "all"})
    bc_ids = guid_list(body, "bcIds")
    dv_ids = guid_list(body, "dataverseIds")
    all_records = field(body, "all", bool, default=False)
    if sum((bc_ids is not None, dv_ids is not None, all_records)) != 1:
        raise errors.RequestError("Give exactly one of 'bcIds', 'dataverseIds' or \"all\": true.", code="InvalidIds")
    rt = get_runtime()
    mapping = await rt.mapping(body.get("mapping"))
    result = await service.uncouple(rt, mapping, bc_ids=bc_ids, dataverse_ids=dv_ids, all_records=all_records)
    return json_response(result.to_json())
