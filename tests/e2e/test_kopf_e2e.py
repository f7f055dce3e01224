"""An operator written with kopf, run unchanged against `kyb server`.

kopf watches with resourceVersions and bookmarks, keeps its progress in
annotations through merge patches, adds and removes its finalizer, and posts
events: a compact check that an operator framework gets the semantics it expects.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import Server, needs_kubectl, wait_for

kopf = pytest.importorskip("kopf")
pytestmark = [needs_kubectl]

OPERATOR = textwrap.dedent('''
    import kopf

    @kopf.on.startup()
    def configure(settings: kopf.OperatorSettings, **_):
        settings.posting.level = 0

    @kopf.on.create("configmaps", labels={"kopf-test": "yes"})
    def created(body, patch, **_):
        patch.metadata.annotations["kopf-test/seen"] = body.get("data", {}).get("greeting", "")
        kopf.info(body, reason="Greeted", message="hello from kopf")
        return {"handled": True}

    @kopf.on.update("configmaps", labels={"kopf-test": "yes"}, field="data.greeting")
    def updated(old, new, patch, **_):
        patch.metadata.annotations["kopf-test/updated"] = f"{old}->{new}"

    @kopf.on.delete("configmaps", labels={"kopf-test": "yes"})
    def deleted(body, **_):
        with open(body["metadata"]["annotations"]["kopf-test/marker"], "w") as f:
            f.write("deleted")
''')


def _annotations(server: Server, name: str) -> dict:
    p = server.kubectl("get", "cm", name, "-n", "kopf", "-o", "json", check=False)
    return json.loads(p.stdout)["metadata"].get("annotations") or {} if p.returncode == 0 else {}


def test_kopf_operator_handles_create_update_delete(server: Server, tmp_path: Path):
    (tmp_path / "operator.py").write_text(OPERATOR)
    server.kubectl("create", "namespace", "kopf")
    env = dict(os.environ, KUBECONFIG=str(server.kubeconfig))
    log = open(tmp_path / "kopf.log", "wb")  # noqa: SIM115 - the operator process owns it
    op = subprocess.Popen([sys.executable, "-m", "kopf", "run", "--standalone", "--namespace=kopf",
                           str(tmp_path / "operator.py")], stdout=log, stderr=log, env=env, cwd=tmp_path)
    marker = tmp_path / "deleted.txt"
    try:
        cm = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": "greeter", "namespace": "kopf", "labels": {"kopf-test": "yes"},
                           "annotations": {"kopf-test/marker": str(marker)}},
              "data": {"greeting": "hi"}}
        server.kubectl("apply", "-f", "-", input=json.dumps(cm))
        try:
            wait_for(lambda: _annotations(server, "greeter").get("kopf-test/seen") == "hi", timeout=60,
                     interval=0.5)
        except AssertionError:
            raise AssertionError((tmp_path / "kopf.log").read_text()) from None
        # Its finalizer guards the delete handler; its progress is kept in annotations.
        got = server.kjson("get", "cm", "greeter", "-n", "kopf")
        assert any("kopf" in f for f in got["metadata"].get("finalizers") or []), got["metadata"]
        assert any(k.startswith("kopf.zalando.org/") for k in got["metadata"]["annotations"]), got["metadata"]
        wait_for(lambda: any(e.get("reason") == "Greeted" for e in server.kjson(
            "get", "events", "-n", "kopf", "--field-selector", "involvedObject.name=greeter")["items"]),
            timeout=30, interval=0.5)
        server.kubectl("patch", "cm", "greeter", "-n", "kopf", "--type=merge", "-p", '{"data":{"greeting":"hello"}}')
        wait_for(lambda: _annotations(server, "greeter").get("kopf-test/updated") == "hi->hello", timeout=60,
                 interval=0.5)
        server.kubectl("delete", "cm", "greeter", "-n", "kopf", "--timeout=60s", timeout=90)
        assert marker.read_text() == "deleted"
        assert server.kubectl("get", "cm", "greeter", "-n", "kopf", check=False).returncode != 0
        # Nothing the operator met was unexpected for it.
        text = (tmp_path / "kopf.log").read_text()
        assert "Traceback" not in text and "[ERROR" not in text, text
    finally:
        op.terminate()
        try:
            op.wait(30)
        except subprocess.TimeoutExpired:
            op.kill()
        server.kubectl("delete", "namespace", "kopf", "--wait=false", check=False)
