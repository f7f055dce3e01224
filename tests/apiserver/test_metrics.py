"""metrics.k8s.io from kubelets' /stats/summary, in-process."""

from __future__ import annotations

from pathlib import Path

from kybernetes.apiserver.proxy import KubeletClient
from kybernetes.client import Client
from kybernetes.kubelet.server import KubeletServer
from kybernetes.runtime.base import ContainerConfig, ContainerMetadata, PodSandboxConfig, PodSandboxMetadata
from kybernetes.runtime.fake import FakeRuntime
from tests.apiserver.conftest import call, start_api, stop_api


class FakeKubelet:
    def __init__(self) -> None:
        self.runtime = FakeRuntime()
        self.node_name = "n1"

    def find_container(self, namespace: str, pod: str, container: str):
        return None


async def test_node_and_pod_metrics(tmp_path: Path) -> None:
    api = await start_api(tmp_path)
    kubelet = FakeKubelet()
    server = KubeletServer(kubelet, "127.0.0.1", 0, None)
    await server.start()
    api.kubelet_client = KubeletClient(None)
    client = Client.in_process(api.handle)
    try:
        await client.resource("v1", "nodes", False).create({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {"zone": "a"}},
            "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": server.port}}}})
        pod = await client.resource("v1", "pods").create({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}}, "default")
        sid = await kubelet.runtime.run_pod_sandbox(PodSandboxConfig(PodSandboxMetadata(
            "web", "default", pod["metadata"]["uid"])))
        cid = await kubelet.runtime.create_container(sid, ContainerConfig(ContainerMetadata("c"), "busybox",
                                                                          ["sleep", "1"]))
        await kubelet.runtime.start_container(cid)

        code, groups = await call(api, "GET", "/apis")
        assert any(g["name"] == "metrics.k8s.io" for g in groups["groups"])
        code, nodes = await call(api, "GET", "/apis/metrics.k8s.io/v1beta1/nodes")
        assert code == 200 and nodes["kind"] == "NodeMetricsList"
        (n,) = nodes["items"]
        assert n["metadata"]["name"] == "n1" and n["usage"]["cpu"].endswith("n")
        assert n["usage"]["memory"].endswith("Ki") and int(n["usage"]["memory"][:-2]) > 0
        code, pods = await call(api, "GET", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods",
                                query={"labelSelector": "app=web"})
        assert code == 200
        (p,) = pods["items"]
        assert p["metadata"]["name"] == "web" and p["containers"][0]["name"] == "c"
        assert p["containers"][0]["usage"] == {"cpu": "0n", "memory": "0Ki"}
        code, none = await call(api, "GET", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods",
                                query={"labelSelector": "app=other"})
        assert none["items"] == []
        code, one = await call(api, "GET", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/web")
        assert code == 200 and one["kind"] == "PodMetrics"
        code, missing = await call(api, "GET", "/apis/metrics.k8s.io/v1beta1/nodes/nope")
        assert code == 404
    finally:
        await client.close()
        await server.stop()
        await stop_api(api)
