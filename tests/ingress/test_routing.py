"""The route table as pure functions: path and host matching by the Ingress API's rules, class
selection, backend resolution from Services and EndpointSlices, annotations."""

from __future__ import annotations

from typing import Any

import pytest

from kybernetes.ingress.routing import (
    Backend,
    Options,
    build_table,
    ingress_is_ours,
    ingress_options,
    normalize_host,
    our_classes,
    prefix_key,
    resolve_backend,
    status_ingress,
)
from kybernetes.ingress.tls import tls_hosts


def _fake_resolve(ns: str, b: dict[str, Any] | None) -> Backend:
    svc = (b or {}).get("service") or {}
    return Backend(f"{ns}/{svc.get('name')}", (("127.0.0.1", 1),))


def _ing(paths: list[tuple[str, str, str]], host: str | None = None, name: str = "ing",
         created: str = "2024-01-01T00:00:00Z", default: str | None = None, **meta: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {"http": {"paths": [
        {"path": p, "pathType": t, "backend": {"service": {"name": svc, "port": {"number": 80}}}}
        for p, t, svc in paths]}}
    if host:
        rule["host"] = host
    spec: dict[str, Any] = {"rules": [rule] if paths else []}
    if default:
        spec["defaultBackend"] = {"service": {"name": default, "port": {"number": 80}}}
    return {"metadata": {"name": name, "namespace": "default", "creationTimestamp": created, **meta},
            "spec": spec}


def _match(table: Any, host: str, path: str) -> str | None:
    r = table.match(host, path)
    return r.backend.key.split("/", 1)[1] if r else None


# The "Examples" table of the Ingress concept page (kubernetes.io/docs/concepts/services-networking/ingress).
DOCS_EXAMPLES = [
    ([("/", "Prefix")], "/anything/at/all", True),
    ([("/foo", "Exact")], "/foo", True),
    ([("/foo", "Exact")], "/bar", False),
    ([("/foo", "Exact")], "/foo/", False),
    ([("/foo/", "Exact")], "/foo", False),
    ([("/foo", "Prefix")], "/foo", True),
    ([("/foo", "Prefix")], "/foo/", True),
    ([("/foo/", "Prefix")], "/foo", True),
    ([("/foo/", "Prefix")], "/foo/", True),
    ([("/aaa/bb", "Prefix")], "/aaa/bbb", False),
    ([("/aaa/bbb", "Prefix")], "/aaa/bbb", True),
    ([("/aaa/bbb/", "Prefix")], "/aaa/bbb", True),
    ([("/aaa/bbb", "Prefix")], "/aaa/bbb/", True),
    ([("/aaa/bbb", "Prefix")], "/aaa/bbb/ccc", True),
    ([("/aaa/bbb", "Prefix")], "/aaa/bbbxyz", False),
    ([("/", "Prefix"), ("/aaa", "Prefix")], "/aaa/ccc", True),
    ([("/", "Prefix"), ("/aaa", "Prefix"), ("/aaa/bbb", "Prefix")], "/aaa/bbb", True),
    ([("/", "Prefix"), ("/aaa", "Prefix"), ("/aaa/bbb", "Prefix")], "/ccc", True),
    ([("/aaa", "Prefix")], "/ccc", False),
    ([("/foo", "Prefix"), ("/foo", "Exact")], "/foo", True),
]


@pytest.mark.parametrize(("paths", "request_path", "matches"), DOCS_EXAMPLES)
def test_docs_path_examples(paths: list[tuple[str, str]], request_path: str, matches: bool) -> None:
    table = build_table([_ing([(p, t, f"svc{i}") for i, (p, t) in enumerate(paths)])], _fake_resolve)
    assert (table.match("any.host", request_path) is not None) is matches


def test_longest_path_wins_and_exact_beats_prefix() -> None:
    table = build_table([_ing([("/", "Prefix", "root"), ("/aaa", "Prefix", "aaa"), ("/aaa/bbb", "Prefix", "bbb"),
                               ("/foo", "Prefix", "foo-prefix"), ("/foo", "Exact", "foo-exact"),
                               ("/foo/bar", "Exact", "foobar-exact")])], _fake_resolve)
    assert _match(table, "h", "/aaa/ccc") == "aaa"
    assert _match(table, "h", "/aaa/bbb") == "bbb"
    assert _match(table, "h", "/aaa/bbb/ccc") == "bbb"
    assert _match(table, "h", "/aaaccc") == "root"
    assert _match(table, "h", "/ccc") == "root"
    assert _match(table, "h", "/foo") == "foo-exact"
    assert _match(table, "h", "/foo/") == "foo-prefix"
    assert _match(table, "h", "/foo/bar") == "foobar-exact"
    assert _match(table, "h", "/foo/bar/") == "foo-prefix"
    assert _match(table, "h", "/FOO") == "root"   # case-sensitive


def test_conformance_path_rules() -> None:
    ings = [
        _ing([("/foo", "Exact", "foo-exact")], host="exact-path-rules", name="a"),
        _ing([("/foo", "Prefix", "foo-prefix"), ("/aaa/bbb", "Prefix", "aaa-slash-bbb-prefix"),
              ("/aaa", "Prefix", "aaa-prefix")], host="prefix-path-rules", name="b"),
        _ing([("/foo", "Prefix", "foo-prefix"), ("/foo", "Exact", "foo-exact")], host="mixed-path-rules", name="c"),
        _ing([("/aaa/bbb/", "Prefix", "aaa-slash-bbb-slash-prefix"), ("/foo/", "Exact", "foo-slash-exact")],
             host="trailing-slash-path-rules", name="d"),
    ]
    t = build_table(ings, _fake_resolve)
    assert _match(t, "exact-path-rules", "/foo") == "foo-exact"
    for p in ("/foo/", "/FOO", "/bar"):
        assert _match(t, "exact-path-rules", p) is None
    assert _match(t, "prefix-path-rules", "/foo") == "foo-prefix"
    assert _match(t, "prefix-path-rules", "/foo/") == "foo-prefix"
    assert _match(t, "prefix-path-rules", "/FOO") is None
    assert _match(t, "prefix-path-rules", "/aaa/bbb") == "aaa-slash-bbb-prefix"
    assert _match(t, "prefix-path-rules", "/aaa/bbb/ccc") == "aaa-slash-bbb-prefix"
    assert _match(t, "prefix-path-rules", "/aaa/ccc") == "aaa-prefix"
    assert _match(t, "prefix-path-rules", "/aaaccc") is None
    assert _match(t, "mixed-path-rules", "/foo") == "foo-exact"
    assert _match(t, "trailing-slash-path-rules", "/aaa/bbb") == "aaa-slash-bbb-slash-prefix"
    assert _match(t, "trailing-slash-path-rules", "/aaa/bbb/") == "aaa-slash-bbb-slash-prefix"
    assert _match(t, "trailing-slash-path-rules", "/foo") is None


def test_implementation_specific_is_prefix_and_empty_path_is_root() -> None:
    t = build_table([_ing([("/api", "ImplementationSpecific", "api"), ("", "ImplementationSpecific", "all")])],
                    _fake_resolve)
    assert _match(t, "h", "/api/v1") == "api"
    assert _match(t, "h", "/apix") == "all"
    assert _match(t, "h", "/") == "all"


def test_conformance_host_rules() -> None:
    t = build_table([{"metadata": {"name": "host-rules", "namespace": "default"}, "spec": {"rules": [
        {"host": "*.foo.com", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "wildcard-foo-com",
                                                                        "port": {"number": 8080}}}}]}},
        {"host": "foo.bar.com", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "foo-bar-com",
                                                                        "port": {"name": "http"}}}}]}}]}}],
        _fake_resolve)
    assert _match(t, "foo.bar.com", "/") == "foo-bar-com"
    assert _match(t, "FOO.bar.com:8080", "/") == "foo-bar-com"     # case and port do not matter
    assert _match(t, "foo.bar.com.", "/x") == "foo-bar-com"        # nor a trailing dot
    assert _match(t, "subdomain.bar.com", "/") is None
    assert _match(t, "bar.foo.com", "/") == "wildcard-foo-com"
    assert _match(t, "baz.bar.foo.com", "/") is None               # one label only
    assert _match(t, "foo.com", "/") is None                       # and not none


def test_name_based_virtual_hosting_and_fallthrough() -> None:
    ing = {"metadata": {"name": "v", "namespace": "default"}, "spec": {"rules": [
        {"host": "foo.bar.com", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "service1", "port": {"number": 80}}}}]}},
        {"host": "bar.foo.com", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "service2", "port": {"number": 80}}}}]}},
        {"http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "service3", "port": {"number": 80}}}}]}},
        {"host": "only.api", "http": {"paths": [
            {"path": "/api", "pathType": "Prefix", "backend": {"service": {"name": "api", "port": {"number": 80}}}}]}},
    ]}}
    t = build_table([ing], _fake_resolve)
    assert _match(t, "foo.bar.com", "/x") == "service1"
    assert _match(t, "bar.foo.com", "/x") == "service2"
    assert _match(t, "other.example", "/x") == "service3"
    assert _match(t, "", "/x") == "service3"                      # no Host header at all
    assert _match(t, "[::1]:80", "/") == "service3"
    assert _match(t, "only.api", "/api/v1") == "api"
    assert _match(t, "only.api", "/other") == "service3"          # a host's unmatched path falls through


def test_default_backend_last_and_conflicts_go_to_the_oldest() -> None:
    old = _ing([("/a", "Prefix", "old-a")], host="h", name="old", created="2024-01-01T00:00:00Z", default="old-def")
    new = _ing([("/a", "Prefix", "new-a"), ("/b", "Prefix", "new-b")], host="h", name="new",
               created="2024-02-01T00:00:00Z", default="new-def")
    t = build_table([new, old], _fake_resolve)
    assert _match(t, "h", "/a") == "old-a"
    assert _match(t, "h", "/b") == "new-b"
    assert _match(t, "h", "/c") == "old-def"
    assert _match(t, "elsewhere", "/") == "old-def"
    assert t.ingresses == ["default/old", "default/new"]


def test_classes_and_which_ingresses_are_ours() -> None:
    classes = [
        {"metadata": {"name": "kybernetes", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
         "spec": {"controller": "kybernetes.io/ingress"}},
        {"metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}},
    ]
    names, default = our_classes(classes)
    assert names == {"kybernetes"} and default
    assert ingress_is_ours({"spec": {"ingressClassName": "kybernetes"}}, names, default)
    assert not ingress_is_ours({"spec": {"ingressClassName": "nginx"}}, names, default)
    assert not ingress_is_ours({"spec": {"ingressClassName": "missing"}}, names, default)
    assert ingress_is_ours({"spec": {}}, names, default)
    assert not ingress_is_ours({"spec": {}}, names, False)
    assert ingress_is_ours({"metadata": {"annotations": {"kubernetes.io/ingress.class": "kybernetes"}},
                            "spec": {}}, names, False)
    assert not ingress_is_ours({"metadata": {"annotations": {"kubernetes.io/ingress.class": "nginx"}},
                                "spec": {}}, names, True)
    assert our_classes(classes[1:]) == (set(), False)


def _svc(ports: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "web", "namespace": "default"}, "spec": {"ports": ports, **spec}}


def _slice(port_name: str, port: int, eps: list[tuple[str, bool | None]], family: str = "IPv4") -> dict[str, Any]:
    return {"addressType": family, "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {} if ready is None else {"ready": ready}}
                          for ip, ready in eps]}


def _ref(number: int | None = None, name: str | None = None) -> dict[str, Any]:
    return {"service": {"name": "web", "port": {"number": number} if number else {"name": name}}}


def test_resolve_backend_by_number_and_name_to_ready_pod_endpoints() -> None:
    svc = _svc([{"name": "http", "port": 80, "targetPort": "web"}, {"name": "admin", "port": 9000}])
    slices = [_slice("http", 8080, [("10.1.0.2", True), ("10.1.0.3", None), ("10.1.0.4", False)]),
              _slice("admin", 9090, [("10.1.0.2", True)]),
              _slice("http", 8081, [("fd00::5", True)], family="IPv6")]
    b = resolve_backend("default", _ref(80), svc, slices)
    assert b.problem is None
    assert set(b.endpoints) == {("10.1.0.2", 8080), ("10.1.0.3", 8080), ("fd00::5", 8081)}
    assert resolve_backend("default", _ref(name="admin"), svc, slices).endpoints == (("10.1.0.2", 9090),)
    # Round robin over all of them.
    picks = [b.pick()[0] for _ in range(6)]
    assert set(picks) == set(b.endpoints) and picks[:3] == picks[3:]
    assert len(b.pick(3)) == 3 and len(set(b.pick(3))) == 3


def test_resolve_backend_problems() -> None:
    svc = _svc([{"name": "http", "port": 80}])
    assert "not found" in (resolve_backend("default", _ref(80), None, []).problem or "")
    assert "no port" in (resolve_backend("default", _ref(81), svc, []).problem or "")
    assert "no port" in (resolve_backend("default", _ref(name="nope"), svc, []).problem or "")
    none_ready = resolve_backend("default", _ref(80), svc, [_slice("http", 8080, [("10.1.0.2", False)])])
    assert "no ready endpoints" in (none_ready.problem or "") and none_ready.pick() == []
    other_port = resolve_backend("default", _ref(80), svc, [_slice("metrics", 8080, [("10.1.0.2", True)])])
    assert other_port.endpoints == ()
    assert resolve_backend("default", {"resource": {"kind": "Bucket", "name": "b"}}, svc, []).problem
    # An unnamed single port matches the slice's unnamed port.
    plain = _svc([{"port": 80}])
    assert resolve_backend("default", _ref(80), plain, [_slice("", 8080, [("10.1.0.9", True)])]).endpoints == \
        (("10.1.0.9", 8080),)


def test_external_name_service() -> None:
    svc = _svc([{"name": "http", "port": 443}], type="ExternalName", externalName="example.internal")
    assert resolve_backend("default", _ref(name="http"), svc, []).endpoints == (("example.internal", 443),)


def test_options_from_annotations() -> None:
    def opts(**anns: str) -> Options:
        return ingress_options({"metadata": {"annotations": anns}})

    assert opts() == Options()
    assert opts(**{"ingress.kubernetes.io/ssl-redirect": "true"}).ssl_redirect
    assert opts(**{"nginx.ingress.kubernetes.io/ssl-redirect": "True"}).ssl_redirect
    assert opts(**{"nginx.ingress.kubernetes.io/force-ssl-redirect": "true"}).ssl_redirect
    assert not opts(**{"nginx.ingress.kubernetes.io/ssl-redirect": "false"}).ssl_redirect
    o = opts(**{"nginx.ingress.kubernetes.io/proxy-read-timeout": "2", "ingress.kubernetes.io/proxy-connect-timeout":
                "0.5s", "nginx.ingress.kubernetes.io/proxy-send-timeout": "junk"})
    assert (o.read_timeout, o.connect_timeout, o.send_timeout) == (2.0, 0.5, Options().send_timeout)


def test_helpers() -> None:
    assert normalize_host("Foo.Example.COM:8443") == "foo.example.com"
    assert normalize_host("[fd00::1]:80") == "[fd00::1]"
    assert prefix_key("/aaa//bbb/") == "aaa/bbb" and prefix_key("/") == ""
    assert status_ingress(["10.0.0.1", "fd00::1", "lb.example.com", "10.0.0.1"]) == \
        [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}, {"hostname": "lb.example.com"}]


def test_tls_hosts_oldest_wins_and_hostless_entries_cover_rule_hosts() -> None:
    a = {"metadata": {"name": "a", "namespace": "ns1", "creationTimestamp": "2024-01-01T00:00:00Z"},
         "spec": {"tls": [{"hosts": ["Foo.Example.com", "*.wild.io"], "secretName": "s-a"}]}}
    b = {"metadata": {"name": "b", "namespace": "ns2", "creationTimestamp": "2024-02-01T00:00:00Z"},
         "spec": {"tls": [{"hosts": ["foo.example.com", "bar.example.com"], "secretName": "s-b"},
                          {"secretName": "s-rules"}],
                  "rules": [{"host": "r.example.com"}]}}
    assert tls_hosts([b, a]) == {"foo.example.com": "ns1/s-a", "*.wild.io": "ns1/s-a",
                                 "bar.example.com": "ns2/s-b", "r.example.com": "ns2/s-rules"}
