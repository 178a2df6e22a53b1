"""Changes that Dataverse announces by webhook (apis.md Part B; spec 7 "sync from Sales", spec 3 change detection).

Three parts, from pure to I/O:

* **Parsing** (pure): ``parse_webhook(body, headers)`` turns the ``RemoteExecutionContext`` JSON exactly as Dataverse
  posts it (key/value lists, ``__type`` markers, ``/Date(ms+hhmm)/``, EntityReference, OptionSetValue, Money,
  multi-select arrays, entity images, the 256 KB form without ``InputParameters``) into a small typed
  ``WebhookChange``. Only what the app needs is required (message, table, row id); everything else is optional, so
  a real body is never refused for a shape this code did not foresee. A malformed body is a ``RequestError``.
* **Acceptance** (``accept``, the HTTP receiver's work: cheap): is the table mapped, is the message one the app
  handles, can any of the table's mappings act on it? If so the change becomes a small queue message (ids and
  metadata only, never the row's values); else it is ignored with the reason.
* **Processing** (``process``, the queue worker's work): the row is **re-read** and synchronized From Dataverse with
  the engine's normal change detection (``run_pass(..., ids=[row], uncoupled_by_mapping=True)``). Because the
  current row is compared with the coupling's stored ``versionnumber``/``modifiedon`` - never the values carried
  by the notification, never the arrival order - a duplicate, a late (out-of-order) delivery or the echo of the
  app's own write comes out "unchanged" and writes nothing. Deliveries of one row are serialized by a lease.
  An uncoupled row is created in BC and coupled only when a mapping is Bidirectional/FromIntegrationTable, does not
  synchronize only coupled records and the row passes its integration table filter (BC's "sync from Sales").
  A Delete never deletes anything: the coupling is marked so that the mapping's deletion-conflict strategy applies
  at the next synchronization, and a job records it.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any, Mapping

from coupling.model import RESULT_FAILURE

from . import engine, errors, rules
from .mappings import DATAVERSE, Direction, TableMapping

log = logging.getLogger(__name__)

TO = Direction.TO_INTEGRATION_TABLE
FROM = Direction.FROM_INTEGRATION_TABLE

QUEUE_MESSAGE_KIND = "dataverse-change"
HANDLED_MESSAGES = ("Create", "Update", "Delete")
SIZE_EXCEEDED_HEADER = "x-ms-dynamics-msg-size-exceeded"
BOOKKEEPING_ATTRIBUTES = frozenset({"modifiedon", "modifiedby", "modifiedonbehalfby", "versionnumber"})
"""Attributes the platform adds to every Update's Target; not "changed" columns of the caller."""

_WCF_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")
_EMPTY_GUID = "00000000-0000-0000-0000-000000000000"


class InvalidWebhookBody(errors.RequestError):
    code = "InvalidWebhookBody"


# ---------------------------------------------------------------------------------------------------------------------
# Parsing (pure)
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EntityRef:
    """An ``EntityReference`` (lookups, ownerid, a Delete's Target)."""

    logical_name: str
    id: str
    name: str | None = None


@dataclass(frozen=True)
class EntityImage:
    """An ``Entity``: a Target, or a pre/post entity image. Values are Python values (see ``sdk_value``)."""

    logical_name: str
    id: str | None
    attributes: Mapping[str, Any]
    formatted_values: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WebhookChange:
    """One notification: what changed, where, and who/when - not the row's values (those are re-read)."""

    message: str
    """``Create``, ``Update``, ``Delete`` - or any other message name as sent."""
    entity: str
    """Logical name of the table (``account``)."""
    id: str
    """The row id (lower-case GUID)."""
    mode: int | None = None
    """0 synchronous, 1 asynchronous."""
    stage: int | None = None
    depth: int | None = None
    correlation_id: str | None = None
    operation_id: str | None = None
    request_id: str | None = None
    operation_created_on: datetime | None = None
    user_id: str | None = None
    initiating_user_id: str | None = None
    organization_id: str | None = None
    organization_name: str | None = None
    organization_host: str | None = None
    """Header ``x-ms-dynamics-organization``."""
    target: EntityImage | None = None
    """Create/Update: the Target entity (Create: all saved attributes; Update: the sent ones)."""
    target_reference: EntityRef | None = None
    """Delete: the Target entity reference."""
    pre_images: Mapping[str, EntityImage] = field(default_factory=dict)
    post_images: Mapping[str, EntityImage] = field(default_factory=dict)
    size_exceeded: bool = False
    """Over 256 KB: Dataverse dropped InputParameters, the images and ParentContext; the row must be re-read."""
    body_bytes: int = 0

    @property
    def message_name(self) -> str | None:
        """The handled message this is (canonical case), or None."""
        for name in HANDLED_MESSAGES:
            if self.message.lower() == name.lower():
                return name
        return None

    @property
    def changed_attributes(self) -> tuple[str, ...]:
        """Columns the caller sent (Update) or saved (Create), without the platform's bookkeeping and the key."""
        if self.target is None:
            return ()
        pk = f"{self.entity}id"
        return tuple(k for k in self.target.attributes if k not in BOOKKEEPING_ATTRIBUTES and k != pk)

    @property
    def modified_on(self) -> datetime | None:
        """``modifiedon`` as of this change (Target, else a post-image), if the body carries it."""
        for image in (self.target, *self.post_images.values()):
            if image is not None and isinstance(image.attributes.get("modifiedon"), datetime):
                return image.attributes["modifiedon"]
        return None

    def describe(self) -> str:
        return f"{self.message} of {self.entity} {self.id}" + (f" (correlation {self.correlation_id})"
                                                              if self.correlation_id else "")


def parse_wcf_date(text: str) -> datetime | None:
    """``/Date(1506409448000-0700)/`` -> aware UTC datetime (the number is UTC ms; the offset is informational)."""
    m = _WCF_DATE.match(text)
    if not m:
        return None
    try:
        return datetime.fromtimestamp(int(m.group(1)) / 1000, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def _type_name(value: Mapping[str, Any]) -> str:
    marker = value.get("__type")
    return marker.split(":", 1)[0] if isinstance(marker, str) else ""


def sdk_value(value: Any) -> Any:
    """A serialized SDK value as a Python value: OptionSetValue -> int, Money -> its number, EntityReference ->
    ``EntityRef``, ``/Date(..)/`` -> datetime, multi-select (array of OptionSetValue) -> list of ints, Entity ->
    ``EntityImage``, EntityCollection -> list of ``EntityImage``. Anything else is returned unchanged."""
    if isinstance(value, str):
        if value.startswith("/Date("):
            parsed = parse_wcf_date(value)
            return parsed if parsed is not None else value
        return value
    if isinstance(value, list):
        return [sdk_value(v) for v in value]
    if not isinstance(value, dict):
        return value
    kind = _type_name(value)
    if kind in ("OptionSetValue", "Money", "BooleanManagedProperty"):
        return value.get("Value")
    if kind == "OptionSetValueCollection":
        items = value.get("Value") if isinstance(value.get("Value"), list) else []
        return [sdk_value(v) for v in items]
    if kind == "EntityCollection":
        return [_entity(e, "EntityCollection") for e in value.get("Entities") or [] if isinstance(e, dict)]
    if kind == "Entity" or ("Attributes" in value and "LogicalName" in value):
        return _entity(value, "Entity")
    if kind == "EntityReference" or ("LogicalName" in value and "Id" in value):
        return _reference(value)
    return value


def _reference(value: Mapping[str, Any]) -> EntityRef | Any:
    name = value.get("LogicalName")
    ref_id = _guid_or_none(value.get("Id"))
    if not isinstance(name, str) or ref_id is None:
        return value
    shown = value.get("Name")
    return EntityRef(name, ref_id, shown if isinstance(shown, str) else None)


def _key_values(value: Any, where: str) -> dict[str, Any]:
    """A DataContract dictionary ``[{"key": .., "value": ..}, ..]`` as a dict (values unconverted)."""
    if value is None:
        return {}
    if not isinstance(value, list):
        raise InvalidWebhookBody(f"'{where}' must be a list of {{\"key\", \"value\"}} pairs.",
                                 details={"field": where})
    out: dict[str, Any] = {}
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise InvalidWebhookBody(f"'{where}[{i}]' must be an object with a string 'key'.",
                                     details={"field": f"{where}[{i}]"})
        out[item["key"]] = item.get("value")
    return out


def _entity(value: Any, where: str) -> EntityImage:
    if not isinstance(value, dict):
        raise InvalidWebhookBody(f"'{where}' must be an Entity object.", details={"field": where})
    name = value.get("LogicalName")
    if not isinstance(name, str) or not name:
        raise InvalidWebhookBody(f"'{where}.LogicalName' must be a table name.", details={"field": where})
    attributes = {k: sdk_value(v) for k, v in _key_values(value.get("Attributes"), f"{where}.Attributes").items()}
    formatted = {k: v for k, v in _key_values(value.get("FormattedValues"), f"{where}.FormattedValues").items()
                 if isinstance(v, str)}
    return EntityImage(name.lower(), _guid_or_none(value.get("Id")), MappingProxyType(attributes),
                       MappingProxyType(formatted))


def _images(value: Any, where: str) -> Mapping[str, EntityImage]:
    return MappingProxyType({name: _entity(image, f"{where}[{name}]")
                             for name, image in _key_values(value, where).items() if image is not None})


def _guid_or_none(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    text = value.strip().strip("{}")
    if len(text) != 36:
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    if value is None:
        for k, v in headers.items():
            if k.lower() == name:
                return v
    return value


def parse_webhook(body: bytes | str, headers: Mapping[str, str] | None = None) -> WebhookChange:
    """The ``WebhookChange`` of one webhook request. Raises ``InvalidWebhookBody`` (a 400) when the body is not a
    RemoteExecutionContext: not JSON, not an object, no ``MessageName``/``PrimaryEntityName``, a row id that is not
    a GUID, or key/value lists and entities of the wrong shape."""
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body or b"")
    if not raw.strip():
        raise InvalidWebhookBody("The request body is empty; a RemoteExecutionContext JSON object is expected.")
    try:
        ctx = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise InvalidWebhookBody("The request body is not UTF-8.") from None
    except ValueError as exc:
        raise InvalidWebhookBody(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(ctx, dict):
        raise InvalidWebhookBody("The request body must be a RemoteExecutionContext JSON object.")

    message = ctx.get("MessageName")
    if not isinstance(message, str) or not message.strip():
        raise InvalidWebhookBody("'MessageName' is missing: this is not a RemoteExecutionContext.",
                                 details={"field": "MessageName"})
    entity = ctx.get("PrimaryEntityName")
    if not isinstance(entity, str) or not entity.strip():
        raise InvalidWebhookBody("'PrimaryEntityName' is missing: this is not a RemoteExecutionContext.",
                                 details={"field": "PrimaryEntityName"})
    entity = entity.strip().lower()

    inputs = _key_values(ctx.get("InputParameters"), "InputParameters")
    outputs = _key_values(ctx.get("OutputParameters"), "OutputParameters")
    target: EntityImage | None = None
    target_ref: EntityRef | None = None
    raw_target = inputs.get("Target")
    if isinstance(raw_target, dict):
        kind = _type_name(raw_target)
        if kind == "EntityReference" or ("Attributes" not in raw_target and "LogicalName" in raw_target):
            ref = _reference(raw_target)
            if not isinstance(ref, EntityRef):
                raise InvalidWebhookBody("'InputParameters.Target' is not a valid EntityReference.",
                                         details={"field": "InputParameters.Target"})
            target_ref = ref
        else:
            target = _entity(raw_target, "InputParameters.Target")
    elif raw_target is not None:
        raise InvalidWebhookBody("'InputParameters.Target' must be an Entity or an EntityReference.",
                                 details={"field": "InputParameters.Target"})

    row_id_raw = ctx.get("PrimaryEntityId")
    if row_id_raw is not None and not isinstance(row_id_raw, str):
        raise InvalidWebhookBody("'PrimaryEntityId' must be a GUID.", details={"field": "PrimaryEntityId"})
    row_id = _guid_or_none(row_id_raw) if row_id_raw else None
    if row_id_raw and row_id is None:
        raise InvalidWebhookBody("'PrimaryEntityId' must be a GUID.", details={"field": "PrimaryEntityId"})
    if row_id in (None, _EMPTY_GUID):
        # a PreOperation Create has no id yet: take it from OutputParameters or the Target when there
        row_id = (_guid_or_none(outputs.get("id")) or (target.id if target else None)
                  or (target_ref.id if target_ref else None)
                  or (_guid_or_none(target.attributes.get(f"{entity}id")) if target else None))
        if row_id == _EMPTY_GUID:
            row_id = None
    if row_id is None:
        raise InvalidWebhookBody("The body names no row: 'PrimaryEntityId' is empty and no Target id was sent.",
                                 details={"field": "PrimaryEntityId"})

    size_flag = (_header(headers, SIZE_EXCEEDED_HEADER) or "").strip().lower()
    size_exceeded = (size_flag not in ("", "false", "0")) or "InputParameters" not in ctx
    created = ctx.get("OperationCreatedOn")
    return WebhookChange(
        message=message.strip(), entity=entity, id=row_id,
        mode=_int_or_none(ctx.get("Mode")), stage=_int_or_none(ctx.get("Stage")), depth=_int_or_none(ctx.get("Depth")),
        correlation_id=_guid_or_none(ctx.get("CorrelationId")) or _header(headers, "x-ms-correlation-request-id"),
        operation_id=_guid_or_none(ctx.get("OperationId")), request_id=_guid_or_none(ctx.get("RequestId")),
        operation_created_on=parse_wcf_date(created) if isinstance(created, str) else None,
        user_id=_guid_or_none(ctx.get("UserId")), initiating_user_id=_guid_or_none(ctx.get("InitiatingUserId")),
        organization_id=_guid_or_none(ctx.get("OrganizationId")),
        organization_name=_str_or_none(ctx.get("OrganizationName")),
        organization_host=_header(headers, "x-ms-dynamics-organization"),
        target=target, target_reference=target_ref,
        pre_images=_images(ctx.get("PreEntityImages"), "PreEntityImages"),
        post_images=_images(ctx.get("PostEntityImages"), "PostEntityImages"),
        size_exceeded=size_exceeded, body_bytes=len(raw),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Which mappings a table belongs to (pure)
# ---------------------------------------------------------------------------------------------------------------------
def mappings_for_table(mappings: Mapping[str, TableMapping], entity: str) -> list[TableMapping]:
    """The record mappings of a Dataverse table, in a stable order (account: CUSTOMER, VENDOR; the integration
    table filters, e.g. customertypecode, tell them apart for a given row)."""
    return sorted((m for m in mappings.values() if not m.is_option_mapping and m.dataverse_table == entity),
                  key=lambda m: m.name)


@dataclass(frozen=True)
class Acceptance:
    """The HTTP receiver's answer: accepted (queued) or ignored, and why."""

    status: str  # "accepted" | "ignored"
    change: WebhookChange
    reason: str | None = None
    message: str | None = None
    mappings: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"

    def queue_message(self) -> str:
        """The queue message: ids and metadata (a few hundred bytes), never the row's values."""
        c = self.change
        return json.dumps({
            "kind": QUEUE_MESSAGE_KIND, "message": c.message_name, "entity": c.entity, "id": c.id,
            "mappings": list(self.mappings), "correlationId": c.correlation_id, "operationId": c.operation_id,
            "requestId": c.request_id, "userId": c.user_id, "initiatingUserId": c.initiating_user_id,
            "operationCreatedOn": _iso(c.operation_created_on), "modifiedOn": _iso(c.modified_on),
            "mode": c.mode, "sizeExceeded": c.size_exceeded,
            "changedAttributes": list(c.changed_attributes)[:100],
            "receivedAt": _iso(datetime.now(timezone.utc)),
        }, separators=(",", ":"))

    def to_json(self) -> dict:
        out: dict[str, Any] = {"status": self.status, "message": self.change.message, "entity": self.change.entity,
                               "id": self.change.id, "mappings": list(self.mappings)}
        if self.reason:
            out["reason"] = self.reason
        if self.message:
            out["detail"] = self.message
        if self.change.correlation_id:
            out["correlationId"] = self.change.correlation_id
        return out


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if value else None


def decide_acceptance(mappings: Mapping[str, TableMapping], change: WebhookChange) -> Acceptance:
    """Whether a change can matter to any mapping (pure). Per-row facts (coupled? in the filter?) are left to the
    worker, which reads the row and the coupling."""
    name = change.message_name
    if name is None:
        return Acceptance("ignored", change, "messageNotHandled",
                          f"The {change.message} message is not handled: register the step for Create, Update and "
                          "Delete.")
    candidates = mappings_for_table(mappings, change.entity)
    if not candidates:
        return Acceptance("ignored", change, "noMapping",
                          f"No table mapping synchronizes the Dataverse table '{change.entity}'.")
    names = tuple(m.name for m in candidates)
    if name == "Delete":
        acting = [m for m in candidates if m.direction.includes(TO)]
        if not acting:
            return Acceptance("ignored", change, "directionNotAllowed",
                              f"Deletions are never propagated, and table mapping(s) {', '.join(names)} never write to "
                              "Dataverse, so no deletion conflict can arise.", names)
    else:
        acting = [m for m in candidates if m.direction.includes(FROM)]
        if not acting:
            return Acceptance("ignored", change, "directionNotAllowed",
                              f"Table mapping(s) {', '.join(names)} synchronize ToIntegrationTable only: changes made "
                              "in Dataverse are not synchronized to Business Central.", names)
    return Acceptance("accepted", change, mappings=tuple(m.name for m in acting))


async def accept(rt: Any, change: WebhookChange) -> Acceptance:
    """The receiver's decision, with the effective mappings (read each time, like every other endpoint).

    Table Storage unreachable is an ``UpstreamUnavailable`` (502): Dataverse makes one more attempt on 502/503/504
    (never on 500), and the scheduled synchronization still finds the row by its ``modifiedon``."""
    if change.message_name is None:
        return decide_acceptance({}, change)
    from azure.core.exceptions import AzureError

    try:
        mappings = await rt.mappings()
    except (AzureError, OSError) as exc:
        raise errors.UpstreamUnavailable("storage", f"The table mapping settings could not be read: {exc}") from exc
    return decide_acceptance(mappings, change)


# ---------------------------------------------------------------------------------------------------------------------
# Processing (the queue worker)
# ---------------------------------------------------------------------------------------------------------------------
ROW_LEASE = timedelta(minutes=2)
"""A row's deliveries are processed one at a time; a worker that dies frees the row after this long."""
ROW_BUSY_WAIT = 10.0
"""Seconds a delivery waits for another delivery of the same row before it is handed back to the queue."""
WEBHOOK_TRIGGER = "dataverse-webhook"


class RowBusy(errors.SyncError):
    """Another delivery of the same row is being processed; the queue delivers this one again later."""

    code = "RowBusy"


@dataclass(frozen=True)
class ChangeOutcome:
    """What processing one delivery did for one mapping."""

    result: str
    """inserted, modified, unchanged, skipped, failed, ignored or recorded (a Delete)."""
    mapping: str | None = None
    reason: str | None = None
    message: str | None = None
    bc_id: str | None = None
    dataverse_id: str | None = None
    job_id: str | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in {"result": self.result, "mapping": self.mapping, "reason": self.reason,
                                  "message": self.message, "bcId": self.bc_id, "dataverseId": self.dataverse_id,
                                  "jobId": self.job_id}.items() if v is not None}


@dataclass(frozen=True)
class QueuedChange:
    """A queue message, validated."""

    message: str
    entity: str
    id: str
    correlation_id: str | None = None
    initiating_user_id: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, work: Mapping[str, Any]) -> "QueuedChange":
        message, entity, row_id = work.get("message"), work.get("entity"), _guid_or_none(work.get("id"))
        if message not in HANDLED_MESSAGES or not isinstance(entity, str) or not entity or row_id is None:
            raise InvalidWebhookBody("not a dataverse-change queue message")
        return cls(message, entity, row_id, _guid_or_none(work.get("correlationId")),
                   _guid_or_none(work.get("initiatingUserId")), dict(work))

    def job_details(self) -> dict:
        return {k: v for k, v in {"trigger": WEBHOOK_TRIGGER, "message": self.message,
                                  "dataverseId": self.id, "correlationId": self.correlation_id,
                                  "operationId": self.details.get("operationId")}.items() if v}


_integration_users: dict[str, str] = {}


async def integration_user_id(rt: Any) -> str | None:
    """The app's own Dataverse user (WhoAmI), read once per environment."""
    key = rt.settings.dataverse_url
    if key not in _integration_users:
        who = await rt.dataverse.request_json("GET", f"{rt.dataverse.api_url}/WhoAmI")
        user = _guid_or_none((who or {}).get("UserId"))
        if user is None:
            return None
        _integration_users[key] = user
    return _integration_users[key]


async def _acquire_row(rt: Any, change: QueuedChange, owner: str):
    name = f"dataverse-row-{change.entity}-{change.id}"
    waited, delay = 0.0, 0.05
    while True:
        lease = await rt.leases.acquire(name, owner, ROW_LEASE)
        if lease is not None:
            return lease
        if waited >= ROW_BUSY_WAIT:
            raise RowBusy(f"{change.entity} {change.id} is being processed by another delivery")
        await asyncio.sleep(delay)
        waited += delay
        delay = min(delay * 2, 1.0)


@contextlib.asynccontextmanager
async def _row_lease(rt: Any, change: QueuedChange, owner: str):
    """Writes for one row are made by one delivery at a time: a duplicate processed at the same moment waits, then
    finds the row synchronized (without it, both would write and the second would fail on the ETag)."""
    lease = await _acquire_row(rt, change, owner)
    try:
        yield
    finally:
        await rt.leases.release(lease)


async def process(rt: Any, work: Mapping[str, Any], *, owner: str | None = None) -> list[ChangeOutcome]:
    """Process one queued change. Safe to repeat: everything it decides comes from the current row and the
    couplings. Raises for transient failures (the queue delivers the message again)."""
    change = QueuedChange.from_json(work)
    candidates = mappings_for_table(await rt.mappings(), change.entity)
    if not candidates:
        return [ChangeOutcome("ignored", None, "noMapping",
                              f"No table mapping synchronizes the Dataverse table '{change.entity}'.",
                              dataverse_id=change.id)]
    owner = owner or uuid.uuid4().hex
    if change.message == "Delete":
        async with _row_lease(rt, change, owner):
            outcomes = await _deleted(rt, change, candidates)
    else:
        outcomes = await _changed(rt, change, candidates, owner)
    for o in outcomes:
        level = logging.INFO if o.result not in ("failed",) else logging.WARNING
        log.log(level, "dataverse webhook %s %s %s: %s%s", change.message, change.entity, change.id,
                o.result, f" ({o.mapping}: {o.reason}: {o.message})" if o.reason or o.message else "")
    return outcomes


async def _couplings(rt: Any, mappings: list[TableMapping], row_id: str) -> dict[str, Any]:
    found = await asyncio.gather(*(rt.couplings.get_by_dataverse(m.name, row_id) for m in mappings))
    return {m.name: c for m, c in zip(mappings, found)}


def _row_select(mappings: list[TableMapping]) -> list[str]:
    out: list[str] = []
    for m in mappings:
        for name in (*m.dataverse_select(), "versionnumber"):
            if name not in out:
                out.append(name)
    return out


async def _changed(rt: Any, change: QueuedChange, candidates: list[TableMapping], owner: str) -> list[ChangeOutcome]:
    """Read-only checks first (no lease): an echo, a duplicate or a late delivery ends here. Only a pass that may
    write takes the row's lease."""
    couplings = await _couplings(rt, candidates, change.id)
    coupled = [m for m in candidates if couplings[m.name] is not None]
    if coupled:
        return [await _coupled_change(rt, change, m, couplings[m.name], owner) for m in coupled]
    return [await _uncoupled_change(rt, change, candidates, owner)]


async def _coupled_change(rt: Any, change: QueuedChange, mapping: TableMapping, coupling: Any,
                          owner: str) -> ChangeOutcome:
    ids = {"bc_id": coupling.bc_id, "dataverse_id": change.id}
    if not mapping.direction.includes(FROM):
        return ChangeOutcome("ignored", mapping.name, "directionNotAllowed",
                             f"Table mapping {mapping.name} is {mapping.direction.value}: changes made in Dataverse "
                             "are not synchronized.", **ids)
    if coupling.skipped:
        return ChangeOutcome("skipped", mapping.name, rules.Reason.COUPLING_SKIPPED.value,
                             "The coupling is marked as skipped: synchronize it from the errors page.", **ids)
    row = await rt.dataverse.get_or_none(mapping.dataverse_entity_set, change.id,
                                         select=_row_select([mapping]))
    if row is None:
        return ChangeOutcome("ignored", mapping.name, "rowDeleted",
                             "The row no longer exists in Dataverse (its Delete is handled on its own).", **ids)
    row_filter = mapping.filter_for(DATAVERSE)
    if not row_filter.matches(row):
        return ChangeOutcome("ignored", mapping.name, "outsideFilter",
                             "The row is outside the mapping's integration table filter ("
                             + row_filter.describe_failures(row) + "); the scheduled synchronization skips it too.",
                             **ids)
    modified_on = mapping.dataverse_modified_on or "modifiedon"
    if not rules.dataverse_modified_since_last_sync(coupling, row, modified_on):
        # the echo of the app's own write, a duplicate, or a delivery older than what was already synchronized
        return ChangeOutcome("unchanged", mapping.name, rules.Reason.NOT_MODIFIED.value, None, **ids)
    return await _run_pass(rt, change, mapping, owner)


async def _run_pass(rt: Any, change: QueuedChange, mapping: TableMapping, owner: str) -> ChangeOutcome:
    """A From pass for the row, under the row's lease; the pass re-reads the row and the coupling, so a delivery
    that waited for the lease finds what the other one did ("unchanged")."""
    try:
        async with _row_lease(rt, change, owner):
            result = await engine.run_pass(rt, engine.PassRequest(
                mapping, FROM, kind="Synchronization", ids=[change.id], keep_outcomes=True,
                uncoupled_by_mapping=True, details=change.job_details()))
    except errors.RequestError as exc:  # the mapping changed since the change was queued (e.g. its direction)
        return ChangeOutcome("ignored", mapping.name, exc.code, exc.message, dataverse_id=change.id)
    outcome = next((o for o in result.outcomes if o.dataverse_id == change.id), None)
    if outcome is None:
        return ChangeOutcome("unchanged", mapping.name, None, None, dataverse_id=change.id, job_id=result.job.id)
    return ChangeOutcome(outcome.result.value, mapping.name, outcome.reason.value if outcome.reason else None,
                         outcome.message, outcome.bc_id, change.id, result.job.id)


async def _uncoupled_change(rt: Any, change: QueuedChange, candidates: list[TableMapping],
                            owner: str) -> ChangeOutcome:
    names = ", ".join(m.name for m in candidates)
    creators = [m for m in candidates if m.direction.includes(FROM) and not m.sync_only_coupled_records]
    if not creators:
        return ChangeOutcome("ignored", None, rules.Reason.NOT_COUPLED.value,
                             f"The row is not coupled, and table mapping(s) {names} synchronize only coupled records "
                             "or do not synchronize FromIntegrationTable.", dataverse_id=change.id)
    if change.initiating_user_id is not None and change.initiating_user_id == await integration_user_id(rt):
        # BC: changes made by the integration user are not synchronized. Here: a row this app is creating from a
        # BC record, whose coupling is not stored yet - creating it in BC again would duplicate the record.
        return ChangeOutcome("ignored", None, "integrationUser",
                             "The row is not coupled and was changed by this app's own Dataverse user.",
                             dataverse_id=change.id)
    row = await rt.dataverse.get_or_none(creators[0].dataverse_entity_set, change.id, select=_row_select(creators))
    if row is None:
        return ChangeOutcome("ignored", None, "rowDeleted", "The row no longer exists in Dataverse.",
                             dataverse_id=change.id)
    matching = [m for m in creators if m.filter_for(DATAVERSE).matches(row)]
    if not matching:
        why = "; ".join(f"{m.name}: {m.filter_for(DATAVERSE).describe_failures(row)}" for m in creators)
        return ChangeOutcome("ignored", None, "outsideFilter",
                             f"The row is not coupled and is outside the integration table filter ({why}).",
                             dataverse_id=change.id)
    if len(matching) > 1:
        log.warning("dataverse row %s %s passes the filters of %s; created through %s only", change.entity,
                    change.id, ", ".join(m.name for m in matching), matching[0].name)
    return await _run_pass(rt, change, matching[0], owner)


def deleted_message(mapping: TableMapping, entity: str, row_id: str) -> str:
    return (f"The coupled Dataverse {entity} row {row_id} was deleted in Dataverse. The Business Central record "
            "was kept (deletions are never propagated); the mapping's deletion-conflict strategy "
            f"({mapping.deletion_conflict_resolution.value}) applies at the next synchronization.")


async def _deleted(rt: Any, change: QueuedChange, candidates: list[TableMapping]) -> list[ChangeOutcome]:
    acting = [m for m in candidates if m.direction.includes(TO)]
    if not acting:
        return [ChangeOutcome("ignored", None, "directionNotAllowed",
                              "Deletions are never propagated, and no mapping of the table writes to Dataverse.",
                              dataverse_id=change.id)]
    couplings = await _couplings(rt, acting, change.id)
    coupled = [m for m in acting if couplings[m.name] is not None]
    if not coupled:
        return [ChangeOutcome("ignored", None, rules.Reason.NOT_COUPLED.value,
                              "The deleted row was not coupled.", dataverse_id=change.id)]
    probe = coupled[0]
    if await rt.dataverse.get_or_none(probe.dataverse_entity_set, change.id,
                                      select=[probe.dataverse_primary_id]) is not None:
        return [ChangeOutcome("ignored", None, "rowExists",
                              "The row still exists in Dataverse: the delivery is not about its current state.",
                              dataverse_id=change.id)]
    return [await _record_deletion(rt, change, m, couplings[m.name]) for m in coupled]


async def _record_deletion(rt: Any, change: QueuedChange, mapping: TableMapping, coupling: Any) -> ChangeOutcome:
    from coupling.store import CouplingChanged

    text = deleted_message(mapping, change.entity, change.id)
    ids = {"bc_id": coupling.bc_id, "dataverse_id": change.id}
    for _ in range(3):
        recorded = getattr(coupling, "to_error", None) or coupling.last_error
        if coupling.to_result == RESULT_FAILURE and recorded == text:
            return ChangeOutcome("unchanged", mapping.name, "alreadyRecorded", text, **ids,
                                 job_id=coupling.to_job_id)
        job = await rt.jobs.start(rt.jobs.new_job(mapping.name, TO.value, "Synchronization",
                                                  details=change.job_details()))
        marked = rules.after_failure(coupling, TO, job.id, text)
        # recorded, not a repeated failure: never marks the coupling skipped by itself
        marked = replace(marked, skipped=coupling.skipped)
        try:
            await rt.couplings.update(marked)
        except CouplingChanged as exc:
            await rt.jobs.finish(job, status="Failed", message="The coupling changed meanwhile; recorded again.")
            if exc.gone:
                return ChangeOutcome("ignored", mapping.name, rules.Reason.NOT_COUPLED.value,
                                     "The deleted row was uncoupled meanwhile.", dataverse_id=change.id)
            coupling = await rt.couplings.get_by_dataverse(mapping.name, change.id)
            if coupling is None:
                return ChangeOutcome("ignored", mapping.name, rules.Reason.NOT_COUPLED.value,
                                     "The deleted row was uncoupled meanwhile.", dataverse_id=change.id)
            continue
        except Exception as exc:
            await rt.jobs.finish(job, status="Failed", message=f"Recording the deletion failed: {exc}")
            raise
        outcome = rules.Outcome(rules.OutcomeKind.SKIPPED, rules.Reason.DELETION_CONFLICT, text, **ids)
        await rt.jobs.finish(job, counters=rules.JobCounters().add(outcome).to_json(), message=text,
                             outcomes=[outcome.to_json()])
        return ChangeOutcome("recorded", mapping.name, rules.Reason.DELETION_CONFLICT.value, text, **ids,
                             job_id=job.id)
    raise RowBusy(f"the coupling of {change.entity} {change.id} kept changing")
