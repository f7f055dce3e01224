"""The kubelet's side of the pod network (the CNI-shaped seam): ready once the node has its pod CIDRs.

A node's pod CIDRs are assigned by the node IPAM controller after the Node registers,
so the network starts "not ready": pods that need it wait in ContainerCreating (as
upstream's do while the network plugin is not initialised) and host-network pods run.
Once the Node's ``spec.podCIDRs`` appear, the pod network is set up on the node
(bridge, forwarding, masquerade, hostPorts) and keeps routes to the other nodes' pod
CIDRs from a Node informer. Sandboxes are then added and deleted by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from kybernetes.client import Client, Informer
from kybernetes.network.podnet import HostPort, PodIPs, PodNetwork

log = logging.getLogger(__name__)

Obj = dict[str, Any]

NOT_READY = ("network is not ready: container runtime network not ready: NetworkReady=false "
             "reason:NetworkPluginNotReady message:the node has no pod CIDR yet")


class NetworkManager:
    def __init__(self, client: Client, node_name: str, state_dir: str, *, cluster_cidrs: list[str],
                 node_ips: list[str], netns: str | None = None) -> None:
        self.client = client
        self.node_name = node_name
        self.state_dir = state_dir
        self.cluster_cidrs = cluster_cidrs
        self.node_ips = node_ips
        self.netns = netns
        self.network: PodNetwork | None = None
        self.error = ""
        self._nodes = Informer(client.resource("v1", "nodes", namespaced=False))
        self._ready = asyncio.Event()
        self._setting_up: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.network is not None

    async def start(self) -> None:
        self._nodes.add_handler(on_add=self._node_seen, on_update=lambda _o, n: self._node_seen(n))
        await self._nodes.start()

    def _node_seen(self, node: Obj) -> None:
        if self.network is not None or self._setting_up is not None:
            return
        if node["metadata"]["name"] != self.node_name:
            return
        spec = node.get("spec") or {}
        cidrs = list(spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []))
        if cidrs:
            self._setting_up = asyncio.get_running_loop().create_task(self._setup(cidrs))

    async def _setup(self, cidrs: list[str]) -> None:
        net = PodNetwork(node_name=self.node_name, state_dir=self.state_dir, pod_cidrs=cidrs,
                         cluster_cidrs=self.cluster_cidrs or cidrs, node_ips=self.node_ips, netns=self.netns)
        try:
            await net.setup()
        except Exception as e:  # noqa: BLE001 - reported on pods as the network's error; retried on the next node event
            self.error = f"setting up the pod network failed: {e}"
            log.exception("pod network")
            await net.close()
            self._setting_up = None
            return
        net.watch_nodes(self._nodes)
        self.network = net
        self._ready.set()
        log.info("pod network ready on %s: pod CIDRs %s", self.node_name, ", ".join(cidrs))

    async def wait_ready(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self.ready

    def not_ready_message(self) -> str:
        return self.error or NOT_READY

    async def add(self, sandbox_id: str, netns_path: str, pod: Obj) -> PodIPs:
        assert self.network is not None
        meta = pod["metadata"]
        return await self.network.add(sandbox_id, netns_path, namespace=meta.get("namespace") or "default",
                                      name=meta["name"], uid=meta.get("uid") or "",
                                      host_ports=HostPort.from_pod(pod))

    async def delete(self, sandbox_id: str) -> None:
        if self.network is not None:
            await self.network.delete(sandbox_id)

    async def status(self, sandbox_id: str) -> PodIPs | None:
        return await self.network.status(sandbox_id) if self.network is not None else None

    async def gc(self, live: set[str]) -> None:
        if self.network is not None:
            await self.network.gc(live)

    async def stop(self) -> None:
        if self._setting_up is not None and not self._setting_up.done():
            self._setting_up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._setting_up
        await self._nodes.stop()
        if self.network is not None:
            await self.network.close()
