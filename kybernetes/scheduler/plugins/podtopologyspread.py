"""PodTopologySpread: keep matching pods spread across topology domains within maxSkew.

DoNotSchedule constraints filter nodes (the skew a placement would create must
not exceed maxSkew); ScheduleAnyway constraints score nodes, fewer matching
pods in the node's domain scoring higher.

The matching pods are counted once per pod from the Cache's PodGroups (placed
pods alike for selectors, with their count per node): a constraint's selector
is matched once per group of the pod's namespace, never once per placed pod.
"""

from __future__ import annotations

import math
from typing import Any

from ..framework import MAX_NODE_SCORE, SKIP, Status, unresolvable, unschedulable
from ..nodeinfo import HOSTNAME_LABEL, Cache, NodeInfo, PodGroup, PodInfo, SpreadConstraint
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


def _always_eligible(pod: PodInfo, c: SpreadConstraint) -> bool:
    """Whether _eligible holds on every node, whatever its labels and taints."""
    return not c.node_taints_honor and (
        not c.node_affinity_honor or (not pod.node_selector and pod.required_node_selector is None))


def _matching_groups(pod: PodInfo, snap: Cache, c: SpreadConstraint) -> list[PodGroup]:
    """The groups of placed pods a constraint counts: same namespace, not terminating, selected."""
    sel = c.selector
    return [g for g in (snap.pod_groups.get(pod.namespace) or {}).values()
            if not g.deleting and sel.matches(g.labels)]


def _domains(nodes: list[NodeInfo], key: str) -> dict[str, int]:
    """The values nodes have for key, each counted 0."""
    return dict.fromkeys({ni.labels[key] for ni in nodes if key in ni.labels}, 0)


class State:
    __slots__ = ("constraints", "counts", "mins", "self_match")

    def __init__(self, constraints: list[SpreadConstraint], self_match: list[int] | None = None):
        self.constraints = constraints
        self.counts: list[dict[str, int]] = [{} for _ in constraints]
        self.mins: list[int] = [0] * len(constraints)
        # 1 where the incoming pod matches the constraint's own selector (it would add to the count).
        self.self_match = self_match if self_match is not None else [0] * len(constraints)

    def recompute_mins(self) -> None:
        for i, c in enumerate(self.constraints):
            counts = self.counts[i]
            self.mins[i] = min(counts.values()) if counts and len(counts) >= c.min_domains else 0

    def copy(self) -> State:
        s = State(self.constraints, self.self_match)
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
        state = State(hard, [1 if c.selector.matches(pod.labels) else 0 for c in hard])
        keys = [c.topology_key for c in hard]
        always = [_always_eligible(pod, c) for c in hard]
        # The domains: values of the eligible nodes that have every key, matching pods or not.
        if len(hard) == 1 and always[0]:
            state.counts[0] = _domains(snap.node_list, keys[0])
        else:
            for ni in snap.node_list:
                labels = ni.labels
                if any(k not in labels for k in keys):
                    continue
                for i, c in enumerate(hard):
                    if always[i] or _eligible(pod, ni, c):
                        state.counts[i].setdefault(labels[c.topology_key], 0)
        for i, c in enumerate(hard):
            counts = state.counts[i]
            key = c.topology_key
            for g in _matching_groups(pod, snap, c):
                for ni, n in g.nodes.items():
                    labels = ni.labels
                    if any(k not in labels for k in keys) or not (always[i] or _eligible(pod, ni, c)):
                        continue
                    counts[labels[key]] += n
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
            if state.counts[i].get(v, 0) + state.self_match[i] - state.mins[i] > c.max_skew:
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
        if len(soft) == 1:
            counts[0] = _domains(nodes, keys[0])
        else:
            for ni in nodes:
                if all(k in ni.labels for k in keys):
                    for i, c in enumerate(soft):
                        counts[i].setdefault(ni.labels[c.topology_key], 0)
        # Per hostname the score counts the node's own matching pods (eligible or not), by node name.
        per_node: list[dict[str, int] | None] = [None] * len(soft)
        for i, c in enumerate(soft):
            key = c.topology_key
            always = _always_eligible(pod, c)
            if key == HOSTNAME_LABEL:
                on_node = per_node[i] = {}
                for g in _matching_groups(pod, snap, c):
                    for ni, n in g.nodes.items():
                        on_node[ni.name] = on_node.get(ni.name, 0) + n
                continue
            domain = counts[i]
            for g in _matching_groups(pod, snap, c):
                for ni, n in g.nodes.items():
                    labels = ni.labels
                    if any(k not in labels for k in keys):
                        continue
                    v = labels[key]
                    if v in domain and (always or _eligible(pod, ni, c)):
                        domain[v] += n
        weights = [math.log(len(counts[i]) + 2) for i in range(len(soft))]
        return soft, counts, weights, per_node

    def score(self, pod: PodInfo, ni: NodeInfo, state: Any = None) -> int:
        soft, counts, weights, per_node = state
        labels = ni.labels
        total = 0.0
        for i, c in enumerate(soft):
            v = labels.get(c.topology_key)
            if v is None:
                return -1  # ignored node: scored 0 after normalizing
            on_node = per_node[i]
            n = counts[i].get(v, 0) if on_node is None else on_node.get(ni.name, 0)
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
