"""Business Central webhooks: the receiver BC calls, the management of the subscriptions, their renewal timer and
the queue worker that turns accepted notifications into To passes. The rules live in ``sync.bc_webhook``."""
from __future__ import annotations

import json
import logging
import typing
import uuid
from datetime import datetime, timezone

import azure.functions as func

from sync import bc_webhook, errors
from sync.runtime import get_runtime

from . import openapi as oa
from .http import field, http_endpoint, json_response, read_json, reject_unknown

log = logging.getLogger(__name__)
bp = func.Blueprint()

QUEUE = "bc-changes"
QUEUE_CONNECTION = "AzureWebJobsStorage"
MAX_DEQUEUE_COUNT = 5
"""host.json ``queues.maxDequeueCount``: the delivery after which the queue gives a message up."""
RENEW_SCHEDULE = "0 17 */6 * * *"
"""Every 6 hours (at minute 17): renews subscriptions with less than a day left (they live 3 days)."""

# --- OpenAPI shapes ----------------------------------------------------------------------------------------------
_NOTIFICATION = oa.obj("Notification", "One change BC reports.", {
    "subscriptionId": oa.prop("string", "Subscription ID", "The subscription that reports the change."),
    "clientState": oa.prop("string", "Client state", "The secret given when the subscription was created."),
    "expirationDateTime": oa.prop("string", "Expires", "When the subscription expires.", format="date-time"),
    "resource": oa.prop("string", "Resource", "The changed record, or the collection to re-query."),
    "changeType": oa.prop("string", "Change type", "created, updated, deleted or collection.",
                          enum=["created", "updated", "deleted", "collection"]),
    "lastModifiedDateTime": oa.prop("string", "Modified at", "When the record changed.", format="date-time"),
})
_TOKEN = oa.query_param("validationToken", "Validation token", "Sent by BC when it creates or renews a subscription; "
                        "the answer is the token itself (200, text/plain).")
_SUBSCRIPTION = oa.define("BcSubscription", oa.obj("BC subscription", "One BC webhook subscription of this app.", {
    "entitySet": oa.prop("string", "Entity set", "The BC entity set, e.g. customers."),
    "mappings": oa.array("Table mappings", "The table mappings its changes are synchronized by.",
                         oa.prop("string", "Table mapping", "A table mapping name.")),
    "subscriptionId": oa.prop("string", "Subscription ID", "BC's id of the subscription."),
    "resource": oa.prop("string", "Resource", "The subscribed BC resource."),
    "notificationUrl": oa.prop("string", "Notification URL", "Where BC sends notifications (function key hidden)."),
    "expirationDateTime": oa.prop("string", "Expires", "When BC stops notifying unless renewed.",
                                  format="date-time"),
    "status": oa.prop("string", "Status", "active, expiring (renewed at the next timer run) or expired."),
    "createdAt": oa.prop("string", "Created at", "When this app created it.", format="date-time"),
    "renewedAt": oa.prop("string", "Renewed at", "When this app last created, renewed or checked it.",
                         format="date-time"),
}))
_OUTCOME = oa.obj("Subscription outcome", "What was done for one entity set.", {
    "entitySet": oa.prop("string", "Entity set", "The BC entity set."),
    "mappings": oa.array("Table mappings", "The table mappings that need it.",
                         oa.prop("string", "Table mapping", "A table mapping name.")),
    "outcome": oa.prop("string", "Outcome", "created, adopted, renewed, updated, recreated, unchanged, deleted "
                                            "or failed."),
    "subscriptionId": oa.prop("string", "Subscription ID", "BC's id of the subscription."),
    "expirationDateTime": oa.prop("string", "Expires", "When it expires.", format="date-time"),
    "message": oa.prop("string", "Message", "Why it failed (BC's message)."),
})
_RECONCILED = oa.obj("Subscriptions result", "The outcome per entity set.", {
    "notificationUrl": oa.prop("string", "Notification URL", "The receiver URL BC calls (function key hidden)."),
    "counts": oa.obj("Counts", "Entity sets per outcome.", {}),
    "value": oa.array("Outcomes", "One per entity set.", _OUTCOME),
})


# --- the receiver ---------------------------------------------------------------------------------------------------
oa.operation(
    "/webhooks/bc", "post", operation_id="ReceiveBcNotifications", visibility="internal",
    summary="Receive BC change notifications",
    description=("Business Central calls this URL (the subscriptions' notificationUrl). With a validationToken "
                 "query parameter it is the subscription handshake: the answer is 200 with the token as plain text. "
                 "Otherwise the body is {\"value\": [...]} notifications; each clientState is checked against the "
                 "subscription's secret, and the changed records are queued for a To synchronization (202, only "
                 "once they are stored durably). 401 when no notification has a valid secret (BC then deletes "
                 "that subscription); 503 when storage is unavailable (BC retries for 36 hours)."),
    parameters=[_TOKEN, {"name": "body", "in": "body", "required": False, "x-ms-summary": "Notifications",
                         "description": "The notifications.",
                         "schema": oa.obj("Notifications", "What BC sends.", {
                             "value": oa.array("Notifications", "One item per change.", _NOTIFICATION)})}],
    responses={"202": ("Accepted: the changes are queued.", oa.obj("Acceptance", "What was accepted.", {
        "accepted": oa.prop("integer", "Accepted", "Notifications accepted."),
        "rejected": oa.prop("integer", "Rejected", "Notifications dropped (wrong secret, unknown subscription)."),
        "messages": oa.prop("integer", "Messages", "Queue messages written."),
    })), "200": ("Handshake: the validation token, as plain text.", None)},
)
oa.operation(
    "/webhooks/bc", "get", operation_id="ValidateBcSubscription", visibility="internal",
    summary="Answer the BC subscription handshake",
    description="The validationToken handshake of a subscription (BC may use GET): 200 with the token as plain text.",
    parameters=[{**_TOKEN, "required": True, "x-ms-visibility": "important"}],
    responses={"200": ("The validation token, as plain text.", oa.prop("string", "Token", "The token."))},
)


def _handshake(req: func.HttpRequest) -> func.HttpResponse | None:
    """BC's handshake: answered from the query alone (no settings, no storage), so it works before anything else."""
    token = req.params.get("validationToken")
    if token is None:
        return None
    if not token or len(token) > bc_webhook.MAX_TOKEN_CHARS or not token.isprintable():
        raise errors.RequestError("'validationToken' must be 1-1024 printable characters.", code="InvalidToken")
    return func.HttpResponse(token, status_code=200, mimetype="text/plain", charset="utf-8")


@bp.function_name("bc_webhook")
@bp.route(route="webhooks/bc", methods=["GET", "POST"])
@bp.queue_output(arg_name="queue", queue_name=QUEUE, connection=QUEUE_CONNECTION)
@http_endpoint
async def bc_webhook_receiver(req: func.HttpRequest,
                              queue: func.Out[typing.List[str]]) -> func.HttpResponse:  # noqa: UP006
    answer = _handshake(req)
    if answer is not None:
        return answer
    if req.method == "GET":
        raise errors.RequestError("A GET is only the subscription handshake: 'validationToken' is missing.",
                                  code="MissingField", details={"field": "validationToken"})
    acceptance = await bc_webhook.accept_notifications(get_runtime(), req.get_body() or b"")
    if acceptance.messages:
        queue.set(acceptance.messages)  # durable once the host has written them; only then does BC get the 202
    return json_response(acceptance.to_json(), 202)


# --- the worker ----------------------------------------------------------------------------------------------------
@bp.function_name("bc_webhook_worker")
@bp.queue_trigger(arg_name="msg", queue_name=QUEUE, connection=QUEUE_CONNECTION)
async def bc_webhook_worker(msg: func.QueueMessage) -> None:
    """Synchronizes the records of one accepted notification message To Dataverse. An exception gives the message
    back to the queue (delivered again after the visibility timeout, up to maxDequeueCount); the work is safe to
    repeat."""
    try:
        work = json.loads(msg.get_body().decode("utf-8"))
        if not isinstance(work, dict) or work.get("kind") != bc_webhook.MESSAGE_KIND:
            raise ValueError("not a bc-changes message")
    except (ValueError, UnicodeDecodeError):
        log.error("bc-changes: unreadable message dropped: %r", msg.get_body()[:200])
        return
    final = (getattr(msg, "dequeue_count", None) or 1) >= MAX_DEQUEUE_COUNT
    try:
        result = await bc_webhook.process_changes(get_runtime(), work, owner=f"bc-webhook-{msg.id or uuid.uuid4()}",
                                                  final_attempt=final)
    except (errors.RequestError, errors.NotSupported) as exc:
        if isinstance(exc, bc_webhook.MappingBusy):
            raise  # delivered again later
        log.error("bc-changes: message dropped: %s", exc.message)
        return
    for p in result.passes:
        log.info("bc-changes %s: job %s %s %s", work.get("entitySet"), p.job.id, p.job.mapping,
                 p.counters.to_json())


# --- management ----------------------------------------------------------------------------------------------------
oa.operation(
    "/webhooks/bc/subscriptions", "get", operation_id="ListBcSubscriptions", visibility="advanced",
    summary="List the BC webhook subscriptions",
    description="The BC webhook subscriptions this app holds, one per entity set of a webhook-capable table mapping "
                "that synchronizes To Dataverse, with their expiry.",
    responses={"200": ("The subscriptions.", oa.obj("BC subscriptions", "The subscriptions and their settings.", {
        "enabled": oa.prop("boolean", "Enabled", "Whether the app keeps subscriptions (false after a removal)."),
        "notificationUrl": oa.prop("string", "Notification URL", "The receiver URL BC calls (function key hidden)."),
        "entitySets": oa.array("Entity sets", "The entity sets that should have a subscription.",
                               oa.prop("string", "Entity set", "A BC entity set.")),
        "value": oa.array("Subscriptions", "The subscriptions.", _SUBSCRIPTION),
    }))},
)


@bp.function_name("bc_subscriptions_list")
@bp.route(route="webhooks/bc/subscriptions", methods=["GET"])
@http_endpoint
async def bc_subscriptions_list(req: func.HttpRequest) -> func.HttpResponse:
    return json_response(await bc_webhook.list_subscriptions(get_runtime()))


oa.operation(
    "/webhooks/bc/subscriptions", "post", operation_id="SetUpBcSubscriptions",
    summary="Create or repair the BC webhook subscriptions",
    description=("Creates one BC webhook subscription per entity set of a webhook-capable table mapping that "
                 "synchronizes To Dataverse (customers, vendors, items, currencies, units of measure; not contacts, "
                 "which BC can't notify), adopts or repairs existing ones and renews those expiring within a day. "
                 "BC calls the receiver with a validationToken before it answers. Safe to repeat. The receiver URL "
                 "is notificationUrl, else the BC_WEBHOOK_URL setting, else the one used before, else this app's "
                 "/api/webhooks/bc; functionKey is added as ?code=."),
    parameters=[{"name": "body", "in": "body", "required": False, "x-ms-summary": "Request",
                 "description": "Optional settings.", "schema": oa.obj("Subscription request", "Optional.", {
                     "notificationUrl": oa.prop("string", "Notification URL",
                                                "The receiver URL BC calls, e.g. https://<app>.azurewebsites.net/api/"
                                                "webhooks/bc?code=<key>."),
                     "functionKey": oa.prop("string", "Function key",
                                            "A key of the bc_webhook function (or a host key), sent as ?code=."),
                 })}],
    responses={"200": ("The outcome per entity set.", _RECONCILED)},
)


@bp.function_name("bc_subscriptions_set_up")
@bp.route(route="webhooks/bc/subscriptions", methods=["POST"])
@http_endpoint
async def bc_subscriptions_set_up(req: func.HttpRequest) -> func.HttpResponse:
    body = read_json(req, required=False)
    reject_unknown(body, {"notificationUrl", "functionKey"})
    url = field(body, "notificationUrl", str)
    key = field(body, "functionKey", str)
    if url is not None:
        url = bc_webhook.check_notification_url(url)
    if key is not None and (not key.strip() or not key.isprintable() or len(key) > 512):
        raise errors.RequestError("'functionKey' must be a function key.", code="InvalidField",
                                  details={"field": "functionKey"})
    derived = req.url.split("?", 1)[0].split("/api/", 1)[0] + "/api/" + bc_webhook.RECEIVER_ROUTE
    result = await bc_webhook.reconcile_subscriptions(get_runtime(), notification_url=url, explicit=True,
                                                      function_key=key.strip() if key else None, derived_url=derived)
    return json_response(result.to_json())


oa.operation(
    "/webhooks/bc/subscriptions", "delete", operation_id="RemoveBcSubscriptions", visibility="advanced",
    summary="Remove the BC webhook subscriptions",
    description="Deletes every BC webhook subscription of this app, in BC and here; the renewal timer then leaves "
                "BC alone until the subscriptions are set up again. BC changes still arrive with the schedule.",
    responses={"200": ("The outcome per subscription.", _RECONCILED)},
)


@bp.function_name("bc_subscriptions_remove")
@bp.route(route="webhooks/bc/subscriptions", methods=["DELETE"])
@http_endpoint
async def bc_subscriptions_remove(req: func.HttpRequest) -> func.HttpResponse:
    return json_response((await bc_webhook.remove_subscriptions(get_runtime())).to_json())


@bp.function_name("bc_subscriptions_renew")
@bp.timer_trigger(arg_name="timer", schedule=RENEW_SCHEDULE, run_on_startup=False, use_monitor=True)
async def bc_subscriptions_renew(timer: func.TimerRequest) -> None:
    """Renews the subscriptions expiring within a day, re-creates lost or expired ones (when webhooks are set up)."""
    try:
        result = await bc_webhook.reconcile_subscriptions(get_runtime(), now=datetime.now(timezone.utc))
    except errors.Conflict as exc:  # a management request is doing it right now
        log.info("BC subscriptions: %s", exc.message)
        return
    if result.skipped:
        log.info("BC subscriptions: %s", result.skipped)
    else:
        log.info("BC subscriptions: %s", result.counts())
