"""The Dataverse Web API emulator through real HTTP on loopback (httpx), against the reference's documented and
captured payloads (reference/samples, copied below where a test compares with them)."""
from __future__ import annotations

import json
import re
import threading
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from emulators import seed_data
from emulators.dataverse import DataverseEmulator, DataverseError
from emulators.dataverse_batch import ChangesetResponse, PartResponse, parse_batch_response
from emulators.dataverse_webhook import (build_remote_execution_context, encode_body, entity_reference,
                                         webhook_headers, webhook_request)
from emulators.server import DEFAULT_TOKEN, RateLimit

AUTH = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}
GUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# samples/dataverse_error_404_upsert_ifmatch.json, _412_concurrency.json, _412_duplicate_ifnonematch.json
# (powerapps-docs perform-conditional-operations-using-web-api.md): messages verbatim. The docs show "code": "";
# the emulator fills the hex code like current live responses (apis.md Part F).
SAMPLE_404 = "account With Id = {id} Does Not Exist"
SAMPLE_412_VERSION = "The version of the existing record doesn't match the RowVersion property provided."
SAMPLE_412_DUPLICATE = "A record with matching key values already exists."
QUOTED_GUID = ("A binary operator with incompatible types was detected. Found operand types 'Edm.Guid' and "
               "'Edm.String' for operator kind 'Equal'.")

# samples/dataverse_batch_request.txt (execute-batch-operations-using-web-api.md), verbatim including the doc's
# 'POST[Organization URI]' without a space and its malformed GUID (substituted by the test).
SAMPLE_BATCH_REQUEST = """POST[Organization URI]/api/data/v9.1/$batch HTTP/1.1
Content-Type: multipart/mixed;boundary=batch_AAA123
Accept: application/json
OData-MaxVersion: 4.0
OData-Version: 4.0

--batch_AAA123
Content-Type: multipart/mixed;boundary=changeset_BBB456

--changeset_BBB456
Content-Type: application/http
Content-Transfer-Encoding:binary
Content-ID: 1

POST[Organization URI]/api/data/v9.1/tasks HTTP/1.1
Content-Type: application/json;type=entry

{"subject":"Task 1 in batch","regardingobjectid_account_task@odata.bind":"[Organization URI]/api/data/v9.1/accounts(00000000-0000-0000-000000000001)"}
--changeset_BBB456
Content-Type: application/http
Content-Transfer-Encoding:binary
Content-ID: 2

POST[Organization URI]/api/data/v9.1/tasks HTTP/1.1
Content-Type: application/json;type=entry

{"subject":"Task 2 in batch","regardingobjectid_account_task@odata.bind":"[Organization URI]/api/data/v9.1/accounts(00000000-0000-0000-000000000001)"}
--changeset_BBB456--

--batch_AAA123
Content-Type: application/http
Content-Transfer-Encoding:binary

GET[Organization URI]/api/data/v9.1/accounts(00000000-0000-0000-000000000001)/Account_Tasks?$select=subject HTTP/1.1
Accept: application/json

--batch_AAA123--
"""

# Top-level keys of samples/dataverse_webhook_create_account.json (real capture, 2024) - alphabetical.
WEBHOOK_TOP_KEYS = [
    "BusinessUnitId", "CorrelationId", "Depth", "InitiatingUserAgent", "InitiatingUserAzureActiveDirectoryObjectId",
    "InitiatingUserId", "InputParameters", "IsExecutingOffline", "IsInTransaction", "IsOfflinePlayback",
    "IsolationMode", "MessageName", "Mode", "OperationCreatedOn", "OperationId", "OrganizationId", "OrganizationName",
    "OutputParameters", "OwningExtension", "ParentContext", "PostEntityImages", "PreEntityImages", "PrimaryEntityId",
    "PrimaryEntityName", "RequestId", "SecondaryEntityName", "SharedVariables", "Stage",
    "UserAzureActiveDirectoryObjectId", "UserId"]
# samples/dataverse_webhook_update_contact.json (use-webhooks.md, 2017) lacks the three newer keys.
WEBHOOK_NEWER_KEYS = {"InitiatingUserAgent", "InitiatingUserAzureActiveDirectoryObjectId",
                      "UserAzureActiveDirectoryObjectId"}
ENTITY_KEYS = ["__type", "Attributes", "EntityState", "FormattedValues", "Id", "KeyAttributes", "LogicalName",
               "RelatedEntities", "RowVersion"]
# Attribute values of samples/dataverse_webhook_create_account.json, verbatim.
SAMPLE_OWNERID = {"__type": "EntityReference:http://schemas.microsoft.com/xrm/2011/Contracts",
                  "Id": "3570e963-e69c-ef11-8a6b-000d3a318589", "KeyAttributes": [], "LogicalName": "systemuser",
                  "Name": None, "RowVersion": None}
SAMPLE_STATECODE = {"__type": "OptionSetValue:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": 0}
SAMPLE_OWNING_EXTENSION = {"Id": "a89a1ed8-a79d-ef11-8a69-000d3a30b0c1", "KeyAttributes": [],
                           "LogicalName": "sdkmessageprocessingstep", "Name": "webhook.site test: Create of account",
                           "RowVersion": None}


class Clock:
    """A controllable clock for modifiedon checks."""

    def __init__(self):
        self.value = datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=timezone.utc)

    def __call__(self):
        return self.value

    def tick(self, seconds: float = 5):
        self.value += timedelta(seconds=seconds)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def emu(clock):
    with DataverseEmulator(clock=clock) as e:
        yield e


@pytest.fixture
def api(emu):
    with httpx.Client(base_url=emu.api_root, headers=AUTH, timeout=10) as client:
        yield client


def error_of(resp: httpx.Response) -> tuple[str, str]:
    body = resp.json()
    assert set(body) == {"error"}
    return body["error"]["code"], body["error"]["message"]


def first_account(emu) -> dict:
    return emu.all("accounts")[0]


# --- auth, faults, throttling -------------------------------------------------------------------------------
def test_requests_without_or_with_a_wrong_bearer_are_401(emu):
    with httpx.Client(base_url=emu.api_root) as c:
        r = c.get("accounts")
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer authorization_uri=")
        assert c.get("accounts", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("accounts", headers=AUTH).status_code == 200


def test_injected_faults_answer_with_dataverse_error_bodies(emu, api):
    emu.inject("status", status=503, times=1)
    r = api.get("accounts")
    assert r.status_code == 503 and error_of(r)[0] == "0x80040216"
    emu.inject("status", status=429, retry_after=2, times=1)
    r = api.get("accounts")
    assert r.status_code == 429 and r.headers["Retry-After"] == "2" and error_of(r)[0] == "0x80072322"


def test_request_window_throttling_answers_429_with_retry_after(clock):
    with DataverseEmulator(seed=False, clock=clock, rate_limit=RateLimit(max_requests=2, window_seconds=300)) as emu:
        with httpx.Client(base_url=emu.api_root, headers=AUTH) as c:
            assert c.get("accounts").status_code == 200 and c.get("accounts").status_code == 200
            r = c.get("accounts")
            assert r.status_code == 429 and float(r.headers["Retry-After"]) > 0
            # apis.md A14: "Number of requests exceeded the limit of 6000 over time window of 300 seconds."
            assert error_of(r) == ("0x80072322", "Number of requests exceeded the limit of 2 over time window of "
                                                 "300 seconds.")
            assert emu.stats.throttled == 1


def test_excess_concurrency_is_refused_at_once_with_0x80072326():
    with DataverseEmulator(seed=False, rate_limit=RateLimit(max_concurrent=1), latency=0.5) as emu:
        results: list[httpx.Response] = []
        clients = [httpx.Client(base_url=emu.api_root, headers=AUTH) for _ in range(3)]
        start = threading.Barrier(3)

        def call(c):
            start.wait()
            results.append(c.get("accounts"))

        threads = [threading.Thread(target=call, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for c in clients:
            c.close()
        statuses = sorted(r.status_code for r in results)
        assert statuses[0] == 200 and 429 in statuses
        refused = next(r for r in results if r.status_code == 429)
        assert error_of(refused) == ("0x80072326", "Number of concurrent requests exceeded the limit of 1.")
        assert "Retry-After" in refused.headers


def test_batch_parts_count_as_operations_against_the_window():
    with DataverseEmulator(seed=False, rate_limit=RateLimit(max_requests=4)) as emu:
        body, ctype = _batch([("GET", "accounts?$select=name", None)] * 5)
        with httpx.Client(base_url=emu.api_root, headers=AUTH) as c:
            r = c.post("$batch", content=body, headers={"Content-Type": ctype})
        assert r.status_code == 429 and error_of(r)[0] == "0x80072322"


# --- create / read ------------------------------------------------------------------------------------------
def test_post_answers_204_with_odata_entityid_and_the_row_reads_back(emu, api, clock):
    before = emu.version
    r = api.post("accounts", json={"name": "Fourth Coffee Test", "telephone1": "555-0100"})
    assert r.status_code == 204 and r.content == b""
    m = re.fullmatch(re.escape(emu.api_root) + r"accounts\(([0-9a-f-]{36})\)", r.headers["OData-EntityId"])
    assert m
    row_id = m.group(1)
    got = api.get(f"accounts({row_id})")
    assert got.status_code == 200
    row = got.json()
    assert row["@odata.context"] == f"{emu.api_root}$metadata#accounts/$entity"
    assert got.headers["ETag"] == row["@odata.etag"] == f'W/"{row["versionnumber"]}"'
    assert row["versionnumber"] > before
    assert row["modifiedon"] == row["createdon"] == "2026-03-02T09:30:15Z"  # UTC, whole seconds
    assert (row["statecode"], row["statuscode"]) == (0, 1)
    assert row["_ownerid_value"] == emu.APP_USER_ID and row["_modifiedby_value"] == emu.APP_USER_ID
    assert row["_transactioncurrencyid_value"] == emu.BASE_CURRENCY_ID
    assert emu.stats.writes == 1


def test_post_with_return_representation_is_201_with_body(emu, api):
    # shape of samples/dataverse_account_create_return_representation.json
    r = api.post("accounts", params={"$select": "name,revenue,createdon"},
                 json={"name": "Sample Account", "revenue": 5000000, "description": "desc"},
                 headers={"Prefer": "return=representation"})
    assert r.status_code == 201 and "OData-EntityId" not in r.headers
    assert r.headers["Preference-Applied"] == "return=representation"
    body = r.json()
    assert list(body)[:2] == ["@odata.context", "@odata.etag"]
    assert body["@odata.context"] == f"{emu.api_root}$metadata#accounts(name,revenue,createdon)/$entity"
    assert set(body) == {"@odata.context", "@odata.etag", "name", "revenue", "createdon", "accountid",
                         "_transactioncurrencyid_value"}  # money adds the currency lookup
    assert GUID_RE.match(body["accountid"])


def test_get_with_select_has_the_documented_shape(emu, api):
    # samples/dataverse_account_retrieve.json: context, etag, selected, PK always, money adds the currency
    acc = first_account(emu)
    r = api.get(f"accounts({acc['accountid']})", params={"$select": "name,revenue"})
    body = r.json()
    assert body["@odata.context"] == f"{emu.api_root}$metadata#accounts(name,revenue)/$entity"
    assert list(body) == ["@odata.context", "@odata.etag", "name", "revenue", "accountid",
                          "_transactioncurrencyid_value"]
    r2 = api.get(f"accounts({acc['accountid'].upper()})", headers={"If-None-Match": body["@odata.etag"]})
    assert r2.status_code == 304
    r3 = api.get(f"accounts({acc['accountid']})", params={"$select": "nosuchcolumn"})
    assert r3.status_code == 400 and error_of(r3) == (
        "0x80060888", "Could not find a property named 'nosuchcolumn' on type 'Microsoft.Dynamics.CRM.account'.")


def test_chosen_primary_key_and_duplicate(emu, api):
    chosen = str(uuid.uuid4())
    assert api.post("accounts", json={"accountid": chosen, "name": "Chosen"}).status_code == 204
    assert emu.get("accounts", chosen)["name"] == "Chosen"
    r = api.post("accounts", json={"accountid": chosen, "name": "Again"})
    assert r.status_code == 412 and error_of(r) == ("0x80040237", SAMPLE_412_DUPLICATE)
    assert emu.find("accounts", name="Again") == []


@pytest.mark.parametrize("body, status, code, fragment", [
    ({"name": "x", "nosuch": 1}, 400, "0x80048d19", "The property 'nosuch' does not exist on type "
                                                     "'Microsoft.Dynamics.CRM.account'"),
    ({"name": "x", "customertypecode": 99}, 400, "0x8004431A", "outside the valid range"),
    ({"name": "x" * 161}, 400, "0x80044331", "exceeded the maximum allowed length of '160'"),
    ({"telephone1": "555"}, 400, "0x80040203", "required column 'name'"),
    ({"name": 5}, 400, "0x80048d19", "Cannot convert the literal '5' to the expected type 'Edm.String'"),
    ({"name": "x", "creditlimit": "lots"}, 400, "0x80048d19", "'Edm.Decimal'"),
    ({"name": "x", "_primarycontactid_value": str(uuid.uuid4())}, 400, "0x80060888", "Navigation properties"),
    ({"name": "x", "primarycontactid": str(uuid.uuid4())}, 400, "0x80048d19", "navigation property"),
    ({"name": "x", "nosuch@odata.bind": "/contacts(00000000-0000-0000-0000-000000000001)"}, 400, "0x80048d19",
     "undeclared property 'nosuch'"),
])
def test_invalid_payloads_are_refused_and_nothing_is_written(emu, api, body, status, code, fragment):
    before = len(emu.all("accounts"))
    r = api.post("accounts", json=body)
    assert r.status_code == status
    got_code, message = error_of(r)
    assert got_code == code and fragment in message
    assert len(emu.all("accounts")) == before and emu.stats.writes == 0


def test_contact_fullname_and_systemuser_fullname_are_computed(emu, api):
    r = api.post("contacts", json={"firstname": "Ada", "lastname": "Lovelace"},
                 headers={"Prefer": "return=representation"})
    assert r.json()["fullname"] == "Ada Lovelace"
    cid = r.json()["contactid"]
    api.patch(f"contacts({cid})", json={"lastname": "King"})
    assert emu.get("contacts", cid)["fullname"] == "Ada King"
    assert emu.get("systemusers", emu.PERSON_USER_ID)["fullname"] == "Avery Howard"


# --- update / upsert / conditional --------------------------------------------------------------------------
def test_patch_changes_only_sent_columns_and_bumps_version_and_modifiedon(emu, api, clock):
    acc = first_account(emu)
    clock.tick(61)
    r = api.patch(f"accounts({acc['accountid']})", json={"telephone1": "+1 555 0199"})
    assert r.status_code == 204 and r.headers["OData-EntityId"].endswith(f"accounts({acc['accountid']})")
    after = emu.get("accounts", acc["accountid"])
    assert after["telephone1"] == "+1 555 0199"
    assert after["versionnumber"] > acc["versionnumber"] and after["modifiedon"] == "2026-03-02T09:31:16Z"
    changed = {k for k in after if after[k] != acc[k]}
    assert changed == {"telephone1", "versionnumber", "modifiedon", "@odata.etag", "_modifiedby_value"}


def test_patch_is_an_upsert_without_if_match(emu, api):
    new_id = str(uuid.uuid4())
    r = api.patch(f"accounts({new_id})", json={"name": "Upserted"}, headers={"Prefer": "return=representation"})
    assert r.status_code == 201 and r.json()["accountid"] == new_id
    r = api.patch(f"accounts({new_id})", json={"name": "Upserted 2"}, headers={"Prefer": "return=representation"})
    assert r.status_code == 200 and r.json()["name"] == "Upserted 2" and r.headers["ETag"] == r.json()["@odata.etag"]


def test_if_match_star_refuses_to_create(emu, api):
    ghost = "00000000-0000-0000-0000-000000000001"
    r = api.patch(f"accounts({ghost})", json={"name": "x"}, headers={"If-Match": "*"})
    assert r.status_code == 404 and error_of(r) == ("0x80040217", SAMPLE_404.format(id=ghost))
    assert emu.get("accounts", ghost) is None
    acc = first_account(emu)
    assert api.patch(f"accounts({acc['accountid']})", json={"name": "Star"}, headers={"If-Match": "*"}
                     ).status_code == 204


def test_if_none_match_star_refuses_to_update(emu, api):
    acc = first_account(emu)
    r = api.patch(f"accounts({acc['accountid']})", json={"name": "x"}, headers={"If-None-Match": "*"})
    assert r.status_code == 412 and error_of(r) == ("0x80040237", SAMPLE_412_DUPLICATE)
    assert emu.get("accounts", acc["accountid"])["name"] == acc["name"]
    fresh = str(uuid.uuid4())
    assert api.patch(f"accounts({fresh})", json={"name": "Create only"}, headers={"If-None-Match": "*"}
                     ).status_code == 204


def test_stale_if_match_is_412_with_the_rowversion_message(emu, api):
    acc = first_account(emu)
    etag = acc["@odata.etag"]
    assert api.patch(f"accounts({acc['accountid']})", json={"name": "First"}, headers={"If-Match": etag}
                     ).status_code == 204
    r = api.patch(f"accounts({acc['accountid']})", json={"name": "Second"}, headers={"If-Match": etag})
    assert r.status_code == 412 and error_of(r) == ("0x80060882", SAMPLE_412_VERSION)
    r = api.delete(f"accounts({acc['accountid']})", headers={"If-Match": etag})
    assert r.status_code == 412 and emu.get("accounts", acc["accountid"])["name"] == "First"


def test_delete_then_404_with_the_documented_message(emu, api):
    acc = first_account(emu)
    assert api.delete(f"accounts({acc['accountid']})").status_code == 204
    r = api.delete(f"accounts({acc['accountid']})")
    assert r.status_code == 404 and error_of(r) == ("0x80040217", SAMPLE_404.format(id=acc["accountid"]))
    r = api.get(f"accounts({acc['accountid']})")
    assert r.status_code == 404


def test_deleting_an_account_deletes_its_contacts_and_clears_other_lookups(emu, api):
    acc = emu.create("accounts", {"name": "Parent"})
    child = emu.create("contacts", {"lastname": "Child",
                                    "parentcustomerid_account@odata.bind": f"/accounts({acc['accountid']})"})
    other = emu.create("accounts", {"name": "Other",
                                    "parentaccountid@odata.bind": f"/accounts({acc['accountid']})"})
    assert api.delete(f"accounts({acc['accountid']})").status_code == 204
    assert emu.get("contacts", child["contactid"]) is None
    assert emu.get("accounts", other["accountid"])["_parentaccountid_value"] is None


# --- lookups ------------------------------------------------------------------------------------------------
def test_polymorphic_bind_reads_back_with_annotations(emu, api):
    acc = first_account(emu)
    parent_contact = emu.all("contacts")[0]
    r = api.post("contacts", json={"lastname": "Poly", "parentcustomerid_account@odata.bind":
                                   f"/accounts({acc['accountid']})"}, headers={"Prefer": "return=representation"})
    cid = r.json()["contactid"]
    assert r.json()["_parentcustomerid_value"] == acc["accountid"]
    # samples/dataverse_contact_retrieve_annotations.json: FormattedValue, associatednavigationproperty,
    # lookuplogicalname then the value
    got = api.get(f"contacts({cid})",
                  params={"$select": "fullname,_parentcustomerid_value,_transactioncurrencyid_value"},
                  headers={"Prefer": 'odata.include-annotations="*"'})
    body = got.json()
    assert got.headers["Preference-Applied"] == 'odata.include-annotations="*"'
    keys = [k for k in body if k.startswith("_transactioncurrencyid_value")]
    assert keys == ["_transactioncurrencyid_value@OData.Community.Display.V1.FormattedValue",
                    "_transactioncurrencyid_value@Microsoft.Dynamics.CRM.associatednavigationproperty",
                    "_transactioncurrencyid_value@Microsoft.Dynamics.CRM.lookuplogicalname",
                    "_transactioncurrencyid_value"]
    assert body["_transactioncurrencyid_value@OData.Community.Display.V1.FormattedValue"] == "US Dollar"
    assert body["_parentcustomerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "account"
    assert body["_parentcustomerid_value@Microsoft.Dynamics.CRM.associatednavigationproperty"] == \
        "parentcustomerid_account"
    assert body["_parentcustomerid_value@OData.Community.Display.V1.FormattedValue"] == acc["name"]
    # rebind to a contact (absolute URL), then clear
    api.patch(f"contacts({cid})", json={"parentcustomerid_contact@odata.bind":
                                        f"{emu.api_root}contacts({parent_contact['contactid']})"})
    body = api.get(f"contacts({cid})", params={"$select": "_parentcustomerid_value"},
                   headers={"Prefer": "odata.include-annotations=\"Microsoft.Dynamics.CRM.lookuplogicalname\""}).json()
    assert body["_parentcustomerid_value"] == parent_contact["contactid"]
    assert body["_parentcustomerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "contact"
    assert not any("FormattedValue" in k for k in body)
    api.patch(f"contacts({cid})", json={"parentcustomerid_contact@odata.bind": None})
    assert emu.get("contacts", cid)["_parentcustomerid_value"] is None


def test_owner_binds_to_users_and_teams(emu, api):
    acc = first_account(emu)
    api.patch(f"accounts({acc['accountid']})", json={"ownerid@odata.bind": f"/teams({emu.DEFAULT_TEAM_ID})"})
    row = api.get(f"accounts({acc['accountid']})", params={"$select": "_ownerid_value,_owningteam_value"},
                  headers={"Prefer": 'odata.include-annotations="*"'}).json()
    assert row["_ownerid_value"] == emu.DEFAULT_TEAM_ID and row["_owningteam_value"] == emu.DEFAULT_TEAM_ID
    assert row["_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "team"
    api.patch(f"accounts({acc['accountid']})", json={"ownerid@odata.bind": f"/systemusers({emu.PERSON_USER_ID})"})
    assert emu.get("accounts", acc["accountid"])["_ownerid_value"] == emu.PERSON_USER_ID


def test_binding_to_a_missing_or_wrong_row_fails(emu, api):
    ghost = str(uuid.uuid4())
    r = api.post("contacts", json={"lastname": "x", "parentcustomerid_account@odata.bind": f"/accounts({ghost})"})
    assert r.status_code == 404 and error_of(r) == ("0x80040217", f"account With Id = {ghost} Does Not Exist")
    acc = first_account(emu)
    r = api.post("accounts", json={"name": "x", "primarycontactid@odata.bind": f"/accounts({acc['accountid']})"})
    assert r.status_code == 400 and error_of(r)[0] == "0x80048d19"
    assert emu.find("contacts", lastname="x") == [] and emu.find("accounts", name="x") == []


def test_filter_on_lookup_value_with_unquoted_guid(emu, api):
    contacts = [c for c in emu.all("contacts") if c["_parentcustomerid_value"]]
    parent = contacts[0]["_parentcustomerid_value"]
    r = api.get("contacts", params={"$select": "fullname", "$filter": f"_parentcustomerid_value eq {parent}"})
    assert {c["contactid"] for c in r.json()["value"]} == \
        {c["contactid"] for c in contacts if c["_parentcustomerid_value"] == parent}
    r = api.get("contacts", params={"$filter": f"_parentcustomerid_value eq '{parent}'"})
    assert r.status_code == 400 and error_of(r) == ("0x80060888", QUOTED_GUID)


# --- queries ------------------------------------------------------------------------------------------------
def names(resp: httpx.Response) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [r["name"] for r in resp.json()["value"]]


def test_string_comparisons_are_case_insensitive(emu, api):
    variant = next(iter(seed_data.CASE_VARIANTS))  # stored upper-cased in Dataverse
    got = names(api.get("accounts", params={"$select": "name", "$filter": f"name eq '{variant}'"}))
    assert got == [variant.upper()]
    got = names(api.get("accounts", params={"$select": "name",
                                            "$filter": f"contains(name,'{variant.split()[0].lower()}')"}))
    assert variant.upper() in got
    dup = seed_data.DUPLICATE_ACCOUNT_NAME
    assert names(api.get("accounts", params={"$filter": f"name eq '{dup.lower()}'", "$select": "name"})) == [dup, dup]


def test_quote_escaping_in_literals_and_keys(emu, api):
    emu.create("accounts", {"name": "O'Brien & Sons", "accountnumber": "A'1"})
    got = names(api.get("accounts", params={"$select": "name", "$filter": "name eq 'o''brien & sons'"}))
    assert got == ["O'Brien & Sons"]
    r = api.get("accounts(accountnumber='A''1')", params={"$select": "name"})
    assert r.status_code == 200 and r.json()["name"] == "O'Brien & Sons"


def test_filters_with_dates_numbers_null_not_in_and_grouping(emu, api, clock):
    clock.tick(3600)
    touched = emu.update("accounts", first_account(emu)["accountid"], {"fax": "123"})
    q = lambda f: names(api.get("accounts", params={"$select": "name", "$filter": f}))  # noqa: E731
    assert q("modifiedon ge 2026-03-02T10:00:00Z") == [touched["name"]]
    assert q("modifiedon gt 2026-03-02T11:00:00%2B01:00".replace("%2B", "+")) == [touched["name"]]
    assert q("fax ne null") == [touched["name"]] and touched["name"] not in q("fax eq null")
    vendors = q("customertypecode eq 11")
    assert vendors and set(vendors) == {a["name"] for a in emu.all("accounts") if a["customertypecode"] == 11}
    assert set(q("not (customertypecode eq 11) and statecode eq 0")) == \
        {a["name"] for a in emu.all("accounts") if a["customertypecode"] != 11 and a["statecode"] == 0}
    big = {a["name"] for a in emu.all("accounts") if a["creditlimit"] >= 20000}
    assert set(q("creditlimit ge 20000")) == big and big
    numbers = ["DV-1001", "DV-1003"]
    got = q('Microsoft.Dynamics.CRM.In(PropertyName=\'accountnumber\',PropertyValues=["dv-1001","DV-1003"])')
    assert sorted(got) == sorted(a["name"] for a in emu.all("accounts") if a["accountnumber"] in numbers)
    both = q("accountnumber eq 'DV-1001' or (accountnumber eq 'DV-1002' and statecode eq 0)")
    assert len(both) == 2
    assert q("accountnumber eq 'DV-1001' or accountnumber eq 'DV-1002' and statecode eq 1") == \
        q("accountnumber eq 'DV-1001'")  # 'and' binds tighter than 'or'


@pytest.mark.parametrize("expr", [
    "name eq 'O'Brien'", "name eq 'x' or", "name eq 'x''", "name eq 'x') or (1 eq 1", "name eq 'x' 1 eq 1",
    "name eq x", "name = 'x'", "name eq 'x';drop table accounts", "name eq 'x' --", "1 eq 1", "name",
    "name eq 'x' OR name ne 'x'", "nosuch eq 'x'", "tolower(name) eq 'x'", "name eq 'x' and (", "name eq",
    "creditlimit eq 'x'", "statecode eq true", "name eq 5", "contains(creditlimit,'1')", "name eq \"x\"",
    "accountid eq guid'00000000-0000-0000-0000-000000000001'", "primarycontactid/fullname eq 'x'",
    "Microsoft.Dynamics.CRM.In(PropertyName='accountnumber',PropertyValues=['a'])", "name eq 'x' ~",
    "name add 'x' eq 'y'", "",
])
def test_malformed_or_hostile_filters_are_400_never_wider(emu, api, expr):
    r = api.get("accounts", params={"$select": "name", "$filter": expr})
    assert r.status_code == 400, (expr, r.text)
    assert error_of(r)[0] == "0x80060888"


def test_unknown_property_in_filter_has_the_service_message(api):
    r = api.get("contacts", params={"$filter": "xyz eq 'a'"})
    assert error_of(r) == ("0x80060888", "Could not find a property named 'xyz' on type "
                                         "'Microsoft.Dynamics.CRM.contact'.")


def test_orderby_top_and_count(emu, api):
    r = api.get("accounts", params={"$select": "name", "$orderby": "name desc", "$top": "3", "$count": "true"})
    body = r.json()
    all_names = sorted((a["name"] for a in emu.all("accounts")), key=str.casefold, reverse=True)
    assert [v["name"] for v in body["value"]] == all_names[:3]
    assert body["@odata.count"] == len(all_names) and "@odata.nextLink" not in body
    assert list(body)[:3] == ["@odata.context", "@odata.count", "value"]
    r = api.get("accounts", params={"$top": "3"}, headers={"Prefer": "odata.maxpagesize=2"})
    assert len(r.json()["value"]) == 3 and "@odata.nextLink" not in r.json()
    assert api.get("accounts/$count").text == str(len(all_names))
    assert api.get("accounts", params={"$skip": "2"}).status_code == 400


# --- paging -------------------------------------------------------------------------------------------------
def page_through(api, first_params: dict, size: int, between=None) -> list[list[dict]]:
    headers = {"Prefer": f"odata.maxpagesize={size}"}
    r = api.get("accounts", params=first_params, headers=headers)
    pages = []
    while True:
        assert r.status_code == 200, r.text
        assert r.headers["Preference-Applied"] == f"odata.maxpagesize={size}"
        body = r.json()
        pages.append(body["value"])
        link = body.get("@odata.nextLink")
        if not link:
            return pages
        assert link.startswith(emu_origin(api)) and "$skiptoken=" in link
        if between:
            between(len(pages))
        r = api.get(link, headers=headers)


def emu_origin(api) -> str:
    return str(api.base_url).split("/api/")[0]


def test_paging_with_skiptoken_and_concurrent_inserts_is_stable(emu, api):
    original = {a["accountid"] for a in emu.all("accounts")}
    inserted: list[str] = []

    def insert(page_no):
        for _ in range(3):  # ids land both before and after the cursor
            inserted.append(emu.create("accounts", {"name": f"Late {page_no}"})["accountid"])

    pages = page_through(api, {"$select": "name"}, 7, between=insert)
    seen = [row["accountid"] for page in pages for row in page]
    assert len(seen) == len(set(seen)), "no row twice"
    assert original <= set(seen), "every row present from the start is returned"
    assert set(seen) <= original | set(inserted)
    assert all(len(p) <= 7 for p in pages)


def test_paging_by_orderby_is_stable_too(emu, api):
    pages = page_through(api, {"$select": "name,accountnumber", "$orderby": "name asc"}, 6)
    seen = [row for page in pages for row in page]
    assert [r["accountid"] for r in seen] == [a["accountid"] for a in sorted(
        emu.all("accounts"), key=lambda a: (a["name"].casefold(), a["accountid"]))]


def test_default_and_maximum_page_size_is_5000(clock):
    with DataverseEmulator(seed=False, clock=clock) as emu:
        for i in range(5003):
            emu.create("contacts", {"lastname": f"Bulk {i}"})
        with httpx.Client(base_url=emu.api_root, headers=AUTH, timeout=30) as c:
            first = c.get("contacts", params={"$select": "lastname"}, headers={"Prefer": "odata.maxpagesize=9000"})
            body = first.json()
            assert len(body["value"]) == 5000 and body["@odata.nextLink"]
            second = c.get(body["@odata.nextLink"]).json()
            assert len(second["value"]) == 3 and "@odata.nextLink" not in second


def test_a_tampered_skiptoken_is_400(api):
    r = api.get("accounts", params={"$skiptoken": "<cookie pagenumber=\"2\" pagingcookie=\"zzz\" />"})
    assert r.status_code == 400


# --- alternate keys -----------------------------------------------------------------------------------------
def test_alternate_key_get_upsert_delete_and_duplicate(emu, api):
    r = api.get("accounts(accountnumber='DV-1001')", params={"$select": "name,accountnumber"})
    assert r.status_code == 200 and r.json()["accountnumber"] == "DV-1001"
    before = len(emu.all("accounts"))
    for _ in range(2):  # idempotent upsert by key
        r = api.patch("accounts(accountnumber='K-1')", json={"name": "Keyed"})
        assert r.status_code == 204
    assert len(emu.all("accounts")) == before + 1
    keyed = emu.find("accounts", accountnumber="K-1")
    assert len(keyed) == 1 and keyed[0]["name"] == "Keyed"
    r = api.post("accounts", json={"name": "Dup", "accountnumber": "k-1"})
    assert r.status_code == 412 and error_of(r)[0] == "0x80060892"
    assert api.delete("accounts(accountnumber='K-1')").status_code == 204
    r = api.get("accounts(accountnumber='K-1')")
    assert r.status_code == 404 and error_of(r)[0] == "0x80040217"
    assert api.get("accounts(name='x')").status_code == 400  # not a defined key
    r = api.post("contacts", json={"lastname": "By key", "parentcustomerid_account@odata.bind":
                                   "/accounts(accountnumber='DV-1002')"}, headers={"Prefer": "return=representation"})
    assert r.json()["_parentcustomerid_value"] == emu.find("accounts", accountnumber="DV-1002")[0]["accountid"]


# --- $batch -------------------------------------------------------------------------------------------------
def _batch(parts: list, boundary: str = "batch_T1") -> tuple[bytes, str]:
    """parts: (method, url, body) or a list of those for a changeset."""
    lines: list[str] = []
    for part in parts:
        lines.append(f"--{boundary}")
        if isinstance(part, list):
            cs = f"changeset_{uuid.uuid4().hex[:8]}"
            lines += [f"Content-Type: multipart/mixed; boundary={cs}", ""]
            for n, (method, url, body) in enumerate(part, start=1):
                lines += [f"--{cs}", "Content-Type: application/http", "Content-Transfer-Encoding: binary",
                          f"Content-ID: {n}", "", f"{method} {url} HTTP/1.1", "Content-Type: application/json",
                          "", json.dumps(body) if body is not None else ""]
            lines.append(f"--{cs}--")
        else:
            method, url, body = part
            lines += ["Content-Type: application/http", "Content-Transfer-Encoding: binary", "",
                      f"{method} {url} HTTP/1.1", "Accept: application/json"]
            if body is not None:
                lines += ["Content-Type: application/json", "", json.dumps(body)]
            else:
                lines += ["", ""]
    lines += [f"--{boundary}--", ""]
    return "\r\n".join(lines).encode(), f"multipart/mixed; boundary={boundary}"


def post_batch(emu, api, parts, prefer: str | None = None):
    body, ctype = _batch(parts)
    headers = {"Content-Type": ctype, **({"Prefer": prefer} if prefer else {})}
    r = api.post("$batch", content=body, headers=headers)
    assert r.status_code == 200, r.text
    return parse_batch_response(r.content, r.headers["Content-Type"])


def test_documented_batch_sample_round_trips(emu, api):
    acc = first_account(emu)["accountid"]
    text = SAMPLE_BATCH_REQUEST.replace("[Organization URI]", emu.url).replace(
        "00000000-0000-0000-000000000001", acc)
    head, _, body = text.partition("\n\n")
    ctype = next(line.split(":", 1)[1].strip() for line in head.splitlines() if line.startswith("Content-Type"))
    before_ops = emu.stats.operations
    r = api.post(f"{emu.url}/api/data/v9.1/$batch", content=body.encode(), headers={"Content-Type": ctype})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("multipart/mixed; boundary=batchresponse_")
    assert b"\r\n" in r.content
    parts = parse_batch_response(r.content, r.headers["Content-Type"])
    # shape of samples/dataverse_batch_response.txt: a changeset response of two 204s with Content-ID,
    # Location and OData-EntityId, then the GET's 200 with the two tasks
    assert isinstance(parts[0], ChangesetResponse) and len(parts) == 2
    created = []
    for n, part in enumerate(parts[0].parts, start=1):
        assert part.status == 204 and part.content_id == str(n)
        assert part.headers["OData-Version"] == "4.0"
        assert part.headers["Location"] == part.headers["OData-EntityId"]
        assert part.headers["Location"].startswith(f"{emu.url}/api/data/v9.1/tasks(")
        created.append(part.headers["Location"].rsplit("(", 1)[1].rstrip(")"))
    get = parts[1]
    assert isinstance(get, PartResponse) and get.status == 200
    listing = json.loads(get.body)
    assert listing["@odata.context"] == f"{emu.url}/api/data/v9.1/$metadata#tasks(subject)"
    assert [(t["subject"], t["activityid"]) for t in listing["value"]] == \
        sorted([("Task 1 in batch", created[0]), ("Task 2 in batch", created[1])], key=lambda x: x[1])
    assert all(set(t) == {"@odata.etag", "subject", "activityid"} for t in listing["value"])
    assert emu.stats.operations - before_ops == 3 and emu.stats.writes == 2


def test_changeset_is_atomic_with_content_id_references(emu, api):
    before = (len(emu.all("accounts")), len(emu.all("contacts")))
    parts = post_batch(emu, api, [[
        ("POST", "/api/data/v9.2/accounts", {"name": "Batch Parent"}),
        ("POST", "/api/data/v9.2/contacts", {"lastname": "Batch Child", "parentcustomerid_account@odata.bind": "$1"}),
        ("POST", "/api/data/v9.2/accounts", {"name": "Broken", "nosuch": 1}),
    ]])
    assert len(parts) == 1 and isinstance(parts[0], PartResponse) and parts[0].status == 400
    assert parts[0].content_id == "3" and json.loads(parts[0].body)["error"]["code"] == "0x80048d19"
    assert (len(emu.all("accounts")), len(emu.all("contacts"))) == before  # rolled back
    assert emu.find("accounts", name="Batch Parent") == [] and emu.stats.writes == 0
    parts = post_batch(emu, api, [[
        ("POST", "/api/data/v9.2/accounts", {"name": "Batch Parent"}),
        ("POST", "/api/data/v9.2/contacts", {"lastname": "Batch Child", "parentcustomerid_account@odata.bind": "$1"}),
        ("PATCH", "$1", {"telephone1": "555"}),
    ]])
    assert [p.status for p in parts[0].parts] == [204, 204, 204]
    parent = emu.find("accounts", name="Batch Parent")[0]
    assert parent["telephone1"] == "555"
    assert emu.find("contacts", lastname="Batch Child")[0]["_parentcustomerid_value"] == parent["accountid"]
    assert emu.stats.writes == 3


def test_batch_stops_at_first_failure_unless_continue_on_error(emu, api):
    ghost = str(uuid.uuid4())
    parts = [("POST", "accounts", {"name": "B1"}), ("DELETE", f"accounts({ghost})", None),
             ("POST", "accounts", {"name": "B2"})]
    out = post_batch(emu, api, parts)
    assert [p.status for p in out] == [204, 404]
    assert emu.find("accounts", name="B2") == []
    out = post_batch(emu, api, parts, prefer="odata.continue-on-error")
    assert [p.status for p in out] == [204, 404, 204] and len(emu.find("accounts", name="B2")) == 1


def test_batch_limits_and_rules(emu, api):
    body, ctype = _batch([("GET", "WhoAmI", None)] * 1001)
    r = api.post("$batch", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 400 and "1000" in error_of(r)[1]
    out = post_batch(emu, api, [[("GET", "accounts", None)]])
    assert out[0].status == 400
    r = api.post("$batch", content=b"garbage", headers={"Content-Type": "multipart/mixed; boundary=x"})
    assert r.status_code == 400
    r = api.post("$batch", content=b"{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 400


# --- change tracking ----------------------------------------------------------------------------------------
def test_track_changes_delta_link_returns_changes_and_deletions(emu, api):
    headers = {"Prefer": "odata.track-changes, odata.maxpagesize=25"}
    r = api.get("accounts", params={"$select": "name,telephone1"}, headers=headers)
    assert r.headers["Preference-Applied"] == "odata.maxpagesize=25,odata.track-changes"
    body = r.json()
    rows = list(body["value"])
    assert "@odata.deltaLink" not in body
    r = api.get(body["@odata.nextLink"], headers=headers)
    body = r.json()
    rows += body["value"]
    assert len(rows) == len(emu.all("accounts"))
    delta_link = body["@odata.deltaLink"]
    assert re.search(r"\$deltatoken=\d+%21\d\d%2F\d\d%2F\d{4}%20\d\d%3A\d\d%3A\d\d$", delta_link)
    changed, gone = rows[0]["accountid"], rows[1]["accountid"]
    emu.update("accounts", changed, {"telephone1": "999"})
    emu.delete("accounts", gone)
    new = emu.create("accounts", {"name": "Delta New"})["accountid"]
    delta = api.get(delta_link, headers={"Prefer": "odata.track-changes"}).json()
    assert delta["@odata.context"] == f"{emu.api_root}$metadata#accounts(name,telephone1)/$delta"
    # samples/dataverse_changetracking_delta.json: changed rows as usual, deleted rows as $deletedEntity
    by_id = {v.get("accountid") or v.get("id"): v for v in delta["value"]}
    assert by_id[changed]["telephone1"] == "999" and set(by_id[changed]) == {"@odata.etag", "name", "telephone1",
                                                                             "accountid"}
    assert by_id[gone] == {"@odata.context": f"{emu.api_root}$metadata#accounts/$deletedEntity", "id": gone,
                           "reason": "deleted"}
    assert by_id[new]["name"] == "Delta New" and len(by_id) == 3
    again = api.get(delta["@odata.deltaLink"]).json()
    assert again["value"] == []
    assert api.get("accounts", params={"$filter": "name eq 'x'"}, headers=headers).status_code == 400


# --- direct data API, seed ----------------------------------------------------------------------------------
def test_direct_api_acts_as_a_person_through_the_same_rules(emu, clock):
    row = emu.create("accounts", {"name": "Direct", "customertypecode": 11})
    assert row["_createdby_value"] == emu.PERSON_USER_ID and row["customertypecode"] == 11
    clock.tick(10)
    updated = emu.update("accounts", row["accountid"], {"name": "Direct 2"})
    assert updated["versionnumber"] > row["versionnumber"] and updated["modifiedon"] > row["modifiedon"]
    assert updated["_modifiedby_value"] == emu.PERSON_USER_ID
    with pytest.raises(DataverseError) as ei:
        emu.update("accounts", row["accountid"], {"customertypecode": 42})
    assert ei.value.code == "0x8004431A"
    emu.delete("accounts", row["accountid"])
    assert emu.get("accounts", row["accountid"]) is None
    with pytest.raises(DataverseError):
        emu.delete("accounts", row["accountid"])


def test_seed_is_deterministic_and_has_the_shared_names():
    a, b = DataverseEmulator(), DataverseEmulator()
    accounts = a.all("accounts")
    assert [x["accountid"] for x in accounts] == [x["accountid"] for x in b.all("accounts")]
    names_ = [x["name"] for x in accounts]
    expected = [seed_data.CASE_VARIANTS.get(n, n) for n in seed_data.DV_ACCOUNT_NAMES]
    assert sorted(names_) == sorted(expected + [seed_data.DUPLICATE_ACCOUNT_NAME])
    assert names_.count(seed_data.DUPLICATE_ACCOUNT_NAME) == 2
    types = [x["customertypecode"] for x in accounts]
    assert types.count(3) > types.count(11) > 0
    contacts = a.all("contacts")
    assert 25 <= len(contacts) <= 35 and sum(1 for c in contacts if c["_parentcustomerid_value"]) >= 20
    products = a.all("products")
    assert len(products) == 10
    unit_group = a.get("uomschedules", a.DEFAULT_UNIT_GROUP_ID)
    assert unit_group["name"] == "Default Unit"
    primary = a.find("uoms", name="Primary Unit")
    assert len(primary) == 1 and primary[0]["isschedulebaseuom"] is True
    assert all(p["_defaultuomid_value"] == primary[0]["uomid"] for p in products)
    assert sorted(c["isocurrencycode"] for c in a.all("transactioncurrencies")) == ["EUR", "GBP", "USD"]
    users = a.all("systemusers")
    assert 5 <= len(users) <= 8 and sum(1 for u in users if u["applicationid"]) == 1
    empty = DataverseEmulator(seed=False)
    assert empty.all("accounts") == [] and len(empty.all("systemusers")) == 2


def test_creating_a_unit_group_creates_its_base_unit(emu, api):
    r = api.post("uomschedules", json={"name": "NAV PCS", "baseuomname": "PCS"},
                 headers={"Prefer": "return=representation"})
    group = r.json()["uomscheduleid"]
    units = api.get("uoms", params={"$filter": f"_uomscheduleid_value eq {group}", "$select": "name,quantity,"
                                    "isschedulebaseuom"}).json()["value"]
    assert [(u["name"], u["quantity"], u["isschedulebaseuom"]) for u in units] == [("PCS", 1, True)]
    r = api.post("products", json={"name": "Widget", "productnumber": "W-1", "defaultuomscheduleid@odata.bind":
                                   f"/uomschedules({group})", "defaultuomid@odata.bind": f"/uoms({units[0]['uomid']})"})
    assert r.status_code == 204
    r = api.post("products", json={"name": "Bad", "productnumber": "W-2", "defaultuomscheduleid@odata.bind":
                                   f"/uomschedules({emu.DEFAULT_UNIT_GROUP_ID})",
                                   "defaultuomid@odata.bind": f"/uoms({units[0]['uomid']})"})
    assert r.status_code == 400


def test_expand_navigation_properties_and_single_property_resources(emu, api):
    acc = first_account(emu)
    contact = emu.create("contacts", {"firstname": "Exp", "lastname": "Anded",
                                      "parentcustomerid_account@odata.bind": f"/accounts({acc['accountid']})"})
    api.patch(f"accounts({acc['accountid']})",
              json={"primarycontactid@odata.bind": f"/contacts({contact['contactid']})"})
    row = api.get(f"accounts({acc['accountid']})", params={
        "$select": "name", "$expand": "primarycontactid($select=fullname),contact_customer_accounts($select=lastname)"
    }).json()
    assert row["primarycontactid"]["fullname"] == "Exp Anded" and row["primarycontactid"]["@odata.etag"]
    assert contact["contactid"] in {c["contactid"] for c in row["contact_customer_accounts"]}
    assert api.get(f"accounts({acc['accountid']})", params={"$expand": "nosuch"}).status_code == 400
    r = api.get(f"accounts({acc['accountid']})/name")
    assert r.json()["value"] == acc["name"]
    assert api.put(f"accounts({acc['accountid']})/telephone1", json={"value": "42"}).status_code == 204
    assert emu.get("accounts", acc["accountid"])["telephone1"] == "42"
    assert api.delete(f"accounts({acc['accountid']})/primarycontactid/$ref").status_code == 204
    assert emu.get("accounts", acc["accountid"])["_primarycontactid_value"] is None


def test_whoami_and_impersonation(emu, api):
    me = api.get("WhoAmI").json()
    assert me["UserId"] == emu.APP_USER_ID and me["BusinessUnitId"] == emu.ROOT_BUSINESS_UNIT_ID
    r = api.post("accounts", json={"name": "On behalf"}, headers={"MSCRMCallerID": emu.PERSON_USER_ID,
                                                                  "Prefer": "return=representation"},
                 params={"$select": "_createdby_value"})
    assert r.json()["_createdby_value"] == emu.PERSON_USER_ID
    assert api.get("nosuchset").status_code == 404


# --- webhook bodies -----------------------------------------------------------------------------------------
def test_webhook_create_context_has_the_real_shape(emu):
    acc = emu.create("accounts", {"name": "Hooked", "customertypecode": 3})
    ctx = emu.webhook_context_for("accounts", acc["accountid"], "Create", mode=0)
    assert list(ctx) == WEBHOOK_TOP_KEYS
    assert ctx["MessageName"] == "Create" and ctx["Mode"] == 0 and ctx["Stage"] == 40 and ctx["IsInTransaction"]
    assert re.fullmatch(r"/Date\(\d+\)/", ctx["OperationCreatedOn"])
    target = ctx["InputParameters"][0]
    assert target["key"] == "Target" and list(target["value"]) == ENTITY_KEYS
    attrs = {kv["key"]: kv["value"] for kv in target["value"]["Attributes"]}
    assert attrs["accountid"] == acc["accountid"] and attrs["name"] == "Hooked"
    assert set(attrs["ownerid"]) == set(SAMPLE_OWNERID) and attrs["ownerid"]["LogicalName"] == "systemuser"
    assert attrs["statecode"] == SAMPLE_STATECODE and attrs["modifiedonbehalfby"] is None
    assert re.fullmatch(r"/Date\(\d+000\)/", attrs["createdon"])
    assert attrs["creditonhold"] is False and attrs["customertypecode"]["Value"] == 3
    formatted = {kv["key"]: kv["value"] for kv in target["value"]["FormattedValues"]}
    assert formatted["statecode"] == "Active" and formatted["customertypecode"] == "Customer"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d-00:00", formatted["createdon"])
    assert ctx["OutputParameters"] == [{"key": "id", "value": acc["accountid"]}]
    assert set(ctx["OwningExtension"]) == set(SAMPLE_OWNING_EXTENSION)
    assert list(ctx["ParentContext"]) == WEBHOOK_TOP_KEYS and ctx["ParentContext"]["Stage"] == 30


def test_webhook_update_context_carries_changed_columns_and_images(emu, clock):
    contact = emu.all("contacts")[0]
    clock.tick(30)
    emu.update("contacts", contact["contactid"], {"firstname": "James"})
    ctx = emu.webhook_context_for("contacts", contact["contactid"], "Update", before=contact)
    # samples/dataverse_webhook_update_contact.json (async): its keys are ours minus the newer AAD/agent keys
    sample_keys = [k for k in WEBHOOK_TOP_KEYS if k not in WEBHOOK_NEWER_KEYS]
    assert [k for k in ctx if k not in WEBHOOK_NEWER_KEYS] == sample_keys
    assert ctx["Mode"] == 1 and not ctx["IsInTransaction"] and ctx["OutputParameters"] == []
    assert re.fullmatch(r"/Date\(\d+000\+0000\)/", ctx["OperationCreatedOn"])
    attrs = {kv["key"]: kv["value"] for kv in ctx["InputParameters"][0]["value"]["Attributes"]}
    assert set(attrs) == {"firstname", "fullname", "yomifullname", "contactid", "modifiedon", "modifiedby",
                          "modifiedonbehalfby"}
    assert attrs["firstname"] == "James" and attrs["modifiedby"] == entity_reference("systemuser",
                                                                                     emu.PERSON_USER_ID)
    pre = ctx["PreEntityImages"][0]
    assert pre["key"] == "PreImage" and "__type" not in pre["value"]
    assert {kv["key"]: kv["value"] for kv in pre["value"]["Attributes"]}["firstname"] == contact["firstname"]
    post = ctx["PostEntityImages"][0]
    assert post["key"] == "AsynchronousStepPrimaryName"
    assert [kv["key"] for kv in post["value"]["Attributes"]] == ["fullname", "contactid"]
    explicit = emu.webhook_context_for("contacts", contact["contactid"], "Update", changed={"firstname": "James"})
    assert [kv["key"] for kv in explicit["InputParameters"][0]["value"]["Attributes"]] == [
        "firstname", "contactid", "modifiedon", "modifiedby", "modifiedonbehalfby"]
    assert explicit["PreEntityImages"] == []


def test_webhook_delete_context_targets_an_entity_reference(emu):
    acc = emu.create("accounts", {"name": "Gone soon"})
    emu.delete("accounts", acc["accountid"])
    ctx = emu.webhook_context_for("accounts", acc["accountid"], "Delete")
    target = ctx["InputParameters"][0]["value"]
    assert target == entity_reference("account", acc["accountid"])
    assert ctx["PostEntityImages"] == [] and ctx["PreEntityImages"][0]["key"] == "PreImage"


def test_webhook_encoding_and_headers():
    ctx = build_remote_execution_context(
        "Update", "account", "53C52F26-A89D-EF11-8A69-000D3A30B0C1", target_attributes={"name": "Ünïcode/x"},
        mode=0, operation_created_on=datetime(2024, 11, 8, 8, 5, 6, 922000, tzinfo=timezone.utc))
    assert ctx["OperationCreatedOn"] == "/Date(1731053106922)/" and ctx["PrimaryEntityId"] == \
        "53c52f26-a89d-ef11-8a69-000d3a30b0c1"
    body = encode_body(ctx)
    assert b'"Entity:http:\\/\\/schemas.microsoft.com\\/xrm\\/2011\\/Contracts"' in body
    assert "Ünïcode\\/x".encode() in body and json.loads(body) == ctx
    headers = webhook_headers(ctx, "org6eadd181.crm.dynamics.com", body=body)
    assert headers["x-ms-dynamics-organization"] == "org6eadd181.crm.dynamics.com"
    assert headers["x-ms-dynamics-entity-name"] == "account" and headers["x-ms-dynamics-request-name"] == "Update"
    assert headers["x-ms-correlation-request-id"] == ctx["CorrelationId"]
    assert "x-ms-dynamics-msg-size-exceeded" not in headers
    big = build_remote_execution_context("Update", "account", str(uuid.uuid4()),
                                         target_attributes={"description": "x" * 300_000})
    h, b = webhook_request(big, "org")
    slim = json.loads(b)
    assert h["x-ms-dynamics-msg-size-exceeded"] and "InputParameters" not in slim and "ParentContext" not in slim
    assert slim["PrimaryEntityId"] == big["PrimaryEntityId"]
