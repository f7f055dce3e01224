"""Every kubectl version installed beside the default one (1.27-1.33 here) works as it is."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import KUBECTL, Server

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _versions() -> list[Path]:
    if not KUBECTL:
        return []
    d = Path(os.path.realpath(KUBECTL)).parent
    found = [p for p in d.glob("kubectl.1.*") if re.fullmatch(r"kubectl\.1\.\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.rsplit(".", 1)[1]))


VERSIONS = _versions()


@pytest.mark.skipif(not VERSIONS, reason="no versioned kubectl binaries installed")
@pytest.mark.parametrize("binary", VERSIONS, ids=[p.name for p in VERSIONS])
def test_kubectl_version_works(server: Server, binary: Path):
    env = dict(os.environ, KUBECONFIG=str(server.kubeconfig))

    def k(*args: str, input: str | None = None) -> str:
        p = subprocess.run([str(binary), *args], input=input, capture_output=True, text=True, env=env,
                           timeout=60)
        assert p.returncode == 0, f"{binary.name} {' '.join(args)}: {p.stderr}"
        return p.stdout

    ns = "v" + binary.name.rsplit(".", 1)[1]
    k("create", "namespace", ns)
    k("create", "configmap", "c", "-n", ns, "--from-literal=a=b")
    k("apply", "-n", ns, "-f", str(EXAMPLES / "nginx-deployment.yaml"))
    assert "unchanged" in k("apply", "-n", ns, "-f", str(EXAMPLES / "nginx-deployment.yaml"))
    out = k("get", "deploy,cm", "-n", ns, "-o", "wide")
    assert "nginx-deployment" in out and "nginx:1.14.2" in out
    k("scale", "deploy/nginx-deployment", "-n", ns, "--replicas=1")
    d = json.loads(k("get", "deploy", "nginx-deployment", "-n", ns, "-o", "json"))
    assert d["spec"]["replicas"] == 1
    assert "rollingUpdate" in k("explain", "deployment.spec.strategy")
    k("delete", "namespace", ns, "--timeout=30s")
