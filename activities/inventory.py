"""Activities that write what devices reported into the store."""

from __future__ import annotations

import json
import logging

from temporalio import activity

from activities.models import DeviceInfoLogEntry, InventoryUpdate
from store.inventory import InventoryStore

log = logging.getLogger("mdmflow.inventory")


class InventoryActivities:
    def __init__(self, store: InventoryStore) -> None:
        self._store = store

    @activity.defn(name="inventory.store")
    async def store(self, update: InventoryUpdate) -> None:
        await self._store.store_values(update.enrollment_id, update.values, update.source)
        log.info(
            "inventory %s: %d values from %s",
            update.enrollment_id,
            len(update.values),
            update.source,
        )

    @activity.defn(name="inventory.store_many")
    async def store_many(self, updates: list[InventoryUpdate]) -> None:
        """A fleet run's inventory answers of one workflow task, in one transaction."""
        await self._store.store_many([(u.enrollment_id, u.values, u.source) for u in updates])
        log.info("inventory: %d device(s) updated", len(updates))

    @activity.defn(name="inventory.log_device_information_many")
    async def log_device_information_many(self, entries: list[DeviceInfoLogEntry]) -> None:
        """A fleet run's DeviceInformation answers of one workflow task, in one write."""
        await self._store.log_many(
            [(e.enrollment_id, e.command_uuid, e.query_responses) for e in entries]
        )
        log.info("device information: %d entr(ies) logged", len(entries))

    @activity.defn(name="inventory.log_device_information")
    async def log_device_information(self, entry: DeviceInfoLogEntry) -> None:
        log.info(
            "device information %s: %s",
            entry.enrollment_id,
            json.dumps(entry.query_responses, sort_keys=True),
        )
        await self._store.log_device_information(
            entry.enrollment_id, entry.command_uuid, entry.query_responses
        )
