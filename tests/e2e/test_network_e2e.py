"""The pod network, Services and cluster DNS through the real kubectl.

The whole node runs in a network namespace the test creates (as kind runs nodes in
containers), on a LAN of the test's own (nodenet.py): `kyb server` there gives every pod its
own network namespace and an address from the node's pod CIDR, runs the nftables
service proxy and the cluster DNS. The node namespace has no default route, so nothing
a pod does can leave it; the test talks only to the node's address on that veth.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from kybernetes.images import build

from .conftest import KUBECTL, Server, free_port, needs_kubectl, wait_for
from .nodenet import KYB, NamespacedServer, NodeLan, capable, try_get


_OK, _WHY = capable()
pytestmark = [needs_kubectl, pytest.mark.skipif(not _OK, reason=_WHY)]

# A deployment whose pods say who they are: three replicas all bind 8080, each in its own netns.
WHOAMI = ["sh", "-c", "hostname > /www/host; exec httpd -f -p 8080 -h /www"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    lan = NodeLan()
    ns = lan.add_node()
    data = tmp_path_factory.mktemp("kyb-net")
    images = tmp_path_factory.mktemp("images")
    try:
        with build.busybox_image("busybox:latest") as img:
            bb = build.write_oci_layout(str(images / "busybox.tar"), img)
        with build.web_image("web:1") as img:
            web = build.write_oci_layout(str(images / "web.tar"), img)
        # A stand-in under the docs' image name (busybox httpd on port 80): no registry is reachable.
        with build.web_image("nginx:1.14.2", port=80) as img:
            nginx = build.write_docker_archive(str(images / "nginx.tar"), img)
        p = subprocess.run([*KYB, "image", "import", "--data-dir", str(data), bb, web, nginx], capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        s = NamespacedServer(data, free_port(), ns)
        s.start()
        yield s
        s.stop()
    finally:
        lan.delete()


def client_pod(server: Server, name: str, script: str) -> str:
    """Run a busybox pod to completion; its log."""
    server.kubectl("run", name, "--image=busybox", "--image-pull-policy=IfNotPresent", "--restart=Never", "--",
                   "sh", "-c", script)

    def done():
        phase = server.kjson("get", "pod", name)["status"].get("phase")
        return phase if phase in ("Succeeded", "Failed") else None
    assert wait_for(done, 60) == "Succeeded", server.kubectl("describe", "pod", name).stdout
    out = server.kubectl("logs", name).stdout
    server.kubectl("delete", "pod", name, "--wait=false")
    return out


def test_pods_get_addresses_and_services_carry_traffic(cluster: NamespacedServer):
    s = cluster
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {
        "replicas": 3, "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{
            "name": "web", "image": "web:1", "command": WHOAMI, "ports": [{"containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1}}]}}}}
    s.kubectl("apply", "-f", "-", input=json.dumps(deployment))
    s.kubectl("expose", "deployment", "web", "--port=80", "--target-port=8080")
    s.kubectl("rollout", "status", "deployment/web", "--timeout=90s")
    pods = s.kjson("get", "pods", "-l", "app=web")["items"]
    ips = sorted(p["status"]["podIP"] for p in pods)
    # Three replicas bound the same port: each has its own network and address from the node's CIDR.
    node = s.kjson("get", "node")["items"][0]
    cidr = node["spec"]["podCIDR"]
    assert len(set(ips)) == 3 and all(ip.startswith(cidr.rsplit(".", 1)[0] + ".") for ip in ips), (ips, cidr)
    assert all(p["status"]["hostIP"] == s.ns.node_ip for p in pods)
    slices = s.kjson("get", "endpointslices", "-l", "kubernetes.io/service-name=web")["items"]
    assert sorted(a for sl in slices for e in sl["endpoints"] for a in e["addresses"]) == ips
    # From a pod: the Service by name (cluster DNS) and its ClusterIP, spread over the replicas.
    svc_ip = s.kjson("get", "svc", "web")["spec"]["clusterIP"]
    out = client_pod(s, "client", "cat /etc/resolv.conf; nslookup web.default.svc.cluster.local; "
                     "for i in $(seq 30); do printf 'GET /host HTTP/1.0\\r\\n\\r\\n' | nc -w 3 web 80 | tail -1; done")
    assert "nameserver " + s.kjson("get", "svc", "kube-dns", "-n", "kube-system")["spec"]["clusterIP"] in out
    assert "search default.svc.cluster.local svc.cluster.local cluster.local" in out and "ndots:5" in out
    assert f"Address: {svc_ip}" in out, out
    names = {p["metadata"]["name"] for p in pods}
    served = {line.strip() for line in out.splitlines() if line.strip() in names}
    assert served == names, out
    # NodePort and LoadBalancer (the node's address, as k3s's servicelb gives) from outside the pods.
    s.kubectl("expose", "deployment", "web", "--name=web-np", "--type=NodePort", "--port=80", "--target-port=8080")
    node_port = s.kjson("get", "svc", "web-np")["spec"]["ports"][0]["nodePort"]
    assert b"hello from kybernetes" in wait_for(lambda: try_get(s.ns.node_ip, node_port), 20)
    lb_port = free_port()
    s.kubectl("expose", "deployment", "web", "--name=web-lb", "--type=LoadBalancer", f"--port={lb_port}",
              "--target-port=8080")
    ingress = wait_for(lambda: s.kjson("get", "svc", "web-lb")["status"].get("loadBalancer", {}).get("ingress"), 20)
    assert ingress[0]["ip"] == s.ns.node_ip
    assert b"hello from kybernetes" in wait_for(lambda: try_get(s.ns.node_ip, lb_port), 20)
    # port-forward dials into the pod's own network namespace.
    env = dict(os.environ, KUBECONFIG=str(s.kubeconfig))
    local = free_port()
    pf = subprocess.Popen([KUBECTL, "port-forward", f"pod/{pods[0]['metadata']['name']}", f"{local}:8080"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        got = wait_for(lambda: try_get("127.0.0.1", local, "/host"), 20)
        assert pods[0]["metadata"]["name"].encode() in got
    finally:
        pf.send_signal(signal.SIGINT)
        pf.wait(10)


def test_unready_pod_leaves_the_endpoints(cluster: NamespacedServer):
    s = cluster
    pods = s.kjson("get", "pods", "-l", "app=web")["items"]
    victim = pods[0]["metadata"]["name"]
    # Its readiness probe reads /healthz: take it away and the pod leaves the Service.
    s.kubectl("exec", victim, "--", "rm", "/www/healthz")
    victim_ip = pods[0]["status"]["podIP"]

    def gone():
        slices = s.kjson("get", "endpointslices", "-l", "kubernetes.io/service-name=web")["items"]
        ready = [a for sl in slices for e in sl["endpoints"] if (e.get("conditions") or {}).get("ready")
                 for a in e["addresses"]]
        return victim_ip not in ready and len(ready) == 2
    wait_for(gone, 30)
    out = client_pod(s, "client2", "for i in $(seq 20); do printf 'GET /host HTTP/1.0\\r\\n\\r\\n' | "
                     "nc -w 3 web 80 | tail -1; done")
    assert victim not in out, out


def test_dns_records_and_host_network(cluster: NamespacedServer):
    s = cluster
    s.kubectl("create", "service", "externalname", "db", "--external-name=db.example.internal")
    out = client_pod(s, "dig", "nslookup -type=cname db.default.svc.cluster.local; "
                     "nslookup kubernetes.default.svc.cluster.local")
    assert "db.example.internal" in out, out
    assert "Address: " + s.kjson("get", "svc", "kubernetes")["spec"]["clusterIP"] in out, out
    # A pod that mounts its own /etc/hosts keeps it: the kubelet manages only the ones it gives.
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ownhosts"}, "spec": {
        "restartPolicy": "Never", "volumes": [{"name": "h", "hostPath": {"path": "/etc/hosts", "type": "File"}}],
        "containers": [{"name": "c", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                        "command": ["cat", "/etc/hosts"], "volumeMounts": [{"name": "h", "mountPath": "/etc/hosts"}]}]}}
    s.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    wait_for(lambda: s.kjson("get", "pod", "ownhosts")["status"].get("phase") == "Succeeded", 60)
    assert s.kubectl("logs", "ownhosts").stdout == Path("/etc/hosts").read_text()
    # A hostNetwork pod stays on the node's network and address.
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "onhost"}, "spec": {
        "hostNetwork": True, "restartPolicy": "Never", "containers": [{
            "name": "c", "image": "busybox", "imagePullPolicy": "IfNotPresent", "command": ["ip", "-o", "addr"]}]}}
    s.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    wait_for(lambda: s.kjson("get", "pod", "onhost")["status"].get("phase") == "Succeeded", 60)
    pod = s.kjson("get", "pod", "onhost")
    assert pod["status"]["podIP"] == s.ns.node_ip
    assert s.ns.node_ip in s.kubectl("logs", "onhost").stdout


def test_the_docs_nginx_deployment_as_it_is(cluster: NamespacedServer):
    """examples/nginx-deployment.yaml unchanged: three replicas on port 80, one Service in front."""
    s = cluster
    manifest = Path(__file__).resolve().parents[2] / "examples" / "nginx-deployment.yaml"
    s.kubectl("apply", "-f", str(manifest))
    s.kubectl("rollout", "status", "deployment/nginx-deployment", "--timeout=90s")
    pods = s.kjson("get", "pods", "-l", "app=nginx")["items"]
    assert len({p["status"]["podIP"] for p in pods}) == 3
    s.kubectl("expose", "deployment", "nginx-deployment", "--name=nginx", "--port=80")
    out = client_pod(s, "nginx-client", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 nginx 80")
    assert "hello from kybernetes" in out, out
