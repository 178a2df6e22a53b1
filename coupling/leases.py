"""Named leases: at most one holder at a time across every instance (e.g. one run per mapping at a time).

Layout: table ``leases``, one partition (``leases``), ``RowKey`` = the encoded lease name, columns ``Owner``,
``AcquiredAt``, ``ExpiresAt``. Exclusivity comes from the service, never from a read before a write:

* a free name is taken with ``create`` (insert-only: of concurrent acquirers exactly one succeeds, the rest get
  409);
* an expired lease is taken over with a replace conditional on the etag that was read as expired (of concurrent
  takers exactly one succeeds, the rest get 412);
* ``renew`` and ``release`` are conditional on the holder's etag, so a holder whose lease expired and was taken
  over can neither extend nor delete the new holder's lease.

Expiry is judged by the clock of the instance looking at the lease: keep durations well above the clock skew
between instances (seconds) and renew well before expiry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from sync.errors import Conflict, RequestError

from .keys import encode_key_part
from .model import _utc
from .tables import TableNames, TableService

__all__ = ["Lease", "LeaseStore", "LeaseLost"]

PARTITION = "leases"
MAX_OWNER_CHARS = 256


class LeaseLost(Conflict):
    """The lease expired and was taken over (or removed) since it was acquired: stop the work it guarded."""

    code = "LeaseLost"

    def __init__(self, lease: "Lease"):
        super().__init__(f"lease {lease.name} held by {lease.owner} was lost",
                         details={"lease": lease.name, "owner": lease.owner})
        self.lease = lease


@dataclass(frozen=True)
class Lease:
    name: str
    owner: str
    acquired_at: datetime
    expires_at: datetime
    etag: str | None = field(default=None, compare=False, repr=False)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _check_duration(duration: Any) -> timedelta:
    if not isinstance(duration, timedelta) or duration <= timedelta(0):
        raise RequestError("lease duration must be a positive timedelta", details={"duration": repr(duration)})
    return duration


class LeaseStore:
    def __init__(self, service: TableService, names: TableNames, *, clock: Callable[[], datetime] | None = None):
        self._service = service
        self._names = names
        self._clock = clock or _utcnow

    async def _table(self):
        return await self._service.table(self._names.leases)

    def _now(self) -> datetime:
        return _utc(self._clock(), "clock()")

    @staticmethod
    def _lease(name: str, entity: Any, etag: str | None) -> Lease:
        return Lease(name, entity["Owner"], _utc(entity["AcquiredAt"], "AcquiredAt"),
                     _utc(entity["ExpiresAt"], "ExpiresAt"), etag)

    async def acquire(self, name: str, owner: str, duration: timedelta) -> Lease | None:
        """Take the lease ``name`` for ``duration``; None if someone holds it and it has not expired.

        A lease held by ``owner`` itself counts as held (renew it instead).
        """
        key = encode_key_part(name, what="lease name")
        if not isinstance(owner, str) or not owner or len(owner) > MAX_OWNER_CHARS:
            raise RequestError(f"lease owner must be 1..{MAX_OWNER_CHARS} characters")
        _check_duration(duration)
        table = await self._table()
        now = self._now()
        entity = {"PartitionKey": PARTITION, "RowKey": key, "Name": name, "Owner": owner,
                  "AcquiredAt": now, "ExpiresAt": now + duration}
        for _ in range(3):
            try:
                meta = await table.create_entity(entity)
                return self._lease(name, entity, meta.get("etag"))
            except ResourceExistsError:
                pass
            try:
                current = await table.get_entity(PARTITION, key)
            except ResourceNotFoundError:
                continue  # released meanwhile: try to create it again
            if _utc(current["ExpiresAt"], "ExpiresAt") > now:
                return None
            try:
                meta = await table.update_entity(entity, mode=UpdateMode.REPLACE, etag=current.metadata["etag"],
                                                 match_condition=MatchConditions.IfNotModified)
                return self._lease(name, entity, meta.get("etag"))
            except ResourceModifiedError:
                return None  # another acquirer took the expired lease first (or its holder renewed it)
            except ResourceNotFoundError:
                continue
        return None

    async def renew(self, lease: Lease, duration: timedelta) -> Lease:
        """Extend the lease to now + ``duration``; ``LeaseLost`` if it is no longer ours.

        A lease that expired but was not taken over by anyone is still ours and is renewed.
        """
        _check_duration(duration)
        table = await self._table()
        now = self._now()
        entity = {"PartitionKey": PARTITION, "RowKey": encode_key_part(lease.name, what="lease name"),
                  "Name": lease.name, "Owner": lease.owner, "AcquiredAt": lease.acquired_at,
                  "ExpiresAt": now + duration}
        if not lease.etag:
            raise LeaseLost(lease)
        try:
            meta = await table.update_entity(entity, mode=UpdateMode.REPLACE, etag=lease.etag,
                                             match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            raise LeaseLost(lease) from None
        return self._lease(lease.name, entity, meta.get("etag"))

    async def release(self, lease: Lease) -> None:
        """Give the lease back; a lease already lost (taken over or gone) is left alone."""
        if not lease.etag:
            return
        table = await self._table()
        try:
            await table.delete_entity(PARTITION, encode_key_part(lease.name, what="lease name"), etag=lease.etag,
                                      match_condition=MatchConditions.IfNotModified)
        except ResourceModifiedError:
            pass  # someone else holds it now: not ours to delete

    async def holder(self, name: str) -> Lease | None:
        """The current, unexpired lease of ``name``, or None."""
        table = await self._table()
        try:
            entity = await table.get_entity(PARTITION, encode_key_part(name, what="lease name"))
        except ResourceNotFoundError:
            return None
        lease = self._lease(name, entity, entity.metadata.get("etag"))
        return lease if lease.expires_at > self._now() else None
