"""InterPodAffinity: required pod affinity / anti-affinity (the pod's own and that of pods already
running, which the incoming pod must not violate) filter nodes; preferred terms score them.

Counts are kept per topology pair (topologyKey, the node's value for it): a
term is satisfied or violated in a whole zone, rack or host at once.

Both pre_filter and pre_score compute those counts once per pod from the
Cache's affinity index, never by walking every placed pod: the pod's own terms
are matched once per PodGroup (placed pods alike for selectors), the placed
pods' terms once per TermGroup (equal terms of placed pods), and a match adds
the group's per-node counts under each node's topology value. filter and score
are then a few dictionary lookups per node.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..framework import MAX_NODE_SCORE, SKIP, Status, unresolvable, unschedulable
from ..nodeinfo import (
    PREFERRED_AFFINITY,
    REQUIRED_AFFINITY,
    AffinityTerm,
    Cache,
    NodeInfo,
    PodGroup,
    PodInfo,
)

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


def _namespaces(snap: Cache, term: AffinityTerm) -> Any:
    """The (namespace, its PodGroups) pairs of the cache that term may select pods in."""
    if term.all_namespaces or term.namespace_selector is not None:
        return snap.pod_groups.items()
    groups = snap.pod_groups
    return [(ns, groups[ns]) for ns in term.namespaces if ns in groups]


def _groups_matching(snap: Cache, terms: list[AffinityTerm], ns_labels: Any) -> Iterator[PodGroup]:
    """The PodGroups whose pods every one of terms matches."""
    first = terms[0]
    for ns, groups in _namespaces(snap, first):
        if not all(t.matches_namespace(ns, ns_labels) for t in terms):
            continue
        if len(terms) == 1:
            sel = first.selector
            for g in groups.values():
                if sel.matches(g.labels):
                    yield g
        else:
            for g in groups.values():
                labels = g.labels
                if all(t.selector.matches(labels) for t in terms):
                    yield g


class InterPodAffinity:
    name = NAME

    def __init__(self, hard_pod_affinity_weight: int = HARD_POD_AFFINITY_WEIGHT):
        self.hard_pod_affinity_weight = hard_pod_affinity_weight

    # -- filter

    def pre_filter(self, pod: PodInfo, snap: Cache) -> Any:
        if not pod.affinity_terms and not pod.anti_affinity_terms and snap.anti_affinity_pods == 0:
            return SKIP
        ns_labels = snap.ns_labels
        state = State(ns_labels)
        # Placed pods whose anti-affinity the pod would violate.
        existing_anti = state.existing_anti
        for tg in snap.anti_affinity_terms.values():
            term = tg.term
            if term.matches(pod, ns_labels):
                key = term.topology_key
                for ni, n in tg.nodes.items():
                    v = ni.labels.get(key)
                    if v is not None:
                        _bump(existing_anti, (key, v), n)
        # Placed pods matching all of the pod's affinity terms.
        if pod.affinity_terms:
            affinity = state.affinity
            keys = [t.topology_key for t in pod.affinity_terms]
            for g in _groups_matching(snap, pod.affinity_terms, ns_labels):
                for ni, n in g.nodes.items():
                    labels = ni.labels
                    for key in keys:
                        v = labels.get(key)
                        if v is not None:
                            _bump(affinity, (key, v), n)
        # Placed pods matching each of its anti-affinity terms.
        for term in pod.anti_affinity_terms:
            key = term.topology_key
            for g in _groups_matching(snap, [term], ns_labels):
                for ni, n in g.nodes.items():
                    v = ni.labels.get(key)
                    if v is not None:
                        _bump(state.anti, (key, v), n)
        # The pod never counts against itself (a stale copy of it may be placed).
        me = snap.placed(pod.key)
        if me is not None:
            self._update_one(state, pod, me[0], me[1], -1)
        return state

    def _update(self, state: State, pod: PodInfo, ni: NodeInfo, others: Any, sign: int) -> None:
        for other in others:
            if other.key != pod.key:
                self._update_one(state, pod, ni, other, sign)

    @staticmethod
    def _update_one(state: State, pod: PodInfo, ni: NodeInfo, other: PodInfo, sign: int) -> None:
        labels = ni.labels
        ns_labels = state.ns_labels
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
        """topologyKey -> topology value -> the sum of the weights of the terms that pair satisfies."""
        own = bool(pod.preferred_affinity or pod.preferred_anti_affinity)
        if not own and not snap.scoring_terms:
            return SKIP
        ns_labels = snap.ns_labels
        scores: dict[str, dict[str, int]] = {}

        def add_counts(key: str, nodes: dict[NodeInfo, int], w: int) -> None:
            by_value = scores.setdefault(key, {})
            for ni, n in nodes.items():
                v = ni.labels.get(key)
                if v is not None:
                    by_value[v] = by_value.get(v, 0) + w * n
            if not by_value:
                del scores[key]

        # The pod's preferred terms, against the placed pods they match.
        for terms, sign in ((pod.preferred_affinity, 1), (pod.preferred_anti_affinity, -1)):
            for t in terms:
                if t.weight:
                    for g in _groups_matching(snap, [t], ns_labels):
                        add_counts(t.topology_key, g.nodes, sign * t.weight)
        # The placed pods' terms that match the pod (symmetry).
        hard = self.hard_pod_affinity_weight
        for tg in snap.scoring_terms.values():
            t = tg.term
            w = hard if tg.role == REQUIRED_AFFINITY else t.weight if tg.role == PREFERRED_AFFINITY else -t.weight
            if w and t.matches(pod, ns_labels):
                add_counts(t.topology_key, tg.nodes, w)
        # The pod never scores against itself (a stale copy of it may be placed).
        me = snap.placed(pod.key)
        if me is not None and scores:
            self._unscore(scores, pod, me[0], me[1], ns_labels)
        return scores or SKIP

    def _unscore(self, scores: dict[str, dict[str, int]], pod: PodInfo, ni: NodeInfo, other: PodInfo,
                 ns_labels: Any) -> None:
        """Take back what other, on ni, added to scores."""
        labels = ni.labels

        def sub(key: str, w: int) -> None:
            v = labels.get(key)
            by_value = scores.get(key)
            if v is not None and w and by_value is not None and v in by_value:
                by_value[v] -= w

        for t in pod.preferred_affinity:
            if t.matches(other, ns_labels):
                sub(t.topology_key, t.weight)
        for t in pod.preferred_anti_affinity:
            if t.matches(other, ns_labels):
                sub(t.topology_key, -t.weight)
        for t in other.affinity_terms:
            if t.matches(pod, ns_labels):
                sub(t.topology_key, self.hard_pod_affinity_weight)
        for t in other.preferred_affinity:
            if t.matches(pod, ns_labels):
                sub(t.topology_key, t.weight)
        for t in other.preferred_anti_affinity:
            if t.matches(pod, ns_labels):
                sub(t.topology_key, -t.weight)

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
