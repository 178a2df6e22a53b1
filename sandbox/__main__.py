"""Run the sandbox: Azurite + the BC and Dataverse emulators + the app, then print what the app did.

    scripts/sandbox.sh            # the report
    scripts/sandbox.sh --serve    # the report, then keep everything running and serve the app on 127.0.0.1:7071

Everything runs on loopback with throw-away data; nothing is sent anywhere else.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time

from emulators.azurite import Azurite
from emulators.bc import BCEmulator
from emulators.dataverse import DataverseEmulator
from emulators.server import DEFAULT_TOKEN

from .host import LocalHost, invoke, registered_functions

WEBHOOK_SECRET = "sandbox-webhook-secret"

COMPANY_ID = "f64eba74-dacd-4854-a584-1834f68cfc3a"
WIDTH = 36


class Report:
    def __init__(self) -> None:
        self.step = 0

    def title(self, text: str) -> None:
        print(f"\n{text}\n{'=' * len(text)}")

    def line(self, label: str, text: str) -> None:
        print(f"  {label:<{WIDTH}} {text}")

    def section(self, text: str) -> None:
        self.step += 1
        print(f"\n{self.step}. {text}")


async def _call(name: str, method: str = "GET", **kwargs):
    resp = await invoke(name, method, **kwargs)
    body = resp.get_body()
    return resp.status_code, (json.loads(body) if body else None)


def _check(status: int, body, expected: int) -> None:
    if status != expected:
        raise SystemExit(f"sandbox: unexpected answer {status}: {json.dumps(body)[:500]}")


async def _coupling(bc_id: str) -> dict:
    status, body = await _call("get_couplings", route={"mapping": "CUSTOMER"}, params={"bcId": bc_id})
    return body["coupling"]


def _short(counters: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counters.items() if v) or "nothing to do"


async def _scheduled_run() -> dict:
    """What the timer and the queue workers do, with every message handled here."""
    from sync import schedule
    from sync.runtime import get_runtime

    return await schedule.run_inline(get_runtime(), owner="sandbox")


async def run(report: Report, bc: BCEmulator, dv: DataverseEmulator) -> None:
    from sync.runtime import close_runtime, get_runtime

    report.section("The app is configured")
    status, body = await _call("health")
    _check(status, body, 200)
    report.line("GET /api/health", f"{status} {body['status']}")
    report.line("functions registered", ", ".join(sorted(registered_functions())))

    report.section("Table mappings (BC's defaults)")
    status, body = await _call("list_mappings")
    _check(status, body, 200)
    for m in body["value"]:
        arrow = {"Bidirectional": "<->", "ToIntegrationTable": "->", "FromIntegrationTable": "<-"}[m["direction"]]
        report.line(m["name"], f"{m['bcEntitySet']} {arrow} {m['dataverseEntitySet']}"
                               f"  ({sum(f['enabled'] for f in m['fieldMappings'])} field mappings)")

    report.section("Couple what customers depend on (BC: salespeople and currencies first)")
    users = [u for u in dv.all("systemusers") if u.get("islicensed") and not u.get("isintegrationuser")
             and not u.get("isdisabled")]
    people = sorted(bc.all("salespeoplePurchasers"), key=lambda p: p["code"])
    for person, user in zip(people, users):
        status, body = await _call("couple", "POST", body={"mapping": "SALESPEOPLE", "bcId": person["id"],
                                                           "dataverseId": user["systemuserid"]})
        _check(status, body, 201)
    report.line("POST /api/couple x" + str(min(len(people), len(users))),
                ", ".join(f"{p['code']} -> {u['fullname']}" for p, u in zip(people, users)))
    for name, how in (("CURRENCY", "by ISO code"), ("PAYMENT TERMS", "code = option label"),
                      ("SHIPMENT METHOD", "code = option label")):
        status, body = await _call("couple_match", "POST", body={"mapping": name})
        _check(status, body, 200)
        report.line("POST /api/couple/match", f"{name} {how}: " + ", ".join(
            f"{k} {v}" for k, v in body["counts"].items() if v))

    report.section("Match-based coupling of the seed data (CUSTOMER, by name then phone), then a full sync")
    status, body = await _call("couple_match", "POST", body={"mapping": "CUSTOMER",
                                                             "syncAfterCoupling": "ToIntegrationTable"})
    _check(status, body, 200)
    counts = body["counts"]
    report.line("POST /api/couple/match", ", ".join(f"{k} {v}" for k, v in counts.items() if v))
    coupled = [r for r in body["records"] if r["outcome"] == "coupled"]
    for r in coupled[:2]:
        name = bc.get("customers", r["bcId"])["displayName"]
        report.line("  coupled", f"{name!r} -> account {r['dataverseId'][:8]}... (priority {r['priority']})")
    unmatched = [r for r in body["records"] if r["outcome"] == "unmatched"]
    if unmatched:
        name = bc.get("customers", unmatched[0]["bcId"])["displayName"]
        report.line("  e.g. unmatched", f"{name!r}: {unmatched[0]['reason']}")
    sync = body["synchronization"]["counts"]
    report.line("  synchronized (BC data)", ", ".join(f"{k} {v}" for k, v in sync.items() if v))
    if sync.get("failed"):
        status, job = await _call("get_job", route={"id": body["synchronization"]["jobs"][0]})
        report.line("  e.g. failed", job["errors"][0]["message"] if job.get("errors") else "")
    coupled = [r for r in coupled if (await _coupling(r["bcId"]))["lastSynchToIntegrationTable"]["result"]
               == "Success"]

    report.section("Scheduled synchronization: an incremental change each way, then a run that writes nothing")
    first, second = coupled[0], coupled[1]
    bc.update("customers", first["bcId"], {"phoneNumber": "+1 206 555 0199"})
    dv.update("accounts", second["dataverseId"], {"address1_city": "Tacoma"})
    counts = await _scheduled_run()
    report.line("a person edits BC, Dataverse", "customer phone -> +1 206 555 0199; account city -> Tacoma")
    report.line("timer + queue worker", f"CUSTOMER To: {_short(counts['CUSTOMER ToIntegrationTable'])}; "
                                        f"From: {_short(counts['CUSTOMER FromIntegrationTable'])}")
    report.line("  arrived", f"account phone {dv.get('accounts', first['dataverseId'])['telephone1']!r}, "
                             f"customer city {bc.get('customers', second['bcId'])['city']!r}")
    writes = bc.stats.writes + dv.stats.writes
    counts = await _scheduled_run()
    report.line("the next run", f"writes {bc.stats.writes + dv.stats.writes - writes}; CUSTOMER To: "
                                f"{_short(counts['CUSTOMER ToIntegrationTable'])}")

    report.section("A conflict lands on the errors page")
    third = coupled[2]
    bc.update("customers", third["bcId"], {"city": "Bern"})
    dv.update("accounts", third["dataverseId"], {"address1_city": "Basel"})
    await _scheduled_run()
    counts = await _scheduled_run()
    report.line("both sides changed the city", f"two runs: CUSTOMER To {_short(counts['CUSTOMER ToIntegrationTable'])}"
                                               " (the same error twice: skipped)")
    status, body = await _call("list_sync_errors", params={"mapping": "CUSTOMER"})
    _check(status, body, 200)
    entry = next(e for e in body["value"] if e["bcId"] == third["bcId"])
    report.line("GET /api/errors", f"{len(body['value'])} skipped; {entry['lastError'][:96]}...")
    status, body = await _call("synchronize_skipped", "POST", body={"mapping": "CUSTOMER", "bcIds": [third["bcId"]],
                                                                   "direction": "ToIntegrationTable"})
    _check(status, body, 200)
    report.line("POST /api/errors/synchronize", f"BC wins: {_short(body['counts'])}; account city now "
                                                f"{dv.get('accounts', third['dataverseId'])['address1_city']!r}")

    report.section("Webhooks: a Dataverse edit and a BC edit arrive without waiting for the schedule")
    host = LocalHost(registered_functions().values(), port=0)
    threading.Thread(target=host.serve_forever, daemon=True, name="sandbox-host").start()
    base = f"http://127.0.0.1:{host.port}/api"
    dv.register_webhook(f"{base}/webhooks/dataverse", entity_sets=["accounts"], mode="async",
                        headers={"X-Webhook-Secret": WEBHOOK_SECRET},
                        filtering_attributes=["name", "address1_city", "telephone1"])
    report.line("Dataverse webhook step", f"accounts, Update, async -> {base}/webhooks/dataverse")
    status, body = await _call("bc_subscriptions_set_up", "POST", body={"notificationUrl": f"{base}/webhooks/bc"})
    _check(status, body, 200)
    bc.webhooks.configure(delay=0.5)  # BC waits ~30 s to coalesce changes; shortened here
    report.line("POST /api/webhooks/bc/subscriptions", f"{status}: " + ", ".join(
        f"{o['entitySet']} {o['outcome']}" for o in body["value"]))
    via_dv, via_bc = coupled[3], coupled[4]
    dv.update("accounts", via_dv["dataverseId"], {"telephone1": "+1 425 555 0777"})
    bc.update("customers", via_bc["bcId"], {"city": "Spokane"})
    started = time.monotonic()
    for waiter in (dv.webhooks.wait_idle, bc.webhooks.wait_idle, host.wait_idle, bc.webhooks.wait_idle,
                   host.wait_idle):
        await asyncio.to_thread(waiter)
    report.line("a person edits Dataverse", f"account phone -> customer phone "
                                            f"{bc.get('customers', via_dv['bcId'])['phoneNumber']!r}")
    report.line("a person edits BC", f"customer city -> account city "
                                     f"{dv.get('accounts', via_bc['dataverseId'])['address1_city']!r} "
                                     f"({time.monotonic() - started:.1f} s, no scheduled run)")

    report.section("Couple one pair by hand, look it up, uncouple it")
    cust = bc.create("customers", {"displayName": "Sandbox Bikes", "city": "Seattle"})
    acc = dv.create("accounts", {"name": "Sandbox Bikes Inc.", "customertypecode": 3})
    status, body = await _call("couple", "POST", body={"mapping": "CUSTOMER", "bcId": cust["id"],
                                                       "dataverseId": acc["accountid"]})
    _check(status, body, 201)
    report.line("POST /api/couple", f"{status}: 'Sandbox Bikes' <-> 'Sandbox Bikes Inc.'")
    status, body = await _call("couple", "POST", body={"mapping": "CUSTOMER", "bcId": cust["id"],
                                                       "dataverseId": coupled[0]["dataverseId"]})
    report.line("  again, to another account", f"{status} {body['error']['code']}")
    status, body = await _call("get_couplings", route={"mapping": "CUSTOMER"}, params={"bcId": cust["id"]})
    _check(status, body, 200)
    report.line("GET /api/couplings/CUSTOMER", f"{status}: coupled at {body['coupling']['coupledAt']}")
    status, body = await _call("uncouple", "POST", body={"mapping": "CUSTOMER", "bcIds": [cust["id"]]})
    _check(status, body, 200)
    report.line("POST /api/uncouple", f"{status}: uncoupled {body['uncoupled']}; both records still exist: "
                                      f"{bool(bc.get('customers', cust['id']) and dv.get('accounts', acc['accountid']))}")

    report.section("Create new: an unmatched BC customer becomes an account, an account becomes a customer")
    if unmatched:
        bc_id = unmatched[0]["bcId"]
        status, body = await _call("couple", "POST", body={"mapping": "CUSTOMER", "bcId": bc_id, "createNew": True})
        _check(status, body, 201)
        row = dv.get("accounts", body["coupling"]["dataverseId"])
        report.line("POST /api/couple createNew", f"{status}: account {row['name']!r} created in Dataverse "
                                                  f"(customertypecode {row['customertypecode']}), coupled")
        status, body = await _call("couple", "POST", body={"mapping": "CUSTOMER", "bcId": bc_id, "createNew": True})
        report.line("  the same request again", f"{status}: created {body['created']} (no second account)")
    acc = dv.create("accounts", {"name": "Sandbox Sails", "customertypecode": 3, "address1_city": "Bergen"})
    status, body = await _call("couple", "POST", body={"mapping": "CUSTOMER", "dataverseId": acc["accountid"],
                                                       "createNew": True})
    _check(status, body, 201)
    rec = bc.get("customers", body["coupling"]["bcId"])
    report.line("POST /api/couple createNew", f"{status}: customer {rec['number']} {rec['displayName']!r} "
                                              f"({rec['city']}) created in Business Central, coupled")

    rt = get_runtime()
    report.section("What it cost")
    report.line("BC API", f"{bc.stats.requests} HTTP requests, {bc.stats.writes} writes")
    report.line("Dataverse Web API", f"{dv.stats.requests} HTTP requests, {dv.stats.writes} writes")
    report.line("Table Storage", f"{rt.tables.ops} operations (the report's own calls)")
    await close_runtime()


async def _run_and_close(report: Report, bc: BCEmulator, dv: DataverseEmulator) -> None:
    from sync.runtime import close_runtime

    try:
        await run(report, bc, dv)
    finally:
        await close_runtime()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", action="store_true", help="keep running and serve the app on 127.0.0.1")
    parser.add_argument("--port", type=int, default=7071, help="port for --serve (default 7071)")
    args = parser.parse_args()

    report = Report()
    started = time.monotonic()
    report.title("bc-dataverse-sync sandbox")
    with Azurite() as azurite, \
            BCEmulator(company_id=COMPANY_ID) as bc, \
            DataverseEmulator() as dv:
        os.environ.update({
            "BC_API_BASE_URL": bc.base_url, "BC_COMPANY_ID": COMPANY_ID, "DATAVERSE_URL": dv.url,
            "SYNC_STORAGE_CONNECTION": azurite.connection_string, "AzureWebJobsStorage": azurite.connection_string,
            "LOCAL_DEV_TOKEN": DEFAULT_TOKEN, "SYNC_TABLE_PREFIX": "sandbox",
            "DATAVERSE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        })
        report.line("Azurite", f"tables, queues, blobs on 127.0.0.1:{azurite.ports['table']} "
                               f"(and {azurite.ports['queue']}, {azurite.ports['blob']})")
        report.line("BC API v2.0 emulator", f"{bc.base_url}  ({bc.count('customers')} customers, "
                                            f"{bc.count('vendors')} vendors, {bc.count('contacts')} contacts, "
                                            f"{bc.count('items')} items)")
        report.line("Dataverse emulator", f"{dv.url}/api/data/v9.2  ({len(dv.all('accounts'))} accounts, "
                                          f"{len(dv.all('contacts'))} contacts, {len(dv.all('products'))} products)")
        asyncio.run(_run_and_close(report, bc, dv))
        print(f"\nDone in {time.monotonic() - started:.1f} s.")
        if args.serve:
            host = LocalHost(registered_functions().values(), port=args.port)
            print(f"\nServing the app on http://127.0.0.1:{host.port}/api (Ctrl+C to stop), e.g.\n"
                  f"  curl http://127.0.0.1:{host.port}/api/mappings\n"
                  f"  curl http://127.0.0.1:{host.port}/api/openapi.json\n"
                  f"BC emulator: {bc.base_url}  Dataverse emulator: {dv.url}  token: {DEFAULT_TOKEN}")
            try:
                host.serve_forever()
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
