"""Hollow nodes with the real scheduler and a Deployment, against an in-process API server."""

from __future__ import annotations

from pathlib import Path

from kybernetes.client import Client
from kybernetes.controllers.manager import ControllerManager
from kybernetes.runtime.hollow import HollowNodes
from kybernetes.scheduler import Scheduler, SchedulerConfig
from tests.apiserver.conftest import deployment, eventually, start_api, stop_api


async def test_hollow_nodes_run_a_deployment(tmp_path: Path) -> None:
    api = await start_api(tmp_path)
    client = Client.in_process(api.handle)
    hollow = HollowNodes(client, 20, renew_interval=0.2)
    mgr = ControllerManager.in_process(api)
    sched = Scheduler(Client.in_process(api.handle), SchedulerConfig())
    try:
        await hollow.start()
        nodes = await client.resource("v1", "nodes", False).list()
        assert len(nodes["items"]) == 20
        assert all(any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
                   for n in nodes["items"])
        await mgr.start()
        await sched.start()
        await client.resource("apps/v1", "deployments").create(deployment("web", replicas=30), "default")

        async def all_ready() -> bool:
            d = await client.resource("apps/v1", "deployments").get("web", "default")
            return (d.get("status") or {}).get("readyReplicas") == 30
        await eventually(all_ready, timeout=30, what="30 replicas ready on hollow nodes")
        pods = (await client.resource("v1", "pods").list("default"))["items"]
        assert {p["spec"]["nodeName"] for p in pods} <= set(hollow.names)
        assert all(p["status"]["podIP"].startswith("127.") for p in pods)
        # Spread (least allocated) puts them on many nodes.
        assert len({p["spec"]["nodeName"] for p in pods}) >= 10
        # Leases are renewed.
        before = (await client.resource("coordination.k8s.io/v1", "leases").get(
            hollow.names[0], "kube-node-lease"))["spec"]["renewTime"]

        async def renewed() -> bool:
            lease = await client.resource("coordination.k8s.io/v1", "leases").get(hollow.names[0],
                                                                                    "kube-node-lease")
            return lease["spec"]["renewTime"] != before
        await eventually(renewed, what="lease renewed")
        # Deleting pods completes without a kubelet's grace period.
        await client.resource("apps/v1", "deployments").patch("web", {"spec": {"replicas": 0}},
                                                              namespace="default")

        async def no_pods() -> bool:
            return not (await client.resource("v1", "pods").list("default"))["items"]
        await eventually(no_pods, timeout=30, what="pods gone")
    finally:
        await sched.stop()
        await mgr.stop()
        await hollow.stop()
        await client.close()
        await stop_api(api)
