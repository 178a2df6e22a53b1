"""BC and Dataverse clients against the recorded/documented payloads in the reference samples (httpx.MockTransport).

Each test serves a sample as the service's answer and checks what the client sends (URL, headers, body) and
what it makes of the answer (records, etags, ids, typed errors with the service's code and message).
"""
from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
import pytest

from sync import odata
from sync.adapters.auth import StaticTokenProvider
from sync.adapters.bc import BCClient, etag_of, parse_bc_batch_response, parse_bc_error
from sync.adapters.dataverse import (ODATA_HEADERS, DataverseClient, EntitySet, parse_batch_response,
                                     parse_multipart)
from sync.adapters.transport import BatchOp, RetryPolicy, Transport
from sync.errors import (UpstreamConcurrency, UpstreamError, UpstreamNotFound, UpstreamOutcomeUnknown,
                         UpstreamThrottled, UpstreamValidation)

SAMPLES = Path("/work/shared/reference/samples")
BC_BASE = "https://api.businesscentral.dynamics.com/v2.0/cronus/Production/api/v2.0"
CID = "3ab5c248-e72b-f011-9a4a-7c1e5275406f"
ORG = "https://contoso.crm4.dynamics.com"
DV_API = f"{ORG}/api/data/v9.2"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text(encoding="utf-8")


def sample_json(name: str):
    return json.loads(sample(name))


def dv_sample(name: str) -> str:
    return sample(name).replace("[Organization URI]", ORG)


class Server:
    """Records requests; answers with a function of the request (or a list of canned responses)."""

    def __init__(self, respond):
        self.calls: list[httpx.Request] = []
        self._respond = respond

    def __call__(self, request: httpx.Request):
        self.calls.append(request)
        if callable(self._respond):
            return self._respond(request)
        return self._respond.pop(0)


@pytest.fixture
async def clients():
    made: list[httpx.AsyncClient] = []
    sleeps: list[float] = []

    async def sleep(s):
        sleeps.append(s)

    def build(kind, respond, **kw):
        server = Server(respond)
        http = httpx.AsyncClient(transport=httpx.MockTransport(server))
        made.append(http)
        if kind == "bc":
            t = Transport("bc", tokens=StaticTokenProvider("t"), scope="bc", http=http, sleep=sleep,
                          error_parser=parse_bc_error, retry=RetryPolicy(max_attempts=4), concurrency=5)
            return BCClient(t, BC_BASE, CID, **kw), server
        t = Transport("dataverse", tokens=StaticTokenProvider("t"), scope="dv", http=http, sleep=sleep,
                      default_headers=ODATA_HEADERS, retry=RetryPolicy(max_attempts=4), concurrency=16,
                      dop_hint_header="x-ms-dop-hint")
        return DataverseClient(t, DV_API, **kw), server

    build.sleeps = sleeps  # type: ignore[attr-defined]
    yield build
    for c in made:
        await c.aclose()


def jresp(status, obj, headers=None):
    return httpx.Response(status, content=json.dumps(obj).encode(), headers={
        "Content-Type": "application/json; odata.metadata=minimal", **(headers or {})})


# ============================================ Business Central ==============================================
async def test_bc_get_customer_real_envelope(clients):
    body = sample_json("bc_customer_real_tenant.json")
    bc, server = clients("bc", [jresp(200, body)])
    rec = await bc.get("customers", body["id"].upper(), select=["id", "number", "displayName"])
    assert rec["number"] == "NA0007"
    assert etag_of(rec) == 'W/"JzE5OzY3MjczMjkxODU0MzQ2NTQ2MTcxOzAwOyc="'
    req = server.calls[0]
    assert str(req.url) == (f"{BC_BASE}/companies({CID})/customers({body['id']})"
                            "?$select=id,number,displayName")
    assert req.headers["Authorization"] == "Bearer t"


async def test_bc_companies_real_envelope(clients):
    bc, server = clients("bc", [jresp(200, sample_json("bc_companies_real.json"))])
    companies = await bc.companies()
    assert [c["name"] for c in companies] == ["My Company", "Rebel"]
    assert str(server.calls[0].url) == f"{BC_BASE}/companies"


async def test_bc_404_sample_is_typed_with_clean_message(clients):
    bc, server = clients("bc", [jresp(404, sample_json("bc_error_404_resource_not_found.json"))])
    with pytest.raises(UpstreamNotFound) as ei:
        await bc.get("customers", uuid.uuid4())
    e = ei.value
    assert e.api_code == "BadRequest_ResourceNotFound"
    assert e.message == "Resource not found for the segment 'customers'."
    assert e.api_message.endswith("CorrelationId:  3ffdbdbd-f677-40ad-b95b-3a778b9e786a.")
    assert e.details["correlationId"] == "3ffdbdbd-f677-40ad-b95b-3a778b9e786a"
    assert (e.service, e.status, e.method) == ("bc", 404, "GET")
    assert len(server.calls) == 1
    assert await clients("bc", [jresp(404, sample_json("bc_error_404_resource_not_found.json"))])[0] \
        .get_or_none("customers", uuid.uuid4()) is None


async def test_bc_missing_if_match_sample_is_validation_not_retried(clients):
    bc, server = clients("bc", [jresp(400, sample_json("bc_error_invalid_token.json"))])
    with pytest.raises(UpstreamValidation) as ei:
        await bc.update("customers", uuid.uuid4(), {"displayName": "x"}, etag="*")
    assert ei.value.api_code == "BadRequest_InvalidToken"
    assert ei.value.message.startswith("Could not validate the client concurrency token")
    assert len(server.calls) == 1


async def test_bc_409_entity_changed_is_concurrency_not_retried(clients):
    body = {"error": {"code": "Request_EntityChanged", "message": "Another user has already changed the record.  "
                      "CorrelationId:  0d2ab3f5-3e8e-4f0a-9a53-8d1d1c8c5e11."}}
    bc, server = clients("bc", [jresp(409, body)])
    with pytest.raises(UpstreamConcurrency) as ei:
        await bc.update("customers", uuid.uuid4(), {"displayName": "x"}, etag='W/"JzE4Ozg5Jw=="')
    assert ei.value.message == "Another user has already changed the record."
    assert ei.value.api_code == "Request_EntityChanged"
    assert len(server.calls) == 1
    assert server.calls[0].headers["If-Match"] == 'W/"JzE4Ozg5Jw=="'


async def test_bc_update_and_create_requests(clients):
    created = sample_json("bc_customer_real_tenant.json")
    patched = {**created, "displayName": "New", "@odata.etag": 'W/"JzIwOzE3ODcxNTEyNDMyNDk1ODQxODUyMTswMDsn"'}
    bc, server = clients("bc", [jresp(201, created, {"Location": f"{BC_BASE}/companies({CID})/customers({created['id']})"}),
                                jresp(200, patched), httpx.Response(204)])
    rec = await bc.create("customers", {"displayName": "Test Customer"})
    assert rec["id"] == created["id"]
    new = await bc.update("customers", rec["id"], {"displayName": "New"}, etag=etag_of(rec))
    assert etag_of(new) != etag_of(rec) and new["displayName"] == "New"
    assert await bc.delete("customers", rec["id"], etag_of(new)) is True
    post, patch, delete = server.calls
    assert post.method == "POST" and str(post.url) == f"{BC_BASE}/companies({CID})/customers"
    assert json.loads(post.content) == {"displayName": "Test Customer"}
    assert post.headers["Content-Type"] == "application/json"
    assert patch.headers["If-Match"] == etag_of(rec) and json.loads(patch.content) == {"displayName": "New"}
    assert delete.headers["If-Match"] == etag_of(new)
    with pytest.raises(ValueError):
        await bc.update("customers", rec["id"], {}, etag="")


async def test_bc_refuses_non_guid_ids_and_bad_entity_sets(clients):
    bc, server = clients("bc", [])
    with pytest.raises(ValueError):
        await bc.get("customers", "x) or (1 eq 1")
    with pytest.raises(ValueError):
        await bc.get("customers/../companies", uuid.uuid4())
    assert server.calls == []


async def test_bc_paging_follows_next_link_with_same_prefer(clients):
    page2 = f"{BC_BASE}/companies({CID})/customers?$filter=blocked%20eq%20'_x0020_'&$skiptoken=abc%27%27"

    def respond(req):
        if "$skiptoken" in str(req.url):
            return jresp(200, {"value": [{"id": "2"}]})
        return jresp(200, {"value": [{"id": "1"}], "@odata.nextLink": page2})

    bc, server = clients("bc", respond)
    pages = [p async for p in bc.iter_pages("customers", filter=odata.eq("blocked", "_x0020_"), page_size=1)]
    assert pages == [[{"id": "1"}], [{"id": "2"}]]
    assert str(server.calls[1].url) == page2
    assert [c.headers["Prefer"] for c in server.calls] == ["odata.maxpagesize=1"] * 2


def _ids_in_filter(req: httpx.Request, key: str) -> list[str]:
    query = urlsplit(str(req.url)).query
    flt = unquote(dict(p.split("=", 1) for p in query.split("&"))["$filter"])
    terms = flt.split(" or ")
    assert all(re.fullmatch(rf"{key} eq [0-9a-f-]{{36}}", t) for t in terms), flt
    return [t.split(" eq ")[1] for t in terms]


async def test_bc_get_many_chunks_by_url_length(clients):
    existing = {str(uuid.uuid4()) for _ in range(300)}

    def respond(req):
        assert len(str(req.url)) <= 2000
        ids = _ids_in_filter(req, "id")
        return jresp(200, {"value": [{"id": i, "n": 1} for i in ids if i in existing]})

    bc, server = clients("bc", respond, max_url_length=2000)
    wanted = list(existing) + [str(uuid.uuid4()) for _ in range(20)]
    got = await bc.get_many("customers", [w.upper() for w in wanted] + wanted[:5], select=["n"])
    assert set(got) == existing
    assert len(server.calls) > 2
    assert sum(len(_ids_in_filter(c, "id")) for c in server.calls) == 320  # each id asked once
    assert all("$select=id,n" in str(c.url) for c in server.calls)


async def test_bc_batch_real_response_sample_maps_results():
    data = sample_json("bc_batch_response_real.json")
    ops = [BatchOp.create("salesOrderLines", {"sequence": 40000}), BatchOp.create("salesOrderLines", {})]
    t = Transport("bc", tokens=StaticTokenProvider("t"), scope="s", error_parser=parse_bc_error)
    results = parse_bc_batch_response(data, ops, t)
    assert [r.status for r in results] == [201, 201]
    assert results[0].id == "32d80403-e236-f011-9a4a-7ced8d0ee6e7"
    assert results[0].etag == 'W/"JzE5OzIxMzk2MzA0ODM0ODgyMTU4MDgxOzAwOyc="'
    assert results[1].id == "33d80403-e236-f011-9a4a-7ced8d0ee6e7"
    assert all(r.ok for r in results)


async def test_bc_batch_doc_sample_with_failed_operation():
    text = "\n".join(line for line in sample("bc_batch_response.txt").splitlines() if "//" not in line)
    text = re.sub(r",(\s*})", r"\1", text)  # the elided body left a trailing comma
    data = json.loads(text)
    item = "7ce0af2e-0963-460f-9b1f-0014aea3e117"
    ops = [BatchOp.update("items", item, {"displayName": "Touring Bicycle v2"}),
           BatchOp.update("items", item, {"value": "Picture Blob"}),
           BatchOp.update("items", item, {"type": "Invalid Type"})]
    t = Transport("bc", tokens=StaticTokenProvider("t"), scope="s", error_parser=parse_bc_error)
    ok, no_content, failed = parse_bc_batch_response(data, ops, t)
    assert ok.ok and ok.status == 200 and ok.body["displayName"] == "Touring Bicycle v2" and ok.id == item
    assert no_content.ok and no_content.status == 204 and no_content.body is None
    assert not failed.ok and isinstance(failed.error, UpstreamValidation)
    assert failed.error.api_code == "Unknown"
    assert failed.error.message == ("'Invalid Type' is not an option. The existing options are: "
                                    "Inventory,Service,Non-Inventory")


async def test_bc_batch_splits_over_100_and_keeps_input_order(clients):
    def respond(req):
        payload = json.loads(req.content)
        assert req.headers["Content-Type"] == "application/json"
        assert str(req.url) == f"{BC_BASE}/$batch"
        assert len(payload["requests"]) <= 100
        out = []
        for r in reversed(payload["requests"]):  # answer out of order: ids must be used
            assert r["url"].startswith(f"companies({CID})/customers")
            if r["body"]["displayName"] == "bad":
                out.append({"id": r["id"], "status": 400, "headers": {}, "body": {"error": {
                    "code": "Application_DialogException", "message": "Bad.  CorrelationId:  x."}}})
            else:
                out.append({"id": r["id"], "status": 201, "headers": {}, "body": {
                    "id": str(uuid.uuid4()), "displayName": r["body"]["displayName"], "@odata.etag": "W/\"e\""}})
        return jresp(200, {"responses": out})

    bc, server = clients("bc", respond)
    names = [f"c{i}" if i != 150 else "bad" for i in range(250)]
    results = await bc.batch([BatchOp.create("customers", {"displayName": n}) for n in names])
    assert len(server.calls) == 3
    assert sorted(len(json.loads(c.content)["requests"]) for c in server.calls) == [50, 100, 100]
    assert [r.body["displayName"] if r.ok else "bad" for r in results] == names
    assert not results[150].ok and results[150].error.message == "Bad."
    assert bc.counters.operations == 250 and bc.counters.requests == 3


async def test_bc_batch_group_is_isolated_and_request_failure_is_per_op(clients):
    def respond(req):
        if req.headers.get("Isolation") == "snapshot":
            return httpx.Response(502)  # gateway: outcome unknown for a batch with a POST
        payload = json.loads(req.content)
        return jresp(200, {"responses": [{"id": r["id"], "status": 204, "headers": {}} for r in payload["requests"]]})

    bc, server = clients("bc", respond)
    g = str(uuid.uuid4())
    ops = [BatchOp.delete("customers", uuid.uuid4(), etag="*"),
           BatchOp.create("customers", {"displayName": "a"}, group="g1"),
           BatchOp.update("customers", g, {"displayName": "b"}, etag="*", group="g1")]
    results = await bc.batch(ops)
    assert results[0].ok and results[0].status == 204
    assert isinstance(results[1].error, UpstreamOutcomeUnknown) and results[2].error is results[1].error
    iso = [c for c in server.calls if c.headers.get("Isolation") == "snapshot"]
    assert len(iso) == 1 and len(json.loads(iso[0].content)["requests"]) == 2
    with pytest.raises(ValueError):
        await bc.batch([BatchOp.update("customers", g, {}, etag=None)])
    with pytest.raises(ValueError):
        await bc.batch([BatchOp.create("customers", {}, id=g)])


# ================================================ Dataverse ================================================
async def test_dv_get_sample_and_odata_headers(clients):
    body = json.loads(dv_sample("dataverse_account_retrieve.json"))
    dv, server = clients("dv", [jresp(200, body, {"ETag": 'W/"502186"'})])
    rec = await dv.get("accounts", body["accountid"], select=["name", "revenue"])
    assert rec["name"] == "A. Datum Corporation (sample)" and etag_of(rec) == 'W/"502186"'
    req = server.calls[0]
    assert str(req.url) == f"{DV_API}/accounts({body['accountid']})?$select=name,revenue"
    for k, v in {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0",
                 "If-None-Match": "null"}.items():
        assert req.headers[k] == v


async def test_dv_create_reads_id_from_odata_entity_id(clients):
    new = "7d716234-9628-ed11-9db1-000d3a320482"
    dv, server = clients("dv", [httpx.Response(204, headers={"OData-EntityId": f"{DV_API}/accounts({new})"})])
    assert await dv.create("accounts", {"name": "x"}) == {"accountid": new}
    assert "Prefer" not in server.calls[0].headers


async def test_dv_create_with_chosen_id_and_representation(clients):
    body = json.loads(dv_sample("dataverse_account_create_return_representation.json"))
    dv, server = clients("dv", [jresp(201, body, {"Preference-Applied": "return=representation"})])
    chosen = uuid.UUID(body["accountid"])
    rec = await dv.create("accounts", {"name": "Sample Account"}, id=chosen, return_representation=True,
                          select=["name", "revenue"])
    assert rec["revenue"] == 5000000.0 and etag_of(rec) == 'W/"536530"'
    req = server.calls[0]
    assert json.loads(req.content) == {"name": "Sample Account", "accountid": str(chosen)}
    assert req.headers["Prefer"] == "return=representation"
    assert str(req.url) == f"{DV_API}/accounts?$select=name,revenue"


async def test_dv_update_is_never_an_upsert(clients):
    dv, server = clients("dv", [httpx.Response(204), httpx.Response(204), httpx.Response(204)])
    assert await dv.update("accounts", uuid.uuid4(), {"name": "x"}) is None
    await dv.update("accounts", uuid.uuid4(), {"name": "x"}, etag='W/"5"')
    await dv.upsert("accounts", uuid.uuid4(), {"name": "x"})
    assert server.calls[0].headers["If-Match"] == "*"
    assert server.calls[1].headers["If-Match"] == 'W/"5"'
    assert "If-Match" not in server.calls[2].headers


@pytest.mark.parametrize("name, status, cls, code, message", [
    ("dataverse_error_412_concurrency.json", 412, UpstreamConcurrency, None,
     "The version of the existing record doesn't match the RowVersion property provided."),
    ("dataverse_error_412_duplicate_ifnonematch.json", 412, UpstreamConcurrency, None,
     "A record with matching key values already exists."),
    ("dataverse_error_404_upsert_ifmatch.json", 404, UpstreamNotFound, None,
     "account With Id = 00000000-0000-0000-0000-000000000001 Does Not Exist"),
])
async def test_dv_error_samples_are_typed_and_not_retried(clients, name, status, cls, code, message):
    dv, server = clients("dv", [httpx.Response(status, content=sample(name).encode(),
                                               headers={"Content-Type": "application/json"})])
    with pytest.raises(cls) as ei:
        await dv.update("accounts", uuid.uuid4(), {"name": "x"}, etag='W/"1"')
    assert (ei.value.status, ei.value.api_code, ei.value.message) == (status, code, message)
    assert len(server.calls) == 1


async def test_dv_plugin_error_sample_even_malformed(clients):
    raw = sample("dataverse_error_400_plugin_annotations.txt")
    body = raw.split("\n", 2)[2]  # drop the status line and Content-Type line of the capture
    dv, server = clients("dv", [httpx.Response(400, content=body.encode())])
    with pytest.raises(UpstreamValidation) as ei:
        await dv.create("accounts", {"name": "x"})
    assert (ei.value.api_code, ei.value.message) == ("0x80040265", "Example Error Message.")


async def test_dv_429_sample_is_ridden_out_then_budget(clients):
    throttled = sample_json("dataverse_error_429.json")
    dv, server = clients("dv", [jresp(429, throttled, {"Retry-After": "0.2"})] * 2 + [jresp(200, {"value": []})])
    assert await dv.list_all("accounts") == []
    assert clients.sleeps == [0.2, 0.2]
    dv2, _ = clients("dv", lambda req: jresp(429, throttled, {"Retry-After": "0.05"}))
    with pytest.raises(UpstreamThrottled) as ei:
        await dv2.list_all("accounts")
    assert ei.value.api_code == "0x80072326" and ei.value.retry_after == 0.05
    assert ei.value.message == "Number of concurrent requests exceeded the limit of 100."


async def test_dv_paging_sample_next_link_unchanged(clients):
    page1 = json.loads(dv_sample("dataverse_contacts_page1.json"))
    next_link = page1["@odata.nextLink"]

    def respond(req):
        if str(req.url) == next_link:
            return jresp(200, {"value": [{"contactid": str(uuid.uuid4()), "fullname": "Last"}]})
        return jresp(200, page1)

    dv, server = clients("dv", respond)
    rows = await dv.list_all("contacts", select=["fullname"], page_size=2, annotations=True)
    assert [r["fullname"] for r in rows] == ["Yvonne McKay (sample)", "Susanna Stubberod (sample)", "Last"]
    assert str(server.calls[1].url) == next_link  # no re-encoding of the paging cookie
    prefer = 'odata.maxpagesize=2,odata.include-annotations="*"'
    assert [c.headers["Prefer"] for c in server.calls] == [prefer, prefer]


async def test_dv_entity_set_knowledge(clients):
    dv, _ = clients("dv", [])
    assert dv.primary_key("transactioncurrencies") == "transactioncurrencyid"
    assert dv.primary_key("uomschedules") == "uomscheduleid"
    assert dv.logical_name("contacts") == "contact"
    assert dv.entity_set_of("uom") == "uoms"
    assert dv.bind("systemusers", uuid.UUID(int=1)) == "/systemusers(00000000-0000-0000-0000-000000000001)"
    with pytest.raises(ValueError):
        dv.primary_key("tasks")


async def test_dv_batch_sample_response_maps_changeset_and_get():
    """The documented response: a changeset of two creates (Content-ID 1, 2) and one GET."""
    t = Transport("dataverse", tokens=StaticTokenProvider("t"), scope="s")
    dv = DataverseClient(t, f"{ORG}/api/data/v9.1",
                         entity_sets={"tasks": EntitySet("tasks", "task", "activityid", "subject")})
    ops = [BatchOp.create("tasks", {"subject": "Task 1 in batch"}, group="cs"),
           BatchOp.create("tasks", {"subject": "Task 2 in batch"}, group="cs"),
           BatchOp("GET", "tasks")]
    units = [([0, 1], True), ([2], False)]
    text = dv_sample("dataverse_batch_response.txt")
    ctype = "multipart/mixed; boundary=batchresponse_c1bd45c1-dd81-470d-b897-e965846aad2f"
    results = dict(parse_batch_response(ctype, text.encode(), ops, units, dv))
    assert results[0].status == 204 and results[0].id == "a59c24f3-fafc-e411-80dd-00155d2a68cb"
    assert results[1].status == 204 and results[1].id == "a69c24f3-fafc-e411-80dd-00155d2a68cb"
    assert results[2].status == 200 and len(results[2].body["value"]) == 6


def dv_batch_server(fail_changeset_containing: str | None = None, fail_single: str | None = None):
    """A miniature Dataverse $batch endpoint over the client's own multipart (parsed with the module's parser)."""
    def respond(req: httpx.Request):
        assert req.headers["Prefer"] == "odata.continue-on-error"
        parts = parse_multipart(req.headers["Content-Type"], req.content)
        rb = f"batchresponse_{uuid.uuid4()}"
        out = []

        def answer(http_text: str) -> str:
            head, _, body = http_text.partition("\r\n\r\n")
            method, url, _ = head.split("\r\n")[0].split(" ")
            data = json.loads(body) if body.strip() else {}
            if fail_single and data.get("name") == fail_single:
                e = json.dumps({"error": {"code": "0x80040237", "message": "Cannot insert duplicate key."}})
                return f"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n\r\n{e}"
            new = data.get("accountid") or str(uuid.uuid4())
            return f"HTTP/1.1 204 No Content\r\nOData-EntityId: {DV_API}/accounts({new})\r\n\r\n"

        n_ops = 0
        for headers, content in parts:
            if "multipart/mixed" in headers["content-type"]:
                inner = parse_multipart(headers["content-type"], content)
                n_ops += len(inner)
                if fail_changeset_containing and fail_changeset_containing in content:
                    e = json.dumps({"error": {"code": "0x80040265", "message": "Plug-in said no."}})
                    out.append(f"--{rb}\r\nContent-Type: application/http\r\n\r\n"
                               f"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n\r\n{e}\r\n")
                    continue
                cs = f"changesetresponse_{uuid.uuid4()}"
                chunk = f"--{rb}\r\nContent-Type: multipart/mixed; boundary={cs}\r\n\r\n"
                for h, c in inner:
                    assert h["content-id"]
                    chunk += (f"--{cs}\r\nContent-Type: application/http\r\nContent-ID: {h['content-id']}\r\n\r\n"
                              f"{answer(c)}\r\n")
                out.append(chunk + f"--{cs}--\r\n")
            else:
                n_ops += 1
                out.append(f"--{rb}\r\nContent-Type: application/http\r\n\r\n{answer(content)}\r\n")
        assert n_ops <= 1000
        body = "".join(out) + f"--{rb}--\r\n"
        return httpx.Response(200, content=body.encode(), headers={"Content-Type": f"multipart/mixed; boundary={rb}"})
    return respond


async def test_dv_batch_splits_over_1000_in_input_order(clients):
    dv, server = clients("dv", dv_batch_server(fail_single="dup"))
    ids = [str(uuid.uuid4()) for _ in range(2100)]
    ops = [BatchOp.create("accounts", {"name": "dup" if i == 1500 else f"a{i}"}, id=ids[i]) for i in range(2100)]
    results = await dv.batch(ops)
    assert len(server.calls) == 3
    assert [r.id for r in results] == ids
    assert [r.ok for r in results].count(False) == 1
    failed = results[1500]
    assert isinstance(failed.error, UpstreamValidation) and failed.error.api_code == "0x80040237"
    assert dv.counters.operations == 2100


async def test_dv_changeset_failure_is_surfaced_on_every_op_of_the_group(clients):
    dv, server = clients("dv", dv_batch_server(fail_changeset_containing="poison"))
    ops = [BatchOp.create("accounts", {"name": "solo"}),
           BatchOp.create("accounts", {"name": "ok1"}, group="A"),
           BatchOp.update("accounts", uuid.uuid4(), {"name": "ok2"}, group="A"),
           BatchOp.create("accounts", {"name": "x"}, group="B"),
           BatchOp.create("accounts", {"name": "poison"}, group="B")]
    results = await dv.batch(ops)
    assert len(server.calls) == 1
    assert [r.ok for r in results] == [True, True, True, False, False]
    for r in results[3:]:
        assert r.status == 400 and r.error.api_code == "0x80040265" and r.error.details["rolledBack"] is True
    with pytest.raises(ValueError):
        await dv.batch([BatchOp("GET", "accounts", id=uuid.uuid4(), group="g")])


async def test_dv_batch_lost_answer_is_per_op_outcome_unknown(clients):
    def respond(req):
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    dv, server = clients("dv", respond)
    results = await dv.batch([BatchOp.create("accounts", {"name": "a"}), BatchOp.delete("accounts", uuid.uuid4())])
    assert len(server.calls) == 1
    assert all(isinstance(r.error, UpstreamOutcomeUnknown) for r in results)
    # a batch of reads and idempotent writes is retried instead
    calls = []

    def flaky(req):
        calls.append(req)
        if len(calls) == 1:
            raise httpx.RemoteProtocolError("Server disconnected")
        return dv_batch_server()(req)

    dv2, _ = clients("dv", flaky)
    results = await dv2.batch([BatchOp.update("accounts", uuid.uuid4(), {"name": "a"})])
    assert results[0].ok and len(calls) == 2


async def test_dv_missing_parts_are_errors_not_exceptions(clients):
    rb = "batchresponse_x"

    def respond(req):
        body = (f"--{rb}\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 204 No Content\r\n"
                f"OData-EntityId: {DV_API}/accounts({uuid.UUID(int=5)})\r\n\r\n\r\n--{rb}--\r\n")
        return httpx.Response(200, content=body.encode(), headers={"Content-Type": f"multipart/mixed; boundary={rb}"})

    dv, _ = clients("dv", respond)
    results = await dv.batch([BatchOp.create("accounts", {"name": "a"}), BatchOp.create("accounts", {"name": "b"})])
    assert results[0].ok and results[0].id == str(uuid.UUID(int=5))
    assert type(results[1].error) is UpstreamError
