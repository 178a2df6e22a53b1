"""Option-set metadata: the emulator's EntityDefinitions / InsertOptionValue / UpdateOptionValue / DeleteOptionValue,
and DataverseClient.option_set / insert_option / update_option_label against it (real HTTP on loopback)."""
from __future__ import annotations

import httpx
import pytest

from emulators import dataverse_metadata as md
from emulators.dataverse import DataverseError
from emulators.server import DEFAULT_TOKEN
from sync.adapters.dataverse import DataverseClient, option_label
from sync.adapters.transport import RetryPolicy
from sync.errors import UpstreamNotFound, UpstreamOutcomeUnknown, UpstreamValidation
from tests.integration.test_dataverse_client import settings_for

FAST = RetryPolicy(max_attempts=3, max_total_wait=1.0, base_delay=0.01, max_delay=0.05)
PAYMENT_TERMS = {1: "Net 30", 2: "2% 10, Net 30", 3: "Net 45", 4: "Net 60"}
PT_PATH = ("EntityDefinitions(LogicalName='account')/Attributes(LogicalName='paymenttermscode')"
           "/Microsoft.Dynamics.CRM.PicklistAttributeMetadata")


@pytest.fixture
async def http():
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0),
                                 headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"}) as client:
        yield client


@pytest.fixture
def dv(dv_emulator, http) -> DataverseClient:
    return DataverseClient.from_settings(settings_for(dv_emulator), http=http, retry=FAST)


def _insert_body(label, column="paymenttermscode", **extra):
    return {"EntityLogicalName": "account", "AttributeLogicalName": column,
            "Label": {"LocalizedLabels": [{"Label": label, "LanguageCode": 1033}]}, **extra}


# --- the emulator, raw HTTP -------------------------------------------------------------------------------------------
async def test_metadata_get_answers_the_schema_options_with_localized_labels(dv_emulator, http):
    r = await http.get(dv_emulator.api_root + PT_PATH, params={"$select": "LogicalName", "$expand": "OptionSet"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["LogicalName"] == "paymenttermscode" and body["MetadataId"]
    assert "PicklistAttributeMetadata(LogicalName,OptionSet())" in body["@odata.context"]
    assert "AttributeType" not in body  # $select respected
    os_ = body["OptionSet"]
    assert os_["Name"] == "account_paymenttermscode" and os_["IsGlobal"] is False
    got = {o["Value"]: o["Label"]["UserLocalizedLabel"]["Label"] for o in os_["Options"]}
    assert got == PAYMENT_TERMS
    first = os_["Options"][0]["Label"]
    assert first["LocalizedLabels"] == [{"Label": "Net 30", "LanguageCode": 1033, "IsManaged": True,
                                         "MetadataId": None, "HasChanged": None}]
    # without $expand there is no OptionSet; other choice columns work the same way
    r = await http.get(dv_emulator.api_root + PT_PATH.replace("paymenttermscode", "address1_freighttermscode"))
    assert r.status_code == 200 and "OptionSet" not in r.json() and r.json()["AttributeType"] == "Picklist"
    r = await http.get(dv_emulator.api_root + PT_PATH.replace("paymenttermscode", "address1_freighttermscode"),
                       params={"$expand": "OptionSet"})
    assert {o["Value"] for o in r.json()["OptionSet"]["Options"]} == {1, 2}


@pytest.mark.parametrize("path, status, code", [
    (PT_PATH.replace("'account'", "'nosuchtable'"), 404, "0x80040217"),
    (PT_PATH.replace("paymenttermscode", "nosuchcolumn"), 404, "0x80040217"),
    (PT_PATH.replace("paymenttermscode", "name"), 404, "0x80060888"),  # a string column isn't a picklist
    (PT_PATH.replace("Picklist", "Boolean"), 404, "0x80060888"),
    (PT_PATH + "?$select=Nope", 400, "0x80060888"),
    (PT_PATH + "?$expand=Nope", 400, "0x80060888"),
])
async def test_metadata_get_errors(dv_emulator, http, path, status, code):
    r = await http.get(dv_emulator.api_root + path)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text


async def test_insert_option_value_takes_the_next_custom_value_and_the_column_accepts_it(dv_emulator, http):
    with pytest.raises(DataverseError, match="outside the valid range"):
        dv_emulator.create("accounts", {"name": "Before", "paymenttermscode": 100000000})
    r = await http.post(dv_emulator.api_root + "InsertOptionValue", json=_insert_body("10 DAYS"))
    assert r.status_code == 200 and r.json()["NewOptionValue"] == 100000000
    assert r.json()["@odata.context"].endswith("$metadata#Microsoft.Dynamics.CRM.InsertOptionValueResponse")
    r = await http.post(dv_emulator.api_root + "InsertOptionValue", json=_insert_body("14 DAYS"))
    assert r.json()["NewOptionValue"] == 100000001
    r = await http.post(dv_emulator.api_root + "InsertOptionValue", json=_insert_body("Chosen", Value=7))
    assert r.json()["NewOptionValue"] == 7
    assert md.options(dv_emulator, "account", "paymenttermscode") == {
        **PAYMENT_TERMS, 100000000: "10 DAYS", 100000001: "14 DAYS", 7: "Chosen"}
    # the new values are valid for the column (HTTP and direct writes), with their label as formatted value
    acc = dv_emulator.create("accounts", {"name": "After", "paymenttermscode": 100000001})
    r = await http.get(f"{dv_emulator.api_root}accounts({acc['accountid']})", params={"$select": "paymenttermscode"},
                       headers={"Prefer": 'odata.include-annotations="*"'})
    assert r.json()["paymenttermscode"] == 100000001
    assert r.json()["paymenttermscode@OData.Community.Display.V1.FormattedValue"] == "14 DAYS"
    r = await http.patch(f"{dv_emulator.api_root}accounts({acc['accountid']})", json={"paymenttermscode": 7},
                         headers={"If-Match": "*"})
    assert r.status_code == 204
    # the metadata read shows them as unmanaged options
    r = await http.get(dv_emulator.api_root + PT_PATH, params={"$expand": "OptionSet"})
    added = [o for o in r.json()["OptionSet"]["Options"] if o["Value"] == 100000000][0]
    assert added["IsManaged"] is False and added["Label"]["UserLocalizedLabel"]["Label"] == "10 DAYS"
    # an insert is a write
    assert dv_emulator.stats.writes >= 3


@pytest.mark.parametrize("body, fragment", [
    (_insert_body("net 30 "), "already exists"),                      # duplicate label, case and spaces ignored
    (_insert_body("New", Value=3), "value 3 already exists"),
    (_insert_body("New", column="name"), "not a picklist"),
    (_insert_body("New", column="statecode"), "not a picklist"),       # status values have their own action
    ({**_insert_body("x"), "Label": {"LocalizedLabels": [{"Label": "Neu", "LanguageCode": 1031}]}},
     "base language code 1033"),
    ({**_insert_body("x"), "Label": {"LocalizedLabels": []}}, "at least one LocalizedLabel"),
    ({**_insert_body("x"), "Label": {"LocalizedLabels": [{"Label": " ", "LanguageCode": 1033}]}}, "non-empty"),
    (_insert_body("New", Value="5"), "Int32"),
    ({"AttributeLogicalName": "paymenttermscode", "Label": _insert_body("x")["Label"]}, "required"),
])
async def test_insert_option_value_refusals_change_nothing(dv_emulator, http, body, fragment):
    r = await http.post(dv_emulator.api_root + "InsertOptionValue", json=body)
    assert r.status_code == 400 and fragment in r.json()["error"]["message"], r.text
    assert md.options(dv_emulator, "account", "paymenttermscode") == PAYMENT_TERMS


async def test_unknown_table_and_wrong_methods_are_refused(dv_emulator, http):
    r = await http.post(dv_emulator.api_root + "InsertOptionValue",
                        json={**_insert_body("x"), "EntityLogicalName": "nosuch"})
    assert r.status_code == 404
    assert (await http.get(dv_emulator.api_root + "InsertOptionValue")).status_code == 405
    assert (await http.post(dv_emulator.api_root + PT_PATH, json={})).status_code == 405


async def test_options_added_in_one_emulator_stay_there(dv_emulator):
    from emulators.dataverse import DataverseEmulator

    assert md.insert_option(dv_emulator, "account", "paymenttermscode", "ONLY HERE") == 100000000
    with DataverseEmulator(seed=False) as other:
        assert md.options(other, "account", "paymenttermscode") == PAYMENT_TERMS
        with pytest.raises(DataverseError):
            other.create("accounts", {"name": "x", "paymenttermscode": 100000000})


async def test_update_and_delete_option_value(dv_emulator, http):
    value = md.insert_option(dv_emulator, "account", "paymenttermscode", "OLD")
    r = await http.post(dv_emulator.api_root + "UpdateOptionValue", json={
        **_insert_body("NEW"), "Value": value, "MergeLabels": True})
    assert r.status_code == 204
    assert md.options(dv_emulator, "account", "paymenttermscode")[value] == "NEW"
    r = await http.post(dv_emulator.api_root + "UpdateOptionValue", json={**_insert_body("Net 45"), "Value": value})
    assert r.status_code == 400 and "already exists" in r.json()["error"]["message"]
    r = await http.post(dv_emulator.api_root + "UpdateOptionValue", json={**_insert_body("X"), "Value": 999})
    assert r.status_code == 404
    acc = dv_emulator.create("accounts", {"name": "Holder", "paymenttermscode": value})
    r = await http.post(dv_emulator.api_root + "DeleteOptionValue", json={
        "EntityLogicalName": "account", "AttributeLogicalName": "paymenttermscode", "Value": value})
    assert r.status_code == 204 and value not in md.options(dv_emulator, "account", "paymenttermscode")
    assert dv_emulator.get("accounts", acc["accountid"])["paymenttermscode"] == value  # rows keep their value
    with pytest.raises(DataverseError):
        dv_emulator.update("accounts", acc["accountid"], {"paymenttermscode": value})


# --- the client -------------------------------------------------------------------------------------------------------
async def test_client_option_set_and_insert_option(dv, dv_emulator):
    assert await dv.option_set("account", "paymenttermscode") == [
        {"value": v, "label": label} for v, label in PAYMENT_TERMS.items()]
    assert await dv.option_set("account", "address1_freighttermscode") == [
        {"value": 1, "label": "FOB"}, {"value": 2, "label": "No Charge"}]
    value = await dv.insert_option("account", "address1_freighttermscode", "PICKUP")
    assert value == 100000000
    assert (await dv.option_set("account", "address1_freighttermscode"))[-1] == {"value": value, "label": "PICKUP"}
    assert await dv.insert_option("account", "address1_freighttermscode", "EXW", value=42) == 42
    await dv.update_option_label("account", "address1_freighttermscode", 42, "EX WORKS")
    await dv.update_option_label("account", "address1_freighttermscode", 42, "EX WORKS")  # idempotent
    assert md.options(dv_emulator, "account", "address1_freighttermscode")[42] == "EX WORKS"
    await dv.create("accounts", {"name": "Freight", "address1_freighttermscode": value})


async def test_client_errors(dv, dv_emulator):
    with pytest.raises(UpstreamValidation) as ei:
        await dv.insert_option("account", "paymenttermscode", "NET 45")
    assert "already exists" in ei.value.api_message
    with pytest.raises(UpstreamNotFound):
        await dv.option_set("account", "nosuchcolumn")
    with pytest.raises(ValueError):
        await dv.option_set("account')/x", "paymenttermscode")  # logical names only: nothing to inject
    with pytest.raises(ValueError):
        await dv.insert_option("account", "paymenttermscode", "  ")


async def test_client_insert_is_never_replayed_after_a_lost_answer(dv, dv_emulator):
    dv_emulator.inject("drop_after", match=lambda r: r.method == "POST" and r.path.endswith("/InsertOptionValue"))
    with pytest.raises(UpstreamOutcomeUnknown):
        await dv.insert_option("account", "paymenttermscode", "LOST")
    # it happened once, exactly: the caller looks the label up instead of inserting again
    labels = [o["label"] for o in await dv.option_set("account", "paymenttermscode")]
    assert labels.count("LOST") == 1


def test_option_label_prefers_the_user_label_then_1033_then_the_first():
    assert option_label({"UserLocalizedLabel": {"Label": "Mine"}, "LocalizedLabels": [{"Label": "x"}]}) == "Mine"
    assert option_label({"UserLocalizedLabel": None, "LocalizedLabels": [
        {"Label": "Deutsch", "LanguageCode": 1031}, {"Label": "English", "LanguageCode": 1033}]}) == "English"
    assert option_label({"LocalizedLabels": [{"Label": "Deutsch", "LanguageCode": 1031}]}) == "Deutsch"
    assert option_label(None) == option_label({"LocalizedLabels": []}) == ""
