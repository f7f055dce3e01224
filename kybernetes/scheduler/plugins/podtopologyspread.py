"""PodTopologySpread: keep matching pods spread across topology domains within maxSkew.

DoNotSchedule constraints filter nodes (the skew a placement would create must
not exceed maxSkew); ScheduleAnyway constraints score nodes, fewer matching
pods in the node's domain scoring higher.
"""

from __future__ import annotations

import math
from typing import Any

from ..framework import MAX_NODE_SCORE, SKIP, Status, unresolvable, unschedulable
from ..nodeinfo import HOSTNAME_LABEL, Cache, NodeInfo, PodInfo, SpreadConstraint
from .nodeaffinity import matches_node_selector_and_affinity
from .tainttoleration import tolerates

NAME = "PodTopologySpread"
REASON_SKEW = "node(s) didn't match pod topology spread constraints"
REASON_MISSING_LABEL = "node(s) didn't match pod topology spread constraints (missing required label)"
_SKEW = unschedulable(NAME, REASON_SKEW)
_MISSING = unresolvable(NAME, REASON_MISSING_LABEL)


def _eligible(pod: PodInfo, ni: NodeInfo, c: SpreadConstraint) -> bool:
    if c.node_affinity_honor and not matches_node_selector_and_affinity(pod, ni):
        return False
    if c.node_taints_honor:
        for t in ni.schedule_taints:
            if not tolerates(pod.tolerations, t):
                return False
    return True


def _count_matching(pod: PodInfo, ni: NodeInfo, c: SpreadConstraint) -> int:
    sel = c.selector
    return sum(1 for other in ni.pods.values()
               if other.namespace == pod.namespace and not other.deleting and sel.matches(other.labels))


class State:
    __slots__ = ("constraints", "counts", "mins")

    def __init__(self, constraints: list[SpreadConstraint]):
        self.constraints = constraints
        self.counts: list[dict[str, int]] = [{} for _ in constraints]
        self.mins: list[int] = [0] * len(constraints)

    def recompute_mins(self) -> None:
        for i, c in enumerate(self.constraints):
            counts = self.counts[i]
            self.mins[i] = min(counts.values()) if counts and len(counts) >= c.min_domains else 0

    def copy(self) -> State:
        s = State(self.constraints)
        s.counts = [dict(c) for c in self.counts]
        s.mins = list(self.mins)
        return s


class PodTopologySpread:
    name = NAME

    # -- filter

    def pre_filter(self, pod: PodInfo, snap: Cache) -> Any:
        hard = [c for c in pod.spread_constraints if c.hard]
        if not hard:
            return SKIP
        state = State(hard)
        keys = [c.topology_key for c in hard]
        for ni in snap.node_list:
            labels = ni.labels
            if any(k not in labels for k in keys):
                continue
            for i, c in enumerate(hard):
                if not _eligible(pod, ni, c):
                    continue
                v = labels[c.topology_key]
                state.counts[i][v] = state.counts[i].get(v, 0) + _count_matching(pod, ni, c)
        state.recompute_mins()
        return state

    def filter(self, pod: PodInfo, ni: NodeInfo, state: State | None = None) -> Status | None:
        if state is None:
            raise ValueError("PodTopologySpread.filter needs its pre_filter state")
        labels = ni.labels
        for i, c in enumerate(state.constraints):
            v = labels.get(c.topology_key)
            if v is None:
                return _MISSING
            self_match = 1 if c.selector.matches(pod.labels) else 0
            if state.counts[i].get(v, 0) + self_match - state.mins[i] > c.max_skew:
                return _SKEW
        return None

    def _update(self, state: State, pod: PodInfo, other: PodInfo, ni: NodeInfo, delta: int) -> None:
        if other.namespace != pod.namespace:
            return
        labels = ni.labels
        if any(c.topology_key not in labels for c in state.constraints):
            return
        for i, c in enumerate(state.constraints):
            if _eligible(pod, ni, c) and c.selector.matches(other.labels):
                v = labels[c.topology_key]
                state.counts[i][v] = state.counts[i].get(v, 0) + delta
        state.recompute_mins()

    def add_pod(self, state: State, pod: PodInfo, other: PodInfo, ni: NodeInfo) -> None:
        self._update(state, pod, other, ni, 1)

    def remove_pod(self, state: State, pod: PodInfo, other: PodInfo, ni: NodeInfo) -> None:
        self._update(state, pod, other, ni, -1)

    @staticmethod
    def copy_state(state: State) -> State:
        return state.copy()

    # -- score

    def pre_score(self, pod: PodInfo, snap: Cache, nodes: list[NodeInfo]) -> Any:
        soft = [c for c in pod.spread_constraints if not c.hard]
        if not soft:
            return SKIP
        keys = [c.topology_key for c in soft]
        counts: list[dict[str, int]] = [{} for _ in soft]
        # Domains are those of the candidate nodes; only they are counted.
        for ni in nodes:
            if all(k in ni.labels for k in keys):
                for i, c in enumerate(soft):
                    counts[i].setdefault(ni.labels[c.topology_key], 0)
        for ni in snap.node_list:
            labels = ni.labels
            if any(k not in labels for k in keys):
                continue
            for i, c in enumerate(soft):
                v = labels[c.topology_key]
                if v in counts[i] and _eligible(pod, ni, c):
                    counts[i][v] += _count_matching(pod, ni, c)
        weights = [math.log(len(counts[i]) + 2) for i in range(len(soft))]
        return soft, counts, weights

    def score(self, pod: PodInfo, ni: NodeInfo, state: Any = None) -> int:
        soft, counts, weights = state
        labels = ni.labels
        total = 0.0
        for i, c in enumerate(soft):
            v = labels.get(c.topology_key)
            if v is None:
                return -1  # ignored node: scored 0 after normalizing
            n = counts[i].get(v, 0) if c.topology_key != HOSTNAME_LABEL else _count_matching(pod, ni, c)
            total += n * weights[i] + (c.max_skew - 1)
        return round(total)

    def normalize(self, scores: list[int], state: Any = None) -> None:
        valid = [s for s in scores if s >= 0]
        if not valid:
            scores[:] = [0] * len(scores)
            return
        lo, hi = min(valid), max(valid)
        for i, s in enumerate(scores):
            if s < 0:
                scores[i] = 0
            elif hi == 0:
                scores[i] = MAX_NODE_SCORE
            else:
                scores[i] = MAX_NODE_SCORE * (hi + lo - s) // hi
