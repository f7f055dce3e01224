"""Service accounts end to end: the real kubectl against a real `kyb server`.

`kubectl create token` gets a token that then authenticates as the service
account; a pod sees its mounted token, the cluster CA and its namespace
under /var/run/secrets/kubernetes.io/serviceaccount.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess

from .conftest import KUBECTL, needs_kubectl, wait_for

pytestmark = needs_kubectl

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def _claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _as_token(server, token: str, *args: str) -> subprocess.CompletedProcess:
    """kubectl with only a bearer token (and the cluster CA): no client certificate."""
    return subprocess.run([KUBECTL, "--server", f"https://127.0.0.1:{server.port}",
                           "--certificate-authority", str(server.data_dir / "pki" / "ca.crt"),
                           "--token", token, *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "KUBECONFIG": "/dev/null"})


def _bind_view(server, ns: str, sa: str) -> None:
    """Let the account read its namespace (the aggregated view role, once its controller filled it)."""
    server.kubectl("create", "rolebinding", f"{sa}-view", "--clusterrole=view", f"--serviceaccount={ns}:{sa}",
                   "-n", ns)
    wait_for(lambda: server.kubectl("auth", "can-i", "list", "pods", "-n", ns,
                                    f"--as=system:serviceaccount:{ns}:{sa}", check=False).stdout.strip() == "yes")


def test_create_token_authenticates(server) -> None:
    server.kubectl("create", "namespace", "sa-e2e")
    # The controllers give the new namespace its default account and root CA.
    wait_for(lambda: server.kubectl("get", "sa", "default", "-n", "sa-e2e", check=False).returncode == 0)
    cm = wait_for(lambda: server.kubectl("get", "cm", "kube-root-ca.crt", "-n", "sa-e2e", "-o", "json",
                                         check=False).stdout)
    assert json.loads(cm)["data"]["ca.crt"] == (server.data_dir / "pki" / "ca.crt").read_text()

    token = server.kubectl("create", "token", "default", "-n", "sa-e2e", "--duration", "20m").stdout.strip()
    c = _claims(token)
    assert c["sub"] == "system:serviceaccount:sa-e2e:default" and c["exp"] - c["iat"] == 1200
    # Authenticated, but allowed nothing until a role is bound (RBAC).
    p = _as_token(server, token, "get", "pods", "-n", "sa-e2e")
    assert p.returncode != 0 and 'User "system:serviceaccount:sa-e2e:default" cannot list resource "pods"' in \
        p.stderr, p.stderr
    _bind_view(server, "sa-e2e", "default")
    p = _as_token(server, token, "get", "pods", "-n", "sa-e2e")
    assert p.returncode == 0, p.stderr
    who = _as_token(server, token, "auth", "whoami", "-o", "json")
    assert who.returncode == 0, who.stderr
    assert json.loads(who.stdout)["status"]["userInfo"]["username"] == "system:serviceaccount:sa-e2e:default"
    bad = _as_token(server, token[:-6] + "AAAAAA", "get", "pods", "-n", "sa-e2e")
    assert bad.returncode != 0 and "Unauthorized" in bad.stderr
    # Deleting the account revokes its tokens.
    server.kubectl("delete", "sa", "default", "-n", "sa-e2e")
    gone = _as_token(server, token, "get", "pods", "-n", "sa-e2e")
    assert gone.returncode != 0 and "Unauthorized" in gone.stderr
    # ... and the controller brings the account back.
    wait_for(lambda: server.kubectl("get", "sa", "default", "-n", "sa-e2e", check=False).returncode == 0)


def test_pod_sees_service_account_files(server) -> None:
    server.kubectl("create", "namespace", "sa-pod")
    server.kubectl("run", "reader", "-n", "sa-pod", "--image", "busybox", "--restart", "Never", "--command",
                   "--", "sh", "-c", f"cat {SA_DIR}/namespace; echo; sleep 3600")
    pod = server.kjson("get", "pod", "reader", "-n", "sa-pod")
    vol = next(v for v in pod["spec"]["volumes"] if v["name"].startswith("kube-api-access-"))
    assert {"name": vol["name"], "mountPath": SA_DIR, "readOnly": True} in pod["spec"]["containers"][0]["volumeMounts"]
    wait_for(lambda: server.kubectl("logs", "reader", "-n", "sa-pod", check=False).stdout.strip() == "sa-pod",
             timeout=30)
    token = server.kubectl("exec", "reader", "-n", "sa-pod", "--", "cat", f"{SA_DIR}/token").stdout.strip()
    c = _claims(token)
    assert c["kubernetes.io"]["pod"]["name"] == "reader"
    assert c["kubernetes.io"]["pod"]["uid"] == pod["metadata"]["uid"]
    ca = server.kubectl("exec", "reader", "-n", "sa-pod", "--", "cat", f"{SA_DIR}/ca.crt").stdout
    assert ca == (server.data_dir / "pki" / "ca.crt").read_text()
    _bind_view(server, "sa-pod", "default")
    p = _as_token(server, token, "get", "pod", "reader", "-n", "sa-pod", "-o", "name")
    assert p.returncode == 0 and p.stdout.strip() == "pod/reader", p.stderr
    server.kubectl("delete", "pod", "reader", "-n", "sa-pod", "--grace-period", "0", "--force", check=False)


BUILD_ROBOT_SECRET = """\
apiVersion: v1
kind: Secret
metadata:
  name: build-robot-secret
  annotations:
    kubernetes.io/service-account.name: build-robot
type: kubernetes.io/service-account-token
"""


def test_long_lived_token_secret(server) -> None:
    """The docs' "Manually create a long-lived API token for a ServiceAccount", step by step."""
    server.kubectl("create", "namespace", "sa-secret")
    server.kubectl("create", "serviceaccount", "build-robot", "-n", "sa-secret")
    server.kubectl("apply", "-n", "sa-secret", "-f", "-", input=BUILD_ROBOT_SECRET)
    encoded = wait_for(lambda: server.kubectl("get", "secret", "build-robot-secret", "-n", "sa-secret", "-o",
                                              "jsonpath={.data.token}", check=False).stdout.strip())
    token = base64.b64decode(encoded).decode()
    c = _claims(token)
    assert c["iss"] == "kubernetes/serviceaccount" and "exp" not in c
    assert c["sub"] == "system:serviceaccount:sa-secret:build-robot"
    described = server.kubectl("describe", "secrets/build-robot-secret", "-n", "sa-secret").stdout
    assert "kubernetes.io/service-account-token" in described
    assert f"token:      {token}" in described and "ca.crt:" in described and "namespace:  9 bytes" in described
    who = _as_token(server, token, "auth", "whoami", "-o", "json")
    assert who.returncode == 0, who.stderr
    assert json.loads(who.stdout)["status"]["userInfo"]["username"] == "system:serviceaccount:sa-secret:build-robot"
    _bind_view(server, "sa-secret", "build-robot")
    p = _as_token(server, token, "get", "pods", "-n", "sa-secret")
    assert p.returncode == 0, p.stderr
    # Deleting the account deletes its token Secret and revokes the token.
    server.kubectl("delete", "sa", "build-robot", "-n", "sa-secret")
    gone = _as_token(server, token, "get", "pods", "-n", "sa-secret")
    assert gone.returncode != 0 and "Unauthorized" in gone.stderr
    wait_for(lambda: server.kubectl("get", "secret", "build-robot-secret", "-n", "sa-secret",
                                    check=False).returncode != 0)
