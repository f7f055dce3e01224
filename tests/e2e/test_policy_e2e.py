"""Admission that enforces, through the real kubectl: Pod Security, ResourceQuota, LimitRange."""

from __future__ import annotations

import json

from .conftest import Server, needs_kubectl, wait_for

pytestmark = [needs_kubectl]


def pending_pod(name: str, ns: str, **container: object) -> str:
    """A pod no node takes (its nodeSelector matches none), so it only has to be admitted."""
    c = {"name": "c", "image": "busybox", "command": ["sleep", "3600"], **container}
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
                       "spec": {"nodeSelector": {"kybernetes.test/none": "x"}, "containers": [c]}})


def test_pod_security_enforce_and_warn(server: Server):
    server.kubectl("create", "namespace", "psa")
    server.kubectl("apply", "-f", "-", input=pending_pod("root", "psa", securityContext={"privileged": True}))
    p = server.kubectl("label", "ns", "psa", "pod-security.kubernetes.io/enforce=restricted", check=False)
    assert p.returncode == 0, p.stderr
    # Labelling warns about the pods already there, as upstream's kubectl shows it.
    assert 'existing pods in namespace "psa" violate the new PodSecurity enforce level "restricted:latest"' \
        in p.stderr, p.stderr
    p = server.kubectl("apply", "-f", "-", input=pending_pod("web", "psa"), check=False)
    assert p.returncode != 0
    assert 'pods "web" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false' \
        in p.stderr, p.stderr
    assert 'runAsNonRoot != true' in p.stderr and 'seccompProfile' in p.stderr, p.stderr
    good = pending_pod("good", "psa", securityContext={
        "allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 1000,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}})
    p = server.kubectl("apply", "-f", "-", input=good, check=False)
    assert p.returncode == 0, p.stderr
    # A workload whose template would be refused is admitted with a warning.
    p = server.kubectl("create", "deployment", "d", "--image=busybox", "-n", "psa", check=False)
    assert p.returncode == 0 and 'would violate PodSecurity "restricted:latest"' in p.stderr, p.stderr
    p = server.kubectl("label", "ns", "psa", "pod-security.kubernetes.io/enforce=bogus", "--overwrite", check=False)
    assert p.returncode != 0 and "must be one of privileged, baseline, restricted" in p.stderr, p.stderr


def test_resource_quota(server: Server):
    server.kubectl("create", "namespace", "quota")
    server.kubectl("create", "quota", "q", "--hard=pods=2,requests.cpu=1", "-n", "quota")
    wait_for(lambda: server.kjson("get", "quota", "q", "-n", "quota").get("status", {}).get("hard"))
    for name in ("a", "b"):
        p = server.kubectl("apply", "-f", "-", input=pending_pod(name, "quota",
                                                                 resources={"requests": {"cpu": "100m"}}),
                           check=False)
        assert p.returncode == 0, p.stderr
    p = server.kubectl("apply", "-f", "-", input=pending_pod("c", "quota", resources={"requests": {"cpu": "100m"}}),
                       check=False)
    assert p.returncode != 0
    assert ('pods "c" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2'
            in p.stderr), p.stderr
    used = server.kjson("get", "quota", "q", "-n", "quota")["status"]["used"]
    assert used["pods"] == "2" and used["requests.cpu"] == "200m", used
    # A pod without the cpu request the quota tracks is refused for that, not counted.
    p = server.kubectl("apply", "-f", "-", input=pending_pod("d", "quota"), check=False)
    assert p.returncode != 0 and "must specify requests.cpu" in p.stderr, p.stderr
    # Deleting a pod gives its share back (the resourcequota controller recounts).
    server.kubectl("delete", "pod", "a", "-n", "quota", "--wait=false")
    wait_for(lambda: server.kjson("get", "quota", "q", "-n", "quota")["status"]["used"]["pods"] == "1",
             timeout=30)
    described = server.kubectl("describe", "quota", "q", "-n", "quota").stdout
    assert "pods" in described and "requests.cpu" in described, described


LIMITS = """\
apiVersion: v1
kind: LimitRange
metadata: {name: limits, namespace: lr}
spec:
  limits:
  - type: Container
    default: {cpu: 500m, memory: 256Mi}
    defaultRequest: {cpu: 100m, memory: 64Mi}
    max: {cpu: "1"}
"""


def test_limit_range(server: Server):
    server.kubectl("create", "namespace", "lr")
    server.kubectl("apply", "-f", "-", input=LIMITS)
    wait_for(lambda: server.kubectl("get", "limitrange", "limits", "-n", "lr", check=False).returncode == 0)
    server.kubectl("apply", "-f", "-", input=pending_pod("p", "lr"))
    c = server.kjson("get", "pod", "p", "-n", "lr")["spec"]["containers"][0]
    assert c["resources"] == {"limits": {"cpu": "500m", "memory": "256Mi"},
                              "requests": {"cpu": "100m", "memory": "64Mi"}}, c
    p = server.kubectl("apply", "-f", "-", input=pending_pod("big", "lr", resources={"limits": {"cpu": "2"}}),
                       check=False)
    assert p.returncode != 0 and "maximum cpu usage per Container is 1" in p.stderr, p.stderr


AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  resources: [{group: coordination.k8s.io, resources: [leases]}]
- level: RequestResponse
  resources: [{group: "", resources: [configmaps]}]
- level: Metadata
"""


def test_audit_log(tmp_path):
    from .conftest import free_port
    policy = tmp_path / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY)
    log = tmp_path / "audit.log"
    s = Server(tmp_path / "kyb", free_port(),
               ["--audit-policy-file", str(policy), "--audit-log-path", str(log)])
    s.data_dir.mkdir()
    s.start()
    try:
        s.kubectl("create", "configmap", "audited", "--from-literal=k=v")
        s.kubectl("get", "pods", "--as=mallory", check=False)

        def events():
            return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        wait_for(lambda: any(e.get("objectRef", {}).get("name") == "audited" for e in events()), timeout=10)
        created = next(e for e in events() if e.get("objectRef", {}).get("name") == "audited"
                       and e["verb"] == "create")
        assert created["kind"] == "Event" and created["apiVersion"] == "audit.k8s.io/v1"
        assert created["level"] == "RequestResponse" and created["stage"] == "ResponseComplete"
        assert created["user"]["username"] == "kubernetes-admin" and created["responseStatus"]["code"] == 201
        assert created["requestObject"]["data"] == {"k": "v"} and created["responseObject"]["metadata"]["uid"]
        assert created["annotations"]["authorization.k8s.io/decision"] == "allow"
        def mallorys_list():
            return next((e for e in events() if e.get("impersonatedUser", {}).get("username") == "mallory"
                         and e.get("objectRef", {}).get("resource") == "pods"), None)
        denied = wait_for(mallorys_list, timeout=10)
        assert denied["level"] == "Metadata" and "requestObject" not in denied
        assert denied["responseStatus"]["code"] == 403
        assert denied["annotations"]["authorization.k8s.io/decision"] == "forbid"
        assert not any(e.get("objectRef", {}).get("resource") == "leases" for e in events())
        assert all(e["stage"] != "RequestReceived" for e in events())
    finally:
        s.stop()
