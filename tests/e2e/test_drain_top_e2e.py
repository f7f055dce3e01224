"""kubectl drain (evictions honouring a PodDisruptionBudget, DaemonSets ignored) and kubectl top."""

from __future__ import annotations

import json
import os
import re

import pytest

from .conftest import Server, needs_kubectl, wait_for

pytestmark = [needs_kubectl, pytest.mark.skipif(os.geteuid() != 0, reason="the process runtime isolates as root")]

# Ends at once on SIGTERM, so an eviction is a graceful stop, not a kill at the deadline.
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]


def _apply(server: Server, obj: dict) -> None:
    server.kubectl("apply", "-f", "-", input=json.dumps(obj))


def _workload(kind: str, name: str, replicas: int | None = None) -> dict:
    spec: dict = {"selector": {"matchLabels": {"app": name}},
                  "template": {"metadata": {"labels": {"app": name}},
                               "spec": {"terminationGracePeriodSeconds": 5,
                                        "containers": [{"name": "main", "image": "busybox:1.36",
                                                        "command": SLEEPER}]}}}
    if replicas is not None:
        spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def _running(server: Server, app: str) -> list[dict]:
    return [p for p in server.kjson("get", "pods", "-l", f"app={app}")["items"]
            if not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") == "Running"]


def _node(server: Server) -> str:
    return server.kjson("get", "nodes")["items"][0]["metadata"]["name"]


def test_drain_honours_disruption_budget_and_ignores_daemonsets(server: Server):
    node = _node(server)
    _apply(server, _workload("Deployment", "guarded", replicas=2))
    _apply(server, _workload("DaemonSet", "agentd"))
    _apply(server, {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "guarded"},
                    "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}}})
    wait_for(lambda: len(_running(server, "guarded")) == 2 and len(_running(server, "agentd")) == 1, timeout=60)
    wait_for(lambda: server.kjson("get", "pdb", "guarded").get("status", {}).get("disruptionsAllowed") == 1,
             timeout=30)
    before = {p["metadata"]["name"] for p in _running(server, "guarded")}
    try:
        # One eviction is allowed; its replacement cannot run on the cordoned node, so the
        # budget then refuses the second and drain gives up at its timeout.
        p = server.kubectl("drain", node, "--ignore-daemonsets", "--timeout=8s", check=False, timeout=60)
        assert p.returncode != 0, p.stdout
        assert "disruption budget" in p.stderr + p.stdout, p.stderr
        assert "ignoring DaemonSet-managed Pods" in p.stderr + p.stdout, p.stderr
        assert server.kjson("get", "node", node)["spec"].get("unschedulable") is True
        left = {p["metadata"]["name"] for p in _running(server, "guarded")}
        assert len(left) == 1 and left < before, (before, left)
        assert len(_running(server, "agentd")) == 1
        pending = [p for p in server.kjson("get", "pods", "-l", "app=guarded")["items"]
                   if p["status"].get("phase") == "Pending" and not p["metadata"].get("deletionTimestamp")]
        assert len(pending) == 1, "the Deployment replaced the evicted pod"

        # Without the budget, drain evicts the rest and succeeds; the DaemonSet's pod stays.
        server.kubectl("delete", "pdb", "guarded")
        p = server.kubectl("drain", node, "--ignore-daemonsets", "--timeout=60s", timeout=90)
        assert re.search(r"pod/guarded-\S+ evicted", p.stdout), p.stdout
        assert f"node/{node} drained" in p.stdout, p.stdout
        assert not _running(server, "guarded")
        assert len(_running(server, "agentd")) == 1
    finally:
        server.kubectl("uncordon", node)
    wait_for(lambda: len(_running(server, "guarded")) == 2, timeout=60)
    server.kubectl("delete", "deployment", "guarded")
    server.kubectl("delete", "daemonset", "agentd")


def test_top_nodes_and_pods(server: Server):
    node = _node(server)
    _apply(server, _workload("Deployment", "measured", replicas=1))
    wait_for(lambda: len(_running(server, "measured")) == 1, timeout=60)

    def top(*args: str) -> str:
        p = server.kubectl("top", *args, check=False)
        return p.stdout if p.returncode == 0 else ""
    out = wait_for(lambda: top("node"), timeout=60, interval=1)
    header, row = out.splitlines()[0].split(), out.splitlines()[1].split()
    assert header[:3] == ["NAME", "CPU(cores)", "CPU(%)"] or header[:2] == ["NAME", "CPU(cores)"], header
    assert row[0] == node and re.fullmatch(r"\d+m", row[1]) and re.fullmatch(r"\d+Mi", row[3]), row
    out = wait_for(lambda: "measured-" in top("pod", "-l", "app=measured") and top("pod", "-l", "app=measured"),
                   timeout=60, interval=1)
    row = out.splitlines()[1].split()
    assert row[0].startswith("measured-") and re.fullmatch(r"\d+m", row[1]) and re.fullmatch(r"\d+Mi", row[2]), row
    out = top("pod", "-l", "app=measured", "--containers")
    assert out.splitlines()[1].split()[1] == "main", out
    server.kubectl("delete", "deployment", "measured")
