"""kubectl auth whoami and can-i, and impersonation (--as), as the server's authorizer answers them (the admin is in system:masters)."""

from __future__ import annotations

import json

from .conftest import Server, needs_kubectl

pytestmark = [needs_kubectl]


def test_auth_can_i_and_list(server: Server):
    p = server.kubectl("auth", "can-i", "create", "pods", "-n", "default")
    assert p.stdout.strip() == "yes", p.stdout + p.stderr
    p = server.kubectl("auth", "can-i", "get", "/healthz")
    assert p.stdout.strip() == "yes", p.stdout + p.stderr
    out = server.kubectl("auth", "can-i", "--list", "-n", "default").stdout.splitlines()
    assert out[0].split()[:4] == ["Resources", "Non-Resource", "URLs", "Resource"], out
    assert any(line.split()[:1] == ["*.*"] and "[*]" in line for line in out[1:]), out


def test_impersonation(server: Server):
    out = server.kubectl("auth", "whoami", "--as=alice", "--as-group=devs", "-o", "json").stdout
    info = json.loads(out)["status"]["userInfo"]
    assert info["username"] == "alice" and info["groups"] == ["devs", "system:authenticated"], info
    out = server.kubectl("auth", "whoami", "--as=system:serviceaccount:default:default", "-o", "json").stdout
    info = json.loads(out)["status"]["userInfo"]
    assert info["groups"] == ["system:serviceaccounts", "system:serviceaccounts:default",
                              "system:authenticated"], info
    # A group without a user is refused, as upstream.
    p = server.kubectl("get", "pods", "--as-group=devs", check=False)
    assert p.returncode != 0 and "without impersonating a user" in p.stderr, p.stderr
