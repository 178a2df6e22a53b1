"""Create new and couple (both directions), crash-safety, lookups, and createNewIfNoMatch."""
from __future__ import annotations

import pytest

from sync.runtime import get_runtime

pytestmark = pytest.mark.usefixtures("app_env")


async def _couplings(mapping="CUSTOMER"):
    return [c async for page in get_runtime().couplings.iter_all(mapping) for c in page]


async def test_create_in_dataverse_from_a_bc_customer_and_repeat(app, bc_emulator, dv_emulator):
    cust = bc_emulator.create("customers", {"displayName": "Nova Gliders", "city": "Reno", "phoneNumber": "775 1",
                                            "email": "hi@nova.example"})
    body = {"mapping": "CUSTOMER", "bcId": cust["id"], "createNew": True}
    r = await app("couple", "POST", body=body)
    assert r.status == 201, r
    dv_id = r.json["coupling"]["dataverseId"]
    row = dv_emulator.get("accounts", dv_id)
    assert (row["name"], row["address1_city"], row["telephone1"], row["emailaddress1"]) == \
        ("Nova Gliders", "Reno", "775 1", "hi@nova.example")
    assert row["customertypecode"] == 3  # the mapping's value for records it creates (BC: config template)
    assert row["_transactioncurrencyid_value"]  # the LCY customer gets the Dataverse currency of the LCY
    c = r.json["coupling"]
    assert c["lastSynchToIntegrationTable"]["result"] == "Success"
    assert c["lastSynchModifiedOn"] and c["lastSynchDataverseModifiedOn"]

    again = await app("couple", "POST", body=body)
    assert again.status == 200 and again.json["created"] is False
    assert again.json["coupling"]["dataverseId"] == dv_id
    assert len(dv_emulator.find("accounts", name="Nova Gliders")) == 1


async def test_create_in_dataverse_is_crash_safe(app, bc_emulator, dv_emulator, monkeypatch):
    cust = bc_emulator.create("customers", {"displayName": "Crashy Couriers"})
    store = get_runtime().couplings
    real_create = store.create
    calls = {"n": 0}

    async def dies_once(coupling):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("the host died between the create and the coupling")
        return await real_create(coupling)

    monkeypatch.setattr(store, "create", dies_once)
    body = {"mapping": "CUSTOMER", "bcId": cust["id"], "createNew": True}
    first = await app("couple", "POST", body=body)
    assert first.status == 500
    assert len(dv_emulator.find("accounts", name="Crashy Couriers")) == 1 and await _couplings() == []
    second = await app("couple", "POST", body=body)
    assert second.status == 201
    assert len(dv_emulator.find("accounts", name="Crashy Couriers")) == 1
    assert [c.bc_id for c in await _couplings()] == [cust["id"]]


async def test_create_in_bc_from_an_account_and_repeat(app, bc_emulator, dv_emulator):
    acc = dv_emulator.create("accounts", {"name": "Quill Paper", "customertypecode": 3, "address1_city": "Oslo"})
    body = {"mapping": "CUSTOMER", "dataverseId": acc["accountid"], "createNew": True}
    r = await app("couple", "POST", body=body)
    assert r.status == 201, r
    rec = bc_emulator.get("customers", r.json["coupling"]["bcId"])
    assert (rec["displayName"], rec["city"]) == ("Quill Paper", "Oslo")
    assert r.json["coupling"]["lastSynchFromIntegrationTable"]["result"] == "Success"
    again = await app("couple", "POST", body=body)
    assert again.status == 200 and again.json["coupling"]["bcId"] == rec["id"]
    assert len([c for c in bc_emulator.all("customers") if c["displayName"] == "Quill Paper"]) == 1


async def test_create_in_bc_is_crash_safe(app, bc_emulator, dv_emulator, monkeypatch):
    acc = dv_emulator.create("accounts", {"name": "Phoenix Pottery", "customertypecode": 3})
    store = get_runtime().couplings
    real_create = store.create
    calls = {"n": 0}

    async def dies_once(coupling):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("the host died between the create and the coupling")
        return await real_create(coupling)

    monkeypatch.setattr(store, "create", dies_once)
    body = {"mapping": "CUSTOMER", "dataverseId": acc["accountid"], "createNew": True}
    assert (await app("couple", "POST", body=body)).status == 500
    assert (await app("couple", "POST", body=body)).status == 201
    assert len([c for c in bc_emulator.all("customers") if c["displayName"] == "Phoenix Pottery"]) == 1


async def test_create_in_bc_survives_a_lost_answer(app, bc_emulator, dv_emulator):
    acc = dv_emulator.create("accounts", {"name": "Lost Answer Ltd", "customertypecode": 3})
    bc_emulator.inject("drop_after", match=lambda r: r.method == "POST" and r.path.endswith("/customers"))
    r = await app("couple", "POST", body={"mapping": "CUSTOMER", "dataverseId": acc["accountid"], "createNew": True})
    assert r.status == 201, r
    made = [c for c in bc_emulator.all("customers") if c["displayName"] == "Lost Answer Ltd"]
    assert len(made) == 1 and r.json["coupling"]["bcId"] == made[0]["id"]


async def test_lookups_must_be_coupled(app, bc_emulator, dv_emulator):
    person = bc_emulator.all("salespeoplePurchasers")[0]
    cust = bc_emulator.create("customers", {"displayName": "Owned Co", "salespersonCode": person["code"]})
    r = await app("couple", "POST", body={"mapping": "CUSTOMER", "bcId": cust["id"], "createNew": True})
    assert r.status == 422 and r.json["error"]["code"] == "TransferFailed"
    assert "must be coupled to a Dataverse row" in r.json["error"]["message"]
    assert dv_emulator.find("accounts", name="Owned Co") == [] and await _couplings() == []
    # couple the salesperson with a user, and the account is created with that owner
    user = next(u for u in dv_emulator.all("systemusers") if u.get("islicensed") and not u.get("isintegrationuser")
                and not u.get("isdisabled"))
    assert (await app("couple", "POST", body={"mapping": "SALESPEOPLE", "bcId": person["id"],
                                              "dataverseId": user["systemuserid"]})).status == 201
    r = await app("couple", "POST", body={"mapping": "CUSTOMER", "bcId": cust["id"], "createNew": True})
    assert r.status == 201, r
    assert dv_emulator.get("accounts", r.json["coupling"]["dataverseId"])["_ownerid_value"] == user["systemuserid"]


async def test_foreign_currency_goes_through_currency_couplings(app, bc_emulator, dv_emulator):
    eur = next(c for c in bc_emulator.all("currencies") if c["code"] == "EUR")
    dv_eur = dv_emulator.find("transactioncurrencies", isocurrencycode="EUR")[0]
    cust = bc_emulator.create("customers", {"displayName": "Euro Shop", "currencyCode": "EUR"})
    r = await app("couple", "POST", body={"mapping": "CUSTOMER", "bcId": cust["id"], "createNew": True})
    assert r.status == 422 and "must be coupled" in r.json["error"]["message"]
    assert (await app("couple", "POST", body={"mapping": "CURRENCY", "bcId": eur["id"],
                                              "dataverseId": dv_eur["transactioncurrencyid"]})).status == 201
    r = await app("couple", "POST", body={"mapping": "CUSTOMER", "bcId": cust["id"], "createNew": True})
    assert r.status == 201
    row = dv_emulator.get("accounts", r.json["coupling"]["dataverseId"])
    assert row["_transactioncurrencyid_value"] == dv_eur["transactioncurrencyid"]


async def test_create_new_refused_against_the_mapping_direction_and_filters(app, bc_emulator, dv_emulator):
    person = bc_emulator.all("salespeoplePurchasers")[0]
    r = await app("couple", "POST", body={"mapping": "SALESPEOPLE", "bcId": person["id"], "createNew": True})
    assert r.status == 422 and r.json["error"]["code"] == "DirectionNotAllowed"
    blocked = bc_emulator.create("customers", {"displayName": "Blocked", "blocked": "All"})
    r = await app("couple", "POST", body={"mapping": "CUSTOMER", "bcId": blocked["id"], "createNew": True})
    assert r.status == 422 and r.json["error"]["code"] == "OutsideFilter"
    vendor_acc = dv_emulator.create("accounts", {"name": "A Vendor", "customertypecode": 11})
    r = await app("couple", "POST", body={"mapping": "CUSTOMER", "dataverseId": vendor_acc["accountid"],
                                         "createNew": True})
    assert r.status == 422 and r.json["error"]["code"] == "OutsideFilter"
    assert await _couplings() == []


async def test_create_new_if_no_match(app, bc_emulator, dv_emulator):
    match = bc_emulator.create("customers", {"displayName": "Matchable Mills"})
    lonely = bc_emulator.create("customers", {"displayName": "Lonely Looms"})
    acc = dv_emulator.create("accounts", {"name": "Matchable Mills", "customertypecode": 3})
    r = await app("couple_match", "POST", body={"mapping": "CUSTOMER", "bcIds": [match["id"], lonely["id"]],
                                               "createNewIfNoMatch": True})
    assert r.status == 200
    out = {o["bcId"]: o for o in r.json["records"]}
    assert out[match["id"]]["outcome"] == "coupled" and out[match["id"]]["dataverseId"] == acc["accountid"]
    assert out[lonely["id"]]["outcome"] == "created"
    assert dv_emulator.get("accounts", out[lonely["id"]]["dataverseId"])["name"] == "Lonely Looms"
    assert r.json["counts"]["created"] == 1 and len(await _couplings()) == 2
