"""Calling the registered functions the way Microsoft documents for unit tests (no host)."""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Any
from urllib.parse import urlencode

import azure.functions as func
import pytest


@lru_cache(maxsize=1)
def registered_functions() -> dict[str, Any]:
    """name -> Function. Cached: FunctionApp.get_functions() refuses to run twice on one app (it re-validates
    names against the ones it recorded the first time)."""
    import function_app

    return {f.get_function_name(): f for f in function_app.app.get_functions()}


def http_binding(fn) -> dict:
    for raw in fn.get_raw_bindings():
        binding = json.loads(raw)
        if binding["type"] == "httpTrigger":
            return binding
    raise AssertionError(f"{fn.get_function_name()} has no HTTP trigger")


class Response:
    def __init__(self, resp: func.HttpResponse):
        self.raw = resp
        self.status = resp.status_code
        self.headers = resp.headers
        body = resp.get_body()
        self.json = json.loads(body) if body else None

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.json!r:.300}>"


async def call(name: str, method: str = "GET", *, body: Any = None, raw: bytes | None = None,
               route: dict[str, str] | None = None, params: dict[str, str] | None = None,
               headers: dict[str, str] | None = None) -> Response:
    """Build a func.HttpRequest for the registered function ``name`` and await its user function."""
    fn = registered_functions()[name]
    binding = http_binding(fn)
    assert method in binding["methods"], f"{name} does not accept {method}"
    path = binding["route"]
    for k, v in (route or {}).items():
        path = path.replace("{" + k + "}", v)
    url = f"http://localhost:7071/api/{path}" + (f"?{urlencode(params)}" if params else "")
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    req = func.HttpRequest(method, url, body=data, headers=headers or {"Content-Type": "application/json"},
                           params=params or {}, route_params=route or {})
    return Response(await fn.get_user_function()(req))


@pytest.fixture
async def app(app_env):
    """The app pointed at this test's emulators and tables; its clients are closed afterwards."""
    from sync.runtime import close_runtime

    yield call
    await close_runtime()
