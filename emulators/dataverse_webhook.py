"""Bodies and headers of the webhook requests Dataverse sends for a service-endpoint step (apis.md B3-B6).

The body is a ``RemoteExecutionContext`` serialized by .NET's DataContractJsonSerializer: keys in alphabetical
order, ``__type`` markers on polymorphic values, dictionaries as ``[{"key":..,"value":..}]`` lists, dates as
``/Date(ms)/`` and ``/`` escaped as ``\\/`` on the wire. Shapes match samples/dataverse_webhook_*.json.

Pure functions; sending them over HTTP belongs to the webhook sender.
"""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Any, Iterable

CONTRACTS = "http://schemas.microsoft.com/xrm/2011/Contracts"
MAX_PAYLOAD_BYTES = 256 * 1024
"""Above this, Dataverse drops ParentContext, InputParameters and the images and adds a header (B3)."""

DEFAULT_ORGANIZATION_ID = "f42a590d-a29d-ef11-8a66-6045bd056902"
DEFAULT_BUSINESS_UNIT_ID = "0669e963-e69c-ef11-8a6b-000d3a318589"
DEFAULT_USER_ID = "3570e963-e69c-ef11-8a6b-000d3a318589"
DEFAULT_STEP_ID = "a89a1ed8-a79d-ef11-8a69-000d3a30b0c1"
OBJECT_MODEL_STEP_ID = "ffc9bb1b-ea3e-db11-86a7-000a3a5473e8"
"""The platform's own ``ObjectModel Implementation`` step that appears as OwningExtension of a ParentContext."""


# --- SDK value shapes -----------------------------------------------------------------------------------------
def wcf_date(value: datetime, *, offset: bool = False, milliseconds: bool = True) -> str:
    """``/Date(ms)/`` (UTC ms since epoch); with ``offset`` the ``+0000`` suffix of async contexts."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    ms = int(value.timestamp() * 1000) if milliseconds else int(value.timestamp()) * 1000
    return f"/Date({ms}+0000)/" if offset else f"/Date({ms})/"


def entity_reference(logical_name: str, id: str, name: str | None = None, *, typed: bool = True) -> dict:  # noqa: A002
    ref: dict[str, Any] = {}
    if typed:
        ref["__type"] = f"EntityReference:{CONTRACTS}"
    ref.update({"Id": id, "KeyAttributes": [], "LogicalName": logical_name, "Name": name, "RowVersion": None})
    return ref


def option_set_value(value: int) -> dict:
    return {"__type": f"OptionSetValue:{CONTRACTS}", "Value": value}


def option_set_values(values: Iterable[int]) -> list[dict]:
    """A multi-select choice: a plain JSON array of OptionSetValue."""
    return [option_set_value(v) for v in values]


def money(value: float | int) -> dict:
    return {"__type": f"Money:{CONTRACTS}", "Value": value}


def key_values(pairs: dict[str, Any] | Iterable[tuple[str, Any]]) -> list[dict]:
    items = pairs.items() if isinstance(pairs, dict) else pairs
    return [{"key": k, "value": v} for k, v in items]


def _attribute_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return wcf_date(value)
    return value


def entity(logical_name: str, id: str, attributes: dict[str, Any],  # noqa: A002
           formatted_values: dict[str, str] | None = None, *, typed: bool = True) -> dict:
    """An ``Entity`` (Target or image). Attribute values are SDK shapes or plain JSON; datetimes are converted."""
    out: dict[str, Any] = {}
    if typed:
        out["__type"] = f"Entity:{CONTRACTS}"
    out.update({
        "Attributes": key_values((k, _attribute_value(v)) for k, v in attributes.items()),
        "EntityState": None,
        "FormattedValues": key_values(formatted_values or {}),
        "Id": id,
        "KeyAttributes": [],
        "LogicalName": logical_name,
        "RelatedEntities": [],
        "RowVersion": None,
    })
    return out


def _changed_entity_types(entity_name: str) -> dict:
    return {"__type": "KeyValuePairOfstringstring:#System.Collections.Generic", "key": entity_name, "value": "Update"}


# --- the context ----------------------------------------------------------------------------------------------
def build_remote_execution_context(
    message: str,
    entity: str,
    row_id: str,
    *,
    target_attributes: dict[str, Any] | None = None,
    pre_image: dict[str, Any] | None = None,
    post_image: dict[str, Any] | None = None,
    formatted_values: dict[str, dict[str, str]] | None = None,
    sent_attributes: dict[str, Any] | None = None,
    primary_name: tuple[str, Any] | None = None,
    pk_name: str | None = None,
    mode: int = 1,
    depth: int = 1,
    stage: int = 40,
    user_id: str = DEFAULT_USER_ID,
    initiating_user_id: str | None = None,
    user_aad_object_id: str = "30965b76-43d8-4300-a48f-dda5e92106ee",
    business_unit_id: str = DEFAULT_BUSINESS_UNIT_ID,
    organization: str = "unqf42a590da29def118a666045bd056",
    organization_id: str = DEFAULT_ORGANIZATION_ID,
    operation_created_on: datetime | None = None,
    modified_on: datetime | None = None,
    correlation_id: str | None = None,
    operation_id: str | None = None,
    request_id: str | None = None,
    step_id: str = DEFAULT_STEP_ID,
    step_name: str | None = None,
    pre_image_name: str = "PreImage",
    post_image_name: str = "PostImage",
    include_parent_context: bool = True,
) -> dict:
    """A RemoteExecutionContext as Dataverse posts it for ``message`` (Create / Update / Delete) on ``entity``.

    * Create: ``target_attributes`` = all attributes of the new row; OutputParameters carries ``id``.
    * Update: ``target_attributes`` = the changed attributes; the primary key (``pk_name``, default
      ``<entity>id``), ``modifiedon``, ``modifiedby`` and ``modifiedonbehalfby`` are added like the platform does.
    * Delete: Target is an EntityReference; only a pre-image can be given.

    ``mode`` 0 = synchronous (IsInTransaction, ms-precision date), 1 = asynchronous (whole seconds with
    ``+0000``, ``AsynchronousStepPrimaryName`` post-image when ``primary_name`` is given). ``formatted_values``
    maps ``"Target"`` / ``"PreImage"`` / ``"PostImage"`` to label dicts. ``sent_attributes`` is the Target of the
    ParentContext (what the caller sent); it defaults to ``target_attributes``.
    """
    message_lc = message.lower()
    if message_lc not in ("create", "update", "delete"):
        raise ValueError(f"unsupported message {message!r}")
    if mode not in (0, 1):
        raise ValueError("mode is 0 (synchronous) or 1 (asynchronous)")
    row_id = str(row_id).lower()
    now = operation_created_on or datetime.now(timezone.utc)
    pk = pk_name or f"{entity}id"
    initiating_user_id = initiating_user_id or user_id
    correlation_id = correlation_id or str(uuid.uuid4())
    operation_id = operation_id or str(uuid.uuid4())
    fv = formatted_values or {}
    attrs = dict(target_attributes or {})
    if message_lc == "update":
        attrs.setdefault(pk, row_id)
        mod = modified_on or now.replace(microsecond=0)
        attrs.setdefault("modifiedon", mod)
        attrs.setdefault("modifiedby", entity_reference("systemuser", user_id))
        attrs.setdefault("modifiedonbehalfby", None)
    elif message_lc == "create":
        attrs.setdefault(pk, row_id)

    def target(attributes: dict[str, Any], formatted: dict[str, str] | None) -> Any:
        if message_lc == "delete":
            return entity_reference(entity, row_id)
        return _entity_for(entity, row_id, attributes, formatted)

    post_images: list[dict] = []
    if message_lc != "delete":
        if mode == 1 and primary_name is not None:
            post_images.append({"key": "AsynchronousStepPrimaryName", "value": entity_name_image(
                entity, row_id, {primary_name[0]: primary_name[1], pk: row_id})})
        if post_image is not None:
            post_images.append({"key": post_image_name, "value": _entity_for(
                entity, row_id, post_image, fv.get("PostImage"), typed=False)})
    pre_images: list[dict] = []
    if pre_image is not None and message_lc != "create":
        pre_images.append({"key": pre_image_name, "value": _entity_for(
            entity, row_id, pre_image, fv.get("PreImage"), typed=False)})

    created_on = (wcf_date(now) if mode == 0 else wcf_date(now, offset=True, milliseconds=False))
    common = {
        "BusinessUnitId": business_unit_id,
        "CorrelationId": correlation_id,
        "Depth": depth,
        "InitiatingUserAgent": "",
        "InitiatingUserAzureActiveDirectoryObjectId": user_aad_object_id,
        "InitiatingUserId": initiating_user_id,
    }
    tail_ids = {
        "OperationCreatedOn": created_on,
        "OperationId": operation_id,
        "OrganizationId": organization_id,
        "OrganizationName": organization,
    }
    parent = None
    if include_parent_context:
        sent = dict(sent_attributes if sent_attributes is not None else (target_attributes or {}))
        if message_lc != "delete":
            sent.setdefault(pk, row_id)
        parent_shared = [{"key": "IsAutoTransact", "value": True}, {"key": "DefaultsAddedFlag", "value": True},
                         {"key": "ChangedEntityTypes", "value": [_changed_entity_types(entity)]}]
        parent = {
            **common,
            "InputParameters": [{"key": "Target", "value": target(sent, None)},
                                {"key": "SuppressDuplicateDetection", "value": False}],
            "IsExecutingOffline": False,
            "IsInTransaction": True,
            "IsOfflinePlayback": False,
            "IsolationMode": 1,
            "MessageName": message.capitalize(),
            "Mode": 0,
            **tail_ids,
            "OutputParameters": [],
            "OwningExtension": {"Id": OBJECT_MODEL_STEP_ID, "KeyAttributes": [], "LogicalName":
                                "sdkmessageprocessingstep", "Name": "ObjectModel Implementation", "RowVersion": None},
            "ParentContext": None,
            "PostEntityImages": [],
            "PreEntityImages": [],
            "PrimaryEntityId": row_id,
            "PrimaryEntityName": entity,
            "RequestId": request_id or operation_id,
            "SecondaryEntityName": "none",
            "SharedVariables": parent_shared,
            "Stage": 30,
            "UserAzureActiveDirectoryObjectId": user_aad_object_id,
            "UserId": user_id,
        }
    shared = [] if mode == 1 else [{"key": "IsAutoTransact", "value": True},
                                   {"key": "DefaultsAddedFlag", "value": True}]
    return {
        **common,
        "InputParameters": [{"key": "Target", "value": target(attrs, fv.get("Target"))}],
        "IsExecutingOffline": False,
        "IsInTransaction": mode == 0,
        "IsOfflinePlayback": False,
        "IsolationMode": 1,
        "MessageName": message.capitalize(),
        "Mode": mode,
        **tail_ids,
        "OutputParameters": [{"key": "id", "value": row_id}] if message_lc == "create" else [],
        "OwningExtension": {"Id": step_id, "KeyAttributes": [], "LogicalName": "sdkmessageprocessingstep",
                            "Name": step_name if step_name is not None else
                            f"bc-dataverse-sync: {message.capitalize()} of {entity}", "RowVersion": None},
        "ParentContext": parent,
        "PostEntityImages": post_images,
        "PreEntityImages": pre_images,
        "PrimaryEntityId": row_id,
        "PrimaryEntityName": entity,
        "RequestId": request_id if request_id is not None else (operation_id if mode == 0 else None),
        "SecondaryEntityName": "none",
        "SharedVariables": shared,
        "Stage": stage,
        "UserAzureActiveDirectoryObjectId": user_aad_object_id,
        "UserId": user_id,
    }


def _entity_for(logical: str, row_id: str, attributes: dict[str, Any], formatted: dict[str, str] | None,
                *, typed: bool = True) -> dict:
    return entity(logical, row_id, attributes, formatted, typed=typed)


def entity_name_image(logical: str, row_id: str, attributes: dict[str, Any]) -> dict:
    return entity(logical, row_id, attributes, None, typed=False)


# --- the HTTP request -----------------------------------------------------------------------------------------
def encode_body(ctx: dict) -> bytes:
    """UTF-8 JSON like DataContractJsonSerializer: compact, non-ASCII kept, ``/`` escaped as ``\\/``."""
    text = json.dumps(ctx, ensure_ascii=False, separators=(",", ":"))
    return text.replace("/", "\\/").encode("utf-8")


def webhook_headers(ctx: dict, org_host: str, *, body: bytes | None = None, request_id: str | None = None) -> dict:
    """The ``x-ms-dynamics-*`` headers Dataverse adds (B3). Pass ``body`` to get the size-exceeded marker right."""
    headers = {
        "Content-Type": "application/json",
        "x-ms-dynamics-organization": org_host,
        "x-ms-dynamics-entity-name": ctx["PrimaryEntityName"],
        "x-ms-dynamics-request-name": ctx["MessageName"],
        "x-ms-correlation-request-id": ctx["CorrelationId"],
        "x-request-id": request_id or str(uuid.uuid4()),
    }
    if body is not None and len(body) > MAX_PAYLOAD_BYTES:
        headers["x-ms-dynamics-msg-size-exceeded"] = "true"
    return headers


def webhook_request(ctx: dict, org_host: str) -> tuple[dict, bytes]:
    """Headers and body as sent: above 256 KB the context loses ParentContext, InputParameters and the images."""
    body = encode_body(ctx)
    if len(body) > MAX_PAYLOAD_BYTES:
        slim = {k: v for k, v in ctx.items()
                if k not in ("ParentContext", "InputParameters", "PreEntityImages", "PostEntityImages")}
        return webhook_headers(ctx, org_host, body=body), encode_body(slim)
    return webhook_headers(ctx, org_host, body=body), body
