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
