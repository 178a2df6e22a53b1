"""Bearer tokens for BC and Dataverse.

``TokenProvider`` is all the clients need: ``await provider.token(scope)``. Two implementations:

* ``StaticTokenProvider`` - the LOCAL_DEV_TOKEN case (emulators); ``Settings`` already refuses that token
  unless both service URLs are loopback.
* ``AzureIdentityTokenProvider`` - ``azure.identity.aio.DefaultAzureCredential`` (environment variables
  AZURE_TENANT_ID / AZURE_CLIENT_ID / AZURE_CLIENT_SECRET, or a managed identity), one token per scope cached
  until 5 minutes before it expires, one refresh per scope at a time.
"""
from __future__ import annotations

import asyncio
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

REFRESH_MARGIN_SECONDS = 300.0


@runtime_checkable
class TokenProvider(Protocol):
    async def token(self, scope: str) -> str:
        """A bearer token valid for ``scope`` (e.g. ``https://api.businesscentral.dynamics.com/.default``)."""
        ...


class StaticTokenProvider:
    """Always the same token (local emulators)."""

    def __init__(self, token: str):
        if not token:
            raise ValueError("empty token")
        self._token = token

    async def token(self, scope: str) -> str:
        return self._token

    def invalidate(self, scope: str) -> None:
        """Nothing to forget: a static token never changes."""

    async def aclose(self) -> None:
        return None


@dataclass
class _Cached:
    token: str
    expires_on: float


class AzureIdentityTokenProvider:
    """Tokens from an azure-identity async credential, cached per scope.

    ``credential`` defaults to ``DefaultAzureCredential()``, created at the first ``token()`` call (building a
    provider never reads the environment nor touches the network). A cached token is reused until
    ``refresh_margin`` seconds before ``expires_on``; concurrent callers of one scope share a single refresh
    (per-scope ``asyncio.Lock``, re-checked after acquiring it).

    Async credentials and locks belong to one event loop: the default credential and the locks are kept per
    running loop (Azure Functions uses one loop; tests use one per test). The token strings are shared.
    """

    def __init__(self, credential: Any = None, *, refresh_margin: float = REFRESH_MARGIN_SECONDS,
                 clock: Callable[[], float] = time.time):
        self._credential = credential
        self._margin = refresh_margin
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._per_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Any]]" = \
            weakref.WeakKeyDictionary()

    def _fresh(self, scope: str) -> str | None:
        cached = self._cache.get(scope)
        if cached and cached.expires_on - self._margin > self._clock():
            return cached.token
        return None

    def _loop_state(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        state = self._per_loop.get(loop)
        if state is None:
            state = self._per_loop[loop] = {"locks": {}, "credential": None}
        return state

    def _get_credential(self, state: dict[str, Any]) -> Any:
        if self._credential is not None:
            return self._credential
        if state["credential"] is None:
            from azure.identity.aio import DefaultAzureCredential

            state["credential"] = DefaultAzureCredential()
        return state["credential"]

    async def token(self, scope: str) -> str:
        token = self._fresh(scope)
        if token is not None:
            return token
        state = self._loop_state()
        lock = state["locks"].setdefault(scope, asyncio.Lock())
        async with lock:
            token = self._fresh(scope)
            if token is not None:
                return token
            access = await self._get_credential(state).get_token(scope)
            self._cache[scope] = _Cached(access.token, float(access.expires_on))
            return access.token

    def invalidate(self, scope: str) -> None:
        """Forget the cached token of ``scope`` (after a 401 the next call fetches a new one)."""
        self._cache.pop(scope, None)

    async def aclose(self) -> None:
        """Close the default credential this provider created on the running loop (not a credential passed in)."""
        state = self._per_loop.pop(asyncio.get_running_loop(), None)
        if state and state["credential"] is not None:
            await state["credential"].close()


_default_lock = threading.Lock()
_default_provider: AzureIdentityTokenProvider | None = None


def provider_from_settings(settings: Any) -> TokenProvider:
    """``StaticTokenProvider`` when ``settings.local_dev_token`` is set (loopback only, checked by Settings),
    else the process-wide ``AzureIdentityTokenProvider`` (one token cache for every client of the process)."""
    global _default_provider
    if getattr(settings, "local_dev_token", None):
        return StaticTokenProvider(settings.local_dev_token)
    with _default_lock:
        if _default_provider is None:
            _default_provider = AzureIdentityTokenProvider()
        return _default_provider
