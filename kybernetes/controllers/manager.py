"""The controller manager: builds and runs the built-in controllers of a server.

In `kyb server` the controllers talk to the API server through the in-process
transport; `ControllerManager(client)` takes any Client, so the same
controllers run as a separate process against a remote server.
"""

from __future__ import annotations

import asyncio
import logging

from ..client import Client
from .base import Controller
from .namespace import NamespaceController

log = logging.getLogger("kybernetes.controllers")


class ControllerManager:
    def __init__(self, client: Client, namespaced_resources: list[tuple[str, str]]):
        self.client = client
        self.controllers: list[Controller] = [NamespaceController(client, namespaced_resources)]

    @classmethod
    def in_process(cls, api) -> ControllerManager:
        client = Client.in_process(api.handle)
        seen: set[str] = set()
        resources = []
        for k in api.registry.kinds:
            if k.namespaced and k.storage_prefix not in seen:
                seen.add(k.storage_prefix)
                resources.append((k.api_version, k.plural))
        return cls(client, resources)

    async def start(self) -> None:
        await asyncio.gather(*(c.start() for c in self.controllers))

    async def stop(self) -> None:
        for c in self.controllers:
            await c.stop()
        await self.client.close()
