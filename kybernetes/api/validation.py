"""Semantic validation and defaulting of built-in kinds: what the OpenAPI schema cannot say.

The schema (kubernetes-validate) checks shapes and types elsewhere. This module owns
the rest, written from the upstream API reference: name, label and annotation rules,
per-kind cross-field rules, immutable fields on update, and the defaults the
upstream API server fills in (including those upstream sets in admission plugins
every cluster runs: the pod's service account, default not-ready/unreachable
tolerations and priority).

Messages follow apimachinery's field.Error wording so kubectl prints what users
know. Adding a kind is a few lines: a validator in VALIDATORS, a defaulter in
DEFAULTERS, its name rule in NAME_RULES.

Left to the server on purpose: clusterIP / nodePort allocation (and ipFamilies, ipFamilyPolicy),
the generated Job selector and `controller-uid` / `batch.kubernetes.io/job-name`
template labels, generateName expansion, the service-account token volume.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import zoneinfo
from collections.abc import Callable
from typing import Any

import orjson

from kybernetes.api import certificates as _certificates
from kybernetes.api import rbac as _rbac
from kybernetes.api.errors import (
    FieldError,
    duplicate,
    forbidden,
    invalid,
    not_supported,
    required,
    too_long,
)
from kybernetes.api.quantity import Quantity
from kybernetes.api.selectors import (
    DNS1123_SUBDOMAIN_MAX,
    InvalidSelector,
    from_label_selector_object,
    is_dns1123_subdomain,
    is_namespaced_kind,
    is_path_segment_name,
    is_qualified_name,
    is_valid_label_value,
    max_len_error,
    regex_error,
    validate_label_selector_object,
    validate_labels,
)

# --- string rules (apimachinery util/validation) -----------------------------------------------------------

DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_LABEL_ERR = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
                     "and must start and end with an alphanumeric character")
DNS1123_LABEL_MAX = 63
DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
DNS1035_LABEL_ERR = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
                     "start with an alphabetic character, and end with an alphanumeric character")
CONFIG_KEY_FMT = "[-._a-zA-Z0-9]+"
CONFIG_KEY_ERR = "a valid config key must consist of alphanumeric characters, '-', '_' or '.'"
PERCENT_FMT = "[0-9]+%"
PERCENT_ERR = "a valid percent string must be a numeric string followed by an ending '%'"
WILDCARD_DNS1123_FMT = "\\*\\." + DNS1123_LABEL_FMT + "(\\." + DNS1123_LABEL_FMT + ")*"
WILDCARD_DNS1123_ERR = ("a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, "
                        "which must consist of lower case alphanumeric characters, '-' or '.' and end with an "
                        "alphanumeric character")
NEGATIVE_ERR = "must be greater than or equal to 0"
IMMUTABLE_ERR = "field is immutable"
TOTAL_ANNOTATION_SIZE = 256 * 1024
MAX_CONFIG_SIZE = 1024 * 1024
MAX_INT32 = 2**31 - 1

_dns1123_label_re = re.compile(DNS1123_LABEL_FMT)
_dns1035_label_re = re.compile(DNS1035_LABEL_FMT)
_config_key_re = re.compile(CONFIG_KEY_FMT)
_percent_re = re.compile(PERCENT_FMT)
_wildcard_re = re.compile(WILDCARD_DNS1123_FMT)
_port_name_charset_re = re.compile("[-a-z0-9]+")


def is_dns1123_label(value: str) -> list[str]:
    errs = []
    if len(value) > DNS1123_LABEL_MAX:
        errs.append(max_len_error(DNS1123_LABEL_MAX))
    if not _dns1123_label_re.fullmatch(value):
        if is_dns1123_subdomain(value) == []:
            errs.append("must not contain dots")
        else:
            errs.append(regex_error(DNS1123_LABEL_ERR, DNS1123_LABEL_FMT, "my-name", "123-abc"))
    return errs


def is_dns1035_label(value: str) -> list[str]:
    errs = []
    if len(value) > DNS1123_LABEL_MAX:
        errs.append(max_len_error(DNS1123_LABEL_MAX))
    if not _dns1035_label_re.fullmatch(value):
        errs.append(regex_error(DNS1035_LABEL_ERR, DNS1035_LABEL_FMT, "my-name", "abc-123"))
    return errs


def is_wildcard_dns1123_subdomain(value: str) -> list[str]:
    errs = []
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        errs.append(max_len_error(DNS1123_SUBDOMAIN_MAX))
    if not _wildcard_re.fullmatch(value):
        errs.append(regex_error(WILDCARD_DNS1123_ERR, WILDCARD_DNS1123_FMT, "*.example.com"))
    return errs


def is_valid_port_num(port: Any) -> list[str]:
    if isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535:
        return []
    return ["must be between 1 and 65535, inclusive"]


def is_valid_port_name(port: str) -> list[str]:
    errs = []
    if len(port) > 15:
        errs.append(max_len_error(15))
    if not _port_name_charset_re.fullmatch(port):
        errs.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    elif not re.search("[a-z]", port):
        errs.append("must contain at least one letter (a-z)")
    if "--" in port:
        errs.append("must not contain consecutive hyphens (-)")
    if port and (port[0] == "-" or port[-1] == "-"):
        errs.append("must not begin or end with a hyphen (-)")
    return errs


def is_config_map_key(value: str) -> list[str]:
    errs = []
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        errs.append(max_len_error(DNS1123_SUBDOMAIN_MAX))
    if not _config_key_re.fullmatch(value):
        errs.append(regex_error(CONFIG_KEY_ERR, CONFIG_KEY_FMT, "key.name", "KEY_NAME", "key-name"))
    if value == ".":
        errs.append("must not be '.'")
    elif value == "..":
        errs.append("must not be '..'")
    elif value.startswith(".."):
        errs.append("must not start with '..'")
    return errs


def is_env_var_name(value: str) -> list[str]:
    """Relaxed env-var names (RelaxedEnvironmentVariableValidation is on in 1.32)."""
    errs = []
    if not value:
        errs.append("environment variable name must be non-empty")
    if any(not (32 <= ord(c) <= 126) or c == "=" for c in value):
        errs.append("a valid environment variable name must consist only of printable ASCII characters "
                    "other than '='")
    return errs


def is_valid_percent(value: str) -> list[str]:
    if _percent_re.fullmatch(value):
        return []
    return [regex_error(PERCENT_ERR, PERCENT_FMT, "1%", "93%")]


def _mask_trailing_dash(name: str) -> str:
    # generateName prefixes may end in '-': the random suffix will follow it.
    return name[:-1] + "a" if len(name) > 1 and name.endswith("-") else name


NAME_CHECKS: dict[str, Callable[[str], list[str]]] = {
    "dns1123subdomain": is_dns1123_subdomain,
    "dns1123label": is_dns1123_label,
    "dns1035label": is_dns1035_label,
    "path": is_path_segment_name,
    "none": lambda _name: [],
}

# (group, kind) -> name rule; anything not listed is a DNS-1123 subdomain like most kinds.
NAME_RULES: dict[tuple[str, str], str] = {
    ("", "Namespace"): "dns1123label",
    ("", "Service"): "dns1035label",
    ("rbac.authorization.k8s.io", "Role"): "path",
    ("rbac.authorization.k8s.io", "ClusterRole"): "path",
    ("rbac.authorization.k8s.io", "RoleBinding"): "path",
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): "path",
    ("certificates.k8s.io", "CertificateSigningRequest"): "path",
}


# --- Go-style rendering of values in messages ----------------------------------------------------------

def _q(s: Any) -> str:
    return orjson.dumps(s if isinstance(s, str) else str(s)).decode()


def _go_map(m: Any) -> str:
    if m is None:
        return "map[string]string(nil)"
    return "map[string]string{" + ", ".join(f"{_q(k)}:{_q(v)}" for k, v in sorted(m.items())) + "}"


def _go_strings(xs: Any) -> str:
    if xs is None:
        return "[]string(nil)"
    return "[]string{" + ", ".join(_q(x) for x in xs) + "}"


def _go_selector(sel: Any) -> str:
    sel = sel or {}
    exprs = sel.get("matchExpressions")
    if exprs is None:
        rendered = "[]v1.LabelSelectorRequirement(nil)"
    else:
        rendered = "[]v1.LabelSelectorRequirement{" + ", ".join(
            f"v1.LabelSelectorRequirement{{Key:{_q(e.get('key', ''))}, Operator:{_q(e.get('operator', ''))}, "
            f"Values:{_go_strings(e.get('values'))}}}" for e in exprs) + "}"
    return f"v1.LabelSelector{{MatchLabels:{_go_map(sel.get('matchLabels'))}, MatchExpressions:{rendered}}}"


def _invalid_rendered(path: str, rendered: str, detail: str) -> FieldError:
    """An Invalid error whose value is shown in Go syntax (maps, structs), as upstream prints them."""
    return FieldError("Invalid", path, f"{rendered}: {detail}")


def _not_found(path: str, value: Any) -> FieldError:
    return FieldError("NotFound", path, orjson.dumps(value).decode())


# --- small helpers ----------------------------------------------------------------------------------------

def _d(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def _l(x: Any) -> list:
    return x if isinstance(x, list) else []


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _nonneg(value: Any, path: str) -> list[FieldError]:
    if _is_int(value) and value < 0:
        return [invalid(path, value, NEGATIVE_ERR)]
    return []


def _positive(value: Any, path: str) -> list[FieldError]:
    if _is_int(value) and value <= 0:
        return [invalid(path, value, "must be greater than 0")]
    return []


def _enum(value: Any, path: str, valid: list[str], *, required_: bool = True) -> list[FieldError]:
    if value is None or value == "":
        return [required(path, "")] if required_ else []
    if value not in valid:
        return [not_supported(path, value, valid)]
    return []


def _immutable(new: Any, old: Any, path: str) -> list[FieldError]:
    return [] if new == old else [invalid(path, new, IMMUTABLE_ERR)]


def _dns_label(value: str, path: str) -> list[FieldError]:
    return [invalid(path, value, m) for m in is_dns1123_label(value)]


def _dns_subdomain(value: str, path: str) -> list[FieldError]:
    return [invalid(path, value, m) for m in is_dns1123_subdomain(value)]


def _diff(old: Any, new: Any, path: str, out: list[str]) -> None:
    """A short human-readable list of differences, in place of upstream's cmp.Diff dump."""
    if len(out) >= 10:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            _diff(old.get(k), new.get(k), f"{path}.{k}" if path else k, out)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            _diff(a, b, f"{path}[{i}]", out)
    elif old != new:
        out.append(f"  {path}: {orjson.dumps(old).decode()} -> {orjson.dumps(new).decode()}")


# --- object metadata ---------------------------------------------------------------------------------------

def validate_object_meta(meta: dict, *, namespaced: bool, name_rule: str = "dns1123subdomain",
                         path: str = "metadata") -> list[FieldError]:
    """Name, namespace, labels, annotations, ownerReferences and finalizers of an object."""
    errs: list[FieldError] = []
    meta = _d(meta)
    check = NAME_CHECKS[name_rule]
    name, gen = meta.get("name") or "", meta.get("generateName") or ""
    if gen:
        errs.extend(invalid(f"{path}.generateName", gen, m) for m in check(_mask_trailing_dash(gen)))
    if not name:
        if not gen:
            errs.append(required(f"{path}.name", "name or generateName is required"))
    else:
        errs.extend(invalid(f"{path}.name", name, m) for m in check(name))
    ns = meta.get("namespace") or ""
    if namespaced:
        if not ns:
            errs.append(required(f"{path}.namespace", ""))
        else:
            errs.extend(invalid(f"{path}.namespace", ns, m) for m in is_dns1123_label(ns))
    elif ns:
        errs.append(forbidden(f"{path}.namespace", "not allowed on this type"))
    errs.extend(_nonneg(meta.get("generation"), f"{path}.generation"))
    errs.extend(validate_labels(meta.get("labels"), f"{path}.labels"))
    errs.extend(validate_annotations(meta.get("annotations"), f"{path}.annotations"))
    errs.extend(validate_owner_references(meta.get("ownerReferences"), f"{path}.ownerReferences"))
    errs.extend(validate_finalizers(meta.get("finalizers"), f"{path}.finalizers"))
    return errs


def validate_annotations(annotations: Any, path: str) -> list[FieldError]:
    errs: list[FieldError] = []
    if not annotations:
        return errs
    total = 0
    for k in sorted(annotations):
        # Annotation keys are qualified names compared case-insensitively.
        errs.extend(invalid(path, k, m) for m in is_qualified_name(k.lower()))
        v = annotations[k]
        total += len(k.encode()) + len(v.encode() if isinstance(v, str) else b"")
    if total > TOTAL_ANNOTATION_SIZE:
        errs.append(too_long(path, TOTAL_ANNOTATION_SIZE))
    return errs


def validate_owner_references(refs: Any, path: str) -> list[FieldError]:
    errs: list[FieldError] = []
    controller = ""
    for ref in _l(refs):
        ref = _d(ref)
        api_version = ref.get("apiVersion") or ""
        version = api_version.split("/")[-1] if api_version else ""
        if not version:
            errs.append(invalid(f"{path}.apiVersion", api_version, "version must not be empty"))
        if not ref.get("kind"):
            errs.append(invalid(f"{path}.kind", ref.get("kind") or "", "kind must not be empty"))
        if not ref.get("name"):
            errs.append(invalid(f"{path}.name", ref.get("name") or "", "name must not be empty"))
        if not ref.get("uid"):
            errs.append(invalid(f"{path}.uid", ref.get("uid") or "", "uid must not be empty"))
        if ref.get("controller") is True:
            current = f"{ref.get('kind', '')}/{ref.get('name', '')}"
            if controller:
                errs.append(invalid(path, refs, "Only one reference can have Controller set to true. "
                                    f'Found "true" in references for {controller} and {current}'))
            else:
                controller = current
    return errs


def validate_finalizers(finalizers: Any, path: str, *, kube_rules: bool = False) -> list[FieldError]:
    errs: list[FieldError] = []
    names = [f for f in _l(finalizers) if isinstance(f, str)]
    for f in names:
        errs.extend(invalid(path, f, m) for m in is_qualified_name(f))
        if kube_rules and "/" not in f and f != "kubernetes":
            errs.append(invalid(path, f, "name is neither a standard finalizer name nor is it fully qualified"))
    if "orphan" in names and "foregroundDeletion" in names:
        errs.append(invalid(path, names, "finalizer orphan and foregroundDeletion cannot be both set"))
    return errs


def validate_object_meta_update(new: dict, old: dict, path: str = "metadata") -> list[FieldError]:
    new, old = _d(new), _d(old)
    errs: list[FieldError] = []
    for f in ("name", "namespace", "uid", "creationTimestamp"):
        if old.get(f) and new.get(f) != old.get(f):
            errs.append(invalid(f"{path}.{f}", new.get(f) or "", IMMUTABLE_ERR))
    if old.get("deletionTimestamp"):
        added = [f for f in _l(new.get("finalizers")) if f not in _l(old.get("finalizers"))]
        if added:
            errs.append(forbidden(f"{path}.finalizers", "no new finalizers can be added if the object is being "
                                  f"deleted, found new finalizers {_go_strings(added)}"))
    gen_new, gen_old = new.get("generation"), old.get("generation")
    if _is_int(gen_new) and _is_int(gen_old) and gen_new < gen_old:
        errs.append(invalid(f"{path}.generation", gen_new, "must not be decremented"))
    return errs


# --- resources ----------------------------------------------------------------------------------------------

_STANDARD_CONTAINER_RESOURCES = frozenset({"cpu", "memory", "ephemeral-storage"})


def _is_extended_resource(name: str) -> bool:
    if "/" not in name or name.startswith("requests."):
        return False
    domain = name.split("/", 1)[0]
    return not (domain == "kubernetes.io" or domain.endswith(".kubernetes.io"))


def _parse_quantities(rl: Any, path: str, errs: list[FieldError]) -> dict[str, Quantity]:
    out: dict[str, Quantity] = {}
    for name, raw in _d(rl).items():
        p = f"{path}[{name}]"
        if "/" not in name:
            if name not in _STANDARD_CONTAINER_RESOURCES and not name.startswith("hugepages-"):
                errs.append(invalid(p, name, "must be a standard resource for containers"))
        else:
            errs.extend(invalid(p, name, m) for m in is_qualified_name(name))
            if not _is_extended_resource(name) and not name.startswith(("hugepages-", "kubernetes.io/")):
                errs.append(invalid(p, name, "doesn't follow extended resource name standard"))
        try:
            q = Quantity.parse(raw)
        except ValueError as e:
            errs.append(invalid(p, raw, str(e)))
            continue
        if q.sign() < 0:
            errs.append(invalid(p, str(q), NEGATIVE_ERR))
        elif _is_extended_resource(name) and q.milli_value() % 1000:
            errs.append(invalid(p, str(q), "must be an integer"))
        out[name] = q
    return out


def validate_resource_requirements(res: Any, path: str) -> list[FieldError]:
    errs: list[FieldError] = []
    res = _d(res)
    limits = _parse_quantities(res.get("limits"), f"{path}.limits", errs)
    requests = _parse_quantities(res.get("requests"), f"{path}.requests", errs)
    for name, req in requests.items():
        lim = limits.get(name)
        if lim is None:
            continue
        if _is_extended_resource(name) and req != lim:
            # Extended resources cannot be overcommitted: request must equal limit.
            errs.append(invalid(f"{path}.requests", str(req), f"must be equal to {name} limit of {lim}"))
        elif req > lim:
            errs.append(invalid(f"{path}.requests", str(req),
                                f"must be less than or equal to {name} limit of {lim}"))
    return errs


# --- pods ---------------------------------------------------------------------------------------------------

# In the order upstream checks them: the second source found is the one reported.
_VOLUME_SOURCES = (
    "emptyDir", "hostPath", "gitRepo", "awsElasticBlockStore", "gcePersistentDisk", "secret", "nfs", "iscsi",
    "glusterfs", "persistentVolumeClaim", "rbd", "quobyte", "flexVolume", "cinder", "cephfs", "flocker",
    "downwardAPI", "fc", "azureFile", "configMap", "vsphereVolume", "azureDisk", "photonPersistentDisk",
    "projected", "portworxVolume", "scaleIO", "storageos", "csi", "ephemeral", "image",
)
_PROTOCOLS = ["SCTP", "TCP", "UDP"]
_RESTART_POLICIES = ["Always", "OnFailure", "Never"]
_DNS_POLICIES = ["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"]
_PULL_POLICIES = ["Always", "IfNotPresent", "Never"]
_TAINT_EFFECTS = ["NoSchedule", "PreferNoSchedule", "NoExecute"]
_PROBE_HANDLERS = ("exec", "httpGet", "tcpSocket", "grpc")


def validate_volumes(volumes: Any, path: str) -> tuple[list[FieldError], set[str]]:
    errs: list[FieldError] = []
    names: set[str] = set()
    for i, vol in enumerate(_l(volumes)):
        vol = _d(vol)
        p = f"{path}[{i}]"
        sources = [s for s in _VOLUME_SOURCES if vol.get(s) is not None]
        if not sources:
            errs.append(required(p, "must specify a volume type"))
        for extra in sources[1:]:
            errs.append(forbidden(f"{p}.{extra}", "may not specify more than 1 volume type"))
        if len(sources) == 1:
            errs.extend(_validate_volume_source(sources[0], _d(vol.get(sources[0])), f"{p}.{sources[0]}"))
        name = vol.get("name") or ""
        if not name:
            errs.append(required(f"{p}.name", ""))
        else:
            errs.extend(_dns_label(name, f"{p}.name"))
        if name in names:
            errs.append(duplicate(f"{p}.name", name))
        names.add(name)
    return errs, names


def _validate_volume_source(kind: str, src: dict, path: str) -> list[FieldError]:
    errs: list[FieldError] = []
    required_fields = {"hostPath": "path", "secret": "secretName", "persistentVolumeClaim": "claimName",
                       "configMap": "name", "nfs": "server", "csi": "driver", "image": "reference"}
    field = required_fields.get(kind)
    if field and not src.get(field):
        # configMap and secret names are optional only in the sense of `optional: true` contents.
        errs.append(required(f"{path}.{field}", ""))
    if kind == "nfs" and not src.get("path"):
        errs.append(required(f"{path}.path", ""))
    if kind in ("secret", "configMap", "downwardAPI", "projected"):
        mode = src.get("defaultMode")
        if _is_int(mode) and not 0 <= mode <= 0o777:
            errs.append(invalid(f"{path}.defaultMode", mode,
                                "must be a number between 0 and 0777 (octal), both inclusive"))
    if kind == "emptyDir" and src.get("sizeLimit") is not None:
        try:
            if Quantity.parse(src["sizeLimit"]).sign() < 0:
                errs.append(invalid(f"{path}.sizeLimit", src["sizeLimit"], NEGATIVE_ERR))
        except ValueError as e:
            errs.append(invalid(f"{path}.sizeLimit", src["sizeLimit"], str(e)))
    return errs


def _validate_ports(ports: Any, path: str, host_network: bool) -> list[FieldError]:
    errs: list[FieldError] = []
    names: set[str] = set()
    for i, port in enumerate(_l(ports)):
        port = _d(port)
        p = f"{path}[{i}]"
        name = port.get("name") or ""
        if name:
            msgs = is_valid_port_name(name)
            errs.extend(invalid(f"{p}.name", name, m) for m in msgs)
            if not msgs:
                if name in names:
                    errs.append(duplicate(f"{p}.name", name))
                names.add(name)
        cp = port.get("containerPort")
        if not cp:
            errs.append(required(f"{p}.containerPort", ""))
        else:
            errs.extend(invalid(f"{p}.containerPort", cp, m) for m in is_valid_port_num(cp))
        hp = port.get("hostPort")
        if hp:
            errs.extend(invalid(f"{p}.hostPort", hp, m) for m in is_valid_port_num(hp))
            if host_network and hp != cp:
                errs.append(invalid(f"{p}.hostPort", hp, "must match `containerPort` when `hostNetwork` is true"))
        errs.extend(_enum(port.get("protocol"), f"{p}.protocol", _PROTOCOLS))
    return errs


def _validate_env(env: Any, path: str) -> list[FieldError]:
    errs: list[FieldError] = []
    for i, ev in enumerate(_l(env)):
        ev = _d(ev)
        p = f"{path}[{i}]"
        name = ev.get("name") or ""
        if not name:
            errs.append(required(f"{p}.name", ""))
        else:
            errs.extend(invalid(f"{p}.name", name, m) for m in is_env_var_name(name))
        vf = ev.get("valueFrom")
        if vf is None:
            continue
        vf = _d(vf)
        n = sum(1 for k in ("fieldRef", "resourceFieldRef", "configMapKeyRef", "secretKeyRef")
                if vf.get(k) is not None)
        if n == 0:
            errs.append(invalid(f"{p}.valueFrom", "", "must specify one of: `fieldRef`, `resourceFieldRef`, "
                                "`configMapKeyRef` or `secretKeyRef`"))
        elif n > 1:
            errs.append(invalid(f"{p}.valueFrom", "", "may not have more than one field specified at a time"))
        elif ev.get("value"):
            errs.append(invalid(f"{p}.valueFrom", "", "may not be specified when `value` is not empty"))
        for ref in ("configMapKeyRef", "secretKeyRef"):
            r = vf.get(ref)
            if r is not None and not _d(r).get("key"):
                errs.append(required(f"{p}.valueFrom.{ref}.key", ""))
        fr = vf.get("fieldRef")
        if fr is not None and not _d(fr).get("fieldPath"):
            errs.append(required(f"{p}.valueFrom.fieldRef.fieldPath", ""))
    return errs


def _validate_mounts(mounts: Any, path: str, volumes: set[str]) -> list[FieldError]:
    errs: list[FieldError] = []
    seen: set[str] = set()
    for i, m in enumerate(_l(mounts)):
        m = _d(m)
        p = f"{path}[{i}]"
        name = m.get("name") or ""
        if not name:
            errs.append(required(f"{p}.name", ""))
        if name not in volumes:
            errs.append(_not_found(f"{p}.name", name))
        mp = m.get("mountPath") or ""
        if not mp:
            errs.append(required(f"{p}.mountPath", ""))
        if mp in seen:
            errs.append(invalid(f"{p}.mountPath", mp, "must be unique"))
        seen.add(mp)
        sub = m.get("subPath") or ""
        if sub:
            if sub.startswith("/"):
                errs.append(invalid(f"{p}.subPath", sub, "must be a relative path"))
            if ".." in sub.split("/"):
                errs.append(invalid(f"{p}.subPath", sub, "must not contain '..'"))
    return errs


def _validate_probe(probe: Any, path: str, *, liveness_like: bool) -> list[FieldError]:
    if probe is None:
        return []
    probe = _d(probe)
    errs: list[FieldError] = []
    handlers = [h for h in _PROBE_HANDLERS if probe.get(h) is not None]
    if not handlers:
        errs.append(required(path, "must specify a handler type"))
    for extra in handlers[1:]:
        errs.append(forbidden(f"{path}.{extra}", "may not specify more than 1 handler type"))
    for f in ("initialDelaySeconds", "timeoutSeconds", "periodSeconds", "successThreshold", "failureThreshold",
              "terminationGracePeriodSeconds"):
        errs.extend(_nonneg(probe.get(f), f"{path}.{f}"))
    st = probe.get("successThreshold")
    if liveness_like and _is_int(st) and st != 1:
        errs.append(invalid(f"{path}.successThreshold", st, "must be 1"))
    for h in ("httpGet", "tcpSocket"):
        port = _d(probe.get(h)).get("port") if probe.get(h) is not None else None
        if probe.get(h) is not None:
            errs.extend(_port_num_or_name(port, f"{path}.{h}.port"))
    return errs


def _port_num_or_name(port: Any, path: str) -> list[FieldError]:
    if port is None or port == "":
        return [required(path, "")]
    if isinstance(port, str):
        if port.isdigit():
            return [invalid(path, int(port), m) for m in is_valid_port_num(int(port))]
        return [invalid(path, port, m) for m in is_valid_port_name(port)]
    return [invalid(path, port, m) for m in is_valid_port_num(port)]


def _validate_container(c: dict, p: str, volumes: set[str], host_network: bool, *, init: bool) -> list[FieldError]:
    errs: list[FieldError] = []
    image = c.get("image") or ""
    if not image:
        errs.append(required(f"{p}.image", ""))
    elif image != image.strip():
        errs.append(invalid(f"{p}.image", image, "must not have leading or trailing whitespace"))
    if c.get("imagePullPolicy"):
        errs.extend(_enum(c.get("imagePullPolicy"), f"{p}.imagePullPolicy", _PULL_POLICIES))
    if c.get("terminationMessagePolicy"):
        errs.extend(_enum(c.get("terminationMessagePolicy"), f"{p}.terminationMessagePolicy",
                          ["File", "FallbackToLogsOnError"]))
    errs.extend(_validate_ports(c.get("ports"), f"{p}.ports", host_network))
    errs.extend(_validate_env(c.get("env"), f"{p}.env"))
    errs.extend(_validate_mounts(c.get("volumeMounts"), f"{p}.volumeMounts", volumes))
    errs.extend(validate_resource_requirements(c.get("resources"), f"{p}.resources"))
    sidecar = init and c.get("restartPolicy") == "Always"
    if init:
        if c.get("restartPolicy") not in (None, "Always"):
            errs.append(not_supported(f"{p}.restartPolicy", c.get("restartPolicy"), ["Always"]))
        if not sidecar:
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if c.get(probe) is not None:
                    errs.append(forbidden(f"{p}.{probe}",
                                          "may not be set for init containers without restartPolicy=Always"))
            if c.get("lifecycle") is not None:
                errs.append(forbidden(f"{p}.lifecycle",
                                      "may not be set for init containers without restartPolicy=Always"))
    elif c.get("restartPolicy") is not None:
        errs.append(forbidden(f"{p}.restartPolicy", "may not be set for non-init containers"))
    if not init or sidecar:
        errs.extend(_validate_probe(c.get("livenessProbe"), f"{p}.livenessProbe", liveness_like=True))
        errs.extend(_validate_probe(c.get("startupProbe"), f"{p}.startupProbe", liveness_like=True))
        errs.extend(_validate_probe(c.get("readinessProbe"), f"{p}.readinessProbe", liveness_like=False))
    return errs


def validate_tolerations(tolerations: Any, path: str) -> list[FieldError]:
    errs: list[FieldError] = []
    for i, t in enumerate(_l(tolerations)):
        t = _d(t)
        p = f"{path}[{i}]"
        key, op, effect = t.get("key") or "", t.get("operator") or "", t.get("effect") or ""
        if key:
            errs.extend(invalid(f"{p}.key", key, m) for m in is_qualified_name(key))
        if not key and op != "Exists":
            errs.append(invalid(f"{p}.operator", op, 'operator must be Exists when `key` is empty, which means '
                                '"match all values and all keys"'))
        if t.get("tolerationSeconds") is not None and effect != "NoExecute":
            errs.append(invalid(f"{p}.effect", effect, "effect must be 'NoExecute' when `tolerationSeconds` is set"))
        value = t.get("value") or ""
        if op in ("Equal", ""):
            msgs = is_valid_label_value(value)
            if msgs:
                errs.append(invalid(f"{p}.operator", value, ";".join(msgs)))
        elif op == "Exists":
            if value:
                errs.append(invalid(f"{p}.operator", t, "value must be empty when `operator` is 'Exists'"))
        else:
            errs.append(not_supported(f"{p}.operator", op, ["Equal", "Exists"]))
        if effect:
            errs.extend(_enum(effect, f"{p}.effect", _TAINT_EFFECTS))
    return errs


def validate_pod_spec(spec: Any, path: str = "spec") -> list[FieldError]:
    """PodSpec rules shared by Pods and every pod template."""
    spec = _d(spec)
    errs, volumes = validate_volumes(spec.get("volumes"), f"{path}.volumes")
    host_network = bool(spec.get("hostNetwork"))
    names: set[str] = set()
    containers = _l(spec.get("containers"))
    if not containers:
        errs.append(required(f"{path}.containers", ""))
    for group, init in (("containers", False), ("initContainers", True)):
        for i, c in enumerate(_l(spec.get(group))):
            c = _d(c)
            p = f"{path}.{group}[{i}]"
            name = c.get("name") or ""
            if not name:
                errs.append(required(f"{p}.name", ""))
            else:
                errs.extend(_dns_label(name, f"{p}.name"))
                if name in names:
                    errs.append(duplicate(f"{p}.name", name))
                names.add(name)
            errs.extend(_validate_container(c, p, volumes, host_network, init=init))
    errs.extend(_enum(spec.get("restartPolicy"), f"{path}.restartPolicy", _RESTART_POLICIES))
    errs.extend(_enum(spec.get("dnsPolicy"), f"{path}.dnsPolicy", _DNS_POLICIES))
    if spec.get("dnsPolicy") == "None" and spec.get("dnsConfig") is None:
        errs.append(required(f"{path}.dnsConfig", "must provide `dnsConfig` when `dnsPolicy` is None"))
    errs.extend(validate_labels(spec.get("nodeSelector"), f"{path}.nodeSelector"))
    for f in ("serviceAccountName", "nodeName", "schedulerName", "priorityClassName", "subdomain"):
        v = spec.get(f)
        if v:
            check = _dns_label if f == "subdomain" else _dns_subdomain
            errs.extend(check(v, f"{path}.{f}"))
    if spec.get("hostname"):
        errs.extend(_dns_label(spec["hostname"], f"{path}.hostname"))
    ads = spec.get("activeDeadlineSeconds")
    if _is_int(ads) and not 1 <= ads <= MAX_INT32:
        errs.append(invalid(f"{path}.activeDeadlineSeconds", ads, f"must be between 1 and {MAX_INT32}, inclusive"))
    errs.extend(validate_tolerations(spec.get("tolerations"), f"{path}.tolerations"))
    return errs


def validate_pod_template(template: Any, path: str) -> list[FieldError]:
    if template is None:
        return [required(path, "")]
    t = _d(template)
    meta = _d(t.get("metadata"))
    errs = validate_labels(meta.get("labels"), f"{path}.metadata.labels")
    errs.extend(validate_annotations(meta.get("annotations"), f"{path}.metadata.annotations"))
    spec = _d(t.get("spec"))
    errs.extend(validate_pod_spec(spec, f"{path}.spec"))
    if spec.get("ephemeralContainers"):
        errs.append(forbidden(f"{path}.spec.ephemeralContainers", "ephemeral containers not allowed in pod template"))
    return errs


_POD_UPDATE_MSG = ("pod updates may not change fields other than `spec.containers[*].image`,"
                   "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` "
                   "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
                   "(allow it to be set to 1 if it was previously negative)")


def _validate_pod(obj: dict, old: dict | None) -> list[FieldError]:
    spec = _d(obj.get("spec"))
    errs = validate_pod_spec(spec, "spec")
    if old is None:
        return errs
    old_spec = _d(old.get("spec"))
    munged = copy.deepcopy(spec)
    for group in ("containers", "initContainers"):
        new_cs, old_cs = _l(munged.get(group)), _l(old_spec.get(group))
        for i, c in enumerate(new_cs):
            if isinstance(c, dict) and i < len(old_cs) and isinstance(old_cs[i], dict):
                if "image" in old_cs[i]:
                    c["image"] = old_cs[i]["image"]
                else:
                    c.pop("image", None)
    new_ads, old_ads = spec.get("activeDeadlineSeconds"), old_spec.get("activeDeadlineSeconds")
    if new_ads is None and old_ads is not None:
        errs.append(invalid("spec.activeDeadlineSeconds", None, "must not update from a positive integer to nil value"))
    elif _is_int(new_ads) and _is_int(old_ads) and new_ads > old_ads:
        errs.append(invalid("spec.activeDeadlineSeconds", new_ads, "must be less than or equal to previous value"))
    _restore(munged, old_spec, "activeDeadlineSeconds")
    for ot in _l(old_spec.get("tolerations")):
        if not any(_same_toleration(ot, nt) for nt in _l(spec.get("tolerations"))):
            errs.append(forbidden("spec.tolerations",
                                  "existing toleration can not be modified except its tolerationSeconds"))
            break
    _restore(munged, old_spec, "tolerations")
    old_grace, new_grace = old_spec.get("terminationGracePeriodSeconds"), spec.get("terminationGracePeriodSeconds")
    if _is_int(old_grace) and old_grace < 0 and new_grace == 1:
        _restore(munged, old_spec, "terminationGracePeriodSeconds")
    if munged != old_spec:
        lines: list[str] = []
        _diff(old_spec, munged, "spec", lines)
        errs.append(forbidden("spec", _POD_UPDATE_MSG + "\n" + "\n".join(lines)))
    return errs


def _restore(munged: dict, old: dict, key: str) -> None:
    if key in old:
        munged[key] = copy.deepcopy(old[key])
    else:
        munged.pop(key, None)


def _same_toleration(old: Any, new: Any) -> bool:
    if not isinstance(old, dict) or not isinstance(new, dict):
        return old == new
    strip = ("tolerationSeconds",)
    return {k: v for k, v in old.items() if k not in strip} == {k: v for k, v in new.items() if k not in strip}


# --- workloads -----------------------------------------------------------------------------------------------

def _validate_selector_and_template(spec: dict, kind_word: str, *, restart: list[str],
                                    selector_required: bool = True) -> list[FieldError]:
    """Selector rules, template validation and the selector/labels match shared by the workload kinds."""
    errs: list[FieldError] = []
    sel = spec.get("selector")
    compiled = None
    if sel is None:
        if selector_required:
            errs.append(required("spec.selector", ""))
    else:
        sel_errs = validate_label_selector_object(sel, "spec.selector")
        errs.extend(sel_errs)
        if not _d(sel).get("matchLabels") and not _d(sel).get("matchExpressions"):
            errs.append(_invalid_rendered("spec.selector", _go_selector(sel),
                                          f"empty selector is invalid for {kind_word}"))
        elif not sel_errs:
            try:
                compiled = from_label_selector_object(sel)
            except InvalidSelector:
                errs.append(_invalid_rendered("spec.selector", _go_selector(sel), "invalid label selector"))
    template = spec.get("template")
    if template is not None and compiled is not None:
        labels = _d(_d(template).get("metadata")).get("labels")
        if not compiled.matches(labels or {}):
            errs.append(_invalid_rendered("spec.template.metadata.labels", _go_map(labels),
                                          "`selector` does not match template `labels`"))
    errs.extend(validate_pod_template(template, "spec.template"))
    if template is not None:
        tspec = _d(_d(template).get("spec"))
        rp = tspec.get("restartPolicy")
        if rp and rp in _RESTART_POLICIES and rp not in restart:
            errs.append(not_supported("spec.template.spec.restartPolicy", rp, restart))
    return errs


def _validate_int_or_percent(value: Any, path: str) -> list[FieldError]:
    if value is None:
        return []
    if isinstance(value, str):
        errs = [invalid(path, value, m) for m in is_valid_percent(value)]
        if not errs and int(value[:-1]) > 100:
            errs.append(invalid(path, value, "must not be greater than 100%"))
        return errs
    if _is_int(value):
        return _nonneg(value, path)
    return [invalid(path, value, "must be an integer or percentage (e.g '5%')")]


def _is_zero_int_or_percent(v: Any) -> bool:
    return v == 0 or v == "0%"


def _selector_immutable(obj: dict, old: dict | None) -> list[FieldError]:
    if old is None:
        return []
    new_sel, old_sel = _d(obj.get("spec")).get("selector"), _d(old.get("spec")).get("selector")

    def norm(s: Any) -> Any:
        s = _d(s)
        return (s.get("matchLabels") or {}, s.get("matchExpressions") or [])

    if norm(new_sel) != norm(old_sel):
        return [_invalid_rendered("spec.selector", _go_selector(new_sel), IMMUTABLE_ERR)]
    return []


def _no_active_deadline(spec: dict, kind: str) -> list[FieldError]:
    tspec = _d(_d(spec.get("template")).get("spec"))
    if tspec.get("activeDeadlineSeconds") is not None:
        return [forbidden("spec.template.spec.activeDeadlineSeconds",
                          f"activeDeadlineSeconds in {kind} is not Supported")]
    return []


def _validate_deployment(obj: dict, old: dict | None) -> list[FieldError]:
    spec = _d(obj.get("spec"))
    errs = _nonneg(spec.get("replicas"), "spec.replicas")
    errs.extend(_validate_selector_and_template(spec, "deployment", restart=["Always"]))
    errs.extend(_no_active_deadline(spec, "ReplicaSet"))
    strategy = _d(spec.get("strategy"))
    stype = strategy.get("type")
    if stype == "Recreate":
        if strategy.get("rollingUpdate") is not None:
            errs.append(forbidden("spec.strategy.rollingUpdate",
                                  "may not be specified when strategy `type` is 'Recreate'"))
    elif stype == "RollingUpdate":
        ru = strategy.get("rollingUpdate")
        if ru is None:
            errs.append(required("spec.strategy.rollingUpdate", "this should be defaulted and never be nil"))
        else:
            ru = _d(ru)
            mu, ms = ru.get("maxUnavailable"), ru.get("maxSurge")
            errs.extend(_validate_int_or_percent(mu, "spec.strategy.rollingUpdate.maxUnavailable"))
            errs.extend(_validate_int_or_percent(ms, "spec.strategy.rollingUpdate.maxSurge"))
            if _is_zero_int_or_percent(mu) and _is_zero_int_or_percent(ms):
                errs.append(invalid("spec.strategy.rollingUpdate.maxUnavailable", mu,
                                    "may not be 0 when `maxSurge` is 0"))
    else:
        errs.append(not_supported("spec.strategy.type", stype, ["Recreate", "RollingUpdate"]))
    min_ready = spec.get("minReadySeconds")
    errs.extend(_nonneg(min_ready, "spec.minReadySeconds"))
    errs.extend(_nonneg(spec.get("revisionHistoryLimit"), "spec.revisionHistoryLimit"))
    pds = spec.get("progressDeadlineSeconds")
    if _is_int(pds):
        errs.extend(_nonneg(pds, "spec.progressDeadlineSeconds"))
        if pds <= (min_ready if _is_int(min_ready) else 0):
            errs.append(invalid("spec.progressDeadlineSeconds", pds, "must be greater than minReadySeconds"))
    errs.extend(_selector_immutable(obj, old))
    return errs


def _validate_replicaset(obj: dict, old: dict | None) -> list[FieldError]:
    spec = _d(obj.get("spec"))
    errs = _nonneg(spec.get("replicas"), "spec.replicas")
    errs.extend(_nonneg(spec.get("minReadySeconds"), "spec.minReadySeconds"))
    errs.extend(_validate_selector_and_template(spec, "deployment", restart=["Always"]))
    errs.extend(_no_active_deadline(spec, "ReplicaSet"))
    errs.extend(_selector_immutable(obj, old))
    return errs


def _validate_replication_controller(obj: dict, old: dict | None) -> list[FieldError]:
    spec = _d(obj.get("spec"))
    errs = _nonneg(spec.get("replicas"), "spec.replicas")
    errs.extend(_nonneg(spec.get("minReadySeconds"), "spec.minReadySeconds"))
    sel = spec.get("selector") or {}
    if not sel:
        errs.append(required("spec.selector", ""))
    else:
        errs.extend(validate_labels(sel, "spec.selector"))
    errs.extend(validate_pod_template(spec.get("template"), "spec.template"))
    template = _d(spec.get("template"))
    labels = _d(_d(template.get("metadata")).get("labels"))
    if sel and template and any(labels.get(k) != v for k, v in sel.items()):
        errs.append(_invalid_rendered("spec.template.metadata.labels", _go_map(labels or None),
                                      "`selector` does not match template `labels`"))
    rp = _d(template.get("spec")).get("restartPolicy")
    if template and rp and rp in _RESTART_POLICIES and rp != "Always":
        errs.append(not_supported("spec.template.spec.restartPolicy", rp, ["Always"]))
    return errs


_STS_MUTABLE = ("replicas", "ordinals", "template", "updateStrategy", "persistentVolumeClaimRetentionPolicy",
                "minReadySeconds")


def _with_claim_volumes(spec: dict) -> dict:
    """The spec with a volume per volumeClaimTemplate, as every pod of the set gets: mounts may name them."""
    names = [_d(_d(t).get("metadata")).get("name") for t in _l(spec.get("volumeClaimTemplates"))]
    template = spec.get("template")
    if not names or not isinstance(template, dict) or not isinstance(template.get("spec"), dict):
        return spec
    tspec = template["spec"]
    have = {_d(v).get("name") for v in _l(tspec.get("volumes"))}
    extra = [{"name": n, "persistentVolumeClaim": {"claimName": n}} for n in names if n and n not in have]
    if not extra:
        return spec
    return {**spec, "template": {**template, "spec": {**tspec, "volumes": [*_l(tspec.get("volumes")), *extra]}}}


def _validate_statefulset(obj: dict, old: dict | None) -> list[FieldError]:
    spec = _d(obj.get("spec"))
    errs = _enum(spec.get("podManagementPolicy"), "spec.podManagementPolicy", ["OrderedReady", "Parallel"])
    us = _d(spec.get("updateStrategy"))
    utype = us.get("type")
    errs.extend(_enum(utype, "spec.updateStrategy.type", ["OnDelete", "RollingUpdate"]))
    if utype == "OnDelete" and us.get("rollingUpdate") is not None:
        errs.append(invalid("spec.updateStrategy.rollingUpdate", us.get("rollingUpdate"),
                            "only allowed for updateStrategy 'RollingUpdate'"))
    ru = _d(us.get("rollingUpdate"))
    errs.extend(_nonneg(ru.get("partition"), "spec.updateStrategy.rollingUpdate.partition"))
    errs.extend(_nonneg(spec.get("replicas"), "spec.replicas"))
    errs.extend(_nonneg(spec.get("minReadySeconds"), "spec.minReadySeconds"))
    if spec.get("serviceName"):
        errs.extend(_dns_label(spec["serviceName"], "spec.serviceName"))
    policy = _d(spec.get("persistentVolumeClaimRetentionPolicy"))
    for f in ("whenDeleted", "whenScaled"):
        if policy.get(f) is not None:
            errs.extend(_enum(policy.get(f), f"spec.persistentVolumeClaimRetentionPolicy.{f}", ["Retain", "Delete"]))
    errs.extend(_validate_selector_and_template(_with_claim_volumes(spec), "statefulset", restart=["Always"]))
    errs.extend(_no_active_deadline(spec, "StatefulSet"))
    for i, pvc in enumerate(_l(spec.get("volumeClaimTemplates"))):
        errs.extend(_validate_pvc_spec(_d(_d(pvc).get("spec")), f"spec.volumeClaimTemplates[{i}].spec"))
    if old is not None:
        old_spec = _d(old.get("spec"))
        rest_new = {k: v for k, v in spec.items() if k not in _STS_MUTABLE}
        rest_old = {k: v for k, v in old_spec.items() if k not in _STS_MUTABLE}
        if rest_new != rest_old:
            errs.append(forbidden("spec", "updates to statefulset spec for fields other than 'replicas', "
                                  "'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' "
                                  "and 'minReadySeconds' are forbidden"))
    return errs


def _validate_daemonset(obj: dict, old: dict | None) -> list[FieldError]:
    spec = _d(obj.get("spec"))
    errs = _validate_selector_and_template(spec, "daemonset", restart=["Always"])
    tspec = _d(_d(spec.get("template")).get("spec"))
    if tspec.get("activeDeadlineSeconds") is not None:
        errs.append(invalid("spec.template.spec.activeDeadlineSeconds", tspec["activeDeadlineSeconds"],
                            "activeDeadlineSeconds in DaemonSet is not Supported"))
    errs.extend(_nonneg(spec.get("minReadySeconds"), "spec.minReadySeconds"))
    errs.extend(_nonneg(spec.get("revisionHistoryLimit"), "spec.revisionHistoryLimit"))
    us = _d(spec.get("updateStrategy"))
    utype = us.get("type")
    errs.extend(_enum(utype, "spec.updateStrategy.type", ["OnDelete", "RollingUpdate"]))
    if utype == "RollingUpdate":
        ru = us.get("rollingUpdate")
        if ru is None:
            errs.append(required("spec.updateStrategy.rollingUpdate", ""))
        else:
            mu, ms = _d(ru).get("maxUnavailable"), _d(ru).get("maxSurge")
            errs.extend(_validate_int_or_percent(mu, "spec.updateStrategy.rollingUpdate.maxUnavailable"))
            errs.extend(_validate_int_or_percent(ms, "spec.updateStrategy.rollingUpdate.maxSurge"))
            has_unavailable = mu is not None and not _is_zero_int_or_percent(mu)
            has_surge = ms is not None and not _is_zero_int_or_percent(ms)
            # A DaemonSet either surges new pods or takes old ones down first, never both.
            if has_unavailable and has_surge:
                errs.append(invalid("spec.updateStrategy.rollingUpdate.maxSurge", ms,
                                    "may not be set when maxUnavailable is non-zero"))
            elif not has_unavailable and not has_surge:
                errs.append(invalid("spec.updateStrategy.rollingUpdate.maxUnavailable", mu,
                                    "may not be 0 when `maxSurge` is 0"))
    errs.extend(_selector_immutable(obj, old))
    return errs


def _validate_job_spec(spec: dict, path: str, *, template_selector: bool) -> list[FieldError]:
    errs: list[FieldError] = []
    for f in ("parallelism", "completions", "activeDeadlineSeconds", "backoffLimit", "ttlSecondsAfterFinished",
              "backoffLimitPerIndex", "maxFailedIndexes"):
        errs.extend(_nonneg(spec.get(f), f"{path}.{f}"))
    mode = spec.get("completionMode")
    if mode is not None:
        errs.extend(_enum(mode, f"{path}.completionMode", ["NonIndexed", "Indexed"]))
        if mode == "Indexed" and spec.get("completions") is None:
            errs.append(required(f"{path}.completions", "when completion mode is Indexed"))
    if spec.get("podReplacementPolicy") is not None:
        errs.extend(_enum(spec.get("podReplacementPolicy"), f"{path}.podReplacementPolicy",
                          ["Failed", "TerminatingOrFailed"]))
    template = spec.get("template")
    errs.extend(validate_pod_template(template, f"{path}.template"))
    if template is not None:
        rp = _d(_d(template).get("spec")).get("restartPolicy")
        if rp not in ("OnFailure", "Never"):
            errs.append(not_supported(f"{path}.template.spec.restartPolicy", rp, ["OnFailure", "Never"]))
    sel = spec.get("selector")
    if sel is not None:
        errs.extend(validate_label_selector_object(sel, f"{path}.selector"))
    if template_selector and sel is not None and template is not None:
        try:
            compiled = from_label_selector_object(sel)
        except InvalidSelector:
            compiled = None
        labels = _d(_d(template).get("metadata")).get("labels")
        if compiled is not None and not compiled.matches(labels or {}):
            errs.append(_invalid_rendered(f"{path}.template.metadata.labels", _go_map(labels),
                                          "`selector` does not match template `labels`"))
    return errs


def _validate_job(obj: dict, old: dict | None) -> list[FieldError]:
    spec = _d(obj.get("spec"))
    errs = _validate_job_spec(spec, "spec", template_selector=True)
    if spec.get("manualSelector") is True and spec.get("selector") is None:
        errs.append(required("spec.selector", ""))
    if old is None:
        return errs
    old_spec = _d(old.get("spec"))
    errs.extend(_selector_immutable(obj, old) if old_spec.get("selector") is not None else [])
    errs.extend(_immutable(spec.get("completionMode"), old_spec.get("completionMode"), "spec.completionMode"))
    errs.extend(_immutable(spec.get("podFailurePolicy"), old_spec.get("podFailurePolicy"), "spec.podFailurePolicy"))
    if spec.get("completions") != old_spec.get("completions"):
        # Elastic Indexed Jobs may scale completions together with parallelism.
        if spec.get("completionMode") != "Indexed":
            errs.append(invalid("spec.completions", spec.get("completions"), IMMUTABLE_ERR))
        elif spec.get("completions") != spec.get("parallelism"):
            errs.append(invalid("spec.completions", spec.get("completions"),
                                "can only be modified in tandem with spec.parallelism"))
    new_t, old_t = copy.deepcopy(_d(spec.get("template"))), _d(old_spec.get("template"))
    if old_spec.get("suspend") is True and not _d(old.get("status")).get("startTime"):
        # A suspended Job that never started may have its scheduling directives changed.
        for section, keys in (("spec", ("nodeSelector", "affinity", "tolerations", "schedulingGates")),
                              ("metadata", ("labels", "annotations"))):
            if isinstance(new_t.get(section), dict):
                for key in keys:
                    _restore(new_t[section], _d(old_t.get(section)), key)
                if not new_t[section] and section not in old_t:
                    del new_t[section]
    if new_t != old_t:
        errs.append(invalid("spec.template", spec.get("template"), IMMUTABLE_ERR))
    return errs


def _validate_cronjob(obj: dict, old: dict | None) -> list[FieldError]:
    spec = _d(obj.get("spec"))
    errs: list[FieldError] = []
    name = _d(obj.get("metadata")).get("name") or ""
    if old is None and len(name) > 52:
        # The controller appends an 11-character suffix and Job names must stay within 63.
        errs.append(invalid("metadata.name", name, "must be no more than 52 characters"))
    schedule = spec.get("schedule") or ""
    tz = spec.get("timeZone")
    if not schedule:
        errs.append(required("spec.schedule", ""))
    else:
        try:
            parse_cron(schedule)
        except ValueError as e:
            errs.append(invalid("spec.schedule", schedule, str(e)))
        if "TZ" in schedule:
            errs.append(invalid("spec.schedule", schedule,
                                "cannot use TZ or CRON_TZ in schedule, use timeZone field instead"))
    if tz is not None:
        if tz == "":
            errs.append(invalid("spec.timeZone", tz, "timeZone must be nil or non-empty string"))
        elif tz.lower() == "local":
            errs.append(invalid("spec.timeZone", tz,
                                "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones"))
        elif not _valid_zone(tz):
            errs.append(invalid("spec.timeZone", tz, f"unknown time zone {tz}"))
    errs.extend(_enum(spec.get("concurrencyPolicy"), "spec.concurrencyPolicy", ["Allow", "Forbid", "Replace"]))
    for f in ("startingDeadlineSeconds", "successfulJobsHistoryLimit", "failedJobsHistoryLimit"):
        errs.extend(_nonneg(spec.get(f), f"spec.{f}"))
    jt = spec.get("jobTemplate")
    if jt is None:
        errs.append(required("spec.jobTemplate", ""))
    else:
        jt = _d(jt)
        jmeta = _d(jt.get("metadata"))
        errs.extend(validate_labels(jmeta.get("labels"), "spec.jobTemplate.metadata.labels"))
        errs.extend(validate_annotations(jmeta.get("annotations"), "spec.jobTemplate.metadata.annotations"))
        errs.extend(_validate_job_spec(_d(jt.get("spec")), "spec.jobTemplate.spec", template_selector=False))
    return errs


def _valid_zone(tz: str) -> bool:
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


# --- cron schedules ------------------------------------------------------------------------------------------

_CRON_BOUNDS = {
    "minute": (0, 59, None),
    "hour": (0, 23, None),
    "dom": (1, 31, None),
    "month": (1, 12, {m: i + 1 for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])}),
    "dow": (0, 6, {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}),
}
_CRON_MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
_DURATION_RE = re.compile(r"^[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+$")


class CronSchedule:
    """A parsed 5-field schedule: the allowed values of each field (or an @every interval)."""

    __slots__ = ("dom", "dom_star", "dow", "dow_star", "every", "hour", "minute", "month", "timezone")

    def __init__(self) -> None:
        self.minute: frozenset[int] = frozenset()
        self.hour: frozenset[int] = frozenset()
        self.dom: frozenset[int] = frozenset()
        self.month: frozenset[int] = frozenset()
        self.dow: frozenset[int] = frozenset()
        # Like cron, when both day fields are restricted a day matches if either matches.
        self.dom_star = False
        self.dow_star = False
        self.every: str | None = None
        self.timezone: str | None = None


def parse_cron(spec: str) -> CronSchedule:
    """Parse a standard cron schedule the way the CronJob controller's parser does; ValueError on error."""
    if not spec:
        raise ValueError("empty spec string")
    sched = CronSchedule()
    if spec.startswith(("TZ=", "CRON_TZ=")):
        eq, sp = spec.index("="), spec.find(" ")
        zone = spec[eq + 1:sp] if sp >= 0 else spec[eq + 1:]
        if not _valid_zone(zone):
            raise ValueError(f"provided bad location {zone}: unknown time zone {zone}")
        sched.timezone = zone
        spec = spec[sp:].strip() if sp >= 0 else ""
    if spec.startswith("@"):
        if spec.startswith("@every "):
            dur = spec[len("@every "):].strip()
            if not _DURATION_RE.match(dur):
                raise ValueError(f'failed to parse duration {spec}: time: invalid duration "{dur}"')
            sched.every = dur
            return sched
        if spec not in _CRON_MACROS:
            raise ValueError(f"unrecognized descriptor: {spec}")
        spec = _CRON_MACROS[spec]
    fields = spec.split()
    if len(fields) != 5:
        raise ValueError(f"expected exactly 5 fields, found {len(fields)}: [{' '.join(fields)}]")
    values = []
    for text, name in zip(fields, ("minute", "hour", "dom", "month", "dow"), strict=True):
        lo, hi, names = _CRON_BOUNDS[name]
        allowed: set[int] = set()
        star = False
        for expr in text.split(","):
            vals, is_star = _cron_range(expr, lo, hi, names)
            allowed |= vals
            star = star or is_star
        values.append(frozenset(allowed))
        if name == "dom":
            sched.dom_star = star
        elif name == "dow":
            sched.dow_star = star
    sched.minute, sched.hour, sched.dom, sched.month, sched.dow = values
    return sched


def _cron_int(expr: str, names: dict[str, int] | None) -> int:
    if names and expr.lower() in names:
        return names[expr.lower()]
    try:
        n = int(expr, 10)
    except ValueError:
        raise ValueError(f'failed to parse int from {expr}: strconv.Atoi: parsing "{expr}": invalid syntax') from None
    if n < 0:
        raise ValueError(f"negative number ({n}) not allowed: {expr}")
    return n


def _cron_range(expr: str, lo: int, hi: int, names: dict[str, int] | None) -> tuple[set[int], bool]:
    range_and_step = expr.split("/")
    low_high = range_and_step[0].split("-")
    star = False
    if low_high[0] in ("*", "?"):
        start, end, star = lo, hi, True
    else:
        start = _cron_int(low_high[0], names)
        if len(low_high) == 1:
            end = start
        elif len(low_high) == 2:
            end = _cron_int(low_high[1], names)
        else:
            raise ValueError(f"too many hyphens: {expr}")
    if len(range_and_step) == 1:
        step = 1
    elif len(range_and_step) == 2:
        step = _cron_int(range_and_step[1], None)
        if len(low_high) == 1:
            end = hi
        if step > 1:
            star = False
    else:
        raise ValueError(f"too many slashes: {expr}")
    if start < lo:
        raise ValueError(f"beginning of range ({start}) below minimum ({lo}): {expr}")
    if end > hi:
        raise ValueError(f"end of range ({end}) above maximum ({hi}): {expr}")
    if start > end:
        raise ValueError(f"beginning of range ({start}) beyond end of range ({end}): {expr}")
    if step == 0:
        raise ValueError(f"step of range should be a positive number: {expr}")
    return set(range(start, end + 1, step)), star


# --- services -----------------------------------------------------------------------------------------------

_SERVICE_TYPES = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]


def _validate_service(obj: dict, old: dict | None) -> list[FieldError]:
    spec = _d(obj.get("spec"))
    errs: list[FieldError] = []
    stype = spec.get("type") or "ClusterIP"
    errs.extend(_enum(spec.get("type"), "spec.type", _SERVICE_TYPES))
    cluster_ip = spec.get("clusterIP") or ""
    headless = cluster_ip == "None"
    ports = _l(spec.get("ports"))
    old_spec = _d(_d(old).get("spec"))
    if stype == "ExternalName":
        # A type change wipes an address the writer left as it was (the allocator does, later).
        if cluster_ip and cluster_ip != (old_spec.get("clusterIP") or ""):
            errs.append(forbidden("spec.clusterIP", "may not be set for ExternalName services"))
        ext = spec.get("externalName") or ""
        if not ext:
            errs.append(required("spec.externalName", ""))
        else:
            errs.extend(invalid("spec.externalName", ext, m) for m in is_dns1123_subdomain(ext.removesuffix(".")))
    elif not ports and not headless:
        errs.append(required("spec.ports", ""))
    if headless and stype in ("NodePort", "LoadBalancer"):
        errs.append(invalid("spec.clusterIPs[0]", cluster_ip, f"may not be set to 'None' for {stype} services"))
    for i, ip in enumerate(_l(spec.get("clusterIPs")) or ([cluster_ip] if cluster_ip else [])):
        if ip != "None" and not _is_ip(ip):
            errs.append(invalid(f"spec.clusterIPs[{i}]", ip, "must be a valid IP address, (e.g. 10.9.8.7 or "
                                "2001:db8::ffff)"))
    names: set[str] = set()
    seen: set[tuple[Any, Any]] = set()
    # Node ports a type change leaves as they were are wiped (by the allocator), not refused.
    old_node_ports = {_d(p).get("nodePort") for p in _l(old_spec.get("ports"))} \
        if old_spec.get("type") in ("NodePort", "LoadBalancer") else set()
    carried = {_d(p).get("nodePort") for p in ports if _d(p).get("nodePort")} <= old_node_ports
    for i, port in enumerate(ports):
        port = _d(port)
        p = f"spec.ports[{i}]"
        name = port.get("name") or ""
        if len(ports) > 1 and not name:
            errs.append(required(f"{p}.name", ""))
        elif name:
            errs.extend(_dns_label(name, f"{p}.name"))
            if name in names:
                errs.append(duplicate(f"{p}.name", name))
            names.add(name)
        errs.extend(invalid(f"{p}.port", port.get("port"), m) for m in is_valid_port_num(port.get("port")))
        errs.extend(_enum(port.get("protocol"), f"{p}.protocol", _PROTOCOLS))
        tp = port.get("targetPort")
        if tp is not None and tp != 0 and tp != "":
            if isinstance(tp, str):
                errs.extend(invalid(f"{p}.targetPort", tp, m) for m in is_valid_port_name(tp))
            else:
                errs.extend(invalid(f"{p}.targetPort", tp, m) for m in is_valid_port_num(tp))
        node_port = port.get("nodePort")
        if node_port:
            if stype not in ("NodePort", "LoadBalancer"):
                if not carried:
                    errs.append(forbidden(f"{p}.nodePort", f"may not be used when `type` is '{stype}'"))
            else:
                errs.extend(invalid(f"{p}.nodePort", node_port, m) for m in is_valid_port_num(node_port))
        key = (port.get("port"), port.get("protocol"))
        if key in seen:
            errs.append(duplicate(p, {"port": key[0], "protocol": key[1]}))
        seen.add(key)
    if stype != "ExternalName":
        errs.extend(validate_labels(spec.get("selector"), "spec.selector"))
    errs.extend(_enum(spec.get("sessionAffinity"), "spec.sessionAffinity", ["ClientIP", "None"], required_=False))
    if spec.get("sessionAffinity") == "ClientIP":
        timeout = _d(_d(spec.get("sessionAffinityConfig")).get("clientIP")).get("timeoutSeconds")
        if _is_int(timeout) and not 0 < timeout <= 86400:
            errs.append(invalid("spec.sessionAffinityConfig.clientIP.timeoutSeconds", timeout,
                                "must be greater than 0 and less than 86400"))
    if spec.get("internalTrafficPolicy") is not None:
        errs.extend(_enum(spec.get("internalTrafficPolicy"), "spec.internalTrafficPolicy", ["Cluster", "Local"]))
    if spec.get("externalTrafficPolicy"):
        errs.extend(_enum(spec.get("externalTrafficPolicy"), "spec.externalTrafficPolicy", ["Cluster", "Local"]))
    if spec.get("ipFamilyPolicy") is not None:
        errs.extend(_enum(spec.get("ipFamilyPolicy"), "spec.ipFamilyPolicy",
                          ["PreferDualStack", "RequireDualStack", "SingleStack"]))
    for i, fam in enumerate(_l(spec.get("ipFamilies"))):
        errs.extend(_enum(fam, f"spec.ipFamilies[{i}]", ["IPv4", "IPv6"]))
    if old is not None:
        old_ip = old_spec.get("clusterIP") or ""
        both_headless = headless and old_ip == "None"
        if ("ExternalName" not in (stype, old_spec.get("type"))) and not both_headless and old_ip \
                and cluster_ip and cluster_ip != old_ip:
            errs.append(_invalid_rendered("spec.clusterIPs[0]", _go_strings(spec.get("clusterIPs") or [cluster_ip]),
                                          "may not change once set"))
    return errs


def _is_ip(s: Any) -> bool:
    try:
        ipaddress.ip_address(s)
    except ValueError:
        return False
    return True


# --- config and storage ---------------------------------------------------------------------------------------

def _validate_data_keys(data: Any, path: str, other: Any, other_name: str) -> tuple[list[FieldError], int]:
    errs: list[FieldError] = []
    size = 0
    for key in sorted(_d(data)):
        errs.extend(invalid(f"{path}[{key}]", key, m) for m in is_config_map_key(key))
        if key in _d(other):
            errs.append(invalid(f"{path}[{key}]", key, f"duplicate of key present in {other_name}"))
        v = data[key]
        size += len(v.encode()) if isinstance(v, str) else 0
    return errs, size


def _validate_configmap(obj: dict, old: dict | None) -> list[FieldError]:
    data, binary = obj.get("data"), obj.get("binaryData")
    errs, size = _validate_data_keys(data, "data", binary, "binaryData")
    berrs, bsize = _validate_data_keys(binary, "binaryData", data, "data")
    errs.extend(berrs)
    # binaryData is base64 in JSON; the limit applies to the decoded bytes.
    if size + bsize * 3 // 4 > MAX_CONFIG_SIZE:
        errs.append(too_long("", MAX_CONFIG_SIZE))
    errs.extend(_immutable_data(obj, old, ("data", "binaryData")))
    return errs


def _immutable_data(obj: dict, old: dict | None, fields: tuple[str, ...]) -> list[FieldError]:
    if old is None or old.get("immutable") is not True:
        return []
    errs: list[FieldError] = []
    if obj.get("immutable") is not True:
        errs.append(forbidden("immutable", "field is immutable when `immutable` is set"))
    for f in fields:
        if (obj.get(f) or {}) != (old.get(f) or {}):
            errs.append(forbidden(f, "field is immutable when `immutable` is set"))
    return errs


_SECRET_REQUIRED_KEYS = {
    "kubernetes.io/dockercfg": [".dockercfg"],
    "kubernetes.io/dockerconfigjson": [".dockerconfigjson"],
    "kubernetes.io/ssh-auth": ["ssh-privatekey"],
    "kubernetes.io/tls": ["tls.crt", "tls.key"],
}


def _validate_secret(obj: dict, old: dict | None) -> list[FieldError]:
    data = obj.get("data")
    errs, _ = _validate_data_keys(data, "data", None, "")
    size = sum(len(v) * 3 // 4 for v in _d(data).values() if isinstance(v, str))
    size += sum(len(v.encode()) for v in _d(obj.get("stringData")).values() if isinstance(v, str))
    if size > MAX_CONFIG_SIZE:
        errs.append(too_long("data", MAX_CONFIG_SIZE))
    stype = obj.get("type") or "Opaque"
    keys = set(_d(data)) | set(_d(obj.get("stringData")))
    for key in _SECRET_REQUIRED_KEYS.get(stype, []):
        if key not in keys:
            errs.append(required(f"data[{key}]", ""))
    if stype == "kubernetes.io/service-account-token":
        ann = _d(_d(obj.get("metadata")).get("annotations"))
        if not ann.get("kubernetes.io/service-account.name"):
            errs.append(required("metadata.annotations[kubernetes.io/service-account.name]", ""))
    if stype == "kubernetes.io/basic-auth" and not ({"username", "password"} & keys):
        errs.append(required("data[username]", ""))
    if old is not None:
        errs.extend(_immutable(stype, old.get("type") or "Opaque", "type"))
        errs.extend(_immutable_data(obj, old, ("data",)))
    return errs


_ACCESS_MODES = ["ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"]


def _validate_pvc_spec(spec: dict, path: str) -> list[FieldError]:
    errs: list[FieldError] = []
    modes = _l(spec.get("accessModes"))
    if not modes:
        errs.append(required(f"{path}.accessModes", "at least 1 access mode is required"))
    for m in modes:
        if m not in _ACCESS_MODES:
            errs.append(not_supported(f"{path}.accessModes", m, _ACCESS_MODES))
    if "ReadWriteOncePod" in modes and len(modes) > 1:
        errs.append(forbidden(f"{path}.accessModes", "may not use ReadWriteOncePod with other access modes"))
    if spec.get("selector") is not None:
        errs.extend(validate_label_selector_object(spec.get("selector"), f"{path}.selector"))
    storage = _d(_d(spec.get("resources")).get("requests")).get("storage")
    spath = f"{path}.resources[storage]"
    if storage is None:
        errs.append(required(spath, ""))
    else:
        try:
            if Quantity.parse(storage).sign() <= 0:
                errs.append(invalid(spath, storage, "must be greater than zero"))
        except ValueError as e:
            errs.append(invalid(spath, storage, str(e)))
    if spec.get("storageClassName"):
        errs.extend(_dns_subdomain(spec["storageClassName"], f"{path}.storageClassName"))
    if spec.get("volumeMode") is not None:
        errs.extend(_enum(spec.get("volumeMode"), f"{path}.volumeMode", ["Block", "Filesystem"]))
    return errs


def _validate_pvc(obj: dict, old: dict | None) -> list[FieldError]:
    spec = _d(obj.get("spec"))
    errs = _validate_pvc_spec(spec, "spec")
    if old is None:
        return errs
    old_spec = _d(old.get("spec"))
    mutable = ("resources", "volumeAttributesClassName")
    # Binding fills volumeName once; the rest of the spec is fixed at creation.
    new_rest = {k: v for k, v in spec.items() if k not in mutable and not (k == "volumeName"
                                                                            and not old_spec.get(k))}
    old_rest = {k: v for k, v in old_spec.items() if k not in mutable and not (k == "volumeName"
                                                                                and not old_spec.get(k))}
    if new_rest != old_rest:
        lines: list[str] = []
        _diff(old_rest, new_rest, "spec", lines)
        errs.append(forbidden("spec", "spec is immutable after creation except resources.requests and "
                              "volumeAttributesClassName for bound claims\n" + "\n".join(lines)))
    try:
        new_s = Quantity.parse(_d(_d(spec.get("resources")).get("requests")).get("storage"))
        old_s = Quantity.parse(_d(_d(old_spec.get("resources")).get("requests")).get("storage"))
    except ValueError:
        return errs
    if new_s < old_s:
        errs.append(forbidden("spec.resources.requests.storage", "field can not be less than previous value"))
    return errs


def _validate_pv(obj: dict, old: dict | None) -> list[FieldError]:
    spec = _d(obj.get("spec"))
    errs: list[FieldError] = []
    modes = _l(spec.get("accessModes"))
    if not modes:
        errs.append(required("spec.accessModes", ""))
    for m in modes:
        if m not in _ACCESS_MODES:
            errs.append(not_supported("spec.accessModes", m, _ACCESS_MODES))
    cap = _d(spec.get("capacity"))
    if "storage" not in cap:
        errs.append(required("spec.capacity", ""))
    for name, raw in cap.items():
        if name != "storage":
            errs.append(not_supported(f"spec.capacity[{name}]", name, ["storage"]))
            continue
        try:
            if Quantity.parse(raw).sign() <= 0:
                errs.append(invalid(f"spec.capacity[{name}]", raw, "must be greater than zero"))
        except ValueError as e:
            errs.append(invalid(f"spec.capacity[{name}]", raw, str(e)))
    sources = [s for s in _VOLUME_SOURCES + ("local",) if spec.get(s) is not None
               and s not in ("emptyDir", "secret", "configMap", "downwardAPI", "projected", "gitRepo",
                             "persistentVolumeClaim", "ephemeral", "image")]
    if not sources:
        errs.append(required("spec", "must specify a volume type"))
    for extra in sources[1:]:
        errs.append(forbidden(f"spec.{extra}", "may not specify more than 1 volume type"))
    if spec.get("persistentVolumeReclaimPolicy") is not None:
        errs.extend(_enum(spec.get("persistentVolumeReclaimPolicy"), "spec.persistentVolumeReclaimPolicy",
                          ["Delete", "Recycle", "Retain"]))
    if spec.get("volumeMode") is not None:
        errs.extend(_enum(spec.get("volumeMode"), "spec.volumeMode", ["Block", "Filesystem"]))
    return errs


# --- cluster objects --------------------------------------------------------------------------------------------

def _validate_namespace(obj: dict, old: dict | None) -> list[FieldError]:
    return validate_finalizers(_d(obj.get("spec")).get("finalizers"), "spec.finalizers", kube_rules=True)


def _validate_node(obj: dict, old: dict | None) -> list[FieldError]:
    spec = _d(obj.get("spec"))
    errs: list[FieldError] = []
    seen: set[tuple[str, str]] = set()
    for i, t in enumerate(_l(spec.get("taints"))):
        t = _d(t)
        p = f"spec.taints[{i}]"
        key = t.get("key") or ""
        errs.extend(invalid(f"{p}.key", key, m) for m in is_qualified_name(key))
        msgs = is_valid_label_value(t.get("value") or "")
        if msgs:
            errs.append(invalid(f"{p}.value", t.get("value") or "", ";".join(msgs)))
        errs.extend(_enum(t.get("effect"), f"{p}.effect", _TAINT_EFFECTS))
        k = (key, t.get("effect") or "")
        if k in seen:
            errs.append(FieldError("Duplicate", p, "taints must be unique by key and effect pair", t))
        seen.add(k)
    cidrs = _l(spec.get("podCIDRs")) or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    for i, c in enumerate(cidrs):
        try:
            ipaddress.ip_network(c, strict=False)
        except ValueError:
            errs.append(invalid(f"spec.podCIDRs[{i}]", c, "must be a valid CIDR value, (e.g. 10.9.8.0/24 or "
                                "2001:db8::/64)"))
    if old is not None:
        old_spec = _d(old.get("spec"))
        old_cidrs = _l(old_spec.get("podCIDRs")) or ([old_spec["podCIDR"]] if old_spec.get("podCIDR") else [])
        if old_cidrs and cidrs != old_cidrs:
            errs.append(forbidden("spec.podCIDRs", 'node updates may not change podCIDR except from "" to valid'))
        if old_spec.get("providerID") and spec.get("providerID") != old_spec.get("providerID"):
            errs.append(forbidden("spec.providerID", 'node updates may not change providerID except from "" to '
                                  "valid"))
    return errs


def _validate_lease(obj: dict, old: dict | None) -> list[FieldError]:
    spec = _d(obj.get("spec"))
    errs = _positive(spec.get("leaseDurationSeconds"), "spec.leaseDurationSeconds")
    errs.extend(_nonneg(spec.get("leaseTransitions"), "spec.leaseTransitions"))
    return errs


def _validate_service_account(obj: dict, old: dict | None) -> list[FieldError]:
    errs: list[FieldError] = []
    for field in ("secrets", "imagePullSecrets"):
        for i, ref in enumerate(_l(obj.get(field))):
            if not _d(ref).get("name"):
                errs.append(required(f"{field}[{i}].name", ""))
    return errs


_PATH_TYPES = ["Exact", "ImplementationSpecific", "Prefix"]


def _validate_ingress_backend(b: Any, path: str) -> list[FieldError]:
    b = _d(b)
    svc, res = b.get("service"), b.get("resource")
    if svc is not None and res is not None:
        return [invalid(path, "", "cannot set both resource and service backends")]
    if res is not None:
        res = _d(res)
        errs = []
        if not res.get("kind"):
            errs.append(required(f"{path}.resource.kind", ""))
        if not res.get("name"):
            errs.append(required(f"{path}.resource.name", ""))
        return errs
    if svc is None:
        return [invalid(path, "", "resource or service backend is required")]
    svc = _d(svc)
    errs = []
    name = svc.get("name") or ""
    if not name:
        errs.append(required(f"{path}.service.name", ""))
    else:
        errs.extend(invalid(f"{path}.service.name", name, m) for m in is_dns1035_label(name))
    port = _d(svc.get("port"))
    pname, pnum = port.get("name") or "", port.get("number") or 0
    if pname and pnum:
        errs.append(invalid(path, "", "cannot set both port name & port number"))
    elif pname:
        errs.extend(invalid(f"{path}.service.port.name", pname, m) for m in is_valid_port_name(pname))
    elif pnum:
        errs.extend(invalid(f"{path}.service.port.number", pnum, m) for m in is_valid_port_num(pnum))
    else:
        errs.append(required(path, "port name or number is required"))
    return errs


def _validate_ingress(obj: dict, old: dict | None) -> list[FieldError]:
    spec = _d(obj.get("spec"))
    errs: list[FieldError] = []
    rules = _l(spec.get("rules"))
    if spec.get("defaultBackend") is None and not rules:
        errs.append(invalid("spec", rules, "either `defaultBackend` or `rules` must be specified"))
    if spec.get("defaultBackend") is not None:
        errs.extend(_validate_ingress_backend(spec["defaultBackend"], "spec.defaultBackend"))
    if spec.get("ingressClassName"):
        errs.extend(_dns_subdomain(spec["ingressClassName"], "spec.ingressClassName"))
    for i, rule in enumerate(rules):
        rule = _d(rule)
        p = f"spec.rules[{i}]"
        host = rule.get("host") or ""
        if host:
            errs.extend(_validate_host(host, f"{p}.host"))
        http = rule.get("http")
        if http is None:
            continue
        paths = _l(_d(http).get("paths"))
        if not paths:
            errs.append(required(f"{p}.http.paths", ""))
        for j, hp in enumerate(paths):
            hp = _d(hp)
            pp = f"{p}.http.paths[{j}]"
            ptype, path = hp.get("pathType"), hp.get("path") or ""
            if not ptype:
                errs.append(required(f"{pp}.pathType", "pathType must be specified"))
            elif ptype not in _PATH_TYPES:
                errs.append(not_supported(f"{pp}.pathType", ptype, _PATH_TYPES))
            elif ptype in ("Exact", "Prefix"):
                if not path.startswith("/"):
                    errs.append(invalid(f"{pp}.path", path, "must be an absolute path"))
                for bad in ("//", "/./", "/../", "%2f", "%2F"):
                    if bad in path:
                        errs.append(invalid(f"{pp}.path", path, f"must not contain '{bad}'"))
                for bad in ("/..", "/."):
                    if path.endswith(bad):
                        errs.append(invalid(f"{pp}.path", path, f"cannot end with '{bad}'"))
            elif path and not path.startswith("/"):
                errs.append(invalid(f"{pp}.path", path, "must be an absolute path"))
            errs.extend(_validate_ingress_backend(hp.get("backend"), f"{pp}.backend"))
    for i, tls in enumerate(_l(spec.get("tls"))):
        for j, host in enumerate(_l(_d(tls).get("hosts"))):
            errs.extend(_validate_host(host, f"spec.tls[{i}].hosts[{j}]"))
    return errs


def _validate_host(host: str, path: str) -> list[FieldError]:
    if _is_ip(host):
        return [invalid(path, host, "must be a DNS name, not an IP address")]
    if host.startswith("*"):
        return [invalid(path, host, m) for m in is_wildcard_dns1123_subdomain(host)]
    return [invalid(path, host, m) for m in is_dns1123_subdomain(host)]


# --- dispatch --------------------------------------------------------------------------------------------------

Validator = Callable[[dict, dict | None], list[FieldError]]

VALIDATORS: dict[tuple[str, str], Validator] = {
    ("", "Pod"): _validate_pod,
    ("", "ReplicationController"): _validate_replication_controller,
    ("", "Service"): _validate_service,
    ("", "ConfigMap"): _validate_configmap,
    ("", "Secret"): _validate_secret,
    ("", "Namespace"): _validate_namespace,
    ("", "Node"): _validate_node,
    ("", "PersistentVolumeClaim"): _validate_pvc,
    ("", "PersistentVolume"): _validate_pv,
    ("", "ServiceAccount"): _validate_service_account,
    ("", "PodTemplate"): lambda obj, old: validate_pod_template(obj.get("template"), "template"),
    ("apps", "Deployment"): _validate_deployment,
    ("apps", "ReplicaSet"): _validate_replicaset,
    ("apps", "StatefulSet"): _validate_statefulset,
    ("apps", "DaemonSet"): _validate_daemonset,
    ("batch", "Job"): _validate_job,
    ("batch", "CronJob"): _validate_cronjob,
    ("coordination.k8s.io", "Lease"): _validate_lease,
    ("networking.k8s.io", "Ingress"): _validate_ingress,
    ("certificates.k8s.io", "CertificateSigningRequest"): _certificates.validate,
    **_rbac.VALIDATORS,
}


def validate(kind: str, group: str, obj: dict, old: dict | None, *,
             namespaced: bool | None = None) -> list[FieldError]:
    """All semantic errors for a create (old is None) or an update of a built-in object."""
    meta = _d(obj.get("metadata"))
    if namespaced is None:
        namespaced = is_namespaced_kind(kind)
    errs = validate_object_meta(meta, namespaced=namespaced, name_rule=NAME_RULES.get((group, kind),
                                                                                     "dns1123subdomain"))
    if old is not None:
        errs.extend(validate_object_meta_update(meta, _d(old.get("metadata"))))
    fn = VALIDATORS.get((group, kind))
    if fn is not None:
        errs.extend(fn(obj, old))
    return errs


# --- defaulting -------------------------------------------------------------------------------------------------

_NOT_READY_TAINT = "node.kubernetes.io/not-ready"
_UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
_DEFAULT_FILE_MODE = 0o644


def _image_tag(image: str) -> str:
    """The tag of an image reference: "" when pinned by digest only, "latest" when absent."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        return last.rsplit(":", 1)[1]
    return "" if digest else "latest"


def _canonical_resources(rl: Any) -> None:
    if not isinstance(rl, dict):
        return
    for k, v in rl.items():
        try:
            rl[k] = str(Quantity.parse(v))
        except ValueError:
            pass  # left as written; validation reports it


def _default_probe(probe: Any) -> None:
    if not isinstance(probe, dict):
        return
    probe.setdefault("timeoutSeconds", 1)
    probe.setdefault("periodSeconds", 10)
    probe.setdefault("successThreshold", 1)
    probe.setdefault("failureThreshold", 3)
    hg = probe.get("httpGet")
    if isinstance(hg, dict):
        hg.setdefault("path", "/")
        hg.setdefault("scheme", "HTTP")


def _default_field_ref(fr: Any) -> None:
    if isinstance(fr, dict):
        fr.setdefault("apiVersion", "v1")


def _default_container(c: Any, host_network: bool) -> None:
    if not isinstance(c, dict):
        return
    if not c.get("imagePullPolicy"):
        c["imagePullPolicy"] = "Always" if _image_tag(c.get("image") or "") == "latest" else "IfNotPresent"
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    res = c.setdefault("resources", {})
    if isinstance(res, dict):
        _canonical_resources(res.get("limits"))
        _canonical_resources(res.get("requests"))
    for port in _l(c.get("ports")):
        if isinstance(port, dict):
            if not port.get("protocol"):
                port["protocol"] = "TCP"
            if host_network and not port.get("hostPort") and port.get("containerPort"):
                port["hostPort"] = port["containerPort"]
    for ev in _l(c.get("env")):
        if isinstance(ev, dict) and isinstance(ev.get("valueFrom"), dict):
            _default_field_ref(ev["valueFrom"].get("fieldRef"))
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        _default_probe(c.get(probe))


def _default_volume(v: Any) -> None:
    if not isinstance(v, dict):
        return
    if not any(v.get(s) is not None for s in _VOLUME_SOURCES):
        v["emptyDir"] = {}
    for src in ("secret", "configMap", "downwardAPI", "projected"):
        s = v.get(src)
        if isinstance(s, dict):
            s.setdefault("defaultMode", _DEFAULT_FILE_MODE)
    hp = v.get("hostPath")
    if isinstance(hp, dict):
        hp.setdefault("type", "")
    for item in _l(_d(v.get("downwardAPI")).get("items")):
        _default_field_ref(_d(item).get("fieldRef"))
    for source in _l(_d(v.get("projected")).get("sources")):
        for item in _l(_d(_d(source).get("downwardAPI")).get("items")):
            _default_field_ref(_d(item).get("fieldRef"))


def default_pod_spec(spec: dict) -> None:
    """PodSpec defaults, applied alike to Pods and to pod templates."""
    if not spec.get("restartPolicy"):
        spec["restartPolicy"] = "Always"
    if not spec.get("dnsPolicy"):
        spec["dnsPolicy"] = "ClusterFirst"
    if spec.get("securityContext") is None:
        spec["securityContext"] = {}
    if spec.get("terminationGracePeriodSeconds") is None:
        spec["terminationGracePeriodSeconds"] = 30
    if not spec.get("schedulerName"):
        spec["schedulerName"] = "default-scheduler"
    host_network = bool(spec.get("hostNetwork"))
    for group in ("containers", "initContainers", "ephemeralContainers"):
        for c in _l(spec.get(group)):
            _default_container(c, host_network)
    for v in _l(spec.get("volumes")):
        _default_volume(v)
    for t in _l(spec.get("tolerations")):
        if isinstance(t, dict) and t.get("operator") is None and t.get("key") is not None:
            t["operator"] = "Equal"


def _default_template(obj: dict, *path: str) -> None:
    node: Any = obj
    for p in path:
        if not isinstance(node, dict):
            return
        node = node.get(p)
    if isinstance(node, dict):
        spec = node.get("spec")
        if isinstance(spec, dict):
            default_pod_spec(spec)


def _default_pod(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    default_pod_spec(spec)
    # A pod that states only limits gets equal requests (Pods only, not templates, as upstream).
    for group in ("containers", "initContainers"):
        for c in _l(spec.get(group)):
            res = _d(_d(c).get("resources"))
            limits = res.get("limits")
            if isinstance(limits, dict) and limits:
                requests = res.setdefault("requests", {})
                if isinstance(requests, dict):
                    for k, v in limits.items():
                        requests.setdefault(k, v)
    if spec.get("enableServiceLinks") is None:
        spec["enableServiceLinks"] = True
    # What upstream's ServiceAccount, DefaultTolerationSeconds and Priority admission plugins add.
    if not spec.get("serviceAccountName"):
        spec["serviceAccountName"] = spec.get("serviceAccount") or "default"
    spec["serviceAccount"] = spec["serviceAccountName"]
    tolerations = spec.get("tolerations")
    if tolerations is None:
        tolerations = spec["tolerations"] = []
    if isinstance(tolerations, list):
        for taint in (_NOT_READY_TAINT, _UNREACHABLE_TAINT):
            if not any(_tolerates_no_execute(t, taint) for t in tolerations):
                tolerations.append({"key": taint, "operator": "Exists", "effect": "NoExecute",
                                    "tolerationSeconds": 300})
        if not tolerations:
            del spec["tolerations"]
    if spec.get("priority") is None and not spec.get("priorityClassName"):
        spec["priority"] = 0
    if spec.get("preemptionPolicy") is None:
        spec["preemptionPolicy"] = "PreemptLowerPriority"


def _tolerates_no_execute(t: Any, taint: str) -> bool:
    if not isinstance(t, dict):
        return False
    effect_ok = (t.get("effect") or "") in ("", "NoExecute")
    if not t.get("key"):
        return t.get("operator") == "Exists" and effect_ok
    return t.get("key") == taint and effect_ok


def _default_deployment(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    if spec.get("replicas") is None:
        spec["replicas"] = 1
    strategy = spec.get("strategy")
    if not isinstance(strategy, dict):
        strategy = spec["strategy"] = {}
    if not strategy.get("type"):
        strategy["type"] = "RollingUpdate"
    if strategy["type"] == "RollingUpdate":
        ru = strategy.get("rollingUpdate")
        if not isinstance(ru, dict):
            ru = strategy["rollingUpdate"] = {}
        if ru.get("maxUnavailable") is None:
            ru["maxUnavailable"] = "25%"
        if ru.get("maxSurge") is None:
            ru["maxSurge"] = "25%"
    if spec.get("revisionHistoryLimit") is None:
        spec["revisionHistoryLimit"] = 10
    if spec.get("progressDeadlineSeconds") is None:
        spec["progressDeadlineSeconds"] = 600
    _default_template(spec, "template")


def _default_replicaset(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    if spec.get("replicas") is None:
        spec["replicas"] = 1
    _default_template(spec, "template")


def _default_replication_controller(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    labels = _d(_d(spec.get("template")).get("metadata")).get("labels")
    if labels:
        if not spec.get("selector"):
            spec["selector"] = dict(labels)
        meta = obj.setdefault("metadata", {})
        if not meta.get("labels"):
            meta["labels"] = dict(labels)
    if spec.get("replicas") is None:
        spec["replicas"] = 1
    _default_template(spec, "template")


def _default_statefulset(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    if not spec.get("podManagementPolicy"):
        spec["podManagementPolicy"] = "OrderedReady"
    us = spec.get("updateStrategy")
    if not isinstance(us, dict):
        us = spec["updateStrategy"] = {}
    if not us.get("type"):
        us["type"] = "RollingUpdate"
        if us.get("rollingUpdate") is None:
            us["rollingUpdate"] = {}
    if us["type"] == "RollingUpdate" and isinstance(us.get("rollingUpdate"), dict):
        us["rollingUpdate"].setdefault("partition", 0)
    policy = spec.get("persistentVolumeClaimRetentionPolicy")
    if not isinstance(policy, dict):
        policy = spec["persistentVolumeClaimRetentionPolicy"] = {}
    for f in ("whenDeleted", "whenScaled"):
        if not policy.get(f):
            policy[f] = "Retain"
    if spec.get("replicas") is None:
        spec["replicas"] = 1
    if spec.get("revisionHistoryLimit") is None:
        spec["revisionHistoryLimit"] = 10
    _default_template(spec, "template")
    for pvc in _l(spec.get("volumeClaimTemplates")):
        if isinstance(pvc, dict):
            _default_pvc(pvc)


def _default_daemonset(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    us = spec.get("updateStrategy")
    if not isinstance(us, dict):
        us = spec["updateStrategy"] = {}
    if not us.get("type"):
        us["type"] = "RollingUpdate"
    if us["type"] == "RollingUpdate":
        ru = us.get("rollingUpdate")
        if not isinstance(ru, dict):
            ru = us["rollingUpdate"] = {}
        if ru.get("maxUnavailable") is None:
            ru["maxUnavailable"] = 1
        if ru.get("maxSurge") is None:
            ru["maxSurge"] = 0
    if spec.get("revisionHistoryLimit") is None:
        spec["revisionHistoryLimit"] = 10
    _default_template(spec, "template")


def _default_job(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
    if spec.get("parallelism") is None:
        spec["parallelism"] = 1
    if spec.get("backoffLimit") is None:
        spec["backoffLimit"] = MAX_INT32 if spec.get("backoffLimitPerIndex") is not None else 6
    if spec.get("completionMode") is None:
        spec["completionMode"] = "NonIndexed"
    if spec.get("suspend") is None:
        spec["suspend"] = False
    if spec.get("podReplacementPolicy") is None:
        spec["podReplacementPolicy"] = "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed"
    labels = _d(_d(spec.get("template")).get("metadata")).get("labels")
    meta = obj.setdefault("metadata", {})
    if labels and not meta.get("labels"):
        meta["labels"] = dict(labels)
    _default_template(spec, "template")


def _default_cronjob(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    if not spec.get("concurrencyPolicy"):
        spec["concurrencyPolicy"] = "Allow"
    if spec.get("suspend") is None:
        spec["suspend"] = False
    if spec.get("successfulJobsHistoryLimit") is None:
        spec["successfulJobsHistoryLimit"] = 3
    if spec.get("failedJobsHistoryLimit") is None:
        spec["failedJobsHistoryLimit"] = 1
    _default_template(spec, "jobTemplate", "spec", "template")


def _default_service(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    if not spec.get("sessionAffinity"):
        spec["sessionAffinity"] = "None"
    if spec["sessionAffinity"] == "None":
        spec.pop("sessionAffinityConfig", None)
    elif spec["sessionAffinity"] == "ClientIP":
        timeout = _d(_d(spec.get("sessionAffinityConfig")).get("clientIP")).get("timeoutSeconds")
        if timeout is None:
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": 10800}}
    if not spec.get("type"):
        spec["type"] = "ClusterIP"
    stype = spec["type"]
    for port in _l(spec.get("ports")):
        if not isinstance(port, dict):
            continue
        if not port.get("protocol"):
            port["protocol"] = "TCP"
        if port.get("targetPort") in (None, 0, ""):
            port["targetPort"] = port.get("port")
    external = stype in ("NodePort", "LoadBalancer") or (stype == "ClusterIP" and spec.get("externalIPs"))
    if external and not spec.get("externalTrafficPolicy"):
        spec["externalTrafficPolicy"] = "Cluster"
    if stype in ("ClusterIP", "NodePort", "LoadBalancer"):
        if spec.get("internalTrafficPolicy") is None:
            spec["internalTrafficPolicy"] = "Cluster"
        # ipFamilyPolicy has no static default: the server infers it when allocating (an update
        # keeps the stored one), as upstream's does.
    if stype == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is None:
        spec["allocateLoadBalancerNodePorts"] = True


def _default_secret(obj: dict) -> None:
    if not obj.get("type"):
        obj["type"] = "Opaque"


def _default_namespace(obj: dict) -> None:
    meta = obj.setdefault("metadata", {})
    name = meta.get("name")
    if name:
        labels = meta.get("labels")
        if not isinstance(labels, dict):
            labels = meta["labels"] = {}
        labels["kubernetes.io/metadata.name"] = name
    spec = obj.setdefault("spec", {})
    if spec.get("finalizers") is None:
        spec["finalizers"] = ["kubernetes"]
    status = obj.setdefault("status", {})
    if not status.get("phase"):
        status["phase"] = "Active"


def _default_pvc(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    if not spec.get("volumeMode"):
        spec["volumeMode"] = "Filesystem"
    res = _d(spec.get("resources"))
    _canonical_resources(res.get("requests"))
    _canonical_resources(res.get("limits"))
    status = obj.setdefault("status", {})
    if not status.get("phase"):
        status["phase"] = "Pending"


def _default_pv(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    if not spec.get("persistentVolumeReclaimPolicy"):
        spec["persistentVolumeReclaimPolicy"] = "Retain"
    if not spec.get("volumeMode"):
        spec["volumeMode"] = "Filesystem"
    _canonical_resources(spec.get("capacity"))
    status = obj.setdefault("status", {})
    if not status.get("phase"):
        status["phase"] = "Pending"


def _default_node(obj: dict) -> None:
    status = obj.get("status")
    if isinstance(status, dict):
        _canonical_resources(status.get("capacity"))
        if status.get("capacity") and not status.get("allocatable"):
            status["allocatable"] = dict(status["capacity"])
        _canonical_resources(status.get("allocatable"))


def _default_endpoints(obj: dict) -> None:
    for subset in _l(obj.get("subsets")):
        for port in _l(_d(subset).get("ports")):
            if isinstance(port, dict) and not port.get("protocol"):
                port["protocol"] = "TCP"


DEFAULTERS: dict[tuple[str, str], Callable[[dict], None]] = {
    ("", "Pod"): _default_pod,
    ("", "PodTemplate"): lambda obj: _default_template(obj, "template"),
    ("", "ReplicationController"): _default_replication_controller,
    ("", "Service"): _default_service,
    ("", "Secret"): _default_secret,
    ("", "Namespace"): _default_namespace,
    ("", "PersistentVolumeClaim"): _default_pvc,
    ("", "PersistentVolume"): _default_pv,
    ("", "Node"): _default_node,
    ("", "Endpoints"): _default_endpoints,
    ("apps", "Deployment"): _default_deployment,
    ("apps", "ReplicaSet"): _default_replicaset,
    ("apps", "StatefulSet"): _default_statefulset,
    ("apps", "DaemonSet"): _default_daemonset,
    ("batch", "Job"): _default_job,
    ("batch", "CronJob"): _default_cronjob,
    **_rbac.DEFAULTERS,
}


def apply_defaults(kind: str, group: str, obj: dict) -> None:
    """Fill in upstream defaults in place (call before validate)."""
    fn = DEFAULTERS.get((group, kind))
    if fn is not None and isinstance(obj, dict):
        fn(obj)


__all__ = [
    "DEFAULTERS", "NAME_RULES", "VALIDATORS", "CronSchedule", "apply_defaults", "default_pod_spec",
    "is_config_map_key", "is_dns1035_label", "is_dns1123_label", "is_env_var_name", "is_valid_port_name",
    "is_valid_port_num", "parse_cron", "validate", "validate_annotations", "validate_finalizers",
    "validate_object_meta", "validate_object_meta_update", "validate_owner_references", "validate_pod_spec",
    "validate_pod_template", "validate_resource_requirements", "validate_tolerations", "validate_volumes",
]
