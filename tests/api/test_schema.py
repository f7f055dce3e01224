"""Tests for the upstream schema: lookup, navigation, structural validation, OpenAPI documents."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from kybernetes.api.schema import ServedResource, decode_error, get_schema, quantity_error, validate

ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
SERVED = [
    ServedResource("", "v1", "Pod", "pods", True, ALL_VERBS, ["status", "log", "exec", "binding"]),
    ServedResource("", "v1", "Namespace", "namespaces", False,
                   ["create", "delete", "get", "list", "patch", "update", "watch"], ["status", "finalize"]),
    ServedResource("", "v1", "Service", "services", True, ALL_VERBS, ["status"]),
    ServedResource("apps", "v1", "Deployment", "deployments", True, ALL_VERBS, ["status", "scale"]),
    ServedResource("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", False, ALL_VERBS, []),
]

# The examples from the Kubernetes documentation, as users apply them.
DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "nginx-deployment", "labels": {"app": "nginx"}},
    "spec": {
        "replicas": 3,
        "selector": {"matchLabels": {"app": "nginx"}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
        "template": {
            "metadata": {"labels": {"app": "nginx"}},
            "spec": {"containers": [{
                "name": "nginx", "image": "nginx:1.14.2", "ports": [{"containerPort": 80}],
                "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": 0.25}},
                "env": [{"name": "A", "value": "1"},
                        {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "livenessProbe": {"httpGet": {"path": "/", "port": 80}, "initialDelaySeconds": 3},
            }]},
        },
    },
}
POD: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "nginx", "namespace": "default", "labels": {"app": "nginx"},
                 "annotations": {"a": "b"}, "creationTimestamp": None},
    "spec": {
        "containers": [{"name": "nginx", "image": "nginx:1.14.2", "ports": [{"containerPort": 80}],
                        "command": ["sh", "-c", "sleep 1"], "imagePullPolicy": "IfNotPresent",
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
        "volumes": [{"name": "data", "emptyDir": {}}],
        "restartPolicy": "Always",
        "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
    },
    "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]},
}
SERVICE: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Service",
    "metadata": {"name": "my-service"},
    "spec": {"selector": {"app.kubernetes.io/name": "MyApp"}, "type": "ClusterIP",
             "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 9376}]},
}


def test_definition_lookup() -> None:
    s = get_schema()
    assert s.definition_for("apps", "v1", "Deployment") == "io.k8s.api.apps.v1.Deployment"
    assert s.definition_for("", "v1", "Pod") == "io.k8s.api.core.v1.Pod"
    assert s.definition_for("", "v1", "PodList") == "io.k8s.api.core.v1.PodList"
    assert s.definition_for("apps", "v1", "DeleteOptions") == "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions"
    assert s.definition_for("apps", "v1", "NoSuchKind") is None
    assert get_schema() is s


def test_navigation_and_patch_meta() -> None:
    s = get_schema()
    pod_spec = s.node_for("", "v1", "Pod").prop("spec")
    assert pod_spec.name == "io.k8s.api.core.v1.PodSpec"
    containers = pod_spec.prop("containers")
    assert s.patch_meta(containers) == ("merge", "name")
    assert s.list_meta(containers) == ("map", ("name",))
    container = containers.items
    assert s.patch_meta(container.prop("ports")) == ("merge", "containerPort")
    assert s.list_meta(container.prop("ports")) == ("map", ("containerPort", "protocol"))
    assert s.patch_meta(container.prop("env")) == ("merge", "name")
    assert s.patch_meta(pod_spec.prop("volumes")) == ("merge,retainKeys", "name")
    assert s.list_meta(pod_spec.prop("tolerations")) == ("atomic", ())
    strategy = s.node_for("apps", "v1", "Deployment").prop("spec").prop("strategy")
    assert s.patch_meta(strategy) == ("retainKeys", None)
    # The field-level extension must not leak onto the shared definition.
    assert s.patch_meta(s.node("io.k8s.api.apps.v1.DeploymentStrategy")) == (None, None)
    labels = s.node("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta").prop("labels")
    assert labels.kind == "map" and labels.values.kind == "string"
    assert s.patch_meta(None) == (None, None)
    # Recursive definitions resolve to the same node.
    props = s.node("io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps")
    assert props.prop("properties").values is props


@pytest.mark.parametrize("obj,group,kind", [(DEPLOYMENT, "apps", "Deployment"), (POD, "", "Pod"),
                                            (SERVICE, "", "Service")])
def test_docs_examples_validate_clean(obj: dict[str, Any], group: str, kind: str) -> None:
    assert validate(obj, group, "v1", kind, strict=True) == ([], [])


def test_string_in_replicas_is_a_type_error() -> None:
    obj = orjson.loads(orjson.dumps(DEPLOYMENT))
    obj["spec"]["replicas"] = "3"
    errors, warnings = validate(obj, "apps", "v1", "Deployment", strict=True)
    assert warnings == []
    assert [(e.type, e.field) for e in errors] == [("TypeInvalid", "spec.replicas")]
    assert errors[0].detail == ("json: cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas "
                                "of type int32")
    status = decode_error("Deployment", "v1", errors)
    assert status is not None and status.code == 400 and status.reason == "BadRequest"
    assert status.message == ('Deployment in version "v1" cannot be handled as a Deployment: json: cannot '
                              'unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32')


@pytest.mark.parametrize("path,value,field,detail", [
    (("spec", "template", "spec", "containers", 0, "image"), 5, "spec.template.spec.containers[0].image",
     ("json: cannot unmarshal number into Go struct field Container.spec.template.spec.containers.image "
     "of type string")),
    (("metadata", "labels", "app"), 5, "metadata.labels[app]",
     "json: cannot unmarshal number into Go struct field ObjectMeta.metadata.labels of type string"),
    (("spec", "template", "spec", "containers"), {}, "spec.template.spec.containers",
     ("json: cannot unmarshal object into Go struct field PodSpec.spec.template.spec.containers "
     "of type []v1.Container")),
    (("spec", "selector"), "x", "spec.selector",
     "json: cannot unmarshal string into Go struct field DeploymentSpec.spec.selector of type v1.LabelSelector"),
    (("spec", "paused"), "yes", "spec.paused",
     "json: cannot unmarshal string into Go struct field DeploymentSpec.spec.paused of type bool"),
    (("spec", "replicas"), 1.5, "spec.replicas",
     "json: cannot unmarshal number 1.5 into Go struct field DeploymentSpec.spec.replicas of type int32"),
    (("spec", "replicas"), 1 << 40, "spec.replicas",
     f"json: cannot unmarshal number {1 << 40} into Go struct field DeploymentSpec.spec.replicas of type int32"),
    (("spec", "strategy", "rollingUpdate", "maxSurge"), True, "spec.strategy.rollingUpdate.maxSurge",
     ("json: cannot unmarshal bool into Go struct field "
     "RollingUpdateDeployment.spec.strategy.rollingUpdate.maxSurge of type int32")),
    (("spec", "template", "spec", "containers", 0, "resources", "limits", "memory"), "1Gbb",
     "spec.template.spec.containers[0].resources.limits[memory]",
     "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"),
])
def test_type_errors_read_like_go(path: tuple[Any, ...], value: Any, field: str, detail: str) -> None:
    obj = orjson.loads(orjson.dumps(DEPLOYMENT))
    target = obj
    for seg in path[:-1]:
        target = target[seg]
    target[path[-1]] = value
    errors, _ = validate(obj, "apps", "v1", "Deployment", strict=False)
    assert [(e.type, e.field, e.detail) for e in errors] == [("TypeInvalid", field, detail)]


def test_nulls_are_accepted_everywhere() -> None:
    obj = orjson.loads(orjson.dumps(DEPLOYMENT))
    obj["spec"]["replicas"] = None
    obj["spec"]["template"]["spec"]["containers"][0]["env"] = None
    obj["status"] = None
    assert validate(obj, "apps", "v1", "Deployment", strict=True) == ([], [])


def test_unknown_fields_strict_and_warn() -> None:
    obj = orjson.loads(orjson.dumps(DEPLOYMENT))
    obj["spec"]["foo"] = 1
    obj["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    obj["metadata"]["bar"] = {"x": 1}
    expected = ["metadata.bar", "spec.foo", "spec.template.spec.containers[0].imagePullPolicyy"]

    pruned = orjson.loads(orjson.dumps(obj))
    errors, warnings = validate(pruned, "apps", "v1", "Deployment", strict=False)
    assert errors == []
    assert sorted(warnings) == [f'unknown field "{p}"' for p in expected]
    # Not strict, the unknown fields are dropped, as upstream's decoder drops them.
    assert pruned == DEPLOYMENT

    errors, warnings = validate(obj, "apps", "v1", "Deployment", strict=True)
    assert warnings == []
    assert sorted(e.field for e in errors) == expected
    status = decode_error("Deployment", "v1", errors)
    assert status is not None and status.code == 400
    assert status.message.startswith("strict decoding error: unknown field ")
    assert 'unknown field "spec.template.spec.containers[0].imagePullPolicyy"' in status.message


def test_free_form_fields_accept_anything() -> None:
    pod = orjson.loads(orjson.dumps(POD))
    pod["metadata"]["managedFields"] = [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                                         "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {}}}}]
    assert validate(pod, "", "v1", "Pod", strict=True) == ([], [])
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "crontabs.stable.example.com"},
           "spec": {"group": "stable.example.com", "scope": "Namespaced",
                    "names": {"plural": "crontabs", "kind": "CronTab"},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                        "type": "object", "properties": {"spec": {"type": "object", "properties": {
                            "cronSpec": {"type": "string"}, "replicas": {"type": "integer", "default": 1}}}}}}}]}}
    assert validate(crd, "apiextensions.k8s.io", "v1", "CustomResourceDefinition", strict=True) == ([], [])


def test_secret_data_must_be_base64() -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"ok": "aGVsbG8=", "bad": "a!b"}}
    errors, _ = validate(secret, "", "v1", "Secret", strict=True)
    assert [(e.field, e.detail) for e in errors] == [("data[bad]", "illegal base64 data at input byte 1")]


def test_unknown_kind_and_non_object() -> None:
    assert validate({"spec": {"x": 1}}, "example.com", "v1", "Widget", strict=True) == ([], [])
    errors, _ = validate([], "", "v1", "Pod", strict=True)  # type: ignore[arg-type]
    assert errors and errors[0].detail == "json: cannot unmarshal array into Go value of type v1.Pod"


def test_quantity_parsing() -> None:
    assert quantity_error("250m") is None
    assert quantity_error("1Gi") is None
    assert quantity_error("1e3") is None
    assert quantity_error("1.5") is None
    assert quantity_error("1Gbb") is not None
    assert quantity_error("1iG") == "unable to parse quantity's suffix"
    assert quantity_error("") is not None


def test_validate_pod_is_fast() -> None:
    s = get_schema()
    s.validate(POD, "", "v1", "Pod", strict=True)
    n = 500
    start = time.perf_counter()
    for _ in range(n):
        s.validate(POD, "", "v1", "Pod", strict=True)
    per_call = (time.perf_counter() - start) / n
    # Typically ~10 µs; the bound leaves room for a loaded CI machine.
    assert per_call < 0.001


# ---- OpenAPI ---------------------------------------------------------------------------------


def _refs(node: Any) -> list[str]:
    out: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):  # JSONSchemaProps has a *property* named $ref
                out.append(v)
            else:
                out.extend(_refs(v))
    elif isinstance(node, list):
        for v in node:
            out.extend(_refs(v))
    return out


def test_openapi_v2_is_well_formed() -> None:
    s = get_schema()
    doc = s.openapi_v2(SERVED)
    assert doc["swagger"] == "2.0"
    defs = doc["definitions"]
    for ref in _refs(doc):
        assert ref.startswith("#/definitions/") and ref.removeprefix("#/definitions/") in defs, ref
    assert defs["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] == {"type": "string", "format": "int-or-string"}
    assert defs["io.k8s.apimachinery.pkg.api.resource.Quantity"] == {"type": "string"}
    replicas = defs["io.k8s.api.apps.v1.DeploymentSpec"]["properties"]["replicas"]
    assert replicas["type"] == "integer"
    blob = orjson.dumps(doc)
    # (JSONSchemaProps has a property named oneOf, hence the bracket.)
    assert b'"oneOf":[' not in blob and b'"null"' not in blob and b"$defs" not in blob
    containers = defs["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
    assert containers["x-kubernetes-patch-merge-key"] == "name"
    assert defs["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"] == [
        {"group": "apps", "kind": "Deployment", "version": "v1"}]

    item = doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]
    patch = item["patch"]
    assert patch["x-kubernetes-action"] == "patch"
    assert patch["x-kubernetes-group-version-kind"] == {"group": "apps", "kind": "Deployment", "version": "v1"}
    assert "application/strategic-merge-patch+json" in patch["consumes"]
    assert {"fieldValidation", "dryRun", "fieldManager"} <= {p["name"] for p in patch["parameters"]}
    assert item["delete"]["x-kubernetes-action"] == "delete"
    assert doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments"]["get"]["x-kubernetes-action"] == "list"
    assert "/api/v1/namespaces/{name}" in doc["paths"]
    assert "/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}" in doc["paths"]
    scale = doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"]["put"]
    assert scale["x-kubernetes-group-version-kind"]["kind"] == "Scale"
    assert s.openapi_v2_bytes(SERVED) is s.openapi_v2_bytes(SERVED)
    assert orjson.loads(s.openapi_v2_bytes(SERVED)) == doc


def test_openapi_v3_index() -> None:
    s = get_schema()
    idx = s.openapi_v3_index(SERVED)
    assert set(idx["paths"]) == {"api/v1", "apis/apps/v1", "apis/rbac.authorization.k8s.io/v1"}
    url = idx["paths"]["apis/apps/v1"]["serverRelativeURL"]
    assert url.startswith("/openapi/v3/apis/apps/v1?hash=")
    fewer = s.openapi_v3_index([r for r in SERVED if r.kind != "Service"])
    # A different document gets a different hash, so clients refetch it.
    assert fewer["paths"]["api/v1"] != idx["paths"]["api/v1"]
    assert s.openapi_v3_index_bytes(SERVED) is s.openapi_v3_index_bytes(SERVED)


def test_openapi_v3_group_version_is_self_contained() -> None:
    s = get_schema()
    doc = s.openapi_v3_group_version("apps", "v1", SERVED)
    assert doc is not None and doc["openapi"].startswith("3.0")
    schemas = doc["components"]["schemas"]
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    assert "io.k8s.api.core.v1.PodSpec" in schemas
    assert "io.k8s.api.core.v1.Service" not in schemas
    assert schemas["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["oneOf"]
    # Descriptions and patch extensions survive next to refs, as upstream's allOf wrapping.
    strategy = schemas["io.k8s.api.apps.v1.DeploymentSpec"]["properties"]["strategy"]
    assert strategy["allOf"] == [{"$ref": "#/components/schemas/io.k8s.api.apps.v1.DeploymentStrategy"}]
    assert strategy["x-kubernetes-patch-strategy"] == "retainKeys" and strategy["description"]
    assert "enum" not in schemas["io.k8s.api.apps.v1.Deployment"]["properties"]["apiVersion"]
    assert s.openapi_v3_group_version("batch", "v1", SERVED) is None
    assert s.openapi_v3_group_version_bytes("apps", "v1", SERVED) == orjson.dumps(doc)


def _supports_field_validation(doc: dict[str, Any], gvk: dict[str, str]) -> bool:
    """What kubectl's query-param verifier (v3) checks before sending fieldValidation."""
    for item in doc["paths"].values():
        op = item.get("patch")
        if not op or op.get("x-kubernetes-group-version-kind") != gvk:
            continue
        return any(p["name"] == "fieldValidation" and p["in"] == "query" for p in op.get("parameters", []))
    return False


def test_v3_satisfies_kubectl_checks() -> None:
    s = get_schema()
    apps = s.openapi_v3_group_version("apps", "v1", SERVED)
    core = s.openapi_v3_group_version("", "v1", SERVED)
    assert apps is not None and core is not None
    assert _supports_field_validation(apps, {"group": "apps", "kind": "Deployment", "version": "v1"})
    # CRDs fall back to the Namespace PATCH operation.
    assert _supports_field_validation(core, {"group": "", "kind": "Namespace", "version": "v1"})
    # kubectl apply computes a strategic merge patch only if the PATCH accepts it.
    patch = apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"]
    assert "application/strategic-merge-patch+json" in patch["requestBody"]["content"]
    # kubectl explain: the list path yields the GVK, which must equal one listed on a schema.
    gvk = apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments"]["get"]["x-kubernetes-group-version-kind"]
    owners = [n for n, sch in apps["components"]["schemas"].items()
              if gvk in sch.get("x-kubernetes-group-version-kind", [])]
    assert owners == ["io.k8s.api.apps.v1.Deployment"]
    # ...and the field path spec.strategy.rollingUpdate resolves through allOf refs.
    sch = apps["components"]["schemas"][owners[0]]
    for field in ("spec", "strategy", "rollingUpdate"):
        sub = sch["properties"][field]
        ref = sub["allOf"][0]["$ref"] if "allOf" in sub else sub["$ref"]
        sch = apps["components"]["schemas"][ref.removeprefix("#/components/schemas/")]
    assert set(sch["properties"]) == {"maxSurge", "maxUnavailable"}


def test_openapi_create_only_and_replace_only_subresources():
    served = SERVED + [ServedResource("", "v1", "ServiceAccount", "serviceaccounts", True, ALL_VERBS, ["token"])]
    paths = get_schema().openapi_v2(served)["paths"]

    def ops(path: str) -> dict[str, tuple[str, str]]:
        out = {}
        for verb, op in paths[path].items():
            if verb != "parameters":
                body = [p["schema"]["$ref"] for p in op.get("parameters", []) if p.get("in") == "body"]
                out[verb] = (op["operationId"], body[0].rsplit("/", 1)[1] if body else "")
        return out
    # As upstream: binding and token are POSTs of their own kinds; finalize is a PUT of the Namespace.
    assert ops("/api/v1/namespaces/{namespace}/pods/{name}/binding") == {
        "post": ("createCoreV1NamespacedPodBinding", "io.k8s.api.core.v1.Binding")}
    assert ops("/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token") == {
        "post": ("createCoreV1NamespacedServiceAccountToken", "io.k8s.api.authentication.v1.TokenRequest")}
    assert ops("/api/v1/namespaces/{name}/finalize") == {
        "put": ("replaceCoreV1NamespaceFinalize", "io.k8s.api.core.v1.Namespace")}
    assert set(ops("/api/v1/namespaces/{namespace}/pods/{name}/status")) == {"get", "put", "patch"}
