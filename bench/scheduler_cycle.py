"""Scheduler cycle micro-benchmark: one pod's filter → score → select → assume, no API involved.

Builds N synthetic nodes (4 cpu / 16Gi / 110 pods, three zones, a tenth of
them tainted) in the scheduler's Cache and schedules pods (100m / 128Mi) one
after another, as the scheduling loop does. The baseline, measured in the same
run, is the floor of the same walk: a bare Python loop visiting as many nodes
per pod with one capacity comparison each.

--kind picks the pods: plain; anti-affinity (preferred anti-affinity per
hostname against the pod's group of 100, as bench/cluster.py); spread
(ScheduleAnyway spread per hostname, as bench/cluster.py); required-anti-affinity
(required anti-affinity per hostname within the group); zone-spread
(DoNotSchedule spread across zones). The affinity and spread costs grow with the
pods already placed, so those kinds want --pods in the thousands.

Usage: .venv/bin/python bench/scheduler_cycle.py [--nodes 1000 5000] [--pods 2000]
       [--kind plain|anti-affinity|spread|required-anti-affinity|zone-spread]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kybernetes.scheduler.framework import Framework, num_feasible_nodes_to_find  # noqa: E402
from kybernetes.scheduler.nodeinfo import Cache, PodInfo  # noqa: E402
from kybernetes.scheduler.plugins import DEFAULT_WEIGHTS, default_plugins  # noqa: E402


def node(i: int) -> dict:
    spec: dict = {}
    if i % 10 == 9:
        spec["taints"] = [{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}]
    return {"metadata": {"name": f"node-{i}", "labels": {"kubernetes.io/hostname": f"node-{i}",
                                                           "topology.kubernetes.io/zone": f"zone-{i % 3}"}},
            "spec": spec,
            "status": {"allocatable": {"cpu": "4", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"}}}


KINDS = ("plain", "anti-affinity", "spread", "required-anti-affinity", "zone-spread")


def pod(i: int, kind: str = "plain") -> dict:
    group = f"{i % 100:02d}"
    spec: dict = {"schedulerName": "default-scheduler", "priority": 0,
                  "containers": [{"name": "c", "image": "pause",
                                  "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}
    term = {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"group": group}}}
    if kind == "anti-affinity":
        spec["affinity"] = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": term}]}}
    elif kind == "required-anti-affinity":
        spec["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
    elif kind == "spread":
        spec["topologySpreadConstraints"] = [{"maxSkew": 1, "whenUnsatisfiable": "ScheduleAnyway", **term}]
    elif kind == "zone-spread":
        spec["topologySpreadConstraints"] = [{"maxSkew": 1, "whenUnsatisfiable": "DoNotSchedule",
                                              "topologyKey": "topology.kubernetes.io/zone",
                                              "labelSelector": term["labelSelector"]}]
    elif kind != "plain":
        raise ValueError(f"unknown kind {kind!r}")
    return {"metadata": {"name": f"pod-{i}", "namespace": "default", "uid": f"uid-{i}",
                         "labels": {"app": "bench", "group": group}},
            "spec": spec}


def bench(n_nodes: int, n_pods: int, strategy: str, kind: str = "plain") -> tuple[float, float]:
    cache = Cache()
    for i in range(n_nodes):
        cache.add_node(node(i))
    fw = Framework(default_plugins(strategy), DEFAULT_WEIGHTS)
    infos = [PodInfo(pod(i, kind)) for i in range(n_pods)]  # the queue builds these at informer time
    t0 = time.perf_counter()
    for pi in infos:
        result = fw.schedule(pi, cache)
        cache.assume_pod(pi, result.node)
    cycle = (time.perf_counter() - t0) / n_pods

    # Baseline: the bare walk over the same number of nodes per pod.
    visits = num_feasible_nodes_to_find(n_nodes) * 10 // 9  # tainted nodes are visited too
    nodes = cache.node_list
    t0 = time.perf_counter()
    for _ in range(n_pods):
        found = 0
        for j in range(min(visits, n_nodes)):
            if nodes[j].alloc_cpu - nodes[j].req_cpu >= 100:
                found += 1
    floor = (time.perf_counter() - t0) / n_pods
    return cycle, floor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, nargs="+", default=[1000, 5000])
    ap.add_argument("--pods", type=int, default=2000)
    ap.add_argument("--strategy", default="LeastAllocated")
    ap.add_argument("--kind", default="plain", choices=KINDS)
    args = ap.parse_args()
    for n in args.nodes:
        cycle, floor = bench(n, args.pods, args.strategy, args.kind)
        print(f"{args.kind}: {n:>6} nodes ({num_feasible_nodes_to_find(n)} scored): cycle {cycle * 1e3:.3f} ms/pod "
              f"= {1 / cycle:,.0f} pods/s; bare node walk {floor * 1e3:.3f} ms/pod; ratio {cycle / floor:.1f}x")


if __name__ == "__main__":
    main()
