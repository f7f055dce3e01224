"""NodeResourcesFit and NodeResourcesBalancedAllocation.

Fit filters out nodes whose allocatable cpu, memory, ephemeral-storage, pod
count or extended resources cannot hold the pod's requests (init containers,
sidecars and overhead included), and scores the rest with the strategy the
user configures:

* ``LeastAllocated`` (default): prefer the emptiest nodes, spreading load;
* ``MostAllocated``: prefer the fullest nodes, bin packing;
* ``RequestedToCapacityRatio``: a user-drawn piecewise-linear curve from
  utilization (0..100) to score (0..10).

Scores use non-zero requests for cpu and memory (a pod without requests still
counts 100m / 200Mi) so request-less pods do not pile onto one node.
BalancedAllocation prefers nodes whose cpu and memory utilization stay even.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..framework import MAX_NODE_SCORE, Status, unschedulable
from ..nodeinfo import CPU, EPHEMERAL, MEMORY, NodeInfo, PodInfo

FIT = "NodeResourcesFit"
BALANCED = "NodeResourcesBalancedAllocation"

LEAST_ALLOCATED = "LeastAllocated"
MOST_ALLOCATED = "MostAllocated"
REQUESTED_TO_CAPACITY_RATIO = "RequestedToCapacityRatio"
STRATEGIES = (LEAST_ALLOCATED, MOST_ALLOCATED, REQUESTED_TO_CAPACITY_RATIO)
DEFAULT_RESOURCES: tuple[tuple[str, int], ...] = ((CPU, 1), (MEMORY, 1))


def insufficient_resources(pod: PodInfo, ni: NodeInfo) -> list[str]:
    """The reasons the pod does not fit, in upstream's order; empty when it fits."""
    reasons: list[str] = []
    if len(ni.pods) + 1 > ni.alloc_pods:
        reasons.append("Too many pods")
    if pod.cpu and pod.cpu > ni.alloc_cpu - ni.req_cpu:
        reasons.append("Insufficient cpu")
    if pod.mem and pod.mem > ni.alloc_mem - ni.req_mem:
        reasons.append("Insufficient memory")
    if pod.eph and pod.eph > ni.alloc_eph - ni.req_eph:
        reasons.append("Insufficient ephemeral-storage")
    for name, want in pod.scalars.items():
        if want > ni.alloc_scalars.get(name, 0) - ni.req_scalars.get(name, 0):
            reasons.append(f"Insufficient {name}")
    return reasons


def _requested_and_allocatable(pod: PodInfo, ni: NodeInfo, resource: str, non_zero: bool) -> tuple[int, int]:
    if resource == CPU:
        return (ni.nz_cpu + pod.nz_cpu if non_zero else ni.req_cpu + pod.cpu), ni.alloc_cpu
    if resource == MEMORY:
        return (ni.nz_mem + pod.nz_mem if non_zero else ni.req_mem + pod.mem), ni.alloc_mem
    if resource == EPHEMERAL:
        return ni.req_eph + pod.eph, ni.alloc_eph
    return ni.req_scalars.get(resource, 0) + pod.scalars.get(resource, 0), ni.alloc_scalars.get(resource, 0)


def least_allocated(requested: int, allocatable: int) -> int:
    if requested > allocatable:
        return 0
    return (allocatable - requested) * MAX_NODE_SCORE // allocatable


def most_allocated(requested: int, allocatable: int) -> int:
    if requested > allocatable:
        requested = allocatable
    return requested * MAX_NODE_SCORE // allocatable


def broken_linear(shape: Sequence[tuple[int, int]]) -> Any:
    """The RequestedToCapacityRatio curve: utilization 0..100 -> score 0..100 (shape scores are 0..10)."""
    points = sorted((int(u), int(s) * MAX_NODE_SCORE // 10) for u, s in shape)

    def fn(requested: int, allocatable: int) -> int:
        p = min(requested * 100 // allocatable, 100)
        for i, (u, s) in enumerate(points):
            if p <= u:
                if i == 0:
                    return s
                u0, s0 = points[i - 1]
                return s0 + (s - s0) * (p - u0) // (u - u0)
        return points[-1][1]
    return fn


class NodeResourcesFit:
    name = FIT

    def __init__(self, strategy: str = LEAST_ALLOCATED,
                 resources: Sequence[tuple[str, int]] = DEFAULT_RESOURCES,
                 shape: Sequence[tuple[int, int]] = ((0, 10), (100, 0))):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown scoring strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
        self.strategy = strategy
        self.resources = tuple((r, int(w)) for r, w in resources if int(w) > 0)
        if strategy == LEAST_ALLOCATED:
            self._fn = least_allocated
        elif strategy == MOST_ALLOCATED:
            self._fn = most_allocated
        else:
            self._fn = broken_linear(shape)
        self._default = self.resources == DEFAULT_RESOURCES

    def filter(self, pod: PodInfo, ni: NodeInfo, state: Any = None) -> Status | None:
        # Inline the common "fits" case: the full reason list is only built on failure.
        if (len(ni.pods) < ni.alloc_pods and pod.cpu <= ni.alloc_cpu - ni.req_cpu
                and pod.mem <= ni.alloc_mem - ni.req_mem and pod.eph <= ni.alloc_eph - ni.req_eph
                and not pod.scalars):
            return None
        reasons = insufficient_resources(pod, ni)
        return unschedulable(FIT, *reasons) if reasons else None

    def score(self, pod: PodInfo, ni: NodeInfo, state: Any = None) -> int:
        fn = self._fn
        if self._default:
            # cpu and memory, weight 1 each: the hot path of every plain pod.
            total = weights = 0
            if ni.alloc_cpu:
                total += fn(ni.nz_cpu + pod.nz_cpu, ni.alloc_cpu)
                weights += 1
            if ni.alloc_mem:
                total += fn(ni.nz_mem + pod.nz_mem, ni.alloc_mem)
                weights += 1
            return total // weights if weights else 0
        total = weights = 0
        for resource, weight in self.resources:
            requested, allocatable = _requested_and_allocatable(pod, ni, resource, True)
            if not allocatable:
                continue
            total += fn(requested, allocatable) * weight
            weights += weight
        return total // weights if weights else 0


class BalancedAllocation:
    name = BALANCED

    def __init__(self, resources: Sequence[tuple[str, int]] = DEFAULT_RESOURCES):
        self.resources = tuple(r for r, w in resources if int(w) > 0)
        self._default = self.resources == (CPU, MEMORY)

    def score(self, pod: PodInfo, ni: NodeInfo, state: Any = None) -> int:
        if self._default and ni.alloc_cpu and ni.alloc_mem:
            # cpu and memory on an ordinary node: the hot path of every plain pod, as below.
            std = abs(min((ni.req_cpu + pod.cpu) / ni.alloc_cpu, 1.0)
                      - min((ni.req_mem + pod.mem) / ni.alloc_mem, 1.0)) / 2
            return int((1 - std) * MAX_NODE_SCORE)
        fractions = []
        for resource in self.resources:
            requested, allocatable = _requested_and_allocatable(pod, ni, resource, False)
            if not allocatable:
                continue
            fractions.append(min(requested / allocatable, 1.0))
        if len(fractions) < 2:
            return MAX_NODE_SCORE if fractions else 0
        if len(fractions) == 2:
            std = abs(fractions[0] - fractions[1]) / 2
        else:
            mean = sum(fractions) / len(fractions)
            std = (sum((f - mean) ** 2 for f in fractions) / len(fractions)) ** 0.5
        return int((1 - std) * MAX_NODE_SCORE)
