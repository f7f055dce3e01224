"""TaintToleration: NoSchedule/NoExecute taints keep out pods that do not tolerate them;
untolerated PreferNoSchedule taints make a node score lower."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ...api.pods import toleration_matches
from ..framework import SKIP, Status, default_normalize, unresolvable
from ..nodeinfo import Cache, NodeInfo, PodInfo

NAME = "TaintToleration"


def tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    return any(toleration_matches(t, taint) for t in tolerations)


def untolerated_reason(taint: Mapping[str, Any]) -> str:
    return f"node(s) had untolerated taint {{{taint.get('key') or ''}: {taint.get('value') or ''}}}"


class TaintToleration:
    name = NAME

    def filter(self, pod: PodInfo, ni: NodeInfo, state: Any = None) -> Status | None:
        for taint in ni.schedule_taints:
            if not tolerates(pod.tolerations, taint):
                return unresolvable(NAME, untolerated_reason(taint))
        return None

    def pre_score(self, pod: PodInfo, snap: Cache, nodes: list[NodeInfo]) -> Any:
        for ni in nodes:
            if ni.prefer_no_schedule_taints:
                return [t for t in pod.tolerations if (t.get("effect") or "PreferNoSchedule") == "PreferNoSchedule"]
        return SKIP

    def score(self, pod: PodInfo, ni: NodeInfo, state: Any = None) -> int:
        tolerations = state if state is not None else pod.tolerations
        return sum(1 for t in ni.prefer_no_schedule_taints if not tolerates(tolerations, t))

    def normalize(self, scores: list[int], state: Any = None) -> None:
        default_normalize(scores, reverse=True)
