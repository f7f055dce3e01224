"""The scheduling framework: pre-filter → filter → pre-score → score → normalize → select one node.

A plugin is a small object with any of these methods (all optional):

* ``pre_filter(pod, snapshot)`` → per-cycle state for this plugin, ``SKIP`` when
  the plugin has nothing to check for this pod (its filter is then not run),
  or a ``Status`` when the pod cannot fit anywhere;
* ``filter(pod, node_info, state)`` → ``None`` (fits) or a ``Status``;
* ``pre_score(pod, snapshot, nodes)`` → per-cycle score state, or ``SKIP``;
* ``score(pod, node_info, state)`` → an integer, and ``normalize(scores, state)``
  bringing a list of them to 0..100 in place;
* ``add_pod`` / ``remove_pod(state, pod, other, node_info)`` → keep a
  pre-filter state right when preemption simulates removing victims.

The framework owns the loop over nodes (starting where the last cycle stopped,
and stopping once enough feasible nodes were found, as upstream's
percentageOfNodesToScore), the weighting of scores, the tie-break, and the
upstream-style explanation of a failure ("0/3 nodes are available: …").
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .nodeinfo import Cache, NodeInfo, PodInfo

UNSCHEDULABLE = "Unschedulable"
# Failing for a reason that evicting pods cannot fix (preemption skips such nodes).
UNRESOLVABLE = "UnschedulableAndUnresolvable"
ERROR = "Error"

MAX_NODE_SCORE = 100
MIN_FEASIBLE_NODES_TO_FIND = 100
MIN_FEASIBLE_NODES_PERCENTAGE = 5
DEFAULT_PERCENTAGE_OF_NODES_TO_SCORE = 50


class _Skip:
    def __repr__(self) -> str:
        return "SKIP"


SKIP: Any = _Skip()


class Status:
    """Why a pod does not fit a node: a code, the reasons shown to users, and the plugin."""

    __slots__ = ("code", "plugin", "reasons")

    def __init__(self, code: str, *reasons: str, plugin: str = ""):
        self.code = code
        self.reasons = reasons
        self.plugin = plugin

    @property
    def resolvable(self) -> bool:
        return self.code == UNSCHEDULABLE

    def message(self) -> str:
        return ", ".join(self.reasons)

    def __repr__(self) -> str:
        return f"Status({self.code}, {self.reasons!r}, plugin={self.plugin!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Status) and (self.code, self.reasons) == (other.code, other.reasons)

    def __hash__(self) -> int:
        return hash((self.code, self.reasons))


def unschedulable(plugin: str, *reasons: str) -> Status:
    return Status(UNSCHEDULABLE, *reasons, plugin=plugin)


def unresolvable(plugin: str, *reasons: str) -> Status:
    return Status(UNRESOLVABLE, *reasons, plugin=plugin)


# ---------------------------------------------------------------------------- errors


@dataclass
class Diagnosis:
    node_statuses: dict[str, Status] = field(default_factory=dict)
    pre_filter_msg: str = ""
    post_filter_msg: str = ""
    unschedulable_plugins: set[str] = field(default_factory=set)


def reasons_summary(num_all_nodes: int, statuses: Iterable[Status], pre_filter_msg: str = "",
                    post_filter_msg: str = "") -> str:
    """The upstream FitError text: a sorted histogram of reasons, then the pre/post filter notes."""
    msg = f"0/{num_all_nodes} nodes are available:"
    if pre_filter_msg:
        msg += f" {pre_filter_msg}."
    else:
        counts: dict[str, int] = {}
        for st in statuses:
            for reason in st.reasons:
                counts[reason] = counts.get(reason, 0) + 1
        # Upstream sorts the "N reason" strings themselves, count first.
        parts = sorted(f"{n} {reason}" for reason, n in counts.items())
        if parts:
            msg += f" {', '.join(parts)}."
    if post_filter_msg:
        msg += f" {post_filter_msg}."
    return msg


class FitError(Exception):
    """The pod fits no node; str() is the FailedScheduling message."""

    def __init__(self, pod: PodInfo, num_all_nodes: int, diagnosis: Diagnosis):
        super().__init__()
        self.pod = pod
        self.num_all_nodes = num_all_nodes
        self.diagnosis = diagnosis

    def __str__(self) -> str:
        if self.num_all_nodes == 0 and not self.diagnosis.pre_filter_msg:
            return "no nodes available to schedule pods"
        d = self.diagnosis
        return reasons_summary(self.num_all_nodes, d.node_statuses.values(), d.pre_filter_msg, d.post_filter_msg)


@dataclass
class ScheduleResult:
    node: str
    evaluated: int
    feasible: int


# ---------------------------------------------------------------------------- framework


def num_feasible_nodes_to_find(num_all_nodes: int, percentage: int = 0) -> int:
    """How many feasible nodes to look for before scoring (upstream's adaptive percentage)."""
    if num_all_nodes < MIN_FEASIBLE_NODES_TO_FIND:
        return num_all_nodes
    if percentage <= 0:
        # Large clusters score a smaller share: 50% at 0 nodes, down to 5% from 5,625 nodes.
        percentage = max(DEFAULT_PERCENTAGE_OF_NODES_TO_SCORE - num_all_nodes // 125, MIN_FEASIBLE_NODES_PERCENTAGE)
    if percentage >= 100:
        return num_all_nodes
    return max(num_all_nodes * percentage // 100, MIN_FEASIBLE_NODES_TO_FIND)


FilterFn = Callable[[PodInfo, NodeInfo, Any], "Status | None"]


class CycleState:
    """The per-cycle states of the plugins whose filters run for this pod."""

    __slots__ = ("filters", "states")

    def __init__(self) -> None:
        self.filters: list[tuple[Any, FilterFn, Any]] = []  # (plugin, bound filter, state)
        self.states: dict[str, Any] = {}

    def copy(self, copier: Callable[[Any, Any], Any]) -> CycleState:
        c = CycleState()
        c.filters = [(p, f, copier(p, s)) for p, f, s in self.filters]
        c.states = {p.name: s for p, _, s in c.filters}
        return c


class Framework:
    """Runs a profile's plugins for one pod at a time against the cache."""

    def __init__(self, plugins: list[Any], weights: dict[str, int] | None = None, *,
                 percentage_of_nodes_to_score: int = 0, rng: random.Random | None = None):
        self.plugins = plugins
        weights = weights or {}
        self.filter_plugins = [p for p in plugins if hasattr(p, "filter")]
        self.pre_filter_plugins = {p.name for p in plugins if hasattr(p, "pre_filter")}
        self.score_plugins = [(p, weights.get(p.name, 1)) for p in plugins
                              if hasattr(p, "score") and weights.get(p.name, 1) > 0]
        self.percentage_of_nodes_to_score = percentage_of_nodes_to_score
        self.rng = rng or random.Random()
        self._next_start = 0

    def plugin(self, name: str) -> Any:
        for p in self.plugins:
            if p.name == name:
                return p
        raise KeyError(name)

    # -- filtering

    def pre_filter(self, pod: PodInfo, snap: Cache) -> CycleState:
        """Run every pre_filter; raises FitError when one says the pod fits nowhere."""
        cs = CycleState()
        for p in self.filter_plugins:
            state = p.pre_filter(pod, snap) if p.name in self.pre_filter_plugins else None
            if state is SKIP:
                continue
            if isinstance(state, Status):
                state.plugin = state.plugin or p.name
                d = Diagnosis(pre_filter_msg=state.message(), unschedulable_plugins={p.name})
                d.node_statuses = {ni.name: state for ni in snap.node_list}
                raise FitError(pod, len(snap.node_list), d)
            cs.filters.append((p, p.filter, state))
            cs.states[p.name] = state
        return cs

    def run_filters(self, pod: PodInfo, ni: NodeInfo, cs: CycleState, snap: Cache | None = None) -> Status | None:
        if snap is not None and snap.nominated:
            ni = self._with_nominated(pod, ni, snap, cs)
        for _, f, state in cs.filters:
            st = f(pod, ni, state)
            if st is not None:
                return st
        return None

    def _with_nominated(self, pod: PodInfo, ni: NodeInfo, snap: Cache, cs: CycleState) -> NodeInfo:
        """The node as it will be once pods of at least this priority nominated to it are placed there."""
        nominated = snap.nominated.get(ni.name)
        if not nominated:
            return ni
        others = [p for k, p in nominated.items() if k != pod.key and p.priority >= pod.priority]
        if not others:
            return ni
        ni = ni.clone()
        for other in others:
            ni.add_pod(other)
        return ni

    def find_feasible(self, pod: PodInfo, snap: Cache, cs: CycleState,
                      diagnosis: Diagnosis) -> tuple[list[NodeInfo], int]:
        nodes = snap.node_list
        n = len(nodes)
        want = num_feasible_nodes_to_find(n, self.percentage_of_nodes_to_score)
        feasible: list[NodeInfo] = []
        statuses = diagnosis.node_statuses
        start = self._next_start % n if n else 0
        run = self.run_filters
        processed = 0
        nominated_snap = snap if snap.nominated else None
        for i in range(n):
            ni = nodes[(start + i) % n]
            processed += 1
            st = run(pod, ni, cs, nominated_snap)
            if st is None:
                feasible.append(ni)
                if len(feasible) >= want:
                    break
            else:
                statuses[ni.name] = st
                diagnosis.unschedulable_plugins.add(st.plugin)
        # The next pod starts where this one stopped, so every node gets its turn.
        self._next_start = (start + processed) % n if n else 0
        return feasible, processed

    # -- scoring

    def prioritize(self, pod: PodInfo, snap: Cache, nodes: list[NodeInfo]) -> list[int]:
        totals = [0] * len(nodes)
        for p, weight in self.score_plugins:
            state = p.pre_score(pod, snap, nodes) if hasattr(p, "pre_score") else None
            if state is SKIP:
                continue
            score = p.score
            scores = [score(pod, ni, state) for ni in nodes]
            if hasattr(p, "normalize"):
                p.normalize(scores, state)
            if weight == 1:
                totals = [t + s for t, s in zip(totals, scores, strict=True)]
            else:
                totals = [t + s * weight for t, s in zip(totals, scores, strict=True)]
        return totals

    def select_host(self, nodes: list[NodeInfo], totals: list[int]) -> NodeInfo:
        """The best-scored node; ties broken uniformly at random (reservoir sampling)."""
        best = nodes[0]
        best_score = totals[0]
        ties = 1
        for ni, s in zip(nodes[1:], totals[1:], strict=True):
            if s > best_score:
                best, best_score, ties = ni, s, 1
            elif s == best_score:
                ties += 1
                if self.rng.randrange(ties) == 0:
                    best = ni
        return best

    # -- one cycle

    def schedule(self, pod: PodInfo, snap: Cache) -> ScheduleResult:
        """Pick a node for pod, or raise FitError explaining why none fits."""
        n = len(snap.node_list)
        if n == 0:
            raise FitError(pod, 0, Diagnosis())
        cs = self.pre_filter(pod, snap)
        diagnosis = Diagnosis()
        # A pod that preempted others first tries the node it made room on.
        if pod.nominated_node:
            ni = snap.nodes.get(pod.nominated_node)
            if ni is not None and self.run_filters(pod, ni, cs, snap) is None:
                return ScheduleResult(ni.name, 1, 1)
        feasible, evaluated = self.find_feasible(pod, snap, cs, diagnosis)
        if not feasible:
            raise FitError(pod, n, diagnosis)
        if len(feasible) == 1:
            return ScheduleResult(feasible[0].name, evaluated, 1)
        totals = self.prioritize(pod, snap, feasible)
        return ScheduleResult(self.select_host(feasible, totals).name, evaluated, len(feasible))


# ---------------------------------------------------------------------------- helpers for normalize


def default_normalize(scores: list[int], reverse: bool = False) -> None:
    """Scale to 0..100 by the highest score; reverse flips it (fewer is better)."""
    top = max(scores, default=0)
    if top == 0:
        if reverse:
            scores[:] = [MAX_NODE_SCORE] * len(scores)
        return
    for i, s in enumerate(scores):
        s = MAX_NODE_SCORE * s // top
        scores[i] = MAX_NODE_SCORE - s if reverse else s
