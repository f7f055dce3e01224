"""Pod Security admission: the Pod Security Standards, and the namespace labels that pick them.

A namespace chooses, with its ``pod-security.kubernetes.io/{enforce,audit,warn}``
labels (and their ``-version`` companions), how strictly the pods in it are
judged: ``privileged`` (anything goes), ``baseline`` (no known privilege
escalations) or ``restricted`` (hardened). ``enforce`` refuses a pod that
breaks its level, ``warn`` answers with a Warning header, ``audit`` leaves an
audit annotation. This module owns, as upstream's pod-security-admission 1.32
does:

* the checks: one small function per rule, listed in ``CHECKS`` with the level
  and the first policy version (v1.0 … v1.32, "latest") they apply to; a
  restricted check may stand in for a baseline one (it "overrides" it);
* how the labels become a policy (invalid values are refused on namespace
  writes, and otherwise fail closed for enforce and open for audit/warn);
* ``PodSecurity``: what happens to a pod write, to a namespace write that
  tightens enforcement (existing pods are dry-run and reported as warnings)
  and to a workload whose pod template would break the audit/warn levels.

Messages, their order (baseline checks by id, then restricted ones) and their
pluralisation follow upstream's word for word, because users and tools match
on them. Looking up the namespace and listing its pods is the caller's job.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..api import errors

__all__ = [
    "CHECKS",
    "Check",
    "Evaluator",
    "LevelVersion",
    "Policy",
    "PodSecurity",
    "Result",
    "Version",
    "Violation",
    "compare_levels",
    "go_quote",
    "parse_level",
    "parse_version",
    "policy_from_config",
    "policy_from_labels",
    "significant_pod_update",
]

Obj = dict[str, Any]

PRIVILEGED, BASELINE, RESTRICTED = "privileged", "baseline", "restricted"
LEVELS = (PRIVILEGED, BASELINE, RESTRICTED)

LABEL_PREFIX = "pod-security.kubernetes.io/"
MODES = ("enforce", "audit", "warn")
# Audit annotation keys (the caller records them under LABEL_PREFIX, as upstream's plugin does).
ANN_ENFORCE_POLICY = LABEL_PREFIX + "enforce-policy"
ANN_AUDIT_VIOLATIONS = LABEL_PREFIX + "audit-violations"
ANN_EXEMPT = LABEL_PREFIX + "exempt"
ANN_ERROR = LABEL_PREFIX + "error"

APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"
SECCOMP_POD_ANNOTATION = "seccomp.security.alpha.kubernetes.io/pod"
SECCOMP_CONTAINER_ANNOTATION_PREFIX = "container.seccomp.security.alpha.kubernetes.io/"

# Pod subresources whose writes cannot change what the checks look at.
IGNORED_POD_SUBRESOURCES = frozenset({"exec", "attach", "binding", "eviction", "log", "portforward", "proxy",
                                      "status"})

# Where each pod controller keeps its pod template: (API group, path to the template).
WORKLOAD_TEMPLATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "PodTemplate": ("", ("template",)),
    "ReplicationController": ("", ("spec", "template")),
    "ReplicaSet": ("apps", ("spec", "template")),
    "Deployment": ("apps", ("spec", "template")),
    "StatefulSet": ("apps", ("spec", "template")),
    "DaemonSet": ("apps", ("spec", "template")),
    "Job": ("batch", ("spec", "template")),
    "CronJob": ("batch", ("spec", "jobTemplate", "spec", "template")),
}


# ------------------------------------------------------------------ levels and versions


@dataclass(frozen=True, slots=True)
class Version:
    """A policy version: v1.<minor>, or "latest" (minor None), newer than any numbered one."""

    minor: int | None = None

    @property
    def latest(self) -> bool:
        return self.minor is None

    def older(self, other: Version) -> bool:
        if self.minor is None:
            return False
        return other.minor is None or self.minor < other.minor

    def __str__(self) -> str:
        return "latest" if self.minor is None else f"v1.{self.minor}"


LATEST = Version()
_VERSION_RE = re.compile(r"v1\.([0-9]|[1-9][0-9]*)")


def parse_version(value: str) -> Version:
    """ "latest" or "v1.x"; ValueError (with upstream's detail text) otherwise."""
    if value == "latest":
        return LATEST
    m = _VERSION_RE.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError('must be "latest" or "v1.x"')
    return Version(int(m.group(1)))


def parse_level(value: str) -> str:
    if value not in LEVELS:
        raise ValueError("must be one of " + ", ".join(LEVELS))
    return value


def compare_levels(a: str, b: str) -> int:
    """-1, 0 or 1 as level a is less strict than, as strict as, or stricter than b."""
    ia, ib = LEVELS.index(a), LEVELS.index(b)
    return (ia > ib) - (ia < ib)


@dataclass(frozen=True, slots=True)
class LevelVersion:
    level: str
    version: Version = LATEST

    def equivalent(self, other: LevelVersion) -> bool:
        return (self.level == PRIVILEGED and other.level == PRIVILEGED) or self == other

    def __str__(self) -> str:
        return f"{self.level}:{self.version}"


PRIVILEGED_LATEST = LevelVersion(PRIVILEGED, LATEST)


@dataclass(frozen=True, slots=True)
class Policy:
    enforce: LevelVersion = PRIVILEGED_LATEST
    audit: LevelVersion = PRIVILEGED_LATEST
    warn: LevelVersion = PRIVILEGED_LATEST

    def equivalent(self, other: Policy) -> bool:
        return all(getattr(self, m).equivalent(getattr(other, m)) for m in MODES)

    @property
    def fully_privileged(self) -> bool:
        return all(getattr(self, m).level == PRIVILEGED for m in MODES)


def policy_from_labels(labels: Mapping[str, str] | None,
                       defaults: Policy) -> tuple[Policy, list[errors.FieldError]]:
    """The policy a namespace's labels choose, and what is wrong with them.

    A policy always comes back: an unreadable enforce level counts as
    restricted (fail closed), an unreadable audit or warn level as privileged
    (fail open), an unreadable version as latest. An explicitly set enforce
    level that is stricter than the warn level also warns, unless warn is set.
    """
    labels = labels if isinstance(labels, Mapping) else {}
    modes = {m: getattr(defaults, m) for m in MODES}
    errs: list[errors.FieldError] = []
    enforce_level_set = False
    for mode in MODES:
        level, version = modes[mode].level, modes[mode].version
        level_key, version_key = LABEL_PREFIX + mode, LABEL_PREFIX + mode + "-version"
        if level_key in labels:
            try:
                level = parse_level(labels[level_key])
                enforce_level_set = enforce_level_set or mode == "enforce"
            except ValueError as e:
                errs.append(errors.invalid(f"metadata.labels[{level_key}]", labels[level_key], str(e)))
                level = RESTRICTED if mode == "enforce" else PRIVILEGED
        if version_key in labels:
            try:
                version = parse_version(labels[version_key])
            except ValueError as e:
                errs.append(errors.invalid(f"metadata.labels[{version_key}]", labels[version_key], str(e)))
                version = LATEST
        modes[mode] = LevelVersion(level, version)
    enforce, warn = modes["enforce"], modes["warn"]
    # A warn label, even an invalid one, stops warn following enforce.
    if enforce_level_set and LABEL_PREFIX + "warn" not in labels \
            and compare_levels(enforce.level, warn.level) > 0:
        keep_version = LABEL_PREFIX + "warn-version" in labels
        modes["warn"] = LevelVersion(enforce.level, warn.version if keep_version else enforce.version)
    return Policy(**modes), errs


def policy_from_config(defaults: Mapping[str, str] | None) -> Policy:
    """The cluster's default policy from a PodSecurityConfiguration-style ``defaults`` mapping
    (keys enforce, enforce-version, audit, audit-version, warn, warn-version); ValueError if invalid."""
    defaults = dict(defaults or {})
    unknown = set(defaults) - {m + s for m in MODES for s in ("", "-version")}
    if unknown:
        raise ValueError(f"unknown PodSecurity defaults: {', '.join(sorted(unknown))}")
    try:
        return Policy(**{m: LevelVersion(parse_level(defaults.get(m, PRIVILEGED)),
                                         parse_version(defaults.get(m + "-version", "latest")))
                         for m in MODES})
    except ValueError as e:
        raise ValueError(f"invalid PodSecurity defaults: {e}") from None


# ------------------------------------------------------------------ reading pods defensively


def _dict(v: Any) -> Obj:
    return v if isinstance(v, dict) else {}


def _sub(obj: Obj | None, key: str) -> Obj | None:
    """A nested struct as Go sees it: None when absent or null (or not an object at all)."""
    v = obj.get(key) if obj is not None else None
    return v if isinstance(v, dict) else None


def _list(v: Any) -> list:
    return v if isinstance(v, list) else []


def _str(v: Any) -> str:
    return "" if v is None else str(v)


def _containers(spec: Obj) -> Iterator[Obj]:
    """Init containers, containers, then ephemeral containers: every check looks at all three."""
    for group in ("initContainers", "containers", "ephemeralContainers"):
        for c in _list(spec.get(group)):
            if isinstance(c, dict):
                yield c


def _name(c: Obj) -> str:
    return _str(c.get("name"))


def _pluralize(singular: str, plural: str, count: int) -> str:
    return singular if count == 1 else plural


def _join_quote(items: Sequence[str]) -> str:
    return '"' + '", "'.join(items) + '"' if items else ""


def _containers_phrase(names: Sequence[str]) -> str:
    return f"{_pluralize('container', 'containers', len(names))} {_join_quote(names)}"


def _setters(pod: bool, containers: Sequence[str]) -> list[str]:
    """Who set a forbidden value: "pod", 'containers "a", "b"', either or both."""
    return (["pod"] if pod else []) + ([_containers_phrase(containers)] if containers else [])


_GO_ESCAPES = {"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t", "\v": r"\v",
               '"': r"\"", "\\": r"\\"}


def go_quote(s: str) -> str:
    """A string as Go's %q writes it (messages quote annotation values and names this way)."""
    out = ['"']
    for ch in s:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


# ------------------------------------------------------------------ the checks


@dataclass(frozen=True, slots=True)
class Violation:
    """Why one check refused a pod: a short reason, and optionally the detail of what and where."""

    reason: str
    detail: str = ""


CheckFn = Callable[[Obj, Obj], "Violation | None"]  # (pod metadata, pod spec) -> None when allowed


def _unless_windows(fn: CheckFn) -> CheckFn:
    """From v1.25 a pod that says it runs on Windows is spared the Linux-only restricted checks."""
    def check(meta: Obj, spec: Obj) -> Violation | None:
        if _dict(spec.get("os")).get("name") == "windows":
            return None
        return fn(meta, spec)
    return check


def _windows_host_process(meta: Obj, spec: Obj) -> Violation | None:
    def host_process(obj: Obj) -> bool:
        return _dict(_dict(obj.get("securityContext")).get("windowsOptions")).get("hostProcess") is True
    bad = [_name(c) for c in _containers(spec) if host_process(c)]
    who = _setters(host_process(spec), bad)
    if not who:
        return None
    return Violation("hostProcess",
                     f"{' and '.join(who)} must not set securityContext.windowsOptions.hostProcess=true")


def _host_namespaces(meta: Obj, spec: Obj) -> Violation | None:
    used = [f"{k}=true" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k) is True]
    return Violation("host namespaces", ", ".join(used)) if used else None


def _privileged(meta: Obj, spec: Obj) -> Violation | None:
    bad = [_name(c) for c in _containers(spec) if _dict(c.get("securityContext")).get("privileged") is True]
    if not bad:
        return None
    return Violation("privileged", f"{_containers_phrase(bad)} must not set securityContext.privileged=true")


BASELINE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
})


def _capabilities_baseline(meta: Obj, spec: Obj) -> Violation | None:
    bad: list[str] = []
    caps: set[str] = set()
    for c in _containers(spec):
        added = _list(_dict(_sub(_sub(c, "securityContext"), "capabilities")).get("add"))
        extra = {_str(cap) for cap in added if _str(cap) not in BASELINE_CAPABILITIES}
        if extra:
            bad.append(_name(c))
            caps |= extra
    if not bad:
        return None
    return Violation("non-default capabilities", f"{_containers_phrase(bad)} must not include "
                     f"{_join_quote(sorted(caps))} in securityContext.capabilities.add")


def _host_path_volumes(meta: Obj, spec: Obj) -> Violation | None:
    bad = [_str(v.get("name")) for v in _list(spec.get("volumes")) if isinstance(v, dict)
           and v.get("hostPath") is not None]
    if not bad:
        return None
    return Violation("hostPath volumes", f"{_pluralize('volume', 'volumes', len(bad))} {_join_quote(bad)}")


def _host_ports(meta: Obj, spec: Obj) -> Violation | None:
    bad: list[str] = []
    ports: set[str] = set()
    for c in _containers(spec):
        used = {_str(p.get("hostPort")) for p in _list(c.get("ports")) if isinstance(p, dict)
                and p.get("hostPort") not in (None, 0)}
        if used:
            bad.append(_name(c))
            ports |= used
    if not bad:
        return None
    return Violation("hostPort", f"{_containers_phrase(bad)} {_pluralize('uses', 'use', len(bad))} "
                     f"{_pluralize('hostPort', 'hostPorts', len(ports))} {', '.join(sorted(ports))}")


APPARMOR_TYPES = frozenset({"RuntimeDefault", "Localhost"})


def _apparmor_annotation_allowed(value: str) -> bool:
    return value in ("", "runtime/default") or value.startswith("localhost/")


def _apparmor_profile(meta: Obj, spec: Obj) -> Violation | None:
    values: set[str] = set()

    def bad_type(obj: Obj) -> bool:
        profile = _sub(_sub(obj, "securityContext"), "appArmorProfile")
        if profile is None or _str(profile.get("type")) in APPARMOR_TYPES:
            return False
        values.add(_str(profile.get("type")))
        return True

    who = _setters(bad_type(spec), [_name(c) for c in _containers(spec) if bad_type(c)])
    annotations = sorted(f"{k}={go_quote(_str(v))}" for k, v in _dict(meta.get("annotations")).items()
                         if k.startswith(APPARMOR_ANNOTATION_PREFIX)
                         and not _apparmor_annotation_allowed(_str(v)))
    if annotations:
        who.append(_pluralize("annotation", "annotations", len(annotations)))
    if not who:
        return None
    bad = sorted(values) + annotations
    return Violation(_pluralize("forbidden AppArmor profile", "forbidden AppArmor profiles", len(bad)),
                     f"{' and '.join(who)} must not set AppArmor profile type to {_join_quote(bad)}")


def _selinux_options(allowed_types: frozenset[str]) -> CheckFn:
    def check(meta: Obj, spec: Obj) -> Violation | None:
        bad_types: set[str] = set()
        set_user = set_role = False

        def bad(obj: Obj) -> bool:
            nonlocal set_user, set_role
            opts = _sub(_sub(obj, "securityContext"), "seLinuxOptions")
            if opts is None:
                return False
            invalid = False
            if _str(opts.get("type")) not in allowed_types:
                bad_types.add(_str(opts.get("type")))
                invalid = True
            if _str(opts.get("user")):
                set_user = invalid = True
            if _str(opts.get("role")):
                set_role = invalid = True
            return invalid

        who = _setters(bad(spec), [_name(c) for c in _containers(spec) if bad(c)])
        if not who:
            return None
        what = [f"{_pluralize('type', 'types', len(bad_types))} {_join_quote(sorted(bad_types))}"] \
            if bad_types else []
        what += ["user may not be set"] if set_user else []
        what += ["role may not be set"] if set_role else []
        return Violation("seLinuxOptions", f"{' and '.join(who)} set forbidden "
                                           f"securityContext.seLinuxOptions: {'; '.join(what)}")
    return check


SELINUX_TYPES_1_0 = frozenset({"", "container_t", "container_init_t", "container_kvm_t"})
SELINUX_TYPES_1_31 = SELINUX_TYPES_1_0 | {"container_engine_t"}


def _proc_mount(meta: Obj, spec: Obj) -> Violation | None:
    bad: list[str] = []
    kinds: set[str] = set()
    for c in _containers(spec):
        mount = _dict(c.get("securityContext")).get("procMount")
        if mount is not None and mount != "Default":
            bad.append(_name(c))
            kinds.add(_str(mount))
    if not bad:
        return None
    return Violation("procMount", f"{_containers_phrase(bad)} must not set securityContext.procMount to "
                                  f"{_join_quote(sorted(kinds))}")


SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})


def _seccomp_annotation_allowed(value: str) -> bool:
    return value in ("runtime/default", "docker/default") or value.startswith("localhost/")


def _seccomp_baseline_annotations(meta: Obj, spec: Obj) -> Violation | None:
    """Before v1.19 seccomp was chosen by annotations, on the pod and per container."""
    annotations = _dict(meta.get("annotations"))
    keys = [SECCOMP_POD_ANNOTATION]
    keys += [SECCOMP_CONTAINER_ANNOTATION_PREFIX + _name(c) for c in _containers(spec)]
    bad = sorted({f"{k}={go_quote(_str(annotations[k]))}" for k in keys
                  if k in annotations and not _seccomp_annotation_allowed(_str(annotations[k]))})
    if not bad:
        return None
    return Violation("seccompProfile",
                     f"forbidden {_pluralize('annotation', 'annotations', len(bad))} {', '.join(bad)}")


def _seccomp(required: bool) -> CheckFn:
    """seccompProfile.type, where set, must be RuntimeDefault or Localhost; restricted also requires
    it set, on the pod or on every container."""
    def check(meta: Obj, spec: Obj) -> Violation | None:
        values: set[str] = set()

        def profile(obj: Obj) -> bool | None:  # None: unset, else whether it is allowed
            p = _sub(_sub(obj, "securityContext"), "seccompProfile")
            if p is None:
                return None
            if _str(p.get("type")) in SECCOMP_TYPES:
                return True
            values.add(_str(p.get("type")))
            return False

        pod = profile(spec)
        explicit, implicit = [], []
        for c in _containers(spec):
            ok = profile(c)
            if ok is False:
                explicit.append(_name(c))
            elif ok is None and pod is not True:
                implicit.append(_name(c))
        who = _setters(pod is False, explicit)
        if who:
            return Violation("seccompProfile",
                             f"{' and '.join(who)} must not set securityContext.seccompProfile.type to "
                             f"{_join_quote(sorted(values))}")
        if required and implicit:
            return Violation("seccompProfile",
                             f"pod or {_containers_phrase(implicit)} must set "
                             f'securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost"')
        return None
    return check


SYSCTLS_1_0 = frozenset({"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies",
                         "net.ipv4.ping_group_range", "net.ipv4.ip_unprivileged_port_start"})
SYSCTLS_1_27 = SYSCTLS_1_0 | {"net.ipv4.ip_local_reserved_ports"}
SYSCTLS_1_29 = SYSCTLS_1_27 | {"net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                               "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}
SYSCTLS_1_32 = SYSCTLS_1_29 | {"net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"}


def _sysctls(allowed: frozenset[str]) -> CheckFn:
    def check(meta: Obj, spec: Obj) -> Violation | None:
        sysctls = _list(_dict(spec.get("securityContext")).get("sysctls"))
        names = [_str(s.get("name")) for s in sysctls if isinstance(s, dict)]
        bad = [n for n in names if n not in allowed]
        return Violation("forbidden sysctls", ", ".join(bad)) if bad else None
    return check


def _allow_privilege_escalation(meta: Obj, spec: Obj) -> Violation | None:
    bad = [_name(c) for c in _containers(spec)
           if _dict(c.get("securityContext")).get("allowPrivilegeEscalation") is not False]
    if not bad:
        return None
    return Violation("allowPrivilegeEscalation != false",
                     f"{_containers_phrase(bad)} must set securityContext.allowPrivilegeEscalation=false")


def _capabilities_restricted(meta: Obj, spec: Obj) -> Violation | None:
    no_drop, adding = [], []
    caps: set[str] = set()
    for c in _containers(spec):
        capabilities = _sub(_sub(c, "securityContext"), "capabilities")
        if capabilities is None:
            no_drop.append(_name(c))
            continue
        if "ALL" not in _list(capabilities.get("drop")):
            no_drop.append(_name(c))
        extra = {_str(cap) for cap in _list(capabilities.get("add")) if cap != "NET_BIND_SERVICE"}
        if extra:
            adding.append(_name(c))
            caps |= extra
    details = []
    if no_drop:
        details.append(f'{_containers_phrase(no_drop)} must set securityContext.capabilities.drop=["ALL"]')
    if adding:
        details.append(f"{_containers_phrase(adding)} must not include {_join_quote(sorted(caps))} "
                       f"in securityContext.capabilities.add")
    return Violation("unrestricted capabilities", "; ".join(details)) if details else None


# Inline volume sources the restricted level allows, and the names of the others as messages give them.
RESTRICTED_VOLUME_SOURCES = ("configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                             "persistentVolumeClaim", "projected", "secret")
FORBIDDEN_VOLUME_SOURCES = ("hostPath", "gcePersistentDisk", "awsElasticBlockStore", "gitRepo", "nfs",
                            "iscsi", "glusterfs", "rbd", "flexVolume", "cinder", "cephfs", "flocker", "fc",
                            "azureFile", "vsphereVolume", "quobyte", "azureDisk", "photonPersistentDisk",
                            "portworxVolume", "scaleIO", "storageos")


def _restricted_volumes(meta: Obj, spec: Obj) -> Violation | None:
    bad: list[str] = []
    kinds: set[str] = set()
    for v in _list(spec.get("volumes")):
        if not isinstance(v, dict) or any(v.get(k) is not None for k in RESTRICTED_VOLUME_SOURCES):
            continue
        bad.append(_str(v.get("name")))
        kinds.add(next((k for k in FORBIDDEN_VOLUME_SOURCES if v.get(k) is not None), "unknown"))
    if not bad:
        return None
    return Violation("restricted volume types",
                     f"{_pluralize('volume', 'volumes', len(bad))} {_join_quote(bad)} "
                     f"{_pluralize('uses', 'use', len(bad))} "
                     f"{_pluralize('restricted volume type', 'restricted volume types', len(kinds))} "
                     f"{_join_quote(sorted(kinds))}")


def _run_as_non_root(meta: Obj, spec: Obj) -> Violation | None:
    pod = _dict(spec.get("securityContext")).get("runAsNonRoot")
    explicit, implicit = [], []
    for c in _containers(spec):
        value = _dict(c.get("securityContext")).get("runAsNonRoot")
        if value is False:
            explicit.append(_name(c))
        elif value is None and pod is not True:
            implicit.append(_name(c))
    who = _setters(pod is False, explicit)
    if who:
        return Violation("runAsNonRoot != true",
                         f"{' and '.join(who)} must not set securityContext.runAsNonRoot=false")
    if implicit:
        return Violation("runAsNonRoot != true",
                         f"pod or {_containers_phrase(implicit)} must set securityContext.runAsNonRoot=true")
    return None


def _is_root(obj: Obj) -> bool:
    uid = _dict(obj.get("securityContext")).get("runAsUser")
    return type(uid) is int and uid == 0


def _run_as_user(meta: Obj, spec: Obj) -> Violation | None:
    who = _setters(_is_root(spec), [_name(c) for c in _containers(spec) if _is_root(c)])
    return Violation("runAsUser=0", f"{' and '.join(who)} must not set runAsUser=0") if who else None


@dataclass(frozen=True, slots=True)
class Check:
    """One rule of the standards from one policy version on (until a later row for the same id)."""

    id: str
    level: str  # BASELINE or RESTRICTED
    since: int  # the first policy version it applies to: v1.<since>
    fn: CheckFn
    overrides: tuple[str, ...] = ()  # baseline checks this restricted one replaces
    # Spared for pods in a user namespace (hostUsers: false) when the server opts in, as upstream's
    # UserNamespacesPodSecurityStandards gate does.
    user_namespace_relaxed: bool = False


CHECKS: tuple[Check, ...] = (
    Check("appArmorProfile", BASELINE, 0, _apparmor_profile),
    Check("capabilities_baseline", BASELINE, 0, _capabilities_baseline),
    Check("hostNamespaces", BASELINE, 0, _host_namespaces),
    Check("hostPathVolumes", BASELINE, 0, _host_path_volumes),
    Check("hostPorts", BASELINE, 0, _host_ports),
    Check("privileged", BASELINE, 0, _privileged),
    Check("procMount", BASELINE, 0, _proc_mount, user_namespace_relaxed=True),
    Check("seLinuxOptions", BASELINE, 0, _selinux_options(SELINUX_TYPES_1_0)),
    Check("seLinuxOptions", BASELINE, 31, _selinux_options(SELINUX_TYPES_1_31)),
    Check("seccompProfile_baseline", BASELINE, 0, _seccomp_baseline_annotations),
    Check("seccompProfile_baseline", BASELINE, 19, _seccomp(required=False)),
    Check("sysctls", BASELINE, 0, _sysctls(SYSCTLS_1_0)),
    Check("sysctls", BASELINE, 27, _sysctls(SYSCTLS_1_27)),
    Check("sysctls", BASELINE, 29, _sysctls(SYSCTLS_1_29)),
    Check("sysctls", BASELINE, 32, _sysctls(SYSCTLS_1_32)),
    Check("windowsHostProcess", BASELINE, 0, _windows_host_process),
    Check("allowPrivilegeEscalation", RESTRICTED, 8, _allow_privilege_escalation),
    Check("allowPrivilegeEscalation", RESTRICTED, 25, _unless_windows(_allow_privilege_escalation)),
    Check("capabilities_restricted", RESTRICTED, 22, _capabilities_restricted, ("capabilities_baseline",)),
    Check("capabilities_restricted", RESTRICTED, 25, _unless_windows(_capabilities_restricted),
          ("capabilities_baseline",)),
    Check("restrictedVolumes", RESTRICTED, 0, _restricted_volumes, ("hostPathVolumes",)),
    Check("runAsNonRoot", RESTRICTED, 0, _run_as_non_root, user_namespace_relaxed=True),
    Check("runAsUser", RESTRICTED, 23, _run_as_user, user_namespace_relaxed=True),
    Check("seccompProfile_restricted", RESTRICTED, 19, _seccomp(required=True), ("seccompProfile_baseline",)),
    Check("seccompProfile_restricted", RESTRICTED, 25, _unless_windows(_seccomp(required=True)),
          ("seccompProfile_baseline",)),
)


# ------------------------------------------------------------------ evaluation


@dataclass(slots=True)
class Result:
    """What the checks of one level and version said about one pod."""

    violations: list[Violation] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return not self.violations

    def reason(self) -> str:
        """'host namespaces, privileged': the short form namespace dry-runs report."""
        return ", ".join(v.reason for v in self.violations)

    def detail(self) -> str:
        """'host namespaces (hostNetwork=true), privileged (container "c" must ...)': for one pod."""
        return ", ".join(f"{v.reason} ({v.detail})" if v.detail else v.reason for v in self.violations)


class Evaluator:
    """The checks of each level at each policy version, worked out once."""

    def __init__(self, checks: Iterable[Check] = CHECKS, relax_user_namespace_pods: bool = False):
        checks = list(checks)
        self.relax_user_namespace_pods = relax_user_namespace_pods
        self.max_minor = max(c.since for c in checks)
        order = sorted({c.id for c in checks if c.level == BASELINE}) + \
            sorted({c.id for c in checks if c.level == RESTRICTED})
        by_age = sorted(checks, key=lambda c: c.since)
        self._checks: dict[str, list[list[Check]]] = {BASELINE: [], RESTRICTED: []}
        for minor in range(self.max_minor + 1):
            active: dict[str, Check] = {}
            for c in by_age:
                if c.since <= minor:
                    active[c.id] = c  # the newest row not newer than this version
            overridden = {o for c in active.values() if c.level == RESTRICTED for o in c.overrides}
            baseline = [active[i] for i in order if i in active and active[i].level == BASELINE]
            self._checks[BASELINE].append(baseline)
            self._checks[RESTRICTED].append([active[i] for i in order if i in active and i not in overridden])

    def checks(self, lv: LevelVersion) -> list[Check]:
        if lv.level == PRIVILEGED:
            return []
        minor = self.max_minor if lv.version.latest else min(lv.version.minor, self.max_minor)
        return self._checks[lv.level][minor]

    def evaluate(self, lv: LevelVersion, meta: Obj | None, spec: Obj | None) -> Result:
        meta, spec = _dict(meta), _dict(spec)
        relaxed = self.relax_user_namespace_pods and spec.get("hostUsers") is False
        found = [c.fn(meta, spec) for c in self.checks(lv) if not (relaxed and c.user_namespace_relaxed)]
        return Result([v for v in found if v is not None])


def significant_pod_update(pod: Obj, old: Obj) -> bool:
    """Whether a pod update can change the verdict: of what a pod may change after creation, only
    container images and new ephemeral containers can (as upstream reasons)."""
    spec, old_spec = _dict(pod.get("spec")), _dict(old.get("spec"))
    for group in ("containers", "initContainers"):
        new_cs, old_cs = _list(spec.get(group)), _list(old_spec.get(group))
        if len(new_cs) != len(old_cs):
            return True
        if any(_str(_dict(a).get("image")) != _str(_dict(b).get("image")) for a, b in zip(new_cs, old_cs)):
            return True
    old_ephemeral = {_name(c): c for c in _list(old_spec.get("ephemeralContainers")) if isinstance(c, dict)}
    for c in _list(spec.get("ephemeralContainers")):
        before = old_ephemeral.get(_name(_dict(c)))
        if before is None or _str(_dict(c).get("image")) != _str(before.get("image")):
            return True
    return False


def _aggregate(errs: list[errors.FieldError]) -> str:
    """A field error list as one error string, as apimachinery's aggregate prints it."""
    return str(errs[0]) if len(errs) == 1 else "[" + ", ".join(str(e) for e in errs) + "]"


def _controller_uid(pod: Obj) -> str | None:
    for ref in _list(_dict(pod.get("metadata")).get("ownerReferences")):
        if isinstance(ref, dict) and ref.get("controller") is True:
            return _str(ref.get("uid"))
    return None


class PodSecurity:
    """The PodSecurity admission plugin: the defaults and exemptions of one API server.

    ``defaults`` is a PodSecurityConfiguration ``defaults`` mapping (enforce,
    enforce-version, audit, ...: privileged and latest unless given); the
    exemptions are exact user names, namespaces and runtime class names.
    """

    def __init__(self, defaults: Mapping[str, str] | None = None, *, exempt_usernames: Iterable[str] = (),
                 exempt_namespaces: Iterable[str] = (), exempt_runtime_classes: Iterable[str] = (),
                 relax_user_namespace_pods: bool = False, namespace_max_pods: int = 3000,
                 namespace_pod_timeout: float = 1.0):
        self.defaults = policy_from_config(defaults)
        self.exempt_usernames = frozenset(exempt_usernames)
        self.exempt_namespaces = frozenset(exempt_namespaces)
        self.exempt_runtime_classes = frozenset(exempt_runtime_classes)
        self.evaluator = Evaluator(relax_user_namespace_pods=relax_user_namespace_pods)
        self.namespace_max_pods = namespace_max_pods
        self.namespace_pod_timeout = namespace_pod_timeout
        # Policies by their namespace's pod-security labels: every pod create asks.
        self._policies: dict[tuple[tuple[str, str], ...], tuple[Policy, list[errors.FieldError]]] = {}

    def policy(self, ns_obj: Obj | None) -> tuple[Policy, list[errors.FieldError]]:
        """The policy a namespace's labels choose (with the server's defaults), and the label errors."""
        labels = _dict(_dict(_dict(ns_obj).get("metadata")).get("labels"))
        key = tuple(sorted((k, v) for k, v in labels.items() if isinstance(k, str) and k.startswith(LABEL_PREFIX)))
        hit = self._policies.get(key)
        if hit is None:
            if len(self._policies) >= 1024:
                self._policies.clear()
            hit = self._policies[key] = policy_from_labels(dict(key), self.defaults)
        return hit

    # -------------------------------------------------------------- pods

    async def admit_pod(self, ns_obj: Obj | None, pod: Obj, old_pod: Obj | None, user: str,
                        groups: Iterable[str], warnings: list[str], *, subresource: str = "",
                        audit: dict[str, str] | None = None) -> None:
        """Judge a pod create (old_pod None) or update in the namespace ns_obj (None: not found).

        Raises the 403 StatusError when the enforce level refuses it; appends
        the warn level's complaint to ``warnings``; fills ``audit`` (if given)
        with the audit annotations upstream would record. Exemptions go by
        user name only, as upstream's (``groups`` is there for symmetry).
        """
        audit = {} if audit is None else audit
        if subresource in IGNORED_POD_SUBRESOURCES:
            return
        meta = _dict(pod.get("metadata"))
        namespace = _str(meta.get("namespace")) or _str(_dict(_dict(ns_obj).get("metadata")).get("name"))
        if self._exempt(namespace, user, audit):
            return
        if ns_obj is None:
            audit[ANN_ERROR] = f"failed to lookup namespace {go_quote(namespace)}"
            raise errors.internal(f"failed to lookup namespace {go_quote(namespace)}")
        policy, errs = self.policy(ns_obj)
        if not errs and policy.fully_privileged:
            audit[ANN_ENFORCE_POLICY] = str(PRIVILEGED_LATEST)
            return
        if old_pod is not None and not significant_pod_update(pod, old_pod):
            return
        self._evaluate(policy, errs, meta, _dict(pod.get("spec")), warnings, audit,
                       pod_name=_str(meta.get("name")))

    # -------------------------------------------------------------- workloads

    def check_workload(self, ns_obj: Obj | None, kind: str, obj: Obj, warnings: list[str], *, user: str = "",
                       subresource: str = "", audit: dict[str, str] | None = None) -> None:
        """Warn (never refuse) about a pod controller whose pod template breaks the warn level, and
        record audit-level violations, on its create or update. Other kinds are let through."""
        audit = {} if audit is None else audit
        where = WORKLOAD_TEMPLATES.get(kind)
        api_version = _str(obj.get("apiVersion"))
        if where is None or subresource or (api_version and api_version.rpartition("/")[0] != where[0]):
            return
        meta = _dict(obj.get("metadata"))
        namespace = _str(meta.get("namespace")) or _str(_dict(_dict(ns_obj).get("metadata")).get("name"))
        if self._exempt(namespace, user, audit):
            return
        if ns_obj is None:
            audit[ANN_ERROR] = (f"failed to lookup namespace {go_quote(namespace)}: "
                                f"namespaces {go_quote(namespace)} not found")
            return
        policy, errs = self.policy(ns_obj)
        if not errs and policy.warn.level == PRIVILEGED and policy.audit.level == PRIVILEGED:
            return
        template: Any = obj
        for key in where[1]:
            template = template.get(key) if isinstance(template, dict) else None
        if not isinstance(template, dict):
            return  # a controller without a template has no pods to judge
        self._evaluate(policy, errs, _dict(template.get("metadata")), _dict(template.get("spec")),
                       warnings, audit)

    # -------------------------------------------------------------- namespaces

    def check_namespace(self, ns_obj: Obj, old_ns: Obj | None, pods: Iterable[Obj], warnings: list[str], *,
                        subresource: str = "") -> None:
        """A namespace create (old_ns None) or update: refuse invalid labels with a 422; when an update
        tightens enforcement, warn about the existing pods it would refuse.

        ``pods`` are all pods of the namespace; it is only read when the enforce
        level tightens, so a generator over the watch cache costs nothing otherwise.
        """
        if subresource:
            return
        name = _str(_dict(ns_obj.get("metadata")).get("name"))
        labels = _dict(_dict(ns_obj.get("metadata")).get("labels"))
        policy, errs = self.policy(ns_obj)
        if old_ns is None:
            if errs:
                raise errors.invalid_object("Namespace", "", name, errs)
            self._warn_exempt_namespace(name, policy, labels, warnings)
            return
        old_policy, old_errs = self.policy(old_ns)
        if errs and (not old_errs or errs != old_errs):
            raise errors.invalid_object("Namespace", "", name, errs)
        new, old = policy.enforce, old_policy.enforce
        if new == old or new.level == PRIVILEGED or (new.version == old.version
                                                     and compare_levels(new.level, old.level) < 1):
            return
        if name in self.exempt_namespaces:
            self._warn_exempt_namespace(name, policy, labels, warnings)
            return
        warnings.extend(self.evaluate_pods(name, new, pods))

    def evaluate_pods(self, namespace: str, enforce: LevelVersion, pods: Iterable[Obj]) -> list[str]:
        """The warnings for existing pods a new enforce level would refuse: one line per distinct
        violation, naming the first pod (by name) and how many others share it."""
        candidates: list[Obj] = []
        later: list[Obj] = []  # further pods of a controller already represented
        controllers: set[str] = set()
        for pod in pods:
            if self._exempt_runtime_class(_dict(pod.get("spec"))):
                continue
            uid = _controller_uid(pod)
            if uid is not None and uid in controllers:
                later.append(pod)
                continue
            if uid is not None:
                controllers.add(uid)
            candidates.append(pod)
        candidates += later
        total = len(candidates)
        candidates = candidates[:self.namespace_max_pods]
        checked = len(candidates)
        deadline = time.monotonic() + self.namespace_pod_timeout
        seen: dict[str, list] = {}  # violation reasons -> [first pod name, pod count]
        for i, pod in enumerate(candidates):
            r = self.evaluator.evaluate(enforce, pod.get("metadata"), pod.get("spec"))
            if not r.allowed:
                pod_name = _str(_dict(pod.get("metadata")).get("name"))
                entry = seen.setdefault(r.reason(), [pod_name, 0])
                entry[0] = min(entry[0], pod_name)
                entry[1] += 1
            if time.monotonic() > deadline:
                checked = i + 1
                break
        out: list[str] = []
        if checked < total:
            out.append(f"new PodSecurity enforce level only checked against the first {checked} of {total} "
                       f"existing pods")
        if seen:
            out.append(f"existing pods in namespace {go_quote(namespace)} violate the new PodSecurity "
                       f"enforce level {go_quote(str(enforce))}")
        lines = []
        for reason, (pod_name, count) in seen.items():
            others = ("" if count == 1 else " (and 1 other pod)" if count == 2
                      else f" (and {count - 1} other pods)")
            lines.append(f"{pod_name}{others}: {reason}")
        return out + sorted(lines)

    # -------------------------------------------------------------- shared

    def _exempt(self, namespace: str, user: str, audit: dict[str, str]) -> bool:
        if namespace and namespace in self.exempt_namespaces:
            audit[ANN_EXEMPT] = "namespace"
            return True
        if user and user in self.exempt_usernames:
            audit[ANN_EXEMPT] = "user"
            return True
        return False

    def _exempt_runtime_class(self, spec: Obj) -> bool:
        rc = _str(spec.get("runtimeClassName"))
        return bool(rc) and rc in self.exempt_runtime_classes

    def _evaluate(self, policy: Policy, errs: list[errors.FieldError], meta: Obj, spec: Obj,
                  warnings: list[str], audit: dict[str, str], pod_name: str | None = None) -> None:
        """Apply the policy to a pod (enforced, refused as pod_name) or a pod template (pod_name None)."""
        if self._exempt_runtime_class(spec):
            audit[ANN_EXEMPT] = "runtimeClass"
            return
        if errs:
            audit[ANN_ERROR] = f"Failed to parse policy: {_aggregate(errs)}"
        results: dict[LevelVersion, Result] = {}

        def result(lv: LevelVersion) -> Result:
            if lv not in results:
                results[lv] = self.evaluator.evaluate(lv, meta, spec)
            return results[lv]

        refusal = None
        if pod_name is not None:
            audit[ANN_ENFORCE_POLICY] = str(policy.enforce)
            r = result(policy.enforce)
            if not r.allowed:
                # Worded as apimachinery's NewForbidden; a generated name is already filled in by now.
                why = f"violates PodSecurity {go_quote(str(policy.enforce))}: {r.detail()}"
                message = f"pods {go_quote(pod_name)} is forbidden: {why}" if pod_name else \
                    f"pods is forbidden: {why}"
                details = {"name": pod_name, "kind": "pods"} if pod_name else {"kind": "pods"}
                refusal = errors.StatusError(403, "Forbidden", message, details)
        r = result(policy.audit)
        if not r.allowed:
            audit[ANN_AUDIT_VIOLATIONS] = \
                f"would violate PodSecurity {go_quote(str(policy.audit))}: {r.detail()}"
        if refusal is not None:
            raise refusal  # no warnings on a request that is refused anyway
        r = result(policy.warn)
        if not r.allowed:
            warnings.append(f"would violate PodSecurity {go_quote(str(policy.warn))}: {r.detail()}")

    def _warn_exempt_namespace(self, name: str, policy: Policy, labels: Mapping[str, str],
                               warnings: list[str]) -> None:
        """An exempt namespace that asks for a policy is told it will not get one."""
        if name not in self.exempt_namespaces or policy.fully_privileged or policy.equivalent(self.defaults):
            return
        parts = [f"{mode}={getattr(policy, mode)}" for mode in MODES
                 if getattr(policy, mode).level != PRIVILEGED
                 and (LABEL_PREFIX + mode in labels or LABEL_PREFIX + mode + "-version" in labels)]
        warnings.append(f"namespace {go_quote(name)} is exempt from Pod Security, and the policy "
                        f"({', '.join(parts)}) will be ignored")
