"""The mapping-settings store against a real Azurite."""
from __future__ import annotations

import pytest

from coupling.mapping_store import MAX_OVERRIDES_CHARS, MappingSettingsChanged, MappingSettingsStore
from coupling.tables import TableService
from sync.errors import Conflict, RequestError


@pytest.fixture
def store(service, names):
    return MappingSettingsStore(service, names)


async def test_absent_mapping(store):
    assert await store.get("CUSTOMER") == (None, None)
    assert await store.get_all() == {}
    await store.delete("CUSTOMER")  # nothing to delete is fine


async def test_put_get_replace(store):
    etag = await store.put("CUSTOMER", {"direction": "Bidirectional", "syncOnlyCoupled": True})
    overrides, read_etag = await store.get("CUSTOMER")
    assert overrides == {"direction": "Bidirectional", "syncOnlyCoupled": True} and read_etag == etag
    etag2 = await store.put("CUSTOMER", {"direction": "ToIntegrationTable"})  # unconditional: replaces
    assert etag2 != etag
    assert await store.get("CUSTOMER") == ({"direction": "ToIntegrationTable"}, etag2)


async def test_conditional_update(store):
    await store.put("CUSTOMER", {"a": 1})
    _, etag = await store.get("CUSTOMER")
    new_etag = await store.put("CUSTOMER", {"a": 2}, etag=etag)
    with pytest.raises(MappingSettingsChanged) as info:
        await store.put("CUSTOMER", {"a": 3}, etag=etag)  # stale
    assert isinstance(info.value, Conflict) and info.value.details == {"mapping": "CUSTOMER"}
    assert await store.get("CUSTOMER") == ({"a": 2}, new_etag)


async def test_conditional_update_of_removed_settings_conflicts(store):
    etag = await store.put("CUSTOMER", {"a": 1})
    await store.delete("CUSTOMER")
    with pytest.raises(MappingSettingsChanged):
        await store.put("CUSTOMER", {"a": 2}, etag=etag)
    assert await store.get("CUSTOMER") == (None, None)


async def test_conditional_delete(store):
    etag = await store.put("CUSTOMER", {"a": 1})
    newer = await store.put("CUSTOMER", {"a": 2}, etag=etag)
    with pytest.raises(MappingSettingsChanged):
        await store.delete("CUSTOMER", etag=etag)
    assert (await store.get("CUSTOMER"))[0] == {"a": 2}
    await store.delete("CUSTOMER", etag=newer)
    assert await store.get("CUSTOMER") == (None, None)


async def test_get_all_with_odd_names_and_unicode(store):
    settings = {
        "CUSTOMER": {"filter": "Blocked eq ' '"},
        "PAYMENT TERMS": {"enabled": False},
        "a/b#c?d": {"note": "Ünïcode ✓ 😀", "nested": {"list": [1, 2.5, None, "x"]}},
    }
    for name, overrides in settings.items():
        await store.put(name, overrides)
    assert await store.get_all() == settings
    assert (await store.get("a/b#c?d"))[0] == settings["a/b#c?d"]
    await store.delete("PAYMENT TERMS")
    assert set(await store.get_all()) == {"CUSTOMER", "a/b#c?d"}


async def test_changes_are_visible_to_every_instance_at_once(azurite, names, store):
    other_service = TableService(azurite.connection_string, retry_total=1)
    try:
        other = MappingSettingsStore(other_service, names)
        await store.put("CUSTOMER", {"a": 1})
        assert (await other.get("CUSTOMER"))[0] == {"a": 1}
        _, etag = await other.get("CUSTOMER")
        await other.put("CUSTOMER", {"a": 2}, etag=etag)
        assert (await store.get("CUSTOMER"))[0] == {"a": 2}
    finally:
        await other_service.close()


@pytest.mark.parametrize("bad", [
    ["not", "an", "object"], "text", None, {"n": float("nan")}, {"x": object()},
    {"big": "x" * MAX_OVERRIDES_CHARS},
    {"astral": "😀" * (MAX_OVERRIDES_CHARS // 2)},  # fits in characters, not in UTF-16 units
])
async def test_invalid_or_oversized_overrides_rejected_and_nothing_written(store, bad):
    with pytest.raises(RequestError):
        await store.put("CUSTOMER", bad)
    assert await store.get("CUSTOMER") == (None, None)


async def test_largest_accepted_overrides(store):
    overhead = len('{"big":""}')
    big = {"big": "x" * (MAX_OVERRIDES_CHARS - overhead)}
    await store.put("CUSTOMER", big)
    assert (await store.get("CUSTOMER"))[0] == big


async def test_bad_names_rejected(store):
    for bad in ("", "   ", "x" * 600):
        with pytest.raises(RequestError):
            await store.put(bad, {})
        with pytest.raises(RequestError):
            await store.get(bad)
