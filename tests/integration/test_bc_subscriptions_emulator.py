"""The BC emulator's webhook subscriptions (apis.md C10), through real HTTP; notifications go to a fake receiver.

Expected shapes come from samples/bc_subscription_real.json and samples/bc_webhook_notification_real.json (real BC
SaaS captures, rebelpl/bc-api2-client tests/files, copied below).
"""
from __future__ import annotations

import json
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest

from emulators.bc_subscriptions import MAX_SUBSCRIPTIONS, SubscriptionHub, http_sender
from emulators.server import DEFAULT_TOKEN
from tests.conftest import BC_COMPANY_ID

# samples/bc_subscription_real.json: key order of a subscription entity (POST/GET answer).
REAL_SUBSCRIPTION_KEYS = [
    "@odata.context", "@odata.etag", "subscriptionId", "notificationUrl", "resource", "timestamp", "userId",
    "lastModifiedDateTime", "clientState", "expirationDateTime", "systemCreatedAt", "systemCreatedBy",
    "systemModifiedAt", "systemModifiedBy"]
# samples/bc_webhook_notification_real.json: keys of one notification.
REAL_NOTIFICATION_KEYS = ["subscriptionId", "clientState", "expirationDateTime", "resource", "changeType",
                          "lastModifiedDateTime"]
RECEIVER = "http://127.0.0.1:7071/api/webhooks/bc?code=key1"
RESOURCE = f"/api/v2.0/companies({BC_COMPANY_ID})/customers"


class FakeReceiver:
    """Stands in for the app: answers handshakes with the token, notifications with ``status`` (or a script)."""

    def __init__(self):
        self.calls: list[tuple[str, str, bytes]] = []
        self.statuses: list[int] = []
        self.handshake_answer = None  # None: echo the token
        self.lock = threading.Lock()

    def __call__(self, method, url, body, headers):
        with self.lock:
            self.calls.append((method, url, body))
        query = parse_qs(urlsplit(url).query)
        if "validationToken" in query:
            if self.handshake_answer is not None:
                return self.handshake_answer
            return 200, query["validationToken"][0].encode()
        with self.lock:
            status = self.statuses.pop(0) if self.statuses else 202
        if status == 0:
            raise ConnectionError("unreachable")
        return status, b""

    def notifications(self) -> list[dict]:
        return [json.loads(b) for m, u, b in self.calls if "validationToken" not in u]

    def handshakes(self) -> list[str]:
        return [u for _, u, _ in self.calls if "validationToken" in u]


@pytest.fixture
def hub(bc_emulator):
    receiver = FakeReceiver()
    hub: SubscriptionHub = bc_emulator.webhooks
    hub.configure(delay=0.15, collection_threshold=3, retry_base=0.05, retry_max=0.2, sender=receiver)
    yield hub, receiver
    hub.close()


@pytest.fixture
def api(bc_emulator):
    with httpx.Client(base_url=bc_emulator.base_url + "/", headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"},
                      timeout=10) as client:
        yield client


def _subscribe(api, resource=RESOURCE, url=RECEIVER, state="s3cret"):
    return api.post("subscriptions", json={"notificationUrl": url, "resource": resource, "clientState": state})


def _wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_create_does_the_handshake_and_answers_like_bc(hub, api):
    _, receiver = hub
    before = datetime.now(timezone.utc)
    r = _subscribe(api)
    assert r.status_code == 201, r.text
    body = r.json()
    assert list(body) == REAL_SUBSCRIPTION_KEYS
    assert re.fullmatch(r"[0-9a-f]{32}", body["subscriptionId"])
    assert body["resource"] == RESOURCE.lstrip("/")  # BC answers without the leading slash
    assert body["clientState"] == "s3cret" and body["notificationUrl"] == RECEIVER
    expiry = datetime.fromisoformat(body["expirationDateTime"].replace("Z", "+00:00"))
    assert timedelta(days=3) - timedelta(seconds=5) <= expiry - before <= timedelta(days=3, seconds=5)
    assert r.headers["ETag"] == body["@odata.etag"]
    assert r.headers["Location"].endswith(f"/subscriptions('{body['subscriptionId']}')")
    # the handshake: a POST to the notification URL with ?validationToken, the key kept
    (method, url, _), = receiver.calls
    assert method == "POST" and url.startswith(RECEIVER + "&validationToken=")


@pytest.mark.parametrize("answer", [(200, b"wrong"), (500, b""), (401, b""), "raise"])
def test_failed_handshake_creates_nothing(hub, api, answer):
    _, receiver = hub
    if answer == "raise":
        receiver.statuses = []
        receiver.handshake_answer = None
        hub[0].configure(sender=lambda *a: (_ for _ in ()).throw(ConnectionError("down")))
    else:
        receiver.handshake_answer = answer
    r = _subscribe(api)
    assert r.status_code == 400 and "validat" in r.json()["error"]["message"]
    assert api.get("subscriptions").json()["value"] == []


def test_get_patch_delete_with_quoted_keys_and_if_match(hub, api):
    h, receiver = hub
    sub = _subscribe(api).json()
    sid = sub["subscriptionId"]
    assert [s["subscriptionId"] for s in api.get("subscriptions").json()["value"]] == [sid]
    assert api.get(f"subscriptions('{sid}')").json()["subscriptionId"] == sid
    assert api.get(f"subscriptions({sid})").status_code == 400  # string keys need quotes
    assert api.get("subscriptions('nope')").status_code == 404
    renew = {"notificationUrl": RECEIVER, "resource": RESOURCE, "clientState": "s3cret"}
    assert api.patch(f"subscriptions('{sid}')", json=renew).json()["error"]["code"] == "BadRequest_InvalidToken"
    assert api.patch(f"subscriptions('{sid}')", json=renew, headers={"If-Match": 'W/"stale"'}).status_code == 409
    h.expire(sid, datetime.now(timezone.utc) + timedelta(hours=1))
    handshakes = len(receiver.handshakes())
    r = api.patch(f"subscriptions('{sid}')", json=renew, headers={"If-Match": sub["@odata.etag"]})
    assert r.status_code == 200, r.text
    renewed = r.json()
    assert len(receiver.handshakes()) == handshakes + 1  # BC repeats the handshake
    assert renewed["@odata.etag"] != sub["@odata.etag"]
    assert renewed["expirationDateTime"] > (datetime.now(timezone.utc) + timedelta(days=2)).isoformat()
    assert api.patch(f"subscriptions('{sid}')", json={"resource": f"/api/v2.0/companies({BC_COMPANY_ID})/items"},
                     headers={"If-Match": "*"}).status_code == 400
    receiver.handshake_answer = (404, b"")
    assert api.patch(f"subscriptions('{sid}')", json=renew, headers={"If-Match": "*"}).status_code == 400
    assert api.get(f"subscriptions('{sid}')").json()["@odata.etag"] == renewed["@odata.etag"]  # unchanged
    assert api.delete(f"subscriptions('{sid}')").status_code == 400  # If-Match required
    assert api.delete(f"subscriptions('{sid}')", headers={"If-Match": renewed["@odata.etag"]}).status_code == 204
    assert api.get(f"subscriptions('{sid}')").status_code == 404


@pytest.mark.parametrize("resource, code", [
    (f"/api/v2.0/companies({BC_COMPANY_ID})/contacts", "BadRequest"),  # BC can't notify contacts
    (f"/api/v2.0/companies({BC_COMPANY_ID})/salespeoplePurchasers", "BadRequest"),
    ("/api/v2.0/companies(00000000-0000-0000-0000-000000000001)/customers", "Internal_CompanyNotFound"),
    ("customers", "BadRequest"),
])
def test_unsupported_resources_are_refused(hub, api, resource, code):
    r = _subscribe(api, resource=resource)
    assert r.status_code == 400 and r.json()["error"]["code"] == code
    assert hub[1].calls == []  # refused before any handshake


def test_other_resource_spellings_and_long_client_state(hub, api):
    r = _subscribe(api, resource=f"companies({BC_COMPANY_ID})/items")
    assert r.status_code == 201 and r.json()["resource"] == f"api/v2.0/companies({BC_COMPANY_ID})/items"
    assert _subscribe(api, state="x" * 2049).status_code == 400
    assert api.post("subscriptions", json={"resource": RESOURCE}).status_code == 400
    assert api.post("subscriptions", json={"notificationUrl": RECEIVER, "resource": RESOURCE,
                                           "subscriptionId": "x"}).status_code == 400


def test_subscription_limit(hub, api):
    assert MAX_SUBSCRIPTIONS == 200
    hub[0].configure(max_subscriptions=2)
    assert _subscribe(api).status_code == 201
    assert _subscribe(api, resource=f"/api/v2.0/companies({BC_COMPANY_ID})/items").status_code == 201
    r = _subscribe(api, resource=f"/api/v2.0/companies({BC_COMPANY_ID})/vendors")
    assert r.status_code == 400 and "maximum number of subscriptions" in r.json()["error"]["message"]


def test_changes_are_coalesced_and_sent_together_across_subscriptions(hub, bc_emulator, api):
    h, receiver = hub
    customers = _subscribe(api).json()
    items = _subscribe(api, resource=f"/api/v2.0/companies({BC_COMPANY_ID})/items").json()
    h.configure(delay=0.5)  # every change below falls in one window, however slow the machine
    cust = bc_emulator.create("customers", {"displayName": "Coalesced"})
    for city in ("A", "B", "C"):
        bc_emulator.update("customers", cust["id"], {"city": city})
    item = bc_emulator.all("items")[0]
    bc_emulator.update("items", item["id"], {"displayName": "Renamed"})
    bc_emulator.create("contacts", {"displayName": "Nobody listens"})  # no subscription: no notification
    assert receiver.notifications() == []  # still inside the window
    assert h.wait_idle(5)
    (call,) = receiver.notifications()  # one POST for both subscriptions
    by_sub = {n["subscriptionId"]: n for n in call["value"]}
    assert len(call["value"]) == 2 and set(by_sub) == {customers["subscriptionId"], items["subscriptionId"]}
    n = by_sub[customers["subscriptionId"]]
    assert list(n) == REAL_NOTIFICATION_KEYS
    assert n["changeType"] == "created"  # created then updated within the window: one notification
    assert n["resource"] == f"api/v2.0/companies({BC_COMPANY_ID})/customers({cust['id']})"
    assert n["lastModifiedDateTime"] == bc_emulator.get("customers", cust["id"])["lastModifiedDateTime"]
    assert n["clientState"] == "s3cret" and n["expirationDateTime"] == customers["expirationDateTime"]
    assert by_sub[items["subscriptionId"]]["changeType"] == "updated"
    bc_emulator.delete("customers", cust["id"])
    assert h.wait_idle(5)
    assert receiver.notifications()[-1]["value"][0]["changeType"] == "deleted"


def test_more_than_the_threshold_becomes_one_collection_notification(hub, bc_emulator, api):
    h, receiver = hub
    _subscribe(api)
    h.configure(delay=0.5)
    before = bc_emulator.all("customers")
    created = [bc_emulator.create("customers", {"displayName": f"Bulk {i}"}) for i in range(5)]
    assert h.wait_idle(5)
    (call,) = receiver.notifications()
    (n,) = call["value"]
    assert n["changeType"] == "collection"
    path, _, query = n["resource"].partition("?")
    assert path == f"api/v2.0/companies({BC_COMPANY_ID})/customers"
    assert query.startswith("$filter=") and "%20gt%20" in query
    bound = unquote(query[len("$filter="):]).split(" gt ")[1]
    # re-querying with the filter finds every changed record and nothing older
    r = api.get(f"companies({BC_COMPANY_ID})/customers", params={"$filter": f"lastModifiedDateTime gt {bound}"})
    assert {c["id"] for c in r.json()["value"]} == {c["id"] for c in created}
    assert len(before) > 0


@pytest.mark.parametrize("status", [408, 429, 500, 503, 0])
def test_retriable_answers_are_sent_again(hub, bc_emulator, api, status):
    h, receiver = hub
    _subscribe(api)
    receiver.statuses = [status, status, 200]
    bc_emulator.create("customers", {"displayName": "Retry me"})
    assert h.wait_idle(5)
    calls = receiver.notifications()
    assert len(calls) == 3 and calls[0] == calls[1] == calls[2]  # the same payload each time
    assert [d.status for d in h.deliveries] == [None if status == 0 else status] * 2 + [200]
    assert len(h.all()) == 1


@pytest.mark.parametrize("status", [400, 401, 404, 410])
def test_other_answers_delete_the_subscription(hub, bc_emulator, api, status):
    h, receiver = hub
    _subscribe(api)
    _subscribe(api, resource=f"/api/v2.0/companies({BC_COMPANY_ID})/vendors", url="http://127.0.0.1:1/other")
    receiver.statuses = [status]
    bc_emulator.create("customers", {"displayName": "Refused"})
    assert h.wait_idle(5)
    assert len(receiver.notifications()) == 1  # no retry
    assert [s["resource"].rsplit("/", 1)[1] for s in h.all()] == ["vendors"]  # only the refused one is gone
    bc_emulator.create("customers", {"displayName": "Nobody listens now"})
    assert h.wait_idle(5) and len(receiver.notifications()) == 1


def test_retries_stop_after_the_retry_window(hub, bc_emulator, api):
    h, receiver = hub
    h.configure(retry_window=timedelta(seconds=0.3))
    _subscribe(api)
    receiver.statuses = [503] * 100
    bc_emulator.create("customers", {"displayName": "Never delivered"})
    assert h.wait_idle(5)
    assert 2 <= len(receiver.notifications()) < 10


def test_expired_subscriptions_notify_nothing_and_disappear(hub, bc_emulator, api):
    h, receiver = hub
    sub = _subscribe(api).json()
    h.expire(sub["subscriptionId"])
    bc_emulator.create("customers", {"displayName": "Too late"})
    assert h.wait_idle(2)
    assert receiver.notifications() == []
    assert api.get(f"subscriptions('{sub['subscriptionId']}')").status_code == 404


def test_a_rolled_back_batch_notifies_nothing_and_a_committed_one_does(hub, bc_emulator, api):
    h, receiver = hub
    _subscribe(api)
    company = f"companies({BC_COMPANY_ID})"
    bad = {"requests": [
        {"id": "1", "method": "POST", "url": f"{company}/customers", "body": {"displayName": "Rolled back"}},
        {"id": "2", "method": "POST", "url": f"{company}/customers", "body": {"displayName": "x", "nope": 1}}]}
    assert api.post("$batch", json=bad, headers={"Isolation": "snapshot"}).status_code == 200
    assert h.wait_idle(2) and receiver.notifications() == []
    good = {"requests": [
        {"id": "1", "method": "POST", "url": f"{company}/customers", "body": {"displayName": "Committed"}}]}
    assert api.post("$batch", json=good, headers={"Isolation": "snapshot"}).status_code == 200
    assert h.wait_idle(5)
    (call,) = receiver.notifications()
    assert call["value"][0]["changeType"] == "created"


def test_flush_ends_the_window_at_once(hub, bc_emulator, api):
    h, receiver = hub
    h.configure(delay=30.0)  # BC's default; flush() does not wait for it
    _subscribe(api)
    bc_emulator.create("customers", {"displayName": "Flushed"})
    assert h.pending() == 1
    h.flush()
    assert h.pending() == 0 and len(receiver.notifications()) == 1


def test_http_sender_only_calls_loopback():
    with pytest.raises(ConnectionError):
        http_sender("POST", "https://example.com/hook", b"{}", {})
