"""The controller manager: builds and runs the built-in controllers of a server.

In `kyb server` the controllers talk to the API server through the in-process
transport; `ControllerManager(client, ...)` takes any Client, so the same
controllers run as a separate process against a remote server.
"""

from __future__ import annotations

import asyncio
import logging

from ..client import Client
from .base import Controller
from .cronjob import CronJobController
from .daemonset import DaemonSetController
from .deployment import DeploymentController
from .disruption import DisruptionController
from .hpa import HorizontalPodAutoscalerController
from .garbagecollector import GarbageCollector
from .job import JobController
from .namespace import NamespaceController
from .nodelifecycle import NodeLifecycleController
from .replicaset import ReplicaSetController
from .statefulset import StatefulSetController

log = logging.getLogger("kybernetes.controllers")


class ControllerManager:
    def __init__(self, client: Client, resources: list[tuple[str, str, str, bool]], *,
                 node_monitor_grace_period: float = 40.0):
        """resources: (apiVersion, kind, plural, namespaced) of every served resource, one per storage."""
        self.client = client
        namespaced = [(av, plural) for av, _kind, plural, ns in resources if ns]
        self.controllers: list[Controller] = [NamespaceController(client, namespaced),
                                              GarbageCollector(client, resources),
                                              ReplicaSetController(client), DeploymentController(client),
                                              DaemonSetController(client), StatefulSetController(client),
                                              JobController(client), CronJobController(client),
                                              DisruptionController(client),
                                              HorizontalPodAutoscalerController(client),
                                              NodeLifecycleController(client,
                                                                      grace_period=node_monitor_grace_period)]

    @classmethod
    def in_process(cls, api, **options: float) -> ControllerManager:
        client = Client.in_process(api.handle)
        seen: set[str] = set()
        resources = []
        for k in api.registry.kinds:
            if k.storage_prefix not in seen:
                seen.add(k.storage_prefix)
                resources.append((k.api_version, k.kind, k.plural, k.namespaced))
        # Propagation finalizers (orphan, foregroundDeletion) are only added
        # when a garbage collector is there to remove them.
        api.rest.gc_enabled = True
        return cls(client, resources, **options)

    async def start(self) -> None:
        await asyncio.gather(*(c.start() for c in self.controllers))

    async def stop(self) -> None:
        for c in self.controllers:
            await c.stop()
        await self.client.close()
