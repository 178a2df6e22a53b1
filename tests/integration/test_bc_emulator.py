"""The Business Central API v2.0 emulator, through real HTTP (httpx) against a started emulator.

Expected shapes are the real captures and documented payloads of reference/samples (copied below where a test
needs them, with their source), so that the emulator stays faithful to BC rather than to itself.
"""
from __future__ import annotations

import base64
import re
import threading
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from emulators.bc import BCEmulator, BCError
from emulators.seed_data import BC_CUSTOMER_NAMES
from emulators.server import DEFAULT_TOKEN, RateLimit
from tests.conftest import BC_COMPANY_ID

ZERO = "00000000-0000-0000-0000-000000000000"
CORRELATION = re.compile(r"^(?P<msg>.*)  CorrelationId:  [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.$",
                         re.S)
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
ETAG = re.compile(r'^W/"(?P<b64>[A-Za-z0-9+/=]+)"$')

# samples/bc_customer_real_tenant.json (rebelpl/bc-api2-client tests/files/customer.json, BC 26.0 online): key order.
REAL_CUSTOMER_KEYS = [
    "@odata.context", "@odata.etag", "id", "number", "displayName", "type", "addressLine1", "addressLine2", "city",
    "state", "country", "postalCode", "phoneNumber", "email", "website", "salespersonCode", "balanceDue",
    "creditLimit", "taxLiable", "taxAreaId", "taxAreaDisplayName", "taxRegistrationNumber", "currencyId",
    "currencyCode", "paymentTermsId", "shipmentMethodId", "paymentMethodId", "blocked", "lastModifiedDateTime"]
# samples/bc_companies_real.json (rebelpl, BC 26.0 online): key order of a company.
REAL_COMPANY_KEYS = ["id", "systemVersion", "timestamp", "name", "displayName", "businessProfileId",
                     "systemCreatedAt", "systemCreatedBy", "systemModifiedAt", "systemModifiedBy"]
# Key order of the documented GET examples (samples/bc_<entity>.json, devitpro api-reference v2.0); the docs omit
# @odata.* and some properties, so each must be a subsequence of what the emulator returns.
DOC_KEYS = {
    "vendors": ["id", "number", "displayName", "addressLine1", "addressLine2", "city", "state", "country",
                "postalCode", "phoneNumber", "email", "website", "taxRegistrationNumber", "currencyId",
                "currencyCode", "irs1099Code", "paymentTermsId", "paymentMethodId", "taxLiable", "blocked",
                "balance", "lastModifiedDateTime"],
    "contacts": ["id", "number", "type", "displayName", "companyNumber", "companyName", "addressLine1",
                 "addressLine2", "city", "state", "country", "postalCode", "phoneNumber", "mobilePhoneNumber",
                 "email", "website", "searchName", "privacyBlocked", "lastInteractionDate", "lastModifiedDateTime"],
    "items": ["id", "number", "displayName", "type", "itemCategoryId", "itemCategoryCode", "blocked", "gtin",
              "inventory", "unitPrice", "priceIncludesTax", "unitCost", "taxGroupId", "taxGroupCode",
              "baseUnitOfMeasureId", "baseUnitOfMeasureCode", "lastModifiedDateTime"],
    "currencies": ["id", "code", "displayName", "symbol", "amountDecimalPlaces", "amountRoundingPrecision",
                   "lastModifiedDateTime"],
    "unitsOfMeasure": ["id", "code", "displayName", "internationalStandardCode", "symbol", "lastModifiedDateTime"],
    "paymentTerms": ["id", "code", "displayName", "dueDateCalculation", "discountDateCalculation",
                     "discountPercent", "calculateDiscountOnCreditMemos", "lastModifiedDateTime"],
    "shipmentMethods": ["id", "code", "displayName", "lastModifiedDateTime"],
    "salespeoplePurchasers": ["id", "code", "displayName", "email", "email2", "phoneNo", "jobTitle",
                              "commisionPercent", "privacyBlocked", "blocked", "lastModifiedDateTime"],
}
# samples/bc_error_invalid_token.json (microsoft/AL issue #1740).
INVALID_TOKEN_MESSAGE = ("Could not validate the client concurrency token required by the service. "
                         "Please provide a valid token in the client request.")


# -- helpers -------------------------------------------------------------------------------------------------
@pytest.fixture
def bc(bc_emulator):
    """(emulator, client rooted at the company URL)."""
    with httpx.Client(base_url=bc_emulator.company_url + "/",
                      headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"}, timeout=10) as client:
        yield bc_emulator, client


def _client(emu: BCEmulator) -> httpx.Client:
    return httpx.Client(base_url=emu.company_url + "/", headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"},
                        timeout=10)


def assert_error(resp: httpx.Response, status: int, code: str, message: str | re.Pattern | None = None) -> str:
    """BC's error shape (samples/bc_error_404_resource_not_found.json): {"error":{"code","message"}} with the
    two-space CorrelationId suffix. Returns the message without the suffix."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert list(body) == ["error"] and list(body["error"]) == ["code", "message"], body
    assert body["error"]["code"] == code, body
    m = CORRELATION.match(body["error"]["message"])
    assert m, body["error"]["message"]
    msg = m.group("msg")
    if isinstance(message, re.Pattern):
        assert message.search(msg), msg
    elif message is not None:
        assert msg == message
    return msg


def is_subsequence(small: list, big: list) -> bool:
    it = iter(big)
    return all(k in it for k in small)


def values(resp: httpx.Response) -> list[dict]:
    assert resp.status_code == 200, resp.text
    return resp.json()["value"]


def page_all(client: httpx.Client, url: str, page_size: int, params=None, between=None) -> list[dict]:
    out, pages = [], 0
    resp = client.get(url, params=params, headers={"Prefer": f"odata.maxpagesize={page_size}"})
    while True:
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert len(body["value"]) <= page_size
        out.extend(body["value"])
        pages += 1
        link = body.get("@odata.nextLink")
        if not link:
            return out
        if between:
            between(pages)
        resp = client.get(link, headers={"Prefer": f"odata.maxpagesize={page_size}"})


# -- auth, envelopes -------------------------------------------------------------------------------------------
def test_401_without_or_with_a_wrong_bearer(bc_emulator):
    url = bc_emulator.entity_url("customers")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": DEFAULT_TOKEN}):
        resp = httpx.get(url, headers=headers)
        assert_error(resp, 401, "Authentication_InvalidCredentials",
                     "The server has rejected the client credentials.")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


def test_companies_list_and_get_have_the_real_envelope(bc_emulator):
    with httpx.Client(headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"}) as client:
        body = client.get(f"{bc_emulator.base_url}/companies").json()
        assert body["@odata.context"] == f"{bc_emulator.base_url}/$metadata#companies"
        [company] = body["value"]
        assert list(company) == REAL_COMPANY_KEYS
        assert company["id"] == BC_COMPANY_ID
        one = client.get(f"{bc_emulator.base_url}/companies({BC_COMPANY_ID})").json()
        assert one["@odata.context"] == f"{bc_emulator.base_url}/$metadata#companies/$entity"
        assert_error(client.get(f"{bc_emulator.base_url}/companies({uuid.uuid4()})/customers"), 404,
                     "BadRequest_ResourceNotFound", "Resource not found for the segment 'companies'.")
        assert_error(client.post(f"{bc_emulator.base_url}/companies", json={}), 405,
                     "BadRequest_MethodNotAllowed")


def test_base_url_is_what_the_setting_takes(bc_emulator):
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v2\.0/cronus/sandbox/api/v2\.0", bc_emulator.base_url)
    from sync.settings import _BC_BASE_RE

    assert _BC_BASE_RE.search(bc_emulator.base_url)


def test_customer_get_matches_the_real_capture(bc):
    emu, client = bc
    first = emu.all("customers")[0]
    resp = client.get(f"customers({first['id']})")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/json; odata.metadata=minimal")
    assert resp.headers["OData-Version"] == "4.0"
    body = resp.json()
    assert list(body) == REAL_CUSTOMER_KEYS
    assert body["@odata.context"] == f"{emu.base_url}/$metadata#companies({BC_COMPANY_ID})/customers/$entity"
    raw = base64.b64decode(ETAG.match(body["@odata.etag"]).group("b64")).decode("ascii")
    assert re.fullmatch(r"'\d+;\d+;00;'", raw), raw
    assert TIMESTAMP.match(body["lastModifiedDateTime"])
    assert body["blocked"] == "_x0020_" and body["type"] == "Company"
    assert body["currencyCode"] == "USD" and body["currencyId"] == ZERO  # LCY customer


def test_list_envelope_etag_first_in_each_row(bc):
    emu, client = bc
    body = client.get("customers").json()
    assert body["@odata.context"] == f"{emu.base_url}/$metadata#companies({BC_COMPANY_ID})/customers"
    assert list(body) == ["@odata.context", "value"]  # 50 rows < 20,000: no nextLink
    assert len(body["value"]) == 50
    for row in body["value"]:
        assert list(row) == REAL_CUSTOMER_KEYS[1:]
    assert [r["number"] for r in body["value"]] == sorted(r["number"] for r in body["value"])


@pytest.mark.parametrize("entity_set", sorted(DOC_KEYS))
def test_every_entity_set_serializes_in_metadata_order(bc, entity_set):
    emu, client = bc
    rows = values(client.get(entity_set))
    assert rows, entity_set
    for row in rows:
        assert list(row)[:2] == ["@odata.etag", "id"]
        assert is_subsequence(DOC_KEYS[entity_set], list(row)), (entity_set, list(row))


def test_get_unknown_id_is_404_and_malformed_guid_400(bc):
    emu, client = bc
    assert_error(client.get(f"customers({uuid.uuid4()})"), 404, "BadRequest_ResourceNotFound",
                 "Resource not found for the segment 'customers'.")
    for key in ("abc", "'f2a5738a-44e3-ea11-bb43-000d3a2feca1'", "10000", ""):
        resp = client.get(f"customers({key})")
        assert resp.status_code == 400, (key, resp.text)
        assert resp.json()["error"]["code"] == "BadRequest_NotFound"
    assert_error(client.get("notAnEntitySet"), 404, "BadRequest_NotFound")


# -- POST ---------------------------------------------------------------------------------------------------------
def test_post_creates_with_201_location_number_and_id(bc):
    emu, client = bc
    resp = client.post("customers", json={"displayName": "Spotsmeyer's Furnishings", "city": "Miami",
                                          "email": "ann@spotsmeyer.com"})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert list(body) == REAL_CUSTOMER_KEYS
    assert uuid.UUID(body["id"]) and body["number"] == "C00510"  # next number of the series after 50 seeded
    assert resp.headers["Location"] == emu.entity_url("customers", body["id"])
    again = client.get(resp.headers["Location"]).json()
    assert again == body
    assert emu.get("customers", body["id"])["displayName"] == "Spotsmeyer's Furnishings"
    second = client.post("customers", json={"displayName": "Next"}).json()
    assert second["number"] == "C00520"
    assert second["lastModifiedDateTime"] > body["lastModifiedDateTime"]


@pytest.mark.parametrize("body,status,code,message", [
    ({"city": "Nowhere"}, 400, "Application_DialogException", 'A "displayName" must be provided.'),
    ({"displayName": ""}, 400, "Application_DialogException", 'A "displayName" must be provided.'),
    ({"displayName": "x" * 101}, 400, "Application_StringExceededLength",
     "The length of the string is 101, but it must be less than or equal to 100 characters. Value: " + "x" * 101),
    ({"displayName": "A", "addressLine2": "y" * 51}, 400, "Application_StringExceededLength",
     re.compile(r"^The length of the string is 51, but it must be less than or equal to 50 characters\.")),
    ({"displayName": "A", "nickname": "x"}, 400, "BadRequest",
     re.compile(r"^The property 'nickname' does not exist on type 'Microsoft\.NAV\.customer'\.")),
    ({"displayName": "A", "id": str(uuid.uuid4())}, 400, "BadRequest_InvalidOperation", "Control 'id' is read-only."),
    ({"displayName": "A", "lastModifiedDateTime": "2025-01-01T00:00:00Z"}, 400, "BadRequest_InvalidOperation",
     "Control 'lastModifiedDateTime' is read-only."),
    ({"displayName": "A", "balanceDue": 5}, 400, "BadRequest_InvalidOperation", "Control 'balanceDue' is read-only."),
    ({"displayName": "A", "currencyCode": "XYZ"}, 400, "Application_DialogException",
     'The "currencyCode" does not match to a Currency.'),
    ({"displayName": "A", "currencyId": str(uuid.uuid4())}, 400, "Application_DialogException",
     'The "currencyId" does not match to a Currency.'),
    ({"displayName": "A", "paymentTermsId": str(uuid.uuid4())}, 400, "Application_DialogException",
     'The "paymentTermsId" does not match to a Payment Terms.'),
    ({"displayName": "A", "shipmentMethodId": str(uuid.uuid4())}, 400, "Application_DialogException",
     'The "shipmentMethodId" does not match to a Shipment Method.'),
    ({"displayName": "A", "salespersonCode": "NOPE"}, 400, "Internal_InvalidTableRelation",
     "The field Salesperson Code of table Customer contains a value (NOPE) that cannot be found in the related "
     "table (Salesperson/Purchaser)."),
    ({"displayName": "A", "blocked": "Sometimes"}, 400, "Unknown",
     "'Sometimes' is not an option. The existing options are:  ,Ship,Invoice,All"),
    ({"displayName": "A", "creditLimit": "lots"}, 400, "BadRequest", re.compile("Edm.Decimal")),
    ({"displayName": "A", "taxLiable": "yes"}, 400, "BadRequest", re.compile("Edm.Boolean")),
    ({"displayName": "A", "taxAreaId": "not-a-guid"}, 400, "BadRequest",
     "Cannot convert the literal 'not-a-guid' to the expected type 'Edm.Guid'."),
    ({"displayName": None}, 400, "BadRequest", re.compile("does not allow null values")),
    ({"displayName": "A", "email": "not an email"}, 400, "Application_DialogException",
     'The email address "not an email" is not valid.'),
])
def test_post_validation_errors(bc, body, status, code, message):
    emu, client = bc
    before = emu.count("customers")
    assert_error(client.post("customers", json=body), status, code, message)
    assert emu.count("customers") == before


def test_post_duplicate_number_and_code_keyed_sets(bc):
    emu, client = bc
    assert_error(client.post("customers", json={"displayName": "Dup", "number": "c00010"}), 400,
                 "Internal_EntityWithSameKeyExists",
                 "The Customer already exists. Identification fields and values: No.='C00010'")
    ok = client.post("customers", json={"displayName": "Manual", "number": "cust-1"})
    assert ok.status_code == 201 and ok.json()["number"] == "CUST-1"  # Code fields are upper-case in BC
    assert_error(client.post("currencies", json={"code": "eur", "displayName": "Euro again"}), 400,
                 "Internal_EntityWithSameKeyExists",
                 "The Currency already exists. Identification fields and values: Code='EUR'")
    assert_error(client.post("unitsOfMeasure", json={"displayName": "No code"}), 400,
                 "Application_DialogException", 'A "code" must be provided.')
    for entity_set in ("currencies", "unitsOfMeasure", "paymentTerms", "shipmentMethods", "salespeoplePurchasers"):
        resp = client.post(entity_set, json={"code": "NEW1", "displayName": "New"})
        assert resp.status_code == 201, (entity_set, resp.text)
        assert resp.json()["code"] == "NEW1"
        assert client.post(entity_set, json={"code": "new1"}).status_code == 400


def test_post_requires_json(bc):
    emu, client = bc
    resp = client.post("customers", content=b'{"displayName":"X"}', headers={"Content-Type": "text/plain"})
    assert resp.status_code == 415
    assert_error(client.post("customers", content=b"{not json", headers={"Content-Type": "application/json"}),
                 400, "BadRequest")
    assert_error(client.post("customers", json=["displayName"]), 400, "BadRequest")


def test_lookups_currency_lcy_salesperson_terms(bc):
    emu, client = bc
    eur = emu.get_by_key("currencies", "EUR")
    terms = emu.get_by_key("paymentTerms", "14 DAYS")
    lcy = client.post("customers", json={"displayName": "Local", "currencyCode": "USD"}).json()
    assert lcy["currencyCode"] == "USD" and lcy["currencyId"] == ZERO
    resp = client.post("customers", json={"displayName": "Euro", "currencyCode": "eur", "salespersonCode": "jo",
                                          "paymentTermsId": terms["id"], "shipmentMethodId": ZERO})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert (body["currencyCode"], body["currencyId"]) == ("EUR", eur["id"])
    assert body["salespersonCode"] == "JO" and body["paymentTermsId"] == terms["id"]
    by_id = client.post("customers", json={"displayName": "By id", "currencyId": eur["id"]}).json()
    assert by_id["currencyCode"] == "EUR"
    assert_error(client.post("customers", json={"displayName": "Both", "currencyId": eur["id"],
                                                "currencyCode": "GBP"}),
                 400, "Application_DialogException", "The currency values do not match to a specific Currency.")
    back = client.patch(f"customers({body['id']})", json={"currencyCode": ""}, headers={"If-Match": "*"}).json()
    assert (back["currencyCode"], back["currencyId"]) == ("USD", ZERO)


def test_items_and_contacts_relations(bc):
    emu, client = bc
    pcs = emu.get_by_key("unitsOfMeasure", "PCS")
    item = client.post("items", json={"displayName": "Chair", "type": "Non-Inventory",
                                      "baseUnitOfMeasureCode": "pcs", "unitPrice": 12.5})
    assert item.status_code == 201, item.text
    body = item.json()
    assert body["type"] == "Non_x002D_Inventory"
    assert (body["baseUnitOfMeasureCode"], body["baseUnitOfMeasureId"]) == ("PCS", pcs["id"])
    assert_error(client.post("items", json={"displayName": "X", "baseUnitOfMeasureCode": "LITRE"}), 400,
                 "Application_DialogException", 'The "baseUnitOfMeasureCode" does not match to a Unit of Measure.')
    assert_error(client.post("items", json={"displayName": "X", "inventory": 4}), 400,
                 "BadRequest_InvalidOperation")

    company = client.post("contacts", json={"type": "Company", "displayName": "Acme Corp"}).json()
    assert company["companyNumber"] == company["number"] and company["companyName"] == "Acme Corp"
    person = client.post("contacts", json={"type": "Person", "displayName": "Ann Lee",
                                           "companyNumber": company["number"]}).json()
    assert person["companyName"] == "Acme Corp" and person["searchName"] == "ANN LEE"
    assert_error(client.post("contacts", json={"type": "Person", "displayName": "Bo",
                                               "companyNumber": person["number"]}),
                 400, "Internal_InvalidTableRelation",
                 re.compile(r"^The field Company No\. of table Contact contains a value"))
    seeded = [c for c in emu.all("contacts") if c["type"] == "Person" and c["companyNumber"]]
    assert len(seeded) >= 20
    for c in seeded:
        parent = emu.get_by_key("contacts", c["companyNumber"])
        assert parent["type"] == "Company" and c["companyName"] == parent["displayName"]
    assert {c["contactBusinessRelation"] for c in emu.all("contacts")} >= {"Customer", "Vendor", "None"}


# -- PATCH / DELETE -------------------------------------------------------------------------------------------------
def test_patch_requires_if_match_and_returns_the_new_entity(bc):
    emu, client = bc
    rec = emu.all("customers")[3]
    url = f"customers({rec['id']})"
    assert_error(client.patch(url, json={"city": "Denver"}), 400, "BadRequest_InvalidToken", INVALID_TOKEN_MESSAGE)
    resp = client.patch(url, json={"city": "Denver"}, headers={"If-Match": rec["@odata.etag"]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert list(body) == REAL_CUSTOMER_KEYS and body["city"] == "Denver"
    assert body["@odata.etag"] != rec["@odata.etag"]
    assert body["lastModifiedDateTime"] > rec["lastModifiedDateTime"]
    assert_error(client.patch(url, json={"city": "Boston"}, headers={"If-Match": rec["@odata.etag"]}), 409,
                 "Request_EntityChanged", "Another user has already changed the record.")
    star = client.patch(url, json={"city": "Boston", "@odata.etag": "ignored"}, headers={"If-Match": "*"})
    assert star.status_code == 200 and star.json()["city"] == "Boston"
    assert star.json()["@odata.etag"] not in (rec["@odata.etag"], body["@odata.etag"])
    assert_error(client.patch(url, json={"displayName": ""}, headers={"If-Match": "*"}), 400,
                 "Application_DialogException", 'The blank "displayName" is not allowed.')
    assert_error(client.patch(f"customers({uuid.uuid4()})", json={"city": "x"}, headers={"If-Match": "*"}), 404,
                 "BadRequest_ResourceNotFound")
    assert emu.get("customers", rec["id"])["city"] == "Boston"


def test_patch_number_renames_and_keeps_order(bc):
    emu, client = bc
    rec = emu.all("customers")[0]
    renamed = client.patch(f"customers({rec['id']})", json={"number": "zz-last"}, headers={"If-Match": "*"})
    assert renamed.json()["number"] == "ZZ-LAST"
    assert values(client.get("customers"))[-1]["id"] == rec["id"]
    assert_error(client.patch(f"customers({rec['id']})", json={"number": "C00020"}, headers={"If-Match": "*"}),
                 400, "Internal_EntityWithSameKeyExists")


def test_delete_requires_if_match(bc):
    emu, client = bc
    rec = emu.all("vendors")[0]
    url = f"vendors({rec['id']})"
    assert_error(client.delete(url), 400, "BadRequest_InvalidToken")
    assert_error(client.delete(url, headers={"If-Match": 'W/"JzE4OzE7MDA7Jw=="'}), 409, "Request_EntityChanged")
    resp = client.delete(url, headers={"If-Match": rec["@odata.etag"]})
    assert resp.status_code == 204 and resp.content == b""
    assert_error(client.get(url), 404, "BadRequest_ResourceNotFound", "Resource not found for the segment 'vendors'.")
    assert emu.get("vendors", rec["id"]) is None


def test_writes_are_counted_once_each_and_only_when_they_happen(bc):
    emu, client = bc
    emu.stats.reset()
    created = client.post("customers", json={"displayName": "Counted"}).json()
    client.patch(f"customers({created['id']})", json={"city": "Austin"}, headers={"If-Match": "*"})
    client.post("customers", json={"city": "no name"})  # refused: no write
    client.get("customers")
    client.delete(f"customers({created['id']})", headers={"If-Match": "*"})
    assert emu.stats.writes == 3
    assert emu.stats.requests == emu.stats.operations == 5


def test_timestamps_strictly_increase_with_a_frozen_clock():
    frozen = datetime(2025, 2, 23, 13, 34, 29, 943000, tzinfo=timezone.utc)
    with BCEmulator(BC_COMPANY_ID, clock=lambda: frozen) as emu, _client(emu) as client:
        a = client.post("customers", json={"displayName": "A"}).json()
        b = client.post("customers", json={"displayName": "B"}).json()
        c = client.patch(f"customers({a['id']})", json={"city": "X"}, headers={"If-Match": "*"}).json()
        # each new customer's company contact (BC creates it with the customer) takes the next millisecond
        assert a["lastModifiedDateTime"] == "2025-02-23T13:34:29.943Z"
        assert emu.company_contact("customers", a["id"])["lastModifiedDateTime"] == "2025-02-23T13:34:29.944Z"
        assert b["lastModifiedDateTime"] == "2025-02-23T13:34:29.945Z"
        assert c["lastModifiedDateTime"] == "2025-02-23T13:34:29.947Z"
        assert len({a["@odata.etag"], b["@odata.etag"], c["@odata.etag"]}) == 3
        seeded = emu.all("customers")[0]["lastModifiedDateTime"]
        assert seeded < a["lastModifiedDateTime"]  # seed data is older than anything created afterwards


# -- query options ------------------------------------------------------------------------------------------------
def test_filter_text_eq_is_case_sensitive_and_functions(bc):
    emu, client = bc
    name = BC_CUSTOMER_NAMES[7]
    assert [r["displayName"] for r in values(client.get("customers", params={"$filter": f"displayName eq '{name}'"}))] \
        == [name]
    assert values(client.get("customers", params={"$filter": f"displayName eq '{name.upper()}'"})) == []
    lower = values(client.get("customers", params={"$filter": f"tolower(displayName) eq '{name.lower()}'"}))
    assert [r["displayName"] for r in lower] == [name]
    word = name.split()[0]
    starts = values(client.get("customers", params={"$filter": f"startswith(displayName,'{word}')"}))
    assert starts and all(r["displayName"].startswith(word) for r in starts)
    assert {r["id"] for r in starts} == {c["id"] for c in emu.all("customers") if c["displayName"].startswith(word)}
    ends = values(client.get("customers", params={"$filter": "endswith(displayName, 'Bank')"}))
    assert {r["id"] for r in ends} == {c["id"] for c in emu.all("customers") if c["displayName"].endswith("Bank")}
    has = values(client.get("customers", params={"$filter": "contains(email,'@')"}))
    assert {r["id"] for r in has} == {c["id"] for c in emu.all("customers") if "@" in c["email"]}
    assert len(has) < 50  # some seeded customers have no e-mail


def test_filter_literals_guid_datetime_number_bool_enum_and_quote_escaping(bc):
    emu, client = bc
    rows = emu.all("customers")
    target = rows[5]
    got = values(client.get("customers", params={"$filter": f"id eq {target['id'].upper()}"}))
    assert [r["id"] for r in got] == [target["id"]]
    assert_error(client.get("customers", params={"$filter": f"id eq '{target['id']}'"}), 400, "BadRequest",
                 "A binary operator with incompatible types was detected. Found operand types 'Edm.Guid' and "
                 "'Edm.String' for operator kind 'Equal'.")
    stamps = sorted(r["lastModifiedDateTime"] for r in rows)
    pivot = stamps[30]
    newer = values(client.get("customers", params={"$filter": f"lastModifiedDateTime gt {pivot}"}))
    assert len(newer) == 19 and all(r["lastModifiedDateTime"] > pivot for r in newer)
    offset = datetime.fromisoformat(pivot.replace("Z", "+00:00")).astimezone(timezone(timedelta(hours=2)))
    same = values(client.get("customers", params={"$filter": f"lastModifiedDateTime gt {offset.isoformat()}"}))
    assert {r["id"] for r in same} == {r["id"] for r in newer}  # "+02:00" sent as %2B by httpx
    big = values(client.get("customers", params={"$filter": "creditLimit ge 10000"}))
    assert {r["id"] for r in big} == {r["id"] for r in rows if r["creditLimit"] >= 10000}
    foreign = values(client.get("customers", params={"$filter": "taxLiable eq false"}))
    assert {r["country"] for r in foreign} <= {"GB", "DE", "CA"} and foreign
    blocked = values(client.get("customers", params={"$filter": "blocked eq 'All' or blocked eq 'Invoice'"}))
    assert sorted(r["blocked"] for r in blocked) == ["All", "Invoice"]
    assert len(values(client.get("customers", params={"$filter": "blocked ne '_x0020_'"}))) == 2
    assert len(values(client.get("customers", params={"$filter": "type eq 'Company'"}))) == 50
    created = client.post("customers", json={"displayName": "O'Brien Ltd"}).json()
    quoted = values(client.get("customers", params={"$filter": "displayName eq 'O''Brien Ltd'"}))
    assert [r["id"] for r in quoted] == [created["id"]]
    nums = values(client.get("customers", params={
        "$filter": "(number eq 'C00010' or number eq 'C00020') and not (city eq 'Nowhere')"}))
    assert sorted(r["number"] for r in nums) == ["C00010", "C00020"]


@pytest.mark.parametrize("expr,message", [
    ("number eq 'A' or displayName eq 'B'",
     "The 'OR' operator is not supported on distinct fields on an OData filter."),
    ("displayName eq 'x' or 1 eq 1", None),
    ("displayName eq 'x' or true", None),
    ("displayName eq 'x') or (displayName ne 'x'", None),
    ("displayName eq 'x'; DROP TABLE Customer", None),
    ("displayName eq 'x' --", None),
    ("displayName eq 'x' || number ne ''", None),
    ("displayName eq x", "Could not find a property named 'x' on type 'Microsoft.NAV.customer'."),
    ("displayName eq 'abc", None),
    ("displayName eq 'a' eq 'b'", None),
    ("number in ('C00010','C00020')", None),
    ("1 eq 1", None),
    ("", None),
    ("displayName", None),
    ("contains(displayName, 1)", None),
    ("startswith(displayName,'A') or number eq 'C00010'", None),
    ("nickname eq 'x'", "Could not find a property named 'nickname' on type 'Microsoft.NAV.customer'."),
    ("lastModifiedDateTime gt 2024-01-01T00:00:00", None),
    ("lastModifiedDateTime gt '2024-01-01T00:00:00Z'", None),
    ("creditLimit gt '5'", None),
    ("blocked eq 'Sometimes'", None),
    ("substring(displayName,1) eq 'x'", None),
    ("displayName eq 'a' and", None),
    ("(displayName eq 'a'", None),
    ("displayName eq number", None),
    ("displayName EQ 'x'", None),
])
def test_bad_filters_are_400_never_a_wider_result(bc, expr, message):
    emu, client = bc
    resp = client.get("customers", params={"$filter": expr})
    assert_error(resp, 400, "BadRequest", message)


def test_quote_breakout_stays_inside_the_literal(bc):
    emu, client = bc
    for expr in ("displayName eq 'x'' or displayName ne ''x'", "displayName eq ''' or ''1''=''1'",
                 "number eq 'C00010'' or number ne '''"):
        assert values(client.get("customers", params={"$filter": expr})) == [], expr


def test_select_orderby_top_skip_count(bc):
    emu, client = bc
    body = client.get("customers", params={"$select": "displayName,number", "$top": "3"}).json()
    assert body["@odata.context"].endswith(f"companies({BC_COMPANY_ID})/customers(number,displayName)")
    assert [list(r) for r in body["value"]] == [["@odata.etag", "number", "displayName"]] * 3
    assert "@odata.nextLink" not in body
    ordered = values(client.get("customers", params={"$orderby": "displayName desc", "$select": "displayName"}))
    names = [r["displayName"] for r in ordered]
    assert names == sorted(BC_CUSTOMER_NAMES, reverse=True)
    skipped = values(client.get("customers", params={"$orderby": "displayName", "$skip": "48"}))
    assert [r["displayName"] for r in skipped] == sorted(BC_CUSTOMER_NAMES)[48:]
    counted = client.get("customers", params={"$filter": "country eq 'GB'", "$count": "true"}).json()
    assert counted["@odata.count"] == len(counted["value"]) == 2
    assert_error(client.get("customers", params={"$select": "displayName,nickname"}), 400, "BadRequest",
                 "Could not find a property named 'nickname' on type 'Microsoft.NAV.customer'.")
    assert_error(client.get("customers", params={"$orderby": "nickname"}), 400, "BadRequest")
    assert_error(client.get("customers", params={"$top": "-1"}), 400, "BadRequest")
    assert_error(client.get("customers", params={"$search": "x"}), 400, "BadRequest")
    one = client.get(f"customers({emu.all('customers')[0]['id']})", params={"$select": "number"}).json()
    assert list(one) == ["@odata.context", "@odata.etag", "number"]


# -- paging ---------------------------------------------------------------------------------------------------------
def test_server_driven_paging_is_stable_under_inserts(bc):
    emu, client = bc
    for i in range(45):
        emu.create("customers", {"displayName": f"Paged {i:02d}"})
    before = {c["id"] for c in emu.all("customers")}
    inserted = []

    def insert_between(pages):
        if pages == 1:  # one record sorting before the cursor, one after
            inserted.append(emu.create("customers", {"displayName": "Early", "number": "A0001"})["id"])
            inserted.append(emu.create("customers", {"displayName": "Late", "number": "ZZ0001"})["id"])

    first = client.get("customers", headers={"Prefer": "odata.maxpagesize=10"})
    assert first.headers["Preference-Applied"] == "odata.maxpagesize=10"
    link = first.json()["@odata.nextLink"]
    assert link.startswith(emu.entity_url("customers") + "?") and "$skiptoken=" in link
    rows = page_all(client, "customers", 10, between=insert_between)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))  # nothing twice
    assert before <= set(ids)  # nothing skipped
    assert inserted[1] in ids and inserted[0] not in ids  # behind the cursor: next sync's job
    assert len(rows) == 96


def test_paging_with_concurrent_inserts_from_another_thread(bc):
    emu, client = bc
    before = {c["id"] for c in emu.all("customers")}
    stop = threading.Event()

    def writer():
        n = 0
        while not stop.is_set() and n < 300:
            emu.create("customers", {"displayName": f"Concurrent {n}", "number": f"B{n:05d}" if n % 2 else ""})
            n += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        rows = page_all(client, "customers", 7, params={"$select": "id,number"})
    finally:
        stop.set()
        t.join()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) and before <= set(ids)


def test_paging_keeps_filter_orderby_and_top(bc):
    emu, client = bc
    for i in range(30):
        emu.create("customers", {"displayName": f"Filtered {i:02d}", "city": "Springfield"})
    rows = page_all(client, "customers", 4, params={"$filter": "city eq 'Springfield'", "$orderby": "displayName desc"})
    assert [r["displayName"] for r in rows] == [f"Filtered {i:02d}" for i in reversed(range(30))]
    top = page_all(client, "customers", 4, params={"$top": "10"})
    assert len(top) == 10
    assert [r["number"] for r in top] == [c["number"] for c in emu.all("customers")[:10]]
    big = page_all(client, "customers", 1000)
    assert len(big) == emu.count("customers")


def test_page_size_limits_and_bad_tokens(bc):
    emu, client = bc
    resp = client.get("customers", headers={"Prefer": "odata.maxpagesize=20001"})
    assert resp.status_code == 413 and resp.json()["error"]["code"]
    assert client.get("customers", headers={"Prefer": "odata.maxpagesize=20000"}).status_code == 200
    assert_error(client.get("customers", params={"$skiptoken": "garbage!"}), 400, "BadRequest")
    link = client.get("customers", headers={"Prefer": "odata.maxpagesize=5"}).json()["@odata.nextLink"]
    followed = client.get(link)  # without the header the token's page size still applies
    assert len(followed.json()["value"]) == 5


# -- $batch ---------------------------------------------------------------------------------------------------------
def test_batch_relative_and_absolute_urls(bc):
    emu, client = bc
    rec = emu.all("customers")[0]
    emu.stats.reset()
    body = {"requests": [
        {"method": "PATCH", "id": "r1", "url": f"companies({BC_COMPANY_ID})/customers({rec['id']})",
         "headers": {"Content-Type": "application/json", "If-Match": rec["@odata.etag"]}, "body": {"city": "Dallas"}},
        {"method": "POST", "id": "r2", "url": emu.entity_url("customers"),
         "headers": {"Content-Type": "application/json"}, "body": {"displayName": "From batch"}},
        {"method": "GET", "id": "r3", "url": f"companies({BC_COMPANY_ID})/customers?$filter=city eq 'Dallas'"},
        {"method": "GET", "id": "r4", "url": f"customers({uuid.uuid4()})", "headers": {"Company": BC_COMPANY_ID}},
        {"method": "DELETE", "id": "r5", "url": f"companies({BC_COMPANY_ID})/customers({rec['id']})"},
    ]}
    resp = client.post(f"{emu.base_url}/$batch", json=body)
    assert resp.status_code == 200, resp.text
    out = resp.json()["responses"]
    assert [r["id"] for r in out] == ["r1", "r2", "r3", "r4", "r5"]
    assert [r["status"] for r in out] == [200, 201, 200, 404, 400]
    for r in out:
        assert all(k == k.lower() for k in r["headers"])
    assert out[0]["body"]["city"] == "Dallas" and out[0]["body"]["@odata.etag"] != rec["@odata.etag"]
    assert out[1]["headers"]["location"] == emu.entity_url("customers", out[1]["body"]["id"])
    assert out[1]["headers"]["content-type"].startswith("application/json")
    assert rec["id"] in {r["id"] for r in out[2]["body"]["value"]}
    assert out[3]["body"]["error"]["code"] == "BadRequest_ResourceNotFound"
    assert out[4]["body"]["error"]["code"] == "BadRequest_InvalidToken"  # DELETE without If-Match
    assert emu.stats.requests == 1 and emu.stats.operations == 5 and emu.stats.writes == 2
    assert emu.get("customers", rec["id"])["city"] == "Dallas"  # no snapshot: the failures don't undo the rest


def test_batch_snapshot_is_all_or_nothing(bc):
    emu, client = bc
    rec = emu.all("customers")[1]
    count = emu.count("customers")
    emu.stats.reset()
    requests = [
        {"method": "POST", "id": "a", "url": f"companies({BC_COMPANY_ID})/customers",
         "headers": {"Content-Type": "application/json"}, "body": {"displayName": "Rolled back"}},
        {"method": "PATCH", "id": "b", "url": f"companies({BC_COMPANY_ID})/customers({rec['id']})",
         "headers": {"Content-Type": "application/json", "If-Match": "*"}, "body": {"city": "Changed"}},
        {"method": "DELETE", "id": "c", "url": f"companies({BC_COMPANY_ID})/customers({emu.all('customers')[2]['id']})",
         "headers": {"If-Match": "*"}},
        {"method": "PATCH", "id": "d", "url": f"companies({BC_COMPANY_ID})/customers({rec['id']})",
         "headers": {"Content-Type": "application/json", "If-Match": "*"}, "body": {"blocked": "Invalid Type"}},
    ]
    resp = client.post(f"{emu.base_url}/$batch", json={"requests": requests}, headers={"Isolation": "snapshot"})
    assert [r["status"] for r in resp.json()["responses"]] == [201, 200, 204, 400]
    assert resp.json()["responses"][2]["headers"] == {}
    assert emu.count("customers") == count
    assert emu.get("customers", rec["id"]) == rec  # same values, same etag
    assert emu.stats.writes == 0
    # the number series was rolled back too, and the same batch without the failing part commits
    resp = client.post(f"{emu.base_url}/$batch", json={"requests": requests[:3]}, headers={"Isolation": "snapshot"})
    assert [r["status"] for r in resp.json()["responses"]] == [201, 200, 204]
    assert resp.json()["responses"][0]["body"]["number"] == "C00510"
    assert emu.get("customers", rec["id"])["city"] == "Changed" and emu.count("customers") == count
    assert emu.stats.writes == 3


def test_batch_limits(bc):
    emu, client = bc
    too_many = {"requests": [{"method": "GET", "id": str(i), "url": f"companies({BC_COMPANY_ID})/currencies"}
                             for i in range(101)]}
    assert_error(client.post(f"{emu.base_url}/$batch", json=too_many), 400, "BadRequest",
                 re.compile("maximum number of '100' operations"))
    assert_error(client.post(f"{emu.base_url}/$batch", json={"nope": []}), 400, "BadRequest")
    nested = {"requests": [{"method": "POST", "id": "n", "url": "$batch", "body": {"requests": []}}]}
    assert client.post(f"{emu.base_url}/$batch", json=nested).json()["responses"][0]["status"] == 400
    ok = {"requests": too_many["requests"][:100]}
    assert client.post(f"{emu.base_url}/$batch", json=ok).status_code == 200


# -- limits, faults ---------------------------------------------------------------------------------------------------
def test_429_from_the_sliding_window_with_bc_body():
    with BCEmulator(BC_COMPANY_ID, seed=False, rate_limit=RateLimit(max_requests=3, window_seconds=60,
                                                                    queue_concurrent=True)) as emu, \
            _client(emu) as client:
        assert [client.get("currencies").status_code for _ in range(3)] == [200, 200, 200]
        resp = client.get("currencies")
        assert_error(resp, 429, "Application_TooManyRequests", re.compile(r"^Too many requests reached\."))
        assert float(resp.headers["Retry-After"]) > 0
        assert emu.stats.throttled == 1


def test_batch_parts_count_against_the_window():
    with BCEmulator(BC_COMPANY_ID, seed=False, rate_limit=RateLimit(max_requests=4, window_seconds=60)) as emu, \
            _client(emu) as client:
        parts = [{"method": "GET", "id": str(i), "url": f"companies({BC_COMPANY_ID})/currencies"} for i in range(5)]
        resp = client.post(f"{emu.base_url}/$batch", json={"requests": parts})
        assert_error(resp, 429, "Application_TooManyRequests")
        small = client.post(f"{emu.base_url}/$batch", json={"requests": parts[:3]})
        assert small.status_code == 200 and emu.stats.operations == 5 + 3


def test_default_rate_limit_queues_concurrent_requests():
    with BCEmulator(BC_COMPANY_ID, seed=False) as emu:
        assert emu.rate_limit.queue_concurrent is True


def test_injected_503_has_a_bc_body_and_retry_after(bc):
    emu, client = bc
    emu.inject("status", status=503, retry_after=2)
    resp = client.get("customers")
    assert_error(resp, 503, "Internal_ServiceUnavailable")
    assert resp.headers["Retry-After"] == "2"
    assert client.get("customers").status_code == 200


# -- direct data API ------------------------------------------------------------------------------------------------
def test_direct_api_shares_the_rules_of_the_http_api(bc):
    emu, client = bc
    with pytest.raises(BCError) as err:
        emu.create("customers", {"city": "No name"})
    assert (err.value.status, err.value.code) == (400, "Application_DialogException")
    with pytest.raises(BCError) as err:
        emu.create("customers", {"displayName": "A", "balanceDue": 1})
    assert err.value.code == "BadRequest_InvalidOperation"
    rec = emu.create("customers", {"displayName": "Direct", "currencyCode": "GBP"})
    assert list(rec) == REAL_CUSTOMER_KEYS[1:] and rec["currencyId"] == emu.get_by_key("currencies", "GBP")["id"]
    over_http = client.get(f"customers({rec['id']})").json()
    assert {k: v for k, v in over_http.items() if k != "@odata.context"} == rec
    edited = emu.update("customers", rec["id"], {"city": "Leeds"})
    assert edited["@odata.etag"] != rec["@odata.etag"]
    assert edited["lastModifiedDateTime"] > rec["lastModifiedDateTime"]
    copy = emu.get("customers", rec["id"])
    copy["city"] = "mutated"
    assert emu.get("customers", rec["id"])["city"] == "Leeds"
    emu.delete("customers", rec["id"])
    assert emu.get("customers", rec["id"]) is None
    with pytest.raises(BCError) as err:
        emu.update("customers", rec["id"], {"city": "x"})
    assert err.value.status == 404
    with pytest.raises(KeyError):
        emu.all("salespeople")


def test_seed_is_realistic_and_deterministic():
    frozen = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
    a = BCEmulator(BC_COMPANY_ID, clock=lambda: frozen)
    b = BCEmulator(BC_COMPANY_ID, clock=lambda: frozen)
    for entity_set in ("customers", "vendors", "contacts", "items", "currencies", "salespeoplePurchasers",
                       "unitsOfMeasure", "paymentTerms", "shipmentMethods"):
        assert a.all(entity_set) == b.all(entity_set), entity_set
    customers = a.all("customers")
    assert sorted(c["displayName"] for c in customers) == sorted(BC_CUSTOMER_NAMES)
    assert len({c["city"] for c in customers}) >= 5
    assert any(c["phoneNumber"] == "" for c in customers) and any(c["email"] == "" for c in customers)
    assert sorted(c["blocked"] for c in customers if c["blocked"] != "_x0020_") == ["All", "Invoice"]
    assert {c["currencyCode"] for c in customers} == {"USD", "EUR", "GBP", "CAD"}
    assert {c["code"] for c in a.all("currencies")} == {"EUR", "GBP", "CAD"}  # LCY (USD) is not a currency row
    assert {"PCS", "BOX", "HOUR"} <= {u["code"] for u in a.all("unitsOfMeasure")}
    assert {"14 DAYS", "1M(8D)", "CM"} <= {t["code"] for t in a.all("paymentTerms")}
    assert len(a.all("vendors")) == 10 and len(a.all("items")) == 15 and len(a.all("salespeoplePurchasers")) == 5
    persons = [c for c in a.all("contacts") if c["type"] == "Person"]
    assert len(persons) == 30
    assert max(c["lastModifiedDateTime"] for c in customers) < "2025-06-01T12:00:00.000Z"


def test_bulk_create_then_page_through_thousands(bc):
    emu, client = bc
    for i in range(3000):
        emu.create("customers", {"displayName": f"Bulk {i}"})
    assert emu.count("customers") == 3050
    rows = page_all(client, "customers", 1000, params={"$select": "id"})
    assert len({r["id"] for r in rows}) == 3050
