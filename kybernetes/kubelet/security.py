"""A container's effective security settings, from the pod's and the container's securityContext.

The container's fields win over the pod's (runAsUser, runAsGroup, runAsNonRoot,
seccompProfile); the rest are the container's own (privileged, capabilities,
readOnlyRootFilesystem, allowPrivilegeEscalation) or the pod's
(supplementalGroups, fsGroup). ``runAsNonRoot`` is checked here against the user the
image would run as, with upstream's messages, before anything is created.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]


class SecurityError(Exception):
    """The container may not run as configured (a CreateContainerConfigError)."""


@dataclass
class Security:
    run_as_user: int | None = None
    run_as_group: int | None = None
    supplemental_groups: list[int] = field(default_factory=list)
    privileged: bool = False
    readonly_rootfs: bool = False
    no_new_privileges: bool = False
    capabilities_add: list[str] = field(default_factory=list)
    capabilities_drop: list[str] = field(default_factory=list)
    # "RuntimeDefault", "Unconfined", or "localhost/<path under the kubelet's seccomp dir>".
    seccomp: str = "Unconfined"


def _caps(names: list[str] | None) -> list[str]:
    out = []
    for n in names or []:
        n = str(n).upper()
        out.append(n if n == "ALL" or n.startswith("CAP_") else f"CAP_{n}")
    return out


def _seccomp(profile: Obj | None) -> str | None:
    if not profile:
        return None
    kind = profile.get("type")
    if kind == "Localhost":
        return "localhost/" + (profile.get("localhostProfile") or "")
    return kind or None


def effective(pod: Obj, container: Obj) -> Security:
    psc: Obj = (pod.get("spec") or {}).get("securityContext") or {}
    csc: Obj = container.get("securityContext") or {}

    def pick(key: str) -> Any:
        return csc[key] if csc.get(key) is not None else psc.get(key)

    groups = [int(g) for g in psc.get("supplementalGroups") or []]
    if psc.get("fsGroup") is not None and int(psc["fsGroup"]) not in groups:
        groups.append(int(psc["fsGroup"]))
    caps = csc.get("capabilities") or {}
    ape = csc.get("allowPrivilegeEscalation")
    return Security(
        run_as_user=pick("runAsUser"), run_as_group=pick("runAsGroup"), supplemental_groups=groups,
        privileged=bool(csc.get("privileged")), readonly_rootfs=bool(csc.get("readOnlyRootFilesystem")),
        no_new_privileges=ape is False, capabilities_add=_caps(caps.get("add")),
        capabilities_drop=_caps(caps.get("drop")),
        seccomp=_seccomp(csc.get("seccompProfile")) or _seccomp(psc.get("seccompProfile")) or "Unconfined",
    )


def verify_run_as_non_root(pod: Obj, container: Obj, sec: Security, image_user: str) -> None:
    """Refuse a container that asks for runAsNonRoot but would run as root (upstream's wording)."""
    psc: Obj = (pod.get("spec") or {}).get("securityContext") or {}
    csc: Obj = container.get("securityContext") or {}
    non_root = csc.get("runAsNonRoot") if csc.get("runAsNonRoot") is not None else psc.get("runAsNonRoot")
    if not non_root:
        return
    meta = pod.get("metadata") or {}
    where = f'(pod: "{meta.get("name")}_{meta.get("namespace")}({meta.get("uid")})", container: {container.get("name")})'
    if sec.run_as_user is not None:
        if int(sec.run_as_user) == 0:
            raise SecurityError(f"container's runAsUser breaks non-root policy {where}")
        return
    user = (image_user or "").split(":", 1)[0]
    if not user.isdigit():
        if user:
            raise SecurityError(f"container has runAsNonRoot and image has non-numeric user ({user}), cannot "
                                f"verify user is non-root {where}")
        raise SecurityError(f"container has runAsNonRoot and image will run as root {where}")
    if int(user) == 0:
        raise SecurityError(f"container has runAsNonRoot and image will run as root {where}")
