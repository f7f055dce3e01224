"""NodeAffinity: spec.nodeSelector and required node affinity filter nodes; preferred terms score them."""

from __future__ import annotations

from typing import Any

from ..framework import SKIP, Status, default_normalize, unresolvable
from ..nodeinfo import Cache, NodeInfo, PodInfo

NAME = "NodeAffinity"
REASON = "node(s) didn't match Pod's node affinity/selector"
_MISMATCH = unresolvable(NAME, REASON)


def matches_node_selector_and_affinity(pod: PodInfo, ni: NodeInfo) -> bool:
    labels = ni.labels
    for k, v in pod.node_selector.items():
        if labels.get(k) != v:
            return False
    req = pod.required_node_selector
    return req is None or req.matches(labels, ni.name)


class NodeAffinity:
    name = NAME

    def pre_filter(self, pod: PodInfo, snap: Cache) -> Any:
        return None if pod.node_selector or pod.required_node_selector is not None else SKIP

    def filter(self, pod: PodInfo, ni: NodeInfo, state: Any = None) -> Status | None:
        return None if matches_node_selector_and_affinity(pod, ni) else _MISMATCH

    def pre_score(self, pod: PodInfo, snap: Cache, nodes: list[NodeInfo]) -> Any:
        return None if pod.preferred_node_terms else SKIP

    def score(self, pod: PodInfo, ni: NodeInfo, state: Any = None) -> int:
        return sum(w for w, term in pod.preferred_node_terms if term.matches(ni.labels, ni.name))

    def normalize(self, scores: list[int], state: Any = None) -> None:
        default_normalize(scores)
