"""The ingress controller of one node: informers in, a route table and certificates out.

`IngressController` watches Ingresses, IngressClasses, Services, EndpointSlices
and `kubernetes.io/tls` Secrets. Any event that can change routing marks the
state dirty; a loop waits a few milliseconds so that a burst is one rebuild,
then recomputes everything from the caches (level-triggered: the table is a pure
function of them, `routing.build_table`), hands the certificates to the
`CertStore` and swaps the proxy's table in one assignment. Nothing is patched
in place, so requests in flight and open TLS connections never see half a
change.

On start it creates its IngressClass (`kybernetes`, controller
`kybernetes.io/ingress`, marked default unless another class already is) when
no class names its controller, as k3s ships Traefik's. It serves the Ingresses
that name one of its classes, and those naming none while one of its classes is
the default.

Each served Ingress gets `status.loadBalancer.ingress` set to the addresses of
every node serving it, as k3s reports the Traefik LoadBalancer's node addresses.
Each controller announces its own (`status_addresses`, the node addresses by
default) in a Lease `kybernetes-ingress-<node>` in kube-system, renewed every
10 s and valid for 40 s; the status is the union of the live Leases' addresses
in node-name order, so that the controllers of several nodes write the same
list instead of overwriting each other's, and a node that stops (its Lease is
deleted) or dies (its Lease expires) drops out of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from kybernetes.api.errors import StatusError
from kybernetes.api.times import parse_time
from kybernetes.client import Client, Informer
from kybernetes.client.informer import informer_for, meta_namespace_key, strip_managed_fields

from .proxy import IngressProxy
from .routing import (
    CONTROLLER_NAME,
    DEFAULT_CLASS_ANNOTATION,
    DEFAULT_CLASS_NAME,
    SERVICE_NAME_LABEL,
    Backend,
    Options,
    RouteTable,
    build_table,
    ingress_is_ours,
    our_classes,
    resolve_backend,
    status_ingress,
)
from .tls import TLS_SECRET_TYPE, CertStore, PemPair, secret_pair, tls_hosts

log = logging.getLogger(__name__)

Obj = dict[str, Any]
_SLICE_INDEX = "kybernetes.io/ingress-service"
LEASE_PREFIX = "kybernetes-ingress-"
LEASE_LABEL = "kybernetes.io/ingress-status"
LEASE_CONTROLLER_ANNOTATION = "kybernetes.io/ingress-controller"
LEASE_ADDRESSES_ANNOTATION = "kybernetes.io/ingress-addresses"
LEASE_PORTS_ANNOTATION = "kybernetes.io/ingress-ports"   # what servicelb must not give a LoadBalancer here
LEASE_DURATION = 40
LEASE_RENEW = 10.0


def _micro_now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def _slice_service(obj: Obj) -> list[str]:
    meta = obj.get("metadata") or {}
    svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    return [f"{meta.get('namespace')}/{svc}"] if svc else []


def _routing_view(ing: Obj) -> tuple[Any, ...]:
    """What of an Ingress routing reads: its status (which we write) changes nothing."""
    meta = ing.get("metadata") or {}
    return ing.get("spec"), meta.get("annotations"), meta.get("creationTimestamp")


class IngressController:
    """The built-in Ingress controller of one node: HTTP on `http_port`, HTTPS on `https_port`.

    `bind` is the address (or addresses) to listen on, all of the host's by default;
    a port of None disables that listener, 0 picks a free one (see `http_ports` /
    `https_ports` once started). `node_ips` are written to the served Ingresses'
    status unless `status_addresses` says otherwise (or `publish_status` is False).
    `status_lease_namespace` holds the Leases through which the controllers of several
    nodes share their addresses (None: publish only our own).
    `default_tls_secret` ("namespace/name" of a kubernetes.io/tls Secret) replaces the
    generated self-signed fallback certificate. The timeouts are the defaults the
    proxy-*-timeout annotations override, in seconds.
    """

    def __init__(self, client: Client, node_name: str, node_ips: Iterable[str] = (),
                 http_port: int | None = 80, https_port: int | None = 443, *,
                 bind: str | Sequence[str] | None = None, controller_name: str = CONTROLLER_NAME,
                 class_name: str = DEFAULT_CLASS_NAME, create_class: bool = True,
                 publish_status: bool = True, status_addresses: Iterable[str] | None = None,
                 status_lease_namespace: str | None = "kube-system",
                 default_tls_secret: str | None = None, connect_timeout: float = 5.0,
                 read_timeout: float = 60.0, send_timeout: float = 60.0, sync_delay: float = 0.005,
                 resync_period: float = 30.0):
        self.client = client
        self.node_name = node_name
        self.node_ips = list(node_ips)
        self.controller_name = controller_name
        self.class_name = class_name
        self.create_class = create_class
        self.publish_status = publish_status
        self.status_addresses = list(status_addresses) if status_addresses is not None else self.node_ips
        self.status_lease_namespace = status_lease_namespace if publish_status else None
        self.lease_name = LEASE_PREFIX + node_name
        self.default_tls_secret = default_tls_secret
        self.defaults = Options(connect_timeout=connect_timeout, read_timeout=read_timeout,
                                send_timeout=send_timeout)
        self.sync_delay = sync_delay
        self.resync_period = resync_period
        hosts: list[str | None] = [bind] if isinstance(bind, str) else (list(bind) if bind else [None])
        self.certs = CertStore()
        self.proxy = IngressProxy(
            self.certs,
            http=[(h, http_port) for h in hosts] if http_port is not None else [],
            https=[(h, https_port) for h in hosts] if https_port is not None else [],
            redirect_port=https_port or 0)
        self.ingresses: Informer | None = None
        self.classes: Informer | None = None
        self.services: Informer | None = None
        self.slices: Informer | None = None
        self.secrets: Informer | None = None
        self.leases: Informer | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self._need_sync = True
        self._own_informers: list[Informer] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._resync_task: asyncio.Task[None] | None = None
        self._served: list[Obj] = []
        self._released: set[str] = set()      # no longer served since the last status write
        self._services_used: set[str] = set()
        self._backends: dict[str, Backend] = {}
        self._secrets_used: set[str] = set()
        self._bad_secrets: set[str] = set()
        self.syncs = 0
        self.idle = asyncio.Event()   # set while nothing is dirty and no rebuild or status write runs

    # ------------------------------------------------------------------ lifecycle

    @property
    def table(self) -> RouteTable:
        return self.proxy.table

    @property
    def http_ports(self) -> list[int]:
        return self.proxy.http_ports

    @property
    def https_ports(self) -> list[int]:
        return self.proxy.https_ports

    async def start(self) -> None:
        """Sync the caches, create the IngressClass if needed, build the table, then listen."""
        self.ingresses = self._informer("networking.k8s.io/v1", "ingresses")
        self.classes = self._informer("networking.k8s.io/v1", "ingressclasses", namespaced=False)
        self.services = self._informer("v1", "services")
        self.slices = self._informer("discovery.k8s.io/v1", "endpointslices")
        self.slices.add_index(_SLICE_INDEX, _slice_service)
        # Only TLS Secrets: a cluster's other Secrets are none of the ingress's business.
        self.secrets = Informer(self.client.resource("v1", "secrets"), field_selector=f"type={TLS_SECRET_TYPE}",
                                transform=strip_managed_fields)
        self._own_informers.append(self.secrets)
        self.ingresses.add_handler(self._mark_any, self._on_ingress_update, self._mark_any)
        self.classes.add_handler(self._mark_any, lambda _o, _n: self._mark(), self._mark_any)
        self.services.add_handler(self._on_service, lambda _o, n: self._on_service(n), self._on_service)
        self.slices.add_handler(self._on_slice, self._on_slice_update, self._on_slice)
        self.secrets.add_handler(self._on_secret, lambda _o, n: self._on_secret(n), self._on_secret)
        informers = [self.ingresses, self.classes, self.services, self.slices, self.secrets]
        if self.status_lease_namespace is not None:
            self.leases = Informer(self.client.resource("coordination.k8s.io/v1", "leases"),
                                   namespace=self.status_lease_namespace, label_selector=f"{LEASE_LABEL}=true",
                                   transform=strip_managed_fields)
            self._own_informers.append(self.leases)
            self.leases.add_handler(self._on_lease, self._on_lease_update, self._on_lease)
            informers.append(self.leases)
        try:
            for inf in informers:
                await inf.start()
            for inf in informers:
                await inf.wait_for_sync()
            if self.create_class:
                await self._ensure_class()
            self._wake.clear()
            self.sync()
            await self.proxy.start()
        except BaseException:
            await self.stop()
            raise
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run())
        if self.resync_period > 0:
            self._resync_task = loop.create_task(self._resync())
        if self.leases is not None:
            self._lease_task = loop.create_task(self._renew_lease())
        self._mark()  # the first status write happens in the loop

    async def stop(self) -> None:
        """Stop serving; our Lease goes, so the other nodes' controllers drop our addresses."""
        lease_task = self._lease_task
        for task in (self._task, self._resync_task, lease_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._resync_task = self._lease_task = None
        await self.proxy.stop()
        if lease_task is not None and self.status_lease_namespace is not None:
            with contextlib.suppress(Exception):
                await self.client.resource("coordination.k8s.io/v1", "leases").delete(
                    self.lease_name, self.status_lease_namespace)
        for inf in self._own_informers:
            await inf.stop()
        self._own_informers.clear()

    def _informer(self, api_version: str, plural: str, namespaced: bool = True) -> Informer:
        return informer_for(self.client, self.client.resource(api_version, plural, namespaced),
                            self._own_informers)

    async def _ensure_class(self) -> None:
        assert self.classes is not None
        classes = self.classes.list()
        names, _default = our_classes(classes, self.controller_name)
        if names:
            return
        other_default = any(
            ((c.get("metadata") or {}).get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION) == "true"
            for c in classes)
        meta: Obj = {"name": self.class_name, "labels": {"app.kubernetes.io/managed-by": "kybernetes"}}
        if not other_default:
            meta["annotations"] = {DEFAULT_CLASS_ANNOTATION: "true"}
        obj = {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": meta,
               "spec": {"controller": self.controller_name}}
        try:
            await self.client.resource("networking.k8s.io/v1", "ingressclasses", False).create(obj)
            log.info("ingress: created IngressClass %s%s", self.class_name,
                     "" if other_default else " (default)")
        except StatusError as e:
            if e.code != 409:   # someone else's (another node's) is as good; anything else is worth a word
                log.warning("ingress: creating IngressClass %s failed: %s", self.class_name, e)
        # Its watch event rebuilds the table; Ingresses without a class are served from then on.

    # ------------------------------------------------------------------ events

    def _mark(self) -> None:
        self._need_sync = True
        self.idle.clear()
        self._wake.set()

    def _mark_status(self) -> None:
        self.idle.clear()
        self._wake.set()

    def _on_lease(self, _lease: Obj) -> None:
        self._mark_status()

    def _on_lease_update(self, old: Obj, new: Obj) -> None:
        def addrs(o: Obj) -> Any:
            return ((o.get("metadata") or {}).get("annotations") or {}).get(LEASE_ADDRESSES_ANNOTATION)
        if addrs(old) != addrs(new):
            self._mark_status()

    def _mark_any(self, _obj: Obj) -> None:
        self._mark()

    def _on_ingress_update(self, old: Obj, new: Obj) -> None:
        if _routing_view(old) != _routing_view(new):
            self._mark()
        elif self.publish_status and any(
                (i.get("metadata") or {}).get("uid") == (new.get("metadata") or {}).get("uid")
                for i in self._served):
            self._mark()  # its status changed (our write, or someone else's to undo)

    def _on_service(self, svc: Obj) -> None:
        meta = svc.get("metadata") or {}
        if f"{meta.get('namespace')}/{meta.get('name')}" in self._services_used:
            self._mark()

    def _on_slice(self, sl: Obj) -> None:
        if any(k in self._services_used for k in _slice_service(sl)):
            self._mark()

    def _on_slice_update(self, old: Obj, new: Obj) -> None:
        if old.get("endpoints") != new.get("endpoints") or old.get("ports") != new.get("ports") or \
                _slice_service(old) != _slice_service(new):
            self._on_slice(old)
            self._on_slice(new)

    def _on_secret(self, secret: Obj) -> None:
        meta = secret.get("metadata") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        if key in self._secrets_used or key == self.default_tls_secret:
            self._mark()

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        while True:
            if not self._wake.is_set():
                self.idle.set()
            await self._wake.wait()
            await asyncio.sleep(self.sync_delay)
            self._wake.clear()
            if self._need_sync:
                self._need_sync = False
                try:
                    self.sync()
                except Exception:
                    log.exception("ingress: rebuilding the route table failed")
            if self.publish_status:
                await self._publish_status()

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.resync_period)
            self._mark()

    def sync(self) -> None:
        """Rebuild the route table and certificates from the caches and swap them in."""
        assert self.ingresses is not None and self.classes is not None and self.services is not None
        assert self.slices is not None and self.secrets is not None
        services, slices, secrets = self.services, self.slices, self.secrets
        names, default = our_classes(self.classes.list(), self.controller_name)
        ours = [i for i in self.ingresses.list() if ingress_is_ours(i, names, default)]
        used: set[str] = set()
        previous = self._backends
        backends: dict[str, Backend] = {}

        def resolve(ns: str, b: Obj | None) -> Backend:
            name = (((b or {}).get("service")) or {}).get("name") or ""
            key = f"{ns}/{name}"
            used.add(key)
            got = resolve_backend(ns, b, services.get(key), slices.by_index(_SLICE_INDEX, key))
            # An unchanged backend is kept, and with it its place in the round robin.
            old = previous.get(got.key)
            if old is not None and old.endpoints == got.endpoints and old.problem == got.problem:
                got = old
            backends[got.key] = got
            return got

        table = build_table(ours, resolve, self.defaults)
        self._backends = backends
        pairs: dict[str, PemPair] = {}
        secrets_used: set[str] = set()
        for host, skey in tls_hosts(ours).items():
            secrets_used.add(skey)
            pair = secret_pair(secrets.get(skey))
            if pair is None:
                if skey not in self._bad_secrets:
                    self._bad_secrets.add(skey)
                    log.warning("ingress: TLS secret %s (for %s) is missing or not a kubernetes.io/tls "
                                "secret; the default certificate is served", skey, host)
                continue
            self._bad_secrets.discard(skey)
            pairs[host] = pair
        default_pair = None
        if self.default_tls_secret:
            default_pair = secret_pair(secrets.get(self.default_tls_secret))
        self.certs.update(pairs, default_pair)
        self._services_used = used
        self._secrets_used = secrets_used
        now_served = {meta_namespace_key(i) for i in ours}
        self._released |= {meta_namespace_key(i) for i in self._served} - now_served
        self._served = ours
        self.proxy.table = table
        self.syncs += 1

    async def _renew_lease(self) -> None:
        """Announce our addresses in our Lease, now and every LEASE_RENEW seconds."""
        assert self.status_lease_namespace is not None
        rc = self.client.resource("coordination.k8s.io/v1", "leases")
        ns = self.status_lease_namespace
        warned = False
        while True:
            meta = {"name": self.lease_name, "namespace": ns, "labels": {LEASE_LABEL: "true"},
                    "annotations": {LEASE_CONTROLLER_ANNOTATION: self.controller_name,
                                    LEASE_ADDRESSES_ANNOTATION: ",".join(self.status_addresses),
                                    LEASE_PORTS_ANNOTATION: ",".join(
                                        map(str, sorted({*self.http_ports, *self.https_ports})))}}
            spec = {"holderIdentity": self.node_name, "leaseDurationSeconds": LEASE_DURATION,
                    "renewTime": _micro_now()}
            try:
                try:
                    await rc.patch(self.lease_name, {"metadata": meta, "spec": spec}, namespace=ns)
                except StatusError as e:
                    if e.code != 404:
                        raise
                    await rc.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
                                     "spec": {**spec, "acquireTime": spec["renewTime"]}}, ns)
                warned = False
            except Exception as e:  # the API may be away: the next renewal tries again
                if not warned:
                    log.warning("ingress: renewing lease %s/%s failed: %s", ns, self.lease_name, e)
                    warned = True
            # The interval is the heartbeat itself, not a wait for a condition.
            await asyncio.sleep(LEASE_RENEW)

    def published_addresses(self) -> list[str]:
        """The addresses the Ingresses' status lists: ours and those of the other live Leases."""
        by_node: dict[str, list[str]] = {self.node_name: self.status_addresses}
        if self.leases is not None:
            now = time.time()
            for lease in self.leases.list():
                meta = lease.get("metadata") or {}
                ann = meta.get("annotations") or {}
                spec = lease.get("spec") or {}
                holder = spec.get("holderIdentity") or ""
                renewed = parse_time(spec.get("renewTime"))
                if ann.get(LEASE_CONTROLLER_ANNOTATION) != self.controller_name or not holder or \
                        holder == self.node_name or renewed is None or \
                        renewed + (spec.get("leaseDurationSeconds") or LEASE_DURATION) < now:
                    continue
                by_node[holder] = [a for a in (ann.get(LEASE_ADDRESSES_ANNOTATION) or "").split(",") if a]
        return [a for node in sorted(by_node) for a in by_node[node]]

    async def _publish_status(self) -> None:
        want = status_ingress(self.published_addresses())
        for ing in list(self._served):
            if _lb_ingress(ing) != want:
                await self._write_status(ing, want)
        # An Ingress that is no longer ours loses the addresses we gave it (and nothing someone else wrote).
        assert self.ingresses is not None
        for key in list(self._released):
            self._released.discard(key)
            ing = self.ingresses.get(key)
            if ing is not None and _lb_ingress(ing) == want and want:
                await self._write_status(ing, [])

    async def _write_status(self, ing: Obj, value: list[Obj]) -> None:
        meta = ing.get("metadata") or {}
        try:
            await self.client.resource("networking.k8s.io/v1", "ingresses").patch(
                meta.get("name"), {"status": {"loadBalancer": {"ingress": value or None}}},
                namespace=meta.get("namespace"), subresource="status")
        except StatusError as e:
            if e.code != 404:
                log.warning("ingress: writing the status of %s/%s failed: %s", meta.get("namespace"),
                            meta.get("name"), e)
        except Exception as e:  # the API may be away; the resync tries again
            log.warning("ingress: writing the status of %s/%s failed: %s", meta.get("namespace"),
                        meta.get("name"), e)


def _lb_ingress(ing: Obj) -> list[Obj]:
    return (((ing.get("status") or {}).get("loadBalancer") or {}).get("ingress")) or []
