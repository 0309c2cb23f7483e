"""The mdmflow worker: runs every MDM workflow and the activities that reach the outside.

Run it as ``mdmflow worker`` (or ``python worker.py``); start as many as you like, on
any host, against the same Temporal namespace and task queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from temporalio.runtime import Runtime
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.escrow import EscrowActivities
from activities.fills import CommandFiller
from activities.governance import GovernanceActivities
from activities.holds import HoldActivities
from activities.inventory import InventoryActivities
from activities.mdm import MdmActivities
from activities.mdm_server import MdmServerClient, make_client
from activities.profiles import ProfileActivities
from activities.starting import StartActivities
from escrow.sealing import load_master_key
from mdmflow import config, eventloop, metrics
from mdmflow.admission import system_gate
from mdmflow.logs import configure_logging
from mdmflow.policy import load_configured
from mdmflow.search_setup import startup_problem
from mdmflow.services import Services
from mdmflow.temporal_client import connect, tls_config
from store.db import open_engine
from workflows.catalog import ALL_WORKFLOWS
from workflows.registry import BY_NAME

log = logging.getLogger("mdmflow.worker")

# Modules shared with the workflow sandbox as-is instead of re-imported for every run:
# pure data models and the workflow code itself, which keeps no module-level mutable
# state (measured: about 15 % more runs/s on the embedded server; bench/README.md).
PASSTHROUGH = ("protocol", "workflows", "activities.models", "pydantic", "pydantic_core")


def governance_activities(services: Services) -> list[Callable[..., Any]]:
    """The emergency stop, policy and approval reads a fleet run asks (revision 5)."""
    acts = GovernanceActivities(services.stops, services.approvals, services.policy)
    return [acts.emergency_stop, acts.gate, acts.request_approval, acts.approval_decided]


def build_worker(services: Services, mdm: MdmServerClient, **worker_options: Any) -> Worker:
    """The worker with every workflow and activity; ``worker_options`` tune ``Worker``."""
    mdm_acts = MdmActivities(mdm, CommandFiller(services.escrow, services.profiles))
    inv_acts = InventoryActivities(services.store)
    start_acts = StartActivities(
        services.client,
        services.task_queue,
        services.register,
        services.holds,
        system_gate(services.policy, services.stops),
    )
    hold_acts = HoldActivities(services.holds)
    escrow_acts = EscrowActivities(services.escrow)
    profile_acts = ProfileActivities(services.profiles, services.cmdplans, services.register)
    activities: Sequence[Callable[..., Any]] = [
        mdm_acts.send_step,
        mdm_acts.send_fleet,
        mdm_acts.push,
        inv_acts.store,
        inv_acts.log_device_information,
        inv_acts.store_many,
        hold_acts.release,
        inv_acts.log_device_information_many,
        start_acts.start_workflows,
        escrow_acts.store_cms,
        escrow_acts.has_secret,
        profile_acts.info,
        profile_acts.load_cmdplan,
        profile_acts.configured,
        profile_acts.evaluate,
        *governance_activities(services),
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


def metrics_runtime(address: str | None) -> Runtime | None:
    """The runtime serving SDK metrics at ``address``; without them when it cannot bind.

    Metrics are worth a warning, not a worker: a second worker on the same host (same
    default port) still runs.
    """
    return metrics.sdk_metrics_runtime(address, "MDMFLOW_WORKER_METRICS", log)


async def serve_own_metrics(sdk_address: str | None) -> asyncio.Server | None:
    """mdmflow's worker figures (sends, enqueue failures) one port above the SDK's.

    The SDK's endpoint serves only what its core records, so ours has its own; a taken
    port costs these figures, not the worker.
    """
    if sdk_address is None:
        return None
    try:
        address = metrics.next_port(sdk_address)
        server = await metrics.serve(address)
    except (OSError, ValueError) as exc:
        log.warning("mdmflow worker metrics not served (next to %s): %s", sdk_address, exc)
        return None
    log.info("mdmflow worker metrics at http://%s/metrics", address)
    return server


async def run_worker() -> None:
    settings = config.load()
    if not settings.mdm_url:
        raise SystemExit("MDMFLOW_MDM_URL is not set: the worker needs an MDM server to talk to")
    try:
        security = config.temporal_security()
        tls_config(security)  # unreadable PEM files stop the start with the setting's name
        # the policy a run checks again before a destructive step; unusable: no start
        policy = load_configured(BY_NAME)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    client = await connect(
        settings.temporal_address,
        settings.temporal_namespace,
        runtime=metrics_runtime(settings.worker_metrics),
        security=security,
    )
    problem = await startup_problem(client)
    if problem:
        # every run would fail to record its step: refuse to start rather than fail them
        log.error("%s", problem)
        raise SystemExit(1)
    engine = await open_engine(settings.db_url)
    services = Services.create(
        client, engine, settings.task_queue, load_master_key(settings.var_dir), policy
    )
    mdm = make_client(
        settings.mdm_kind,
        settings.mdm_url,
        settings.mdm_api_key,
        addresses=services.register.mdm_address,
    )
    worker = build_worker(services, mdm)
    own_metrics = await serve_own_metrics(settings.worker_metrics)
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
        if own_metrics is not None:
            own_metrics.close()
        await mdm.aclose()
        await engine.dispose()


def run() -> None:
    """Run the worker until stopped (logging already configured)."""
    eventloop.run(run_worker())


def main() -> None:
    try:
        configure_logging(verbose=False)
    except ValueError as exc:  # a bad MDMFLOW_LOG_FORMAT
        raise SystemExit(str(exc)) from exc
    run()


if __name__ == "__main__":
    main()
