"""InterPodAffinity: required pod affinity / anti-affinity (the pod's own and that of pods already
running, which the incoming pod must not violate) filter nodes; preferred terms score them.

Counts are kept per topology pair (topologyKey, the node's value for it): a
term is satisfied or violated in a whole zone, rack or host at once.
"""

from __future__ import annotations

from typing import Any

from ..framework import MAX_NODE_SCORE, SKIP, Status, unresolvable, unschedulable
from ..nodeinfo import AffinityTerm, Cache, NodeInfo, PodInfo

NAME = "InterPodAffinity"
REASON_AFFINITY = "node(s) didn't match pod affinity rules"
REASON_ANTI_AFFINITY = "node(s) didn't match pod anti-affinity rules"
REASON_EXISTING_ANTI_AFFINITY = "node(s) didn't satisfy existing pods anti-affinity rules"
_AFFINITY = unresolvable(NAME, REASON_AFFINITY)
_ANTI = unschedulable(NAME, REASON_ANTI_AFFINITY)
_EXISTING_ANTI = unschedulable(NAME, REASON_EXISTING_ANTI_AFFINITY)
# Weight a running pod's *required* affinity term gets when scoring an incoming pod it matches.
HARD_POD_AFFINITY_WEIGHT = 1

Pair = tuple[str, str]


class State:
    __slots__ = ("affinity", "anti", "existing_anti", "ns_labels")

    def __init__(self, ns_labels: Any):
        self.existing_anti: dict[Pair, int] = {}
        self.affinity: dict[Pair, int] = {}
        self.anti: dict[Pair, int] = {}
        self.ns_labels = ns_labels

    def copy(self) -> State:
        c = State(self.ns_labels)
        c.existing_anti = dict(self.existing_anti)
        c.affinity = dict(self.affinity)
        c.anti = dict(self.anti)
        return c


def _bump(counts: dict[Pair, int], pair: Pair, delta: int) -> None:
    n = counts.get(pair, 0) + delta
    if n:
        counts[pair] = n
    else:
        counts.pop(pair, None)


def _all_match(terms: list[AffinityTerm], other: PodInfo, ns_labels: Any) -> bool:
    return all(t.matches(other, ns_labels) for t in terms)


class InterPodAffinity:
    name = NAME

    def __init__(self, hard_pod_affinity_weight: int = HARD_POD_AFFINITY_WEIGHT):
        self.hard_pod_affinity_weight = hard_pod_affinity_weight

    # -- filter

    def pre_filter(self, pod: PodInfo, snap: Cache) -> Any:
        if not pod.affinity_terms and not pod.anti_affinity_terms and snap.anti_affinity_pods == 0:
            return SKIP
        state = State(snap.ns_labels)
        for ni in snap.node_list:
            self._update(state, pod, ni, ni.pods.values(), 1)
        return state

    def _update(self, state: State, pod: PodInfo, ni: NodeInfo, others: Any, sign: int) -> None:
        labels = ni.labels
        ns_labels = state.ns_labels
        for other in others:
            if other.key == pod.key:
                continue
            for term in other.anti_affinity_terms:
                v = labels.get(term.topology_key)
                if v is not None and term.matches(pod, ns_labels):
                    _bump(state.existing_anti, (term.topology_key, v), sign)
            if pod.affinity_terms and _all_match(pod.affinity_terms, other, ns_labels):
                for term in pod.affinity_terms:
                    v = labels.get(term.topology_key)
                    if v is not None:
                        _bump(state.affinity, (term.topology_key, v), sign)
            for term in pod.anti_affinity_terms:
                v = labels.get(term.topology_key)
                if v is not None and term.matches(other, ns_labels):
                    _bump(state.anti, (term.topology_key, v), sign)

    def filter(self, pod: PodInfo, ni: NodeInfo, state: State | None = None) -> Status | None:
        if state is None:
            raise ValueError("InterPodAffinity.filter needs its pre_filter state")
        labels = ni.labels
        if pod.affinity_terms:
            found_all = True
            for term in pod.affinity_terms:
                v = labels.get(term.topology_key)
                if v is None:
                    return _AFFINITY
                if state.affinity.get((term.topology_key, v), 0) <= 0:
                    found_all = False
            # The first pod of a group that is affine to itself would wait forever
            # for a peer: let it in when no pod anywhere matches the terms yet.
            if not found_all and not (not state.affinity
                                      and _all_match(pod.affinity_terms, pod, state.ns_labels)):
                return _AFFINITY
        for term in pod.anti_affinity_terms:
            v = labels.get(term.topology_key)
            if v is not None and state.anti.get((term.topology_key, v), 0) > 0:
                return _ANTI
        if state.existing_anti:
            for k, v in labels.items():
                if state.existing_anti.get((k, v), 0) > 0:
                    return _EXISTING_ANTI
        return None

    # Preemption dry runs: keep the state right as victims leave or return.
    def add_pod(self, state: State, pod: PodInfo, other: PodInfo, ni: NodeInfo) -> None:
        self._update(state, pod, ni, (other,), 1)

    def remove_pod(self, state: State, pod: PodInfo, other: PodInfo, ni: NodeInfo) -> None:
        self._update(state, pod, ni, (other,), -1)

    @staticmethod
    def copy_state(state: State) -> State:
        return state.copy()

    # -- score

    def pre_score(self, pod: PodInfo, snap: Cache, nodes: list[NodeInfo]) -> Any:
        own = bool(pod.preferred_affinity or pod.preferred_anti_affinity)
        if not own and not any(ni.pods_with_affinity for ni in snap.node_list):
            return SKIP
        ns_labels = snap.ns_labels
        scores: dict[str, dict[str, int]] = {}

        def add(key: str, value: str | None, w: int) -> None:
            if value is not None and w:
                by_value = scores.setdefault(key, {})
                by_value[value] = by_value.get(value, 0) + w

        for ni in snap.node_list:
            labels = ni.labels
            for other in (ni.pods if own else ni.pods_with_affinity).values():
                if other.key == pod.key:
                    continue
                for t in pod.preferred_affinity:
                    if t.matches(other, ns_labels):
                        add(t.topology_key, labels.get(t.topology_key), t.weight)
                for t in pod.preferred_anti_affinity:
                    if t.matches(other, ns_labels):
                        add(t.topology_key, labels.get(t.topology_key), -t.weight)
                for t in other.affinity_terms:
                    if t.matches(pod, ns_labels):
                        add(t.topology_key, labels.get(t.topology_key), self.hard_pod_affinity_weight)
                for t in other.preferred_affinity:
                    if t.matches(pod, ns_labels):
                        add(t.topology_key, labels.get(t.topology_key), t.weight)
                for t in other.preferred_anti_affinity:
                    if t.matches(pod, ns_labels):
                        add(t.topology_key, labels.get(t.topology_key), -t.weight)
        return scores or SKIP

    def score(self, pod: PodInfo, ni: NodeInfo, state: Any = None) -> int:
        total = 0
        for key, by_value in (state or {}).items():
            v = ni.labels.get(key)
            if v is not None:
                total += by_value.get(v, 0)
        return total

    def normalize(self, scores: list[int], state: Any = None) -> None:
        if not scores:
            return
        lo, hi = min(scores), max(scores)
        diff = hi - lo
        for i, s in enumerate(scores):
            scores[i] = int(MAX_NODE_SCORE * (s - lo) / diff) if diff > 0 else 0
