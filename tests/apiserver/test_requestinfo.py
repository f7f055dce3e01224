"""RequestInfo: one strict meaning for every request path (upstream's RequestInfoFactory shapes)."""

from __future__ import annotations

import pytest

from kybernetes.api.errors import StatusError
from kybernetes.api.selectors import is_path_segment_name
from kybernetes.apiserver.requestinfo import parse


def info(method: str, path: str, **query: str):
    return parse(method, path, query)


@pytest.mark.parametrize("method,path,query,want", [
    ("GET", "/api/v1/namespaces/shop/pods", {}, ("list", "", "v1", "shop", "pods", "", "")),
    ("GET", "/api/v1/pods", {}, ("list", "", "v1", "", "pods", "", "")),
    ("GET", "/api/v1/namespaces/shop/pods/web", {}, ("get", "", "v1", "shop", "pods", "", "web")),
    ("HEAD", "/api/v1/namespaces/shop/pods/web", {}, ("get", "", "v1", "shop", "pods", "", "web")),
    ("POST", "/api/v1/namespaces/shop/pods", {}, ("create", "", "v1", "shop", "pods", "", "")),
    ("PUT", "/apis/apps/v1/namespaces/shop/deployments/web/scale", {},
     ("update", "apps", "v1", "shop", "deployments", "scale", "web")),
    ("PATCH", "/api/v1/nodes/n1/status", {}, ("patch", "", "v1", "", "nodes", "status", "n1")),
    ("DELETE", "/api/v1/namespaces/shop/pods/web", {}, ("delete", "", "v1", "shop", "pods", "", "web")),
    ("DELETE", "/api/v1/namespaces/shop/pods", {}, ("deletecollection", "", "v1", "shop", "pods", "", "")),
    ("GET", "/api/v1/namespaces/shop/pods", {"watch": "true"}, ("watch", "", "v1", "shop", "pods", "", "")),
    ("GET", "/api/v1/namespaces/shop/pods", {"watch": "1"}, ("watch", "", "v1", "shop", "pods", "", "")),
    ("GET", "/api/v1/namespaces/shop/pods", {"watch": "false"}, ("list", "", "v1", "shop", "pods", "", "")),
    ("GET", "/api/v1/watch/namespaces/shop/pods", {}, ("watch", "", "v1", "shop", "pods", "", "")),
    ("GET", "/api/v1/watch/namespaces/shop/pods/web", {}, ("watch", "", "v1", "shop", "pods", "", "web")),
    # A field selector on metadata.name names the one object of a list or watch.
    ("GET", "/api/v1/namespaces/shop/pods", {"fieldSelector": "metadata.name=web"},
     ("list", "", "v1", "shop", "pods", "", "web")),
    ("GET", "/api/v1/namespaces/shop/pods", {"fieldSelector": "spec.nodeName=n1,metadata.name==web",
                                             "watch": "true"},
     ("watch", "", "v1", "shop", "pods", "", "web")),
    ("GET", "/api/v1/namespaces/shop/pods", {"fieldSelector": "metadata.name!=web"},
     ("list", "", "v1", "shop", "pods", "", "")),
    # A Namespace itself, and its own subresources.
    ("GET", "/api/v1/namespaces/shop", {}, ("get", "", "v1", "shop", "namespaces", "", "shop")),
    ("PUT", "/api/v1/namespaces/shop/finalize", {}, ("update", "", "v1", "shop", "namespaces", "finalize", "shop")),
    ("GET", "/api/v1/namespaces/shop/status", {}, ("get", "", "v1", "shop", "namespaces", "status", "shop")),
    ("GET", "/api/v1/namespaces", {}, ("list", "", "v1", "", "namespaces", "", "")),
    ("POST", "/api/v1/namespaces/shop/pods/web/exec", {}, ("create", "", "v1", "shop", "pods", "exec", "web")),
    ("GET", "/api/v1/pods/", {}, ("list", "", "v1", "", "pods", "", "")),  # one trailing slash
])
def test_resource_requests(method, path, query, want) -> None:
    i = parse(method, path, query)
    assert i.is_resource
    assert (i.verb, i.group, i.version, i.namespace, i.resource, i.subresource, i.name) == want


@pytest.mark.parametrize("method,path,verb", [
    ("GET", "/", "get"), ("GET", "/api", "get"), ("GET", "/api/v1", "get"), ("GET", "/apis", "get"),
    ("GET", "/apis/apps", "get"), ("GET", "/apis/apps/v1", "get"), ("GET", "/healthz/etcd", "get"),
    ("POST", "/version", "post"), ("GET", "/openapi/v3/apis/apps/v1", "get"), ("GET", "/foo/bar/baz", "get"),
])
def test_non_resource_requests(method, path, verb) -> None:
    i = info(method, path)
    assert not i.is_resource and i.verb == verb and i.path == path


def test_parts_and_segments() -> None:
    i = info("GET", "/api/v1/namespaces/shop/pods/web/log")
    assert i.parts == ("pods", "web", "log")
    assert i.segments == ("api", "v1", "namespaces", "shop", "pods", "web", "log")
    assert info("GET", "/").segments == ()


def test_percent_encoding_is_decoded_per_segment() -> None:
    i = info("GET", "/api/v1/namespaces/shop/configmaps/a%3Ab")
    assert i.name == "a:b" and i.path == "/api/v1/namespaces/shop/configmaps/a:b"


@pytest.mark.parametrize("path,code", [
    ("/api/v1/namespaces/kube-system%2Fsecrets", 400),   # an encoded slash
    ("/api/v1/namespaces/kube-system%2fsecrets", 400),
    ("/api/v1/namespaces//secrets", 404),                # an empty segment
    ("/api//v1/pods", 404),
    ("/api/v1/pods//", 404),                             # only one trailing slash
    ("/api/v1/namespaces/../secrets", 400),              # dot segments, raw or encoded
    ("/api/v1/namespaces/%2e%2e/secrets", 400),
    ("/api/v1/namespaces/%2E/secrets", 400),
    ("/healthz/../api/v1/secrets", 400),
    ("/api/v1/namespaces/a%00b/secrets", 400),           # NUL
    ("/api/v1/namespaces/shop/secrets/%ff", 400),        # not UTF-8
    ("/api/v1/namespaces/a%25b/secrets", 400),           # '%' can be no namespace
    ("/api/v1/namespaces/shop/secrets/a%25b", 400),      # nor a name
    ("/api/v1/watch", 400),
    ("api/v1/pods", 400),
])
def test_refused_paths(path, code) -> None:
    with pytest.raises(StatusError) as e:
        info("GET", path)
    assert e.value.code == code


def test_invalid_name_message_is_upstreams() -> None:
    with pytest.raises(StatusError) as e:
        info("GET", "/api/v1/namespaces/shop/secrets/a%25b")
    assert e.value.reason == "BadRequest"
    assert e.value.message == "Name parameter invalid: \"a%b\": may not contain '%'"


def test_path_segment_names() -> None:
    assert is_path_segment_name("ok-name.x") == []
    assert is_path_segment_name("..") == ["may not be '..'"]
    assert is_path_segment_name("a/b%") == ["may not contain '/'", "may not contain '%'"]
