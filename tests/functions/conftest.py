"""Calling the registered functions the way Microsoft documents for unit tests (no host)."""
from __future__ import annotations

import json
from typing import Any

import azure.functions as func
import pytest

from sandbox.host import invoke, registered_functions  # noqa: F401 - re-exported for the tests


class Response:
    def __init__(self, resp: func.HttpResponse):
        self.raw = resp
        self.status = resp.status_code
        self.headers = resp.headers
        body = resp.get_body()
        self.json = json.loads(body) if body else None

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.json!r:.300}>"


async def call(name: str, method: str = "GET", **kwargs: Any) -> Response:
    return Response(await invoke(name, method, **kwargs))


@pytest.fixture
async def app(app_env):
    """The app pointed at this test's emulators and tables; its clients are closed afterwards."""
    from sync.runtime import close_runtime

    yield call
    await close_runtime()
