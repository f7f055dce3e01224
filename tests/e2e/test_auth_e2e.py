"""kubectl auth: whoami and can-i, as the server's authorizer (AlwaysAllow for now) answers them."""

from __future__ import annotations

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
