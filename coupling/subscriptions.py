"""The BC webhook subscriptions this app holds, and the secret each one carries (``clientState``).

Layout: table ``subscriptions``; partition ``bc`` holds one row per BC subscription (``RowKey`` = the encoded
``subscriptionId``), partition ``config`` one row ``bc`` with the receiver URL the subscriptions were made for and
whether they are wanted at all (so the renewal timer can re-create a lost subscription, and leaves BC alone after
they were removed on purpose).

Columns of a subscription row: ``EntitySet``, ``Resource``, ``NotificationUrl``, ``ClientState`` (the shared
secret BC echoes in every notification; never logged, never returned by the API), ``ExpiresAt``, ``BcEtag`` (BC's
``@odata.etag``, the ``If-Match`` of a renewal), ``CreatedAt``, ``RenewedAt``.

At most 200 rows (BC's limit per environment): listing is one partition read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import UpdateMode

from .keys import decode_key_part, encode_key_part
from .model import _utc
from .tables import TableNames, TableService

__all__ = ["BCSubscription", "SubscriptionStore", "WebhookConfig"]

PARTITION = "bc"
CONFIG_PARTITION = "config"
CONFIG_ROW = "bc"


@dataclass
class BCSubscription:
    subscription_id: str
    entity_set: str
    resource: str
    notification_url: str
    client_state: str = field(repr=False)
    expires_at: datetime
    bc_etag: str | None = None
    created_at: datetime | None = None
    renewed_at: datetime | None = None

    def __post_init__(self) -> None:
        encode_key_part(self.subscription_id, what="subscriptionId")
        self.expires_at = _utc(self.expires_at, "expires_at")  # type: ignore[assignment]
        self.created_at = _utc(self.created_at, "created_at")
        self.renewed_at = _utc(self.renewed_at, "renewed_at")


@dataclass(frozen=True)
class WebhookConfig:
    """``notification_url``: the receiver URL (with ``?code=`` when the function needs a key); ``enabled``: False
    after the subscriptions were removed on purpose (the renewal timer then leaves BC alone)."""

    notification_url: str | None
    enabled: bool = True


def _entity(s: BCSubscription) -> dict[str, Any]:
    e: dict[str, Any] = {
        "PartitionKey": PARTITION, "RowKey": encode_key_part(s.subscription_id, what="subscriptionId"),
        "EntitySet": s.entity_set, "Resource": s.resource, "NotificationUrl": s.notification_url,
        "ClientState": s.client_state, "ExpiresAt": s.expires_at, "BcEtag": s.bc_etag or "",
    }
    if s.created_at is not None:
        e["CreatedAt"] = s.created_at
    if s.renewed_at is not None:
        e["RenewedAt"] = s.renewed_at
    return e


def _from_entity(e: Any) -> BCSubscription:
    def when(name: str) -> datetime | None:
        value = e.get(name)
        if isinstance(value, str):
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return value.astimezone(timezone.utc) if value is not None else None

    return BCSubscription(
        subscription_id=decode_key_part(e["RowKey"], what="subscriptionId"), entity_set=e["EntitySet"],
        resource=e["Resource"], notification_url=e["NotificationUrl"], client_state=e["ClientState"],
        expires_at=when("ExpiresAt"), bc_etag=e.get("BcEtag") or None,  # type: ignore[arg-type]
        created_at=when("CreatedAt"), renewed_at=when("RenewedAt"))


class SubscriptionStore:
    def __init__(self, service: TableService, names: TableNames):
        self._service = service
        self._names = names

    async def _table(self):
        return await self._service.table(self._names.subscriptions)

    async def list(self) -> list[BCSubscription]:
        table = await self._table()
        out = [_from_entity(e) async for e in table.query_entities("PartitionKey eq @pk",
                                                                    parameters={"pk": PARTITION})]
        return sorted(out, key=lambda s: (s.entity_set, s.subscription_id))

    async def get(self, subscription_id: str) -> BCSubscription | None:
        table = await self._table()
        try:
            e = await table.get_entity(PARTITION, encode_key_part(subscription_id, what="subscriptionId"))
        except ResourceNotFoundError:
            return None
        return _from_entity(e)

    async def put(self, subscription: BCSubscription) -> None:
        await (await self._table()).upsert_entity(_entity(subscription), mode=UpdateMode.REPLACE)

    async def delete(self, subscription_id: str) -> None:
        try:
            await (await self._table()).delete_entity(PARTITION, encode_key_part(subscription_id,
                                                                                 what="subscriptionId"))
        except ResourceNotFoundError:
            pass

    # -- the receiver URL the subscriptions are made for ----------------------------------------------------
    async def get_config(self) -> WebhookConfig | None:
        """The receiver URL and whether subscriptions are wanted; None until they were first set up."""
        try:
            e = await (await self._table()).get_entity(CONFIG_PARTITION, CONFIG_ROW)
        except ResourceNotFoundError:
            return None
        return WebhookConfig(e.get("NotificationUrl") or None, bool(e.get("Enabled", True)))

    async def put_config(self, config: WebhookConfig) -> None:
        entity: dict[str, Any] = {"PartitionKey": CONFIG_PARTITION, "RowKey": CONFIG_ROW,
                                  "Enabled": bool(config.enabled)}
        if config.notification_url:
            entity["NotificationUrl"] = config.notification_url
        await (await self._table()).upsert_entity(entity, mode=UpdateMode.REPLACE)
