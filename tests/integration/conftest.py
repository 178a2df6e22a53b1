"""Fixtures of the storage integration tests: a Table Storage client on this test process's Azurite, and the
table names of this test (its own prefix; the tables are deleted afterwards by ``table_prefix``)."""
import pytest

from coupling.tables import TableNames, TableService


@pytest.fixture
async def service(azurite):
    svc = TableService(azurite.connection_string, retry_total=1)
    yield svc
    await svc.close()


@pytest.fixture
def names(table_prefix):
    return TableNames(table_prefix)
