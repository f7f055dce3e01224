"""Persistent storage end to end: the docs' StatefulSet "web" with volumeClaimTemplates on a real `kyb server`.

The manifest is the one from the StatefulSet basics tutorial, except that the
process runtime has no images: the container is a shell that appends its
hostname to index.html in its volume and sleeps. The claims get the default
class (local-path), wait for their first consumer, are provisioned on the
embedded node and bound; a recreated pod finds what its predecessor wrote.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .conftest import needs_kubectl, wait_for

pytestmark = needs_kubectl

MOUNT = "/usr/share/nginx/html"

WEB = f"""
apiVersion: v1
kind: Service
metadata:
  name: nginx
  labels:
    app: nginx
spec:
  ports:
  - port: 80
    name: web
  clusterIP: None
  selector:
    app: nginx
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  serviceName: "nginx"
  replicas: 2
  selector:
    matchLabels:
      app: nginx
  template:
    metadata:
      labels:
        app: nginx
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: nginx
        image: registry.k8s.io/nginx-slim:0.24
        command: ["sh", "-c", "echo $(hostname) >> {MOUNT}/index.html; exec sleep 3600"]
        ports:
        - containerPort: 80
          name: web
        volumeMounts:
        - name: www
          mountPath: {MOUNT}
  volumeClaimTemplates:
  - metadata:
      name: www
    spec:
      accessModes: [ "ReadWriteOnce" ]
      resources:
        requests:
          storage: 1Gi
"""


@pytest.fixture
def mount_point_cleanup():
    """The process runtime makes the mount point on the host: leave the host as it was."""
    created = [p for p in (Path("/usr/share/nginx"), Path(MOUNT)) if not p.exists()]
    yield
    for p in reversed(created):
        if p.is_dir() and not any(p.iterdir()):
            p.rmdir()


def _running(server, name: str) -> dict | None:
    p = server.kubectl("get", "pod", name, "-o", "json", check=False)
    if p.returncode != 0:
        return None
    pod = json.loads(p.stdout)
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])
    return pod if pod["status"].get("phase") == "Running" and ready else None


def test_statefulset_storage(server, mount_point_cleanup) -> None:
    sc = server.kjson("get", "storageclass", "local-path")
    assert sc["provisioner"] == "kybernetes.io/local-path"
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
    assert sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    out = server.kubectl("get", "storageclass").stdout
    assert "local-path (default)" in out

    server.kubectl("apply", "-f", "-", input=WEB)
    web0 = wait_for(lambda: _running(server, "web-0"), timeout=20)
    web1 = wait_for(lambda: _running(server, "web-1"), timeout=20)

    claims = {c["metadata"]["name"]: c for c in server.kjson("get", "pvc")["items"]}
    assert sorted(claims) == ["www-web-0", "www-web-1"]
    for claim in claims.values():
        assert claim["status"]["phase"] == "Bound"
        assert claim["spec"]["storageClassName"] == "local-path"
        assert claim["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] == web0["spec"]["nodeName"]
        assert claim["metadata"]["labels"] == {"app": "nginx"}
    volumes = {v["metadata"]["name"]: v for v in server.kjson("get", "pv")["items"]}
    assert len(volumes) == 2
    host = {}
    for v in volumes.values():
        assert v["status"]["phase"] == "Bound" and v["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
        host[v["spec"]["claimRef"]["name"]] = Path(v["spec"]["hostPath"]["path"])
    # The pods wrote into their own volumes, on the server's disk.
    assert host["www-web-0"].parent == server.data_dir / "storage"
    wait_for(lambda: (host["www-web-1"] / "index.html").exists())
    assert (host["www-web-1"] / "index.html").read_text() == "web-1\n"
    assert server.kubectl("exec", "web-0", "--", "cat", f"{MOUNT}/index.html").stdout == "web-0\n"

    table = server.kubectl("get", "pv,pvc").stdout
    lines = table.splitlines()
    assert any(line.split()[:1] == ["NAME"] and "CAPACITY" in line and "RECLAIM POLICY" in line for line in lines)
    for name in ("www-web-0", "www-web-1"):
        claim_line = next(line for line in lines if line.startswith(f"persistentvolumeclaim/{name} "))
        assert claim_line.split()[1:5] == ["Bound", claims[name]["spec"]["volumeName"], "1Gi", "RWO"]
        assert "local-path" in claim_line
        pv_line = next(line for line in lines
                       if line.startswith(f"persistentvolume/{claims[name]['spec']['volumeName']} "))
        assert pv_line.split()[1:7] == ["1Gi", "RWO", "Delete", "Bound", f"default/{name}", "local-path"]

    # The pod goes; its successor under the same name mounts the same volume and sees the data.
    server.kubectl("delete", "pod", "web-0", "--wait=false")
    wait_for(lambda: (p := _running(server, "web-0")) and p["metadata"]["uid"] != web0["metadata"]["uid"] and p,
             timeout=25)
    wait_for(lambda: (host["www-web-0"] / "index.html").read_text() == "web-0\nweb-0\n", timeout=10)
    assert server.kubectl("exec", "web-0", "--", "cat", f"{MOUNT}/index.html").stdout == "web-0\nweb-0\n"
    assert server.kjson("get", "pvc", "www-web-0")["metadata"]["uid"] == claims["www-web-0"]["metadata"]["uid"]
    assert web1["metadata"]["uid"] == server.kjson("get", "pod", "web-1")["metadata"]["uid"]
    assert os.path.isdir(host["www-web-1"])
