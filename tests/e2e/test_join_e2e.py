"""A node joins a `kyb server` from its URL and join string alone (TLS bootstrap), driven by the real kubectl.

The agent pins the CA from the join string, gets its client certificate through a
CertificateSigningRequest the controller manager approves and signs, then a serving
certificate the API server checks when it proxies `kubectl logs` and `exec` to it.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kybernetes.api.certificates import make_request

from .conftest import KUBECTL, Server, needs_kubectl, wait_for

pytestmark = [needs_kubectl, pytest.mark.skipif(os.geteuid() != 0, reason="the process runtime isolates as root")]

NODE = "join-1"


def _agent(server: Server, data: Path, *extra: str, log: Path | None = None, run: bool = False):
    cmd = [sys.executable, "-m", "kybernetes.cli.main", "agent", "--server", f"https://127.0.0.1:{server.port}",
           "--data-dir", str(data), "--kubelet-port", "0", "--disable", "ingress", "--name", NODE, *extra]
    if run:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    f = open(log, "ab")  # noqa: SIM115 - the agent process owns it
    return subprocess.Popen(cmd, stdout=f, stderr=f)


def _ready(server: Server) -> bool:
    p = server.kubectl("get", "node", NODE, "-o", "json", check=False)
    if p.returncode != 0:
        return False
    conds = json.loads(p.stdout)["status"].get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def _csr_rows(server: Server) -> dict[str, list[str]]:
    out = server.kubectl("get", "csr").stdout.splitlines()
    assert out[0].split() == ["NAME", "AGE", "SIGNERNAME", "REQUESTOR", "REQUESTEDDURATION", "CONDITION"], out[0]
    return {ln.split()[0]: ln.split() for ln in out[1:]}


def _stop(agent: subprocess.Popen) -> None:
    if agent.poll() is None:
        agent.send_signal(signal.SIGINT)
        try:
            agent.wait(15)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()


def test_agent_joins_with_url_and_join_string(server: Server, tmp_path: Path):
    join = (server.data_dir / "pki" / "join.token").read_text().strip()
    pin, _, token = join.partition("::")
    assert pin.startswith("K10") and len(pin) == 67
    data = tmp_path / "agent"
    # A token the server does not know: the CA checks out, authentication does not.
    bad = _agent(server, data, "--token", pin + "::abcdef.0123456789abcdef", run=True)
    assert bad.returncode != 0 and "Unauthorized" in bad.stderr, bad.stderr
    # A pin of another CA: refused before the token is sent.
    bad = _agent(server, data, "--token", "K10" + "0" * 64 + "::" + token, run=True)
    assert bad.returncode != 0 and "does not match the pinned hash" in bad.stderr, bad.stderr
    # kubeadm's spelling: the bare token and the CA hash apart.
    ca_hash = "sha256:" + pin[3:]
    agent = _agent(server, data, "--token", token, "--ca-cert-hash", ca_hash, log=tmp_path / "agent.log")
    try:
        wait_for(lambda: _ready(server), timeout=30)
        cfg = yaml.safe_load((data / "kubeconfig").read_text())
        assert cfg["clusters"][0]["cluster"]["server"] == f"https://127.0.0.1:{server.port}"

        # Both of the node's requests, approved and issued: its client certificate (asked for
        # with the bootstrap token) and its kubelet serving certificate (asked for as the node).
        def issued() -> dict[str, list[str]] | None:
            rows = [r for r in _csr_rows(server).values() if r[3] in (f"system:bootstrap:{token[:6]}",
                                                                     f"system:node:{NODE}")]
            return {r[2]: r for r in rows} if len(rows) == 2 and all(r[5] == "Approved,Issued" for r in rows) \
                else None
        by_signer = wait_for(issued, timeout=30)
        assert by_signer["kubernetes.io/kube-apiserver-client-kubelet"][3] == f"system:bootstrap:{token[:6]}"
        assert by_signer["kubernetes.io/kubelet-serving"][3] == f"system:node:{NODE}"

        # logs and exec go through the API server to the agent's kubelet, whose certificate it checks.
        server.kubectl("run", "joined", "--image=busybox", "--restart=Never",
                       "--overrides", json.dumps({"spec": {"nodeName": NODE}}), "--command", "--",
                       "sh", "-c", "echo hello from the agent; trap 'exit 0' TERM; while true; do sleep 0.2; done")
        server.kubectl("wait", "--for=condition=Ready", "pod/joined", "--timeout=60s")
        assert wait_for(lambda: server.kubectl("logs", "joined", check=False).stdout == "hello from the agent\n",
                        timeout=20)
        assert server.kubectl("exec", "joined", "--", "echo", "exec ok").stdout == "exec ok\n"

        # A restart reuses what the node was issued: no token, no new requests.
        _stop(agent)
        before = len(_csr_rows(server))
        agent = _agent(server, data, log=tmp_path / "agent.log")
        wait_for(lambda: b"reusing the node's credentials" in (tmp_path / "agent.log").read_bytes(), timeout=20)
        assert wait_for(lambda: server.kubectl("exec", "joined", "--", "echo", "again",
                                               check=False).stdout == "again\n", timeout=30)
        assert len(_csr_rows(server)) == before
        server.kubectl("delete", "pod", "joined", "--timeout=30s")
    finally:
        _stop(agent)
        subprocess.run([sys.executable, "-m", "kybernetes.cli.main", "killall", "--data-dir", str(data)],
                       capture_output=True, timeout=60, check=False)
        server.kubectl("delete", "node", NODE, check=False)
        server.kubectl("delete", "pod", "joined", "--force", "--grace-period=0", check=False)


def test_kubectl_certificate_approve_and_deny(server: Server, tmp_path: Path):
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "alice.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    request = base64.b64encode(make_request(key, "alice", ["dev"])).decode()
    for name in ("alice", "mallory"):
        server.kubectl("create", "-f", "-", input=json.dumps({
            "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"name": name},
            "spec": {"request": request, "signerName": "kubernetes.io/kube-apiserver-client",
                     "expirationSeconds": 86400, "usages": ["client auth"]}}))
    rows = _csr_rows(server)
    assert rows["alice"][2:] == ["kubernetes.io/kube-apiserver-client", "kubernetes-admin", "24h", "Pending"]
    assert "approved" in server.kubectl("certificate", "approve", "alice").stdout
    assert "denied" in server.kubectl("certificate", "deny", "mallory").stdout
    wait_for(lambda: _csr_rows(server)["alice"][5] == "Approved,Issued", timeout=20)
    assert _csr_rows(server)["mallory"][5] == "Denied"
    cert = server.kjson("get", "csr", "alice")["status"]["certificate"]
    (tmp_path / "alice.crt").write_bytes(base64.b64decode(cert))
    kc = yaml.safe_load(server.kubeconfig.read_text())
    kc["users"] = [{"name": "alice", "user": {"client-certificate": str(tmp_path / "alice.crt"),
                                              "client-key": str(tmp_path / "alice.key")}}]
    kc["contexts"][0]["context"]["user"] = "alice"
    (tmp_path / "alice.kubeconfig").write_text(yaml.safe_dump(kc))
    env = dict(os.environ, KUBECONFIG=str(tmp_path / "alice.kubeconfig"))
    who = subprocess.run([KUBECTL, "auth", "whoami", "-o", "json"], capture_output=True, text=True, env=env,
                         timeout=30, check=True)
    info = json.loads(who.stdout)["status"]["userInfo"]
    assert info["username"] == "alice" and "dev" in info["groups"]
    server.kubectl("delete", "csr", "alice", "mallory")
