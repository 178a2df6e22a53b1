"""Shared fixtures: one Azurite per test process, fresh emulators and fresh tables per test.

Tests run in parallel (pytest-xdist): each worker process starts its own Azurite; each test gets its own table
prefix and deletes its tables afterwards, and its own emulator servers on free loopback ports.
"""
from __future__ import annotations

import os
import uuid

import pytest

from emulators.server import DEFAULT_TOKEN

BC_COMPANY_ID = "f64eba74-dacd-4854-a584-1834f68cfc3a"
BC_TENANT = "cronus"
BC_ENVIRONMENT = "sandbox"


@pytest.fixture(scope="session")
def azurite():
    from emulators.azurite import Azurite

    with Azurite() as server:
        yield server


@pytest.fixture
def table_prefix(azurite):
    """A unique table-name prefix for this test; every table starting with it is deleted afterwards."""
    from azure.data.tables import TableServiceClient

    prefix = "t" + uuid.uuid4().hex[:12]
    yield prefix
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    for table in service.list_tables():
        if table.name.lower().startswith(prefix):
            service.delete_table(table.name)


@pytest.fixture
def bc_emulator():
    from emulators.bc import BCEmulator

    with BCEmulator(company_id=BC_COMPANY_ID, tenant=BC_TENANT, environment=BC_ENVIRONMENT) as emu:
        yield emu


@pytest.fixture
def dv_emulator():
    from emulators.dataverse import DataverseEmulator

    with DataverseEmulator() as emu:
        yield emu


@pytest.fixture
def app_env(monkeypatch, azurite, table_prefix, bc_emulator, dv_emulator):
    """Environment for the app pointed at this test's emulators and tables; settings re-read."""
    from sync.settings import reset_settings

    env = {
        "BC_API_BASE_URL": bc_emulator.base_url,
        "BC_COMPANY_ID": BC_COMPANY_ID,
        "DATAVERSE_URL": dv_emulator.url,
        "SYNC_STORAGE_CONNECTION": azurite.connection_string,
        "SYNC_TABLE_PREFIX": table_prefix,
        "LOCAL_DEV_TOKEN": DEFAULT_TOKEN,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    reset_settings()
    yield env
    reset_settings()


def pytest_collection_modifyitems(config, items):
    # Tests never talk to anything but loopback: fail loudly if a proxy would reroute httpx.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        os.environ.pop(var, None)
