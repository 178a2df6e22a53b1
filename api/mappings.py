"""HTTP functions for table mappings: read the effective mappings, change table-level settings."""
from __future__ import annotations

import azure.functions as func

from coupling.mapping_store import MappingSettingsChanged
from sync import errors, mappings as M
from sync.mapping_defaults import default_mappings
from sync.runtime import get_runtime

from . import openapi as oa
from .http import http_endpoint, json_response, read_json

bp = func.Blueprint()

_FILTER = oa.array("Filter", "Conditions AND-ed together: field, op (eq, ne, in) and value.", oa.obj(
    "Condition", "One condition.", {
        "field": oa.prop("string", "Field", "BC field or Dataverse column of the mapping's table."),
        "op": oa.prop("string", "Operator", "eq, ne or in.", enum=["eq", "ne", "in"]),
        "value": oa.prop("string", "Value", "The value to compare with (an array for 'in')."),
    }))
_CRITERIA = oa.array("Match criteria", "Fields compared by match-based coupling.", oa.obj(
    "Match criterion", "A field mapping used for matching.", {
        "bcField": oa.prop("string", "BC field", "The BC field of an enabled field mapping."),
        "dataverseColumn": oa.prop("string", "Dataverse column", "Its Dataverse column."),
        "priority": oa.prop("integer", "Priority", "0 is tried first; criteria of one priority are AND-ed."),
        "caseSensitive": oa.prop("boolean", "Case sensitive", "Compare text case-sensitively."),
    }))
_SETTINGS = {
    "direction": oa.prop("string", "Direction", "Bidirectional, ToIntegrationTable (BC to Dataverse) or "
                         "FromIntegrationTable (Dataverse to BC).",
                         enum=["Bidirectional", "ToIntegrationTable", "FromIntegrationTable"]),
    "syncOnlyCoupledRecords": oa.prop("boolean", "Synch. only coupled records",
                                      "True: only coupled records are synchronized; false: uncoupled records are "
                                      "created in the other system and coupled."),
    "updateConflictResolution": oa.prop("string", "Resolve update conflicts",
                                        "None, SendUpdateToIntegration (BC wins) or GetUpdateFromIntegration "
                                        "(Dataverse wins).",
                                        enum=["None", "SendUpdateToIntegration", "GetUpdateFromIntegration"]),
    "deletionConflictResolution": oa.prop("string", "Resolve deletion conflicts",
                                          "None, RestoreRecords or RemoveCoupling.",
                                          enum=["None", "RestoreRecords", "RemoveCoupling"]),
    "tableFilter": _FILTER,
    "integrationTableFilter": _FILTER,
    "matchCriteria": _CRITERIA,
    "createNewIfNoMatch": oa.prop("boolean", "Create new if no match",
                                  "Match-based coupling creates a Dataverse row when no unique match is found."),
    "syncAfterMatchCoupling": oa.prop("boolean", "Synch. after match-based coupling",
                                      "Synchronize the pairs coupled by match-based coupling."),
}
MAPPING = oa.define("TableMapping", oa.obj("Table mapping", "A BC entity set paired with a Dataverse table.", {
    "name": oa.prop("string", "Name", "The mapping's name, e.g. CUSTOMER."),
    "bcEntitySet": oa.prop("string", "BC entity set", "The BC API v2.0 entity set, e.g. customers."),
    "dataverseTable": oa.prop("string", "Dataverse table", "The Dataverse table (logical name), e.g. account."),
    "dataverseEntitySet": oa.prop("string", "Dataverse entity set", "The Web API entity set, e.g. accounts."),
    "dependencies": oa.array("Dependencies", "Mappings synchronized before this one.",
                             oa.prop("string", "Mapping", "A table mapping name.")),
    **_SETTINGS,
}))
_NAME = oa.path_param("name", "Table mapping", "Name of the table mapping, e.g. CUSTOMER or PAYMENT TERMS.")

oa.operation(
    "/mappings", "get", operation_id="ListMappings", summary="List the table mappings",
    description="The effective table mappings (defaults with the stored changes), in dependency order.",
    responses={"200": ("The table mappings.", oa.obj("Table mappings", "All table mappings.", {
        "value": oa.array("Table mappings", "In dependency order.", MAPPING)}))},
)


@bp.function_name("list_mappings")
@bp.route(route="mappings", methods=["GET"])
@http_endpoint
async def list_mappings(req: func.HttpRequest) -> func.HttpResponse:
    mappings = await get_runtime().mappings()
    return json_response({"value": [M.to_json(mappings[n]) for n in M.dependency_order(mappings)]})


oa.operation(
    "/mappings/{name}", "get", operation_id="GetMapping", summary="Get a table mapping",
    description="One effective table mapping with its field mappings.",
    parameters=[_NAME], responses={"200": ("The table mapping.", MAPPING)},
)


@bp.function_name("get_mapping")
@bp.route(route="mappings/{name}", methods=["GET"])
@http_endpoint
async def get_mapping(req: func.HttpRequest) -> func.HttpResponse:
    mapping = await get_runtime().mapping(req.route_params.get("name"), in_path=True)
    return json_response(M.to_json(mapping))


oa.operation(
    "/mappings/{name}", "patch", operation_id="UpdateMapping", summary="Change a table mapping's settings",
    description=("Changes table-level settings (direction, synch. only coupled records, conflict resolutions, "
                 "filters, match criteria), validated like Business Central does. Effective at once everywhere."),
    parameters=[_NAME, oa.body_param(oa.obj("Mapping settings", "The settings to change.", dict(_SETTINGS)))],
    responses={"200": ("The changed table mapping.", MAPPING)},
)


@bp.function_name("update_mapping")
@bp.route(route="mappings/{name}", methods=["PATCH"])
@http_endpoint
async def update_mapping(req: func.HttpRequest) -> func.HttpResponse:
    rt = get_runtime()
    name = (await rt.mapping(req.route_params.get("name"), in_path=True)).name
    patch = read_json(req)
    defaults = default_mappings()
    for _attempt in range(3):  # optimistic concurrency: re-read and re-apply when another PATCH won the race
        stored, etag = await rt.mapping_settings.get(name)
        current = M.apply_overrides(defaults[name], stored or {}, all_names=defaults.keys())
        patched = M.apply_patch(current, patch, all_names=defaults.keys())
        overrides = M.overrides_from_patch(patched, patch, previous=stored)
        try:
            await rt.mapping_settings.put(name, overrides, etag=etag)
        except MappingSettingsChanged:
            continue
        return json_response(M.to_json(patched))
    raise errors.Conflict(f"Table mapping {name} is being changed by someone else; try again.",
                          code="ConcurrentChange")
