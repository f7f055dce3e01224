"""Pure pieces of the kubelet: env expansion and service variables, the atomic writer,
hostPath checks, back-off, phase rules."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from kybernetes.kubelet.env import EnvError, container_env, expand, field_ref, resource_ref, service_env
from kybernetes.kubelet.podworker import BackOff
from kybernetes.kubelet.status import phase, qos_class
from kybernetes.kubelet.volumes import FileEntry, VolumeError, atomic_write, check_host_path


def test_expand_follows_upstream_rules() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)", env) == "1-two"
    assert expand("$$(A)", env) == "$(A)"
    assert expand("$(MISSING)", env) == "$(MISSING)"
    assert expand("$(A", env) == "$(A"
    assert expand("a$b", env) == "a$b"


def test_service_env_docker_links() -> None:
    svc = {"metadata": {"name": "redis-primary", "namespace": "default"},
           "spec": {"clusterIP": "10.0.0.11", "ports": [{"name": "redis", "port": 6379, "protocol": "TCP"},
                                                         {"port": 53, "protocol": "UDP"}]}}
    headless = {"metadata": {"name": "h", "namespace": "default"},
                "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}
    env = service_env([svc, headless])
    assert env["REDIS_PRIMARY_SERVICE_HOST"] == "10.0.0.11"
    assert env["REDIS_PRIMARY_SERVICE_PORT"] == "6379"
    assert env["REDIS_PRIMARY_SERVICE_PORT_REDIS"] == "6379"
    assert env["REDIS_PRIMARY_PORT"] == "tcp://10.0.0.11:6379"
    assert env["REDIS_PRIMARY_PORT_6379_TCP"] == "tcp://10.0.0.11:6379"
    assert env["REDIS_PRIMARY_PORT_6379_TCP_PROTO"] == "tcp"
    assert env["REDIS_PRIMARY_PORT_6379_TCP_PORT"] == "6379"
    assert env["REDIS_PRIMARY_PORT_6379_TCP_ADDR"] == "10.0.0.11"
    assert env["REDIS_PRIMARY_PORT_53_UDP"] == "udp://10.0.0.11:53"
    assert not any(k.startswith("H_") for k in env)


async def test_container_env_sources_and_links() -> None:
    cms = {("ns", "cm"): {"data": {"a": "A", "bad-key!": "x"}}}
    secrets = {("ns", "s"): {"data": {"p": base64.b64encode(b"pw").decode()}}}

    async def get_cm(ns: str, name: str):
        return cms.get((ns, name))

    async def get_secret(ns: str, name: str):
        return secrets.get((ns, name))

    kube = {"metadata": {"name": "kubernetes", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443}]}}
    other = {"metadata": {"name": "web", "namespace": "ns"}, "spec": {"clusterIP": "10.0.0.5",
                                                                    "ports": [{"port": 80}]}}
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "x"}},
           "spec": {"nodeName": "n1", "containers": [{"name": "c", "resources": {"limits": {"memory": "64Mi"}}}]}}
    c = {"name": "c", "envFrom": [{"configMapRef": {"name": "cm"}}],
         "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "s", "key": "p"}}},
                 {"name": "L", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                 {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory",
                                                                    "divisor": "1Mi"}}},
                 {"name": "REF", "value": "$(a)/$(WEB_SERVICE_HOST)"}]}
    warned: list[str] = []
    env = await container_env(pod, c, get_configmap=get_cm, get_secret=get_secret, services=[kube, other],
                              warn=warned.append)
    assert env["a"] == "A" and env["P"] == "pw" and env["L"] == "x" and env["MEM"] == "64"
    assert env["REF"] == "A/10.0.0.5"
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1" and env["KUBERNETES_SERVICE_PORT_HTTPS"] == "443"
    assert warned and "bad-key!" in warned[0]
    pod["spec"]["enableServiceLinks"] = False
    env = await container_env(pod, c, get_configmap=get_cm, get_secret=get_secret, services=[kube, other])
    assert "WEB_SERVICE_HOST" in env["REF"] and "KUBERNETES_SERVICE_HOST" in env
    with pytest.raises(EnvError):
        await container_env(pod, {"name": "c", "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {
            "name": "nope", "key": "k"}}}]}, get_configmap=get_cm, get_secret=get_secret)


def test_resource_ref_rounds_up() -> None:
    pod = {"spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "250m"}}}]}}
    assert resource_ref(pod, {"resource": "limits.cpu"}, "c") == "1"
    assert resource_ref(pod, {"resource": "limits.cpu", "divisor": "1m"}, "c") == "250"


def test_atomic_writer_swaps_data(tmp_path: Path) -> None:
    d = str(tmp_path / "vol")
    assert atomic_write(d, {"a": FileEntry(b"1", 0o644), "sub/b": FileEntry(b"2", 0o600)})
    assert open(os.path.join(d, "a")).read() == "1" and open(os.path.join(d, "sub", "b")).read() == "2"
    first = os.readlink(os.path.join(d, "..data"))
    assert not atomic_write(d, {"a": FileEntry(b"1", 0o644), "sub/b": FileEntry(b"2", 0o600)})
    assert atomic_write(d, {"a": FileEntry(b"3", 0o644)})
    assert os.readlink(os.path.join(d, "..data")) != first
    assert not os.path.exists(os.path.join(d, first))
    assert open(os.path.join(d, "a")).read() == "3" and not os.path.lexists(os.path.join(d, "sub"))


def test_host_path_types(tmp_path: Path) -> None:
    check_host_path({"path": str(tmp_path / "new"), "type": "DirectoryOrCreate"})
    assert (tmp_path / "new").is_dir()
    check_host_path({"path": str(tmp_path / "f"), "type": "FileOrCreate"})
    assert (tmp_path / "f").is_file()
    with pytest.raises(VolumeError):
        check_host_path({"path": str(tmp_path / "f"), "type": "Directory"})
    with pytest.raises(VolumeError):
        check_host_path({"path": str(tmp_path / "missing"), "type": "File"})
    check_host_path({"path": str(tmp_path / "anything")})  # no type: no check


def test_backoff_doubles_caps_and_resets() -> None:
    b = BackOff(10, 300)
    assert b.in_backoff_since("k", 0, now=1) == 0
    b.next("k", now=0)
    assert b.in_backoff_since("k", 0, now=4) == 6
    durations = []
    for i in range(8):
        b.next("k", now=i)
        durations.append(b.current("k"))
    assert durations[:5] == [20, 40, 80, 160, 300] and durations[-1] == 300
    # Ten minutes (twice the cap) without a restart: start over at the base.
    assert b.in_backoff_since("k", 0, now=7 + 601) == 0
    b.next("k", now=7 + 601)
    assert b.current("k") == 10


def test_phase_rules() -> None:
    def cs(state: dict, last: dict | None = None) -> dict:
        return {"state": state, "lastState": last or {}}

    run, ok, bad = {"running": {}}, {"terminated": {"exitCode": 0}}, {"terminated": {"exitCode": 1}}
    wait = {"waiting": {"reason": "ContainerCreating"}}
    always = {"spec": {"restartPolicy": "Always"}}
    never = {"spec": {"restartPolicy": "Never"}}
    onfail = {"spec": {"restartPolicy": "OnFailure"}}
    assert phase(always, [], [cs(wait)], initialized=True, init_failed=False) == "Pending"
    assert phase(always, [], [cs(run)], initialized=True, init_failed=False) == "Running"
    assert phase(always, [], [cs(wait, bad)], initialized=True, init_failed=False) == "Running"
    assert phase(never, [], [cs(ok), cs(bad)], initialized=True, init_failed=False) == "Failed"
    assert phase(onfail, [], [cs(ok)], initialized=True, init_failed=False) == "Succeeded"
    assert phase(always, [], [cs(run)], initialized=False, init_failed=False) == "Pending"
    assert phase(never, [], [], initialized=False, init_failed=True) == "Failed"


def test_qos_class() -> None:
    def p(*res: dict) -> dict:
        return {"spec": {"containers": [{"name": str(i), "resources": r} for i, r in enumerate(res)]}}

    assert qos_class(p({})) == "BestEffort"
    assert qos_class(p({"limits": {"cpu": "1", "memory": "1Gi"}})) == "Guaranteed"
    assert qos_class(p({"requests": {"cpu": "1"}})) == "Burstable"


def test_field_ref_lists_every_address_of_a_dual_stack_pod_and_node() -> None:
    pod = {"metadata": {"name": "p"}, "spec": {}}
    ips, hosts = ["10.42.0.5", "fd42::5"], ["10.0.0.2", "fd00::2"]
    assert field_ref(pod, "status.podIP", ips, hosts) == "10.42.0.5"
    assert field_ref(pod, "status.podIPs", ips, hosts) == "10.42.0.5,fd42::5"
    assert field_ref(pod, "status.hostIP", ips, hosts) == "10.0.0.2"
    assert field_ref(pod, "status.hostIPs", ips, hosts) == "10.0.0.2,fd00::2"
    # One address, as single-stack callers pass it.
    assert field_ref(pod, "status.podIPs", "10.42.0.5", "10.0.0.2") == "10.42.0.5"
