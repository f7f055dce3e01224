"""NodePorts: a pod asking for a hostPort does not fit a node where another pod holds it."""

from __future__ import annotations

from typing import Any

from ..framework import SKIP, Status, unschedulable
from ..nodeinfo import Cache, NodeInfo, PodInfo

NAME = "NodePorts"
REASON = "node(s) didn't have free ports for the requested pod ports"
_CONFLICT = unschedulable(NAME, REASON)
_ANY_IP = "0.0.0.0"


def ports_conflict(pod: PodInfo, ni: NodeInfo) -> bool:
    used = ni.used_ports
    for ip, proto, port in pod.host_ports:
        ips = used.get((proto, port))
        if ips and (ip == _ANY_IP or _ANY_IP in ips or ip in ips):
            return True
    return False


class NodePorts:
    name = NAME

    def pre_filter(self, pod: PodInfo, snap: Cache) -> Any:
        return None if pod.host_ports else SKIP

    def filter(self, pod: PodInfo, ni: NodeInfo, state: Any = None) -> Status | None:
        return _CONFLICT if ports_conflict(pod, ni) else None
