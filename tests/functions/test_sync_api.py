"""Sync-now, the job log, the timer and the queue worker, through the registered functions."""
from __future__ import annotations

import json
import uuid

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest

from sandbox.host import Capture, registered_functions
from sync.runtime import get_runtime
from sync.settings import reset_settings

pytestmark = pytest.mark.usefixtures("app_env")



async def _pair(app, bc, dv, name):
    cust = bc.create("customers", {"displayName": name})
    acc = dv.create("accounts", {"name": name + " old", "customertypecode": 3})
    r = await app("couple", "POST", body={"mapping": "CUSTOMER", "bcId": cust["id"], "dataverseId": acc["accountid"]})
    assert r.status == 201
    return cust, acc


async def _sync_now(body):
    from .conftest import Response

    fn = registered_functions()["sync_now"].get_user_function()
    queue = Capture()
    req = func.HttpRequest("POST", "http://localhost:7071/api/sync-now", body=json.dumps(body).encode(),
                           headers={"Content-Type": "application/json"})
    return Response(await fn(req, queue)), queue


async def _work(message: str) -> list[str]:
    queue = Capture()
    msg = func.QueueMessage(id=uuid.uuid4().hex, body=message.encode())
    await registered_functions()["sync_worker"].get_user_function()(msg, queue)
    return queue.get() or []


async def test_sync_now_one_record_each_way(app, bc_emulator, dv_emulator):
    cust, acc = await _pair(app, bc_emulator, dv_emulator, "Now Co")
    r, _ = await _sync_now({"mapping": "CUSTOMER", "bcIds": [cust["id"]], "direction": "ToIntegrationTable"})
    assert r.status == 200, r
    assert r.json["records"][0]["result"] == "modified" and r.json["counts"]["modified"] == 1
    assert dv_emulator.get("accounts", acc["accountid"])["name"] == "Now Co"
    dv_emulator.update("accounts", acc["accountid"], {"address1_city": "Graz"})
    r, _ = await _sync_now({"mapping": "CUSTOMER", "dataverseIds": [acc["accountid"]],
                            "direction": "FromIntegrationTable"})
    assert r.status == 200 and r.json["counts"]["modified"] == 1
    assert bc_emulator.get("customers", cust["id"])["city"] == "Graz"
    job = await app("get_job", route={"id": r.json["jobs"][0]})
    assert job.status == 200 and job.json["job"]["kind"] == "SyncNow" and job.json["job"]["status"] == "Finished"


async def test_direction_rules(app, bc_emulator, dv_emulator):
    cust, _ = await _pair(app, bc_emulator, dv_emulator, "Rules Co")
    r, _ = await _sync_now({"mapping": "CUSTOMER", "bcIds": [cust["id"]]})
    assert r.status == 400 and r.json["error"]["details"]["choices"][:2] == ["ToIntegrationTable",
                                                                          "FromIntegrationTable"]
    eur = next(c for c in bc_emulator.all("currencies") if c["code"] == "EUR")
    r, _ = await _sync_now({"mapping": "CURRENCY", "bcIds": [eur["id"]], "direction": "FromIntegrationTable"})
    assert r.status == 422
    r, _ = await _sync_now({"mapping": "CUSTOMER", "bcIds": [cust["id"], str(uuid.uuid4())],
                            "direction": "Bidirectional"})
    assert r.status == 400  # merging both ways is for one record only


@pytest.mark.parametrize("body, status", [
    ({"mapping": "CUSTOMER", "direction": "ToIntegrationTable"}, 400),
    ({"mapping": "CUSTOMER", "bcIds": [], "direction": "ToIntegrationTable"}, 400),
    ({"mapping": "CUSTOMER", "bcIds": ["x"], "direction": "ToIntegrationTable"}, 400),
    ({"mapping": "CUSTOMER", "bcIds": [str(uuid.UUID(int=i + 1)) for i in range(1001)]}, 400),
    ({"mapping": "CUSTOMER", "bcIds": ["6f1c2a9e-3b4d-4e5f-8a7b-1c2d3e4f5a6b"],
      "dataverseIds": ["6f1c2a9e-3b4d-4e5f-8a7b-1c2d3e4f5a6b"]}, 400),
    ({"mapping": "CUSTOMER", "bcIds": ["6f1c2a9e-3b4d-4e5f-8a7b-1c2d3e4f5a6b"], "direction": 1}, 400),
    ({"mapping": "NOPE", "bcIds": ["6f1c2a9e-3b4d-4e5f-8a7b-1c2d3e4f5a6b"]}, 400),
])
async def test_sync_now_client_errors(app, body, status):
    r, queue = await _sync_now(body)
    assert r.status == status and r.json["error"]["message"]
    assert queue.get() is None


async def test_large_selection_answers_202_and_the_worker_finishes_it(app, bc_emulator, dv_emulator):
    pairs = [await _pair(app, bc_emulator, dv_emulator, f"Big {i}") for i in range(3)]
    for cust, _ in pairs:  # synchronized once: never-synchronized pairs count as changed on both sides (BC)
        assert (await _sync_now({"mapping": "CUSTOMER", "bcIds": [cust["id"]],
                                 "direction": "ToIntegrationTable"}))[0].status == 200
        bc_emulator.update("customers", cust["id"], {"city": "Big City"})
    loose = [bc_emulator.create("customers", {"displayName": f"Loose {i}"})["id"] for i in range(120)]
    ids = [c["id"] for c, _ in pairs] + loose
    r, queue = await _sync_now({"mapping": "CUSTOMER", "bcIds": ids, "direction": "ToIntegrationTable"})
    assert r.status == 202, r
    assert r.headers["Location"].endswith(f"/api/jobs/{r.json['id']}") and r.json["status"] == "Queued"
    polled = await app("get_job", route={"id": r.json["id"]})
    assert polled.json["job"]["status"] == "Queued"
    assert await _work(queue.get()) == []
    polled = await app("get_job", route={"id": r.json["id"]})
    job = polled.json["job"]
    assert job["status"] == "Finished" and job["counters"]["modified"] == 3 and job["counters"]["skipped"] == 120
    assert len(polled.json["records"]) == 123
    assert all(dv_emulator.get("accounts", a["accountid"])["address1_city"] == "Big City" for _, a in pairs)
    assert await _work(queue.get()) == []  # a repeated delivery does nothing


async def test_jobs_listing_and_lookup(app, bc_emulator, dv_emulator):
    cust, _ = await _pair(app, bc_emulator, dv_emulator, "Log Co")
    for _ in range(3):
        await _sync_now({"mapping": "CUSTOMER", "bcIds": [cust["id"]], "direction": "ToIntegrationTable"})
    r = await app("list_jobs", params={"mapping": "CUSTOMER", "pageSize": "2"})
    assert r.status == 200 and len(r.json["value"]) == 2 and r.json["continuation"]
    starts = [j["startedAt"] for j in r.json["value"]]
    assert starts == sorted(starts, reverse=True)
    for params in ({"pageSize": "0"}, {"mapping": "NOPE"}, {"continuation": "bogus"}):
        assert (await app("list_jobs", params=params)).status == 400
    assert (await app("get_job", route={"id": "0" * 27})).status == 404
    assert (await app("get_job", route={"id": "../x"})).status == 400


async def test_timer_starts_a_run_and_workers_follow_the_dependency_order(app, monkeypatch, bc_emulator, dv_emulator):
    monkeypatch.setenv("SYNC_SCHEDULE", "* * * * * *")
    reset_settings()
    await _pair(app, bc_emulator, dv_emulator, "Scheduled Co")
    queue = Capture()
    await registered_functions()["scheduled_sync"].get_user_function()(TimerRequest(past_due=False), queue)
    first = [json.loads(m)["mapping"] for m in queue.get()]
    assert set(first) == {"SALESPEOPLE", "CURRENCY", "PAYMENT TERMS", "SHIPMENT METHOD", "UNIT OF MEASURE"}
    order, pending = [], list(queue.get())
    while pending:
        message = pending.pop(0)
        order.append(json.loads(message)["mapping"])
        pending += await _work(message)
    assert set(order) == {"SALESPEOPLE", "CURRENCY", "PAYMENT TERMS", "SHIPMENT METHOD", "UNIT OF MEASURE",
                          "CUSTOMER", "VENDOR", "CONTACT", "ITEM-PRODUCT"}
    assert order.index("CURRENCY") < order.index("CUSTOMER") < order.index("CONTACT")
    assert order.index("PAYMENT TERMS") < min(order.index("CUSTOMER"), order.index("VENDOR"))
    assert order.index("SHIPMENT METHOD") < order.index("CUSTOMER")
    assert order.index("UNIT OF MEASURE") < order.index("ITEM-PRODUCT")
    jobs = await app("list_jobs", params={"mapping": "CUSTOMER"})
    assert {j["direction"] for j in jobs.json["value"]} == {"ToIntegrationTable", "FromIntegrationTable"}
    # the same tick again does not start a second run
    again = Capture()
    await registered_functions()["scheduled_sync"].get_user_function()(TimerRequest(past_due=False), again)


async def test_overlapping_runs_of_a_mapping_are_refused(app):
    from datetime import timedelta

    from sync import schedule

    rt = get_runtime()
    run_id, messages = await schedule.start_run(rt)
    held = await rt.leases.acquire("mapping-CURRENCY", "someone else", timedelta(minutes=5))
    assert held is not None
    currency = next(m for m in messages if json.loads(m)["mapping"] == "CURRENCY")
    await _work(currency)
    state = await rt.runs.get(run_id)
    assert state["mappings"]["CURRENCY"]["outcome"] == "already running"
    jobs, _ = await rt.jobs.list("CURRENCY")
    assert jobs == []  # nothing ran while the other run held the lease
    await rt.leases.release(held)


async def test_unreadable_queue_messages_are_dropped(app):
    assert await _work("not json") == []
    assert await _work(json.dumps({"kind": "unknown"})) == []
