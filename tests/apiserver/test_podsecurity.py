"""Pod Security admission: each check of the standards, the namespace labels, and the plugin's decisions."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kybernetes.api.errors import StatusError
from kybernetes.apiserver.podsecurity import (
    LATEST,
    Evaluator,
    LevelVersion,
    Policy,
    PodSecurity,
    Version,
    go_quote,
    parse_level,
    parse_version,
    policy_from_labels,
    significant_pod_update,
)

EV = Evaluator()


def container(name: str = "c", **sc: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": "busybox"}
    if sc:
        c["securityContext"] = sc
    return c


def pod(*containers: dict[str, Any], name: str = "web", annotations: dict[str, str] | None = None,
        **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "shop"}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": list(containers) or [container()], **spec}}


RESTRICTED_SC = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
                 "seccompProfile": {"type": "RuntimeDefault"}}


def good(name: str = "c", **sc: Any) -> dict[str, Any]:
    """A container the restricted level allows, changed by sc."""
    return container(name, **{**copy.deepcopy(RESTRICTED_SC), **sc})


def detail(level: str, p: dict[str, Any], version: str = "latest") -> str:
    return EV.evaluate(LevelVersion(level, parse_version(version)), p["metadata"], p["spec"]).detail()


def baseline(p: dict[str, Any], version: str = "latest") -> str:
    return detail("baseline", p, version)


def restricted(p: dict[str, Any], version: str = "latest") -> str:
    return detail("restricted", p, version)


def ns(name: str = "shop", **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {f"pod-security.kubernetes.io/{k.replace('_', '-')}": v
                                                  for k, v in labels.items()}}}


# ------------------------------------------------------------------ baseline checks


def test_plain_pod_passes_baseline_and_a_hardened_one_passes_restricted():
    assert baseline(pod()) == ""
    assert restricted(pod(good())) == ""
    assert restricted(pod(container(), securityContext={"runAsNonRoot": True, "seccompProfile": {
        "type": "Localhost", "localhostProfile": "p.json"}}, initContainers=[
        container("i", allowPrivilegeEscalation=False, capabilities={"drop": ["ALL"]})])) == \
        'allowPrivilegeEscalation != false (container "c" must set ' \
        'securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "c" ' \
        'must set securityContext.capabilities.drop=["ALL"])'


def test_privileged_level_allows_anything():
    p = pod(container(privileged=True), hostNetwork=True)
    assert detail("privileged", p) == ""


def test_windows_host_process():
    assert baseline(pod(container(windowsOptions={"hostProcess": False}))) == ""
    p = pod(container("a", windowsOptions={"hostProcess": True}),
            container("b", windowsOptions={"hostProcess": True}),
            securityContext={"windowsOptions": {"hostProcess": True}})
    assert baseline(p) == ('hostProcess (pod and containers "a", "b" must not set '
                           'securityContext.windowsOptions.hostProcess=true)')


def test_host_namespaces():
    assert baseline(pod(hostNetwork=False, hostPID=False)) == ""
    assert baseline(pod(hostNetwork=True, hostIPC=True, hostPID=True)) == \
        "host namespaces (hostNetwork=true, hostPID=true, hostIPC=true)"


def test_privileged_containers_in_every_container_list():
    assert baseline(pod(container(privileged=False))) == ""
    p = pod(container("c", privileged=True), initContainers=[container("i", privileged=True)],
            ephemeralContainers=[container("debug", privileged=True)])
    assert baseline(p) == \
        'privileged (containers "i", "c", "debug" must not set securityContext.privileged=true)'


def test_baseline_capabilities():
    allowed = ["AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
               "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"]
    assert baseline(pod(container(capabilities={"add": allowed, "drop": ["NET_RAW"]}))) == ""
    p = pod(container("a", capabilities={"add": ["SYS_ADMIN", "CHOWN"]}),
            container("b", capabilities={"add": ["NET_RAW"]}))
    assert baseline(p) == ('non-default capabilities (containers "a", "b" must not include "NET_RAW", '
                           '"SYS_ADMIN" in securityContext.capabilities.add)')


def test_host_path_volumes():
    assert baseline(pod(volumes=[{"name": "v", "emptyDir": {}}])) == ""
    p = pod(volumes=[{"name": "a", "hostPath": {"path": "/"}}, {"name": "b", "hostPath": {"path": "/etc"}}])
    assert baseline(p) == 'hostPath volumes (volumes "a", "b")'
    one = pod(volumes=[{"name": "a", "hostPath": {"path": "/"}}])
    assert baseline(one) == 'hostPath volumes (volume "a")'


def test_host_ports():
    assert baseline(pod({"name": "c", "ports": [{"containerPort": 80, "hostPort": 0}]})) == ""
    one = pod({"name": "b", "ports": [{"containerPort": 80, "hostPort": 20}]})
    assert baseline(one) == 'hostPort (container "b" uses hostPort 20)'
    many = pod({"name": "b", "ports": [{"hostPort": 8080}, {"hostPort": 443}]},
               {"name": "c", "ports": [{"hostPort": 9}]})
    # sorted as strings, as upstream's string sets are
    assert baseline(many) == 'hostPort (containers "b", "c" use hostPorts 443, 8080, 9)'


def test_apparmor_fields_and_annotations():
    ok = pod(container(appArmorProfile={"type": "Localhost", "localhostProfile": "p"}),
             securityContext={"appArmorProfile": {"type": "RuntimeDefault"}},
             annotations={"container.apparmor.security.beta.kubernetes.io/c": "runtime/default",
                          "container.apparmor.security.beta.kubernetes.io/d": "localhost/foo"})
    assert baseline(ok) == ""
    assert baseline(pod(securityContext={"appArmorProfile": {"type": "Unconfined"}})) == \
        'forbidden AppArmor profile (pod must not set AppArmor profile type to "Unconfined")'
    both = pod(container("foo", appArmorProfile={"type": "Unconfined"}),
               annotations={"container.apparmor.security.beta.kubernetes.io/foo": "unconfined"})
    assert baseline(both) == (
        'forbidden AppArmor profiles (container "foo" and annotation must not set AppArmor profile type to '
        '"Unconfined", "container.apparmor.security.beta.kubernetes.io/foo="unconfined"")')


def test_selinux_options():
    assert baseline(pod(container(seLinuxOptions={"type": "container_t", "level": "s0:c1"}))) == ""
    p = pod(container("e", seLinuxOptions={"type": "bar", "user": "u"}),
            container("f", seLinuxOptions={"role": "r"}), securityContext={"seLinuxOptions": {"type": "foo"}})
    assert baseline(p) == ('seLinuxOptions (pod and containers "e", "f" set forbidden '
                           'securityContext.seLinuxOptions: types "bar", "foo"; user may not be set; '
                           'role may not be set)')
    assert baseline(pod(securityContext={"seLinuxOptions": {"user": "u"}})) == \
        "seLinuxOptions (pod set forbidden securityContext.seLinuxOptions: user may not be set)"
    engine = pod(container(seLinuxOptions={"type": "container_engine_t"}))
    assert baseline(engine) == baseline(engine, "v1.31") == ""
    assert baseline(engine, "v1.30") == ('seLinuxOptions (container "c" set forbidden '
                                         'securityContext.seLinuxOptions: type "container_engine_t")')


def test_proc_mount():
    assert baseline(pod(container(procMount="Default"))) == ""
    assert baseline(pod(container(procMount="Unmasked"))) == \
        'procMount (container "c" must not set securityContext.procMount to "Unmasked")'


def test_proc_mount_relaxed_for_user_namespace_pods_only_when_asked():
    p = pod(container(procMount="Unmasked"), hostUsers=False)
    relaxed = Evaluator(relax_user_namespace_pods=True)
    assert relaxed.evaluate(LevelVersion("baseline"), p["metadata"], p["spec"]).allowed
    assert not EV.evaluate(LevelVersion("baseline"), p["metadata"], p["spec"]).allowed
    root = pod(good(runAsNonRoot=False, runAsUser=0), hostUsers=False)
    assert relaxed.evaluate(LevelVersion("restricted"), root["metadata"], root["spec"]).allowed


def test_seccomp_baseline_fields():
    assert baseline(pod(container(seccompProfile={"type": "Localhost", "localhostProfile": "x"}))) == ""
    p = pod(container("a", seccompProfile={"type": "Unconfined"}),
            securityContext={"seccompProfile": {"type": "Foo"}})
    assert baseline(p) == ('seccompProfile (pod and container "a" must not set '
                           'securityContext.seccompProfile.type to "Foo", "Unconfined")')


def test_seccomp_annotations_before_v1_19():
    p = pod(container("a"), annotations={
        "seccomp.security.alpha.kubernetes.io/pod": "unconfined",
        "container.seccomp.security.alpha.kubernetes.io/a": "docker/default"})
    assert baseline(p, "v1.18") == \
        'seccompProfile (forbidden annotation seccomp.security.alpha.kubernetes.io/pod="unconfined")'
    assert baseline(p, "v1.19") == ""  # from v1.19 the fields decide
    fields = pod(container(seccompProfile={"type": "Unconfined"}))
    assert baseline(fields, "v1.18") == ""


@pytest.mark.parametrize(("sysctl", "since"), [
    ("kernel.shm_rmid_forced", "v1.0"), ("net.ipv4.ip_local_port_range", "v1.0"),
    ("net.ipv4.ip_unprivileged_port_start", "v1.0"), ("net.ipv4.tcp_syncookies", "v1.0"),
    ("net.ipv4.ping_group_range", "v1.0"), ("net.ipv4.ip_local_reserved_ports", "v1.27"),
    ("net.ipv4.tcp_keepalive_time", "v1.29"), ("net.ipv4.tcp_fin_timeout", "v1.29"),
    ("net.ipv4.tcp_keepalive_intvl", "v1.29"), ("net.ipv4.tcp_keepalive_probes", "v1.29"),
    ("net.ipv4.tcp_rmem", "v1.32"), ("net.ipv4.tcp_wmem", "v1.32"),
])
def test_safe_sysctls_by_version(sysctl: str, since: str):
    p = pod(securityContext={"sysctls": [{"name": sysctl, "value": "1"}]})
    assert baseline(p, since) == baseline(p) == ""
    minor = int(since.split(".")[1])
    if minor:
        assert baseline(p, f"v1.{minor - 1}") == f"forbidden sysctls ({sysctl})"


def test_unsafe_sysctls_listed_in_order():
    names = ("vm.swappiness", "kernel.msgmax", "kernel.shm_rmid_forced")
    p = pod(securityContext={"sysctls": [{"name": n, "value": "1"} for n in names]})
    assert baseline(p) == "forbidden sysctls (vm.swappiness, kernel.msgmax)"


# ------------------------------------------------------------------ restricted checks


def test_restricted_refusal_reads_as_upstream():
    assert restricted(pod()) == (
        'allowPrivilegeEscalation != false (container "c" must set '
        'securityContext.allowPrivilegeEscalation=false), '
        'unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"]), '
        'runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true), '
        'seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to '
        '"RuntimeDefault" or "Localhost")')


def test_baseline_violations_come_before_restricted_ones():
    p = pod(good(privileged=True, allowPrivilegeEscalation=True), hostPID=True)
    assert restricted(p) == (
        'host namespaces (hostPID=true), '
        'privileged (container "c" must not set securityContext.privileged=true), '
        'allowPrivilegeEscalation != false (container "c" must set '
        'securityContext.allowPrivilegeEscalation=false)')


def test_restricted_volumes_replace_the_host_path_check():
    allowed = [{"name": k, k: {}} for k in ("configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                                            "persistentVolumeClaim", "projected", "secret")]
    assert restricted(pod(good(), volumes=allowed)) == ""
    p = pod(good(), volumes=[{"name": "a", "hostPath": {"path": "/"}}, {"name": "b", "nfs": {"server": "x"}},
                             {"name": "c", "gitRepo": {"repository": "r"}},
                             {"name": "d", "image": {"reference": "i"}}])
    assert restricted(p) == ('restricted volume types (volumes "a", "b", "c", "d" use restricted volume '
                             'types "gitRepo", "hostPath", "nfs", "unknown")')
    one = pod(good(), volumes=[{"name": "a", "hostPath": {"path": "/"}}])
    assert restricted(one) == 'restricted volume types (volume "a" uses restricted volume type "hostPath")'


def test_allow_privilege_escalation_since_v1_8():
    p = pod(good("a", allowPrivilegeEscalation=True), good("b"),
            initContainers=[good("i", allowPrivilegeEscalation=None)])
    want = ('allowPrivilegeEscalation != false (containers "i", "a" must set '
            'securityContext.allowPrivilegeEscalation=false)')
    assert restricted(p) == restricted(p, "v1.8") == want
    assert restricted(p, "v1.7") == ""


def test_run_as_non_root():
    pod_level = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert restricted(pod(good(runAsNonRoot=None), securityContext=pod_level)) == ""
    explicit = pod(good("a", runAsNonRoot=False), securityContext={"runAsNonRoot": False})
    assert restricted(explicit) == \
        'runAsNonRoot != true (pod and container "a" must not set securityContext.runAsNonRoot=false)'
    implicit = pod(good("a", runAsNonRoot=None), good("b", runAsNonRoot=None))
    assert restricted(implicit) == \
        'runAsNonRoot != true (pod or containers "a", "b" must set securityContext.runAsNonRoot=true)'


def test_run_as_user_since_v1_23():
    p = pod(good(runAsUser=0), securityContext={"runAsUser": 0})
    assert restricted(p) == 'runAsUser=0 (pod and container "c" must not set runAsUser=0)'
    assert restricted(p, "v1.22") == ""
    assert restricted(pod(good(runAsUser=1000))) == ""


def test_seccomp_restricted_since_v1_19():
    pod_level = {"seccompProfile": {"type": "RuntimeDefault"}}
    assert restricted(pod(good(seccompProfile=None), securityContext=pod_level)) == ""
    explicit = pod(good("a", seccompProfile={"type": "Unconfined"}), good("b"))
    assert restricted(explicit) == \
        'seccompProfile (container "a" must not set securityContext.seccompProfile.type to "Unconfined")'
    implicit = pod(good(seccompProfile=None), securityContext={"seccompProfile": {"type": "Unconfined"}})
    assert restricted(implicit) == \
        'seccompProfile (pod must not set securityContext.seccompProfile.type to "Unconfined")'
    # before v1.19 restricted has only the baseline annotation check
    assert restricted(pod(good(seccompProfile=None)), "v1.18") == ""
    ann = pod(good(seccompProfile=None),
              annotations={"seccomp.security.alpha.kubernetes.io/pod": "unconfined"})
    assert restricted(ann, "v1.18") == \
        'seccompProfile (forbidden annotation seccomp.security.alpha.kubernetes.io/pod="unconfined")'


def test_restricted_capabilities_since_v1_22():
    assert restricted(pod(good(capabilities={"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}))) == ""
    p = pod(good("a", capabilities={"drop": ["NET_RAW"], "add": ["CHOWN", "NET_BIND_SERVICE"]}),
            good("b", capabilities=None), good("c", capabilities={"drop": ["ALL"], "add": ["SYS_ADMIN"]}))
    assert restricted(p) == (
        'unrestricted capabilities (containers "a", "b" must set securityContext.capabilities.drop=["ALL"]; '
        'containers "a", "c" must not include "CHOWN", "SYS_ADMIN" in securityContext.capabilities.add)')
    # before v1.22 restricted used the baseline capability list
    assert restricted(p, "v1.21") == ('non-default capabilities (container "c" must not include '
                                      '"SYS_ADMIN" in securityContext.capabilities.add)')


def test_windows_pods_spared_linux_only_checks_from_v1_25():
    p = pod(container(), os={"name": "windows"}, securityContext={"runAsNonRoot": True})
    assert restricted(p) == restricted(p, "v1.25") == ""
    assert restricted(p, "v1.24").startswith("allowPrivilegeEscalation != false")


def test_ephemeral_containers_are_checked():
    p = pod(good(), ephemeralContainers=[{"name": "debug", "image": "busybox"}])
    assert restricted(p).startswith('allowPrivilegeEscalation != false (container "debug" must')


# ------------------------------------------------------------------ labels and versions


def test_versions_parse():
    assert parse_version("latest") == LATEST
    assert [str(parse_version(f"v1.{i}")) for i in (0, 9, 10, 32, 40)] == \
        ["v1.0", "v1.9", "v1.10", "v1.32", "v1.40"]
    for bad in ("v1.05", "v2.0", "1.2", "v1.", "v1.3\n", "Latest", ""):
        with pytest.raises(ValueError, match='must be "latest" or "v1.x"'):
            parse_version(bad)
    assert parse_level("baseline") == "baseline"
    with pytest.raises(ValueError, match="must be one of privileged, baseline, restricted"):
        parse_level("bogus")
    assert Version(3).older(Version(12)) and Version(40).older(LATEST) and not LATEST.older(Version(99))


def test_future_versions_evaluate_as_latest():
    p = pod(securityContext={"sysctls": [{"name": "net.ipv4.tcp_rmem", "value": "1"}]}, hostPID=True)
    assert baseline(p, "v1.99") == baseline(p) == baseline(p, "v1.32") == "host namespaces (hostPID=true)"


def test_policy_from_labels():
    default = Policy()
    labels = ns(enforce="baseline", enforce_version="v1.25", audit="restricted")["metadata"]["labels"]
    p, errs = policy_from_labels(labels, default)
    assert not errs
    assert (str(p.enforce), str(p.audit), str(p.warn)) == \
        ("baseline:v1.25", "restricted:latest", "baseline:v1.25")
    # an explicit warn label, or a laxer enforce, leaves warn alone
    p, _ = policy_from_labels({"pod-security.kubernetes.io/enforce": "restricted",
                               "pod-security.kubernetes.io/warn": "baseline"}, default)
    assert str(p.warn) == "baseline:latest"
    p, _ = policy_from_labels({"pod-security.kubernetes.io/enforce": "baseline",
                               "pod-security.kubernetes.io/warn-version": "v1.20"}, default)
    assert str(p.warn) == "baseline:v1.20"


def test_invalid_labels_fail_closed_for_enforce_and_open_for_the_others():
    labels = {"pod-security.kubernetes.io/enforce": "bogus", "pod-security.kubernetes.io/audit": "x",
              "pod-security.kubernetes.io/warn-version": "v9"}
    p, errs = policy_from_labels(labels, Policy())
    assert (str(p.enforce), str(p.audit), str(p.warn)) == ("restricted:latest", "privileged:latest",
                                                           "privileged:latest")
    assert [str(e) for e in errs] == [
        'metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: "bogus": '
        'must be one of privileged, baseline, restricted',
        'metadata.labels[pod-security.kubernetes.io/audit]: Invalid value: "x": '
        'must be one of privileged, baseline, restricted',
        'metadata.labels[pod-security.kubernetes.io/warn-version]: Invalid value: "v9": '
        'must be "latest" or "v1.x"']


def test_configured_defaults():
    psa = PodSecurity({"enforce": "baseline", "warn": "restricted", "warn-version": "v1.30"})
    p, _ = psa.policy(ns())
    assert (str(p.enforce), str(p.audit), str(p.warn)) == ("baseline:latest", "privileged:latest",
                                                           "restricted:v1.30")
    with pytest.raises(ValueError):
        PodSecurity({"enforce": "strict"})
    with pytest.raises(ValueError):
        PodSecurity({"enforcing": "baseline"})


def test_go_quote():
    assert go_quote('a"b\\c\n\x01é') == '"a\\"b\\\\c\\n\\x01é"'


# ------------------------------------------------------------------ pods


async def test_enforce_refuses_with_upstream_message():
    psa = PodSecurity()
    warnings: list[str] = []
    audit: dict[str, str] = {}
    with pytest.raises(StatusError) as e:
        await psa.admit_pod(ns(enforce="restricted"), pod(), None, "alice", (), warnings, audit=audit)
    err = e.value
    assert (err.code, err.reason) == (403, "Forbidden")
    assert err.message == (
        'pods "web" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != '
        'false (container "c" must set securityContext.allowPrivilegeEscalation=false), unrestricted '
        'capabilities (container "c" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != '
        'true (pod or container "c" must set securityContext.runAsNonRoot=true), seccompProfile (pod or '
        'container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")')
    assert err.details == {"name": "web", "kind": "pods"}
    assert warnings == []  # warn follows enforce, but a refused request gets no warnings
    assert audit == {"pod-security.kubernetes.io/enforce-policy": "restricted:latest"}


async def test_allowed_pod_under_enforce_records_the_policy():
    audit: dict[str, str] = {}
    warnings: list[str] = []
    await PodSecurity().admit_pod(ns(enforce="restricted", enforce_version="v1.30"), pod(good()), None,
                                  "alice", (), warnings, audit=audit)
    assert warnings == [] and audit == {"pod-security.kubernetes.io/enforce-policy": "restricted:v1.30"}


async def test_warnings_and_audit_annotations():
    warnings: list[str] = []
    audit: dict[str, str] = {}
    labels = ns(enforce="baseline", warn="restricted", audit="restricted", audit_version="v1.20")
    await PodSecurity().admit_pod(labels, pod(good(runAsNonRoot=None)), None, "alice", (), warnings,
                                  audit=audit)
    assert warnings == ['would violate PodSecurity "restricted:latest": runAsNonRoot != true '
                        '(pod or container "c" must set securityContext.runAsNonRoot=true)']
    assert audit == {
        "pod-security.kubernetes.io/enforce-policy": "baseline:latest",
        "pod-security.kubernetes.io/audit-violations": (
            'would violate PodSecurity "restricted:v1.20": runAsNonRoot != true (pod or container "c" must '
            'set securityContext.runAsNonRoot=true)')}


async def test_baseline_enforce_refuses_host_network_and_a_nameless_pod_reads_right():
    p = pod(hostNetwork=True, name="")
    with pytest.raises(StatusError) as e:
        await PodSecurity().admit_pod(ns(enforce="baseline"), p, None, "alice", (), [])
    assert e.value.message == 'pods is forbidden: violates PodSecurity "baseline:latest": host namespaces ' \
                              '(hostNetwork=true)'


async def test_privileged_namespace_short_circuits():
    audit: dict[str, str] = {}
    await PodSecurity().admit_pod(ns(), pod(container(privileged=True)), None, "alice", (), [], audit=audit)
    assert audit == {"pod-security.kubernetes.io/enforce-policy": "privileged:latest"}


async def test_invalid_namespace_labels_fail_closed_on_pods():
    audit: dict[str, str] = {}
    with pytest.raises(StatusError, match='violates PodSecurity "restricted:latest"'):
        await PodSecurity().admit_pod(ns(enforce="bogus"), pod(), None, "alice", (), [], audit=audit)
    assert audit["pod-security.kubernetes.io/error"] == (
        'Failed to parse policy: metadata.labels[pod-security.kubernetes.io/enforce]: '
        'Invalid value: "bogus": must be one of privileged, baseline, restricted')


async def test_exemptions():
    psa = PodSecurity(exempt_usernames=["system:serviceaccount:kube-system:replicaset-controller"],
                      exempt_namespaces=["kube-system"], exempt_runtime_classes=["kata"])
    bad = pod(container(privileged=True))
    for namespace, user, spec_extra, why in (
            ("kube-system", "alice", {}, "namespace"),
            ("shop", "system:serviceaccount:kube-system:replicaset-controller", {}, "user"),
            ("shop", "alice", {"runtimeClassName": "kata"}, "runtimeClass")):
        p = copy.deepcopy(bad)
        p["metadata"]["namespace"] = namespace
        p["spec"].update(spec_extra)
        audit: dict[str, str] = {}
        await psa.admit_pod(ns(namespace, enforce="restricted"), p, None, user, (), [], audit=audit)
        assert audit == {"pod-security.kubernetes.io/exempt": why}
    with pytest.raises(StatusError):
        p = copy.deepcopy(bad)
        p["spec"]["runtimeClassName"] = "runc"
        await psa.admit_pod(ns(enforce="restricted"), p, None, "alice", (), [])


async def test_missing_namespace_is_an_internal_error():
    with pytest.raises(StatusError) as e:
        await PodSecurity().admit_pod(None, pod(), None, "alice", (), [])
    assert (e.value.code, e.value.message) == \
        (500, 'Internal error occurred: failed to lookup namespace "shop"')


async def test_updates_only_reevaluate_images_and_new_ephemeral_containers():
    psa = PodSecurity()
    strict = ns(enforce="restricted")
    old = pod(container(privileged=True))  # admitted before the namespace was labelled
    relabelled = copy.deepcopy(old)
    relabelled["metadata"]["labels"] = {"app": "web"}
    relabelled["spec"]["activeDeadlineSeconds"] = 30
    await psa.admit_pod(strict, relabelled, old, "alice", (), [])
    assert not significant_pod_update(relabelled, old)
    new_image = copy.deepcopy(old)
    new_image["spec"]["containers"][0]["image"] = "busybox:2"
    with pytest.raises(StatusError):
        await psa.admit_pod(strict, new_image, old, "alice", (), [])
    debug = copy.deepcopy(old)
    debug["spec"]["ephemeralContainers"] = [{"name": "debug", "image": "busybox"}]
    assert significant_pod_update(debug, old)
    with pytest.raises(StatusError):
        await psa.admit_pod(strict, debug, old, "alice", (), [], subresource="ephemeralcontainers")
    # status, binding, exec ... never change what the checks see
    await psa.admit_pod(strict, new_image, old, "alice", (), [], subresource="status")


# ------------------------------------------------------------------ namespaces


def test_namespace_create_refuses_invalid_labels():
    with pytest.raises(StatusError) as e:
        PodSecurity().check_namespace(ns(enforce="bogus"), None, [], [])
    assert (e.value.code, e.value.reason) == (422, "Invalid")
    assert e.value.message == ('Namespace "shop" is invalid: '
                               'metadata.labels[pod-security.kubernetes.io/enforce]: '
                               'Invalid value: "bogus": must be one of privileged, baseline, restricted')
    PodSecurity().check_namespace(ns(enforce="restricted", warn_version="v1.30"), None, [], [])


def test_namespace_update_with_unchanged_invalid_labels_passes():
    old = ns(enforce="bogus")
    new = copy.deepcopy(old)
    new["metadata"]["labels"]["team"] = "a"
    PodSecurity().check_namespace(new, old, [], [])
    worse = ns(enforce="bogus", audit="nope")
    with pytest.raises(StatusError) as e:
        PodSecurity().check_namespace(worse, old, [], [])
    assert e.value.message.startswith('Namespace "shop" is invalid: [metadata.labels[')


def test_tightening_enforce_warns_about_existing_pods():
    bad = pod(container(privileged=True), name="web")
    same = [pod(container(privileged=True), name=n) for n in ("zeta", "alpha")]
    other = pod(hostPID=True, name="db")
    fine = pod(name="ok")
    warnings: list[str] = []
    PodSecurity().check_namespace(ns(enforce="baseline"), ns(), [bad, *same, other, fine], warnings)
    assert warnings == [
        'existing pods in namespace "shop" violate the new PodSecurity enforce level "baseline:latest"',
        "alpha (and 2 other pods): privileged",
        "db: host namespaces"]
    warnings = []
    PodSecurity().check_namespace(ns(enforce="restricted"), ns(), [fine, bad], warnings)
    assert warnings == [
        'existing pods in namespace "shop" violate the new PodSecurity enforce level "restricted:latest"',
        "ok: allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, "
        "seccompProfile",
        "web: privileged, allowPrivilegeEscalation != false, unrestricted capabilities, "
        "runAsNonRoot != true, seccompProfile"]


def test_relaxing_or_keeping_enforce_checks_nothing():
    bad = [pod(container(privileged=True))]
    for new, old in ((ns(enforce="baseline"), ns(enforce="restricted")),
                     (ns(enforce="restricted"), ns(enforce="restricted")),
                     (ns(enforce="privileged"), ns(enforce="baseline"))):
        warnings: list[str] = []
        PodSecurity().check_namespace(new, old, bad, warnings)
        assert warnings == []
    # a new version at a laxer level is still checked
    warnings = []
    PodSecurity().check_namespace(ns(enforce="baseline", enforce_version="v1.30"), ns(enforce="restricted"),
                                  bad, warnings)
    assert warnings[1:] == ["web: privileged"]


def test_namespace_pod_limit_and_one_pod_per_controller_first():
    def owned(name: str, uid: str) -> dict[str, Any]:
        p = pod(container(privileged=True), name=name)
        p["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                                             "uid": uid, "controller": True}]
        return p
    pods = [owned("rs-a-1", "a"), owned("rs-a-2", "a"), owned("rs-b-1", "b"), pod(hostIPC=True, name="solo")]
    psa = PodSecurity(namespace_max_pods=3)
    warnings: list[str] = []
    psa.check_namespace(ns(enforce="baseline"), ns(), pods, warnings)
    assert warnings == [
        "new PodSecurity enforce level only checked against the first 3 of 4 existing pods",
        'existing pods in namespace "shop" violate the new PodSecurity enforce level "baseline:latest"',
        "rs-a-1 (and 1 other pod): privileged",
        "solo: host namespaces"]


def test_exempt_namespace_gets_a_warning_instead():
    psa = PodSecurity(exempt_namespaces=["kube-system"])
    warnings: list[str] = []
    psa.check_namespace(ns("kube-system", enforce="restricted", enforce_version="v1.0", audit="restricted",
                           warn="baseline"), None, [], warnings)
    assert warnings == ['namespace "kube-system" is exempt from Pod Security, and the policy '
                        '(enforce=restricted:v1.0, audit=restricted:latest, warn=baseline:latest) '
                        'will be ignored']
    warnings = []
    psa.check_namespace(ns("kube-system", enforce="restricted"), ns("kube-system"),
                        [pod(container(privileged=True))], warnings)
    assert warnings == ['namespace "kube-system" is exempt from Pod Security, and the policy '
                        '(enforce=restricted:latest) will be ignored']


# ------------------------------------------------------------------ workloads


def deployment(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": spec}}}


def test_workloads_warn_but_never_refuse():
    warnings: list[str] = []
    audit: dict[str, str] = {}
    PodSecurity().check_workload(ns(enforce="baseline"), "Deployment", deployment({
        "containers": [container(privileged=True)]}), warnings, audit=audit)
    assert warnings == ['would violate PodSecurity "baseline:latest": privileged '
                        '(container "c" must not set securityContext.privileged=true)']
    assert audit == {}  # audit stays privileged, and enforce is not evaluated for templates


def test_cronjob_template_and_audit():
    cj = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly", "namespace": "shop"},
          "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": {
              "metadata": {"annotations": {"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}},
              "spec": {"containers": [container()], "restartPolicy": "OnFailure"}}}}}}
    warnings: list[str] = []
    audit: dict[str, str] = {}
    PodSecurity().check_workload(ns(audit="baseline"), "CronJob", cj, warnings, audit=audit)
    assert warnings == []
    assert audit == {"pod-security.kubernetes.io/audit-violations": (
        'would violate PodSecurity "baseline:latest": forbidden AppArmor profile (annotation must not set '
        'AppArmor profile type to "container.apparmor.security.beta.kubernetes.io/c="unconfined"")')}


def test_workload_explicit_privileged_warn_and_other_kinds():
    psa = PodSecurity(exempt_usernames=["bob"])
    bad = deployment({"containers": [container(privileged=True)]})
    strict = ns(enforce="restricted")
    for args, kwargs in (((ns(enforce="restricted", warn="privileged"), "Deployment", bad), {}),
                         ((strict, "Deployment", bad), {"user": "bob"}),
                         ((strict, "Deployment", bad), {"subresource": "scale"}),
                         ((strict, "ConfigMap", {"apiVersion": "v1", "kind": "ConfigMap"}), {}),
                         ((strict, "Deployment", {**bad, "apiVersion": "example.com/v1"}), {})):
        warnings: list[str] = []
        psa.check_workload(*args, warnings, **kwargs)
        assert warnings == []
    template = {"spec": {"hostPID": True}}
    for kind, obj in (("PodTemplate", {"apiVersion": "v1", "template": template}),
                      ("ReplicationController", {"apiVersion": "v1", "spec": {"template": template}}),
                      ("Job", {"apiVersion": "batch/v1", "spec": {"template": template}})):
        warnings = []
        psa.check_workload(ns(enforce="baseline"), kind, obj, warnings)
        assert warnings == ['would violate PodSecurity "baseline:latest": host namespaces (hostPID=true)']
    warnings = []
    psa.check_workload(ns(enforce="baseline"), "ReplicationController", {"apiVersion": "v1", "spec": {}},
                       warnings)
    assert warnings == []
