"""Two dual-stack nodes, each in its own network namespace on a LAN the test made, through kubectl.

`kyb server` runs the control plane and one node; `kyb agent` joins it as a second node
with its join string. The cluster is dual stack as k3s spells it (`--cluster-cidr
10.42.0.0/16,fd42::/56 --service-cidr 10.43.0.0/16,fd43::/112`, `--node-ip v4,v6`): each
node gets an IPv4 and an IPv6 pod CIDR and routes to the other's, pods get an address of
each family, and a pod on the agent reaches pods and Services on the server over both,
by name through the cluster DNS that runs on the server.
"""

from __future__ import annotations

import ipaddress
import json

import pytest

from kybernetes.images import build

from .conftest import Server, needs_kubectl, wait_for
from .nodenet import AGENT_NODE, SERVER_NODE, capable, try_get, two_nodes

_OK, _WHY = capable()
pytestmark = [needs_kubectl, pytest.mark.skipif(not _OK, reason=_WHY)]

WHOAMI = ["sh", "-c", "hostname > /www/host; exec httpd -f -p 8080 -h /www"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    images = tmp_path_factory.mktemp("images")
    with build.busybox_image("busybox:latest") as img:
        bb = build.write_oci_layout(str(images / "busybox.tar"), img)
    with build.web_image("web:1") as img:
        web = build.write_oci_layout(str(images / "web.tar"), img)
    with two_nodes(tmp_path_factory, [bb, web], dual_stack=True) as (_lan, server, agent):
        yield server, agent


def client_pod(s: Server, name: str, node: str, script: str, labels: dict[str, str] | None = None,
               namespace: str = "default") -> str:
    """A busybox pod on `node`, run to completion; its log."""
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": name, "namespace": namespace, "labels": labels or {}}, "spec": {
        "restartPolicy": "Never", "nodeSelector": {"kubernetes.io/hostname": node},
        "containers": [{"name": "c", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                        "command": ["sh", "-c", script]}]}}
    s.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def done():
        phase = s.kjson("get", "pod", name, "-n", namespace)["status"].get("phase")
        return phase if phase in ("Succeeded", "Failed") else None
    assert wait_for(done, 90) == "Succeeded", s.kubectl("describe", "pod", name, "-n", namespace).stdout + \
        s.kubectl("logs", name, "-n", namespace, check=False).stdout
    events = s.kjson("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")["items"]
    assert not [e for e in events if e["type"] == "Warning"], events
    out = s.kubectl("logs", name, "-n", namespace).stdout
    s.kubectl("delete", "pod", name, "-n", namespace, "--wait=false")
    return out


def _get(target: str) -> str:
    # busybox nc; an IPv6 address goes as it is.
    return f"printf 'GET /host HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {target} | tail -1"


def test_nodes_are_dual_stack_with_a_pod_cidr_of_each_family(cluster):
    s, agent = cluster
    for node_name, ns in ((SERVER_NODE, s.ns), (AGENT_NODE, agent.ns)):
        node = s.kjson("get", "node", node_name)
        internal = [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
        assert internal == [ns.node_ip, ns.node_ip6], node["status"]["addresses"]
        cidrs = node["spec"]["podCIDRs"]
        assert [ipaddress.ip_network(c).version for c in cidrs] == [4, 6], cidrs
        assert node["spec"]["podCIDR"] == cidrs[0]
    # The agent's kubelet is reached for logs through its own address (the API server dials it),
    # and its pods reach the API server through the `kubernetes` Service.
    out = client_pod(s, "hello", AGENT_NODE, "echo hello from $(hostname); "
                     "nc -w 3 kubernetes.default.svc.cluster.local 443 </dev/null && echo api reachable")
    assert out.split("\n")[:2] == ["hello from hello", "api reachable"], out


def test_pods_and_services_across_nodes_over_ipv4_and_ipv6(cluster):
    s, agent = cluster
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {
        "replicas": 2, "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
            "nodeSelector": {"kubernetes.io/hostname": SERVER_NODE},
            "containers": [{"name": "web", "image": "web:1", "command": WHOAMI, "ports": [{"containerPort": 8080}],
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080},
                                               "periodSeconds": 1}}]}}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"],
        "type": "NodePort", "ports": [{"port": 80, "targetPort": 8080}]}}
    s.kubectl("apply", "-f", "-", input=json.dumps(deployment))
    s.kubectl("apply", "-f", "-", input=json.dumps(service))
    s.kubectl("rollout", "status", "deployment/web", "--timeout=90s")
    pods = s.kjson("get", "pods", "-l", "app=web")["items"]
    names = {p["metadata"]["name"] for p in pods}
    for p in pods:
        assert p["spec"]["nodeName"] == SERVER_NODE
        assert [ipaddress.ip_address(i["ip"]).version for i in p["status"]["podIPs"]] == [4, 6], p["status"]
        assert [i["ip"] for i in p["status"]["hostIPs"]] == [s.ns.node_ip, s.ns.node_ip6]
    svc = s.kjson("get", "svc", "web")
    v4, v6 = svc["spec"]["clusterIPs"]
    assert ipaddress.ip_address(v4) in ipaddress.ip_network("10.43.0.0/16")
    assert ipaddress.ip_address(v6) in ipaddress.ip_network("fd43::/112")
    slices = s.kjson("get", "endpointslices", "-l", "kubernetes.io/service-name=web")["items"]
    assert sorted(sl["addressType"] for sl in slices) == ["IPv4", "IPv6"]
    # From a pod on the agent: each server pod directly on both families (host-gw routes between
    # the nodes), the Service's two ClusterIPs, and the Service by name through the cluster DNS.
    direct = " ; ".join(_get(f"{i['ip']} 8080") for p in pods for i in p["status"]["podIPs"])
    via_svc = " ; ".join([_get(f"{v4} 80")] * 10 + [_get(f"{v6} 80")] * 10)
    out = client_pod(s, "client", AGENT_NODE, f"{direct} ; echo ---; {via_svc} ; echo ---; "
                     f"nslookup web.default.svc.cluster.local; nslookup -type=aaaa web.default.svc.cluster.local; "
                     f"echo ---; {_get('web 80')}")
    direct_out, svc_out, dns_out, by_name = out.split("---\n")
    assert sorted(direct_out.split()) == sorted(n for n in names for _ in (4, 6)), out
    assert set(svc_out.split()) == names, out  # both replicas answer through the ClusterIPs
    assert len(svc_out.split()) == 20, out
    assert f"Address: {v4}" in dns_out and f"Address: {v6}" in dns_out, dns_out
    assert by_name.strip() in names, out
    # The NodePort answers on the agent's own addresses although no pod of the Service runs there.
    node_port = svc["spec"]["ports"][0]["nodePort"]
    for host in (agent.ns.node_ip, agent.ns.node_ip6):
        got = wait_for(lambda h=host: try_get(h, node_port, "/host"), 20)
        assert got.split(b"\r\n\r\n", 1)[1].strip().decode() in names, got


def test_network_policy_is_enforced_across_nodes(cluster):
    s, _agent = cluster
    pods = s.kjson("get", "pods", "-l", "app=web")["items"]
    target = pods[0]["status"]["podIP"]
    # The docs' recipe: only pods labelled access=true may reach the web pods.
    policy = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "web-access"},
              "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"access": "true"}}}]}]}}
    s.kubectl("apply", "-f", "-", input=json.dumps(policy))
    try:
        script = f"sleep 1; {_get(f'{target} 8080')}; echo done"
        denied = client_pod(s, "denied", AGENT_NODE, script)
        assert "timed out" in denied and not set(denied.split()) & {p["metadata"]["name"] for p in pods}, denied
        allowed = client_pod(s, "allowed", AGENT_NODE, script, labels={"access": "true"})
        assert allowed.split()[-1] == "done" and allowed.split()[0] in {p["metadata"]["name"] for p in pods}, allowed
    finally:
        s.kubectl("delete", "networkpolicy", "web-access")



def _reaches(s: Server, name: str, targets: list[str], **kw) -> dict[str, bool]:
    """From a client pod on the agent: which of the web pod addresses answer on 8080."""
    script = "sleep 1; " + "; ".join(f"echo {t} $({_get(f'{t} 8080')})" for t in targets)
    out = client_pod(s, name, AGENT_NODE, script, **kw)
    got = {line.split()[0]: len(line.split()) > 1 for line in out.splitlines() if line.split()}
    return {t: got.get(t, False) for t in targets}


def test_the_docs_policy_recipes_default_deny_and_allow_from_a_namespace(cluster):
    s, _agent = cluster
    target = s.kjson("get", "pods", "-l", "app=web")["items"][0]["status"]["podIP"]
    s.kubectl("create", "namespace", "ops")
    s.kubectl("label", "namespace", "ops", "team=ops")
    s.kubectl("create", "namespace", "dev")
    # The docs' default-deny-ingress, as it is.
    s.kubectl("apply", "-f", "-", input="""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-ingress
spec:
  podSelector: {}
  policyTypes:
  - Ingress
""")
    try:
        assert _reaches(s, "deny-default", [target]) == {target: False}
        assert _reaches(s, "deny-ops", [target], namespace="ops") == {target: False}
        # Allow from every pod of the namespaces labelled team=ops.
        s.kubectl("apply", "-f", "-", input="""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-from-ops
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          team: ops
    ports:
    - protocol: TCP
      port: 8080
""")
        assert _reaches(s, "allow-ops", [target], namespace="ops") == {target: True}
        assert _reaches(s, "still-deny-dev", [target], namespace="dev") == {target: False}
        assert _reaches(s, "still-deny-default", [target]) == {target: False}
        # Deleting the deny-all leaves web-from-ops isolating the web pods: still only ops gets in.
        s.kubectl("delete", "networkpolicy", "default-deny-ingress")
        assert _reaches(s, "deny-dev-by-web-from-ops", [target], namespace="dev") == {target: False}
    finally:
        s.kubectl("delete", "networkpolicy", "--all")
        s.kubectl("delete", "namespace", "ops", "dev", "--wait=false")
    assert _reaches(s, "open-again", [target]) == {target: True}


def test_egress_to_an_ip_block_with_an_exception(cluster):
    s, _agent = cluster
    a, b = sorted(p["status"]["podIP"] for p in s.kjson("get", "pods", "-l", "app=web")["items"])
    cidr = s.kjson("get", "node", SERVER_NODE)["spec"]["podCIDRs"][0]
    # The restricted pods may open connections only to the server node's pod CIDR, less `b`.
    s.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "egress-block"},
        "spec": {"podSelector": {"matchLabels": {"role": "restricted"}}, "policyTypes": ["Egress"],
                 "egress": [{"to": [{"ipBlock": {"cidr": cidr, "except": [f"{b}/32"]}}],
                             "ports": [{"protocol": "TCP", "port": 8080}]}]}}))
    try:
        assert _reaches(s, "restricted", [a, b], labels={"role": "restricted"}) == {a: True, b: False}
        assert _reaches(s, "unrestricted", [a, b]) == {a: True, b: True}
    finally:
        s.kubectl("delete", "networkpolicy", "egress-block")
