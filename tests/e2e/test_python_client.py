"""The official `kubernetes` Python client against a real `kyb server` process."""

from __future__ import annotations

import threading

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from .conftest import Server


@pytest.fixture(scope="module")
def api(server: Server):
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(server.kubeconfig), client_configuration=cfg)
    with client.ApiClient(cfg) as c:
        yield c


def test_create_list_selectors_patch_delete(api):
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="pyclient")))
    for i in range(5):
        core.create_namespaced_config_map("pyclient", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=f"cm{i}", labels={"parity": "even" if i % 2 == 0 else "odd"}),
            data={"i": str(i)}))
    even = core.list_namespaced_config_map("pyclient", label_selector="parity=even")
    assert sorted(c.metadata.name for c in even.items) == ["cm0", "cm2", "cm4"]
    one = core.list_namespaced_config_map("pyclient", field_selector="metadata.name=cm3")
    assert [c.metadata.name for c in one.items] == ["cm3"]
    notodd = core.list_namespaced_config_map("pyclient", label_selector="parity!=odd,parity")
    assert len(notodd.items) == 3
    # pagination (over the test's own ConfigMaps: the namespace also has kube-root-ca.crt)
    page = core.list_namespaced_config_map("pyclient", limit=2, label_selector="parity")
    names = [c.metadata.name for c in page.items]
    while page.metadata._continue:
        page = core.list_namespaced_config_map("pyclient", limit=2, label_selector="parity",
                                               _continue=page.metadata._continue)
        names += [c.metadata.name for c in page.items]
    assert names == [f"cm{i}" for i in range(5)]
    patched = core.patch_namespaced_config_map("cm1", "pyclient", {"data": {"i": "one"}})
    assert patched.data == {"i": "one"}
    core.delete_namespaced_config_map("cm1", "pyclient")
    with pytest.raises(ApiException) as e:
        core.read_namespaced_config_map("cm1", "pyclient")
    assert e.value.status == 404


def test_deployment_roundtrip_and_scale(api):
    apps = client.AppsV1Api(api)
    dep = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="py-web"),
        spec=client.V1DeploymentSpec(
            replicas=2, selector=client.V1LabelSelector(match_labels={"app": "py-web"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "py-web"}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]))))
    created = apps.create_namespaced_deployment("default", dep)
    assert created.spec.strategy.type == "RollingUpdate"
    scale = apps.read_namespaced_deployment_scale("py-web", "default")
    assert scale.spec.replicas == 2
    apps.patch_namespaced_deployment_scale("py-web", "default", {"spec": {"replicas": 4}})
    assert apps.read_namespaced_deployment("py-web", "default").spec.replicas == 4
    with pytest.raises(ApiException) as e:
        apps.create_namespaced_deployment("default", dep)
    assert e.value.status == 409 and "AlreadyExists" in e.value.body


def test_watch_from_resource_version(api):
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="pywatch")))
    lst = core.list_namespaced_config_map("pywatch")
    rv = lst.metadata.resource_version
    seen: list[tuple[str, str]] = []
    done = threading.Event()

    def run():
        w = watch.Watch()
        for ev in w.stream(core.list_namespaced_config_map, "pywatch", resource_version=rv, timeout_seconds=20):
            if ev["object"].metadata.name != "a":
                continue  # kube-root-ca.crt, published into every new namespace
            seen.append((ev["type"], ev["object"].metadata.name))
            if len(seen) >= 3:
                w.stop()
        done.set()

    core.create_namespaced_config_map("pywatch", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="a")))
    core.patch_namespaced_config_map("a", "pywatch", {"data": {"x": "y"}})
    core.delete_namespaced_config_map("a", "pywatch")
    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert done.wait(20)
    assert seen == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
