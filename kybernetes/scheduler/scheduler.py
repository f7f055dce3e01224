"""The scheduler component: watch pending pods, pick a node for each, bind it through the API.

`Scheduler(client, config)` runs anywhere a Client reaches the API server:
in the server's process or as its own. It keeps three informers (nodes, the
non-terminal pods, namespaces; plus PriorityClasses to resolve priorities
admission has not filled in) and feeds them into the `Cache` of NodeInfos
and the `SchedulingQueue`. One loop pops a pod, runs the framework's
synchronous cycle against the cache, *assumes* the pod on the chosen node
(so the next cycle sees the room taken) and binds it in the background with
POST pods/NAME/binding; the informer's view of the bound pod confirms the
assumption, a failed binding forgets it and requeues the pod.

A pod that fits nowhere gets a Warning event (reason FailedScheduling, the
upstream-style reason summary as message), a PodScheduled=False condition
with reason Unschedulable, and, when preemption finds room, its victims
deleted and status.nominatedNodeName set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kybernetes.api.errors import StatusError
from kybernetes.api.times import format_time
from kybernetes.client import Client, Informer
from kybernetes.client.informer import strip_managed_fields
from kybernetes.client.events import EventRecorder

from .framework import FitError, Framework
from .nodeinfo import Cache, PodInfo, pod_key
from .plugins import DEFAULT_WEIGHTS, LEAST_ALLOCATED, default_plugins
from .plugins.noderesources import DEFAULT_RESOURCES
from .plugins.volumebinding import PreBindError
from .preemption import Preemptor
from .queue import (
    ASSIGNED_POD_ADD,
    ASSIGNED_POD_DELETE,
    ASSIGNED_POD_UPDATE,
    NAMESPACE_CHANGE,
    NODE_ADD,
    NODE_UPDATE,
    PV_CHANGE,
    PVC_CHANGE,
    STORAGE_CLASS_CHANGE,
    QueuedPod,
    SchedulingQueue,
)

log = logging.getLogger("kybernetes.scheduler")

Obj = dict[str, Any]
DEFAULT_SCHEDULER_NAME = "default-scheduler"
_TERMINAL = ("Succeeded", "Failed")


def _now() -> str:
    return format_time()


@dataclass
class SchedulerConfig:
    """What a user can tune; `from_kube_scheduler_configuration` reads upstream's config file shape."""

    scheduler_name: str = DEFAULT_SCHEDULER_NAME
    scoring_strategy: str = LEAST_ALLOCATED          # or MostAllocated, RequestedToCapacityRatio
    resources: Sequence[tuple[str, int]] = DEFAULT_RESOURCES
    shape: Sequence[tuple[int, int]] = ((0, 10), (100, 0))
    weights: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    disabled_plugins: Sequence[str] = ()
    percentage_of_nodes_to_score: int = 0           # 0: adaptive, as upstream
    pod_initial_backoff_seconds: float = 1.0
    pod_max_backoff_seconds: float = 10.0
    max_unschedulable_seconds: float = 300.0
    preemption: bool = True
    record_scheduled_events: bool = True

    @classmethod
    def from_kube_scheduler_configuration(cls, doc: Mapping[str, Any]) -> SchedulerConfig:
        """A kubescheduler.config.k8s.io/v1 KubeSchedulerConfiguration (first profile)."""
        cfg = cls()
        if doc.get("percentageOfNodesToScore") is not None:
            cfg.percentage_of_nodes_to_score = int(doc["percentageOfNodesToScore"])
        if doc.get("podInitialBackoffSeconds") is not None:
            cfg.pod_initial_backoff_seconds = float(doc["podInitialBackoffSeconds"])
        if doc.get("podMaxBackoffSeconds") is not None:
            cfg.pod_max_backoff_seconds = float(doc["podMaxBackoffSeconds"])
        profiles = doc.get("profiles") or [{}]
        profile = profiles[0] or {}
        cfg.scheduler_name = profile.get("schedulerName") or DEFAULT_SCHEDULER_NAME
        if profile.get("percentageOfNodesToScore") is not None:
            cfg.percentage_of_nodes_to_score = int(profile["percentageOfNodesToScore"])
        disabled = []
        plugins = profile.get("plugins") or {}
        for point in ("multiPoint", "filter", "score", "postFilter"):
            for p in (plugins.get(point) or {}).get("disabled") or []:
                name = p.get("name") or ""
                if name == "DefaultPreemption" or (name == "*" and point == "postFilter"):
                    cfg.preemption = False
                elif point == "score":
                    for n in ([*cfg.weights] if name == "*" else [name]):
                        cfg.weights[n] = 0
                else:
                    disabled.append(name)
            for p in (plugins.get(point) or {}).get("enabled") or []:
                if p.get("weight") is not None and point in ("score", "multiPoint"):
                    cfg.weights[p["name"]] = int(p["weight"])
        cfg.disabled_plugins = tuple(disabled)
        for pc in profile.get("pluginConfig") or []:
            if pc.get("name") != "NodeResourcesFit":
                continue
            strategy = (pc.get("args") or {}).get("scoringStrategy") or {}
            cfg.scoring_strategy = strategy.get("type") or LEAST_ALLOCATED
            if strategy.get("resources"):
                cfg.resources = tuple((r["name"], int(r.get("weight") or 1)) for r in strategy["resources"])
            shape = (strategy.get("requestedToCapacityRatio") or {}).get("shape")
            if shape:
                cfg.shape = tuple((int(p["utilization"]), int(p["score"])) for p in shape)
        return cfg


def _assigned(pod: Obj) -> bool:
    return bool((pod.get("spec") or {}).get("nodeName"))


def _terminal(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in _TERMINAL


def _node_changed(old: Obj, new: Obj) -> bool:
    """Did anything scheduling looks at change (not just a heartbeat)?"""
    om, nm = old.get("metadata") or {}, new.get("metadata") or {}
    os_, ns = old.get("status") or {}, new.get("status") or {}
    return (om.get("labels") != nm.get("labels") or old.get("spec") != new.get("spec")
            or os_.get("allocatable") != ns.get("allocatable") or os_.get("capacity") != ns.get("capacity"))


class Scheduler:
    """Schedules the pods whose spec.schedulerName is config.scheduler_name."""

    def __init__(self, client: Client, config: SchedulerConfig | None = None):
        self.client = client
        self.config = cfg = config or SchedulerConfig()
        self.cache = Cache()
        self.cache_priority_classes: dict[str, int] = {}
        self.queue = SchedulingQueue(initial_backoff=cfg.pod_initial_backoff_seconds,
                                     max_backoff=cfg.pod_max_backoff_seconds,
                                     max_unschedulable=cfg.max_unschedulable_seconds)
        plugins = default_plugins(cfg.scoring_strategy, cfg.resources, cfg.shape, cfg.disabled_plugins)
        self.framework = Framework(plugins, cfg.weights,
                                   percentage_of_nodes_to_score=cfg.percentage_of_nodes_to_score)
        self.preemptor = Preemptor(self.framework)
        self.pods = client.resource("v1", "pods")
        self.recorder = EventRecorder(client, cfg.scheduler_name,
                                      instance=f"{cfg.scheduler_name}-{socket.gethostname()}")
        # The scheduler never reads managedFields; its caches do not keep them.
        self.node_informer = Informer(client.resource("v1", "nodes", namespaced=False),
                                      transform=strip_managed_fields)
        self.pod_informer = Informer(self.pods, field_selector="status.phase!=Succeeded,status.phase!=Failed",
                                     transform=strip_managed_fields)
        self.namespace_informer = Informer(client.resource("v1", "namespaces", namespaced=False))
        self.priority_class_informer = Informer(
            client.resource("scheduling.k8s.io/v1", "priorityclasses", namespaced=False))
        # What the VolumeBinding plugin reads: claims, volumes and classes.
        self.pvc_informer = Informer(client.resource("v1", "persistentvolumeclaims"), transform=strip_managed_fields)
        self.pv_informer = Informer(client.resource("v1", "persistentvolumes", namespaced=False),
                                    transform=strip_managed_fields)
        self.storage_class_informer = Informer(
            client.resource("storage.k8s.io/v1", "storageclasses", namespaced=False), transform=strip_managed_fields)
        self.informers = [self.priority_class_informer, self.namespace_informer, self.storage_class_informer,
                          self.pv_informer, self.pvc_informer, self.node_informer, self.pod_informer]
        self.volume_binding = next((p for p in plugins if p.name == "VolumeBinding"), None)
        if self.volume_binding is not None:
            self.volume_binding.claims = self.pvc_informer
            self.volume_binding.volumes = self.pv_informer
            self.volume_binding.classes = self.storage_class_informer
            self.volume_binding.claims_client = client.resource("v1", "persistentvolumeclaims")
        self.reporting_instance = f"{cfg.scheduler_name}-{socket.gethostname()}"
        self.stats = {"scheduled": 0, "unschedulable": 0, "bind_errors": 0, "preemptions": 0,
                      "cycle_seconds": 0.0}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._wire()

    # ------------------------------------------------------------------ lifecycle

    async def start(self, sync_timeout: float = 60.0) -> None:
        for inf in self.informers:
            await inf.start()
        for inf in self.informers:
            await inf.wait_for_sync(sync_timeout)
        self._loop_task = asyncio.get_running_loop().create_task(self._schedule_loop(), name="scheduler-loop")
        self._housekeeping = asyncio.get_running_loop().create_task(self._housekeeping_loop())

    async def run(self) -> None:
        """Start and schedule until cancelled."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        self.queue.close()
        for t in (self._loop_task, self._housekeeping):
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        self._loop_task = self._housekeeping = None
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.recorder.close()
        for inf in self.informers:
            await inf.stop()

    async def __aenter__(self) -> Scheduler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(5)
            self.cache.cleanup_assumed()

    # ------------------------------------------------------------------ informer wiring

    def _wire(self) -> None:
        self.node_informer.add_handler(self._on_node_add, self._on_node_update, self._on_node_delete)
        self.pod_informer.add_handler(self._on_pod_add, self._on_pod_update, self._on_pod_delete)
        self.namespace_informer.add_handler(
            lambda ns: self._on_namespace(ns), lambda old, new: self._on_namespace(new, old),
            lambda ns: self.cache.set_namespace(ns, deleted=True))
        self.priority_class_informer.add_handler(self._on_priority_class, lambda _o, n: self._on_priority_class(n),
                                                 self._on_priority_class_delete)
        self.pvc_informer.add_handler(lambda _c: self._on_claim(), lambda _o, _n: self._on_claim(),
                                      lambda _c: self._on_claim())
        self.pv_informer.add_handler(lambda _v: self.queue.move_all(PV_CHANGE),
                                     lambda _o, _n: self.queue.move_all(PV_CHANGE))
        self.storage_class_informer.add_handler(lambda _c: self.queue.move_all(STORAGE_CLASS_CHANGE),
                                                lambda _o, _n: self.queue.move_all(STORAGE_CLASS_CHANGE))

    def _on_claim(self) -> None:
        if self.volume_binding is not None:
            self.volume_binding.notify()
        self.queue.move_all(PVC_CHANGE)

    def _on_priority_class(self, pc: Obj) -> None:
        value = pc.get("value")
        if isinstance(value, int):
            self.cache_priority_classes[(pc.get("metadata") or {}).get("name") or ""] = value

    def _on_priority_class_delete(self, pc: Obj) -> None:
        self.cache_priority_classes.pop((pc.get("metadata") or {}).get("name") or "", None)

    def _resolve_priority(self, pi: PodInfo) -> PodInfo:
        spec = pi.pod.get("spec") or {}
        if spec.get("priority") is None and spec.get("priorityClassName"):
            pi.priority = self.cache_priority_classes.get(spec["priorityClassName"], 0)
        return pi

    def _on_namespace(self, ns: Obj, old: Obj | None = None) -> None:
        self.cache.set_namespace(ns)
        if old is not None and (old.get("metadata") or {}).get("labels") != (ns.get("metadata") or {}).get("labels"):
            self.queue.move_all(NAMESPACE_CHANGE)

    def _on_node_add(self, node: Obj) -> None:
        self.cache.add_node(node)
        self.queue.move_all(NODE_ADD)

    def _on_node_update(self, old: Obj, new: Obj) -> None:
        if _node_changed(old, new):
            self.cache.update_node(new)
            self.queue.move_all(NODE_UPDATE)
        else:
            ni = self.cache.nodes.get((new.get("metadata") or {}).get("name") or "")
            if ni is not None:
                ni.node = new

    def _on_node_delete(self, node: Obj) -> None:
        self.cache.remove_node(node)

    def _responsible(self, pod: Obj) -> bool:
        return ((pod.get("spec") or {}).get("schedulerName") or DEFAULT_SCHEDULER_NAME) == self.config.scheduler_name

    def _track_nomination(self, pod: Obj) -> None:
        nominated = (pod.get("status") or {}).get("nominatedNodeName") or ""
        if nominated:
            self.cache.set_nominated(self._resolve_priority(PodInfo(pod)), nominated)
        else:
            self.cache.clear_nominated(pod_key(pod))

    def _on_pod_add(self, pod: Obj) -> None:
        if _terminal(pod):
            return
        if _assigned(pod):
            self.cache.add_pod(pod)
            self._fix_cached_priority(pod)
            self.cache.clear_nominated(pod_key(pod))
            self.queue.move_all(ASSIGNED_POD_ADD)
        elif self._responsible(pod) and not (pod.get("metadata") or {}).get("deletionTimestamp"):
            self.queue.add(pod)
            self._fix_queued_priority(pod)
            self._track_nomination(pod)

    def _on_pod_update(self, old: Obj, new: Obj) -> None:
        if _assigned(new):
            if not _assigned(old):
                self.queue.delete(new)
                self.cache.clear_nominated(pod_key(new))
            if _terminal(new):
                self._on_pod_delete(new)
                return
            self.cache.update_pod(new)
            self._fix_cached_priority(new)
            if not _assigned(old):
                self.queue.move_all(ASSIGNED_POD_ADD)
            elif (old.get("metadata") or {}).get("labels") != (new.get("metadata") or {}).get("labels"):
                self.queue.move_all(ASSIGNED_POD_UPDATE)
        elif self._responsible(new):
            if (new.get("metadata") or {}).get("deletionTimestamp") or _terminal(new):
                self._forget_pending(new)
            else:
                self.queue.update(old, new)
                self._fix_queued_priority(new)
                self._track_nomination(new)

    def _on_pod_delete(self, pod: Obj) -> None:
        if _assigned(pod):
            self.cache.remove_pod(pod)
            self.queue.move_all(ASSIGNED_POD_DELETE)
        else:
            self._forget_pending(pod)

    def _forget_pending(self, pod: Obj) -> None:
        key = pod_key(pod)
        self.queue.delete(pod)
        if self.volume_binding is not None:
            self.volume_binding.notify()  # a binding waiting for this pod's claims can stop
        self.cache.clear_nominated(key)
        self.cache.forget_pod(key)

    def _fix_queued_priority(self, pod: Obj) -> None:
        qp = self.queue.get(pod_key(pod))
        if qp is not None:
            self._resolve_priority(qp.info)

    def _fix_cached_priority(self, pod: Obj) -> None:
        spec = pod.get("spec") or {}
        if spec.get("priority") is None and spec.get("priorityClassName"):
            ni = self.cache.nodes.get(spec.get("nodeName") or "")
            pi = ni.pods.get(pod_key(pod)) if ni is not None else None
            if pi is not None:
                self._resolve_priority(pi)

    # ------------------------------------------------------------------ the loop

    async def _schedule_loop(self) -> None:
        while True:
            qp = await self.queue.pop()
            try:
                self.schedule_one(qp)
            except Exception:
                log.exception("scheduling %s failed", qp.key)
                self.queue.add_unschedulable(qp, self.queue.scheduling_cycle, error=True)
            # Let informer events and bindings run between cycles.
            await asyncio.sleep(0)

    def schedule_one(self, qp: QueuedPod) -> str | None:
        """One synchronous scheduling cycle; returns the chosen node (binding runs in the background)."""
        pi = qp.info
        if pi.deleting or pi.node_name or self.cache.is_assumed(pi.key):
            self.queue.done(pi.key)
            return None
        cycle = self.queue.scheduling_cycle
        started = time.perf_counter()
        try:
            result = self.framework.schedule(pi, self.cache)
        except FitError as fe:
            qp.unschedulable_plugins = set(fe.diagnosis.unschedulable_plugins)
            candidate = None
            if self.config.preemption and fe.num_all_nodes:
                candidate, fe.diagnosis.post_filter_msg = self.preemptor.preempt(pi, self.cache, fe.diagnosis)
            if candidate is not None:
                self.cache.set_nominated(pi, candidate.node)
                self.stats["preemptions"] += 1
            self.stats["cycle_seconds"] += time.perf_counter() - started
            self.stats["unschedulable"] += 1
            message = str(fe)
            self.queue.add_unschedulable(qp, cycle)
            self._spawn(self._handle_failure(qp.pod, pi, message, candidate))
            return None
        self.stats["cycle_seconds"] += time.perf_counter() - started
        self.cache.assume_pod(pi, result.node)
        self.cache.clear_nominated(pi.key)
        self._spawn(self._bind(qp, result.node, cycle))
        return result.node

    # ------------------------------------------------------------------ API writes

    async def _bind(self, qp: QueuedPod, node: str, cycle: int) -> None:
        pi = qp.info
        body = {"apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": pi.name, "namespace": pi.namespace, **({"uid": pi.uid} if pi.uid else {})},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        try:
            if self.volume_binding is not None:
                await self.volume_binding.pre_bind(pi, node, wanted=lambda: pi.key in self.queue)
            await self.pods.create_subresource(pi.name, "binding", body, pi.namespace)
        except asyncio.CancelledError:
            raise
        except PreBindError as e:
            self.cache.forget_pod(pi.key)
            self.stats["bind_errors"] += 1
            self.queue.add_unschedulable(qp, cycle, error=True)
            await self._record_event(qp.pod, "Warning", "FailedScheduling",
                                     f'running PreBind plugin "VolumeBinding": {e}')
            return
        except Exception as e:
            self.cache.forget_pod(pi.key)
            self.stats["bind_errors"] += 1
            gone = isinstance(e, StatusError) and e.code in (404, 409) and (
                e.code == 404 or "already assigned" in e.message or "being deleted" in e.message)
            if gone:
                self.queue.done(pi.key)
                return
            log.warning("binding %s to %s failed: %s", pi.key, node, e)
            self.queue.add_unschedulable(qp, cycle, error=True)
            await self._record_event(qp.pod, "Warning", "FailedScheduling", f"Binding rejected: {e}")
            return
        self.cache.finish_binding(pi.key)
        self.queue.done(pi.key)
        self.stats["scheduled"] += 1
        if self.config.record_scheduled_events:
            await self._record_event(qp.pod, "Normal", "Scheduled",
                                     f"Successfully assigned {pi.key} to {node}")

    async def _handle_failure(self, pod: Obj, pi: PodInfo, message: str, candidate: Any) -> None:
        try:
            if candidate is not None:
                for victim in candidate.victims:
                    with contextlib.suppress(StatusError):
                        await self.pods.delete(victim.name, victim.namespace)
                    await self._record_event(victim.pod, "Normal", "Preempted",
                                             f"Preempted by pod {pi.uid} on node {candidate.node}")
            await self._record_event(pod, "Warning", "FailedScheduling", message)
            await self._set_unschedulable(pod, message, candidate.node if candidate is not None else None)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("recording scheduling failure of %s: %s", pi.key, e)

    async def _set_unschedulable(self, pod: Obj, message: str, nominated: str | None) -> None:
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        current = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), None)
        patch_status: Obj = {}
        if not (current and current.get("status") == "False" and current.get("reason") == "Unschedulable"
                and current.get("message") == message):
            patch_status["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                           "message": message, "lastProbeTime": None,
                                           "lastTransitionTime": _now()}]
        if nominated is not None and status.get("nominatedNodeName") != nominated:
            patch_status["nominatedNodeName"] = nominated
        if not patch_status:
            return
        try:
            await self.pods.patch(meta.get("name") or "", {"status": patch_status}, namespace=meta.get("namespace"),
                                  patch_type="strategic", subresource="status")
        except StatusError as e:
            if e.code != 404:
                raise

    async def _record_event(self, pod: Obj, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about pod (written in the background; repeats counted)."""
        self.recorder.event({**pod, "apiVersion": "v1", "kind": "Pod"}, type_, reason, message)
