import json

import azure.functions as func
import pytest

from api import http
from sync import errors


def _req(body: bytes) -> func.HttpRequest:
    return func.HttpRequest("POST", "http://localhost/api/x", body=body)


@pytest.mark.parametrize("body, code", [
    (b"", "EmptyBody"), (b"{", "InvalidJson"), (b"[1]", "InvalidJson"), (b"\xff\xfe", "InvalidJson"),
    (b"null", "InvalidJson"),
])
def test_read_json_rejects_non_objects(body, code):
    with pytest.raises(errors.RequestError) as info:
        http.read_json(_req(body))
    assert info.value.code == code


def test_read_json_rejects_oversized_bodies():
    with pytest.raises(http.PayloadTooLarge):
        http.read_json(_req(b'{"a":"' + b"x" * http.MAX_BODY_BYTES + b'"}'))


def test_field_types_are_strict():
    data = {"flag": "true", "n": True, "ids": "x"}
    with pytest.raises(errors.RequestError, match="'flag' must be true or false"):
        http.field(data, "flag", bool)
    with pytest.raises(errors.RequestError, match="'n' must be an integer"):
        http.field(data, "n", int)
    with pytest.raises(errors.RequestError, match="'missing' is required"):
        http.field(data, "missing", str, required=True)
    assert http.field({"n": 3}, "n", int) == 3


def test_guids_are_validated_and_normalised():
    assert http.guid("{F64EBA74-DACD-4854-A584-1834F68CFC3A}", "bcId") == "f64eba74-dacd-4854-a584-1834f68cfc3a"
    for bad in ("f64eba74dacd4854a5841834f68cfc3a", "' or 1 eq 1", 42, None, "f64eba74-dacd-4854-a584-1834f68cfc3g"):
        with pytest.raises(errors.RequestError) as info:
            http.guid(bad, "bcId")
        assert info.value.details == {"field": "bcId"}
    assert http.guid_list({"ids": ["F64EBA74-DACD-4854-A584-1834F68CFC3A", "f64eba74-dacd-4854-a584-1834f68cfc3a"]},
                          "ids") == ["f64eba74-dacd-4854-a584-1834f68cfc3a"]


@pytest.mark.parametrize("exc, status", [
    (errors.RequestError("x"), 400), (errors.NotFound("x"), 404), (errors.Conflict("x"), 409),
    (errors.Unprocessable("x"), 422), (http.PayloadTooLarge("x"), 413),
    (errors.ConfigurationError("BC_COMPANY_ID", "is not set"), 503),
    (errors.UpstreamThrottled("bc", "slow down", status=429, retry_after=2.5), 503),
    (errors.UpstreamUnavailable("dataverse", "down", status=503), 502),
    (errors.UpstreamValidation("bc", "bad", status=400, api_code="Application_DialogException"), 422),
])
def test_errors_map_to_status_and_json_body(exc, status):
    resp = http.error_response(exc)
    assert resp.status_code == status
    body = json.loads(resp.get_body())
    assert body["error"]["code"] == exc.code
    assert body["error"]["message"] == exc.message
    if isinstance(exc, errors.UpstreamThrottled):
        assert resp.headers["Retry-After"] == "3"


async def test_unexpected_exceptions_become_a_generic_500():
    @http.http_endpoint
    async def boom(req):
        raise RuntimeError("secret internals")

    resp = await boom(_req(b"{}"))
    assert resp.status_code == 500
    assert b"secret internals" not in resp.get_body()
