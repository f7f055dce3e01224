"""The API server's own endpoints: where the `default/kubernetes` Service sends its traffic.

That Service has no selector, so no controller fills it in; as upstream's
control-plane endpoint reconciler does, the API server itself keeps:

* Endpoints `default/kubernetes`: one subset with the advertise address and
  port (name `https`, TCP), labelled endpointslice.kubernetes.io/skip-mirror
  so the mirroring controller leaves it to the API server;
* EndpointSlice `default/kubernetes` (addressType from the address' family):
  the same address, ready, labelled only kubernetes.io/service-name, written
  directly rather than mirrored, as upstream's EndpointsAdapter does. Other
  slices labelled for the Service are deleted.

It writes at start and then every `interval` seconds (upstream's
--endpoint-reconciler-interval, 10s), and only what differs, so an edited or
deleted object is put back within one interval. A single API server never
removes its address on the way down: upstream refuses to leave the Service
without endpoints, and a restarting server comes back at the same address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from typing import TYPE_CHECKING, Any

from ..api.errors import StatusError
from ..client import Client

if TYPE_CHECKING:
    from .server import APIServer

log = logging.getLogger("kybernetes.apiserver.endpoints")

SERVICE = "kubernetes"
NAMESPACE = "default"
SKIP_MIRROR_LABEL = "endpointslice.kubernetes.io/skip-mirror"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
RECONCILE_INTERVAL = 10.0

Obj = dict[str, Any]


def split_advertise(advertise: str) -> tuple[str, int]:
    """("127.0.0.1", 6443) from "127.0.0.1:6443"; IPv6 as "[::1]:6443"; 6443 when no port is given."""
    host, port = advertise, 6443
    if advertise.startswith("["):
        host, _, rest = advertise[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif advertise.count(":") == 1:
        host, _, p = advertise.partition(":")
        if p.isdigit():
            port = int(p)
    return host, port


def desired(ip: str, port: int) -> tuple[Obj, Obj]:
    """The Endpoints and the EndpointSlice the API server at ip:port should have."""
    ports = [{"name": "https", "port": port, "protocol": "TCP"}]
    endpoints = {"apiVersion": "v1", "kind": "Endpoints",
                 "metadata": {"name": SERVICE, "namespace": NAMESPACE, "labels": {SKIP_MIRROR_LABEL: "true"}},
                 "subsets": [{"addresses": [{"ip": ip}], "ports": ports}]}
    address_type = "IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4"
    slice_ = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
              "metadata": {"name": SERVICE, "namespace": NAMESPACE, "labels": {SERVICE_NAME_LABEL: SERVICE}},
              "addressType": address_type,
              "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
              "ports": ports}
    return endpoints, slice_


class KubernetesEndpoints:
    """Keeps the `default/kubernetes` Endpoints and EndpointSlice pointing at this API server."""

    def __init__(self, api: APIServer, *, interval: float = RECONCILE_INTERVAL):
        self.api = api
        self.interval = interval
        self.client = Client.in_process(api.handle)
        self._task: asyncio.Task | None = None
        host, self.port = split_advertise(api.advertise)
        try:
            self.ip: str | None = str(ipaddress.ip_address(host))
        except ValueError:
            # A host name: Endpoints hold addresses only, and guessing one would route
            # pods somewhere wrong.
            log.warning("advertise address %r is not an IP: no endpoints for the kubernetes Service", host)
            self.ip = None

    async def start(self) -> None:
        """Write once now (so the Service has endpoints as soon as the server serves), then keep at it."""
        if self.ip is None:
            return
        await self._round()
        self._task = asyncio.create_task(self._loop(), name="kubernetes-endpoints")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.client.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._round()

    async def _round(self) -> None:
        try:
            await self.reconcile()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the next round tries again
            log.warning("kubernetes service endpoints: %s", getattr(e, "message", None) or e)

    async def reconcile(self) -> None:
        """One round: create or put back what differs; AlreadyExists and Conflict mean another
        writer got there first, and the next round looks again."""
        if self.ip is None:
            return
        want_ep, want_slice = desired(self.ip, self.port)
        await self._ensure(self.client.resource("v1", "endpoints"), want_ep, ("subsets",))
        slices = self.client.resource("discovery.k8s.io/v1", "endpointslices")
        listing = await slices.list(NAMESPACE, label_selector=f"{SERVICE_NAME_LABEL}={SERVICE}")
        for s in listing.get("items") or []:
            m = s.get("metadata") or {}
            if m.get("name") != SERVICE or s.get("addressType") != want_slice["addressType"]:
                # Left by an earlier configuration (another family, say): this server does not serve it.
                with contextlib.suppress(StatusError):
                    await slices.delete(m["name"], NAMESPACE, preconditions={"uid": m.get("uid")})
        await self._ensure(slices, want_slice, ("addressType", "endpoints", "ports"))

    async def _ensure(self, rc: Any, want: Obj, fields: tuple[str, ...]) -> None:
        name = want["metadata"]["name"]
        try:
            cur = await rc.get(name, NAMESPACE)
        except StatusError as e:
            if e.code != 404:
                raise
            cur = None
        try:
            if cur is None:
                await rc.create(want, NAMESPACE)
                return
            if all(cur.get(f) == want[f] for f in fields) and \
                    (cur["metadata"].get("labels") or {}) == want["metadata"]["labels"]:
                return
            log.warning("resetting %s %s/%s of the kubernetes Service", want["kind"], NAMESPACE, name)
            body = {**cur, **{f: want[f] for f in fields},
                    "metadata": {**cur["metadata"], "labels": want["metadata"]["labels"]}}
            await rc.update(body, NAMESPACE)
        except StatusError as e:
            if e.code != 409:
                raise
