"""Parsing Dataverse webhook bodies (RemoteExecutionContext) and deciding whether a change matters - pure."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from emulators import dataverse_webhook as wh
from sync.dataverse_webhook import (EntityImage, EntityRef, InvalidWebhookBody, decide_acceptance,
                                    mappings_for_table, parse_wcf_date, parse_webhook, sdk_value)
from sync.mapping_defaults import default_mappings

DATA = Path(__file__).resolve().parents[1] / "data" / "dataverse_webhook"
ROW = "5f0c1d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f"
USER = "3570e963-e69c-ef11-8a6b-000d3a318589"


def _sample(name: str) -> bytes:
    return (DATA / f"dataverse_webhook_{name}.json").read_bytes()


def _body(ctx: dict) -> bytes:
    return wh.encode_body(ctx)


# --- the real bodies --------------------------------------------------------------------------------------------------
def test_real_sync_create_of_an_account():
    change = parse_webhook(_sample("create_account"), {"X-MS-Dynamics-Organization": "org.crm4.dynamics.com"})
    assert (change.message, change.message_name, change.entity) == ("Create", "Create", "account")
    assert change.id == "53c52f26-a89d-ef11-8a69-000d3a30b0c1"
    assert (change.mode, change.stage, change.depth) == (0, 40, 1)
    assert change.correlation_id == "7038a274-4877-4f3f-a57a-0f4493a647c6"
    assert change.operation_created_on == datetime(2024, 11, 8, 8, 5, 6, 922000, tzinfo=timezone.utc)
    assert change.initiating_user_id == USER and change.user_id == USER
    assert change.organization_name == "unqf42a590da29def118a666045bd056"
    assert change.organization_host == "org.crm4.dynamics.com"
    attrs = change.target.attributes
    assert attrs["statecode"] == 0 and attrs["customersizecode"] == 1  # OptionSetValue
    assert attrs["ownerid"] == EntityRef("systemuser", USER)  # EntityReference
    assert attrs["transactioncurrencyid"].logical_name == "transactioncurrency"
    assert attrs["createdon"] == datetime(2024, 11, 8, 8, 5, 6, tzinfo=timezone.utc)  # "\/Date(..)\/"
    assert attrs["modifiedonbehalfby"] is None and attrs["donotemail"] is False and attrs["exchangerate"] == 1
    assert change.modified_on == attrs["modifiedon"]
    assert "name" in change.changed_attributes and "modifiedon" not in change.changed_attributes
    assert "accountid" not in change.changed_attributes
    assert change.target.formatted_values["statecode"] == "Active"
    assert not change.size_exceeded and change.pre_images == {} and change.post_images == {}


def test_real_async_update_of_a_contact_from_the_docs():
    change = parse_webhook(_sample("update_contact"))
    assert (change.message, change.entity, change.id) == ("Update", "contact", "6d81597f-0f9f-e711-8122-000d3aa2331c")
    assert change.mode == 1 and change.stage == 40
    # "\/Date(1506409448000-0700)\/": the number is UTC milliseconds, the offset only informational
    assert change.operation_created_on == datetime.fromtimestamp(1506409448, tz=timezone.utc)
    assert change.changed_attributes == ("firstname", "fullname", "yomifullname")
    assert change.modified_on == datetime.fromtimestamp(1506384247, tz=timezone.utc)
    assert change.target.attributes["modifiedby"] == EntityRef("systemuser", "75c2dd85-e89e-e711-8122-000d3aa2331c")
    image = change.post_images["AsynchronousStepPrimaryName"]
    assert isinstance(image, EntityImage) and image.attributes["fullname"] == "James Glynn (sample)"


# --- the value shapes (B5) --------------------------------------------------------------------------------------------
def test_sdk_value_shapes():
    assert sdk_value(wh.option_set_value(3)) == 3
    assert sdk_value(wh.money(2154.32)) == 2154.32
    assert sdk_value(wh.option_set_values([342490001, 342490002])) == [342490001, 342490002]  # multi-select
    assert sdk_value(wh.entity_reference("account", ROW.upper(), "Contoso")) == EntityRef("account", ROW, "Contoso")
    assert sdk_value("/Date(1724647396000+0300)/") == datetime.fromtimestamp(1724647396, tz=timezone.utc)
    assert sdk_value("/Date(nope)/") == "/Date(nope)/"
    assert sdk_value({"__type": "Unknown:x", "A": 1}) == {"__type": "Unknown:x", "A": 1}
    assert parse_wcf_date("/Date(-1000)/") == datetime(1969, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
    assert parse_wcf_date("2024-01-01") is None
    collection = {"__type": "EntityCollection:" + wh.CONTRACTS, "Entities": [wh.entity("activityparty", ROW, {})]}
    assert [e.logical_name for e in sdk_value(collection)] == ["activityparty"]


def test_update_with_images_money_and_multiselect():
    ctx = wh.build_remote_execution_context(
        "Update", "account", ROW, mode=1, primary_name=("name", "Contoso"),
        target_attributes={"creditlimit": wh.money(1000.5), "new_tags": wh.option_set_values([1, 2]),
                           "customertypecode": wh.option_set_value(3)},
        pre_image={"creditlimit": wh.money(10), "name": "Contoso"}, post_image={"name": "Contoso", "creditlimit":
                                                                               wh.money(1000.5)})
    change = parse_webhook(_body(ctx))
    assert change.target.attributes["creditlimit"] == 1000.5 and change.target.attributes["new_tags"] == [1, 2]
    assert change.changed_attributes == ("creditlimit", "new_tags", "customertypecode")
    assert change.pre_images["PreImage"].attributes == {"creditlimit": 10, "name": "Contoso"}
    assert set(change.post_images) == {"AsynchronousStepPrimaryName", "PostImage"}
    assert change.post_images["PostImage"].attributes["creditlimit"] == 1000.5


def test_delete_targets_an_entity_reference():
    ctx = wh.build_remote_execution_context("Delete", "contact", ROW, pre_image={"fullname": "Ann Lee"})
    change = parse_webhook(_body(ctx))
    assert change.message_name == "Delete" and change.target is None
    assert change.target_reference == EntityRef("contact", ROW)
    assert change.pre_images["PreImage"].attributes["fullname"] == "Ann Lee"
    assert change.changed_attributes == ()


def test_the_256_kb_form_has_no_target_and_says_so():
    ctx = wh.build_remote_execution_context("Update", "account", ROW, target_attributes={"name": "x"},
                                            pre_image={"description": "y" * 300_000})
    headers, body = wh.webhook_request(ctx, "org.crm.dynamics.com")
    assert headers["x-ms-dynamics-msg-size-exceeded"] and len(body) < 10_000
    change = parse_webhook(body, headers)
    assert change.size_exceeded and change.target is None and change.pre_images == {}
    assert (change.message, change.entity, change.id) == ("Update", "account", ROW)
    small_headers, small = wh.webhook_request(wh.build_remote_execution_context("Update", "account", ROW), "o")
    assert not parse_webhook(small, small_headers).size_exceeded


def test_a_pre_operation_create_takes_the_id_from_the_target():
    ctx = wh.build_remote_execution_context("Create", "account", ROW, target_attributes={"name": "x"})
    ctx["PrimaryEntityId"] = "00000000-0000-0000-0000-000000000000"
    ctx["OutputParameters"] = []
    assert parse_webhook(_body(ctx)).id == ROW


@pytest.mark.parametrize("body, field", [
    (b"", None),
    (b"   ", None),
    (b"not json", None),
    (b"\xff\xfe{}", None),
    (b"[]", None),
    (b"{}", "MessageName"),
    (json.dumps({"MessageName": 5, "PrimaryEntityName": "account", "PrimaryEntityId": ROW}).encode(), "MessageName"),
    (json.dumps({"MessageName": "Update", "PrimaryEntityId": ROW}).encode(), "PrimaryEntityName"),
    (json.dumps({"MessageName": "Update", "PrimaryEntityName": "account"}).encode(), "PrimaryEntityId"),
    (json.dumps({"MessageName": "Update", "PrimaryEntityName": "account", "PrimaryEntityId": "x"}).encode(),
     "PrimaryEntityId"),
    (json.dumps({"MessageName": "Update", "PrimaryEntityName": "account", "PrimaryEntityId": 7}).encode(),
     "PrimaryEntityId"),
    (json.dumps({"MessageName": "Update", "PrimaryEntityName": "account", "PrimaryEntityId": ROW,
                 "InputParameters": "Target"}).encode(), "InputParameters"),
    (json.dumps({"MessageName": "Update", "PrimaryEntityName": "account", "PrimaryEntityId": ROW,
                 "InputParameters": [{"value": 1}]}).encode(), "InputParameters[0]"),
    (json.dumps({"MessageName": "Update", "PrimaryEntityName": "account", "PrimaryEntityId": ROW,
                 "InputParameters": [{"key": "Target", "value": 5}]}).encode(), "InputParameters.Target"),
    (json.dumps({"MessageName": "Update", "PrimaryEntityName": "account", "PrimaryEntityId": ROW,
                 "InputParameters": [{"key": "Target", "value": {"LogicalName": "account", "Attributes": 3}}]}
                ).encode(), "InputParameters.Target.Attributes"),
    (json.dumps({"MessageName": "Update", "PrimaryEntityName": "account", "PrimaryEntityId": ROW,
                 "PostEntityImages": [{"key": "PostImage", "value": {"Attributes": []}}]}).encode(),
     "PostEntityImages[PostImage]"),
])
def test_malformed_bodies_are_request_errors(body, field):
    with pytest.raises(InvalidWebhookBody) as caught:
        parse_webhook(body)
    assert caught.value.message
    if field:
        assert caught.value.details.get("field") == field


# --- which mapping, and whether the change can matter -----------------------------------------------------------------
def _change(message: str, entity: str):
    return parse_webhook(_body(wh.build_remote_execution_context(
        message if message in ("Create", "Update", "Delete") else "Update", entity, ROW)).replace(
        b'"MessageName":"Update"', f'"MessageName":"{message}"'.encode()))


def test_tables_belong_to_the_mappings_that_name_them():
    mappings = default_mappings()
    assert [m.name for m in mappings_for_table(mappings, "account")] == ["CUSTOMER", "VENDOR"]
    assert [m.name for m in mappings_for_table(mappings, "contact")] == ["CONTACT"]
    assert [m.name for m in mappings_for_table(mappings, "systemuser")] == ["SALESPEOPLE"]
    assert [m.name for m in mappings_for_table(mappings, "transactioncurrency")] == ["CURRENCY"]
    assert [m.name for m in mappings_for_table(mappings, "product")] == ["ITEM-PRODUCT"]
    assert [m.name for m in mappings_for_table(mappings, "uomschedule")] == ["UNIT OF MEASURE"]
    assert mappings_for_table(mappings, "task") == []


@pytest.mark.parametrize("message, entity, status, reason, names", [
    ("Update", "account", "accepted", None, ("CUSTOMER", "VENDOR")),
    ("Create", "contact", "accepted", None, ("CONTACT",)),
    ("Delete", "account", "accepted", None, ("CUSTOMER", "VENDOR")),
    ("Update", "systemuser", "accepted", None, ("SALESPEOPLE",)),
    ("Delete", "systemuser", "ignored", "directionNotAllowed", ("SALESPEOPLE",)),  # From only: no deletion conflict
    ("Update", "transactioncurrency", "ignored", "directionNotAllowed", ("CURRENCY",)),  # To only
    ("Delete", "transactioncurrency", "accepted", None, ("CURRENCY",)),
    ("Update", "task", "ignored", "noMapping", ()),
    ("Assign", "account", "ignored", "messageNotHandled", ()),
    ("update", "account", "accepted", None, ("CUSTOMER", "VENDOR")),
])
def test_acceptance(message, entity, status, reason, names):
    decision = decide_acceptance(default_mappings(), _change(message, entity))
    assert (decision.status, decision.reason, decision.mappings) == (status, reason, names)
    assert decision.to_json()["status"] == status
    if status == "accepted":
        queued = json.loads(decision.queue_message())
        assert queued["kind"] == "dataverse-change" and queued["id"] == ROW and queued["entity"] == entity
        assert queued["message"] == message.capitalize()
    else:
        assert decision.message


def test_the_queue_message_carries_ids_not_values():
    ctx = wh.build_remote_execution_context("Update", "account", ROW, target_attributes={"name": "Secret Name" * 500})
    decision = decide_acceptance(default_mappings(), parse_webhook(_body(ctx)))
    text = decision.queue_message()
    assert "Secret Name" not in text and len(text) < 2000
    assert json.loads(text)["changedAttributes"] == ["name"]
