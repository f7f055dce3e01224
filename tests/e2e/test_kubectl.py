"""The real kubectl against a real `kyb server` process."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import KUBECTL, Server, free_port, needs_kubectl, wait_for

pytestmark = needs_kubectl
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_health_and_version(server: Server):
    out = server.kubectl("get", "--raw", "/healthz").stdout
    assert out == "ok"
    assert "readyz check passed" in server.kubectl("get", "--raw", "/readyz?verbose").stdout
    v = json.loads(server.kubectl("version", "-o", "json").stdout)
    assert v["serverVersion"]["major"] == "1" and v["serverVersion"]["minor"] == "32"


def test_boot_namespaces(server: Server):
    names = server.kubectl("get", "ns", "-o", "name").stdout.split()
    for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
        assert f"namespace/{ns}" in names
    out = server.kubectl("get", "ns").stdout
    assert out.splitlines()[0].split() == ["NAME", "STATUS", "AGE"]
    assert "Active" in out


def test_api_resources(server: Server):
    out = server.kubectl("api-resources").stdout
    for word in ("deployments", "deploy", "statefulsets", "cronjobs", "horizontalpodautoscalers",
                 "endpointslices", "leases", "ingresses", "storageclasses"):
        assert word in out


def test_apply_get_edit_delete_cycle(server: Server):
    server.kubectl("create", "namespace", "shop")
    for f in ("nginx-deployment.yaml", "nginx-service.yaml", "configmap.yaml", "secret.yaml", "pod.yaml"):
        out = server.kubectl("apply", "-n", "shop", "-f", str(EXAMPLES / f)).stdout
        assert "created" in out
    # Applying the same files again changes nothing.
    for f in ("nginx-deployment.yaml", "configmap.yaml"):
        assert "unchanged" in server.kubectl("apply", "-n", "shop", "-f", str(EXAMPLES / f)).stdout
    out = server.kubectl("get", "pods,svc,cm,secrets", "-A", "-o", "wide").stdout
    assert "shop" in out and "my-service" in out and "game-demo" in out and "secret-basic-auth" in out
    pods = server.kubectl("get", "pods", "-n", "shop").stdout.splitlines()
    assert pods[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    # The process runtime has no image metadata, so an image without a command cannot start;
    # it says so in the status (and in events), as upstream shows container errors.
    assert pods[1].split()[:2] == ["nginx", "0/1"]
    assert pods[1].split()[2] in ("Pending", "ContainerCreating", "CreateContainerError"), pods[1]
    deploy = server.kjson("get", "deploy", "nginx-deployment", "-n", "shop")
    assert deploy["metadata"]["generation"] == 1
    assert deploy["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == "25%"
    svc = server.kjson("get", "svc", "my-service", "-n", "shop")
    assert svc["spec"]["clusterIP"].startswith("10.")
    sec = server.kjson("get", "secret", "secret-basic-auth", "-n", "shop")
    assert "stringData" not in sec and sec["data"]["username"] == "YWRtaW4="

    server.kubectl("label", "deploy", "nginx-deployment", "-n", "shop", "tier=web")
    server.kubectl("annotate", "deploy", "nginx-deployment", "-n", "shop", "owner=team-a")
    server.kubectl("patch", "deploy", "nginx-deployment", "-n", "shop", "-p", '{"spec":{"replicas":5}}')
    server.kubectl("patch", "deploy", "nginx-deployment", "-n", "shop", "--type=json",
                   "-p", '[{"op":"add","path":"/spec/minReadySeconds","value":2}]')
    d = server.kjson("get", "deploy", "nginx-deployment", "-n", "shop")
    assert d["metadata"]["labels"]["tier"] == "web"
    assert d["metadata"]["annotations"]["owner"] == "team-a"
    assert d["spec"]["replicas"] == 5 and d["spec"]["minReadySeconds"] == 2
    assert d["metadata"]["generation"] == 3
    # kubectl edit with an editor that rewrites the image.
    env_editor = "sed -i 's/nginx:1.14.2/nginx:1.16.1/'"
    p = subprocess.run([KUBECTL, "edit", "deploy/nginx-deployment", "-n", "shop"], capture_output=True, text=True,
                       env=dict(os.environ, KUBECONFIG=str(server.kubeconfig), KUBE_EDITOR=env_editor))
    assert p.returncode == 0, p.stderr
    d = server.kjson("get", "deploy", "nginx-deployment", "-n", "shop")
    assert d["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.16.1"
    # replace
    d["spec"]["replicas"] = 2
    d["metadata"].pop("resourceVersion")
    server.kubectl("replace", "-f", "-", input=json.dumps(d))
    assert server.kjson("get", "deploy", "nginx-deployment", "-n", "shop")["spec"]["replicas"] == 2
    server.kubectl("scale", "deploy", "nginx-deployment", "-n", "shop", "--replicas=4")
    assert server.kjson("get", "deploy", "nginx-deployment", "-n", "shop")["spec"]["replicas"] == 4
    server.kubectl("delete", "cm", "game-demo", "-n", "shop")
    assert server.kubectl("get", "cm", "game-demo", "-n", "shop", check=False).returncode != 0


def test_apply_removes_dropped_field(server: Server, tmp_path: Path):
    server.kubectl("create", "namespace", "apply-drop")
    m = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "apply-drop"},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                  "template": {"metadata": {"labels": {"app": "web"}},
                               "spec": {"containers": [{"name": "app", "image": "busybox",
                                                        "env": [{"name": "A", "value": "1"},
                                                                {"name": "B", "value": "2"}]}]}}}}
    f = tmp_path / "web.json"
    f.write_text(json.dumps(m))
    server.kubectl("apply", "-f", str(f))
    m["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "A", "value": "1"}]
    m["metadata"]["labels"] = {"x": "y"}
    f.write_text(json.dumps(m))
    assert "configured" in server.kubectl("apply", "-f", str(f)).stdout
    d = server.kjson("get", "deploy", "web", "-n", "apply-drop")
    assert d["spec"]["template"]["spec"]["containers"][0]["env"] == [{"name": "A", "value": "1"}]
    assert d["metadata"]["labels"] == {"x": "y"}
    assert "unchanged" in server.kubectl("apply", "-f", str(f)).stdout


def test_conflicting_update(server: Server):
    server.kubectl("create", "configmap", "cfl", "--from-literal=a=1")
    cm = server.kjson("get", "cm", "cfl")
    server.kubectl("patch", "cm", "cfl", "-p", '{"data":{"a":"2"}}')
    cm["data"]["a"] = "3"
    p = server.kubectl("replace", "-f", "-", input=json.dumps(cm), check=False)
    assert p.returncode != 0
    assert "the object has been modified; please apply your changes to the latest version" in p.stderr


def test_watch_sees_create_update_delete(server: Server):
    server.kubectl("create", "namespace", "watchns")
    env = dict(os.environ, KUBECONFIG=str(server.kubeconfig))
    w = subprocess.Popen([KUBECTL, "get", "deploy", "-n", "watchns", "-w", "-o", "json",
                          "--output-watch-events"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
    try:
        time.sleep(0.5)  # kubectl has to establish its watch; the events below are what we check
        server.kubectl("create", "deployment", "w1", "-n", "watchns", "--image=busybox")
        server.kubectl("scale", "deploy", "w1", "-n", "watchns", "--replicas=3")
        server.kubectl("delete", "deploy", "w1", "-n", "watchns")
        time.sleep(1.0)
    finally:
        w.terminate()
        out, err = w.communicate(timeout=10)
    dec = json.JSONDecoder()
    events, i = [], 0
    out = out.strip()
    while i < len(out):
        ev, j = dec.raw_decode(out, i)
        events.append(ev)
        i = j
        while i < len(out) and out[i].isspace():
            i += 1
    types = [e["type"] for e in events]
    assert types[0] == "ADDED" and "MODIFIED" in types and types[-1] == "DELETED", (types, err)
    assert events[0]["object"]["metadata"]["name"] == "w1"


def test_explain(server: Server):
    out = server.kubectl("explain", "deployment.spec.strategy").stdout
    assert "DeploymentStrategy" in out and "rollingUpdate" in out
    out = server.kubectl("explain", "pods.spec.containers.image").stdout
    assert "FIELD: image" in out


@pytest.mark.parametrize("manifest,needle", [
    ({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name"}},
     'metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain'),
    ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "noimage"},
      "spec": {"containers": [{"name": "c"}]}},
     "spec.containers[0].image: Required value"),
    ({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "strrep"},
      "spec": {"replicas": "three", "selector": {"matchLabels": {"a": "b"}},
               "template": {"metadata": {"labels": {"a": "b"}},
                            "spec": {"containers": [{"name": "c", "image": "x"}]}}}},
     "replicas"),
    ({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unk"}, "data": {}, "bogus": 1},
     'unknown field "bogus"'),
])
def test_invalid_manifests_rejected(server: Server, manifest, needle):
    p = server.kubectl("apply", "--validate=strict", "-f", "-", input=json.dumps(manifest), check=False)
    assert p.returncode != 0
    assert needle in p.stderr, p.stderr


def test_delete_namespace_removes_contents(server: Server):
    server.kubectl("create", "namespace", "doomed")
    server.kubectl("create", "configmap", "c1", "-n", "doomed", "--from-literal=a=b")
    server.kubectl("create", "deployment", "d1", "-n", "doomed", "--image=busybox")
    server.kubectl("create", "secret", "generic", "s1", "-n", "doomed", "--from-literal=a=b")
    server.kubectl("delete", "namespace", "doomed", "--wait=true", "--timeout=30s")
    p = server.kubectl("get", "namespace", "doomed", check=False)
    assert p.returncode != 0 and "NotFound" in p.stderr
    # Re-creating the namespace finds it empty.
    server.kubectl("create", "namespace", "doomed")
    assert server.kubectl("get", "all,cm,secrets", "-n", "doomed", "-o", "name").stdout.count("configmap/c1") == 0


def test_create_in_missing_namespace(server: Server):
    p = server.kubectl("create", "configmap", "x", "-n", "nope", "--from-literal=a=b", check=False)
    assert p.returncode != 0 and 'namespaces "nope" not found' in p.stderr


def test_restart_keeps_objects_and_is_fast(tmp_path: Path):
    s = Server(tmp_path, free_port())
    first = s.start()
    try:
        s.kubectl("create", "configmap", "keep", "--from-literal=a=b")
        rv = s.kjson("get", "cm", "keep")["metadata"]["resourceVersion"]
    finally:
        assert s.stop() == 0
    second = s.start()
    try:
        assert second < 2.0, f"restart took {second:.2f}s"
        cm = s.kjson("get", "cm", "keep")
        assert cm["data"] == {"a": "b"} and cm["metadata"]["resourceVersion"] == rv
    finally:
        s.stop()
    assert first < 10


def test_kill_9_loses_nothing_acknowledged(tmp_path: Path):
    s = Server(tmp_path, free_port())
    s.start()
    import signal
    acked = []
    for i in range(20):
        s.kubectl("create", "configmap", f"k{i}", "--from-literal=i=%d" % i)
        acked.append(f"k{i}")
    s.stop(signal.SIGKILL)
    s.start()
    try:
        names = set(s.kubectl("get", "cm", "-o", "name").stdout.split())
        assert {f"configmap/{n}" for n in acked} <= names
    finally:
        s.stop()


def test_wait_for(server: Server):
    # a smoke check of the polling helper against the live server
    assert wait_for(lambda: server.kubectl("get", "ns", "default", check=False).returncode == 0)


def test_watch_table_output(server: Server):
    server.kubectl("create", "namespace", "watchtable")
    env = dict(os.environ, KUBECONFIG=str(server.kubeconfig))
    w = subprocess.Popen([KUBECTL, "get", "cm", "-n", "watchtable", "-w"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        server.kubectl("create", "configmap", "t1", "-n", "watchtable", "--from-literal=a=b")
        server.kubectl("create", "configmap", "t2", "-n", "watchtable", "--from-literal=a=b")
        lines: list[str] = []
        assert w.stdout is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(ln.startswith("t2") for ln in lines):
            lines.append(w.stdout.readline())
    finally:
        w.terminate()
        w.communicate(timeout=10)
    assert lines[0].split() == ["NAME", "DATA", "AGE"], lines
    assert any(ln.split()[:2] == ["t1", "1"] for ln in lines) and any(ln.startswith("t2") for ln in lines)


def test_delete_cascade_modes(server: Server):
    server.kubectl("create", "namespace", "cascade")
    for mode in ("background", "orphan", "foreground"):
        server.kubectl("create", "deployment", f"own-{mode}", "-n", "cascade", "--image=busybox")
        owner = server.kjson("get", "deploy", f"own-{mode}", "-n", "cascade")
        dep = {"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": f"dep-{mode}", "namespace": "cascade",
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                                 "name": f"own-{mode}", "uid": owner["metadata"]["uid"],
                                                 "blockOwnerDeletion": True}]}}
        server.kubectl("apply", "-f", "-", input=json.dumps(dep))
        server.kubectl("delete", "deploy", f"own-{mode}", "-n", "cascade", f"--cascade={mode}", "--timeout=30s")
        gone = server.kubectl("get", "deploy", f"own-{mode}", "-n", "cascade", check=False)
        assert gone.returncode != 0
    # Orphaned dependents stay, without the reference; the others are collected.
    orphan = server.kjson("get", "cm", "dep-orphan", "-n", "cascade")
    assert not orphan["metadata"].get("ownerReferences")
    for mode in ("background", "foreground"):
        wait_for(lambda mode=mode: server.kubectl("get", "cm", f"dep-{mode}", "-n", "cascade",
                                                  check=False).returncode != 0)


def test_server_side_apply(server: Server, tmp_path: Path):
    server.kubectl("create", "namespace", "ssa")
    m = {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "ssa-web", "namespace": "ssa", "labels": {"keep": "1", "drop": "1"}},
         "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "ssa-web"}},
                  "template": {"metadata": {"labels": {"app": "ssa-web"}},
                               "spec": {"containers": [{"name": "app", "image": "busybox"}]}}}}
    f = tmp_path / "ssa.json"
    f.write_text(json.dumps(m))
    assert "serverside-applied" in server.kubectl("apply", "--server-side", "-f", str(f)).stdout
    d = server.kjson("get", "deploy", "ssa-web", "-n", "ssa", "--show-managed-fields")
    managers = {e["manager"]: e for e in d["metadata"]["managedFields"]}
    assert managers["kubectl"]["operation"] == "Apply"
    assert "f:replicas" in managers["kubectl"]["fieldsV1"]["f:spec"]
    # Dropping a field from the configuration removes it.
    del m["metadata"]["labels"]["drop"]
    f.write_text(json.dumps(m))
    server.kubectl("apply", "--server-side", "-f", str(f))
    assert server.kjson("get", "deploy", "ssa-web", "-n", "ssa")["metadata"]["labels"] == {"keep": "1"}
    # Another manager takes replicas; applying a different value conflicts until forced.
    server.kubectl("patch", "deploy", "ssa-web", "-n", "ssa", "-p", '{"spec":{"replicas":5}}')
    p = server.kubectl("apply", "--server-side", "-f", str(f), check=False)
    assert p.returncode != 0 and "conflict" in p.stderr and ".spec.replicas" in p.stderr, p.stderr
    server.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(f))
    assert server.kjson("get", "deploy", "ssa-web", "-n", "ssa")["spec"]["replicas"] == 3
