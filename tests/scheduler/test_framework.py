"""The framework's cycle, its failure summaries, sampling, and preemption."""

from __future__ import annotations

import random

import pytest

from kybernetes.scheduler.framework import (
    FitError,
    Framework,
    Status,
    num_feasible_nodes_to_find,
    reasons_summary,
    unresolvable,
    unschedulable,
)
from kybernetes.scheduler.nodeinfo import Cache, PodInfo
from kybernetes.scheduler.plugins import DEFAULT_WEIGHTS, default_plugins
from kybernetes.scheduler.preemption import Preemptor

from .helpers import make_node, make_pod


def cluster(nodes: list[dict], pods: list[dict] = ()) -> Cache:
    c = Cache()
    for n in nodes:
        c.add_node(n)
    for p in pods:
        c.add_pod(p)
    return c


def framework(strategy: str = "LeastAllocated") -> Framework:
    return Framework(default_plugins(strategy), DEFAULT_WEIGHTS, rng=random.Random(1))


def test_reasons_summary_format_matches_upstream():
    statuses = [unschedulable("NodeResourcesFit", "Insufficient cpu"),
                unschedulable("NodeResourcesFit", "Insufficient cpu", "Insufficient memory"),
                unresolvable("TaintToleration", "node(s) had untolerated taint {dedicated: gpu}")]
    assert reasons_summary(3, statuses) == (
        "0/3 nodes are available: 1 Insufficient memory, 1 node(s) had untolerated taint {dedicated: gpu}, "
        "2 Insufficient cpu.")
    assert reasons_summary(3, statuses[:1], post_filter_msg="preemption: 0/3 nodes are available: "
                           "3 Preemption is not helpful for scheduling.") == (
        "0/3 nodes are available: 1 Insufficient cpu. preemption: 0/3 nodes are available: "
        "3 Preemption is not helpful for scheduling..")


def test_fit_error_lists_every_node_reason():
    cache = cluster([make_node("small-1", cpu="1"), make_node("small-2", cpu="1"),
                     make_node("tainted", cpu="8", taints=[{"key": "dedicated", "value": "gpu",
                                                            "effect": "NoSchedule"}])])
    with pytest.raises(FitError) as ei:
        framework().schedule(PodInfo(make_pod("big", "2")), cache)
    assert str(ei.value) == ("0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, "
                             "2 Insufficient cpu.")
    assert ei.value.diagnosis.unschedulable_plugins == {"NodeResourcesFit", "TaintToleration"}
    with pytest.raises(FitError) as ei:
        framework().schedule(PodInfo(make_pod("p")), Cache())
    assert str(ei.value) == "no nodes available to schedule pods"


def test_spread_vs_bin_packing():
    nodes = [make_node("empty", cpu="4", memory="8Gi"), make_node("half", cpu="4", memory="8Gi")]
    existing = [make_pod("x", "2", "4Gi", node="half")]
    pod = PodInfo(make_pod("p", "1", "1Gi"))
    assert framework("LeastAllocated").schedule(pod, cluster(nodes, existing)).node == "empty"
    assert framework("MostAllocated").schedule(pod, cluster(nodes, existing)).node == "half"


def test_assumed_pods_take_room_for_the_next_cycle():
    cache = cluster([make_node("a", cpu="1"), make_node("b", cpu="1")])
    fw = framework()
    placed = []
    for i in range(2):
        pi = PodInfo(make_pod(f"p{i}", "600m"))
        placed.append(fw.schedule(pi, cache).node)
        cache.assume_pod(pi, placed[-1])
    assert sorted(placed) == ["a", "b"]
    with pytest.raises(FitError):
        fw.schedule(PodInfo(make_pod("p3", "600m")), cache)
    cache.forget_pod("default/p0")
    assert fw.schedule(PodInfo(make_pod("p3", "600m")), cache).node == placed[0]


def test_sampling_stops_after_enough_feasible_nodes_and_rotates():
    assert num_feasible_nodes_to_find(50) == 50
    assert num_feasible_nodes_to_find(1000) == 420
    assert num_feasible_nodes_to_find(5000) == 500
    assert num_feasible_nodes_to_find(20000) == 1000
    assert num_feasible_nodes_to_find(1000, 100) == 1000
    cache = cluster([make_node(f"n{i}") for i in range(1000)])
    fw = framework()
    r1 = fw.schedule(PodInfo(make_pod("p1")), cache)
    assert (r1.evaluated, r1.feasible) == (420, 420)
    first = fw._next_start
    fw.schedule(PodInfo(make_pod("p2")), cache)
    assert fw._next_start == (first + 420) % 1000


def test_nominated_node_is_tried_first_and_reserved():
    cache = cluster([make_node("a", cpu="2"), make_node("b", cpu="2")])
    fw = framework()
    pod = make_pod("p", "1")
    pod["status"] = {"nominatedNodeName": "b"}
    assert fw.schedule(PodInfo(pod), cache).node == "b"
    # A lower-priority pod must leave room on b for the nominated high-priority pod.
    high = PodInfo(make_pod("high", "2", priority=100))
    cache.set_nominated(high, "b")
    cache.assume_pod(PodInfo(make_pod("filler", "2")), "a")
    with pytest.raises(FitError):
        fw.schedule(PodInfo(make_pod("low", "1", priority=1)), cache)


def test_preemption_picks_minimal_victims():
    nodes = [make_node("a", cpu="2"), make_node("b", cpu="2"),
             make_node("c", cpu="8", labels={"other": "x"}, taints=[{"key": "k", "effect": "NoSchedule"}])]
    pods = [make_pod("a-low", "1", node="a", priority=1), make_pod("a-mid", "1", node="a", priority=5),
            make_pod("b-low1", "500m", node="b", priority=1), make_pod("b-low2", "500m", node="b", priority=1),
            make_pod("b-high", "1", node="b", priority=50)]
    cache = cluster(nodes, pods)
    fw = framework()
    pod = PodInfo(make_pod("urgent", "1", priority=10))
    with pytest.raises(FitError) as ei:
        fw.schedule(pod, cache)
    candidate, msg = Preemptor(fw, rng=random.Random(0)).preempt(pod, cache, ei.value.diagnosis)
    assert msg == ""
    # On a, evicting the priority-1 pod is enough; on b, two priority-1 pods would have to go.
    assert candidate.node == "a" and [v.name for v in candidate.victims] == ["a-low"]


def test_preemption_messages():
    cache = cluster([make_node("a", cpu="1"), make_node("t", cpu="8", taints=[{"key": "k", "effect": "NoSchedule"}])],
                    [make_pod("same", "1", node="a", priority=10)])
    fw = framework()
    pod = PodInfo(make_pod("p", "1", priority=10))
    with pytest.raises(FitError) as ei:
        fw.schedule(pod, cache)
    fe = ei.value
    _, fe.diagnosis.post_filter_msg = Preemptor(fw).preempt(pod, cache, fe.diagnosis)
    assert str(fe) == (
        "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {k: }. preemption: "
        "0/2 nodes are available: 1 No preemption victims found for incoming pod, "
        "1 Preemption is not helpful for scheduling..")
    never = make_pod("n", "1", priority=100, preemptionPolicy="Never")
    candidate, msg = Preemptor(fw).preempt(PodInfo(never), cache, fe.diagnosis)
    assert candidate is None and msg == "preemption: not eligible due to preemptionPolicy=Never."


def test_preemption_respects_anti_affinity_state():
    anti = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "solo"}}, "topologyKey": "kubernetes.io/hostname"}]}}
    cache = cluster([make_node("a")], [make_pod("old", node="a", labels={"app": "solo"}, priority=0)])
    fw = framework()
    pod = PodInfo(make_pod("new", labels={"app": "solo"}, priority=10, affinity=anti))
    with pytest.raises(FitError) as ei:
        fw.schedule(pod, cache)
    assert "1 node(s) didn't match pod anti-affinity rules" in str(ei.value)
    candidate, _ = Preemptor(fw).preempt(pod, cache, ei.value.diagnosis)
    assert candidate.node == "a" and [v.name for v in candidate.victims] == ["old"]


def test_status_equality():
    assert Status("Unschedulable", "x") == unschedulable("P", "x")
