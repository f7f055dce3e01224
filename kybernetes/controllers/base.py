"""The shared Controller base: informers feed a work queue; workers call reconcile(key).

A controller declares its informers and which events enqueue which keys. The
base runs the workers, retries failed keys with per-key exponential backoff,
and re-enqueues everything on each informer resync, so a missed event is
healed by the next resync. reconcile never sleeps waiting for the world: it
takes one step and returns, asking to be called again later if it must.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..api.errors import StatusError
from ..client import Client, Informer, QueueShutDown, ResourceClient, WorkQueue
from ..client.events import EventRecorder, FakeRecorder
from ..client.informer import informer_for, strip_managed_fields

log = logging.getLogger("kybernetes.controllers")


class Requeue(Exception):
    """Raised by reconcile to be called again for this key after `after` seconds."""

    def __init__(self, after: float = 0.0):
        super().__init__(after)
        self.after = after


class Controller:
    name = "controller"
    workers = 2
    # The source.component of this controller's Events (upstream's names); "" is "<name>-controller".
    component = ""

    def __init__(self, client: Client):
        self.client = client
        component = self.component or (self.name if self.name.endswith("-controller") else f"{self.name}-controller")
        self.recorder: EventRecorder | FakeRecorder = EventRecorder(client, component)
        self.queue = WorkQueue(self.name)
        self.informers: list[Informer] = []
        self._own_informers: list[Informer] = []
        self._tasks: list[asyncio.Task] = []

    def reader(self, api_version: str, plural: str, namespaced: bool = True) -> ResourceClient:
        """A resource to list and watch for an informer of this controller's own: as the controller
        manager (whose identity reads for every controller, as upstream's shared informers do) when
        there is one, else as this controller."""
        shared = self.client.shared_informers
        c = shared.client if shared is not None and shared.client is not None else self.client
        return c.resource(api_version, plural, namespaced)

    def informer(self, api_version: str, plural: str, *, namespaced: bool = True,
                 resync_period: float = 0, metadata_only: bool = False,
                 keep_managed_fields: bool = False) -> Informer:
        rc = self.client.resource(api_version, plural, namespaced, metadata_only=metadata_only)
        transform = None if keep_managed_fields else strip_managed_fields
        inf = informer_for(self.client, rc, self._own_informers, resync_period=resync_period, transform=transform)
        self.informers.append(inf)
        return inf

    def enqueue(self, key: str) -> None:
        self.queue.add(key)

    async def reconcile(self, key: str) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        for inf in self.informers:
            await inf.start()
        for inf in self.informers:
            await inf.wait_for_sync(30)
        for i in range(self.workers):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"{self.name}-worker-{i}"))

    async def stop(self) -> None:
        self.queue.shut_down()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()
        await self.recorder.close()
        for inf in self._own_informers:
            await inf.stop()

    async def _worker(self) -> None:
        while True:
            try:
                key = await self.queue.get()
            except QueueShutDown:
                return
            try:
                await self.reconcile(key)
                self.queue.forget(key)
            except Requeue as r:
                self.queue.forget(key)
                if r.after > 0:
                    self.queue.add_after(key, r.after)
                else:
                    self.queue.add_rate_limited(key)
            except asyncio.CancelledError:
                raise
            except StatusError as e:
                if e.code != 409:
                    log.warning("%s: reconcile %s: %s", self.name, key, e.message)
                self.queue.add_rate_limited(key)
            except Exception:
                log.exception("%s: reconcile %s failed", self.name, key)
                self.queue.add_rate_limited(key)
            finally:
                self.queue.done(key)


def key_of(obj: dict[str, Any]) -> str:
    m = obj.get("metadata") or {}
    ns = m.get("namespace")
    return f"{ns}/{m.get('name')}" if ns else m.get("name", "")
