"""registries.yaml: parsing, endpoint order, rewrites, TLS and credentials lookup."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from kybernetes.images.registries import (
    Credential,
    Endpoint,
    TLSConfig,
    host_matches,
    is_loopback,
    load_registries,
    normalize_host,
    parse_registries,
)

K3S_EXAMPLE = """
mirrors:
  docker.io:
    endpoint:
      - "https://mirror.example.com:5000"
      - "http://127.0.0.1:5001/v2/proxy"
    rewrite:
      "^rancher/(.*)": "mirrorproject/rancher-images/$1"
  registry.example.com:
    endpoint:
      - "https://registry.example.com"
  "*":
    endpoint:
      - "https://catchall.example.com"
configs:
  mirror.example.com:5000:
    auth:
      username: xxxxxx
      password: yyyyyy
    tls:
      ca_file: /etc/ssl/ca.pem
      cert_file: /etc/ssl/client.pem
      key_file: /etc/ssl/client-key.pem
  registry.example.com:
    auth:
      auth: %s
    tls:
      insecure_skip_verify: true
  docker.io:
    auth:
      identity_token: tok
""" % base64.b64encode(b"u:p:w").decode()


def urls(eps: list[Endpoint]) -> list[tuple[str, bool]]:
    return [(e.url, e.mirror) for e in eps]


def test_missing_or_no_file_is_empty(tmp_path: Path):
    for cfg in (load_registries(None), load_registries(str(tmp_path / "nope.yaml"))):
        assert urls(cfg.endpoints("docker.io")) == [("https://registry-1.docker.io/v2", False)]
        assert urls(cfg.endpoints("reg.example.com:5000")) == [("https://reg.example.com:5000/v2", False)]
        assert cfg.credentials("docker.io") is None


def test_loopback_defaults_to_http():
    cfg = load_registries(None)
    for host in ("127.0.0.1:5000", "127.1.2.3", "localhost:5000", "[::1]:5000"):
        assert cfg.endpoints(host)[0].url == f"http://{host}/v2", host
    assert is_loopback("::1") and not is_loopback("10.0.0.1:5000") and not is_loopback("example.com")


def test_k3s_example(tmp_path: Path):
    p = tmp_path / "registries.yaml"
    p.write_text(K3S_EXAMPLE)
    cfg = load_registries(str(p))
    hub = cfg.endpoints("docker.io")
    assert urls(hub) == [("https://mirror.example.com:5000/v2", True), ("http://127.0.0.1:5001/v2/proxy", True),
                         ("https://registry-1.docker.io/v2", False)]
    # Rewrites apply to mirrors, never to the default endpoint.
    assert hub[0].repository("rancher/coredns-coredns") == "mirrorproject/rancher-images/coredns-coredns"
    assert hub[0].repository("library/busybox") == "library/busybox"
    assert hub[2].repository("rancher/coredns-coredns") == "rancher/coredns-coredns"
    m = hub[0]
    assert m.host == "mirror.example.com:5000"
    assert m.tls == TLSConfig("/etc/ssl/ca.pem", "/etc/ssl/client.pem", "/etc/ssl/client-key.pem", False)
    assert m.credential is not None and (m.credential.username, m.credential.password) == ("xxxxxx", "yyyyyy")
    # docker.io's own config (keyed "docker.io") serves its default endpoint.
    assert hub[2].credential is not None and hub[2].credential.identity_token == "tok"
    assert hub[1].credential is None
    # The registry listed as its own mirror is the default endpoint, not a second copy.
    own = cfg.endpoints("registry.example.com")
    assert urls(own) == [("https://registry.example.com/v2", False)]
    assert own[0].tls.insecure_skip_verify
    cred = cfg.credentials("registry.example.com")
    assert cred is not None and (cred.username, cred.password) == ("u", "p:w")
    # "*" covers registries without an entry of their own.
    assert urls(cfg.endpoints("quay.io")) == [("https://catchall.example.com/v2", True), ("https://quay.io/v2", False)]


def test_disable_default_endpoint_only_for_configured_registries():
    cfg = parse_registries({"mirrors": {"docker.io": {"endpoint": ["http://127.0.0.1:5000"]}}},
                           disable_default_endpoint=True)
    assert urls(cfg.endpoints("docker.io")) == [("http://127.0.0.1:5000/v2", True)]
    assert urls(cfg.endpoints("quay.io")) == [("https://quay.io/v2", False)]


def test_endpoint_forms_and_rewrite_syntax():
    cfg = parse_registries({"mirrors": {"example.com": {
        "endpoint": ["mirror.example.com", "127.0.0.1:6000", "https://m.example.com/", "https://m.example.com/v2/x/"],
        "rewrite": {"^(team)/(.*)$": "${1}-mirror/$2", "^(?P<all>.*)$": "all/${all}"}}}})
    eps = cfg.endpoints("example.com")
    assert [e.url for e in eps] == ["https://mirror.example.com/v2", "http://127.0.0.1:6000/v2",
                                    "https://m.example.com/v2", "https://m.example.com/v2/x",
                                    "https://example.com/v2"]
    assert eps[0].repository("team/app") == "team-mirror/app"  # first matching rule, in file order
    assert eps[0].repository("solo") == "all/solo"


def test_wildcard_config_and_docker_hub_aliases():
    cfg = parse_registries({"configs": {"*": {"auth": {"username": "any", "password": "one"}},
                                        "index.docker.io": {"auth": {"username": "hub", "password": "x"}}}})
    assert cfg.credentials("somewhere.example.com").username == "any"  # type: ignore[union-attr]
    assert cfg.credentials("docker.io").username == "hub"  # type: ignore[union-attr]
    assert cfg.endpoints("docker.io")[0].credential.username == "hub"  # type: ignore[union-attr]


@pytest.mark.parametrize("text, needle", [
    ("mirrors: [a, b]", "mirrors must be a mapping"),
    ("mirrors:\n  docker.io:\n    endpoint: ftp://x\n", "http:// or https://"),
    ("mirrors:\n  docker.io:\n    endpoints: [https://x]\n", "unknown field(s) endpoints"),
    ("mirrors:\n  docker.io:\n    rewrite: {'([': x}\n", "invalid regular expression"),
    ("configs:\n  x.io:\n    tls: {insecure_skip_verify: 'yes'}\n", "must be true or false"),
    ("configs:\n  x.io:\n    tls: {cert_file: /c}\n", "cert_file and key_file go together"),
    ("configs:\n  x.io:\n    auth: {auth: '!!!'}\n", "not base64"),
    ("mirror: {}\n", "unknown top-level field(s) mirror"),
    ("mirrors: {docker.io: [\n", "invalid YAML"),
    ("- 1\n- 2\n", "must be a mapping"),
])
def test_invalid_files(tmp_path: Path, text: str, needle: str):
    p = tmp_path / "registries.yaml"
    p.write_text(text)
    with pytest.raises(ValueError) as e:
        load_registries(str(p))
    assert needle in str(e.value) and str(p) in str(e.value)


def test_empty_file_is_empty_config(tmp_path: Path):
    p = tmp_path / "registries.yaml"
    p.write_text("")
    assert load_registries(str(p)).mirrors == {}


def test_host_matching():
    assert normalize_host("https://index.docker.io/v1/") == "docker.io"
    assert normalize_host("http://Reg.Example.com:5000/v2/") == "reg.example.com:5000"
    assert host_matches("docker.io", "registry-1.docker.io")
    assert host_matches("*.example.com", "reg.example.com")
    assert not host_matches("*.example.com", "a.b.example.com")
    assert not host_matches("*.example.com:5000", "reg.example.com")
    assert not host_matches("reg.example.com", "reg.example.com:5000")
    assert "yyy" not in repr(Credential("r", "u", "yyy"))


def test_wildcard_mirror_without_default_endpoints() -> None:
    """--disable-default-registry-endpoint with a "*" mirror: no registry is ever dialled itself."""
    from kybernetes.images.registries import parse_registries

    doc = {"mirrors": {"*": {"endpoint": ["http://127.0.0.1:5000"]}}}
    closed = parse_registries(doc, "registries.yaml", disable_default_endpoint=True)
    for host in ("docker.io", "k8s.gcr.io", "registry.k8s.io"):
        assert [e.url for e in closed.endpoints(host)] == ["http://127.0.0.1:5000/v2"], host
    assert len(parse_registries(doc, "registries.yaml").endpoints("k8s.gcr.io")) == 2
