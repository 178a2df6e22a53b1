"""The Dataverse webhook receiver (``POST /api/webhooks/dataverse``) and the queue worker that processes what it
accepted.

Dataverse posts a ``RemoteExecutionContext`` for each Create / Update / Delete of a registered step (apis.md B),
waits at most 60 s, and for a synchronous step holds the user's save meanwhile. So the receiver does only the
cheap part: authenticate, parse, check the table is mapped and the message handled, and put a small message on
the ``dataverse-changes`` queue through the output binding. The Functions host writes that message before it sends
the response, so a 2xx means the change is durably accepted; if the write fails the invocation fails and Dataverse
sees an error. The queue-triggered ``dataverse_change_worker`` then re-reads the row and synchronizes it (see
``sync.dataverse_webhook``); an exception there makes the queue deliver the message again.

Authentication: the function key (auth level FUNCTION; Dataverse's WebhookKey option sends it as ``?code=``), and,
when ``DATAVERSE_WEBHOOK_SECRET`` is set, the header ``X-Webhook-Secret`` (Dataverse's HttpHeader option), compared
in constant time. A missing or wrong secret is a 401 and nothing is queued.
"""
from __future__ import annotations

import hmac
import json
import logging
import uuid

import azure.functions as func

from sync import dataverse_webhook as service
from sync import errors
from sync.runtime import get_runtime
from sync.settings import get_settings

from . import openapi as oa
from .http import PayloadTooLarge, http_endpoint, json_response

log = logging.getLogger(__name__)
bp = func.Blueprint()

QUEUE = "dataverse-changes"
QUEUE_CONNECTION = "AzureWebJobsStorage"
SECRET_HEADER = "X-Webhook-Secret"
MAX_BODY_BYTES = 4 * 1024 * 1024
"""Dataverse never sends more than 256 KB (above, it drops the images and the Target); the margin is generous so
that a legitimate notification is never refused."""

# --- OpenAPI ---------------------------------------------------------------------------------------------------------
_KEY_VALUE = oa.obj("Parameter", "One key/value pair of a DataContract dictionary.", {
    "key": oa.prop("string", "Key", "The parameter's name, e.g. Target."),
    "value": oa.prop("object", "Value", "The parameter's value: an Entity, an EntityReference or a plain value."),
})
_CONTEXT = oa.obj("Remote execution context", "The RemoteExecutionContext Dataverse posts for a webhook step.", {
    "MessageName": oa.prop("string", "Message", "Create, Update or Delete (others are ignored)."),
    "PrimaryEntityName": oa.prop("string", "Table", "Logical name of the table, e.g. account."),
    "PrimaryEntityId": oa.prop("string", "Row ID", "Id of the created, updated or deleted row."),
    "CorrelationId": oa.prop("string", "Correlation ID", "The operation's correlation id."),
    "Mode": oa.prop("integer", "Mode", "0 synchronous, 1 asynchronous."),
    "InputParameters": oa.array("Input parameters", "The message's parameters (Target).", _KEY_VALUE),
}, required=["MessageName", "PrimaryEntityName", "PrimaryEntityId"])
_ANSWER = oa.obj("Webhook answer", "Whether the change was accepted for synchronization.", {
    "status": oa.prop("string", "Status", "accepted (queued for synchronization) or ignored."),
    "message": oa.prop("string", "Message", "The message name as received."),
    "entity": oa.prop("string", "Table", "Logical name of the table."),
    "id": oa.prop("string", "Row ID", "Id of the row."),
    "mappings": oa.array("Table mappings", "The table mappings the change was queued for.",
                         oa.prop("string", "Table mapping", "A table mapping name.")),
    "reason": oa.prop("string", "Reason", "Why it was ignored (a stable code)."),
    "detail": oa.prop("string", "Detail", "Why it was ignored, for people."),
    "correlationId": oa.prop("string", "Correlation ID", "The operation's correlation id."),
})

oa.operation(
    "/webhooks/dataverse", "post", operation_id="ReceiveDataverseWebhook", summary="Receive a Dataverse webhook",
    description=("Endpoint of a Dataverse webhook step (Create, Update, Delete; PostOperation, asynchronous). "
                 "Authenticated by the function key (WebhookKey option, ?code=) and, when DATAVERSE_WEBHOOK_SECRET "
                 "is set, the X-Webhook-Secret header (HttpHeader option). The change is queued and the row is then "
                 "synchronized from Dataverse; not for makers."),
    visibility="internal",
    parameters=[
        {"name": SECRET_HEADER, "in": "header", "required": False, "type": "string", "x-ms-summary": "Secret",
         "description": "The shared secret, when DATAVERSE_WEBHOOK_SECRET is set.", "x-ms-visibility": "internal"},
        oa.body_param(_CONTEXT, "The RemoteExecutionContext as Dataverse sends it."),
    ],
    responses={
        "202": ("Accepted: the change is queued; the row will be synchronized.", _ANSWER),
        "200": ("Ignored: the table has no mapping, or the message or direction is not handled.", _ANSWER),
    },
)


def check_secret(req: func.HttpRequest) -> None:
    """The ``X-Webhook-Secret`` check (constant time); nothing to check when no secret is configured."""
    secret = get_settings().dataverse_webhook_secret
    if not secret:
        return
    given = req.headers.get(SECRET_HEADER)
    if given is None or not hmac.compare_digest(given.encode("utf-8"), secret.encode("utf-8")):
        raise errors.Unauthorized(f"The {SECRET_HEADER} header is missing or wrong.", code="InvalidWebhookSecret")


@bp.function_name("dataverse_webhook")
@bp.route(route="webhooks/dataverse", methods=["POST"])
@bp.queue_output(arg_name="queue", queue_name=QUEUE, connection=QUEUE_CONNECTION)
@http_endpoint
async def dataverse_webhook(req: func.HttpRequest, queue: func.Out[str]) -> func.HttpResponse:
    check_secret(req)
    body = req.get_body() or b""
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"The request body is {len(body)} bytes; the limit is {MAX_BODY_BYTES} bytes.")
    change = service.parse_webhook(body, req.headers)
    decision = await service.accept(get_runtime(), change)
    if not decision.accepted:
        log.info("dataverse webhook %s ignored: %s: %s", change.describe(), decision.reason, decision.message)
        return json_response(decision.to_json(), 200)
    queue.set(decision.queue_message())
    return json_response(decision.to_json(), 202)


@bp.function_name("dataverse_change_worker")
@bp.queue_trigger(arg_name="msg", queue_name=QUEUE, connection=QUEUE_CONNECTION)
async def dataverse_change_worker(msg: func.QueueMessage) -> None:
    """Synchronizes one accepted change. Any exception (BC or Dataverse unavailable, a crash) makes the queue
    deliver the message again (maxDequeueCount in host.json, then the poison queue; the scheduled synchronization
    still picks the row up by its modifiedon). Repeating it is harmless: it works from the current row."""
    try:
        work = json.loads(msg.get_body().decode("utf-8"))
        if not isinstance(work, dict) or work.get("kind") != service.QUEUE_MESSAGE_KIND:
            raise ValueError("not a dataverse-change message")
        service.QueuedChange.from_json(work)
    except (ValueError, UnicodeDecodeError, errors.RequestError):
        log.error("%s: unreadable message dropped: %r", QUEUE, msg.get_body()[:200])
        return
    try:
        await service.process(get_runtime(), work, owner=str(msg.id or uuid.uuid4()))
    except errors.RequestError as exc:  # permanent: repeating the same message can't help
        log.error("%s: %s %s %s dropped: %s: %s", QUEUE, work.get("message"), work.get("entity"), work.get("id"),
                  exc.code, exc.message)
