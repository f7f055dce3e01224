"""The Node authorizer and NodeRestriction: a node reads and writes only what its own pods need."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from kybernetes.apiserver.nodeauthorizer import node_name, pod_references
from kybernetes.apiserver.noderestriction import forbidden_label
from kybernetes.apiserver.request import Request
from kybernetes.apiserver.server import APIServer

from .conftest import call, start_api, stop_api

N1 = ("system:node:n1", ("system:nodes", "system:authenticated"))
N2 = ("system:node:n2", ("system:nodes", "system:authenticated"))


async def as_node(api: APIServer, who, method: str, path: str, body: Any = None,
                  query: dict[str, str] | None = None, content_type: str = "application/json") -> tuple[int, Any]:
    raw = orjson.dumps(body) if body is not None else b""
    resp = await api.handle(Request(method, path, dict(query or {}), {"content-type": content_type}, raw,
                                    user=who[0], groups=who[1]))
    return resp.status, (orjson.loads(resp.body) if resp.body and resp.stream is None else None)


def pod(name: str, node: str, **spec: Any) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}], **spec}}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[APIServer]:
    a = await start_api(tmp_path, authorization_mode="RBAC")
    for n in ("n1", "n2"):
        code, body = await call(a, "POST", "/api/v1/nodes", {"metadata": {"name": n}})
        assert code == 201, body
    for kind, name in (("secrets", "s1"), ("secrets", "s2"), ("secrets", "pull"), ("configmaps", "c1"),
                       ("serviceaccounts", "sa1")):
        assert (await call(a, "POST", f"/api/v1/namespaces/default/{kind}", {"metadata": {"name": name}}))[0] == 201
    await call(a, "POST", "/api/v1/namespaces/default/secrets",
               {"metadata": {"name": "tls1"}, "type": "kubernetes.io/tls",
                "data": {"tls.crt": "", "tls.key": ""}})
    await call(a, "POST", "/api/v1/persistentvolumes", {
        "metadata": {"name": "pv1"}, "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                                              "hostPath": {"path": "/tmp/x"},
                                              "claimRef": {"namespace": "default", "name": "claim1"}}})
    await call(a, "POST", "/api/v1/namespaces/default/persistentvolumeclaims", {
        "metadata": {"name": "claim1"}, "spec": {"accessModes": ["ReadWriteOnce"],
                                                 "resources": {"requests": {"storage": "1Gi"}}}})
    p1 = pod("p1", "n1", serviceAccountName="sa1", imagePullSecrets=[{"name": "pull"}],
             volumes=[{"name": "v", "secret": {"secretName": "s1"}},
                      {"name": "d", "persistentVolumeClaim": {"claimName": "claim1"}}])
    p1["spec"]["containers"][0]["envFrom"] = [{"configMapRef": {"name": "c1"}}]
    for p in (p1, pod("p2", "n2", volumes=[{"name": "v", "secret": {"secretName": "s2"}}])):
        code, body = await call(a, "POST", "/api/v1/namespaces/default/pods", p)
        assert code == 201, body
    await a.cache.fresh()
    yield a
    await stop_api(a)


def test_node_name() -> None:
    assert node_name(*N1) == "n1"
    assert node_name("system:node:n1", ("system:authenticated",)) is None
    assert node_name("alice", ("system:nodes",)) is None


def test_pod_references() -> None:
    p = pod("p", "n", serviceAccountName="sa", imagePullSecrets=[{"name": "pull"}], volumes=[
        {"name": "a", "secret": {"secretName": "s"}}, {"name": "b", "configMap": {"name": "c"}},
        {"name": "e", "ephemeral": {"volumeClaimTemplate": {}}},
        {"name": "p", "projected": {"sources": [{"secret": {"name": "ps"}}, {"configMap": {"name": "pc"}}]}},
        {"name": "csi", "csi": {"driver": "x", "nodePublishSecretRef": {"name": "cs"}}}])
    p["spec"]["initContainers"] = [{"name": "i", "env": [{"name": "X", "valueFrom": {
        "secretKeyRef": {"name": "es", "key": "k"}}}]}]
    refs = pod_references(p)
    assert refs["secrets"] == {"s", "pull", "ps", "cs", "es"}
    assert refs["configmaps"] == {"c", "pc"}
    assert refs["persistentvolumeclaims"] == {"p-e"}
    assert refs["serviceaccounts"] == {"sa"}


async def test_a_node_reads_what_its_pods_refer_to(api: APIServer) -> None:
    for path in ("/api/v1/namespaces/default/secrets/s1", "/api/v1/namespaces/default/secrets/pull",
                 "/api/v1/namespaces/default/configmaps/c1",
                 "/api/v1/namespaces/default/persistentvolumeclaims/claim1", "/api/v1/persistentvolumes/pv1"):
        code, body = await as_node(api, N1, "GET", path)
        assert code == 200, (path, body)
    code, _ = await as_node(api, N1, "GET", "/api/v1/namespaces/default/secrets",
                            query={"fieldSelector": "metadata.name=s1", "watch": "true"})
    assert code == 200


async def test_a_node_cannot_read_another_nodes_pod_secret(api: APIServer) -> None:
    code, body = await as_node(api, N1, "GET", "/api/v1/namespaces/default/secrets/s2")
    assert code == 403
    assert body["message"] == ('secrets "s2" is forbidden: User "system:node:n1" cannot get resource "secrets" in '
                               'API group "" in the namespace "default": no relationship found between node '
                               "'n1' and this object")
    assert (await as_node(api, N2, "GET", "/api/v1/namespaces/default/secrets/s2"))[0] == 200
    code, body = await as_node(api, N1, "GET", "/api/v1/namespaces/default/secrets")
    assert code == 403, body
    assert (await as_node(api, N1, "DELETE", "/api/v1/namespaces/default/secrets/s1"))[0] == 403
    # The TLS secrets every node's ingress serves, by their type only.
    code, body = await as_node(api, N1, "GET", "/api/v1/secrets", query={"fieldSelector": "type=kubernetes.io/tls"})
    assert code == 200 and [i["metadata"]["name"] for i in body["items"]] == ["tls1"], body


async def test_tokens_only_for_its_pods(api: APIServer) -> None:
    def request(pod_name: str, uid: str) -> dict:
        return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600,
                         "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": uid}}}
    uid1 = (await call(api, "GET", "/api/v1/namespaces/default/pods/p1"))[1]["metadata"]["uid"]
    uid2 = (await call(api, "GET", "/api/v1/namespaces/default/pods/p2"))[1]["metadata"]["uid"]
    code, body = await as_node(api, N1, "POST", "/api/v1/namespaces/default/serviceaccounts/sa1/token",
                               request("p1", uid1))
    assert code == 201, body
    # sa "default" is p2's, on n2: no relationship for n1.
    code, body = await as_node(api, N1, "POST", "/api/v1/namespaces/default/serviceaccounts/default/token",
                               request("p2", uid2))
    assert code == 403, body
    # n2 may have default's token, but not bound to n1's pod.
    code, body = await as_node(api, N2, "POST", "/api/v1/namespaces/default/serviceaccounts/default/token",
                               request("p1", uid1))
    assert code == 403 and "different node" in body["message"], body


async def test_a_node_writes_only_itself_and_its_pods(api: APIServer) -> None:
    status = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    merge = "application/merge-patch+json"
    code, body = await as_node(api, N1, "PATCH", "/api/v1/nodes/n1/status", status, content_type=merge)
    assert code == 200, body
    code, body = await as_node(api, N1, "PATCH", "/api/v1/nodes/n2/status", status, content_type=merge)
    assert code == 403 and "is not allowed to modify node 'n2'" in body["message"], body
    code, body = await as_node(api, N1, "PATCH", "/api/v1/nodes/n1",
                               {"metadata": {"labels": {"node-restriction.kubernetes.io/x": "y"}}}, content_type=merge)
    assert code == 403 and "labels" in body["message"], body
    code, body = await as_node(api, N1, "PATCH", "/api/v1/nodes/n1",
                               {"metadata": {"labels": {"kubernetes.io/hostname": "n1", "mine": "yes"}}},
                               content_type=merge)
    assert code == 200, body
    code, body = await as_node(api, N1, "PATCH", "/api/v1/nodes/n1",
                               {"spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}}, content_type=merge)
    assert code == 403 and "taints" in body["message"], body
    pod_status = {"status": {"phase": "Running"}}
    code, body = await as_node(api, N1, "PATCH", "/api/v1/namespaces/default/pods/p1/status", pod_status,
                               content_type=merge)
    assert code == 200, body
    code, body = await as_node(api, N1, "PATCH", "/api/v1/namespaces/default/pods/p2/status", pod_status,
                               content_type=merge)
    assert code == 403 and "spec.nodeName set to itself" in body["message"], body
    code, body = await as_node(api, N1, "POST", "/api/v1/namespaces/default/pods", pod("p3", "n1"))
    assert code == 403 and "mirror pods" in body["message"], body
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "n2"},
             "spec": {"holderIdentity": "n2"}}
    code, body = await as_node(api, N1, "POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                               lease)
    assert code == 403, body
    lease["metadata"]["name"] = "n1"
    code, body = await as_node(api, N1, "POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                               lease)
    assert code == 201, body


def test_forbidden_labels() -> None:
    assert forbidden_label("node-restriction.kubernetes.io/team")
    assert forbidden_label("node-role.kubernetes.io/master")
    assert not forbidden_label("kubernetes.io/hostname")
    assert not forbidden_label("kubelet.kubernetes.io/x")
    assert not forbidden_label("example.com/team") and not forbidden_label("team")


async def test_relationships_follow_the_pods_changes(api: APIServer) -> None:
    """What a node may read is worked out per version of a pod: a new pod, a pod deleted and
    a pod bound elsewhere change the answer at once."""
    s2 = "/api/v1/namespaces/default/secrets/s2"
    assert (await as_node(api, N1, "GET", s2))[0] == 403
    code, body = await call(api, "POST", "/api/v1/namespaces/default/pods",
                            pod("p3", "n1", volumes=[{"name": "v", "secret": {"secretName": "s2"}}]))
    assert code == 201, body
    await api.cache.fresh()
    assert (await as_node(api, N1, "GET", s2))[0] == 200
    assert (await call(api, "DELETE", "/api/v1/namespaces/default/pods/p3", {"gracePeriodSeconds": 0}))[0] == 200
    await api.cache.fresh()
    assert (await as_node(api, N1, "GET", s2))[0] == 403
    # p2 (on n2) names s2; deleted and made again on n1, it moves the relationship with it.
    assert (await call(api, "DELETE", "/api/v1/namespaces/default/pods/p2", {"gracePeriodSeconds": 0}))[0] == 200
    await call(api, "POST", "/api/v1/namespaces/default/pods",
               pod("p2", "n1", volumes=[{"name": "v", "secret": {"secretName": "s2"}}]))
    await api.cache.fresh()
    assert (await as_node(api, N1, "GET", s2))[0] == 200
    assert (await as_node(api, N2, "GET", s2))[0] == 403
