"""NodeName: a pod that names its node (spec.nodeName) fits only that node."""

from __future__ import annotations

from typing import Any

from ..framework import SKIP, Status, unresolvable
from ..nodeinfo import Cache, NodeInfo, PodInfo

NAME = "NodeName"
REASON = "node(s) didn't match the requested node name"
_MISMATCH = unresolvable(NAME, REASON)


class NodeName:
    name = NAME

    def pre_filter(self, pod: PodInfo, snap: Cache) -> Any:
        return None if pod.node_name else SKIP

    def filter(self, pod: PodInfo, ni: NodeInfo, state: Any = None) -> Status | None:
        if pod.node_name and pod.node_name != ni.name:
            return _MISMATCH
        return None
