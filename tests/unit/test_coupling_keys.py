"""Keys, GUIDs, continuation tokens and the Coupling record: pure code, no Azurite."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from coupling.store import (
    MAX_ERROR_CHARS, Coupling, bc_row_key, dataverse_row_key, mapping_from_partition_key, partition_key,
)
from coupling.keys import (
    MAX_KEY_CHARS, check_key, decode_continuation, decode_key_part, encode_continuation, encode_key_part,
    normalize_guid,
)
from coupling.tables import TableNames, TableService
from sync.errors import ConfigurationError, RequestError

FORBIDDEN = re.compile(r"[/\\#?%'\x00-\x1f\x7f-\x9f]")
GUID = "5b2a3c1e-9f0d-4e8a-b7c6-1d2e3f4a5b6c"

NAMES = [
    "CUSTOMER", "PAYMENT TERMS", "ITEM-PRODUCT", "SHIPPING_AGENT.V2", "a/b\\c#d?e", "tab\tnew\nline",
    "it's 100%", "~tilde~", "Ünïcödé ✓", "emoji 😀", "\x7f\x85del", "  leading and trailing  ",
]


@pytest.mark.parametrize("name", NAMES)
def test_key_encoding_is_reversible_and_safe(name):
    key = encode_key_part(name)
    assert not FORBIDDEN.search(key), key
    assert key.isascii()
    assert decode_key_part(key) == name
    assert partition_key(name) == key and mapping_from_partition_key(key) == name


def test_plain_names_stay_readable():
    assert encode_key_part("CUSTOMER") == "CUSTOMER"
    assert encode_key_part("ITEM-PRODUCT") == "ITEM-PRODUCT"
    assert encode_key_part("PAYMENT TERMS") == "PAYMENT~20TERMS"
    assert encode_key_part("a/b") == "a~2Fb"


def test_distinct_names_get_distinct_keys():
    keys = {encode_key_part(n) for n in NAMES + ["payment terms", "PAYMENT~20TERMS", "PAYMENT_TERMS"]}
    assert len(keys) == len(NAMES) + 3


@pytest.mark.parametrize("bad", ["", "   ", None, 42, "x" * (MAX_KEY_CHARS + 1), "/" * 200, "\ud800lone"])
def test_key_encoding_rejects(bad):
    with pytest.raises(RequestError):
        encode_key_part(bad)


def test_longest_name_fits_the_key_limit():
    key = encode_key_part("x" * MAX_KEY_CHARS)
    assert len(key) == MAX_KEY_CHARS and len(key.encode("utf-16-le")) <= 1024


@pytest.mark.parametrize("bad", [
    "", "~41",  # "A" is written as itself: not canonical
    "~2f",  # lower-case hex is not how we write it
    "~FF",  # not UTF-8
    "a~2", "a~", "a b", "a/b", "a%20b", "PAYMENT TERMS", None,
])
def test_key_decoding_rejects_non_canonical(bad):
    with pytest.raises(RequestError):
        decode_key_part(bad)


@pytest.mark.parametrize("good", ["bc_" + GUID, "PAYMENT~20TERMS", "x" * MAX_KEY_CHARS])
def test_check_key_accepts(good):
    assert check_key(good) == good


@pytest.mark.parametrize("bad", ["a/b", "a\\b", "a#b", "a?b", "a\x00b", "a\x1fb", "a\x7fb", "a\x9fb",
                                 "x" * (MAX_KEY_CHARS + 1), None, 3])
def test_check_key_rejects(bad):
    with pytest.raises(RequestError):
        check_key(bad)


@pytest.mark.parametrize("raw", [GUID, GUID.upper(), "{" + GUID.upper() + "}", f"  {GUID}  "])
def test_guid_normalized_to_lower_case(raw):
    assert normalize_guid(raw) == GUID


@pytest.mark.parametrize("bad", [
    "", None, 123, "not-a-guid", GUID.replace("-", ""), "{" + GUID, GUID + "}", "urn:uuid:" + GUID,
    GUID[:-1] + "g", GUID + "0", "00000000-0000-0000-0000-000000000000", "{00000000-0000-0000-0000-000000000000}",
    GUID[:8] + " " + GUID[9:], "../../" + GUID,
])
def test_guid_validation_rejects(bad):
    with pytest.raises(RequestError):
        normalize_guid(bad)


def test_row_keys():
    assert bc_row_key(GUID.upper()) == "bc_" + GUID
    assert dataverse_row_key("{" + GUID + "}") == "dv_" + GUID
    with pytest.raises(RequestError):
        bc_row_key("CUST-0001")


# --- continuation tokens ----------------------------------------------------------------------------------------------
TOKEN = {"PartitionKey": "PAYMENT~20TERMS", "RowKey": "bc_" + GUID}


def test_continuation_round_trip_and_url_safe():
    text = encode_continuation("scope-a", TOKEN)
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", text)
    assert decode_continuation("scope-a", text) == TOKEN
    assert encode_continuation("scope-a", None) is None and encode_continuation("scope-a", {}) is None
    assert decode_continuation("scope-a", None) is None and decode_continuation("scope-a", "") is None


def test_continuation_with_only_a_partition_key():
    text = encode_continuation("s", {"PartitionKey": "P", "RowKey": None})
    assert decode_continuation("s", text) == {"PartitionKey": "P"}


def test_continuation_bound_to_its_scope():
    text = encode_continuation("couplings|CUSTOMER|", TOKEN)
    with pytest.raises(RequestError):
        decode_continuation("couplings|VENDOR|", text)


def test_every_single_character_change_is_rejected():
    text = encode_continuation("s", TOKEN)
    for i in range(len(text)):
        for replacement in {"A", "b", "0", "_", "-", "."} - {text[i]}:
            tampered = text[:i] + replacement + text[i + 1:]
            with pytest.raises(RequestError):
                decode_continuation("s", tampered)


@pytest.mark.parametrize("bad", ["abc", "abc.def", ".", "a.b.c", "%%%.x", "x" * 5000, 12, "eyJwayI6MX0.AAAA"])
def test_garbage_continuation_rejected(bad):
    with pytest.raises(RequestError) as info:
        decode_continuation("s", bad)
    assert info.value.code == "InvalidContinuationToken"


def test_continuation_with_forbidden_key_rejected_even_with_good_checksum():
    text = encode_continuation("s", {"PartitionKey": "a/b", "RowKey": "x"})
    with pytest.raises(RequestError):
        decode_continuation("s", text)


# --- the record -------------------------------------------------------------------------------------------------------
def test_coupling_normalizes_ids_and_datetimes():
    cest = timezone(timedelta(hours=2))
    c = Coupling("CUSTOMER", GUID.upper(), "{" + GUID + "}",
                 bc_modified_on=datetime(2024, 5, 1, 14, 0, 0, 123456, tzinfo=cest))
    assert c.bc_id == GUID and c.dataverse_id == GUID
    assert c.bc_modified_on == datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    assert c.bc_modified_on.utcoffset() == timedelta(0)


def test_coupling_rejects_naive_datetimes_and_bad_ids():
    with pytest.raises(RequestError):
        Coupling("CUSTOMER", GUID, GUID, dataverse_modified_on=datetime(2024, 5, 1))
    with pytest.raises(RequestError):
        Coupling("CUSTOMER", GUID, GUID, coupled_at="2024-05-01T00:00:00Z")
    with pytest.raises(RequestError):
        Coupling("CUSTOMER", "10000", GUID)
    with pytest.raises(RequestError):
        Coupling("CUSTOMER", GUID, "")
    with pytest.raises(RequestError):
        Coupling("", GUID, GUID)


def test_last_error_truncated():
    c = Coupling("CUSTOMER", GUID, GUID, last_error="e" * (MAX_ERROR_CHARS * 3))
    assert len(c.last_error) == MAX_ERROR_CHARS and c.last_error.endswith("\u2026")
    assert Coupling("CUSTOMER", GUID, GUID, last_error="short").last_error == "short"


def test_etag_is_not_part_of_equality():
    assert Coupling("C", GUID, GUID, etag=("a", None)) == Coupling("C", GUID, GUID, etag=(None, "b"))


# --- table names and the service --------------------------------------------------------------------------------------
def test_table_names():
    names = TableNames("sync")
    assert (names.couplings, names.mappings, names.jobs, names.errors, names.watermarks, names.leases,
            names.intents, names.subscriptions) == ("syncCouplings", "syncMappings", "syncJobs", "syncErrors",
                                                    "syncWatermarks", "syncLeases", "syncIntents",
                                                    "syncSubscriptions")
    assert len(set(names.all())) == 8
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z0-9]{2,62}", n) for n in TableNames("a" * 31).all())


@pytest.mark.parametrize("bad", ["", "1abc", "ab-c", "a_b", "a" * 32, None])
def test_table_names_reject_bad_prefix(bad):
    with pytest.raises(ConfigurationError):
        TableNames(bad)


def test_service_refuses_localhost_on_a_random_port():
    conn = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
            "TableEndpoint=http://localhost:12345/devstoreaccount1;")
    with pytest.raises(ConfigurationError) as info:
        TableService(conn)
    assert info.value.setting == "SYNC_STORAGE_CONNECTION"
    with pytest.raises(ConfigurationError):
        TableService("  ")
