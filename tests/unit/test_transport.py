"""Transport (retries, typed errors, limits, counters, shared client) and auth (token cache), without network.

Sleeps are recorded by a fake ``sleep`` instead of waited, so the waits the transport chooses are asserted
exactly and the tests stay instant.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
from types import SimpleNamespace

import httpx
import pytest
from azure.core.credentials import AccessToken

from sync.adapters import auth as auth_mod
from sync.adapters.auth import AzureIdentityTokenProvider, StaticTokenProvider, provider_from_settings
from sync.adapters.transport import (Counters, Limiter, RetryPolicy, Transport, aclose_http_client,
                                     get_http_client, id_chunks, parse_error_body, parse_retry_after)
from sync.errors import (UpstreamConcurrency, UpstreamNotFound, UpstreamOutcomeUnknown, UpstreamThrottled,
                         UpstreamUnauthorized, UpstreamUnavailable, UpstreamValidation)

URL = "https://example.test/api/data/v9.2/accounts"
NOW = 1_800_000_000.0


class Recorder:
    def __init__(self):
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


@pytest.fixture
async def make():
    clients: list[httpx.AsyncClient] = []

    def factory(handler, *, retry=None, concurrency=8, rng=lambda: 1.0, tokens=None, **kw):
        rec = Recorder()
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        clients.append(http)
        t = Transport("dataverse", tokens=tokens or StaticTokenProvider("tok"), scope="scope/.default", http=http,
                      retry=retry or RetryPolicy(), concurrency=concurrency, sleep=rec.sleep, rng=rng,
                      clock=lambda: NOW, **kw)
        return t, rec

    yield factory
    for c in clients:
        await c.aclose()


def sequence(*responses):
    """A handler answering the given responses (or raising the given exceptions) in turn; records requests."""
    calls: list[httpx.Request] = []
    items = list(responses)

    def handler(request: httpx.Request):
        calls.append(request)
        item = items.pop(0) if len(items) > 1 else items[0]
        if isinstance(item, Exception):
            raise item
        return item

    handler.calls = calls  # type: ignore[attr-defined]
    return handler


def err(status, code="0x0", message="m", headers=None):
    return httpx.Response(status, json={"error": {"code": code, "message": message}}, headers=headers or {})


OK = httpx.Response(200, json={"value": []})


# --- retries ------------------------------------------------------------------------------------------------
async def test_429_storm_with_retry_after_is_ridden_out(make):
    handler = sequence(*[err(429, "0x80072322", headers={"Retry-After": "0.25"})] * 4, OK)
    t, rec = make(handler)
    resp = await t.request("GET", URL)
    assert resp.status_code == 200
    assert rec.sleeps == [0.25] * 4  # Retry-After honoured exactly, no jitter added
    assert len(handler.calls) == 5
    assert t.counters.snapshot() == {"requests": 5, "operations": 5, "retries": 4, "throttled": 4, "errors": 0}


async def test_retry_after_http_date(make):
    when = email.utils.formatdate(NOW + 7, usegmt=True)
    handler = sequence(err(503, headers={"Retry-After": when}), OK)
    t, rec = make(handler)
    await t.request("GET", URL)
    assert rec.sleeps == [7.0]


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.05") == 0.05
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-4") == 0.0
    past = email.utils.formatdate(NOW - 60, usegmt=True)
    assert parse_retry_after(past, lambda: NOW) == 0.0


async def test_spent_budget_ends_in_throttled_with_retry_after(make):
    handler = sequence(err(429, "0x80072322", "Number of requests exceeded", {"Retry-After": "1"}))
    t, rec = make(handler, retry=RetryPolicy(max_attempts=10, max_total_wait=2.5))
    with pytest.raises(UpstreamThrottled) as ei:
        await t.request("GET", URL)
    assert rec.sleeps == [1.0, 1.0]  # a third wait would exceed 2.5 s
    assert len(handler.calls) == 3
    e = ei.value
    assert (e.retry_after, e.status, e.api_code, e.service) == (1.0, 429, "0x80072322", "dataverse")
    assert e.message == "Number of requests exceeded"
    assert t.counters.errors == 1


async def test_retry_after_beyond_budget_gives_up_at_once(make):
    handler = sequence(err(429, headers={"Retry-After": "300"}))
    t, rec = make(handler, retry=RetryPolicy(max_total_wait=120))
    with pytest.raises(UpstreamThrottled) as ei:
        await t.request("GET", URL)
    assert rec.sleeps == [] and len(handler.calls) == 1
    assert ei.value.retry_after == 300


async def test_max_attempts_ends_in_unavailable(make):
    handler = sequence(err(502))
    t, rec = make(handler, retry=RetryPolicy(max_attempts=3, base_delay=0.1, max_delay=10))
    with pytest.raises(UpstreamUnavailable) as ei:
        await t.request("GET", URL)
    assert len(handler.calls) == 3
    assert rec.sleeps == [0.1, 0.2]  # rng()=1.0: the top of the full-jitter range, doubling
    assert ei.value.status == 502


async def test_503_with_retry_after_spent_is_throttled(make):
    handler = sequence(err(503, headers={"Retry-After": "0.5"}))
    t, _ = make(handler, retry=RetryPolicy(max_attempts=2))
    with pytest.raises(UpstreamThrottled):
        await t.request("GET", URL)


async def test_full_jitter_backoff(make):
    handler = sequence(err(504), err(504), err(504), err(504), OK)
    t, rec = make(handler, rng=lambda: 0.5, retry=RetryPolicy(base_delay=1.0, max_delay=3.0))
    await t.request("GET", URL)
    assert rec.sleeps == [0.5, 1.0, 1.5, 1.5]  # 0.5 * min(3, 1, 2, 4, 8)


@pytest.mark.parametrize("status, cls", [
    (400, UpstreamValidation), (401, UpstreamUnauthorized), (403, UpstreamUnauthorized), (404, UpstreamNotFound),
    (409, UpstreamConcurrency), (412, UpstreamConcurrency), (422, UpstreamValidation)])
@pytest.mark.parametrize("method", ["GET", "POST", "PATCH", "DELETE"])
async def test_client_errors_are_never_retried(make, status, cls, method):
    handler = sequence(err(status, "Code_X", "Nope."))
    t, rec = make(handler)
    with pytest.raises(cls) as ei:
        await t.request(method, URL, json={} if method in ("POST", "PATCH") else None)
    assert len(handler.calls) == 1 and rec.sleeps == []
    assert (ei.value.status, ei.value.api_code, ei.value.api_message, ei.value.method) == \
        (status, "Code_X", "Nope.", method)


async def test_401_drops_the_cached_token(make):
    class Tokens(StaticTokenProvider):
        invalidated: list[str] = []

        def invalidate(self, scope):
            self.invalidated.append(scope)

    tokens = Tokens("t")
    t, _ = make(sequence(err(401)), tokens=tokens)
    with pytest.raises(UpstreamUnauthorized):
        await t.request("GET", URL)
    assert tokens.invalidated == ["scope/.default"]


# --- connection failures and idempotency --------------------------------------------------------------------
@pytest.mark.parametrize("exc", [httpx.ReadError("reset"), httpx.RemoteProtocolError("Server disconnected"),
                                 httpx.ReadTimeout("slow"), httpx.WriteError("broken pipe")])
async def test_lost_answer_to_post_is_not_replayed(make, exc):
    handler = sequence(exc, httpx.Response(201, json={}))
    t, rec = make(handler)
    with pytest.raises(UpstreamOutcomeUnknown) as ei:
        await t.request("POST", URL, json={"name": "x"})
    assert len(handler.calls) == 1 and rec.sleeps == []
    assert ei.value.status is None and ei.value.method == "POST"


async def test_gateway_error_on_post_is_outcome_unknown(make):
    handler = sequence(err(504), httpx.Response(201, json={}))
    t, _ = make(handler)
    with pytest.raises(UpstreamOutcomeUnknown) as ei:
        await t.request("POST", URL, json={})
    assert len(handler.calls) == 1 and ei.value.status == 504


async def test_throttled_post_is_retried(make):
    """429/503 mean "not processed": a POST may be sent again."""
    handler = sequence(err(429, headers={"Retry-After": "0.01"}), err(503), httpx.Response(201, json={"id": 1}))
    t, _ = make(handler)
    resp = await t.request("POST", URL, json={})
    assert resp.status_code == 201 and len(handler.calls) == 3


@pytest.mark.parametrize("exc", [httpx.ConnectError("refused"), httpx.ConnectTimeout("syn"),
                                 httpx.PoolTimeout("pool")])
async def test_connect_errors_are_retried_even_for_post(make, exc):
    handler = sequence(exc, exc, httpx.Response(201, json={}))
    t, rec = make(handler)
    resp = await t.request("POST", URL, json={})
    assert resp.status_code == 201 and len(handler.calls) == 3 and len(rec.sleeps) == 2


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
async def test_lost_answer_to_idempotent_request_is_retried(make, method):
    handler = sequence(httpx.RemoteProtocolError("Server disconnected"), httpx.ReadTimeout("slow"), OK)
    t, _ = make(handler)
    resp = await t.request(method, URL, headers={"If-Match": "*"})
    assert resp.status_code == 200 and len(handler.calls) == 3


async def test_explicit_idempotent_flag_overrides_method(make):
    handler = sequence(httpx.ReadError("reset"), OK)
    t, _ = make(handler)
    assert (await t.request("POST", URL, content=b"x", idempotent=True)).status_code == 200
    handler2 = sequence(httpx.ReadError("reset"), OK)
    t2, _ = make(handler2)
    with pytest.raises(UpstreamOutcomeUnknown):
        await t2.request("GET", URL, idempotent=False)


async def test_connection_failures_past_budget_are_unavailable(make):
    handler = sequence(httpx.ConnectError("refused"))
    t, _ = make(handler, retry=RetryPolicy(max_attempts=2))
    with pytest.raises(UpstreamUnavailable) as ei:
        await t.request("GET", URL)
    assert ei.value.status is None and len(handler.calls) == 2


# --- requests as sent ---------------------------------------------------------------------------------------
async def test_headers_token_query_and_json(make):
    handler = sequence(OK)
    t, _ = make(handler, default_headers={"OData-Version": "4.0", "Accept": "application/json"})
    await t.request("POST", URL, params={"$filter": "name eq 'a b'", "$select": None}, json={"name": "é"},
                    headers={"Prefer": "return=representation"})
    req = handler.calls[0]
    assert req.headers["Authorization"] == "Bearer tok"
    assert req.headers["OData-Version"] == "4.0"
    assert req.headers["Prefer"] == "return=representation"
    assert req.headers["Content-Type"] == "application/json"
    assert str(req.url) == URL + "?$filter=name%20eq%20'a%20b'"
    assert json.loads(req.content) == {"name": "é"}


async def test_pages_follow_next_link_unchanged_with_same_headers(make):
    next_link = "https://example.test/api/data/v9.2/accounts?$select=name&$skiptoken=%3Ccookie%20p=%222%22%20/%3E"
    handler = sequence(httpx.Response(200, json={"value": [{"n": 1}], "@odata.nextLink": next_link}),
                       httpx.Response(200, json={"value": [{"n": 2}]}))
    t, _ = make(handler)
    pages = [p async for p in t.pages(URL, params={"$select": "name"},
                                      headers={"Prefer": "odata.maxpagesize=1"})]
    assert pages == [[{"n": 1}], [{"n": 2}]]
    assert str(handler.calls[1].url) == next_link
    assert [c.headers["Prefer"] for c in handler.calls] == ["odata.maxpagesize=1"] * 2


async def test_next_link_to_another_origin_is_refused(make):
    handler = sequence(httpx.Response(200, json={"value": [], "@odata.nextLink": "https://evil.test/x"}))
    t, _ = make(handler)
    with pytest.raises(UpstreamValidation):
        async for _ in t.pages(URL):
            pass
    assert len(handler.calls) == 1


# --- concurrency --------------------------------------------------------------------------------------------
async def test_concurrency_limit_bounds_requests_in_flight(make):
    state = {"now": 0, "peak": 0}

    async def handler(request):
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.001)
        state["now"] -= 1
        return httpx.Response(200, json={})

    t, _ = make(handler, concurrency=3)
    await asyncio.gather(*(t.request("GET", URL) for _ in range(20)))
    assert state["peak"] == 3
    assert t.limiter.peak == 3 and t.limiter.in_use == 0


async def test_dop_hint_lowers_the_limit_never_above_configured(make):
    handler = sequence(httpx.Response(200, json={}, headers={"x-ms-dop-hint": "2"}),
                       httpx.Response(200, json={}, headers={"x-ms-dop-hint": "50"}))
    t, _ = make(handler, concurrency=16, dop_hint_header="x-ms-dop-hint")
    await t.request("GET", URL)
    assert t.limiter.limit == 2
    await t.request("GET", URL)
    assert t.limiter.limit == 16


async def test_limiter_slot_is_released_on_errors():
    limiter = Limiter(1)
    with pytest.raises(RuntimeError):
        async with limiter:
            raise RuntimeError("x")
    async with limiter:
        assert limiter.in_use == 1
    assert limiter.in_use == 0
    with pytest.raises(ValueError):
        Limiter(0)


def test_counters_reset():
    c = Counters(requests=3, operations=5, retries=1, throttled=1, errors=1)
    c.reset()
    assert c.snapshot() == {"requests": 0, "operations": 0, "retries": 0, "throttled": 0, "errors": 0}


def test_id_chunks_respect_url_limit():
    from sync import odata
    from sync.odata import Guid

    url = "https://example.test/api/data/v9.2/accounts?$select=accountid,name"
    ids = [Guid(f"00000000-0000-0000-0000-{i:012d}") for i in range(500)]
    chunks = id_chunks(url, "accountid", ids, 2000)
    assert sum(len(c) for c in chunks) == 500 and len(chunks) > 1
    for chunk in chunks:
        full = Transport.with_query(url, {"$filter": odata.any_of("accountid", chunk)})
        assert len(full) <= 2000
    # a chunk one id larger would not fit: the split is tight, not wasteful
    bigger = chunks[0] + [chunks[1][0]]
    assert len(Transport.with_query(url, {"$filter": odata.any_of("accountid", bigger)})) > 2000


# --- error bodies -------------------------------------------------------------------------------------------
def test_parse_error_body_shapes():
    info = parse_error_body(b'{"error":{"code":"0x80040217","message":"account With Id = x Does Not Exist"}}')
    assert (info.code, info.message) == ("0x80040217", "account With Id = x Does Not Exist")
    assert parse_error_body(b"").code is None
    html = parse_error_body(b"<html>Bad Gateway</html>")
    assert html.code is None and html.message == "<html>Bad Gateway</html>"
    broken = parse_error_body('{"error": {"code": "0x80040265", "message": "Say \\"hi\\"." "x": 1}}')
    assert (broken.code, broken.message) == ("0x80040265", 'Say "hi".')
    assert parse_error_body({"value": []}).code is None


# --- shared client ------------------------------------------------------------------------------------------
async def test_shared_client_is_per_loop_and_closable():
    first = get_http_client()
    assert get_http_client() is first

    def other_loop():
        async def body():
            client = get_http_client()
            await aclose_http_client()
            return id(client), client.is_closed
        return asyncio.run(body())

    other_id, other_closed = await asyncio.to_thread(other_loop)
    assert other_id != id(first) and other_closed
    await aclose_http_client()
    assert first.is_closed
    second = get_http_client()
    assert second is not first
    await aclose_http_client()


async def test_transport_without_client_uses_the_shared_one():
    t = Transport("bc", tokens=StaticTokenProvider("x"), scope="s")
    try:
        assert t.http is get_http_client()
    finally:
        await aclose_http_client()


# --- auth ---------------------------------------------------------------------------------------------------
class FakeCredential:
    def __init__(self, lifetime=3600.0, clock=None):
        self.calls: list[str] = []
        self.lifetime = lifetime
        self.clock = clock
        self.closed = False

    async def get_token(self, scope):
        self.calls.append(scope)
        name = f"token-{len(self.calls)}"
        await asyncio.sleep(0.001)  # let concurrent callers pile up
        return AccessToken(name, int(self.clock() + self.lifetime))

    async def close(self):
        self.closed = True


async def test_token_cache_until_five_minutes_before_expiry():
    now = [NOW]
    cred = FakeCredential(lifetime=3600, clock=lambda: now[0])
    p = AzureIdentityTokenProvider(cred, clock=lambda: now[0])
    assert await p.token("bc/.default") == "token-1"
    now[0] += 3600 - 301
    assert await p.token("bc/.default") == "token-1"
    now[0] += 2  # now within the last 5 minutes
    assert await p.token("bc/.default") == "token-2"
    assert cred.calls == ["bc/.default", "bc/.default"]


async def test_token_cache_is_per_scope_and_refreshes_once_for_concurrent_callers():
    cred = FakeCredential(clock=lambda: NOW)
    p = AzureIdentityTokenProvider(cred, clock=lambda: NOW)
    tokens = await asyncio.gather(*(p.token("bc/.default") for _ in range(10)),
                                  *(p.token("dv/.default") for _ in range(10)))
    assert sorted(cred.calls) == ["bc/.default", "dv/.default"]
    assert len(set(tokens[:10])) == 1 and len(set(tokens[10:])) == 1 and tokens[0] != tokens[10]


async def test_token_invalidate_forces_a_new_token():
    cred = FakeCredential(clock=lambda: NOW)
    p = AzureIdentityTokenProvider(cred, clock=lambda: NOW)
    await p.token("s")
    p.invalidate("s")
    assert await p.token("s") == "token-2"


async def test_default_credential_is_created_lazily_and_closed(monkeypatch):
    created: list[FakeCredential] = []

    def factory():
        c = FakeCredential(clock=lambda: NOW)
        created.append(c)
        return c

    import azure.identity.aio

    monkeypatch.setattr(azure.identity.aio, "DefaultAzureCredential", factory)
    p = AzureIdentityTokenProvider(clock=lambda: NOW)
    assert created == []
    assert await p.token("s") == "token-1"
    await p.aclose()
    assert len(created) == 1 and created[0].closed


def test_provider_from_settings(monkeypatch):
    monkeypatch.setattr(auth_mod, "_default_provider", None)
    static = provider_from_settings(SimpleNamespace(local_dev_token="dev"))
    assert isinstance(static, StaticTokenProvider)
    real = provider_from_settings(SimpleNamespace(local_dev_token=None))
    assert isinstance(real, AzureIdentityTokenProvider)
    assert provider_from_settings(SimpleNamespace(local_dev_token=None)) is real  # one cache per process


async def test_static_provider():
    assert await StaticTokenProvider("abc").token("any") == "abc"
    with pytest.raises(ValueError):
        StaticTokenProvider("")


async def test_credential_failure_is_unauthorized_without_a_request(make):
    from azure.core.exceptions import ClientAuthenticationError

    class NoCredential:
        async def get_token(self, scope):
            raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")

    handler = sequence(OK)
    t, _ = make(handler, tokens=AzureIdentityTokenProvider(NoCredential()))
    with pytest.raises(UpstreamUnauthorized) as ei:
        await t.request("GET", URL)
    assert "could not get a token for scope/.default" in ei.value.message
    assert handler.calls == []


async def test_caller_headers_replace_defaults_case_insensitively(make):
    handler = sequence(OK)
    t, _ = make(handler, default_headers={"If-None-Match": "null", "Accept": "application/json"})
    await t.request("PATCH", URL, json={}, headers={"if-none-match": "*"})
    assert handler.calls[0].headers.get_list("If-None-Match") == ["*"]
