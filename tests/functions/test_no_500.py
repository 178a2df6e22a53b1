"""No request a client can send produces a 500: every HTTP function gets malformed and hostile input."""
from __future__ import annotations

import json

import pytest

from sandbox.host import bindings, http_binding, registered_functions

pytestmark = pytest.mark.usefixtures("app_env")

BODIES = [
    b"", b"{", b"[]", b"null", b"42", b'"text"', b"\xff\xfe\x00", b'{"mapping": null}',
    b'{"mapping": "CUSTOMER"}', b'{"mapping": "NOPE", "all": true}', b'{"mapping": ["CUSTOMER"]}',
    b'{"mapping": "CUSTOMER", "bcIds": "x", "dataverseIds": {}, "all": "yes", "direction": 7}',
    b'{"mapping": "CUSTOMER", "bcIds": [null, 1, "\' or 1 eq 1"], "direction": "Sideways"}',
    b'{"mapping": "CUSTOMER", "bcId": "6f1c2a9e-3b4d-4e5f-8a7b-1c2d3e4f5a6b", "createNew": 1}',
    b'{"mapping": "CUSTOMER", "days": -1, "pageSize": "x", "value": [{"changeType": 5}]}',
    b'{"value": "not a list"}', b'{"value": [null, 1, "x", {"subscriptionId": 1, "clientState": []}]}',
    b'{"MessageName": 1, "PrimaryEntityName": [], "InputParameters": "x"}',
    b'{"direction": "ToIntegrationTable", "tableFilter": [{"field": 1}], "matchCriteria": "x"}',
    json.dumps({"mapping": "CUSTOMER", "bcIds": ["6f1c2a9e-3b4d-4e5f-8a7b-1c2d3e4f5a6b"] * 3}).encode(),
]
ROUTE_VALUES = ["CUSTOMER", "NOPE", "PAYMENT TERMS", "x" * 300, "%00", "../..", "0" * 27]
STATUSES: dict[int, int] = {}
PARAMS = [{}, {"bcId": "nope"}, {"dataverseId": "' or 1 eq 1"}, {"pageSize": "-5"}, {"continuation": "garbage"},
          {"mapping": "NOPE"}, {"validationToken": ""}, {"dataverseOptionValue": "x"}]


def _http_functions():
    return [(name, http_binding(fn)) for name, fn in registered_functions().items()
            if any(b["type"] == "httpTrigger" for b in bindings(fn))]


async def test_every_http_function_answers_bad_input_with_4xx(app):
    seen = 0
    for name, binding in _http_functions():
        route_params = [p for p in binding["route"].split("/") if p.startswith("{")]
        for method in binding["methods"]:
            for value in ROUTE_VALUES:
                route = {p.strip("{}"): value for p in route_params}
                cases = [(b, {}) for b in BODIES] if method in ("POST", "PATCH") else [(b"", p) for p in PARAMS]
                for body, params in cases:
                    resp = await app(name, method, raw=body, route=route, params=params)
                    assert resp.status < 500, (name, method, route, body[:80], params, resp)
                    if resp.status >= 400:
                        assert resp.json["error"]["code"] and resp.json["error"]["message"], (name, resp)
                    seen += 1
                    STATUSES[resp.status] = STATUSES.get(resp.status, 0) + 1
                if not route_params:
                    break
    assert seen > 300 and len(STATUSES) >= 3  # not all answered the same way
