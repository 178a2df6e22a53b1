"""Business Central webhooks: receive BC's change notifications, turn them into To passes, keep the subscriptions.

**Receiving** (``accept_notifications``). BC posts ``{"value": [...]}`` to the receiver, several notifications per
call and across subscriptions (apis.md C10). Every item's ``clientState`` is compared in constant time with the
secret stored for its ``subscriptionId`` when the subscription was made. Accepted items become queue messages
(one per entity set and up to ``MAX_IDS_PER_MESSAGE`` records); the trigger answers 2xx only once the host has
them (the queue output binding is written before the response, else the host answers 5xx and BC retries). So a
crash after the answer loses nothing: the queue delivers the message again until a worker finishes it.

Status rules, because BC deletes a subscription on any non-2xx other than 408/429/5xx:

* at least one item carries a valid secret -> 202 (the others are dropped and logged; an unknown subscription that
  shares a call with a known one keeps calling until it expires, since it is never renewed);
* no item does (unknown subscription, wrong or missing ``clientState``) -> 401: a forger learns nothing, and a real
  BC subscription this app no longer knows is deleted by BC, as it should be (the timer re-creates what is needed);
* storage unreachable while checking the secrets -> 503 (``TemporarilyUnavailable``): BC retries for 36 hours.

**Processing** (``process_changes``, the queue worker). ``created``/``updated`` ids run a To pass of each mapping of
the entity set (BC's record engine with its normal change detection, ``uncoupled_by_mapping``: uncoupled records are
treated as a scheduled pass treats them). A duplicate, a late (out-of-order) notification and the echo of this
app's own write to BC all find the coupling's timestamps equal to the record's and end "unchanged": no write to
Dataverse, so no Dataverse webhook and no ping-pong. ``deleted`` deletes nothing in Dataverse: it is logged and left
to the mapping's deletion-conflict strategy at the next synchronization. ``collection`` (more than 1,000 changes)
runs the mapping's scheduled To pass, which re-queries ``lastModifiedDateTime`` from the watermark. Passes take the
mapping's lease, so they never overlap a scheduled run of the same mapping. The schedule stays the safety net: a
webhook pass never moves the watermark, so every change is also seen by the next scheduled run.

**Subscriptions** (``reconcile_subscriptions``). One subscription per entity set of a synchronized, webhook-capable
mapping whose direction includes To (not contacts: BC can't notify them; they stay on the schedule). Creating and
renewing are repairs of one desired state, safe to repeat after a crash: BC's own list is read first, a subscription
for our URL and resource that we don't know (an answer lost after BC created it) is adopted rather than duplicated.
Renewal PATCHes with ``If-Match`` (BC repeats the handshake) when fewer than ``RENEW_WITHIN`` remain.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from azure.core.exceptions import AzureError

from coupling.subscriptions import BCSubscription, SubscriptionStore, WebhookConfig

from . import errors, rules
from .engine import PassRequest, PassResult, run_pass
from .mapping_defaults import BC_WEBHOOK_ENTITY_SETS
from .mappings import Direction, TableMapping

log = logging.getLogger(__name__)

TO = Direction.TO_INTEGRATION_TABLE
MESSAGE_KIND = "bc-changes"
CHANGE_TYPES = ("created", "updated", "deleted", "collection")
MAX_IDS_PER_MESSAGE = 500
"""Records per queue message: ~40 bytes each, far inside the queue's 64 KB (base64-encoded) message limit."""
MAX_BODY_BYTES = 16 * 1024 * 1024
"""A notification call can hold thousands of items (up to 1,000 per subscription, several subscriptions)."""
MAX_TOKEN_CHARS = 1024
SUBSCRIPTION_LIFETIME = timedelta(days=3)
RENEW_WITHIN = timedelta(days=1)
"""The timer (every 6 hours) renews subscriptions with less than this left."""
MANAGEMENT_LEASE = "bc-webhook-subscriptions"
MANAGEMENT_LEASE_DURATION = timedelta(minutes=5)
MAPPING_LEASE_DURATION = timedelta(minutes=5)
MAPPING_LEASE_WAIT = 60.0
"""Seconds a worker waits for a mapping's lease (a scheduled run or another webhook pass holds it) before giving the
message back to the queue."""
LEASE_POLL = 1.0
WEBHOOK_URL_SETTING = "BC_WEBHOOK_URL"
RECEIVER_ROUTE = "webhooks/bc"
TRIGGER = "BCWebhook"


class TemporarilyUnavailable(errors.UpstreamThrottled):
    """Storage (or another dependency) can't be reached right now: 503 with Retry-After, so BC retries."""

    code = "TemporarilyUnavailable"

    def __init__(self, message: str, *, retry_after: float = 10.0):
        super().__init__("storage", message, retry_after=retry_after)


class MappingBusy(errors.Conflict):
    """The mapping's lease is held (a scheduled run or another webhook pass): the queue delivers the work again."""

    code = "MappingBusy"


# ==================================================================================================================
# Pure helpers
# ==================================================================================================================
_RESOURCE_RE = re.compile(
    r"^/?api/(?:[^?]*/)?companies\((?P<company>[^)]*)\)/(?P<set>[A-Za-z][A-Za-z0-9]*)"
    r"(?:\((?P<id>[^)]*)\))?/?(?:\?(?P<query>.*))?$")
_SINCE_RE = re.compile(r"(?:lastModifiedDateTime|lastDateTimeModified)\s+gt\s+(\S+)", re.I)
_GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass(frozen=True)
class Resource:
    company_id: str
    entity_set: str
    record_id: str | None = None
    since: datetime | None = None
    """The ``lastModifiedDateTime gt`` bound of a ``collection`` resource, when it has one."""


def parse_resource(resource: Any) -> Resource | None:
    """``api/v2.0/companies(<cid>)/customers(<id>)`` (leading ``/`` optional, custom API paths too), or the
    collection form ``.../customers?$filter=lastModifiedDateTime%20gt%20<t>``; None when it is neither."""
    if not isinstance(resource, str) or len(resource) > 2048:
        return None
    m = _RESOURCE_RE.match(resource.strip())
    if not m:
        return None
    company = m.group("company").strip("'").lower()
    record = m.group("id")
    if record is not None:
        record = record.strip("'").strip("{}")
        if not _GUID_RE.match(record):
            return None
        record = record.lower()
    since = None
    if m.group("query"):
        match = _SINCE_RE.search(unquote(m.group("query")))
        if match:
            try:
                since = rules.parse_timestamp(match.group(1).strip("'"))
            except (ValueError, TypeError):
                since = None
    return Resource(company, m.group("set"), record, since)


def subscription_resource(company_id: str, entity_set: str) -> str:
    """The ``resource`` of a subscription to one company entity set, as BC's docs spell it."""
    return f"/api/v2.0/companies({company_id})/{entity_set}"


def same_resource(a: str, b: str) -> bool:
    return a.strip().lstrip("/").lower() == b.strip().lstrip("/").lower()


def webhook_mappings(mappings: dict[str, TableMapping]) -> dict[str, list[str]]:
    """entity set -> names of the mappings whose BC changes webhooks can drive: synchronized (not option mappings),
    direction includes To, and BC notifies the entity set (so not contacts nor salespeople)."""
    out: dict[str, list[str]] = {}
    for name, m in sorted(mappings.items()):
        if m.webhook_capable and m.bc_entity_set in BC_WEBHOOK_ENTITY_SETS and not m.is_option_mapping \
                and m.direction.includes(TO):
            out.setdefault(m.bc_entity_set, []).append(name)
    return out


def secret_matches(given: Any, stored: str) -> bool:
    """Constant-time comparison of a notification's ``clientState`` with the stored secret."""
    given_bytes = given.encode("utf-8") if isinstance(given, str) else b""
    return hmac.compare_digest(given_bytes, stored.encode("utf-8")) and isinstance(given, str)


def new_client_state() -> str:
    """A fresh secret for one subscription (BC allows 2,048 characters; 43 URL-safe ones carry 256 bits)."""
    return secrets.token_urlsafe(32)


def redact_url(url: str | None) -> str | None:
    """``url`` with the value of ``code`` (the function key) hidden: for logs and API answers."""
    if not url:
        return url
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = [(k, "***" if k.lower() == "code" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*")))


def with_function_key(url: str, key: str | None) -> str:
    """``url`` with ``?code=<key>`` set (replacing one already there); unchanged when ``key`` is empty."""
    if not key:
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() != "code"]
    query.append(("code", key))
    return urlunsplit(parts._replace(query=urlencode(query)))


def check_notification_url(url: Any, member: str = "notificationUrl") -> str:
    """An absolute https URL (http only for loopback), no fragment; a query (``?code=``) is allowed."""
    if not isinstance(url, str) or not url.strip():
        raise errors.RequestError(f"'{member}' must be the receiver's URL.", code="InvalidField",
                                  details={"field": member})
    url = url.strip()
    parts = urlsplit(url)
    loopback = (parts.hostname or "") in ("127.0.0.1", "localhost", "::1")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment \
            or (parts.scheme == "http" and not loopback):
        raise errors.RequestError(f"'{member}' must be an absolute https URL (http only for 127.0.0.1).",
                                  code="InvalidField", details={"field": member})
    if len(url) > 2048:
        raise errors.RequestError(f"'{member}' is too long.", code="InvalidField", details={"field": member})
    return url


@dataclass(frozen=True)
class Notification:
    subscription_id: str
    change_type: str
    entity_set: str
    record_id: str | None
    since: datetime | None
    last_modified: datetime | None


@dataclass
class Verdict:
    """What the receiver made of one call: the accepted notifications and why the others were dropped."""

    accepted: list[Notification] = field(default_factory=list)
    authenticated: int = 0
    """Items with a valid secret (accepted or not: a malformed item with a valid secret still comes from BC)."""
    rejected: list[tuple[int, str]] = field(default_factory=list)
    """(index, reason) of every dropped item; reasons never carry the secret."""


def parse_body(body: bytes) -> list[Any]:
    """The ``value`` array of a notification call; ``RequestError`` for anything else."""
    if len(body) > MAX_BODY_BYTES:
        raise errors.RequestError(f"The notification body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}.",
                                  code="PayloadTooLarge")
    try:
        data = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError):
        raise errors.RequestError("The notification body is not JSON.", code="InvalidJson") from None
    items = data.get("value") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise errors.RequestError("A notification body is {\"value\": [...]} with at least one notification.",
                                  code="InvalidNotification")
    return items


def verify(items: list[Any], subscriptions: dict[str, BCSubscription], company_id: str) -> Verdict:
    """Check every item's secret against its subscription's, then its shape. Pure."""
    verdict = Verdict()
    dummy = new_client_state()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            verdict.rejected.append((i, "not an object"))
            continue
        sid = item.get("subscriptionId")
        sub = subscriptions.get(sid) if isinstance(sid, str) else None
        # compare even for an unknown subscription, so the answer time says nothing about which ids exist
        ok = secret_matches(item.get("clientState"), sub.client_state if sub else dummy)
        if sub is None:
            verdict.rejected.append((i, "unknown subscription"))
            continue
        if not ok:
            verdict.rejected.append((i, "missing clientState" if item.get("clientState") in (None, "")
                                     else "wrong clientState"))
            continue
        verdict.authenticated += 1
        change = item.get("changeType")
        res = parse_resource(item.get("resource"))
        if change not in CHANGE_TYPES:
            verdict.rejected.append((i, f"unknown changeType {str(change)[:40]!r}"))
        elif res is None or res.entity_set != sub.entity_set or res.company_id != company_id.lower():
            verdict.rejected.append((i, "resource does not belong to the subscription"))
        elif change != "collection" and res.record_id is None:
            verdict.rejected.append((i, "resource names no record"))
        else:
            try:
                modified = rules.parse_timestamp(item.get("lastModifiedDateTime"))
            except (ValueError, TypeError):
                modified = None
            verdict.accepted.append(Notification(sub.subscription_id, change, res.entity_set,
                                                 res.record_id if change != "collection" else None,
                                                 res.since, modified))
    return verdict


def plan_messages(accepted: Iterable[Notification], received_at: datetime) -> list[str]:
    """Queue messages for the accepted notifications: per entity set, duplicates within the call merged, a record
    deleted anywhere in the call counted as deleted, ids left out when a ``collection`` re-query covers them."""
    by_set: dict[str, dict[str, Any]] = {}
    for n in accepted:
        entry = by_set.setdefault(n.entity_set, {"changed": {}, "deleted": {}, "collection": False, "since": None})
        if n.change_type == "collection":
            entry["collection"] = True
            if n.since is not None and (entry["since"] is None or n.since < entry["since"]):
                entry["since"] = n.since
        elif n.change_type == "deleted":
            entry["deleted"][n.record_id] = True
        else:
            entry["changed"][n.record_id] = True
    stamp = _iso(received_at)
    messages: list[str] = []
    for entity_set in sorted(by_set):
        entry = by_set[entity_set]
        deleted = list(entry["deleted"])
        changed = [] if entry["collection"] else [i for i in entry["changed"] if i not in entry["deleted"]]
        base: dict[str, Any] = {"kind": MESSAGE_KIND, "entitySet": entity_set, "receivedAt": stamp}
        if entry["collection"]:
            messages.append(json.dumps({**base, "collection": True,
                                        "since": _iso(entry["since"]) if entry["since"] else None,
                                        "ids": [], "deleted": deleted[:MAX_IDS_PER_MESSAGE]}))
            deleted = deleted[MAX_IDS_PER_MESSAGE:]
        chunks = max(-(-len(changed) // MAX_IDS_PER_MESSAGE), -(-len(deleted) // MAX_IDS_PER_MESSAGE))
        for c in range(chunks):
            part = slice(c * MAX_IDS_PER_MESSAGE, (c + 1) * MAX_IDS_PER_MESSAGE)
            messages.append(json.dumps({**base, "ids": changed[part], "deleted": deleted[part]}))
    return messages


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


# ==================================================================================================================
# Receiving
# ==================================================================================================================
def store_of(rt: Any) -> SubscriptionStore:
    return SubscriptionStore(rt.tables, rt.names)


@dataclass
class Acceptance:
    messages: list[str]
    verdict: Verdict

    def to_json(self) -> dict:
        return {"accepted": len(self.verdict.accepted), "rejected": len(self.verdict.rejected),
                "messages": len(self.messages)}


async def accept_notifications(rt: Any, body: bytes, now: datetime | None = None) -> Acceptance:
    """Verify a notification call and plan its queue messages (the trigger puts them on the queue).

    ``Unauthorized`` when no item carries a valid secret; ``TemporarilyUnavailable`` when the secrets can't be
    read. Nothing is written here: acceptance is durable once the queue output is (the host's part)."""
    items = parse_body(body)
    try:
        subscriptions = {s.subscription_id: s for s in await store_of(rt).list()}
    except AzureError as exc:
        raise TemporarilyUnavailable(f"The subscription secrets can't be read right now ({type(exc).__name__}); "
                                     "try again.") from None
    verdict = verify(items, subscriptions, rt.settings.bc_company_id)
    for index, reason in verdict.rejected:
        item = items[index] if isinstance(items[index], dict) else {}
        log.warning("BC notification %d dropped: %s (subscription %s, resource %s)", index, reason,
                    str(item.get("subscriptionId"))[:64], str(item.get("resource"))[:200])
    if verdict.authenticated == 0:
        raise errors.Unauthorized("No notification carries a valid clientState for a known subscription.",
                                  code="InvalidClientState")
    return Acceptance(plan_messages(verdict.accepted, now or datetime.now(timezone.utc)), verdict)


# ==================================================================================================================
# Processing (the queue worker)
# ==================================================================================================================
@dataclass
class ChangeWork:
    entity_set: str
    ids: list[str]
    deleted: list[str]
    collection: bool
    since: str | None

    @classmethod
    def from_message(cls, work: dict) -> "ChangeWork":
        entity_set = work.get("entitySet")
        if not isinstance(entity_set, str) or not entity_set:
            raise errors.RequestError("bc-changes message without entitySet", code="InvalidMessage")

        def ids(name: str) -> list[str]:
            values = work.get(name) or []
            if not isinstance(values, list):
                raise errors.RequestError(f"bc-changes message: {name} is not a list", code="InvalidMessage")
            return list(dict.fromkeys(str(v).lower() for v in values if isinstance(v, str) and _GUID_RE.match(v)))

        return cls(entity_set, ids("ids"), ids("deleted"), bool(work.get("collection")),
                   work.get("since") if isinstance(work.get("since"), str) else None)


@dataclass
class ChangeResult:
    passes: list[PassResult] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    """Mappings whose lease stayed busy on the last delivery: left to the run that holds it and the schedule."""
    deleted: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    """Notified as created/updated but gone from BC by now (deleted since): nothing to send."""


async def process_changes(rt: Any, work: dict, *, owner: str, final_attempt: bool = False,
                          lease_wait: float | None = None) -> ChangeResult:
    """Run the To passes a ``bc-changes`` message asks for. Safe to repeat: a second run finds every record
    "unchanged". ``MappingBusy`` when a mapping's lease stays held (the queue tries again) unless
    ``final_attempt``, then that mapping is left to the run that holds the lease and to the schedule (which sees
    every change, since webhook passes never move its watermark)."""
    job = ChangeWork.from_message(work)
    result = ChangeResult(deleted=job.deleted)
    mappings = await rt.mappings()
    targets = webhook_mappings(mappings).get(job.entity_set, [])
    if job.deleted:
        log.info("BC deleted %d %s record(s) (%s%s): nothing is deleted in Dataverse; the deletion-conflict "
                 "strategy of %s applies at the next synchronization", len(job.deleted), job.entity_set,
                 ", ".join(job.deleted[:5]), ", ..." if len(job.deleted) > 5 else "",
                 ", ".join(targets) or "no mapping")
    if not targets:
        log.info("BC notifications for %s: no mapping takes them; ignored", job.entity_set)
        return result
    present: list[str] | None = None
    if not job.collection and job.ids:
        found = await rt.bc.get_many(job.entity_set, job.ids, select=["id"])
        present = [i for i in job.ids if i in found]
        result.vanished = [i for i in job.ids if i not in found]
    if not job.collection and not present:
        return result
    wait = MAPPING_LEASE_WAIT if lease_wait is None else lease_wait
    for name in targets:
        mapping = mappings[name]
        details = {"trigger": TRIGGER, "entitySet": job.entity_set}
        if job.deleted or result.vanished:
            details["deletedInBc"] = (job.deleted + result.vanished)[:50]
        if job.collection:
            details["collectionSince"] = job.since
            request = PassRequest(mapping, TO, details=details)
        else:
            request = PassRequest(mapping, TO, ids=present, uncoupled_by_mapping=True, details=details)
        lease = await _acquire(rt, f"mapping-{name}", owner, wait)
        if lease is None:
            if final_attempt:
                log.info("BC changes of %s: the mapping stays busy; left to the run holding it and the schedule",
                         name)
                result.deferred.append(name)
                continue
            raise MappingBusy(f"Table mapping {name} is being synchronized; the notification is retried.",
                              details={"mapping": name})
        held = [lease]
        keeper = asyncio.create_task(_keep(rt, held))
        try:
            result.passes.append(await run_pass(rt, request))
        finally:
            keeper.cancel()
            await rt.leases.release(held[0])
    return result


async def _acquire(rt: Any, name: str, owner: str, wait: float):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, wait)
    while True:
        lease = await rt.leases.acquire(name, owner, MAPPING_LEASE_DURATION)
        if lease is not None or loop.time() >= deadline:
            return lease
        await asyncio.sleep(min(LEASE_POLL, max(0.01, deadline - loop.time())))


async def _keep(rt: Any, held: list) -> None:
    try:
        while True:
            await asyncio.sleep(60)
            held[0] = await rt.leases.renew(held[0], MAPPING_LEASE_DURATION)
    except asyncio.CancelledError:
        pass
    except errors.SyncError as exc:  # lost it: the pass goes on; its writes are safe to repeat
        log.warning("lease %s lost: %s", held[0].name, exc.message)


# ==================================================================================================================
# Subscriptions
# ==================================================================================================================
@dataclass
class SubscriptionOutcome:
    entity_set: str
    mappings: list[str]
    outcome: str
    """created, adopted, renewed, updated, recreated, unchanged, deleted or failed."""
    subscription_id: str | None = None
    expires_at: datetime | None = None
    message: str | None = None

    def to_json(self) -> dict:
        out: dict[str, Any] = {"entitySet": self.entity_set, "mappings": self.mappings, "outcome": self.outcome,
                               "subscriptionId": self.subscription_id, "expirationDateTime": self.expires_at}
        if self.message:
            out["message"] = self.message
        return out


@dataclass
class ReconcileResult:
    notification_url: str | None
    outcomes: list[SubscriptionOutcome]
    skipped: str | None = None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.outcomes:
            out[o.outcome] = out.get(o.outcome, 0) + 1
        return out

    def to_json(self) -> dict:
        out: dict[str, Any] = {"notificationUrl": redact_url(self.notification_url), "counts": self.counts(),
                               "value": [o.to_json() for o in self.outcomes]}
        if self.skipped:
            out["skipped"] = self.skipped
        return out


def setting_url(settings: Any) -> str | None:
    """``BC_WEBHOOK_URL`` (``Settings.bc_webhook_url``): the receiver URL BC should call (with ``?code=`` when the
    function needs a key)."""
    value = settings.bc_webhook_url
    if not value:
        return None
    try:
        return check_notification_url(value, WEBHOOK_URL_SETTING)
    except errors.RequestError as exc:
        raise errors.ConfigurationError(WEBHOOK_URL_SETTING, exc.message) from None


class _BCSubscriptions:
    """BC's root ``subscriptions`` set (not company-scoped; string keys in quotes)."""

    def __init__(self, bc: Any):
        self.bc = bc
        self.url = f"{bc.api_base_url}/subscriptions"

    def one(self, subscription_id: str) -> str:
        return f"{self.url}('{subscription_id.replace(chr(39), chr(39) * 2)}')"

    async def list(self) -> list[dict]:
        out: list[dict] = []
        async for page in self.bc.transport.pages(self.url):
            out.extend(r for r in page if isinstance(r, dict))
        return out

    async def create(self, notification_url: str, resource: str, client_state: str) -> dict:
        return await self.bc.request_json("POST", self.url, json={
            "notificationUrl": notification_url, "resource": resource, "clientState": client_state})

    async def renew(self, subscription_id: str, etag: str, notification_url: str, resource: str,
                    client_state: str) -> dict:
        return await self.bc.request_json("PATCH", self.one(subscription_id), headers={"If-Match": etag or "*"},
                                          json={"notificationUrl": notification_url, "resource": resource,
                                                "clientState": client_state})

    async def delete(self, subscription_id: str, etag: str | None = None) -> None:
        try:
            await self.bc.request_json("DELETE", self.one(subscription_id), headers={"If-Match": etag or "*"})
        except errors.UpstreamNotFound:
            pass


def _expiry(entity: dict, now: datetime) -> datetime:
    try:
        return rules.parse_timestamp(entity.get("expirationDateTime")) or now + SUBSCRIPTION_LIFETIME
    except (ValueError, TypeError):
        return now + SUBSCRIPTION_LIFETIME


def _from_bc(entity: dict, entity_set: str, client_state: str, now: datetime, *,
             created_at: datetime | None = None) -> BCSubscription:
    return BCSubscription(
        subscription_id=str(entity["subscriptionId"]), entity_set=entity_set,
        resource=str(entity.get("resource") or ""), notification_url=str(entity.get("notificationUrl") or ""),
        client_state=client_state, expires_at=_expiry(entity, now), bc_etag=entity.get("@odata.etag"),
        created_at=created_at or now, renewed_at=now)


async def reconcile_subscriptions(rt: Any, *, notification_url: str | None = None, function_key: str | None = None,
                                  derived_url: str | None = None, explicit: bool = False,
                                  now: datetime | None = None,
                                  renew_within: timedelta = RENEW_WITHIN) -> ReconcileResult:
    """Bring BC's subscriptions in line with the mappings: create missing ones (adopting any BC already has for our
    URL), renew those expiring within ``renew_within``, re-create expired or vanished ones, move them to a new URL,
    delete those no mapping needs any more.

    ``explicit`` (the management POST): set up webhooks, using ``notification_url``, else ``BC_WEBHOOK_URL``, else
    the stored URL, else ``derived_url`` (this app's receiver, from the request); ``function_key`` becomes its
    ``?code=``. Not explicit (the timer): only when webhooks were set up (or ``BC_WEBHOOK_URL`` is set) and not
    removed on purpose.
    """
    now = now or datetime.now(timezone.utc)
    store = store_of(rt)
    config = await store.get_config()
    if explicit:
        url = notification_url or setting_url(rt.settings) or (config.notification_url if config else None) \
            or (check_notification_url(derived_url) if derived_url else None)
        if not url:
            raise errors.RequestError("Give 'notificationUrl' (or set BC_WEBHOOK_URL): the receiver URL BC calls.",
                                      code="MissingField", details={"field": "notificationUrl"})
        url = with_function_key(url, function_key)
    else:
        if config is not None and not config.enabled:
            return ReconcileResult(config.notification_url, [], skipped="BC webhooks were removed; POST "
                                   "/api/webhooks/bc/subscriptions sets them up again.")
        url = (config.notification_url if config else None) or setting_url(rt.settings)
        if not url:
            return ReconcileResult(None, [], skipped="BC webhooks are not set up.")
    lease = await rt.leases.acquire(MANAGEMENT_LEASE, f"reconcile-{secrets.token_hex(8)}", MANAGEMENT_LEASE_DURATION)
    if lease is None:
        raise errors.Conflict("The BC subscriptions are being updated by another request; try again in a minute.",
                              code="SubscriptionsBusy")
    try:
        if explicit or config is None or config.notification_url != url:
            await store.put_config(WebhookConfig(url, True))
        return ReconcileResult(url, await _reconcile(rt, store, url, now, renew_within))
    finally:
        await rt.leases.release(lease)


async def _reconcile(rt: Any, store: SubscriptionStore, url: str, now: datetime,
                     renew_within: timedelta) -> list[SubscriptionOutcome]:
    api = _BCSubscriptions(rt.bc)
    wanted = webhook_mappings(await rt.mappings())
    stored = await store.list()
    in_bc = {str(e.get("subscriptionId")): e for e in await api.list()}
    company = rt.settings.bc_company_id
    outcomes: list[SubscriptionOutcome] = []
    by_set: dict[str, list[BCSubscription]] = {}
    for s in stored:
        by_set.setdefault(s.entity_set, []).append(s)

    for entity_set in sorted(set(wanted) | set(by_set)):
        names = wanted.get(entity_set, [])
        mine = by_set.get(entity_set, [])
        resource = subscription_resource(company, entity_set)
        try:
            if not names:  # no mapping needs it any more
                for s in mine:
                    await api.delete(s.subscription_id, (in_bc.get(s.subscription_id) or {}).get("@odata.etag"))
                    await store.delete(s.subscription_id)
                outcomes.append(SubscriptionOutcome(entity_set, names, "deleted",
                                                    mine[0].subscription_id if mine else None))
                continue
            live = [s for s in mine if s.subscription_id in in_bc]
            for s in mine:  # gone from BC (deleted after a refused call, expired and cleaned up): forget it
                if s.subscription_id not in in_bc:
                    await store.delete(s.subscription_id)
            for extra in live[1:]:  # duplicates: keep one
                await api.delete(extra.subscription_id, in_bc[extra.subscription_id].get("@odata.etag"))
                await store.delete(extra.subscription_id)
            current = live[0] if live else None
            if current is None:
                outcome = await _create_or_adopt(api, store, in_bc, entity_set, names, resource, url, now,
                                                 recreated=bool(mine))
            else:
                outcome = await _renew_if_due(api, store, in_bc[current.subscription_id], current, names, url, now,
                                              renew_within, resource)
        except errors.SyncError as exc:
            log.warning("BC subscription for %s: %s", entity_set, exc.message)
            outcome = SubscriptionOutcome(entity_set, names, "failed", message=exc.message)
        except AzureError as exc:
            outcome = SubscriptionOutcome(entity_set, names, "failed",
                                          message=f"Storage failed ({type(exc).__name__}); try again.")
        outcomes.append(outcome)
    return outcomes


async def _create_or_adopt(api: _BCSubscriptions, store: SubscriptionStore, in_bc: dict[str, dict],
                           entity_set: str, names: list[str], resource: str, url: str, now: datetime, *,
                           recreated: bool) -> SubscriptionOutcome:
    for sid, entity in in_bc.items():  # made for us, but unknown here (e.g. an answer lost after BC created it)
        if same_resource(str(entity.get("resource") or ""), resource) and entity.get("notificationUrl") == url \
                and isinstance(entity.get("clientState"), str) and entity["clientState"] \
                and _expiry(entity, now) > now:
            sub = _from_bc(entity, entity_set, entity["clientState"], now)
            await store.put(sub)
            in_bc.pop(sid)
            return SubscriptionOutcome(entity_set, names, "adopted", sub.subscription_id, sub.expires_at)
    state = new_client_state()
    entity = await api.create(url, resource, state)
    sub = _from_bc(entity, entity_set, state, now)
    await store.put(sub)
    log.info("BC subscription %s created for %s (expires %s)", sub.subscription_id, entity_set, _iso(sub.expires_at))
    return SubscriptionOutcome(entity_set, names, "recreated" if recreated else "created", sub.subscription_id,
                               sub.expires_at)


async def _renew_if_due(api: _BCSubscriptions, store: SubscriptionStore, entity: dict, sub: BCSubscription,
                        names: list[str], url: str, now: datetime, renew_within: timedelta,
                        resource: str) -> SubscriptionOutcome:
    bc_expiry = _expiry(entity, now)
    moved = entity.get("notificationUrl") != url
    if bc_expiry <= now:  # expired: BC sends nothing any more; make a new one
        await api.delete(sub.subscription_id, entity.get("@odata.etag"))
        await store.delete(sub.subscription_id)
        return await _create_or_adopt(api, store, {}, sub.entity_set, names, resource, url, now, recreated=True)
    if not moved and bc_expiry - now > renew_within:
        if sub.expires_at != bc_expiry or sub.bc_etag != entity.get("@odata.etag"):
            sub.expires_at, sub.bc_etag = bc_expiry, entity.get("@odata.etag")
            await store.put(sub)
        return SubscriptionOutcome(sub.entity_set, names, "unchanged", sub.subscription_id, bc_expiry)
    try:
        renewed = await api.renew(sub.subscription_id, entity.get("@odata.etag") or sub.bc_etag or "*", url,
                                  str(entity.get("resource") or sub.resource), sub.client_state)
    except errors.UpstreamConcurrency:  # changed since we listed it: renew whatever it is now
        renewed = await api.renew(sub.subscription_id, "*", url, str(entity.get("resource") or sub.resource),
                                  sub.client_state)
    except errors.UpstreamNotFound:  # vanished meanwhile
        await store.delete(sub.subscription_id)
        return await _create_or_adopt(api, store, {}, sub.entity_set, names, resource, url, now, recreated=True)
    fresh = _from_bc({**entity, **(renewed or {})}, sub.entity_set, sub.client_state, now,
                     created_at=sub.created_at)
    await store.put(fresh)
    log.info("BC subscription %s for %s %s (expires %s)", sub.subscription_id, sub.entity_set,
             "moved to a new URL" if moved else "renewed", _iso(fresh.expires_at))
    return SubscriptionOutcome(sub.entity_set, names, "updated" if moved else "renewed", sub.subscription_id,
                               fresh.expires_at)


async def remove_subscriptions(rt: Any) -> ReconcileResult:
    """Delete every subscription this app holds (in BC and here) and stop the timer from making new ones."""
    store = store_of(rt)
    config = await store.get_config()
    lease = await rt.leases.acquire(MANAGEMENT_LEASE, f"remove-{secrets.token_hex(8)}", MANAGEMENT_LEASE_DURATION)
    if lease is None:
        raise errors.Conflict("The BC subscriptions are being updated by another request; try again in a minute.",
                              code="SubscriptionsBusy")
    try:
        await store.put_config(WebhookConfig(config.notification_url if config else None, False))
        api = _BCSubscriptions(rt.bc)
        outcomes = []
        for s in await store.list():
            try:
                await api.delete(s.subscription_id, None)
                await store.delete(s.subscription_id)
                outcomes.append(SubscriptionOutcome(s.entity_set, [], "deleted", s.subscription_id))
            except errors.SyncError as exc:
                outcomes.append(SubscriptionOutcome(s.entity_set, [], "failed", s.subscription_id,
                                                    message=exc.message))
        return ReconcileResult(config.notification_url if config else None, outcomes)
    finally:
        await rt.leases.release(lease)


async def list_subscriptions(rt: Any, now: datetime | None = None) -> dict:
    """The subscriptions this app holds, with their expiry (never their secrets)."""
    now = now or datetime.now(timezone.utc)
    store = store_of(rt)
    config = await store.get_config()
    wanted = webhook_mappings(await rt.mappings())
    value = []
    for s in await store.list():
        status = "expired" if s.expires_at <= now else "expiring" if s.expires_at - now <= RENEW_WITHIN \
            else "active"
        value.append({"entitySet": s.entity_set, "mappings": wanted.get(s.entity_set, []),
                      "subscriptionId": s.subscription_id, "resource": s.resource,
                      "notificationUrl": redact_url(s.notification_url), "expirationDateTime": s.expires_at,
                      "status": status, "createdAt": s.created_at, "renewedAt": s.renewed_at})
    return {"enabled": bool(config and config.enabled),
            "notificationUrl": redact_url(config.notification_url if config else setting_url(rt.settings)),
            "entitySets": sorted(wanted), "value": value}
