"""Semantic validation and defaulting of built-in kinds, checked against upstream messages."""

import copy

import pytest

from kybernetes.api.errors import invalid_object
from kybernetes.api.validation import (
    apply_defaults,
    is_dns1123_label,
    parse_cron,
    validate,
    validate_object_meta,
)


def msgs(errs):
    return [str(e) for e in errs]


def pod(**spec):
    base = {"containers": [{"name": "app", "image": "nginx:1.27"}]}
    base.update(spec)
    obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"}, "spec": base}
    apply_defaults("Pod", "", obj)
    return obj


def check(kind, group, obj, old=None):
    return msgs(validate(kind, group, obj, old))


def deployment(labels=None, selector=None, **spec):
    labels = {"app": "web"} if labels is None else labels
    obj = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}} if selector is None else selector,
            "template": {"metadata": {"labels": labels},
                         "spec": {"containers": [{"name": "web", "image": "nginx"}]}},
            **spec,
        },
    }
    apply_defaults("Deployment", "apps", obj)
    return obj


# --- metadata ------------------------------------------------------------------------------------------


def test_bad_name_message_matches_upstream():
    errs = validate_object_meta({"name": "Bad_Name", "namespace": "default"}, namespaced=True)
    assert msgs(errs) == [
        ("metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of lower case "
        "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. "
        "'example.com', regex used for validation is "
        "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")]


def test_name_required_unless_generate_name():
    assert msgs(validate_object_meta({"namespace": "d"}, namespaced=True)) == [
        "metadata.name: Required value: name or generateName is required"]
    assert validate_object_meta({"generateName": "web-", "namespace": "d"}, namespaced=True) == []


def test_namespace_rules():
    assert msgs(validate_object_meta({"name": "x"}, namespaced=True)) == ["metadata.namespace: Required value"]
    assert msgs(validate_object_meta({"name": "x", "namespace": "d"}, namespaced=False)) == [
        "metadata.namespace: Forbidden: not allowed on this type"]
    assert msgs(validate_object_meta({"name": "x", "namespace": "a.b"}, namespaced=True)) == [
        'metadata.namespace: Invalid value: "a.b": must not contain dots']


def test_name_rules_per_kind():
    ns = {"metadata": {"name": "my.ns"}}
    assert check("Namespace", "", ns) == ['metadata.name: Invalid value: "my.ns": must not contain dots']
    svc = {"metadata": {"name": "1svc", "namespace": "d"}, "spec": {"ports": [{"port": 80, "protocol": "TCP"}]}}
    out = check("Service", "", svc)
    assert out[0].startswith('metadata.name: Invalid value: "1svc": a DNS-1035 label must consist of lower case')
    role = {"metadata": {"name": "system:controller:x", "namespace": "d"}}
    assert check("Role", "rbac.authorization.k8s.io", role) == []
    assert check("Role", "rbac.authorization.k8s.io", {"metadata": {"name": "a/b", "namespace": "d"}}) == [
        "metadata.name: Invalid value: \"a/b\": may not contain '/'"]
    assert is_dns1123_label("x" * 64) == ["must be no more than 63 characters"]


def test_labels_annotations_finalizers_owner_refs():
    meta = {
        "name": "x", "namespace": "d",
        "labels": {"ok": "v", "bad key": "v", "k": "-bad-"},
        "annotations": {"Example.com/Key": "fine", "big": "x" * (256 * 1024)},
        "finalizers": ["example.com/f", "bad finalizer", "orphan", "foregroundDeletion"],
        "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "1", "controller": True},
            {"apiVersion": "", "kind": "", "name": "", "uid": "", "controller": True},
        ],
    }
    out = msgs(validate_object_meta(meta, namespaced=True))
    assert any(m.startswith('metadata.labels: Invalid value: "bad key": name part must consist of') for m in out)
    assert any(m.startswith('metadata.labels: Invalid value: "-bad-": a valid label must be an empty string')
               for m in out)
    assert "metadata.annotations: Too long: may not be more than 262144 bytes" in out
    assert not any("Example.com/Key" in m for m in out)  # annotation keys are case-insensitive
    assert any(m.startswith('metadata.finalizers: Invalid value: "bad finalizer"') for m in out)
    assert any("finalizer orphan and foregroundDeletion cannot be both set" in m for m in out)
    for f in ("apiVersion", "kind", "name", "uid"):
        assert any(m.startswith(f"metadata.ownerReferences.{f}: Invalid value: \"\":") for m in out)
    assert any("Only one reference can have Controller set to true. Found \"true\" in references for "
               "ReplicaSet/rs and /" in m for m in out)


def test_metadata_update_immutables():
    old = {"metadata": {"name": "a", "namespace": "d", "uid": "u1"}, "data": {}}
    new = copy.deepcopy(old)
    new["metadata"]["uid"] = "u2"
    assert check("ConfigMap", "", new, old) == ['metadata.uid: Invalid value: "u2": field is immutable']
    old["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    new = copy.deepcopy(old)
    new["metadata"]["finalizers"] = ["example.com/x"]
    assert check("ConfigMap", "", new, old) == [
        ('metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, '
        'found new finalizers []string{"example.com/x"}')]


# --- pods --------------------------------------------------------------------------------------------------


def test_valid_pod_has_no_errors():
    assert check("Pod", "", pod()) == []


def test_missing_image():
    p = pod(containers=[{"name": "app"}])
    assert check("Pod", "", p) == ["spec.containers[0].image: Required value"]
    err = invalid_object("Pod", "", "p", validate("Pod", "", p, None))
    assert err.message == 'Pod "p" is invalid: spec.containers[0].image: Required value'
    assert err.details["causes"] == [{"reason": "FieldValueRequired", "message": "Required value",
                                      "field": "spec.containers[0].image"}]


def test_containers_required_and_names():
    assert check("Pod", "", pod(containers=[])) == ["spec.containers: Required value"]
    out = check("Pod", "", pod(containers=[{"name": "a", "image": "x"}, {"name": "a", "image": "x"}],
                               initContainers=[{"name": "a", "image": "x"}, {"name": "Bad", "image": "x"}]))
    assert 'spec.containers[1].name: Duplicate value: "a"' in out
    assert 'spec.initContainers[0].name: Duplicate value: "a"' in out
    assert any(m.startswith('spec.initContainers[1].name: Invalid value: "Bad": a lowercase RFC 1123 label')
               for m in out)
    assert check("Pod", "", pod(containers=[{"image": "x"}])) == ["spec.containers[0].name: Required value"]


def test_ports():
    p = pod(containers=[{"name": "a", "image": "x", "ports": [
        {"containerPort": 70000}, {"containerPort": 80, "protocol": "HTTP"}, {"containerPort": 81, "name": "Web"},
        {"containerPort": 82, "name": "web"}, {"containerPort": 83, "name": "web"}, {"name": "x"}]}])
    out = check("Pod", "", p)
    assert "spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, " \
           "inclusive" in out
    assert 'spec.containers[0].ports[1].protocol: Unsupported value: "HTTP": supported values: "SCTP", "TCP", ' \
           '"UDP"' in out
    assert 'spec.containers[0].ports[2].name: Invalid value: "Web": must contain only alpha-numeric characters ' \
           '(a-z, 0-9), and hyphens (-)' in out
    assert 'spec.containers[0].ports[4].name: Duplicate value: "web"' in out
    assert "spec.containers[0].ports[5].containerPort: Required value" in out


def test_policies_env_and_resources():
    p = pod(restartPolicy="Sometimes", dnsPolicy="Weird", containers=[{
        "name": "a", "image": "x", "imagePullPolicy": "Maybe",
        "env": [{"name": "A=B"}, {"name": "X", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "x"}}},
                {"name": "Y", "valueFrom": {}}],
        "resources": {"requests": {"cpu": "2", "memory": "bogus"}, "limits": {"cpu": "1", "gpu": "1"}},
    }])
    out = check("Pod", "", p)
    assert 'spec.restartPolicy: Unsupported value: "Sometimes": supported values: "Always", "OnFailure", ' \
           '"Never"' in out
    assert any(m.startswith('spec.dnsPolicy: Unsupported value: "Weird"') for m in out)
    assert any(m.startswith('spec.containers[0].imagePullPolicy: Unsupported value: "Maybe"') for m in out)
    assert 'spec.containers[0].env[0].name: Invalid value: "A=B": a valid environment variable name must ' \
           "consist only of printable ASCII characters other than '='" in out
    assert 'spec.containers[0].env[1].valueFrom: Invalid value: "": may not be specified when `value` is ' \
           'not empty' in out
    assert any(m.startswith("spec.containers[0].env[2].valueFrom: Invalid value: \"\": must specify one of")
               for m in out)
    assert 'spec.containers[0].resources.requests: Invalid value: "2": must be less than or equal to cpu limit ' \
           'of 1' in out
    assert any(m.startswith('spec.containers[0].resources.requests[memory]: Invalid value: "bogus": '
                            "quantities must match") for m in out)
    assert 'spec.containers[0].resources.limits[gpu]: Invalid value: "gpu": must be a standard resource for ' \
           'containers' in out


def test_volumes_and_mounts():
    p = pod(volumes=[{"name": "data", "emptyDir": {}, "hostPath": {"path": "/x"}}, {"name": "data"},
                     {"name": "cfg", "configMap": {}}],
            containers=[{"name": "a", "image": "x", "volumeMounts": [
                {"name": "nope", "mountPath": "/a"}, {"name": "cfg", "mountPath": "/a"}]}])
    out = check("Pod", "", p)
    assert "spec.volumes[0].hostPath: Forbidden: may not specify more than 1 volume type" in out
    assert 'spec.volumes[1].name: Duplicate value: "data"' in out
    assert "spec.volumes[2].configMap.name: Required value" in out
    assert 'spec.containers[0].volumeMounts[0].name: Not found: "nope"' in out
    assert 'spec.containers[0].volumeMounts[1].mountPath: Invalid value: "/a": must be unique' in out
    # a volume without a source is defaulted to emptyDir, so only raw objects can lack one
    raw = {"metadata": {"name": "p", "namespace": "d"}, "spec": {
        "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "volumes": [{"name": "v"}],
        "containers": [{"name": "a", "image": "x"}]}}
    assert check("Pod", "", raw) == ["spec.volumes[0]: Required value: must specify a volume type"]


def test_tolerations():
    p = pod(tolerations=[{"operator": "Equal", "value": "x"}, {"key": "k", "effect": "NoSchedule",
                                                                "tolerationSeconds": 5}])
    out = check("Pod", "", p)
    assert 'spec.tolerations[0].operator: Invalid value: "Equal": operator must be Exists when `key` is empty, ' \
           'which means "match all values and all keys"' in out
    assert "spec.tolerations[1].effect: Invalid value: \"NoSchedule\": effect must be 'NoExecute' when " \
           "`tolerationSeconds` is set" in out


def test_pod_update_only_mutable_fields():
    old = pod(activeDeadlineSeconds=100)
    new = copy.deepcopy(old)
    new["spec"]["containers"][0]["image"] = "nginx:1.28"
    new["spec"]["activeDeadlineSeconds"] = 50
    new["spec"]["tolerations"].append({"key": "k", "operator": "Exists"})
    assert check("Pod", "", new, old) == []
    bad = copy.deepcopy(old)
    bad["spec"]["containers"][0]["name"] = "renamed"
    out = check("Pod", "", bad, old)
    assert len(out) == 1
    assert out[0].startswith("spec: Forbidden: pod updates may not change fields other than "
                             "`spec.containers[*].image`,`spec.initContainers[*].image`,"
                             "`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing "
                             "tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it "
                             "was previously negative)")
    assert 'spec.containers[0].name: "app" -> "renamed"' in out[0]
    longer = copy.deepcopy(old)
    longer["spec"]["activeDeadlineSeconds"] = 200
    assert check("Pod", "", longer, old) == [
        "spec.activeDeadlineSeconds: Invalid value: 200: must be less than or equal to previous value"]
    removed = copy.deepcopy(old)
    removed["spec"]["tolerations"] = []
    assert check("Pod", "", removed, old) == [
        "spec.tolerations: Forbidden: existing toleration can not be modified except its tolerationSeconds"]
    noimage = copy.deepcopy(old)
    noimage["spec"]["containers"][0]["image"] = ""
    assert check("Pod", "", noimage, old) == ["spec.containers[0].image: Required value"]


# --- workloads ---------------------------------------------------------------------------------------------


def test_valid_deployment():
    assert check("Deployment", "apps", deployment()) == []


def test_selector_mismatch_message():
    d = deployment(labels={"app": "other", "tier": "x"})
    assert check("Deployment", "apps", d) == [
        ('spec.template.metadata.labels: Invalid value: map[string]string{"app":"other", "tier":"x"}: '
        '`selector` does not match template `labels`')]
    err = invalid_object("Deployment", "apps", "web", validate("Deployment", "apps", d, None))
    assert err.message.startswith('Deployment.apps "web" is invalid: spec.template.metadata.labels:')
    assert err.code == 422


def test_deployment_selector_rules():
    d = deployment()
    del d["spec"]["selector"]
    assert check("Deployment", "apps", d) == ["spec.selector: Required value"]
    d = deployment(selector={})
    assert check("Deployment", "apps", d) == [
        ("spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string(nil), "
        "MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: empty selector is invalid for deployment")]
    old = deployment()
    new = deployment(labels={"app": "web2"}, selector={"matchLabels": {"app": "web2"}})
    assert check("Deployment", "apps", new, old) == [
        ('spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{"app":"web2"}, '
        'MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable')]


def test_deployment_spec_rules():
    d = deployment(replicas=-1, strategy={"type": "Recreate", "rollingUpdate": {"maxSurge": 1}})
    d["spec"]["template"]["spec"]["restartPolicy"] = "Never"
    out = check("Deployment", "apps", d)
    assert "spec.replicas: Invalid value: -1: must be greater than or equal to 0" in out
    assert "spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'Recreate'" in out
    assert 'spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always"' in out
    d = deployment(strategy={"type": "Blue"})
    assert check("Deployment", "apps", d) == [
        'spec.strategy.type: Unsupported value: "Blue": supported values: "Recreate", "RollingUpdate"']
    d = deployment(strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}})
    assert check("Deployment", "apps", d) == [
        'spec.strategy.rollingUpdate.maxUnavailable: Invalid value: "0%": may not be 0 when `maxSurge` is 0']
    d = deployment(strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "150%"}})
    assert check("Deployment", "apps", d) == [
        'spec.strategy.rollingUpdate.maxSurge: Invalid value: "150%": must not be greater than 100%']
    d = deployment(minReadySeconds=700)
    assert check("Deployment", "apps", d) == [
        "spec.progressDeadlineSeconds: Invalid value: 600: must be greater than minReadySeconds"]
    d = deployment()
    d["spec"]["template"]["spec"]["containers"][0]["image"] = ""
    assert check("Deployment", "apps", d) == ["spec.template.spec.containers[0].image: Required value"]


def test_replicaset_statefulset_daemonset():
    for kind, word in (("ReplicaSet", "deployment"), ("StatefulSet", "statefulset"), ("DaemonSet", "daemonset")):
        obj = deployment()
        obj["kind"] = kind
        del obj["spec"]["strategy"], obj["spec"]["progressDeadlineSeconds"]
        apply_defaults(kind, "apps", obj)
        assert check(kind, "apps", obj) == [], kind
        obj["spec"]["selector"] = {"matchLabels": {}}
        assert check(kind, "apps", obj)[0].endswith(f"empty selector is invalid for {word}")
    sts = deployment()
    del sts["spec"]["strategy"]
    apply_defaults("StatefulSet", "apps", sts)
    new = copy.deepcopy(sts)
    new["spec"]["serviceName"] = "other"
    assert check("StatefulSet", "apps", new, sts) == [
        ("spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', "
        "'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden")]
    new = copy.deepcopy(sts)
    new["spec"]["replicas"] = 5
    assert check("StatefulSet", "apps", new, sts) == []
    ds = deployment()
    del ds["spec"]["strategy"]
    apply_defaults("DaemonSet", "apps", ds)
    ds["spec"]["updateStrategy"]["rollingUpdate"] = {"maxUnavailable": 1, "maxSurge": 1}
    assert check("DaemonSet", "apps", ds) == [
        ("spec.updateStrategy.rollingUpdate.maxSurge: Invalid value: 1: may not be set when maxUnavailable is "
        "non-zero")]


def job(**spec):
    obj = {"metadata": {"name": "pi", "namespace": "d"}, "spec": {
        "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "pi", "image": "perl"}]}},
        **spec}}
    apply_defaults("Job", "batch", obj)
    return obj


def test_job_rules():
    assert check("Job", "batch", job()) == []
    j = job(parallelism=-1, completionMode="Indexed")
    j["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    out = check("Job", "batch", j)
    assert "spec.parallelism: Invalid value: -1: must be greater than or equal to 0" in out
    assert 'spec.template.spec.restartPolicy: Unsupported value: "Always": supported values: "OnFailure", ' \
           '"Never"' in out
    j = job(completionMode="Indexed")
    del j["spec"]["completions"]
    assert check("Job", "batch", j) == ["spec.completions: Required value: when completion mode is Indexed"]
    j = job(manualSelector=True)
    assert check("Job", "batch", j) == ["spec.selector: Required value"]
    j = job(selector={"matchLabels": {"a": "b"}})
    assert check("Job", "batch", j)[0].endswith("`selector` does not match template `labels`")


def test_job_update_rules():
    old = job()
    new = copy.deepcopy(old)
    new["spec"]["template"]["spec"]["containers"][0]["image"] = "perl:2"
    assert check("Job", "batch", new, old)[0].startswith("spec.template: Invalid value:")
    assert check("Job", "batch", new, old)[0].endswith("field is immutable")
    new = copy.deepcopy(old)
    new["spec"]["completions"] = 3
    assert check("Job", "batch", new, old) == ["spec.completions: Invalid value: 3: field is immutable"]
    suspended = job(suspend=True)
    new = copy.deepcopy(suspended)
    new["spec"]["template"]["spec"]["nodeSelector"] = {"disk": "ssd"}
    assert check("Job", "batch", new, suspended) == []


def cronjob(schedule="*/5 * * * *", **spec):
    obj = {"metadata": {"name": "cj", "namespace": "d"}, "spec": {
        "schedule": schedule, "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "busybox"}]}}}}, **spec}}
    apply_defaults("CronJob", "batch", obj)
    return obj


def test_cronjob_rules():
    assert check("CronJob", "batch", cronjob()) == []
    assert check("CronJob", "batch", cronjob("@hourly")) == []
    assert check("CronJob", "batch", cronjob("")) == ["spec.schedule: Required value"]
    assert check("CronJob", "batch", cronjob("* * *")) == [
        'spec.schedule: Invalid value: "* * *": expected exactly 5 fields, found 3: [* * *]']
    assert check("CronJob", "batch", cronjob("61 * * * *")) == [
        'spec.schedule: Invalid value: "61 * * * *": end of range (61) above maximum (59): 61']
    assert check("CronJob", "batch", cronjob("@often")) == [
        'spec.schedule: Invalid value: "@often": unrecognized descriptor: @often']
    assert check("CronJob", "batch", cronjob(timeZone="Mars/Base")) == [
        'spec.timeZone: Invalid value: "Mars/Base": unknown time zone Mars/Base']
    assert check("CronJob", "batch", cronjob("TZ=UTC 0 * * * *"))[-1].endswith(
        "cannot use TZ or CRON_TZ in schedule, use timeZone field instead")
    c = cronjob(concurrencyPolicy="Sometimes")
    assert check("CronJob", "batch", c)[0].startswith('spec.concurrencyPolicy: Unsupported value: "Sometimes"')
    long = cronjob()
    long["metadata"]["name"] = "x" * 53
    assert check("CronJob", "batch", long) == [
        f'metadata.name: Invalid value: "{"x" * 53}": must be no more than 52 characters']
    bad_template = cronjob()
    bad_template["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    assert check("CronJob", "batch", bad_template)[0].startswith(
        'spec.jobTemplate.spec.template.spec.restartPolicy: Unsupported value: "Always"')


def test_cron_parser():
    s = parse_cron("0,30 9-17 * jan-mar mon-fri")
    assert s.minute == {0, 30} and s.hour == set(range(9, 18)) and s.month == {1, 2, 3}
    assert s.dow == {1, 2, 3, 4, 5} and s.dom_star and not s.dow_star
    assert parse_cron("*/15 * * * *").minute == {0, 15, 30, 45}
    assert parse_cron("5/20 * * * *").minute == {5, 25, 45}
    assert parse_cron("@every 1h30m").every == "1h30m"
    assert parse_cron("@weekly").dow == {0}
    for bad, message in [
        ("", "empty spec string"),
        ("1-2-3 * * * *", "too many hyphens: 1-2-3"),
        ("*/0 * * * *", "step of range should be a positive number: */0"),
        ("5-1 * * * *", "beginning of range (5) beyond end of range (1): 5-1"),
        ("* * 0 * *", "beginning of range (0) below minimum (1): 0"),
        ("x * * * *", 'failed to parse int from x: strconv.Atoi: parsing "x": invalid syntax'),
        ("* * * * 7", "end of range (7) above maximum (6): 7"),
    ]:
        with pytest.raises(ValueError) as e:
            parse_cron(bad)
        assert str(e.value) == message


# --- services, config, storage, cluster objects --------------------------------------------------------------


def service(**spec):
    obj = {"metadata": {"name": "web", "namespace": "d"}, "spec": {"selector": {"app": "web"},
                                                                   "ports": [{"port": 80}], **spec}}
    apply_defaults("Service", "", obj)
    return obj


def test_service_rules():
    assert check("Service", "", service()) == []
    out = check("Service", "", service(type="Magic", ports=[{"port": 80}, {"port": 0, "name": "b"}]))
    assert 'spec.type: Unsupported value: "Magic": supported values: "ClusterIP", "ExternalName", ' \
           '"LoadBalancer", "NodePort"' in out
    assert "spec.ports[0].name: Required value" in out
    assert "spec.ports[1].port: Invalid value: 0: must be between 1 and 65535, inclusive" in out
    assert check("Service", "", service(type="ExternalName", ports=[])) == ["spec.externalName: Required value"]
    assert check("Service", "", service(ports=[])) == ["spec.ports: Required value"]
    assert check("Service", "", service(clusterIP="None", ports=[])) == []
    out = check("Service", "", service(ports=[{"port": 80, "nodePort": 30080, "targetPort": "Bad_Name"}]))
    assert "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'" in out
    assert any(m.startswith('spec.ports[0].targetPort: Invalid value: "Bad_Name"') for m in out)
    old = service(clusterIP="10.0.0.10", clusterIPs=["10.0.0.10"])
    new = service(clusterIP="10.0.0.11", clusterIPs=["10.0.0.11"])
    assert check("Service", "", new, old) == [
        'spec.clusterIPs[0]: Invalid value: []string{"10.0.0.11"}: may not change once set']
    assert check("Service", "", service(clusterIP="not-an-ip")) == [
        ('spec.clusterIPs[0]: Invalid value: "not-an-ip": must be a valid IP address, (e.g. 10.9.8.7 or '
        '2001:db8::ffff)')]


def test_configmap_and_secret():
    cm = {"metadata": {"name": "c", "namespace": "d"}, "data": {"good.key": "v", "bad/key": "v"},
          "binaryData": {"good.key": "dg=="}}
    out = check("ConfigMap", "", cm)
    assert "data[bad/key]: Invalid value: \"bad/key\": a valid config key must consist of alphanumeric " \
           "characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for " \
           "validation is '[-._a-zA-Z0-9]+')" in out
    assert 'data[good.key]: Invalid value: "good.key": duplicate of key present in binaryData' in out
    big = {"metadata": {"name": "c", "namespace": "d"}, "data": {"a": "x" * (1024 * 1024 + 1)}}
    (too_big,) = validate("ConfigMap", "", big, None)
    assert (too_big.type, too_big.field, too_big.detail) == ("TooLong", "", "may not be more than 1048576 bytes")
    old = {"metadata": {"name": "c", "namespace": "d"}, "data": {"a": "1"}, "immutable": True}
    new = copy.deepcopy(old)
    new["data"]["a"] = "2"
    assert check("ConfigMap", "", new, old) == ["data: Forbidden: field is immutable when `immutable` is set"]
    new = copy.deepcopy(old)
    new["immutable"] = False
    assert check("ConfigMap", "", new, old) == ["immutable: Forbidden: field is immutable when `immutable` is set"]
    secret = {"metadata": {"name": "s", "namespace": "d"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "eA=="}}
    assert check("Secret", "", secret) == ["data[tls.key]: Required value"]
    s2 = {"metadata": {"name": "s", "namespace": "d"}, "data": {}}
    apply_defaults("Secret", "", s2)
    assert s2["type"] == "Opaque"
    changed = copy.deepcopy(s2)
    changed["type"] = "kubernetes.io/basic-auth"
    changed["data"] = {"username": "eA=="}
    assert check("Secret", "", changed, s2) == [
        'type: Invalid value: "kubernetes.io/basic-auth": field is immutable']


def test_pvc_pv_namespace_node_lease_sa():
    pvc = {"metadata": {"name": "c", "namespace": "d"}, "spec": {}}
    apply_defaults("PersistentVolumeClaim", "", pvc)
    assert check("PersistentVolumeClaim", "", pvc) == [
        "spec.accessModes: Required value: at least 1 access mode is required",
        "spec.resources[storage]: Required value"]
    good = {"metadata": {"name": "c", "namespace": "d"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
    apply_defaults("PersistentVolumeClaim", "", good)
    assert check("PersistentVolumeClaim", "", good) == []
    grown = copy.deepcopy(good)
    grown["spec"]["resources"]["requests"]["storage"] = "2Gi"
    assert check("PersistentVolumeClaim", "", grown, good) == []
    shrunk = copy.deepcopy(good)
    shrunk["spec"]["resources"]["requests"]["storage"] = "512Mi"
    assert check("PersistentVolumeClaim", "", shrunk, good) == [
        "spec.resources.requests.storage: Forbidden: field can not be less than previous value"]
    other = copy.deepcopy(good)
    other["spec"]["accessModes"] = ["ReadWriteMany"]
    assert check("PersistentVolumeClaim", "", other, good)[0].startswith(
        "spec: Forbidden: spec is immutable after creation except resources.requests")
    pv = {"metadata": {"name": "pv"}, "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"},
                                              "hostPath": {"path": "/data"}}}
    assert check("PersistentVolume", "", pv) == []
    ns = {"metadata": {"name": "team-a"}, "spec": {"finalizers": ["kubernetes", "custom"]}}
    assert check("Namespace", "", ns) == [
        ('spec.finalizers: Invalid value: "custom": name is neither a standard finalizer name nor is it fully '
        'qualified')]
    node = {"metadata": {"name": "n1"}, "spec": {"taints": [
        {"key": "k", "effect": "NoSchedule"}, {"key": "k", "effect": "NoSchedule", "value": "v"},
        {"key": "k2", "effect": "Sometimes"}], "podCIDRs": ["10.0.0.0/24"]}}
    out = check("Node", "", node)
    assert any(m.startswith("spec.taints[1]: Duplicate value:") and
               m.endswith("taints must be unique by key and effect pair") for m in out)
    assert any(m.startswith('spec.taints[2].effect: Unsupported value: "Sometimes"') for m in out)
    moved = copy.deepcopy(node)
    moved["spec"]["taints"] = []
    moved["spec"]["podCIDRs"] = ["10.0.1.0/24"]
    assert check("Node", "", moved, {**node, "spec": {**node["spec"], "taints": []}}) == [
        'spec.podCIDRs: Forbidden: node updates may not change podCIDR except from "" to valid']
    lease = {"metadata": {"name": "l", "namespace": "d"}, "spec": {"leaseDurationSeconds": 0}}
    assert check("Lease", "coordination.k8s.io", lease) == [
        "spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0"]
    sa = {"metadata": {"name": "sa", "namespace": "d"}, "secrets": [{}]}
    assert check("ServiceAccount", "", sa) == ["secrets[0].name: Required value"]


def test_ingress_rules():
    ing = {"metadata": {"name": "i", "namespace": "d"}, "spec": {"rules": [{"host": "*.example.com", "http": {
        "paths": [{"path": "/", "pathType": "Prefix",
                   "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}
    assert check("Ingress", "networking.k8s.io", ing) == []
    bad = copy.deepcopy(ing)
    bad["spec"]["rules"][0]["host"] = "10.0.0.1"
    path = bad["spec"]["rules"][0]["http"]["paths"][0]
    path["pathType"] = "Glob"
    path["backend"] = {"service": {"name": "web"}}
    bad["spec"]["rules"][0]["http"]["paths"].append({"path": "api", "pathType": "Exact",
                                                     "backend": {"service": {"name": "w", "port": {"name": "http"}}}})
    out = check("Ingress", "networking.k8s.io", bad)
    assert 'spec.rules[0].host: Invalid value: "10.0.0.1": must be a DNS name, not an IP address' in out
    assert 'spec.rules[0].http.paths[0].pathType: Unsupported value: "Glob": supported values: "Exact", ' \
           '"ImplementationSpecific", "Prefix"' in out
    assert "spec.rules[0].http.paths[0].backend: Required value: port name or number is required" in out
    assert 'spec.rules[0].http.paths[1].path: Invalid value: "api": must be an absolute path' in out
    no_type = copy.deepcopy(ing)
    del no_type["spec"]["rules"][0]["http"]["paths"][0]["pathType"]
    assert check("Ingress", "networking.k8s.io", no_type) == [
        "spec.rules[0].http.paths[0].pathType: Required value: pathType must be specified"]
    empty = {"metadata": {"name": "i", "namespace": "d"}, "spec": {}}
    assert check("Ingress", "networking.k8s.io", empty) == [
        "spec: Invalid value: []: either `defaultBackend` or `rules` must be specified"]


# --- defaulting ------------------------------------------------------------------------------------------------


def test_pod_defaults():
    p = pod(containers=[
        {"name": "a", "image": "nginx", "ports": [{"containerPort": 80}],
         "resources": {"limits": {"cpu": "1000m", "memory": "1024Mi"}},
         "livenessProbe": {"httpGet": {"port": 80}},
         "env": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]},
        {"name": "b", "image": "nginx:1.27"},
        {"name": "c", "image": "registry:5000/app"},
        {"name": "d", "image": "app@sha256:" + "a" * 64},
    ], volumes=[{"name": "v"}, {"name": "s", "secret": {"secretName": "x"}}])
    spec = p["spec"]
    assert spec["restartPolicy"] == "Always" and spec["dnsPolicy"] == "ClusterFirst"
    assert spec["schedulerName"] == "default-scheduler" and spec["terminationGracePeriodSeconds"] == 30
    assert spec["securityContext"] == {} and spec["enableServiceLinks"] is True
    assert spec["serviceAccountName"] == "default" and spec["serviceAccount"] == "default"
    assert spec["priority"] == 0 and spec["preemptionPolicy"] == "PreemptLowerPriority"
    assert spec["tolerations"] == [
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
         "tolerationSeconds": 300}]
    a, b, c, d = spec["containers"]
    assert [x["imagePullPolicy"] for x in (a, b, c, d)] == ["Always", "IfNotPresent", "Always", "IfNotPresent"]
    assert a["terminationMessagePath"] == "/dev/termination-log" and a["terminationMessagePolicy"] == "File"
    assert a["ports"][0]["protocol"] == "TCP"
    assert a["resources"] == {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}}
    assert a["livenessProbe"] == {"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1,
                                  "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3}
    assert a["env"][0]["valueFrom"]["fieldRef"]["apiVersion"] == "v1"
    assert b["resources"] == {}
    assert spec["volumes"][0]["emptyDir"] == {} and spec["volumes"][1]["secret"]["defaultMode"] == 0o644
    again = copy.deepcopy(p)
    apply_defaults("Pod", "", again)
    assert again == p  # defaulting is idempotent


def test_pod_defaults_respect_existing_tolerations():
    p = pod(tolerations=[{"operator": "Exists"}])
    assert p["spec"]["tolerations"] == [{"operator": "Exists"}]
    p = pod(tolerations=[{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
                          "tolerationSeconds": 5}])
    assert [t["key"] for t in p["spec"]["tolerations"]] == ["node.kubernetes.io/unreachable",
                                                             "node.kubernetes.io/not-ready"]


def test_workload_defaults():
    d = deployment()
    spec = d["spec"]
    assert spec["replicas"] == 1 and spec["revisionHistoryLimit"] == 10 and spec["progressDeadlineSeconds"] == 600
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%",
                                                                          "maxSurge": "25%"}}
    tspec = spec["template"]["spec"]
    assert tspec["restartPolicy"] == "Always" and tspec["containers"][0]["imagePullPolicy"] == "Always"
    # admission-time pod fields are not put into templates
    assert "serviceAccountName" not in tspec and "tolerations" not in tspec and "enableServiceLinks" not in tspec
    recreate = deployment(strategy={"type": "Recreate"})
    assert recreate["spec"]["strategy"] == {"type": "Recreate"}

    sts = {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}},
                    "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {}}]}}
    apply_defaults("StatefulSet", "apps", sts)
    s = sts["spec"]
    assert s["podManagementPolicy"] == "OrderedReady" and s["replicas"] == 1 and s["revisionHistoryLimit"] == 10
    assert s["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}
    assert s["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    assert s["volumeClaimTemplates"][0]["spec"]["volumeMode"] == "Filesystem"

    ds = {"spec": {"template": {"spec": {"containers": []}}}}
    apply_defaults("DaemonSet", "apps", ds)
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                            "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
    assert ds["spec"]["revisionHistoryLimit"] == 10

    rs = {"spec": {"template": {"spec": {}}}}
    apply_defaults("ReplicaSet", "apps", rs)
    assert rs["spec"]["replicas"] == 1

    j = job()
    assert {k: j["spec"][k] for k in ("completions", "parallelism", "backoffLimit", "completionMode", "suspend",
                                      "podReplacementPolicy")} == {
        "completions": 1, "parallelism": 1, "backoffLimit": 6, "completionMode": "NonIndexed", "suspend": False,
        "podReplacementPolicy": "TerminatingOrFailed"}
    j = job(parallelism=3)
    assert "completions" not in j["spec"] and j["spec"]["parallelism"] == 3

    cj = cronjob()
    assert {k: cj["spec"][k] for k in ("concurrencyPolicy", "suspend", "successfulJobsHistoryLimit",
                                       "failedJobsHistoryLimit")} == {
        "concurrencyPolicy": "Allow", "suspend": False, "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 1}
    assert cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["dnsPolicy"] == "ClusterFirst"


def test_other_defaults():
    svc = service(ports=[{"port": 80}, {"port": 443, "targetPort": "https", "name": "https"}])
    s = svc["spec"]
    assert s["type"] == "ClusterIP" and s["sessionAffinity"] == "None"
    assert s["ports"][0] == {"port": 80, "protocol": "TCP", "targetPort": 80}
    assert s["ports"][1]["targetPort"] == "https"
    # ipFamilyPolicy is the allocator's to infer (tests/apiserver/test_services_dualstack.py).
    assert "ipFamilyPolicy" not in s and s["internalTrafficPolicy"] == "Cluster"
    assert "externalTrafficPolicy" not in s and "clusterIP" not in s
    np = service(type="NodePort")
    assert np["spec"]["externalTrafficPolicy"] == "Cluster"
    lb = service(type="LoadBalancer")
    assert lb["spec"]["allocateLoadBalancerNodePorts"] is True
    ext = service(type="ExternalName", externalName="example.com", ports=[])
    assert "ipFamilyPolicy" not in ext["spec"]
    sticky = service(sessionAffinity="ClientIP")
    assert sticky["spec"]["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10800}}

    ns = {"metadata": {"name": "team"}}
    apply_defaults("Namespace", "", ns)
    assert ns["spec"] == {"finalizers": ["kubernetes"]} and ns["status"] == {"phase": "Active"}
    assert ns["metadata"]["labels"] == {"kubernetes.io/metadata.name": "team"}

    pv = {"metadata": {"name": "pv"}, "spec": {"capacity": {"storage": "1024Mi"}}}
    apply_defaults("PersistentVolume", "", pv)
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain" and pv["spec"]["volumeMode"] == "Filesystem"
    assert pv["spec"]["capacity"]["storage"] == "1Gi"

    node = {"metadata": {"name": "n"}, "status": {"capacity": {"cpu": "4", "memory": "8192Mi"}}}
    apply_defaults("Node", "", node)
    assert node["status"]["allocatable"] == {"cpu": "4", "memory": "8Gi"}

    rc = {"metadata": {"name": "rc"}, "spec": {"template": {"metadata": {"labels": {"app": "x"}}, "spec": {}}}}
    apply_defaults("ReplicationController", "", rc)
    assert rc["spec"]["selector"] == {"app": "x"} and rc["metadata"]["labels"] == {"app": "x"}
    assert rc["spec"]["replicas"] == 1

    cm = {"metadata": {"name": "c"}, "data": {}}
    apply_defaults("ConfigMap", "", cm)
    assert cm == {"metadata": {"name": "c"}, "data": {}}


def test_status_bodies_are_upstreams_bytes() -> None:
    from kybernetes.api import errors

    # As kube-apiserver writes them (the kubernetes Python client's tests compare these bytes).
    assert errors.not_found("namespaces", "", "nope").to_bytes() == (
        b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"namespaces \\"nope\\" '
        b'not found","reason":"NotFound","details":{"name":"nope","kind":"namespaces"},"code":404}\n')
    assert errors.conflict("deployments", "apps", "web", "try again").to_bytes().endswith(
        b'"reason":"Conflict","details":{"name":"web","kind":"deployments","group":"apps"},"code":409}\n')
    # Without details the code still comes last; embedded in a watch event, no newline.
    assert errors.gone("too old resource version").to_json().endswith(b'"reason":"Expired","code":410}')
