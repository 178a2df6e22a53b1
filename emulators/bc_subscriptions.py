"""Webhook subscriptions of the BC emulator (apis.md C10): the root ``subscriptions`` entity set and the delivery of
change notifications.

* ``POST .../api/v2.0/subscriptions`` validates the body, then calls the ``notificationUrl`` with
  ``?validationToken=<token>`` (POST) and creates the subscription only when the answer is 200 with the token as
  the body (else 400, nothing created); 201 with the entity shaped like samples/bc_subscription_real.json
  (``resource`` without its leading slash, 32-hex ``subscriptionId``, ``expirationDateTime`` = now + 3 days).
* ``GET`` list / ``GET subscriptions('<id>')`` (string key in quotes) / ``PATCH`` with ``If-Match`` (renews: the
  handshake again, then 3 more days) / ``DELETE`` with ``If-Match``. At most 200 subscriptions. Expired
  subscriptions are removed at the next access (BC sends nothing for them).
* Every committed change (``BCEmulator.on_change``) of a subscribed entity set is held for a coalescing window
  (``delay``, 30 s by default, short in tests): changes to one record in the window become one notification; more
  than ``collection_threshold`` records (1,000) of one subscription become a single ``collection`` notification
  with a ``lastModifiedDateTime gt`` filter. At the end of the window one POST per notification URL carries the
  notifications of every subscription to it.
* The answer decides: 2xx delivered; 408, 429, 5xx or no answer: sent again later (back-off, for ``retry_window``,
  36 h); any other status deletes every subscription of that call, without retry.

The sender is pluggable: ``http_sender`` (a real HTTP POST, loopback only) by default; tests pass a callable that
calls the app's function directly: ``sender(method, url, body, headers) -> (status, body)``; raising counts as
"unreachable".
"""
from __future__ import annotations

import base64
import json
import re
import threading
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from urllib.parse import quote, urlsplit

from .bc import BCError, ODATA_JSON, _Call, _fmt_ts, _json_body
from .server import Response

Sender = Callable[[str, str, bytes, dict], "tuple[int, bytes]"]

DEFAULT_DELAY = 30.0
DEFAULT_COLLECTION_THRESHOLD = 1000
MAX_SUBSCRIPTIONS = 200
LIFETIME = timedelta(days=3)
RETRY_WINDOW = timedelta(hours=36)
HANDSHAKE_TIMEOUT = 5.0
MAX_CLIENT_STATE = 2048
USER_ID = "0f72f0c3-0aaf-47ea-a532-e913a02e59ff"
WEBHOOK_ENTITY_SETS = frozenset({
    "accounts", "companyInformation", "countriesRegions", "currencies", "customerPaymentJournals", "customers",
    "dimensions", "employees", "generalLedgerEntries", "itemCategories", "items", "journals", "paymentMethods",
    "paymentTerms", "purchaseInvoices", "salesCreditMemos", "salesInvoices", "salesOrders", "salesQuotes",
    "shipmentMethods", "unitsOfMeasure", "vendors"})
"""The documented webhook-supported v2.0 entity sets (not contacts, not salespeoplePurchasers)."""

_KEY_RE = re.compile(r"^subscriptions(?:\((.*)\))?$")
_RESOURCE_RE = re.compile(r"^/?(?:api/v2\.0/)?companies\(([^)]*)\)/([A-Za-z][A-Za-z0-9]*)/?$")
_WRITABLE = {"notificationUrl", "resource", "clientState"}
_READ_ONLY = {"subscriptionId", "timestamp", "userId", "lastModifiedDateTime", "expirationDateTime",
              "systemCreatedAt", "systemCreatedBy", "systemModifiedAt", "systemModifiedBy"}


def http_sender(method: str, url: str, body: bytes, headers: dict, timeout: float = HANDSHAKE_TIMEOUT
                ) -> tuple[int, bytes]:
    """A real HTTP request, to loopback only (the emulator never sends anything elsewhere)."""
    host = urlsplit(url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ConnectionError(f"the BC emulator only calls loopback URLs, not {host!r}")
    req = urllib.request.Request(url, data=body if method != "GET" else None, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback only, checked above
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read() or b""


@dataclass
class Delivery:
    """One notification call as sent (each retry is another Delivery)."""

    url: str
    payload: dict
    attempt: int
    status: int | None = None
    """The answer's status; None when nothing answered."""
    error: str | None = None


@dataclass
class _Job:
    url: str
    payload: dict
    subscription_ids: set[str]
    first_at: datetime
    attempt: int = 0


@dataclass
class _Window:
    changes: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)
    """subscription id -> record id -> (changeType, lastModifiedDateTime)."""


def _merge(old: str | None, new: str) -> str:
    if new == "deleted" or old is None:
        return new
    if old == "created":
        return "created"  # created then updated within the window: still a new record
    return new


def _fmt_seconds_ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class SubscriptionHub:
    """The ``subscriptions`` entity set and the notification sender of one ``BCEmulator``."""

    def __init__(self, emulator: Any, *, delay: float = DEFAULT_DELAY,
                 collection_threshold: int = DEFAULT_COLLECTION_THRESHOLD, max_subscriptions: int = MAX_SUBSCRIPTIONS,
                 lifetime: timedelta = LIFETIME, retry_base: float = 30.0, retry_max: float = 3600.0,
                 retry_window: timedelta = RETRY_WINDOW, sender: Sender | None = None,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT):
        self.emulator = emulator
        self.delay = delay
        self.collection_threshold = collection_threshold
        self.max_subscriptions = max_subscriptions
        self.lifetime = lifetime
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.retry_window = retry_window
        self.sender: Sender = sender or (lambda m, u, b, h: http_sender(m, u, b, h, self.handshake_timeout))
        self.handshake_timeout = handshake_timeout
        self.lock = threading.RLock()
        self._idle = threading.Condition(self.lock)
        self._subs: dict[str, dict] = {}
        self._window = _Window()
        self._timer: threading.Timer | None = None
        self._busy = 0
        """Deliveries being sent or waiting for a retry."""
        self._timers: set[threading.Timer] = set()
        self._version = 0
        self.deliveries: list[Delivery] = []
        self.handshakes: list[tuple[str, int | None]] = []
        """(notification URL, answer status or None) of every validation call."""
        self._closed = False

    def configure(self, **settings: Any) -> "SubscriptionHub":
        """Change delay, collection_threshold, max_subscriptions, retry_base, retry_max, retry_window, sender..."""
        with self.lock:
            for name, value in settings.items():
                if not hasattr(self, name) or name.startswith("_"):
                    raise AttributeError(f"no setting {name!r}")
                setattr(self, name, value)
        return self

    def close(self) -> None:
        with self.lock:
            self._closed = True
            for t in [self._timer, *self._timers]:
                if t is not None:
                    t.cancel()
            self._timer = None
            self._timers.clear()

    # -- the data API (tests) ---------------------------------------------------------------------------------
    def all(self) -> list[dict]:
        with self.lock:
            self._purge_expired()
            return [dict(s) for s in self._subs.values()]

    def get(self, subscription_id: str) -> dict | None:
        with self.lock:
            self._purge_expired()
            s = self._subs.get(subscription_id)
            return dict(s) if s else None

    def expire(self, subscription_id: str, at: datetime | None = None) -> None:
        """Move a subscription's expiry (to now: it lapses at the next access)."""
        with self.lock:
            s = self._subs[subscription_id]
            self._subs[subscription_id] = {**s, "expirationDateTime": _fmt_seconds_ts(at or self._now())}

    def remove(self, subscription_id: str) -> None:
        """Delete a subscription as BC's cleanup would (no request)."""
        with self.lock:
            self._subs.pop(subscription_id, None)

    def pending(self) -> int:
        with self.lock:
            return sum(len(v) for v in self._window.changes.values())

    def flush(self) -> None:
        """End the coalescing window now and deliver (in the calling thread; not from the app's event loop)."""
        with self.lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self._end_window()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until nothing is pending, being sent or waiting for a retry."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._window.changes and self._timer is None
                                       and self._busy == 0, timeout)

    # -- HTTP -----------------------------------------------------------------------------------------------------
    def handle(self, call: _Call, segments: list[str]) -> Response:
        if len(segments) != 1:
            raise self._no_resource(call)
        m = _KEY_RE.match(segments[0])
        if not m:
            raise self._no_resource(call)
        key = m.group(1)
        if key is None:
            if call.method == "GET":
                with self.lock:
                    self._purge_expired()
                    value = [dict(s) for s in self._subs.values()]
                return Response.json(200, {"@odata.context": self._context("subscriptions"), "value": value},
                                     content_type=ODATA_JSON)
            if call.method == "POST":
                return self._create(call)
            raise _not_allowed(call.method, "EntitySet")
        if len(key) < 2 or not (key.startswith("'") and key.endswith("'")):
            raise BCError(400, "BadRequest_NotFound", "Bad Request - Error in query syntax.")
        sid = key[1:-1].replace("''", "'")
        if call.method == "GET":
            with self.lock:
                self._purge_expired()
                sub = self._subs.get(sid)
            if sub is None:
                raise _missing()
            return self._entity(200, sub)
        if call.method == "PATCH":
            return self._renew(call, sid)
        if call.method == "DELETE":
            with self.lock:
                self._purge_expired()
                sub = self._subs.get(sid)
                if sub is None:
                    raise _missing()
                _check_if_match(call.headers.get("If-Match"), sub)
                del self._subs[sid]
                self._window.changes.pop(sid, None)
            return Response.empty(204)
        raise _not_allowed(call.method, "Entity")

    def _create(self, call: _Call) -> Response:
        body = self._body(call)
        url = body.get("notificationUrl")
        if not isinstance(url, str) or not url.strip():
            raise BCError(400, "BadRequest", 'A "notificationUrl" must be provided.')
        entity_set = self._entity_set(body.get("resource"))
        state = self._client_state(body.get("clientState", ""))
        with self.lock:
            self._purge_expired()
            if len(self._subs) >= self.max_subscriptions:
                raise BCError(400, "Application_DialogException",
                              f"The maximum number of subscriptions ({self.max_subscriptions}) has been reached.")
        self._handshake(url)
        now = self._now()
        with self.lock:
            if len(self._subs) >= self.max_subscriptions:  # filled up during the handshake
                raise BCError(400, "Application_DialogException",
                              f"The maximum number of subscriptions ({self.max_subscriptions}) has been reached.")
            sid = uuid.uuid4().hex
            sub = self._stamp({
                "subscriptionId": sid, "notificationUrl": url,
                "resource": f"api/v2.0/companies({self.emulator.company_id})/{entity_set}",
                "userId": USER_ID, "clientState": state,
                "systemCreatedAt": _fmt_ts(now), "systemCreatedBy": USER_ID}, now)
            self._subs[sid] = sub
        return self._entity(201, sub, {"Location": f"{self.emulator.base_url}/subscriptions('{sid}')"})

    def _renew(self, call: _Call, sid: str) -> Response:
        body = self._body(call)
        with self.lock:
            self._purge_expired()
            sub = self._subs.get(sid)
            if sub is None:
                raise _missing()
            _check_if_match(call.headers.get("If-Match"), sub)
        url = body.get("notificationUrl", sub["notificationUrl"])
        if not isinstance(url, str) or not url.strip():
            raise BCError(400, "BadRequest", 'A "notificationUrl" must be provided.')
        if "resource" in body and self._entity_set(body["resource"]) != sub["resource"].rsplit("/", 1)[1]:
            raise BCError(400, "BadRequest", "The resource of a subscription can't be changed.")
        state = self._client_state(body["clientState"]) if "clientState" in body else sub["clientState"]
        self._handshake(url)
        now = self._now()
        with self.lock:
            current = self._subs.get(sid)
            if current is None:
                raise _missing()
            if current["@odata.etag"] != sub["@odata.etag"]:
                raise BCError(409, "Request_EntityChanged", "Another user has already changed the record.")
            updated = self._stamp({**current, "notificationUrl": url, "clientState": state}, now)
            self._subs[sid] = updated
        return self._entity(200, updated)

    def _body(self, call: _Call) -> dict:
        body = _json_body(call)
        if not isinstance(body, dict):
            raise BCError(400, "BadRequest", "Invalid Request Body")
        for name in body:
            if name.startswith("@"):
                continue
            if name in _READ_ONLY:
                raise BCError(400, "BadRequest_InvalidOperation", f"Control '{name}' is read-only.")
            if name not in _WRITABLE:
                raise BCError(400, "BadRequest",
                              f"The property '{name}' does not exist on type 'Microsoft.NAV.subscriptions'. "
                              "Make sure to only use property names that are defined by the type.")
        return body

    def _entity_set(self, resource: Any) -> str:
        if not isinstance(resource, str) or not resource.strip():
            raise BCError(400, "BadRequest", 'A "resource" must be provided.')
        m = _RESOURCE_RE.match(resource.strip())
        if not m:
            raise BCError(400, "BadRequest", f"The resource '{resource}' is not valid.")
        company, entity_set = m.group(1).strip("'").lower(), m.group(2)
        if company != self.emulator.company_id:
            raise BCError(400, "Internal_CompanyNotFound", f"Cannot open company {m.group(1)}.")
        if entity_set not in WEBHOOK_ENTITY_SETS or entity_set not in self.emulator._tables:
            raise BCError(400, "BadRequest", f"The resource '{resource}' does not support webhook subscriptions.")
        return entity_set

    @staticmethod
    def _client_state(value: Any) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise BCError(400, "BadRequest", "Cannot convert a primitive value to the expected type 'Edm.String'.")
        if len(value) > MAX_CLIENT_STATE:
            raise BCError(400, "Application_StringExceededLength",
                          f"The length of the string is {len(value)}, but it must be less than or equal to "
                          f"{MAX_CLIENT_STATE} characters.")
        return value

    def _handshake(self, url: str) -> None:
        """BC calls the notification URL with ``validationToken`` and wants 200 with the token as the body."""
        token = str(uuid.uuid4())
        target = f"{url}{'&' if '?' in url else '?'}validationToken={quote(token)}"
        status: int | None = None
        try:
            status, answer = self.sender("POST", target, b"", {"Content-Length": "0"})
        except Exception:  # noqa: BLE001 - unreachable, timeout: the handshake failed
            answer = b""
        with self.lock:
            self.handshakes.append((url, status))
        text = answer.decode("utf-8", "replace").strip() if isinstance(answer, (bytes, bytearray)) else ""
        if status != 200 or text != token:
            raise BCError(400, "BadRequest",
                          "The subscription could not be validated: the notification URL did not answer the "
                          "validation request with the validation token.")

    def _stamp(self, sub: dict, now: datetime) -> dict:
        """New etag, timestamp, modified stamps and expiry (create and renew)."""
        self._version += 1
        raw = f"'{self._version};{uuid.uuid4().int % 10**18};00;'"
        rec = {k: v for k, v in sub.items() if k != "@odata.etag"}
        rec.update({"timestamp": 332571277 + self._version, "lastModifiedDateTime": _fmt_seconds_ts(now),
                    "expirationDateTime": _fmt_seconds_ts(now + self.lifetime),
                    "systemModifiedAt": _fmt_ts(now), "systemModifiedBy": USER_ID})
        order = ["subscriptionId", "notificationUrl", "resource", "timestamp", "userId", "lastModifiedDateTime",
                 "clientState", "expirationDateTime", "systemCreatedAt", "systemCreatedBy", "systemModifiedAt",
                 "systemModifiedBy"]
        etag = 'W/"' + base64.b64encode(raw.encode("ascii")).decode("ascii") + '"'
        return {"@odata.etag": etag, **{k: rec[k] for k in order}}

    def _entity(self, status: int, sub: dict, headers: dict | None = None) -> Response:
        body = {"@odata.context": self._context("subscriptions/$entity"), **sub}
        return Response.json(status, body, {"ETag": sub["@odata.etag"], **(headers or {})}, content_type=ODATA_JSON)

    def _context(self, tail: str) -> str:
        return f"{self.emulator.base_url}/$metadata#{tail}"

    def _no_resource(self, call: _Call) -> BCError:
        return BCError(404, "BadRequest_NotFound", f"No HTTP resource was found that matches the request URI "
                                                   f"'{self.emulator.base_url}/{call.path}'.")

    def _now(self) -> datetime:
        t = self.emulator.now()
        return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)

    def _purge_expired(self) -> None:
        now = _fmt_seconds_ts(self._now())
        for sid in [sid for sid, s in self._subs.items() if s["expirationDateTime"] <= now]:
            del self._subs[sid]
            self._window.changes.pop(sid, None)

    # -- notifications -------------------------------------------------------------------------------------------
    def on_change(self, entity_set: str, record_id: str, change_type: str, at: str) -> None:
        """One committed change (called under the emulator's lock: no I/O here)."""
        with self.lock:
            if self._closed or not self._subs:
                return
            self._purge_expired()
            targets = [sid for sid, s in self._subs.items() if s["resource"].rsplit("/", 1)[1] == entity_set]
            if not targets:
                return
            for sid in targets:
                records = self._window.changes.setdefault(sid, {})
                old = records.get(record_id)
                records[record_id] = (_merge(old[0] if old else None, change_type), at)
            if self._timer is None:
                self._timer = threading.Timer(self.delay, self._window_elapsed)
                self._timer.daemon = True
                self._timer.start()

    def _window_elapsed(self) -> None:
        with self.lock:
            self._timer = None
        self._end_window()

    def _end_window(self) -> None:
        with self.lock:
            changes, self._window = self._window.changes, _Window()
            self._purge_expired()
            jobs: dict[str, _Job] = {}
            now = self._now()
            for sid, records in changes.items():
                sub = self._subs.get(sid)
                if sub is None or not records:
                    continue
                job = jobs.setdefault(sub["notificationUrl"], _Job(sub["notificationUrl"], {"value": []}, set(), now))
                job.subscription_ids.add(sid)
                job.payload["value"].extend(self._notifications(sub, records))
            self._busy += len(jobs)
            self._idle.notify_all()
        for job in jobs.values():
            self._deliver(job)

    def _notifications(self, sub: dict, records: dict[str, tuple[str, str]]) -> list[dict]:
        base = {"subscriptionId": sub["subscriptionId"], "clientState": sub["clientState"],
                "expirationDateTime": sub["expirationDateTime"]}
        if len(records) > self.collection_threshold:
            first = min(at for _, at in records.values())
            since = _parse_ts(first) - timedelta(milliseconds=1)
            flt = quote(f"lastModifiedDateTime gt {_fmt_ts(since)}", safe="")
            return [{**base, "resource": f"{sub['resource']}?$filter={flt}", "changeType": "collection",
                     "lastModifiedDateTime": max(at for _, at in records.values())}]
        return [{**base, "resource": f"{sub['resource']}({rid})", "changeType": change, "lastModifiedDateTime": at}
                for rid, (change, at) in sorted(records.items(), key=lambda kv: kv[1][1])]

    def _deliver(self, job: _Job) -> None:
        job.attempt += 1
        body = json.dumps(job.payload, separators=(",", ":")).encode("utf-8")
        record = Delivery(job.url, job.payload, job.attempt)
        try:
            record.status, _ = self.sender("POST", job.url, body, {"Content-Type": "application/json"})
        except Exception as exc:  # noqa: BLE001 - unreachable: retried like a 5xx
            record.error = f"{type(exc).__name__}: {exc}"
        with self.lock:
            self.deliveries.append(record)
            status = record.status
            if status is not None and 200 <= status < 300:
                self._done()
                return
            if status is not None and not (status in (408, 429) or status >= 500):
                for sid in job.subscription_ids:  # BC deletes the subscription(s) of a refused call
                    self._subs.pop(sid, None)
                    self._window.changes.pop(sid, None)
                self._done()
                return
            delay = min(self.retry_max, self.retry_base * 2 ** (job.attempt - 1))
            if self._closed or self._now() + timedelta(seconds=delay) > job.first_at + self.retry_window:
                self._done()  # gave up after the retry window
                return
            timer = threading.Timer(delay, self._retry, (job,))
            timer.daemon = True
            self._timers.add(timer)
            timer.start()

    def _retry(self, job: _Job) -> None:
        with self.lock:
            self._timers = {t for t in self._timers if t.is_alive() and t is not threading.current_thread()}
            live = {sid for sid in job.subscription_ids if sid in self._subs}
            if not live:  # deleted meanwhile: nothing to send
                self._done()
                return
            if live != job.subscription_ids:
                job.payload = {"value": [n for n in job.payload["value"] if n["subscriptionId"] in live]}
                job.subscription_ids = live
        self._deliver(job)

    def _done(self) -> None:
        self._busy -= 1
        self._idle.notify_all()


def _parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _check_if_match(if_match: str | None, sub: dict) -> None:
    if not if_match:
        raise BCError(400, "BadRequest_InvalidToken", "Could not validate the client concurrency token required by "
                                                      "the service. Please provide a valid token in the client "
                                                      "request.")
    token = if_match.strip()
    if token != "*" and token != sub["@odata.etag"]:
        raise BCError(409, "Request_EntityChanged", "Another user has already changed the record.")


def _missing() -> BCError:
    return BCError(404, "BadRequest_NotFound", "The subscription does not exist.")


def _not_allowed(method: str, kind: str) -> BCError:
    return BCError(405, "BadRequest_MethodNotAllowed",
                   f"'{method}' requests for 'subscriptions' of EdmType '{kind}' are not allowed within Microsoft "
                   "Dynamics NAV OData web services.")
