"""The mdmflow worker: runs every MDM workflow and the activities that reach the outside.

Run it as ``mdmflow worker`` (or ``python worker.py``); start as many as you like, on
any host, against the same Temporal namespace and task queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.inventory import InventoryActivities
from activities.mdm import MdmActivities
from activities.mdm_server import MdmServerClient, make_client
from activities.starting import StartActivities
from mdmflow import config
from mdmflow.temporal_client import connect
from store.db import open_engine
from store.events import EnrollmentRegister
from store.inventory import InventoryStore
from workflows.catalog import ALL_WORKFLOWS

log = logging.getLogger("mdmflow.worker")

# Modules shared with the workflow sandbox as-is: pure data models, no I/O at import.
PASSTHROUGH = ("protocol", "workflows.models", "activities.models", "pydantic", "pydantic_core")


def build_worker(
    client: Client,
    task_queue: str,
    mdm: MdmServerClient,
    store: InventoryStore,
    register: EnrollmentRegister,
    *,
    max_concurrent_activities: int = 200,
) -> Worker:
    mdm_acts = MdmActivities(mdm)
    inv_acts = InventoryActivities(store)
    start_acts = StartActivities(client, task_queue, register)
    activities: Sequence[Callable[..., Any]] = [
        mdm_acts.send_step,
        mdm_acts.push,
        inv_acts.store,
        inv_acts.log_device_information,
        start_acts.start_workflows,
    ]
    return Worker(
        client,
        task_queue=task_queue,
        workflows=list(ALL_WORKFLOWS),
        activities=activities,
        workflow_runner=SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH)
        ),
        max_concurrent_activities=max_concurrent_activities,
    )


async def run_worker() -> None:
    settings = config.load()
    if not settings.mdm_url:
        raise SystemExit("MDMFLOW_MDM_URL is not set: the worker needs an MDM server to talk to")
    client = await connect(settings.temporal_address, settings.temporal_namespace)
    engine = await open_engine(settings.db_url)
    mdm = make_client(settings.mdm_kind, settings.mdm_url, settings.mdm_api_key)
    worker = build_worker(
        client, settings.task_queue, mdm, InventoryStore(engine), EnrollmentRegister(engine)
    )
    log.info(
        "worker on %s/%s task queue %s, MDM server %s (%s)",
        settings.temporal_address,
        settings.temporal_namespace,
        settings.task_queue,
        settings.mdm_url,
        settings.mdm_kind,
    )
    try:
        await worker.run()
    finally:
        await mdm.aclose()
        await engine.dispose()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(run_worker())


if __name__ == "__main__":
    main()
