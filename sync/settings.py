"""App settings, read once into one typed object.

Never read at import time: a missing setting read while ``function_app.py`` is imported makes the Functions
host hide every function. ``get_settings()`` reads the environment at first use and names any wrong setting.
"""
from __future__ import annotations

import ipaddress
import os
import re
import threading
import uuid
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import urlsplit

from .errors import ConfigurationError

DEFAULT_SCHEDULE = "0 */30 * * * *"  # every 30 minutes, like BC's job queue entries
BC_SCOPE = "https://api.businesscentral.dynamics.com/.default"

_BC_BASE_RE = re.compile(r"/api/v2\.0/?$")


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url(env: Mapping[str, str], name: str, *, required: bool = True, query_allowed: bool = False) -> str:
    value = (env.get(name) or "").strip()
    if not value:
        if required:
            raise ConfigurationError(name, "is not set")
        return ""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(name, f"must be an absolute http(s) URL, got {value!r}")
    if (parts.query and not query_allowed) or parts.fragment:
        raise ConfigurationError(name, "must not carry a query string or fragment")
    if parts.scheme == "http" and not _is_loopback(value):
        raise ConfigurationError(name, "must use https (plain http is only accepted for loopback emulators)")
    return value.rstrip("/")


@dataclass(frozen=True)
class Settings:
    bc_api_base_url: str
    """``https://api.businesscentral.dynamics.com/v2.0/{tenant}/{environment}/api/v2.0``"""
    bc_company_id: str
    dataverse_url: str
    """``https://{org}.crm.dynamics.com`` (no ``/api/data/v9.2``)."""
    storage_connection: str
    sync_schedule: str = DEFAULT_SCHEDULE
    local_dev_token: str | None = None
    dataverse_webhook_secret: str | None = None
    bc_webhook_url: str | None = None
    """The receiver URL BC's webhook subscriptions call (with ``?code=<key>``); optional."""
    table_prefix: str = "sync"

    @property
    def dataverse_api_url(self) -> str:
        return f"{self.dataverse_url}/api/data/v9.2"

    @property
    def dataverse_scope(self) -> str:
        return f"{self.dataverse_url}/.default"

    @property
    def bc_scope(self) -> str:
        return BC_SCOPE

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        bc = _url(env, "BC_API_BASE_URL")
        if not _BC_BASE_RE.search(bc):
            raise ConfigurationError(
                "BC_API_BASE_URL",
                "must end with /api/v2.0, e.g. https://api.businesscentral.dynamics.com/v2.0/{tenant}/{environment}/api/v2.0")
        company = (env.get("BC_COMPANY_ID") or "").strip()
        if not company:
            raise ConfigurationError("BC_COMPANY_ID", "is not set")
        try:
            company = str(uuid.UUID(company))
        except ValueError:
            raise ConfigurationError("BC_COMPANY_ID", f"must be the company's GUID, got {company!r}") from None
        dv = _url(env, "DATAVERSE_URL")
        if urlsplit(dv).path not in ("", "/"):
            raise ConfigurationError("DATAVERSE_URL", "must be the environment root, e.g. https://contoso.crm.dynamics.com")
        storage = (env.get("SYNC_STORAGE_CONNECTION") or env.get("AzureWebJobsStorage") or "").strip()
        if not storage:
            raise ConfigurationError("SYNC_STORAGE_CONNECTION", "is not set (nor AzureWebJobsStorage)")
        schedule = (env.get("SYNC_SCHEDULE") or DEFAULT_SCHEDULE).strip()
        from .cron import parse as parse_cron

        parse_cron(schedule)
        token = (env.get("LOCAL_DEV_TOKEN") or "").strip() or None
        if token and not (_is_loopback(bc) and _is_loopback(dv)):
            raise ConfigurationError(
                "LOCAL_DEV_TOKEN",
                "is only accepted when BC_API_BASE_URL and DATAVERSE_URL both point to loopback (local emulators); "
                "remove it and use AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET or a managed identity")
        prefix = (env.get("SYNC_TABLE_PREFIX") or "sync").strip()
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{0,30}", prefix):
            raise ConfigurationError("SYNC_TABLE_PREFIX", "must be 1-31 letters or digits, starting with a letter")
        return cls(
            bc_api_base_url=bc,
            bc_company_id=company,
            dataverse_url=dv,
            storage_connection=storage,
            sync_schedule=schedule,
            local_dev_token=token,
            dataverse_webhook_secret=(env.get("DATAVERSE_WEBHOOK_SECRET") or None),
            bc_webhook_url=_url(env, "BC_WEBHOOK_URL", required=False, query_allowed=True) or None,
            table_prefix=prefix,
        )


_lock = threading.Lock()
_settings: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, read from the environment at first use."""
    global _settings
    if _settings is None:
        with _lock:
            if _settings is None:
                _settings = Settings.from_env()
    return _settings


def reset_settings() -> None:
    """Forget the cached settings (tests, or after the environment changed)."""
    global _settings
    with _lock:
        _settings = None
