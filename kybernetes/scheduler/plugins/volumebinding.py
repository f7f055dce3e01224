"""VolumeBinding: a pod's PersistentVolumeClaims must exist and be servable from the node.

* A claim that does not exist, or is being deleted, makes the pod unschedulable
  everywhere (pre-filter).
* An unbound claim whose class binds Immediately (or that has no class) is the
  PV controller's to bind first: "pod has unbound immediate PersistentVolumeClaims".
* A bound claim's volume may carry node affinity (a local or provisioned
  local-path volume lives on one node): other nodes have a "volume node
  affinity conflict".
* An unbound WaitForFirstConsumer claim fits a node that has a matching static
  volume reachable from it, or whose class can provision there (a provisioner
  other than kubernetes.io/no-provisioner, within the class's allowedTopologies).

``pre_bind`` runs in the scheduler's binding task, after a node was chosen and
before the pod is bound: it writes the node into each delayed claim's
``volume.kubernetes.io/selected-node`` annotation, which is what the PV
controller waits for to bind or provision, then waits until every claim of the
pod is bound, so the pod reaches its kubelet with its volumes ready (upstream's
PreBind does the same). Pods without claims cost one dictionary lookup.

The plugin reads claims, volumes and classes from caches the scheduler fills
(its informers); tests can hand it anything with ``get(key)`` and ``list()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from kybernetes.api.storage import (
    ANN_BIND_COMPLETED,
    ANN_SELECTED_NODE,
    NO_PROVISIONER,
    WAIT_FOR_FIRST_CONSUMER,
    annotations,
    binding_mode,
    claim_class,
    claim_names,
    find_matching_volume,
)

from ..framework import SKIP, Status, unresolvable
from ..nodeinfo import Cache, NodeInfo, NodeSelector, PodInfo

Obj = dict[str, Any]

NAME = "VolumeBinding"
UNBOUND_IMMEDIATE = "pod has unbound immediate PersistentVolumeClaims"
NODE_CONFLICT = "node(s) had volume node affinity conflict"
BIND_CONFLICT = "node(s) didn't find available persistent volumes to bind"
PV_NOT_EXIST = "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)"
_NODE_CONFLICT = unresolvable(NAME, NODE_CONFLICT)
_BIND_CONFLICT = unresolvable(NAME, BIND_CONFLICT)
_PV_NOT_EXIST = unresolvable(NAME, PV_NOT_EXIST)
# How long a pod's binding waits for its claims to be bound (upstream's bindTimeoutSeconds).
DEFAULT_BIND_TIMEOUT = 600.0


class Lister(Protocol):
    def get(self, key: str) -> Obj | None: ...

    def list(self) -> list[Obj]: ...


class _Nothing:
    def get(self, key: str) -> Obj | None:
        return None

    def list(self) -> list[Obj]:
        return []


class PreBindError(Exception):
    """The pod's volumes could not be made ready for the chosen node."""


class _State:
    __slots__ = ("bound", "delayed", "missing_pv")

    def __init__(self, bound: list[NodeSelector], delayed: list[tuple[Obj, Obj]], missing_pv: bool):
        self.bound = bound
        self.delayed = delayed
        self.missing_pv = missing_pv


def _topology_allows(sc: Obj, labels: Mapping[str, str]) -> bool:
    terms = sc.get("allowedTopologies") or []
    if not terms:
        return True
    for term in terms:
        exprs = term.get("matchLabelExpressions") or []
        if all(labels.get(e.get("key") or "") in (e.get("values") or []) for e in exprs):
            return True
    return False


class VolumeBinding:
    name = NAME

    def __init__(self, claims: Lister | None = None, volumes: Lister | None = None,
                 classes: Lister | None = None, claims_client: Any = None,
                 bind_timeout: float = DEFAULT_BIND_TIMEOUT):
        self.claims: Lister = claims or _Nothing()
        self.volumes: Lister = volumes or _Nothing()
        self.classes: Lister = classes or _Nothing()
        self.claims_client = claims_client
        self.bind_timeout = bind_timeout
        self._selectors: dict[str, tuple[Any, NodeSelector | None]] = {}
        self._waiters: set[asyncio.Future[None]] = set()

    def _selector(self, pv: Obj) -> NodeSelector | None:
        """The volume's compiled node affinity, kept while the volume object is the same."""
        name = (pv.get("metadata") or {}).get("name") or ""
        required = ((pv.get("spec") or {}).get("nodeAffinity") or {}).get("required")
        cached = self._selectors.get(name)
        if cached is not None and cached[0] is required:
            return cached[1]
        sel = NodeSelector(required) if required else None
        self._selectors[name] = (required, sel)
        return sel

    def _delayed(self, claim: Obj) -> Obj | None:
        """The claim's class when it binds on first consumer, else None."""
        cls = claim_class(claim)
        sc = self.classes.get(cls) if cls else None
        return sc if sc is not None and binding_mode(sc) == WAIT_FOR_FIRST_CONSUMER else None

    # ------------------------------------------------------------ filtering

    def pre_filter(self, pod: PodInfo, snap: Cache | None = None) -> Any:
        spec = pod.pod.get("spec") or {}
        if not spec.get("volumes"):
            return SKIP
        names = claim_names(pod.pod)
        if not names:
            return SKIP
        bound: list[NodeSelector] = []
        delayed: list[tuple[Obj, Obj]] = []
        missing_pv = immediate = False
        for name in names:
            claim = self.claims.get(f"{pod.namespace}/{name}")
            if claim is None:
                return unresolvable(NAME, f'persistentvolumeclaim "{name}" not found')
            if (claim.get("metadata") or {}).get("deletionTimestamp"):
                return unresolvable(NAME, f'persistentvolumeclaim "{name}" is being deleted')
            volume_name = (claim.get("spec") or {}).get("volumeName")
            if volume_name:
                pv = self.volumes.get(volume_name)
                if pv is None:
                    missing_pv = True
                    continue
                sel = self._selector(pv)
                if sel is not None:
                    bound.append(sel)
                continue
            sc = self._delayed(claim)
            if sc is None:
                immediate = True
            else:
                delayed.append((claim, sc))
        if immediate:
            return unresolvable(NAME, UNBOUND_IMMEDIATE)
        if not bound and not delayed and not missing_pv:
            return SKIP
        return _State(bound, delayed, missing_pv)

    def filter(self, pod: PodInfo, ni: NodeInfo, state: _State) -> Status | None:
        if state.missing_pv:
            return _PV_NOT_EXIST
        labels, name = ni.labels, ni.name
        for sel in state.bound:
            if not sel.matches(labels, name):
                return _NODE_CONFLICT
        if state.delayed:
            def reachable(pv: Obj) -> bool:
                sel = self._selector(pv)
                return sel is None or sel.matches(labels, name)
            volumes = self.volumes.list()
            for claim, sc in state.delayed:
                if (sc.get("provisioner") or NO_PROVISIONER) != NO_PROVISIONER and _topology_allows(sc, labels):
                    continue
                if find_matching_volume(claim, volumes, delay_binding=True, node_ok=reachable) is None:
                    return _BIND_CONFLICT
        return None

    # ------------------------------------------------------------ binding

    def notify(self) -> None:
        """A claim changed: wake the bindings waiting for their claims."""
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)

    async def pre_bind(self, pod: PodInfo, node: str, wanted: Callable[[], bool] | None = None) -> None:
        """Hand delayed claims to `node` and wait until all the pod's claims are bound; PreBindError if not.

        `wanted` says whether the pod still waits to be bound (it may be deleted meanwhile).
        """
        names = claim_names(pod.pod)
        if not names:
            return
        ns = pod.namespace
        for name in names:
            claim = self.claims.get(f"{ns}/{name}")
            if claim is None or (claim.get("spec") or {}).get("volumeName") or self._delayed(claim) is None:
                continue
            if annotations(claim).get(ANN_SELECTED_NODE) == node:
                continue
            if self.claims_client is None:
                raise PreBindError(f'cannot annotate persistentvolumeclaim "{name}": no client')
            await self.claims_client.patch(name, {"metadata": {"annotations": {ANN_SELECTED_NODE: node}}},
                                           namespace=ns)
        await self._wait_bound(ns, names, node, wanted)

    def _all_bound(self, ns: str, names: list[str], node: str, wanted: Callable[[], bool] | None) -> bool:
        if wanted is not None and not wanted():
            raise PreBindError("the pod is no longer waiting to be bound")
        for name in names:
            claim = self.claims.get(f"{ns}/{name}")
            if claim is None:
                raise PreBindError(f'persistentvolumeclaim "{name}" not found')
            if (claim.get("metadata") or {}).get("deletionTimestamp"):
                raise PreBindError(f'persistentvolumeclaim "{name}" is being deleted')
            if (claim.get("spec") or {}).get("volumeName") and annotations(claim).get(ANN_BIND_COMPLETED) == "yes":
                continue
            selected = annotations(claim).get(ANN_SELECTED_NODE)
            if selected is not None and selected != node:
                raise PreBindError(f'persistentvolumeclaim "{name}" was given to node "{selected}"')
            return False
        return True

    async def _wait_bound(self, ns: str, names: list[str], node: str, wanted: Callable[[], bool] | None) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.bind_timeout
        while not self._all_bound(ns, names, node, wanted):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise PreBindError("binding volumes: timed out waiting for the condition")
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.add(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                pass
            finally:
                self._waiters.discard(fut)
