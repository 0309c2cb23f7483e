"""What the API, the relay and the worker share: the Temporal client and the stores."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from escrow.sealing import Sealer
from escrow.store import EscrowStore
from store.cmdplans import CmdPlanStore
from store.events import EnrollmentRegister, SubscriptionStore
from store.holds import HoldStore
from store.inbox import WebhookInbox
from store.inventory import InventoryStore
from store.profiles import ProfileStore


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

    @classmethod
    def create(
        cls, client: Client, engine: AsyncEngine, task_queue: str, master_key: bytes
    ) -> Services:
        """Everything the API and the worker need, on one database and master key."""
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
        )
