"""Default preemption: when a pod fits nowhere, find a node where evicting lower-priority pods makes room.

For each node that failed for a reason eviction can fix (not e.g. a node
selector mismatch), remove every pod of lower priority in a dry run; if the
pod then fits, give back as many of them as possible, most important first,
and what cannot be given back are the victims. Among the candidate nodes the
one whose victims matter least wins: lowest highest-victim priority, then the
lowest sum of priorities, then the fewest victims. The scheduler then deletes
the victims (gracefully) and nominates the node in the pod's status.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from .framework import UNSCHEDULABLE, CycleState, Diagnosis, Framework, Status, reasons_summary, unschedulable
from .nodeinfo import Cache, NodeInfo, PodInfo

NAME = "DefaultPreemption"
NOT_HELPFUL = "Preemption is not helpful for scheduling"
NO_VICTIMS = "No preemption victims found for incoming pod"
POLICY_NEVER = "not eligible due to preemptionPolicy=Never."
TERMINATING_VICTIM = "not eligible due to a terminating pod on the nominated node."


@dataclass
class Candidate:
    node: str
    victims: list[PodInfo]

    def rank(self) -> tuple[int, int, int]:
        prios = [v.priority for v in self.victims]
        return (max(prios, default=-(2**31)), sum(prios), len(prios))


def _copy_state(plugin: Any, state: Any) -> Any:
    copier = getattr(plugin, "copy_state", None)
    return copier(state) if copier is not None and state is not None else state


class Preemptor:
    def __init__(self, framework: Framework, *, min_candidate_nodes_percentage: int = 10,
                 min_candidate_nodes_absolute: int = 100, rng: random.Random | None = None):
        self.framework = framework
        self.min_pct = min_candidate_nodes_percentage
        self.min_abs = min_candidate_nodes_absolute
        self.rng = rng or random.Random()

    def eligible(self, pod: PodInfo, snap: Cache) -> tuple[bool, str]:
        if pod.preemption_never:
            return False, POLICY_NEVER
        if pod.nominated_node:
            ni = snap.nodes.get(pod.nominated_node)
            if ni is not None and any(p.deleting and p.priority < pod.priority for p in ni.pods.values()):
                # Victims of an earlier preemption are still leaving: wait for them, evict no more.
                return False, TERMINATING_VICTIM
        return True, ""

    def preempt(self, pod: PodInfo, snap: Cache, diagnosis: Diagnosis) -> tuple[Candidate | None, str]:
        """The chosen candidate (or None) and the "preemption: …" note for the FailedScheduling message."""
        ok, msg = self.eligible(pod, snap)
        if not ok:
            return None, f"preemption: {msg}"
        statuses: dict[str, Status] = {}
        potential: list[NodeInfo] = []
        not_helpful = unschedulable(NAME, NOT_HELPFUL)
        for ni in snap.node_list:
            st = diagnosis.node_statuses.get(ni.name)
            if st is not None and st.code != UNSCHEDULABLE:
                statuses[ni.name] = not_helpful
            else:
                potential.append(ni)
        candidates: list[Candidate] = []
        if potential:
            cs = self.framework.pre_filter(pod, snap)
            want = max(len(potential) * self.min_pct // 100, self.min_abs)
            offset = self.rng.randrange(len(potential))
            no_victims = unschedulable(NAME, NO_VICTIMS)
            for i in range(len(potential)):
                ni = potential[(offset + i) % len(potential)]
                victims = self.select_victims(pod, ni, cs, snap)
                if victims:
                    candidates.append(Candidate(ni.name, victims))
                    if len(candidates) >= want:
                        break
                else:
                    statuses[ni.name] = no_victims
        if not candidates:
            return None, "preemption: " + reasons_summary(len(snap.node_list), statuses.values())
        best = min(candidates, key=Candidate.rank)
        return best, ""

    def select_victims(self, pod: PodInfo, ni: NodeInfo, cs: CycleState, snap: Cache) -> list[PodInfo]:
        """The fewest lower-priority pods whose removal lets pod fit on ni; empty when none does."""
        lower = [p for p in ni.pods.values() if p.priority < pod.priority]
        if not lower:
            return []
        sim = ni.clone()
        state = cs.copy(_copy_state)
        plugins = [(p, s) for p, _, s in state.filters if hasattr(p, "remove_pod")]

        def remove(v: PodInfo) -> None:
            sim.remove_pod(v.key)
            for p, s in plugins:
                p.remove_pod(s, pod, v, sim)

        def add(v: PodInfo) -> None:
            sim.add_pod(v)
            for p, s in plugins:
                p.add_pod(s, pod, v, sim)

        for v in lower:
            remove(v)
        if self.framework.run_filters(pod, sim, state, snap) is not None:
            return []
        # Most important first: they get the first chance to stay.
        lower.sort(key=lambda p: (-p.priority, p.start_time))
        victims = []
        for v in lower:
            add(v)
            if self.framework.run_filters(pod, sim, state, snap) is not None:
                remove(v)
                victims.append(v)
        return victims
