"""The built-in scheduler plugins and the default profile (order and score weights as upstream)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .interpodaffinity import InterPodAffinity
from .nodeaffinity import NodeAffinity
from .nodename import NodeName
from .nodeports import NodePorts
from .noderesources import (
    DEFAULT_RESOURCES,
    LEAST_ALLOCATED,
    MOST_ALLOCATED,
    REQUESTED_TO_CAPACITY_RATIO,
    BalancedAllocation,
    NodeResourcesFit,
)
from .nodeunschedulable import NodeUnschedulable
from .podtopologyspread import PodTopologySpread
from .tainttoleration import TaintToleration
from .volumebinding import VolumeBinding

# Upstream's default score weights: taints weigh most, then affinity and spreading.
DEFAULT_WEIGHTS: dict[str, int] = {
    "TaintToleration": 3,
    "NodeAffinity": 2,
    "PodTopologySpread": 2,
    "InterPodAffinity": 2,
    "NodeResourcesFit": 1,
    "NodeResourcesBalancedAllocation": 1,
}


def default_plugins(strategy: str = LEAST_ALLOCATED, resources: Sequence[tuple[str, int]] = DEFAULT_RESOURCES,
                    shape: Sequence[tuple[int, int]] = ((0, 10), (100, 0)),
                    disabled: Sequence[str] = ()) -> list[Any]:
    """The default profile's plugins in upstream's filter order (cheap, decisive checks first)."""
    plugins: list[Any] = [
        NodeUnschedulable(),
        NodeName(),
        TaintToleration(),
        NodeAffinity(),
        NodePorts(),
        NodeResourcesFit(strategy, resources, shape),
        VolumeBinding(),
        PodTopologySpread(),
        InterPodAffinity(),
        BalancedAllocation(resources),
    ]
    return [p for p in plugins if p.name not in disabled]


__all__ = [
    "DEFAULT_WEIGHTS", "LEAST_ALLOCATED", "MOST_ALLOCATED", "REQUESTED_TO_CAPACITY_RATIO", "BalancedAllocation",
    "InterPodAffinity", "NodeAffinity", "NodeName", "NodePorts", "NodeResourcesFit", "NodeUnschedulable",
    "PodTopologySpread", "TaintToleration", "VolumeBinding", "default_plugins",
]
