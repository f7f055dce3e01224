"""Garbage collection of a Deployment's ReplicaSets and pods through kubectl delete --cascade."""

from __future__ import annotations

import os

import pytest

from .conftest import Server, needs_kubectl, wait_for

pytestmark = [needs_kubectl, pytest.mark.skipif(os.geteuid() != 0, reason="the process runtime isolates as root")]


def _owned(server: Server, kind: str, app: str) -> list[dict]:
    return [o for o in server.kjson("get", kind, "-l", f"app={app}")["items"]
            if not o["metadata"].get("deletionTimestamp")]


def _deploy(server: Server, name: str) -> tuple[list[dict], list[dict]]:
    server.kubectl("create", "deployment", name, "--image=busybox", "--replicas=2", "--",
                   "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done")
    server.kubectl("rollout", "status", f"deployment/{name}", "--timeout=60s", timeout=90)
    rss, pods = _owned(server, "rs", name), _owned(server, "pods", name)
    assert len(rss) == 1 and len(pods) == 2
    return rss, pods


@pytest.mark.parametrize("cascade", ["background", "foreground"])
def test_deleting_a_deployment_removes_its_replicaset_and_pods(server: Server, cascade: str):
    name = f"gc-{cascade}"
    _deploy(server, name)
    server.kubectl("delete", "deployment", name, f"--cascade={cascade}", "--timeout=60s", timeout=90)
    if cascade == "foreground":
        # Foreground: the Deployment is gone only after its dependents are.
        assert not _owned(server, "rs", name)
    wait_for(lambda: not _owned(server, "rs", name) and not server.kjson("get", "pods", "-l", f"app={name}")["items"],
             timeout=60, interval=0.5)


def test_orphaning_keeps_replicaset_and_pods(server: Server):
    name = "gc-orphan"
    rss, pods = _deploy(server, name)
    server.kubectl("delete", "deployment", name, "--cascade=orphan", "--timeout=60s", timeout=90)
    assert server.kubectl("get", "deployment", name, check=False).returncode != 0
    rs = server.kjson("get", "rs", rss[0]["metadata"]["name"])
    assert not rs["metadata"].get("ownerReferences"), "the ReplicaSet is released"
    still = _owned(server, "pods", name)
    assert {p["metadata"]["name"] for p in still} == {p["metadata"]["name"] for p in pods}
    assert all(p["metadata"]["ownerReferences"][0]["uid"] == rs["metadata"]["uid"] for p in still)
    # The orphaned ReplicaSet still keeps its pods; deleting it takes them along.
    server.kubectl("delete", "rs", rs["metadata"]["name"], "--timeout=60s", timeout=90)
    wait_for(lambda: not server.kjson("get", "pods", "-l", f"app={name}")["items"], timeout=60, interval=0.5)
