"""The Dataverse webhook receiver and its queue worker, through the registered functions; the emulator's webhook
steps delivering to them over loopback HTTP."""
from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import azure.functions as func
import pytest

from emulators import dataverse_webhook as wh
from emulators.dataverse import DataverseError
from emulators.dataverse_webhook_sender import LocalFunctionEndpoint
from sandbox.host import Capture, registered_functions
from sync import engine
from sync.runtime import get_runtime
from sync.settings import reset_settings

from .conftest import Response

pytestmark = pytest.mark.usefixtures("app_env")

DATA = Path(__file__).resolve().parents[1] / "data" / "dataverse_webhook"
SECRET = "s3cret-9f2c71d0"



async def deliver(headers: dict, body: bytes, *, secret: str | None = None) -> tuple[Response, Capture]:
    """POST one webhook request to the registered function, as the host would (``?code=`` checked by the host)."""
    fn = registered_functions()["dataverse_webhook"].get_user_function()
    queue = Capture()
    h = dict(headers)
    if secret is not None:
        h["X-Webhook-Secret"] = secret
    req = func.HttpRequest("POST", "http://localhost:7071/api/webhooks/dataverse?code=key", body=body,
                           headers=h, params={"code": "key"})
    return Response(await fn(req, queue)), queue


async def work(message: str) -> None:
    """Run the queue-triggered worker on one message (raises what the worker raises: the queue would retry)."""
    fn = registered_functions()["dataverse_change_worker"].get_user_function()
    await fn(func.QueueMessage(id=uuid.uuid4().hex, body=message.encode("utf-8")))


async def deliver_and_process(headers: dict, body: bytes) -> Response:
    r, queue = await deliver(headers, body)
    if queue.get() is not None:
        await work(queue.get())
    return r


def request_for(dv, entity_set: str, row_id: str, message: str = "Update", **kwargs) -> tuple[dict, bytes]:
    return wh.webhook_request(dv.webhook_context_for(entity_set, row_id, message, **kwargs), dv.ORG_HOST)


async def pair(app, bc, dv, name: str, city: str = "Oslo") -> tuple[dict, dict]:
    """A coupled, synchronized customer/account pair."""
    cust = bc.create("customers", {"displayName": name, "city": city})
    acc = dv.create("accounts", {"name": name + " (old)", "customertypecode": 3})
    r = await app("couple", "POST", body={"mapping": "CUSTOMER", "bcId": cust["id"],
                                          "dataverseId": acc["accountid"],
                                          "syncAfterCoupling": "ToIntegrationTable"})
    assert r.status == 201, r
    assert dv.get("accounts", acc["accountid"])["name"] == name
    return bc.get("customers", cust["id"]), dv.get("accounts", acc["accountid"])


async def jobs_of(mapping: str) -> list:
    jobs, _ = await get_runtime().jobs.list(mapping, 200)
    return jobs


# --- the real bodies --------------------------------------------------------------------------------------------------
async def test_real_sample_bodies_are_accepted_and_change_nothing_for_uncoupled_rows(app, bc_emulator, caplog):
    writes = bc_emulator.stats.writes
    body = (DATA / "dataverse_webhook_create_account.json").read_bytes()
    r, queue = await deliver({"Content-Type": "application/json", "x-ms-dynamics-entity-name": "account",
                              "x-ms-dynamics-request-name": "Create"}, body)
    assert r.status == 202, r
    assert r.json == {"status": "accepted", "message": "Create", "entity": "account",
                      "id": "53c52f26-a89d-ef11-8a69-000d3a30b0c1", "mappings": ["CUSTOMER", "VENDOR"],
                      "correlationId": "7038a274-4877-4f3f-a57a-0f4493a647c6"}
    message = json.loads(queue.get())
    assert message["kind"] == "dataverse-change" and message["mode"] == 0 and "name" in message["changedAttributes"]
    caplog.set_level("INFO", logger="sync.dataverse_webhook")
    await work(queue.get())  # not coupled; CUSTOMER and VENDOR synchronize only coupled records
    assert "not coupled" in caplog.text

    r = await deliver_and_process({"Content-Type": "application/json"},
                                  (DATA / "dataverse_webhook_update_contact.json").read_bytes())
    assert r.status == 202 and r.json["mappings"] == ["CONTACT"] and r.json["message"] == "Update"
    assert bc_emulator.stats.writes == writes


# --- a coupled row ----------------------------------------------------------------------------------------------------
async def test_an_edit_in_dataverse_arrives_in_bc(app, bc_emulator, dv_emulator):
    cust, acc = await pair(app, bc_emulator, dv_emulator, "Hook Co")
    before = len(await jobs_of("CUSTOMER"))
    dv_emulator.update("accounts", acc["accountid"], {"address1_city": "Graz", "telephone1": "+43 1 234"})
    r = await deliver_and_process(*request_for(dv_emulator, "accounts", acc["accountid"]))
    assert r.status == 202
    rec = bc_emulator.get("customers", cust["id"])
    assert (rec["city"], rec["phoneNumber"]) == ("Graz", "+43 1 234")
    jobs = await jobs_of("CUSTOMER")
    assert len(jobs) == before + 1
    assert (jobs[0].direction, jobs[0].kind, jobs[0].counters["modified"]) == ("FromIntegrationTable",
                                                                               "Synchronization", 1)
    assert jobs[0].details["trigger"] == "dataverse-webhook"


async def test_duplicates_and_out_of_order_deliveries_never_write_twice_nor_go_back(app, bc_emulator, dv_emulator):
    cust, acc = await pair(app, bc_emulator, dv_emulator, "Order Co")
    row = acc["accountid"]
    dv_emulator.update("accounts", row, {"address1_city": "First"})
    first = request_for(dv_emulator, "accounts", row)
    dv_emulator.update("accounts", row, {"address1_city": "Second"})
    second = request_for(dv_emulator, "accounts", row)
    writes = bc_emulator.stats.writes

    await deliver_and_process(*second)
    assert bc_emulator.get("customers", cust["id"])["city"] == "Second"
    assert bc_emulator.stats.writes == writes + 1
    jobs = len(await jobs_of("CUSTOMER"))
    await deliver_and_process(*first)  # older, arriving late: the current row is already synchronized
    await deliver_and_process(*second)  # the same context again
    assert bc_emulator.get("customers", cust["id"])["city"] == "Second"
    assert bc_emulator.stats.writes == writes + 1
    assert len(await jobs_of("CUSTOMER")) == jobs  # nothing to do: no job either

    # the same delivery processed twice at once (slow BC, so they overlap): the row lease serializes them
    dv_emulator.update("accounts", row, {"address1_city": "Third"})
    _, queue = await deliver(*request_for(dv_emulator, "accounts", row))
    bc_emulator.latency = 0.2
    await asyncio.gather(work(queue.get()), work(queue.get()))
    bc_emulator.latency = 0.0
    assert bc_emulator.get("customers", cust["id"])["city"] == "Third"
    assert bc_emulator.stats.writes == writes + 2
    coupling = await get_runtime().couplings.get_by_dataverse("CUSTOMER", row)
    assert coupling.from_result == "Success" and not coupling.skipped
    assert [j.counters for j in await jobs_of("CUSTOMER") if j.counters.get("failed")] == []  # no 409 either


async def test_the_echo_of_the_apps_own_write_is_unchanged(app, bc_emulator, dv_emulator):
    cust, acc = await pair(app, bc_emulator, dv_emulator, "Echo Co")
    bc_emulator.update("customers", cust["id"], {"city": "Bergen"})
    rt = get_runtime()
    results = await engine.run_mapping(rt, await rt.mapping("CUSTOMER"))  # the schedule: To pass writes Dataverse
    assert results[0].counters.modified == 1
    row = dv_emulator.get("accounts", acc["accountid"])
    assert row["address1_city"] == "Bergen" and row["_modifiedby_value"] == dv_emulator.APP_USER_ID
    bc_writes, dv_writes, jobs = bc_emulator.stats.writes, dv_emulator.stats.writes, len(await jobs_of("CUSTOMER"))
    r = await deliver_and_process(*request_for(dv_emulator, "accounts", acc["accountid"]))
    assert r.status == 202
    assert (bc_emulator.stats.writes, dv_emulator.stats.writes) == (bc_writes, dv_writes)
    assert len(await jobs_of("CUSTOMER")) == jobs


async def test_a_body_over_256_kb_is_accepted_and_the_row_re_read(app, bc_emulator, dv_emulator):
    cust, acc = await pair(app, bc_emulator, dv_emulator, "Big Co")
    dv_emulator.update("accounts", acc["accountid"], {"address1_city": "Tromso"})
    headers, body = request_for(dv_emulator, "accounts", acc["accountid"],
                                pre_image={"description": "x" * 300_000})
    assert headers["x-ms-dynamics-msg-size-exceeded"] == "true" and b"InputParameters" not in body
    r, queue = await deliver(headers, body)
    assert r.status == 202 and json.loads(queue.get())["sizeExceeded"] is True
    await work(queue.get())
    assert bc_emulator.get("customers", cust["id"])["city"] == "Tromso"


async def test_a_crash_between_acknowledging_and_processing_loses_nothing(app, bc_emulator, dv_emulator,
                                                                          monkeypatch):
    cust, acc = await pair(app, bc_emulator, dv_emulator, "Crash Co")
    dv_emulator.update("accounts", acc["accountid"], {"address1_city": "Lyon"})
    r, queue = await deliver(*request_for(dv_emulator, "accounts", acc["accountid"]))
    assert r.status == 202 and queue.get()  # acknowledged: the host wrote the message before answering

    real, calls = engine.run_pass, []

    async def crashing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("worker died")
        return await real(*args, **kwargs)

    monkeypatch.setattr(engine, "run_pass", crashing_once)
    attempts = 0
    for attempt in range(1, 6):  # the queue: redelivered until processed (maxDequeueCount 5)
        attempts = attempt
        try:
            await work(queue.get())
            break
        except RuntimeError:
            assert bc_emulator.get("customers", cust["id"])["city"] != "Lyon"
    assert attempts == 2 and len(calls) == 2
    assert bc_emulator.get("customers", cust["id"])["city"] == "Lyon"


# --- delete ----------------------------------------------------------------------------------------------------------
async def test_a_delete_keeps_the_bc_record_and_the_strategy_applies_at_the_next_sync(app, bc_emulator,
                                                                                      dv_emulator):
    cust, acc = await pair(app, bc_emulator, dv_emulator, "Gone Co")
    row = acc["accountid"]
    dv_emulator.delete("accounts", row)
    request = request_for(dv_emulator, "accounts", row, "Delete")
    bc_writes = bc_emulator.stats.writes
    r = await deliver_and_process(*request)
    assert r.status == 202 and r.json["message"] == "Delete"
    assert bc_emulator.get("customers", cust["id"]) is not None and bc_emulator.stats.writes == bc_writes
    rt = get_runtime()
    coupling = await rt.couplings.get_by_dataverse("CUSTOMER", row)
    assert coupling.to_result == "Failure" and not coupling.skipped
    assert "was deleted in Dataverse" in coupling.last_error and "(None)" in coupling.last_error
    job = await rt.jobs.get(coupling.to_job_id)
    assert job.counters["skipped"] == 1 and job.outcomes[0]["reason"] == "deletionConflict"

    await deliver_and_process(*request)  # a duplicate: recorded once, never turned into "skipped"
    again = await rt.couplings.get_by_dataverse("CUSTOMER", row)
    assert (again.to_job_id, again.skipped) == (coupling.to_job_id, False)

    r = await app("update_mapping", "PATCH", route={"name": "CUSTOMER"},
                  body={"deletionConflictResolution": "RemoveCoupling"})
    assert r.status == 200, r
    result = await engine.run_pass(rt, engine.PassRequest(await rt.mapping("CUSTOMER"), engine.TO))
    assert await rt.couplings.get_by_dataverse("CUSTOMER", row) is None  # the strategy, at the next sync
    assert bc_emulator.get("customers", cust["id"]) is not None and result.job.status == "Finished"


async def test_a_delete_of_a_row_that_still_exists_is_ignored(app, bc_emulator, dv_emulator):
    _, acc = await pair(app, bc_emulator, dv_emulator, "Still Co")
    ctx = wh.build_remote_execution_context("Delete", "account", acc["accountid"])
    await deliver_and_process(*wh.webhook_request(ctx, dv_emulator.ORG_HOST))
    coupling = await get_runtime().couplings.get_by_dataverse("CUSTOMER", acc["accountid"])
    assert coupling.to_result == "Success"


# --- uncoupled rows ---------------------------------------------------------------------------------------------------
async def test_uncoupled_rows_are_created_in_bc_only_as_the_mapping_allows(app, bc_emulator, dv_emulator):
    def customers(name):
        return [c for c in bc_emulator.all("customers") if c["displayName"] == name]

    new = dv_emulator.create("accounts", {"name": "Fresh Co", "customertypecode": 3, "address1_city": "Turku"})
    await deliver_and_process(*request_for(dv_emulator, "accounts", new["accountid"], "Create"))
    assert customers("Fresh Co") == []  # default: CUSTOMER synchronizes only coupled records

    r = await app("update_mapping", "PATCH", route={"name": "CUSTOMER"}, body={"syncOnlyCoupledRecords": False})
    assert r.status == 200, r
    request = request_for(dv_emulator, "accounts", new["accountid"], "Create")
    await deliver_and_process(*request)
    created = customers("Fresh Co")
    assert len(created) == 1 and created[0]["city"] == "Turku"
    coupling = await get_runtime().couplings.get_by_dataverse("CUSTOMER", new["accountid"])
    assert coupling.bc_id == created[0]["id"]
    await deliver_and_process(*request)  # delivered again: coupled now, nothing more
    assert len(customers("Fresh Co")) == 1

    vendor = dv_emulator.create("accounts", {"name": "Fresh Vendor", "customertypecode": 11})
    await deliver_and_process(*request_for(dv_emulator, "accounts", vendor["accountid"], "Create"))
    assert [v for v in bc_emulator.all("vendors") if v["displayName"] == "Fresh Vendor"] == []  # VENDOR: coupled only
    assert customers("Fresh Vendor") == []  # outside CUSTOMER's filter (customertypecode 11)

    inactive = dv_emulator.create("accounts", {"name": "Sleepy Co", "customertypecode": 3})
    dv_emulator.update("accounts", inactive["accountid"], {"statecode": 1, "statuscode": 2})
    await deliver_and_process(*request_for(dv_emulator, "accounts", inactive["accountid"]))
    assert customers("Sleepy Co") == []  # outside the integration table filter (statecode 0)

    own = dv_emulator.create("accounts", {"name": "Own Co", "customertypecode": 3}, by=dv_emulator.APP_USER_ID)
    await deliver_and_process(*request_for(dv_emulator, "accounts", own["accountid"], "Create"))
    assert customers("Own Co") == []  # the app's own row whose coupling is not stored yet: never a duplicate


# --- ignored, refused -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("message, entity, reason", [
    ("Update", "task", "noMapping"),
    ("Assign", "account", "messageNotHandled"),
    ("SetStateDynamicEntity", "contact", "messageNotHandled"),
    ("Update", "transactioncurrency", "directionNotAllowed"),
])
async def test_unmapped_tables_and_unhandled_messages_are_ignored(app, message, entity, reason):
    ctx = wh.build_remote_execution_context("Update", entity, str(uuid.uuid4()))
    ctx["MessageName"] = message
    r, queue = await deliver(*wh.webhook_request(ctx, "org.crm.dynamics.com"))
    assert r.status == 200 and r.json["status"] == "ignored" and r.json["reason"] == reason and r.json["detail"]
    assert queue.get() is None


async def test_the_secret_header(app, monkeypatch, dv_emulator):
    monkeypatch.setenv("DATAVERSE_WEBHOOK_SECRET", SECRET)
    reset_settings()
    acc = dv_emulator.create("accounts", {"name": "Secret Co", "customertypecode": 3})
    headers, body = request_for(dv_emulator, "accounts", acc["accountid"], "Create")
    for given in (None, "wrong", SECRET[:-1], SECRET + " ", ""):
        r, queue = await deliver(headers, body, secret=given)
        assert r.status == 401 and r.json["error"]["code"] == "InvalidWebhookSecret", given
        assert queue.get() is None
    r, queue = await deliver(headers, b"not even json", secret="wrong")
    assert r.status == 401 and queue.get() is None  # authentication comes first
    r, queue = await deliver(headers, body, secret=SECRET)
    assert r.status == 202 and queue.get()
    monkeypatch.delenv("DATAVERSE_WEBHOOK_SECRET")
    reset_settings()
    r, queue = await deliver(headers, body, secret="anything")  # no secret configured: the function key only
    assert r.status == 202


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[1, 2]", b"\xff\xfe\x00", b'{"MessageName": "Update"}', b'"text"', b"null",
    json.dumps({"MessageName": "Update", "PrimaryEntityName": "account", "PrimaryEntityId": "nope"}).encode(),
    json.dumps({"MessageName": "Update", "PrimaryEntityName": "account", "PrimaryEntityId": str(uuid.uuid4()),
                "InputParameters": {"Target": {}}}).encode(),
    json.dumps({"MessageName": "Update", "PrimaryEntityName": ["account"], "PrimaryEntityId": str(uuid.uuid4())})
    .encode(),
    json.dumps({"MessageName": "Create", "PrimaryEntityName": "account", "PrimaryEntityId": str(uuid.uuid4()),
                "InputParameters": [{"key": "Target", "value": {"LogicalName": "account",
                                                                "Attributes": [{"k": 1}]}}]}).encode(),
])
async def test_malformed_bodies_are_400(app, body):
    r, queue = await deliver({"Content-Type": "application/json"}, body)
    assert r.status == 400 and r.json["error"]["code"] == "InvalidWebhookBody" and r.json["error"]["message"]
    assert queue.get() is None


async def test_storage_unreachable_is_502_so_dataverse_tries_again(app, dv_emulator, monkeypatch):
    from azure.core.exceptions import ServiceRequestError

    async def unreachable():
        raise ServiceRequestError("connection refused")

    monkeypatch.setattr(get_runtime().mapping_settings, "get_all", unreachable)
    acc = dv_emulator.all("accounts")[0]
    r, queue = await deliver(*request_for(dv_emulator, "accounts", acc["accountid"], "Create"))
    assert r.status == 502 and r.json["error"]["code"] == "UpstreamUnavailable" and queue.get() is None


async def test_an_absurdly_large_body_is_413(app):
    r, queue = await deliver({"Content-Type": "application/json"}, b" " * (4 * 1024 * 1024 + 1))
    assert r.status == 413 and queue.get() is None


async def test_unreadable_queue_messages_are_dropped(app):
    for message in ("not json", json.dumps({"kind": "other"}),
                    json.dumps({"kind": "dataverse-change", "message": "Update", "entity": "account", "id": "x"})):
        await work(message)  # no exception: not redelivered


# --- the emulator's webhook steps, over HTTP, into the functions ------------------------------------------------------
@pytest.fixture
def endpoint(app_env, monkeypatch):
    from sync.runtime import close_runtime

    monkeypatch.setenv("DATAVERSE_WEBHOOK_SECRET", SECRET)
    reset_settings()
    functions = registered_functions()
    ep = LocalFunctionEndpoint(functions["dataverse_webhook"].get_user_function(),
                               functions["dataverse_change_worker"].get_user_function(),
                               function_key="the-function-key", cleanup=close_runtime)
    yield ep
    ep.stop()


async def settle(dv, ep) -> None:
    if dv.webhooks is not None:
        assert await asyncio.to_thread(dv.webhooks.wait_idle, 30)
    assert await asyncio.to_thread(ep.drain, 60)


async def test_a_person_edit_reaches_bc_by_webhook_without_the_schedule(app, bc_emulator, dv_emulator, endpoint):
    cust, acc = await pair(app, bc_emulator, dv_emulator, "Live Co")
    await settle(dv_emulator, endpoint)
    dv_emulator.register_webhook(endpoint.url, entity_sets=["accounts"], headers={"X-Webhook-Secret": SECRET},
                                 filtering_attributes=["name", "address1_city", "telephone1"])
    dv_emulator.update("accounts", acc["accountid"], {"address1_city": "Reykjavik"})
    dv_emulator.update("accounts", acc["accountid"], {"description": "not a filtering attribute"})
    await settle(dv_emulator, endpoint)
    assert bc_emulator.get("customers", cust["id"])["city"] == "Reykjavik"
    deliveries = dv_emulator.webhooks.deliveries
    assert [(d.message, d.statuses) for d in deliveries] == [("Update", [202])]
    assert endpoint.poison == [] and endpoint.errors == []

    # no ping-pong: a scheduled run finds nothing to do, and a BC edit's echo comes back "unchanged"
    rt = get_runtime()
    mapping = await rt.mapping("CUSTOMER")
    results = await engine.run_mapping(rt, mapping)
    assert [(r.counters.modified, r.counters.inserted, r.counters.failed) for r in results] == [(0, 0, 0)] * 2
    bc_emulator.update("customers", cust["id"], {"phoneNumber": "+47 55 00 00"})
    results = await engine.run_mapping(rt, mapping)
    assert results[0].counters.modified == 1 and results[1].counters.modified == 0
    bc_writes = bc_emulator.stats.writes
    await settle(dv_emulator, endpoint)
    assert [d.message for d in dv_emulator.webhooks.deliveries] == ["Update", "Update"]  # the app's own write fired
    assert bc_emulator.stats.writes == bc_writes and len(endpoint.processed) >= 2
    results = await engine.run_mapping(rt, mapping)
    assert [(r.counters.modified, r.counters.inserted) for r in results] == [(0, 0)] * 2


async def test_deliveries_twice_and_out_of_order_from_the_emulator(app, bc_emulator, dv_emulator, endpoint):
    cust, acc = await pair(app, bc_emulator, dv_emulator, "Twice Co")
    await settle(dv_emulator, endpoint)
    dv_emulator.register_webhook(endpoint.url, entity_sets=["accounts"], headers={"X-Webhook-Secret": SECRET},
                                 duplicate=True)
    sender = dv_emulator.webhooks
    sender.pause()
    dv_emulator.update("accounts", acc["accountid"], {"address1_city": "Older"})
    dv_emulator.update("accounts", acc["accountid"], {"address1_city": "Newer"})
    assert len(sender.held) == 4 and sender.deliveries == []
    writes = bc_emulator.stats.writes
    sender.resume(reverse=True)
    await settle(dv_emulator, endpoint)
    assert [d.context["InputParameters"][0]["value"]["Attributes"][0]["value"] for d in sender.deliveries] == \
        ["Newer", "Newer", "Older", "Older"]
    assert all(d.statuses == [202] for d in sender.deliveries)
    assert bc_emulator.get("customers", cust["id"])["city"] == "Newer"
    assert bc_emulator.stats.writes == writes + 1


async def test_a_wrong_secret_from_dataverse_is_refused_and_nothing_happens(app, bc_emulator, dv_emulator, endpoint):
    cust, acc = await pair(app, bc_emulator, dv_emulator, "Intruder Co")
    await settle(dv_emulator, endpoint)
    dv_emulator.register_webhook(endpoint.url, entity_sets=["accounts"], headers={"X-Webhook-Secret": "guess"})
    dv_emulator.update("accounts", acc["accountid"], {"address1_city": "Nowhere"})
    await settle(dv_emulator, endpoint)
    assert dv_emulator.webhooks.failures[0].statuses == [401]  # not retried: only 502/503/504 are
    assert endpoint.queued == [] and endpoint.processed == []
    assert bc_emulator.get("customers", cust["id"])["city"] != "Nowhere"


async def test_a_failing_synchronous_step_fails_the_write(app, dv_emulator, endpoint):
    acc = dv_emulator.create("accounts", {"name": "Sync Co", "customertypecode": 3})
    version = dv_emulator.get("accounts", acc["accountid"])["versionnumber"]
    wrong_key = endpoint.url.replace("the-function-key", "wrong")
    dv_emulator.register_webhook(wrong_key, entity_sets=["accounts"], mode="sync")
    with pytest.raises(DataverseError) as caught:
        dv_emulator.update("accounts", acc["accountid"], {"name": "Never Saved"})
    assert caught.value.status == 400 and "401" in caught.value.message
    row = dv_emulator.get("accounts", acc["accountid"])
    assert (row["name"], row["versionnumber"]) == ("Sync Co", version)  # rolled back
    with pytest.raises(DataverseError):
        dv_emulator.create("accounts", {"name": "Never Created", "customertypecode": 3})
    assert dv_emulator.find("accounts", name="Never Created") == []


async def test_a_synchronous_step_is_answered_before_the_write_returns(app, bc_emulator, dv_emulator, endpoint):
    cust, acc = await pair(app, bc_emulator, dv_emulator, "Sync Ok Co")
    await settle(dv_emulator, endpoint)
    dv_emulator.register_webhook(endpoint.url, entity_sets=["accounts"], mode="sync",
                                 headers={"X-Webhook-Secret": SECRET})
    await asyncio.to_thread(dv_emulator.update, "accounts", acc["accountid"], {"address1_city": "Aarhus"})
    assert [(d.context["Mode"], d.statuses) for d in dv_emulator.webhooks.deliveries] == [(0, [202])]
    assert await asyncio.to_thread(endpoint.drain, 60)
    assert bc_emulator.get("customers", cust["id"])["city"] == "Aarhus"


@pytest.mark.parametrize("answers, attempts, ok", [
    ([200], 1, True),
    ([204], 1, True),
    ([503, 200], 2, True),
    ([502, 504], 2, False),  # exactly one more attempt
    ([504, 503, 200], 2, False),
    ([500, 200], 1, False),  # no retry on other statuses
    ([429, 200], 1, False),
    (["timeout", 200], 1, False),
])
def test_the_sender_retries_once_on_502_503_504(dv_emulator, answers, attempts, ok):
    calls = []

    def transport(url, headers, body, timeout):
        calls.append((url, headers, timeout))
        answer = answers[len(calls) - 1]
        if answer == "timeout":
            raise TimeoutError("60 s")
        return answer

    reg = dv_emulator.register_webhook("http://127.0.0.1:9/hook?code=k", entity_sets=["contacts"], mode="sync",
                                       headers={"X-Webhook-Secret": "v"})
    dv_emulator.webhooks.transport = transport
    contact = dv_emulator.all("contacts")[0]
    if ok:
        dv_emulator.update("contacts", contact["contactid"], {"jobtitle": "Buyer"})
    else:
        with pytest.raises(DataverseError):
            dv_emulator.update("contacts", contact["contactid"], {"jobtitle": "Buyer"})
    assert len(calls) == attempts
    url, headers, timeout = calls[0]
    assert url == reg.url and timeout == 60.0 and headers["X-Webhook-Secret"] == "v"
    assert headers["x-ms-dynamics-entity-name"] == "contact" and headers["x-ms-dynamics-request-name"] == "Update"
    assert headers["x-ms-dynamics-organization"] == dv_emulator.ORG_HOST


def test_every_write_fires_with_the_writer_and_the_images(dv_emulator):
    sent = []
    dv_emulator.register_webhook("http://127.0.0.1:9/hook", entity_sets=["accounts"], mode="sync", post_image=True)
    dv_emulator.webhooks.transport = lambda url, headers, body, timeout: sent.append(json.loads(body)) or 200
    acc = dv_emulator.create("accounts", {"name": "Fire Co", "customertypecode": 3})
    dv_emulator.update("accounts", acc["accountid"], {"telephone1": "1"}, by=dv_emulator.APP_USER_ID)
    dv_emulator.delete("accounts", acc["accountid"])
    assert [c["MessageName"] for c in sent] == ["Create", "Update", "Delete"]
    assert sent[1]["InitiatingUserId"] == dv_emulator.APP_USER_ID  # the app's own writes fire too
    assert [i["key"] for i in sent[1]["PreEntityImages"]] == ["PreImage"]
    assert "PostImage" in [i["key"] for i in sent[1]["PostEntityImages"]]
    assert sent[2]["InputParameters"][0]["value"]["LogicalName"] == "account"
    assert dv_emulator.get("accounts", acc["accountid"]) is None


async def test_an_async_step_fires_only_for_committed_writes(app, dv_emulator):
    from sync.adapters.transport import BatchOp

    sent = []
    dv_emulator.register_webhook("http://127.0.0.1:9/hook", entity_sets=["accounts"])
    dv_emulator.webhooks.transport = lambda url, headers, body, timeout: sent.append(json.loads(body)) or 202
    acc = dv_emulator.all("accounts")[0]
    results = await get_runtime().dataverse.batch([
        BatchOp.update("accounts", acc["accountid"], {"name": "Rolled Back"}, group="g"),
        BatchOp.update("accounts", str(uuid.uuid4()), {"name": "Missing"}, group="g"),  # 404: the changeset fails
    ])
    assert not results[0].ok and dv_emulator.get("accounts", acc["accountid"])["name"] != "Rolled Back"
    await get_runtime().dataverse.update("accounts", acc["accountid"], {"telephone1": "+1 2"})
    assert await asyncio.to_thread(dv_emulator.webhooks.wait_idle, 10)
    assert [(c["MessageName"], c["InitiatingUserId"]) for c in sent] == [("Update", dv_emulator.APP_USER_ID)]
    assert [(d.message, d.body and json.loads(d.body)["InputParameters"][0]["value"]["Attributes"][0]["value"])
            for d in dv_emulator.webhooks.dropped] == [("Update", "Rolled Back")]


async def test_a_rolled_back_write_is_dropped_even_when_a_later_write_commits_first(app, dv_emulator):
    """The sender checks a delivery's write only when it gets to it; by then a later write has a higher version."""
    from sync.adapters.transport import BatchOp

    sent = []
    dv_emulator.register_webhook("http://127.0.0.1:9/hook", entity_sets=["accounts"])
    dv_emulator.webhooks.transport = lambda url, headers, body, timeout: sent.append(json.loads(body)) or 202
    dv_emulator.webhooks.pause()
    acc = dv_emulator.all("accounts")[0]
    await get_runtime().dataverse.batch([
        BatchOp.update("accounts", acc["accountid"], {"name": "Rolled Back"}, group="g"),
        BatchOp.update("accounts", str(uuid.uuid4()), {"name": "Missing"}, group="g"),
    ])
    await get_runtime().dataverse.update("accounts", acc["accountid"], {"telephone1": "+1 3"})
    dv_emulator.webhooks.resume()
    assert await asyncio.to_thread(dv_emulator.webhooks.wait_idle, 10)
    assert len(sent) == 1 and [d.message for d in dv_emulator.webhooks.dropped] == ["Update"]
