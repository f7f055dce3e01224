"""NodeUnschedulable: cordoned nodes (spec.unschedulable) take only pods tolerating that taint."""

from __future__ import annotations

from typing import Any

from ..framework import Status, unresolvable
from ..nodeinfo import NodeInfo, PodInfo
from .tainttoleration import tolerates

NAME = "NodeUnschedulable"
REASON = "node(s) were unschedulable"
UNSCHEDULABLE_TAINT = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
_CORDONED = unresolvable(NAME, REASON)


class NodeUnschedulable:
    name = NAME

    def filter(self, pod: PodInfo, ni: NodeInfo, state: Any = None) -> Status | None:
        if ni.unschedulable and not tolerates(pod.tolerations, UNSCHEDULABLE_TAINT):
            return _CORDONED
        return None
