"""Couple, look up and uncouple through the registered functions, against the emulators and real Azurite."""
from __future__ import annotations

import asyncio
import uuid

import pytest

from sync.runtime import get_runtime

pytestmark = pytest.mark.usefixtures("app_env")

# Fixed ids: parameters must be identical in every xdist worker.
G1 = b"6f1c2a9e-3b4d-4e5f-8a7b-1c2d3e4f5a6b"
G2 = b"7a2b3c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d"


def _customer(bc, name="Couple Test Customer", **extra):
    return bc.create("customers", {"displayName": name, **extra})


def _account(dv, name="Couple Test Account", **extra):
    return dv.create("accounts", {"name": name, "customertypecode": 3, **extra})


async def _all_couplings(mapping="CUSTOMER"):
    return [c async for page in get_runtime().couplings.iter_all(mapping) for c in page]


async def test_couple_existing_pair_then_repeat_is_harmless(app, bc_emulator, dv_emulator):
    cust, acc = _customer(bc_emulator), _account(dv_emulator)
    body = {"mapping": "customer", "bcId": cust["id"].upper(), "dataverseId": "{" + acc["accountid"] + "}"}
    first = await app("couple", "POST", body=body)
    assert first.status == 201, first
    assert first.json["created"] is True
    c = first.json["coupling"]
    assert (c["mapping"], c["bcId"], c["dataverseId"]) == ("CUSTOMER", cust["id"], acc["accountid"])
    again = await app("couple", "POST", body=body)
    assert again.status == 200 and again.json["created"] is False
    assert again.json["coupling"]["bcId"] == cust["id"]
    assert len(await _all_couplings()) == 1

    by_bc = await app("get_couplings", route={"mapping": "CUSTOMER"}, params={"bcId": cust["id"]})
    by_dv = await app("get_couplings", route={"mapping": "CUSTOMER"}, params={"dataverseId": acc["accountid"]})
    assert by_bc.status == by_dv.status == 200
    assert by_bc.json["coupling"]["dataverseId"] == acc["accountid"]
    assert by_dv.json["coupling"]["bcId"] == cust["id"]


async def test_missing_records_are_404_naming_the_side(app, bc_emulator, dv_emulator):
    cust, acc = _customer(bc_emulator), _account(dv_emulator)
    ghost = str(uuid.uuid4())
    r = await app("couple", "POST", body={"mapping": "CUSTOMER", "bcId": ghost, "dataverseId": acc["accountid"]})
    assert r.status == 404 and r.json["error"]["details"] == {"bcMissing": True, "dataverseMissing": False}
    assert "Business Central customers record" in r.json["error"]["message"]
    r = await app("couple", "POST", body={"mapping": "CUSTOMER", "bcId": cust["id"], "dataverseId": ghost})
    assert r.status == 404 and r.json["error"]["details"] == {"bcMissing": False, "dataverseMissing": True}
    assert "Dataverse account row" in r.json["error"]["message"]
    r = await app("couple", "POST", body={"mapping": "CUSTOMER", "bcId": ghost, "dataverseId": ghost})
    assert r.status == 404 and r.json["error"]["details"] == {"bcMissing": True, "dataverseMissing": True}
    assert await _all_couplings() == []


async def test_records_outside_the_filters_are_422_naming_the_filter(app, bc_emulator, dv_emulator):
    blocked = _customer(bc_emulator, "Blocked Customer", blocked="All")
    vendor_account = _account(dv_emulator, "Vendor Account", customertypecode=11)
    cust, acc = _customer(bc_emulator), _account(dv_emulator)
    r = await app("couple", "POST", body={"mapping": "CUSTOMER", "bcId": blocked["id"], "dataverseId": acc["accountid"]})
    assert r.status == 422 and r.json["error"]["details"]["filters"] == ["tableFilter"]
    assert "blocked" in r.json["error"]["message"]
    r = await app("couple", "POST", body={"mapping": "CUSTOMER", "bcId": cust["id"],
                                         "dataverseId": vendor_account["accountid"]})
    assert r.status == 422 and r.json["error"]["details"]["filters"] == ["integrationTableFilter"]
    assert "customertypecode" in r.json["error"]["message"]
    assert await _all_couplings() == []


async def test_already_coupled_is_409_naming_the_coupling(app, bc_emulator, dv_emulator):
    cust, other_cust = _customer(bc_emulator), _customer(bc_emulator, "Other")
    acc, other_acc = _account(dv_emulator), _account(dv_emulator, "Other")
    assert (await app("couple", "POST", body={"mapping": "CUSTOMER", "bcId": cust["id"],
                                              "dataverseId": acc["accountid"]})).status == 201
    r = await app("couple", "POST", body={"mapping": "CUSTOMER", "bcId": cust["id"],
                                         "dataverseId": other_acc["accountid"]})
    assert r.status == 409 and r.json["error"]["code"] == "AlreadyCoupled"
    assert r.json["error"]["details"]["coupling"]["dataverseId"] == acc["accountid"]
    r = await app("couple", "POST", body={"mapping": "CUSTOMER", "bcId": other_cust["id"],
                                         "dataverseId": acc["accountid"]})
    assert r.status == 409 and r.json["error"]["details"]["coupling"]["bcId"] == cust["id"]
    assert len(await _all_couplings()) == 1


async def test_concurrent_couple_requests_for_one_record_exactly_one_wins(app, bc_emulator, dv_emulator):
    cust = _customer(bc_emulator)
    accounts = [_account(dv_emulator, f"Race {i}") for i in range(8)]
    results = await asyncio.gather(*(app("couple", "POST", body={
        "mapping": "CUSTOMER", "bcId": cust["id"], "dataverseId": a["accountid"]}) for a in accounts))
    assert sorted(r.status for r in results) == [201] + [409] * 7
    couplings = await _all_couplings()
    assert len(couplings) == 1 and couplings[0].bc_id == cust["id"]
    # ... and the other way round: many BC records racing for one account
    customers = [_customer(bc_emulator, f"Racer {i}") for i in range(8)]
    target = _account(dv_emulator, "Race target")  # not one the first race may have coupled
    results = await asyncio.gather(*(app("couple", "POST", body={
        "mapping": "CUSTOMER", "bcId": c["id"], "dataverseId": target["accountid"]}) for c in customers))
    assert sorted(r.status for r in results) == [201] + [409] * 7
    assert len(await _all_couplings()) == 2


@pytest.mark.parametrize("raw, status, code", [
    (b"{not json", 400, "InvalidJson"),
    (b"[]", 400, "InvalidJson"),
    (b"", 400, "EmptyBody"),
    (b'{"mapping": "NOPE", "bcId": "%s", "dataverseId": "%s"}' % (G1, G2), 400, "UnknownMapping"),
    (b'{"mapping": "CUSTOMER", "bcId": "x\' or 1 eq 1", "dataverseId": "%s"}' % G1,
     400, "InvalidId"),
    (b'{"mapping": "CUSTOMER", "bcId": "%s"}' % G1, 400, "InvalidIds"),
    (b'{"mapping": "CUSTOMER"}', 400, "InvalidIds"),
    (b'{"mapping": "CUSTOMER", "createNew": true}', 400, "InvalidIds"),
    (b'{"mapping": "CUSTOMER", "createNew": "yes", "bcId": "%s"}' % G1, 400, "InvalidField"),
    (b'{"mapping": 42, "bcId": "%s", "dataverseId": "%s"}' % (G1, G2), 400, "MissingField"),
    (b'{"mapping": "CUSTOMER", "bcId": 12, "dataverseId": 13}', 400, "InvalidId"),
    (b'{"mapping": "CUSTOMER", "bcId": "%s", "dataverseId": "%s", "extra": 1}' % (G1, G2), 400, "UnknownField"),
    (b'{"mapping": "CUSTOMER", "syncAfterCoupling": "Sideways"}', 400, "InvalidField"),
    (b'{"mapping": "CUSTOMER", "pad": "' + b"x" * 300_000 + b'"}', 413, "PayloadTooLarge"),
])
async def test_client_errors_are_4xx_and_write_nothing(app, raw, status, code):
    r = await app("couple", "POST", raw=raw)
    assert (r.status, r.json["error"]["code"]) == (status, code), r
    assert r.json["error"]["message"]
    assert await _all_couplings() == []


async def test_option_mappings_take_an_option_value_not_a_row_id(app, bc_emulator):
    term = bc_emulator.all("paymentTerms")[0]
    r = await app("couple", "POST", body={"mapping": "PAYMENT TERMS", "bcId": term["id"],
                                         "dataverseId": str(uuid.uuid4())})
    assert r.status == 400 and r.json["error"]["code"] == "InvalidIds"
    assert "dataverseOptionValue" in r.json["error"]["message"]
    assert await _all_couplings("PAYMENT TERMS") == []


async def test_list_couplings_with_continuation(app, bc_emulator, dv_emulator):
    for i in range(7):
        c, a = _customer(bc_emulator, f"List {i}"), _account(dv_emulator, f"List {i}")
        assert (await app("couple", "POST", body={"mapping": "CUSTOMER", "bcId": c["id"],
                                                  "dataverseId": a["accountid"]})).status == 201
    seen, token, pages = [], None, 0
    while True:
        params = {"pageSize": "3", **({"continuation": token} if token else {})}
        r = await app("get_couplings", route={"mapping": "CUSTOMER"}, params=params)
        assert r.status == 200
        seen += [c["bcId"] for c in r.json["value"]]
        pages += 1
        token = r.json.get("continuation")
        if not token:
            break
    assert len(seen) == len(set(seen)) == 7 and pages == 3
    bad = await app("get_couplings", route={"mapping": "CUSTOMER"}, params={"continuation": "garbage"})
    assert bad.status == 400
    for params in ({"pageSize": "0"}, {"pageSize": "x"}, {"bcId": "nope"}):
        assert (await app("get_couplings", route={"mapping": "CUSTOMER"}, params=params)).status == 400
    missing = await app("get_couplings", route={"mapping": "CUSTOMER"}, params={"bcId": str(uuid.uuid4())})
    assert missing.status == 404 and missing.json["error"]["code"] == "NotCoupled"
    unknown = await app("get_couplings", route={"mapping": "NOPE"})
    assert unknown.status == 404 and unknown.json["error"]["code"] == "UnknownMapping"


async def test_sync_after_coupling(app, bc_emulator, dv_emulator):
    cust, acc = _customer(bc_emulator, city="Porto"), _account(dv_emulator, address1_city="Faro")
    r = await app("couple", "POST", body={"mapping": "CUSTOMER", "bcId": cust["id"], "dataverseId": acc["accountid"],
                                         "syncAfterCoupling": "ToIntegrationTable"})
    assert r.status == 201, r
    assert r.json["synchronization"]["counts"]["modified"] == 1
    assert dv_emulator.get("accounts", acc["accountid"])["address1_city"] == "Porto"
    assert r.json["coupling"]["lastSynchToIntegrationTable"]["result"] == "Success"
    other, other_acc = _customer(bc_emulator, "Other"), _account(dv_emulator, "Other", address1_city="Faro")
    r = await app("couple", "POST", body={"mapping": "CUSTOMER", "bcId": other["id"],
                                         "dataverseId": other_acc["accountid"],
                                         "syncAfterCoupling": "FromIntegrationTable"})
    assert r.status == 201 and bc_emulator.get("customers", other["id"])["city"] == "Faro"
