"""Table mappings through the registered functions: read, change, validated like BC, persisted in storage."""
import pytest

from sync.runtime import close_runtime

pytestmark = pytest.mark.usefixtures("app_env")


async def test_list_and_get(app):
    r = await app("list_mappings")
    assert r.status == 200
    names = [m["name"] for m in r.json["value"]]
    assert set(names) == {"CUSTOMER", "VENDOR", "CONTACT", "CURRENCY", "SALESPEOPLE", "ITEM-PRODUCT",
                          "UNIT OF MEASURE", "PAYMENT TERMS", "SHIPMENT METHOD"}
    assert names.index("CURRENCY") < names.index("CUSTOMER") < names.index("CONTACT")
    one = await app("get_mapping", route={"name": "payment terms"})
    assert one.status == 200 and one.json["name"] == "PAYMENT TERMS"
    customer = await app("get_mapping", route={"name": "CUSTOMER"})
    assert customer.json["direction"] == "Bidirectional" and customer.json["syncOnlyCoupledRecords"] is True
    assert any(f["bcField"] == "displayName" and f["dataverseColumn"] == "name"
               for f in customer.json["fieldMappings"])
    missing = await app("get_mapping", route={"name": "NOPE"})
    assert missing.status == 404 and missing.json["error"]["code"] == "UnknownMapping"


async def test_patch_is_persisted_and_seen_by_a_fresh_instance(app):
    body = {"direction": "ToIntegrationTable", "syncOnlyCoupledRecords": False,
            "deletionConflictResolution": "RemoveCoupling",
            "integrationTableFilter": [{"field": "statecode", "op": "eq", "value": 0},
                                       {"field": "customertypecode", "op": "in", "value": [3, 8]}]}
    r = await app("update_mapping", "PATCH", route={"name": "CUSTOMER"}, body=body)
    assert r.status == 200, r
    assert r.json["direction"] == "ToIntegrationTable" and r.json["syncOnlyCoupledRecords"] is False
    await close_runtime()  # another instance: nothing cached
    again = await app("get_mapping", route={"name": "CUSTOMER"})
    assert again.json["direction"] == "ToIntegrationTable"
    assert again.json["deletionConflictResolution"] == "RemoveCoupling"
    assert again.json["integrationTableFilter"][1] == {"field": "customertypecode", "op": "in", "value": [3, 8]}
    # a second PATCH keeps the first one's changes
    r = await app("update_mapping", "PATCH", route={"name": "CUSTOMER"}, body={"updateConflictResolution": "None"})
    assert r.json["direction"] == "ToIntegrationTable"


@pytest.mark.parametrize("name, body, status", [
    ("PAYMENT TERMS", {"direction": "Bidirectional"}, 422),
    ("CUSTOMER", {"direction": "Sideways"}, 400),
    ("CUSTOMER", {"syncOnlyCoupledRecords": "false"}, 400),
    ("CUSTOMER", {"name": "OTHER"}, 400),
    ("CUSTOMER", {"bogus": 1}, 400),
    ("CUSTOMER", {"tableFilter": [{"field": "noSuchField", "op": "eq", "value": 1}]}, 422),
    ("CUSTOMER", {"matchCriteria": [{"bcField": "displayName", "dataverseColumn": "name", "priority": -1}]}, 422),
    ("NOPE", {"direction": "Bidirectional"}, 404),
])
async def test_invalid_patches_are_refused_and_write_nothing(app, name, body, status):
    r = await app("update_mapping", "PATCH", route={"name": name}, body=body)
    assert r.status == status, r
    assert r.json["error"]["message"]
    from sync.runtime import get_runtime
    assert await get_runtime().mapping_settings.get_all() == {}


async def test_malformed_patch_body(app):
    r = await app("update_mapping", "PATCH", route={"name": "CUSTOMER"}, raw=b"{")
    assert r.status == 400 and r.json["error"]["code"] == "InvalidJson"
