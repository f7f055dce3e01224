"""The Kubelet: one per node; joins the node to the cluster and runs the pods bound to it.

It owns the wiring: the Node and Lease (node.py), an informer on the pods whose
spec.nodeName is this node, one PodWorker per pod (podworker.py), static pods from
a manifest directory (static.py), the volume manager, the restart back-off, and
the Events it records (its own, the runtime's events and container notices). The
streaming server (logs/exec/attach/port-forward) lives elsewhere and reaches the
runtime through ``kubelet.runtime`` and ``kubelet.find_container``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from kybernetes.api.errors import StatusError
from kybernetes.client import Client, Informer
from kybernetes.client.events import EventRecorder
from kybernetes.kubelet import static as staticpods
from kybernetes.kubelet.dns import ResolvConf, parse_resolv_conf
from kybernetes.kubelet.images import ImageManager, RuntimeImages
from kybernetes.kubelet.network import NetworkManager
from kybernetes.kubelet.node import NodeConfig, NodeStatusManager, capacity, detect_host_ip
from kybernetes.kubelet.podworker import BackOff, PodWorker
from kybernetes.kubelet.pvc import ClaimResolver
from kybernetes.kubelet.tokens import TokenManager
from kybernetes.kubelet.volumes import VolumeError, VolumeManager
from kybernetes.runtime.base import Notice, Runtime, RuntimeEvent

log = logging.getLogger(__name__)

Obj = dict[str, Any]

# Node-wide conditions the runtime repeats on every object; said once on the Node.
_NODE_WIDE_NOTICES = ("NoIsolation", "NoResourceLimits")


@dataclass
class KubeletConfig:
    node_name: str = field(default_factory=lambda: socket.gethostname().lower())
    root_dir: str = "/var/lib/kybernetes/kubelet"
    host_ip: str = ""  # detected from the default route when empty
    # Every address of the node, host_ip first (an IPv4,IPv6 pair on a dual-stack node):
    # the Node's InternalIPs and pods' status.hostIPs. Empty: host_ip alone.
    host_ips: list[str] = field(default_factory=list)
    port: int = 10250  # the streaming server's port, published in the Node's daemonEndpoints
    sync_period: float = 1.0  # how often a pod worker polls the runtime (upstream's PLEG relist)
    volume_sync_period: float = 5.0  # configMap/secret/downwardAPI refresh of running pods
    backoff_base: float = 10.0
    backoff_max: float = 300.0
    lease_duration: int = 40
    lease_renew_interval: float = 10.0
    node_status_update_frequency: float = 10.0
    node_status_report_frequency: float = 300.0
    probe_time_scale: float = 1.0  # multiplies probe seconds; tests shrink it
    static_pod_path: str | None = None
    max_pods: int = 110
    node_labels: dict[str, str] = field(default_factory=dict)
    # Image GC (upstream's imageGCHighThresholdPercent / imageGCLowThresholdPercent), checked
    # every image_gc_period seconds; unused images go, least recently used first.
    image_gc_high_threshold_percent: int = 85
    image_gc_low_threshold_percent: int = 80
    image_gc_period: float = 300.0
    # The cluster DNS pods on the pod network are pointed at (ClusterFirst), and its domain.
    cluster_dns: list[str] = field(default_factory=list)
    cluster_domain: str = "cluster.local"
    resolv_conf: str = "/etc/resolv.conf"  # the node's, for dnsPolicy Default


class Kubelet:
    """``Kubelet(client, runtime, KubeletConfig(...))``; ``await start()`` ... ``await stop()``."""

    def __init__(self, client: Client, runtime: Runtime, config: KubeletConfig | None = None,
                 images: Any = None, network: NetworkManager | None = None, **overrides: Any) -> None:
        cfg = config or KubeletConfig()
        for k, v in overrides.items():
            if not hasattr(cfg, k):
                raise TypeError(f"unknown kubelet option {k!r}")
            setattr(cfg, k, v)
        cfg.root_dir = os.path.abspath(cfg.root_dir)
        cfg.host_ip = cfg.host_ip or (cfg.host_ips[0] if cfg.host_ips else detect_host_ip())
        cfg.host_ips = [cfg.host_ip, *(ip for ip in cfg.host_ips if ip != cfg.host_ip)]
        self.config = cfg
        self.client = client
        self.runtime = runtime
        self.node_name = cfg.node_name
        os.makedirs(cfg.root_dir, exist_ok=True)
        self.node = NodeStatusManager(client, NodeConfig(
            name=cfg.node_name, root_dir=cfg.root_dir, host_ip=cfg.host_ip, host_ips=cfg.host_ips, port=cfg.port,
            lease_duration=cfg.lease_duration, lease_renew_interval=cfg.lease_renew_interval,
            status_update_frequency=cfg.node_status_update_frequency,
            status_report_frequency=cfg.node_status_report_frequency, max_pods=cfg.max_pods,
            labels=cfg.node_labels, runtime_version=_runtime_version(runtime)))
        self.allocatable = capacity(cfg.root_dir, cfg.max_pods)[1]
        self.pods = client.resource("v1", "pods")
        self.recorder = EventRecorder(client, "kubelet", host=self.node_name)
        self._configmaps = client.resource("v1", "configmaps")
        self._secrets = client.resource("v1", "secrets")
        self._sa = client.resource("v1", "serviceaccounts")
        self.tokens = TokenManager(self._request_token)
        self.volumes = VolumeManager(cfg.root_dir, get_configmap=self.get_configmap, get_secret=self.get_secret,
                                     get_token=self._token, node_allocatable=self.allocatable,
                                     resolve_claim=ClaimResolver(client).host_path)
        self.backoff = BackOff(cfg.backoff_base, cfg.backoff_max)
        # The node's image service; runtimes that carry their own images are wrapped.
        self.images = images if images is not None else RuntimeImages(runtime)
        self.image_manager = ImageManager(self.images, event=self.event, get_secret=self.get_secret)
        # The pod network (None: every pod shares the node's network).
        self.network = network
        self.pod_informer = Informer(self.pods, field_selector=f"spec.nodeName={cfg.node_name}")
        self.service_informer = Informer(client.resource("v1", "services"))
        self.workers: dict[str, PodWorker] = {}
        self._static: dict[str, Obj] = {}
        self._owners: dict[str, PodWorker] = {}
        self._pulling: dict[str, PodWorker] = {}
        self._pending_runtime: list[RuntimeEvent] = []
        self._noticed: set[tuple[str, str, str]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        runtime.on_event(self._pending_runtime.append)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Register the node, then start heartbeats, the pod informer and static pods."""
        await self.node.register()
        self.node.start()
        if self.network is not None:
            await self.network.start()
            # A node restarting already has its pod CIDRs; a new one gets them within moments.
            if await self.network.wait_ready(5.0):
                # Addresses of sandboxes that went away while no kubelet ran.
                await self.network.gc({sb.id for sb in await self.runtime.list_pod_sandboxes()})
        loop = asyncio.get_running_loop()
        for n in getattr(self.runtime, "base_notices", []) or []:
            self._node_event("Warning", n.reason, n.message)
        self.service_informer.add_handler()
        await self.service_informer.start()
        self.pod_informer.add_handler(on_add=self._pod_seen, on_update=lambda _o, n: self._pod_seen(n),
                                      on_delete=self._pod_gone)
        await self.pod_informer.start()
        if self.config.static_pod_path:
            self._tasks.append(loop.create_task(self._static_loop()))
        self._tasks.append(loop.create_task(self._housekeeping()))
        if self.image_manager.real:
            await self._refresh_node_images()
            self._tasks.append(loop.create_task(self._image_loop()))
        log.info("kubelet on node %s (%s) started", self.node_name, self.config.host_ip)

    async def stop(self) -> None:
        """Stop the kubelet's loops; containers keep running for the next kubelet to adopt."""
        await self.pod_informer.stop()
        await self.service_informer.stop()
        for w in list(self.workers.values()):
            await w.stop()
        await self.node.stop()
        if self.network is not None:
            await self.network.stop()
        # Let queued events reach the API before going away.
        await self.recorder.close(2.0)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []

    # ------------------------------------------------------------------ pods

    def _pod_seen(self, pod: Obj) -> None:
        if staticpods.is_mirror(pod):
            return  # the manifest drives static pods; the mirror only shows them
        uid = pod["metadata"]["uid"]
        w = self.workers.get(uid)
        if w is None:
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed") and \
                    not pod["metadata"].get("deletionTimestamp"):
                # Finished before we saw it: nothing to run. (A restarted kubelet also
                # lands here for pods it completed earlier.)
                return
            self._start_worker(pod)
        else:
            w.update(pod)

    def _pod_gone(self, pod: Obj) -> None:
        w = self.workers.get(pod["metadata"].get("uid", ""))
        if w is not None and not w.static:
            w.mark_removed()

    def _start_worker(self, pod: Obj, static: bool = False) -> PodWorker:
        w = PodWorker(self, pod, static=static)
        self.workers[w.uid] = w
        w.start()
        assert w._task is not None
        w._task.add_done_callback(lambda _t, uid=w.uid: self._worker_done(uid))
        return w

    def _worker_done(self, uid: str) -> None:
        w = self.workers.get(uid)
        if w is not None and w.finished:
            del self.workers[uid]
            self.tokens.forget(uid)
            for k in [k for k, v in self._owners.items() if v is w]:
                del self._owners[k]

    def find_worker(self, namespace: str, name: str) -> PodWorker | None:
        for w in self.workers.values():
            if w.namespace == namespace and w.name == name:
                return w
        return None

    def find_container(self, namespace: str, pod: str, container: str) -> tuple[str, str, str] | None:
        """(container id, log path, previous attempt's log path or "") for the streaming server."""
        w = self.find_worker(namespace, pod)
        if w is None:
            return None
        if not container:
            specs = (w.pod.get("spec") or {}).get("containers") or []
            if len(specs) != 1:
                return None
            container = specs[0]["name"]
        return w.find_container(container)

    async def port_forward(self, namespace: str, pod: str, port: int) -> tuple[asyncio.StreamReader,
                                                                              asyncio.StreamWriter]:
        """A connection to a pod's port, made where the pod's network is (its sandbox)."""
        w = self.find_worker(namespace, pod)
        if w is None or w.sandbox_id is None:
            raise ConnectionError(f"pod {namespace}/{pod} has no running sandbox on this node")
        return await self.runtime.open_connection(w.sandbox_id, port)

    async def patch_pod_status(self, worker: PodWorker, status: Obj) -> None:
        await self.pods.patch(worker.name, {"status": status}, namespace=worker.namespace, subresource="status")

    async def delete_pod_object(self, worker: PodWorker) -> None:
        try:
            if worker.static:
                await self.pods.delete(worker.name, worker.namespace, grace_period_seconds=0)
            else:
                await self.pods.delete(worker.name, worker.namespace, grace_period_seconds=0,
                                       preconditions={"uid": worker.uid})
        except StatusError as e:
            if e.code not in (404, 409):
                raise

    # ------------------------------------------------------------------ lookups for workers

    async def get_configmap(self, namespace: str, name: str) -> Obj | None:
        try:
            return await self._configmaps.get(name, namespace)
        except StatusError as e:
            if e.code == 404:
                return None
            raise

    async def get_secret(self, namespace: str, name: str) -> Obj | None:
        try:
            return await self._secrets.get(name, namespace)
        except StatusError as e:
            if e.code == 404:
                return None
            raise

    def services(self) -> list[Obj]:
        return self.service_informer.list()

    async def _request_token(self, namespace: str, service_account: str, body: Obj) -> Obj:
        return await self._sa.create_subresource(service_account, "token", body, namespace)

    async def _token(self, pod: Obj, src: Obj) -> str | None:
        """A pod-bound service account token (TokenRequest), reused until it is due for renewal."""
        try:
            return await self.tokens.get(pod, src)
        except Exception as e:  # any failure to get a token is a failed mount, retried on the next sync
            sa = (pod.get("spec") or {}).get("serviceAccountName") or "default"
            why = e.message if isinstance(e, StatusError) else str(e)
            raise VolumeError(f'failed to fetch token for serviceaccount "{sa}": {why}') from None

    # ------------------------------------------------------------------ events

    def own(self, object_id: str, worker: PodWorker) -> None:
        self._owners[object_id] = worker

    def disown(self, object_id: str) -> None:
        self._owners.pop(object_id, None)

    def pulling(self, image: str, worker: PodWorker) -> None:
        self._pulling[image] = worker

    def event(self, pod: Obj, type_: str, reason: str, message: str, field_path: str = "") -> None:
        """Record a core/v1 Event about a pod (written in the background, repeats counted)."""
        self.recorder.event({**pod, "apiVersion": "v1", "kind": pod.get("kind") or "Pod"}, type_, reason, message,
                            field_path)

    def _node_event(self, type_: str, reason: str, message: str) -> None:
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node_name, "uid": self.node.node_uid or ""}}
        self.event(node, type_, reason, message)

    def notices(self, worker: PodWorker, notices: list[Notice]) -> None:
        """Container notices become Events on the pod, once each."""
        for n in notices:
            if n.reason in _NODE_WIDE_NOTICES:
                continue
            if n.reason == "NetworkNotConfigured" and worker.own_network():
                continue  # the runtime's sandbox has loopback only until the pod network adds it
            key = (worker.uid, n.reason, n.message)
            if key not in self._noticed:
                self._noticed.add(key)
                self.event(worker.pod, n.type, n.reason, n.message)

    def flush_runtime_events(self) -> None:
        """Turn runtime events into Events on the pod they concern (or the node)."""
        pending, self._pending_runtime[:] = list(self._pending_runtime), []
        for ev in pending:
            w = self._owners.get(ev.object_id) or self._pulling.get(ev.object_id)
            if w is None:
                if time.time() - ev.timestamp < 2.0:
                    # Emitted inside a call whose result (the id) the worker has not seen yet.
                    self._pending_runtime.append(ev)
                    continue
                self._node_event(ev.type, ev.reason, ev.message)
                continue
            self.notices(w, [Notice(ev.reason, ev.message, ev.type)])

    # ------------------------------------------------------------------ background loops

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.config.sync_period)
            self.flush_runtime_events()
            live = {w.uid for w in self.workers.values()}
            self._noticed = {k for k in self._noticed if k[0] in live}

    def host_resolv_conf(self) -> ResolvConf:
        """The node's resolv.conf; behind a local stub resolver (127.0.0.53), the one it forwards to."""
        rc = ResolvConf()
        for path in (self.config.resolv_conf, "/run/systemd/resolve/resolv.conf"):
            try:
                with open(path) as f:
                    rc = parse_resolv_conf(f.read())
            except OSError:
                continue
            if rc.nameservers and not all(ns.startswith("127.") or ns == "::1" for ns in rc.nameservers):
                break
        return rc

    def images_in_use(self) -> set[str]:
        """Image ids the pods of this node use (what image GC and removal must keep)."""
        return {rec.image_ref for w in self.workers.values() for rec in w.containers.values() if rec.image_ref}

    async def _refresh_node_images(self) -> None:
        self.node.images = await self.image_manager.node_images()

    async def _image_loop(self) -> None:
        """Keep the Node's status.images current, and collect unused images by disk thresholds."""
        last_gc = time.monotonic()
        while True:
            await asyncio.sleep(self.config.node_status_update_frequency)
            try:
                if time.monotonic() - last_gc >= self.config.image_gc_period:
                    last_gc = time.monotonic()
                    in_use = self.images_in_use()
                    for c in await self.runtime.list_containers():
                        in_use.add(c.image)
                    freed = await self.image_manager.garbage_collect(
                        in_use, self.config.image_gc_high_threshold_percent,
                        self.config.image_gc_low_threshold_percent)
                    if freed:
                        log.info("image garbage collection freed %d bytes", freed)
                await self._refresh_node_images()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("image housekeeping")

    async def _static_loop(self) -> None:
        assert self.config.static_pod_path
        while True:
            try:
                await self._sync_static()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("static pods")
            await asyncio.sleep(self.config.sync_period)

    async def _sync_static(self) -> None:
        assert self.config.static_pod_path
        found = staticpods.scan(self.config.static_pod_path, self.node_name)
        for uid, pod in self._static.items():
            if uid not in found:
                w = self.workers.get(uid)
                if w is not None:
                    grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
                    gone = {**pod, "metadata": {**pod["metadata"], "deletionTimestamp": _now(),
                                                "deletionGracePeriodSeconds": grace}}
                    w.update(gone)
        for uid, pod in found.items():
            if uid not in self._static and uid not in self.workers:
                self._start_worker(pod, static=True)
            await self._ensure_mirror(pod)
        self._static = found

    async def _ensure_mirror(self, pod: Obj) -> None:
        meta = pod["metadata"]
        try:
            cur = await self.pods.get(meta["name"], meta["namespace"])
        except StatusError as e:
            if e.code != 404:
                raise
            cur = None
        if cur is not None:
            ann = (cur["metadata"].get("annotations") or {})
            if ann.get(staticpods.CONFIG_MIRROR) == meta["uid"] and not cur["metadata"].get("deletionTimestamp"):
                return
            # Someone else's pod, an older manifest's mirror, or a deleted mirror: replace it.
            await self.pods.delete(meta["name"], meta["namespace"], grace_period_seconds=0)
        try:
            await self.pods.create(staticpods.mirror_of(pod, self.node.node_uid), meta["namespace"])
        except StatusError as e:
            if e.code != 409:
                raise
        w = self.workers.get(meta["uid"])
        if w is not None:
            w._last_status = None  # the new mirror has no status yet


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _runtime_version(runtime: Runtime) -> str:
    version = getattr(runtime, "version", None)
    if callable(version):
        return version()
    return f"kybernetes-{runtime.name}://0.1.0"
