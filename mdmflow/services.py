"""What the API, the relay and the worker share: the Temporal client and the stores."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from escrow.sealing import Sealer
from escrow.store import EscrowStore
from mdmflow.policy import PolicyHolder, load_configured
from store.audit import AuditLog
from store.cmdplans import CmdPlanStore
from store.events import EnrollmentRegister, SubscriptionStore
from store.governance import Approvals, EmergencyStops
from store.holds import HoldStore
from store.inbox import WebhookInbox
from store.inventory import InventoryStore
from store.profiles import ProfileStore
from store.ratelimits import RateLimits
from store.users import UserStore


@dataclass
class Services:
    client: Client
    task_queue: str
    store: InventoryStore
    subscriptions: SubscriptionStore
    register: EnrollmentRegister
    profiles: ProfileStore
    cmdplans: CmdPlanStore
    escrow: EscrowStore
    inbox: WebhookInbox
    holds: HoldStore
    engine: AsyncEngine
    policy: PolicyHolder
    stops: EmergencyStops
    approvals: Approvals
    audit: AuditLog
    users: UserStore
    rates: RateLimits

    @classmethod
    def create(
        cls,
        client: Client,
        engine: AsyncEngine,
        task_queue: str,
        master_key: bytes,
        policy: PolicyHolder | None = None,
    ) -> Services:
        """Everything the API and the worker need, on one database and master key.

        ``policy``: the configured one (``MDMFLOW_POLICY_FILE`` or the shipped default)
        unless given; an unusable policy file raises ``PolicyError`` here, at start.
        """
        from workflows.registry import BY_NAME

        return cls(
            client=client,
            task_queue=task_queue,
            store=InventoryStore(engine),
            subscriptions=SubscriptionStore(engine),
            register=EnrollmentRegister(engine),
            profiles=ProfileStore(engine),
            cmdplans=CmdPlanStore(engine),
            escrow=EscrowStore(engine, Sealer(master_key)),
            inbox=WebhookInbox(engine),
            holds=HoldStore(engine),
            engine=engine,
            policy=policy or load_configured(BY_NAME),
            stops=EmergencyStops(engine),
            approvals=Approvals(engine),
            audit=AuditLog(engine),
            users=UserStore(engine),
            rates=RateLimits(engine),
        )
