"""The mdmflow worker: runs every MDM workflow and the activities that reach the outside.

Run it as ``mdmflow worker`` (or ``python worker.py``); start as many as you like, on
any host, against the same Temporal namespace and task queue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.escrow import EscrowActivities
from activities.fills import CommandFiller
from activities.inventory import InventoryActivities
from activities.mdm import MdmActivities
from activities.mdm_server import MdmServerClient, make_client
from activities.profiles import ProfileActivities
from activities.starting import StartActivities
from escrow.sealing import load_master_key
from mdmflow import config, eventloop
from mdmflow.temporal_client import connect
from starter.deps import Services
from store.db import open_engine
from workflows.catalog import ALL_WORKFLOWS

log = logging.getLogger("mdmflow.worker")

# Modules shared with the workflow sandbox as-is instead of re-imported for every run:
# pure data models and the workflow code itself, which keeps no module-level mutable
# state (measured: about 15 % more runs/s on the embedded server; bench/README.md).
PASSTHROUGH = ("protocol", "workflows", "activities.models", "pydantic", "pydantic_core")


def build_worker(services: Services, mdm: MdmServerClient, **worker_options: Any) -> Worker:
    """The worker with every workflow and activity; ``worker_options`` tune ``Worker``."""
    mdm_acts = MdmActivities(mdm, CommandFiller(services.escrow, services.profiles))
    inv_acts = InventoryActivities(services.store)
    start_acts = StartActivities(services.client, services.task_queue, services.register)
    escrow_acts = EscrowActivities(services.escrow)
    profile_acts = ProfileActivities(services.profiles, services.cmdplans, services.register)
    activities: Sequence[Callable[..., Any]] = [
        mdm_acts.send_step,
        mdm_acts.push,
        inv_acts.store,
        inv_acts.log_device_information,
        start_acts.start_workflows,
        escrow_acts.store_cms,
        profile_acts.info,
        profile_acts.load_cmdplan,
        profile_acts.configured,
        profile_acts.evaluate,
    ]
    options: dict[str, Any] = {"max_concurrent_activities": 200, **worker_options}
    return Worker(
        services.client,
        task_queue=services.task_queue,
        workflows=list(ALL_WORKFLOWS),
        activities=activities,
        workflow_runner=SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH)
        ),
        **options,
    )


async def run_worker() -> None:
    settings = config.load()
    if not settings.mdm_url:
        raise SystemExit("MDMFLOW_MDM_URL is not set: the worker needs an MDM server to talk to")
    client = await connect(settings.temporal_address, settings.temporal_namespace)
    engine = await open_engine(settings.db_url)
    services = Services.create(
        client, engine, settings.task_queue, load_master_key(settings.var_dir)
    )
    mdm = make_client(
        settings.mdm_kind,
        settings.mdm_url,
        settings.mdm_api_key,
        addresses=services.register.mdm_address,
    )
    worker = build_worker(services, mdm)
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
    eventloop.run(run_worker())


if __name__ == "__main__":
    main()
