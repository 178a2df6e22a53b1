"""BC webhooks through the registered functions: the receiver, the subscription management and renewal timer, and
the queue worker, with the BC emulator sending its handshakes and notifications straight to the receiver function.

The emulator's sender runs in the emulator's threads; it calls the function on the test's event loop, so tests
wait for deliveries with ``await asyncio.to_thread(...)`` (the loop must stay free to run the function).
"""
from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func
import pytest
from azure.core.exceptions import ServiceRequestError
from azure.functions.queue import QueueMessage  # what the worker gets: with dequeue_count
from azure.functions.timer import TimerRequest

from coupling.subscriptions import SubscriptionStore
from sandbox.host import registered_functions
from sync import bc_webhook
from sync.runtime import get_runtime
from sync.settings import reset_settings
from tests.conftest import BC_COMPANY_ID

from .conftest import Response

RECEIVER = "http://127.0.0.1:7071/api/webhooks/bc"
SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "reference" / "samples"
WEBHOOK_SETS = {"currencies", "customers", "items", "unitsOfMeasure", "vendors"}


class Capture:
    """Stands in for func.Out."""

    def __init__(self):
        self.value = None

    def set(self, value):
        self.value = value


class AppReceiver:
    """The BC emulator's sender: calls the registered ``bc_webhook`` function on the test's loop and keeps what it
    put on the queue (only for 2xx answers: a failed invocation writes no output)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.messages: list[str] = []
        self.bodies: list[bytes] = []
        self.statuses: list[int] = []

    def __call__(self, method, url, body, headers):
        return asyncio.run_coroutine_threadsafe(self.call(method, url, body, headers), self.loop).result(30)

    async def call(self, method, url, body=b"", headers=None):
        resp, queue = await post(body, url=url, method=method, headers=headers)
        self.statuses.append(resp.status_code)
        if "validationToken" not in url:
            self.bodies.append(body)
        if 200 <= resp.status_code < 300 and queue.value:
            self.messages.extend(queue.value)
        return resp.status_code, resp.get_body()

    def take(self) -> list[str]:
        out, self.messages = self.messages, []
        return out


async def post(body: bytes | dict, *, url: str = RECEIVER, method: str = "POST", headers=None):
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    req = func.HttpRequest(method, url, body=body, headers=headers or {"Content-Type": "application/json"},
                           params=dict(parse_qsl(urlsplit(url).query, keep_blank_values=True)))
    queue = Capture()
    resp = await registered_functions()["bc_webhook"].get_user_function()(req, queue)
    return resp, queue


async def work(message: str, dequeue_count: int = 1) -> None:
    msg = QueueMessage(id=uuid.uuid4().hex, body=message.encode(), dequeue_count=dequeue_count)
    await registered_functions()["bc_webhook_worker"].get_user_function()(msg)


async def work_all(messages: list[str]) -> None:
    for m in messages:
        await work(m)


async def manage(method: str, body: dict | None = None) -> Response:
    name = {"GET": "bc_subscriptions_list", "POST": "bc_subscriptions_set_up",
            "DELETE": "bc_subscriptions_remove"}[method]
    req = func.HttpRequest(method, "http://127.0.0.1:7071/api/webhooks/bc/subscriptions",
                           body=json.dumps(body).encode() if body is not None else b"",
                           headers={"Content-Type": "application/json"})
    return Response(await registered_functions()[name].get_user_function()(req))


async def renew_timer() -> None:
    await registered_functions()["bc_subscriptions_renew"].get_user_function()(TimerRequest(past_due=False))


async def idle(hub) -> None:
    assert await asyncio.to_thread(hub.wait_idle, 20)


@pytest.fixture
async def hook(app, bc_emulator):
    """(hub, receiver): the emulator sends to the app's receiver function; windows shortened."""
    receiver = AppReceiver(asyncio.get_running_loop())
    hub = bc_emulator.webhooks
    hub.configure(delay=0.05, collection_threshold=4, retry_base=0.05, retry_max=0.2, sender=receiver)
    yield hub, receiver
    hub.close()


@pytest.fixture
async def subscribed(hook):
    r = await manage("POST", {"notificationUrl": RECEIVER, "functionKey": "k3y"})
    assert r.status == 200, r
    return hook


async def pair(app, bc, dv, name: str, *, synced: bool = True):
    cust = bc.create("customers", {"displayName": name})
    acc = dv.create("accounts", {"name": name + " old", "customertypecode": 3})
    r = await app("couple", "POST", body={"mapping": "CUSTOMER", "bcId": cust["id"], "dataverseId": acc["accountid"]})
    assert r.status == 201, r
    if synced:  # a never-synchronized pair counts as changed on both sides: synchronize it once, as sync-now does
        from sync.engine import PassRequest, TO, run_pass

        rt = get_runtime()
        result = await run_pass(rt, PassRequest(await rt.mapping("CUSTOMER"), TO, ids=[cust["id"]], forced=True))
        assert result.counters.modified == 1
    return cust, acc


async def customer_jobs() -> list:
    jobs, _ = await get_runtime().jobs.list("CUSTOMER")
    return [j for j in jobs if j.direction == "ToIntegrationTable"]


# --- the handshake ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_handshake_echoes_the_token_without_settings_or_storage(monkeypatch, method):
    for name in ("BC_API_BASE_URL", "DATAVERSE_URL", "SYNC_STORAGE_CONNECTION", "AzureWebJobsStorage"):
        monkeypatch.delenv(name, raising=False)
    reset_settings()
    token = "3c7d0a1e-0f4b-4c55-9a43-2f0a3c1f6a11"
    resp, queue = await post(b"", url=f"{RECEIVER}?code=k&validationToken={token}", method=method)
    assert resp.status_code == 200 and resp.get_body().decode() == token
    assert resp.mimetype == "text/plain" and queue.value is None
    resp, _ = await post(b"", url=f"{RECEIVER}?validationToken=", method=method)
    assert resp.status_code == 400
    resp, _ = await post(b"", url=RECEIVER, method="GET")
    assert resp.status_code == 400
    reset_settings()


# --- management ------------------------------------------------------------------------------------------------------
async def test_set_up_creates_one_subscription_per_webhook_capable_entity_set(hook, bc_emulator):
    hub, receiver = hook
    r = await manage("POST", {"notificationUrl": RECEIVER, "functionKey": "k3y"})
    assert r.status == 200, r
    assert {o["entitySet"] for o in r.json["value"]} == WEBHOOK_SETS  # not contacts, salespeople, option mappings
    assert r.json["counts"] == {"created": 5}
    assert r.json["notificationUrl"] == f"{RECEIVER}?code=***"  # the key is never shown
    in_bc = hub.all()
    assert {s["resource"].rsplit("/", 1)[1] for s in in_bc} == WEBHOOK_SETS
    assert all(s["notificationUrl"] == f"{RECEIVER}?code=k3y" for s in in_bc)
    assert all(s["resource"].startswith(f"api/v2.0/companies({BC_COMPANY_ID})/") for s in in_bc)
    states = {s["clientState"] for s in in_bc}
    assert len(states) == 5 and all(len(s) >= 40 for s in states)  # one strong secret per subscription
    assert [status for _, status in hub.handshakes] == [200] * 5  # BC validated every one with the receiver
    listed = await manage("GET")
    assert listed.status == 200 and listed.json["enabled"] is True
    assert {s["entitySet"] for s in listed.json["value"]} == WEBHOOK_SETS
    assert all(s["status"] == "active" and s["expirationDateTime"] for s in listed.json["value"])
    text = json.dumps(listed.json) + json.dumps(r.json)
    assert not any(state in text for state in states) and "k3y" not in text  # secrets never leave
    again = await manage("POST")  # repeatable; the stored URL is kept
    assert again.status == 200 and again.json["counts"] == {"unchanged": 5}
    assert len(hub.all()) == 5


async def test_set_up_needs_a_valid_url_and_nothing_else(hook):
    assert (await manage("POST", {"notificationUrl": "http://example.com/x"})).status == 400  # http only loopback
    assert (await manage("POST", {"notificationUrl": 5})).status == 400
    assert (await manage("POST", {"other": 1})).status == 400
    assert (await manage("POST", {"functionKey": ""})).status == 400


async def test_set_up_reports_a_failed_handshake(hook):
    hub, receiver = hook
    hub.configure(sender=lambda *a: (401, b"no key"))
    r = await manage("POST", {"notificationUrl": RECEIVER})
    assert r.status == 200 and r.json["counts"] == {"failed": 5}
    assert "validat" in r.json["value"][0]["message"]
    assert hub.all() == [] and (await manage("GET")).json["value"] == []


async def test_renewal_repairs_and_removal(subscribed, bc_emulator, app):
    hub, receiver = subscribed
    rt = get_runtime()
    store = SubscriptionStore(rt.tables, rt.names)
    by_set = {s.entity_set: s for s in await store.list()}
    # nothing due: the timer leaves them alone
    handshakes = len(hub.handshakes)
    await renew_timer()
    assert len(hub.handshakes) == handshakes
    # customers expires within a day: renewed (PATCH with If-Match; BC repeats the handshake)
    hub.expire(by_set["customers"].subscription_id, datetime.now(timezone.utc) + timedelta(hours=3))
    # items vanished in BC (deleted after a refused call): re-created
    hub.remove(by_set["items"].subscription_id)
    # vendors expired: re-created
    hub.expire(by_set["vendors"].subscription_id)
    await renew_timer()
    after = {s.entity_set: s for s in await store.list()}
    assert after["customers"].subscription_id == by_set["customers"].subscription_id
    assert after["customers"].expires_at > datetime.now(timezone.utc) + timedelta(days=2, hours=23)
    assert after["customers"].bc_etag != by_set["customers"].bc_etag
    assert after["customers"].client_state == by_set["customers"].client_state
    assert after["items"].subscription_id != by_set["items"].subscription_id
    assert after["vendors"].subscription_id != by_set["vendors"].subscription_id
    assert after["currencies"] == by_set["currencies"]
    assert len(hub.handshakes) == handshakes + 3
    assert {s["subscriptionId"] for s in hub.all()} == {s.subscription_id for s in after.values()}
    # the service renews everything due at a later time
    result = await bc_webhook.reconcile_subscriptions(rt, now=datetime.now(timezone.utc) + timedelta(days=2, hours=12))
    assert result.counts() == {"renewed": 5}
    # an answer lost after BC created a subscription: adopted, not duplicated
    await store.delete(after["currencies"].subscription_id)
    r = await manage("POST")
    assert r.json["counts"] == {"adopted": 1, "unchanged": 4} and len(hub.all()) == 5
    # a mapping that no longer synchronizes To Dataverse: its subscription goes
    r = await app("update_mapping", "PATCH", route={"name": "VENDOR"}, body={"direction": "FromIntegrationTable"})
    assert r.status == 200, r
    r = await manage("POST")
    assert r.json["counts"] == {"deleted": 1, "unchanged": 4}
    assert "vendors" not in {s["resource"].rsplit("/", 1)[1] for s in hub.all()}
    # removal: gone in BC, and the timer leaves BC alone afterwards
    r = await manage("DELETE")
    assert r.status == 200 and r.json["counts"] == {"deleted": 4}
    assert hub.all() == []
    await renew_timer()
    assert hub.all() == [] and (await manage("GET")).json["enabled"] is False


async def test_timer_does_nothing_until_set_up(hook):
    hub, _ = hook
    await renew_timer()
    assert hub.all() == [] and hub.handshakes == []


# --- notifications end to end ----------------------------------------------------------------------------------------
async def test_a_bc_edit_arrives_in_dataverse_without_the_schedule(subscribed, app, bc_emulator, dv_emulator):
    hub, receiver = subscribed
    cust, acc = await pair(app, bc_emulator, dv_emulator, "Hook Co")
    await idle(hub)
    receiver.take()  # the creation of the customer
    bc_emulator.update("customers", cust["id"], {"displayName": "Hook Co Renamed", "city": "Linz"})
    await idle(hub)
    assert receiver.statuses[-1] == 202
    messages = receiver.take()
    (message,) = messages
    assert json.loads(message) | {"receivedAt": None} == {
        "kind": "bc-changes", "entitySet": "customers", "ids": [cust["id"]], "deleted": [], "receivedAt": None}
    await work(message)
    row = dv_emulator.get("accounts", acc["accountid"])
    assert row["name"] == "Hook Co Renamed" and row["address1_city"] == "Linz"
    job = (await customer_jobs())[0]
    assert job.counters["modified"] == 1 and job.status == "Finished"
    # the schedule's watermark did not move: the next scheduled run still sees the change (safety net) and finds
    # it done, so nothing is written twice
    rt = get_runtime()
    assert (await rt.watermarks.get("CUSTOMER")).bc is None
    from sync.engine import TO, PassRequest, run_pass

    version = row["versionnumber"]
    scheduled = await run_pass(rt, PassRequest(await rt.mapping("CUSTOMER"), TO))
    assert scheduled.counters.modified == 0 and scheduled.counters.failed == 0
    assert dv_emulator.get("accounts", acc["accountid"])["versionnumber"] == version


async def test_duplicate_delivery_ends_unchanged(subscribed, app, bc_emulator, dv_emulator):
    hub, receiver = subscribed
    cust, acc = await pair(app, bc_emulator, dv_emulator, "Twice Co")
    await idle(hub)
    receiver.take()
    bc_emulator.update("customers", cust["id"], {"city": "Wien"})
    await idle(hub)
    body = receiver.bodies[-1]
    (first,) = receiver.take()
    again, queue = await post(body)  # BC delivers the same call again
    assert again.status_code == 202
    await work(first)
    version = dv_emulator.get("accounts", acc["accountid"])["versionnumber"]
    await work(queue.value[0])
    await work(first)  # and the queue delivers a message twice
    assert dv_emulator.get("accounts", acc["accountid"])["versionnumber"] == version
    counters = [j.counters for j in await customer_jobs()][:3]
    assert [c.get("modified", 0) for c in counters] == [0, 0, 1] and counters[0]["unchanged"] == 1


async def test_out_of_order_delivery_keeps_the_latest_state(subscribed, app, bc_emulator, dv_emulator):
    hub, receiver = subscribed
    cust, acc = await pair(app, bc_emulator, dv_emulator, "Order Co")
    await idle(hub)
    receiver.take()
    bc_emulator.update("customers", cust["id"], {"city": "First"})
    await idle(hub)
    older = receiver.take()
    bc_emulator.update("customers", cust["id"], {"city": "Second"})
    await idle(hub)
    newer = receiver.take()
    await work_all(newer)
    await work_all(older)  # the late one finds nothing new
    assert dv_emulator.get("accounts", acc["accountid"])["address1_city"] == "Second"
    assert [j.counters.get("modified", 0) for j in await customer_jobs()][:2] == [0, 1]
    # deleted, then a late "updated" for the same record: nothing fails, nothing is deleted in Dataverse
    bc_emulator.delete("customers", cust["id"])
    await idle(hub)
    deleted = receiver.take()
    assert json.loads(deleted[0])["deleted"] == [cust["id"]]
    jobs_before = len(await customer_jobs())
    await work_all(deleted)
    await work_all(newer)
    assert dv_emulator.get("accounts", acc["accountid"]) is not None
    assert await get_runtime().couplings.get_by_bc("CUSTOMER", cust["id"]) is not None  # left to the strategy
    assert len(await customer_jobs()) == jobs_before  # no pass, no failed record


async def test_the_echo_of_our_own_write_does_not_ping_pong(subscribed, app, bc_emulator, dv_emulator):
    hub, receiver = subscribed
    cust, acc = await pair(app, bc_emulator, dv_emulator, "Echo Co")
    await idle(hub)
    receiver.take()
    dv_emulator.update("accounts", acc["accountid"], {"address1_city": "From Sales"})
    from sync.engine import FROM, PassRequest, run_pass

    rt = get_runtime()  # the From pass a schedule (or the Dataverse webhook) runs
    await run_pass(rt, PassRequest(await rt.mapping("CUSTOMER"), FROM, ids=[acc["accountid"]]))
    assert bc_emulator.get("customers", cust["id"])["city"] == "From Sales"  # our write to BC...
    await idle(hub)
    echo = receiver.take()
    assert [json.loads(m)["ids"] for m in echo] == [[cust["id"]]]  # ...comes back as a notification
    version = dv_emulator.get("accounts", acc["accountid"])["versionnumber"]
    writes = dv_emulator.stats.writes
    await work_all(echo)
    assert dv_emulator.get("accounts", acc["accountid"])["versionnumber"] == version  # nothing written back
    assert dv_emulator.stats.writes == writes
    counters = (await customer_jobs())[0].counters
    assert counters["unchanged"] == 1 and counters.get("modified", 0) == 0


async def test_a_collection_notification_requeries_by_modification_time(subscribed, app, bc_emulator, dv_emulator):
    hub, receiver = subscribed
    pairs = [await pair(app, bc_emulator, dv_emulator, f"Bulk {i}") for i in range(3)]
    await idle(hub)
    receiver.take()
    hub.configure(delay=0.5)  # all six changes in one window, however slow the machine
    for cust, _ in pairs:
        bc_emulator.update("customers", cust["id"], {"city": "Bulk City"})
    for i in range(3):
        bc_emulator.create("customers", {"displayName": f"Uncoupled {i}"})  # 6 > threshold 4
    await idle(hub)
    (message,) = receiver.take()
    work_item = json.loads(message)
    assert work_item["collection"] is True and work_item["ids"] == [] and work_item["since"]
    await work(message)
    assert all(dv_emulator.get("accounts", a["accountid"])["address1_city"] == "Bulk City" for _, a in pairs)
    job = (await customer_jobs())[0]
    assert job.counters["modified"] == 3  # the uncoupled ones are ignored (synchronize only coupled records)
    assert (await get_runtime().watermarks.get("CUSTOMER")).bc is not None  # a re-query pass, like the schedule


# --- the secret ------------------------------------------------------------------------------------------------------
async def test_wrong_or_missing_secret_and_unknown_subscriptions_are_refused(subscribed, app, bc_emulator,
                                                                             dv_emulator):
    hub, receiver = subscribed
    cust, acc = await pair(app, bc_emulator, dv_emulator, "Secret Co")
    await idle(hub)
    sub = next(s for s in hub.all() if s["resource"].endswith("/customers"))
    good = {"subscriptionId": sub["subscriptionId"], "clientState": sub["clientState"],
            "expirationDateTime": sub["expirationDateTime"],
            "resource": f"api/v2.0/companies({BC_COMPANY_ID})/customers({cust['id']})",
            "changeType": "updated", "lastModifiedDateTime": "2025-09-29T10:22:52.363Z"}
    for bad in ({**good, "clientState": sub["clientState"] + "x"}, {**good, "clientState": ""},
                {k: v for k, v in good.items() if k != "clientState"}, {**good, "clientState": None},
                {**good, "subscriptionId": "270135334a7d433e9009dde078e9e29c"}):
        resp, queue = await post({"value": [bad]})
        assert resp.status_code == 401 and queue.value is None
    # the documented sample (unknown subscriptions, someClientState)
    sample = (SAMPLES / "bc_webhook_notification.json").read_bytes()
    resp, queue = await post(sample)
    assert resp.status_code == 401 and queue.value is None
    # a call mixing a valid notification with a forged one: only the valid one is queued
    forged = {**good, "clientState": "guess", "resource": good["resource"].replace(cust["id"], str(uuid.uuid4()))}
    resp, queue = await post({"value": [forged, good]})
    assert resp.status_code == 202 and json.loads(resp.get_body()) == {"accepted": 1, "rejected": 1, "messages": 1}
    assert json.loads(queue.value[0])["ids"] == [cust["id"]]
    # a valid secret on a resource of another entity set or company is not taken either
    other = {**good, "resource": f"api/v2.0/companies({BC_COMPANY_ID})/vendors({cust['id']})"}
    resp, queue = await post({"value": [other]})
    assert resp.status_code == 202 and queue.value is None


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"value": "x"}', b'{"value": []}', b'{"value": [1, "x"]}',
                                 b"\xff\xfe", b'{"value": [{"subscriptionId": 5}]}'])
async def test_garbage_never_makes_a_500(subscribed, raw):
    resp, queue = await post(raw)
    assert resp.status_code in (400, 401) and queue.value is None


# --- durability ------------------------------------------------------------------------------------------------------
async def test_storage_trouble_answers_503_and_bc_delivers_again(subscribed, app, bc_emulator, dv_emulator,
                                                                 monkeypatch):
    hub, receiver = subscribed
    cust, acc = await pair(app, bc_emulator, dv_emulator, "Retry Co")
    await idle(hub)
    receiver.take()
    real = SubscriptionStore.list
    calls = {"n": 0}

    async def flaky(self):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ServiceRequestError("storage unreachable")
        return await real(self)

    monkeypatch.setattr(SubscriptionStore, "list", flaky)
    bc_emulator.update("customers", cust["id"], {"city": "Eventually"})
    await idle(hub)
    assert receiver.statuses[-2:] == [503, 202]
    assert [d.status for d in hub.deliveries[-2:]] == [503, 202]
    await work_all(receiver.take())
    assert dv_emulator.get("accounts", acc["accountid"])["address1_city"] == "Eventually"


async def test_a_crash_between_acknowledging_and_processing_loses_nothing(subscribed, app, bc_emulator,
                                                                          dv_emulator, monkeypatch):
    hub, receiver = subscribed
    cust, acc = await pair(app, bc_emulator, dv_emulator, "Crash Co")
    await idle(hub)
    receiver.take()
    bc_emulator.update("customers", cust["id"], {"city": "Survives"})
    await idle(hub)
    assert receiver.statuses[-1] == 202  # acknowledged to BC: from here on the queue holds the work
    (message,) = receiver.take()
    real = bc_webhook.run_pass

    async def dies(*args, **kwargs):
        raise RuntimeError("worker process died")

    monkeypatch.setattr(bc_webhook, "run_pass", dies)
    with pytest.raises(RuntimeError):
        await work(message)  # the invocation fails: the queue makes the message visible again
    assert dv_emulator.get("accounts", acc["accountid"])["address1_city"] != "Survives"
    monkeypatch.setattr(bc_webhook, "run_pass", real)
    await work(message, dequeue_count=2)  # the redelivery
    assert dv_emulator.get("accounts", acc["accountid"])["address1_city"] == "Survives"
    assert await get_runtime().leases.holder("mapping-CUSTOMER") is None  # the crashed attempt released it


async def test_a_busy_mapping_is_retried_then_left_to_the_schedule(subscribed, app, bc_emulator, dv_emulator,
                                                                   monkeypatch):
    hub, receiver = subscribed
    cust, acc = await pair(app, bc_emulator, dv_emulator, "Busy Co")
    await idle(hub)
    receiver.take()
    monkeypatch.setattr(bc_webhook, "MAPPING_LEASE_WAIT", 0.1)
    rt = get_runtime()
    held = await rt.leases.acquire("mapping-CUSTOMER", "a scheduled run", timedelta(minutes=5))
    bc_emulator.update("customers", cust["id"], {"city": "Later"})
    await idle(hub)
    (message,) = receiver.take()
    with pytest.raises(bc_webhook.MappingBusy):
        await work(message)  # given back to the queue
    await work(message, dequeue_count=5)  # the last delivery: no poison message, the running sync covers it
    assert dv_emulator.get("accounts", acc["accountid"])["address1_city"] != "Later"
    await rt.leases.release(held)
    await work(message)
    assert dv_emulator.get("accounts", acc["accountid"])["address1_city"] == "Later"


async def test_unreadable_messages_are_dropped(app):
    await work("not json")
    await work(json.dumps({"kind": "other"}))
    await work(json.dumps({"kind": "bc-changes"}))  # no entity set


def test_messages_are_split_and_merged():
    now = datetime(2025, 1, 1, tzinfo=timezone.utc)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(1200)]
    notes = [bc_webhook.Notification("s", "updated", "items", i, None, None) for i in ids]
    notes += [bc_webhook.Notification("s", "deleted", "items", ids[0], None, None),
              bc_webhook.Notification("s", "created", "customers", ids[1], None, None),
              bc_webhook.Notification("s", "updated", "customers", ids[1], None, None)]
    messages = [json.loads(m) for m in bc_webhook.plan_messages(notes, now)]
    assert [(m["entitySet"], len(m["ids"]), len(m["deleted"])) for m in messages] == [
        ("customers", 1, 0), ("items", 500, 1), ("items", 500, 0), ("items", 199, 0)]
    assert all(len(json.dumps(m)) < 48_000 for m in messages)
    assert bc_webhook.parse_resource(
        "/api/v2.0/companies(7dbba574-5f69-4167-a43e-fb975045de15)/salesInvoices?$filter=lastDateTimeModified%20gt"
        "%202018-10-15T11:00:00Z").since == datetime(2018, 10, 15, 11, tzinfo=timezone.utc)
    assert bc_webhook.parse_resource("api/v2.0/companies(x)/items(not-a-guid)") is None
    assert bc_webhook.redact_url("https://a.b/api/webhooks/bc?code=secret") == "https://a.b/api/webhooks/bc?code=***"
