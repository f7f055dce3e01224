"""A container's environment, as the kubelet computes it before creating the container.

Owns: the service environment variables (``FOO_SERVICE_HOST`` and the docker-link
style ``FOO_PORT_80_TCP_ADDR`` family), ``envFrom`` and ``env`` with every
``valueFrom`` source, ``$(VAR)`` expansion in env values, command and args, and the
resource and field references the downward API shares with volumes.

Order follows upstream: service variables first, then ``envFrom`` sources in order,
then ``env`` entries in order; a later definition wins. An ``env`` value may refer
to variables defined before it (and to service variables); command and args see
the final environment.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from kybernetes.api.quantity import parse_quantity

Obj = dict[str, Any]

# A lookup of a ConfigMap or Secret by (namespace, name); None when it does not exist.
ObjectGetter = Callable[[str, str], Awaitable[Obj | None]]


class EnvError(Exception):
    """The container cannot be created with this environment (CreateContainerConfigError)."""


_C_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Upstream accepts any printable ASCII except '=' as an env var name.
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


# --------------------------------------------------------------------- service variables


def _service_prefix(name: str) -> str:
    return name.upper().replace("-", "_")


def _host_port(ip: str, port: int) -> str:
    try:
        if ipaddress.ip_address(ip).version == 6:
            return f"[{ip}]:{port}"
    except ValueError:
        pass
    return f"{ip}:{port}"


def service_env(services: Iterable[Obj]) -> dict[str, str]:
    """The variables upstream injects for each service that has a cluster IP."""
    env: dict[str, str] = {}
    for svc in sorted(services, key=lambda s: s["metadata"]["name"]):
        spec = svc.get("spec") or {}
        ip = spec.get("clusterIP")
        if not ip or ip == "None":
            continue  # headless services and services without an IP yet get nothing
        ports = spec.get("ports") or []
        if not ports:
            continue
        prefix = _service_prefix(svc["metadata"]["name"])
        env[f"{prefix}_SERVICE_HOST"] = ip
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0].get("port"))
        for p in ports:
            if p.get("name"):
                env[f"{prefix}_SERVICE_PORT_{_service_prefix(p['name'])}"] = str(p.get("port"))
        first = ports[0]
        proto = (first.get("protocol") or "TCP").lower()
        env[f"{prefix}_PORT"] = f"{proto}://{_host_port(ip, first.get('port'))}"
        for p in ports:
            proto = (p.get("protocol") or "TCP")
            link = f"{prefix}_PORT_{p.get('port')}_{proto.upper()}"
            env[link] = f"{proto.lower()}://{_host_port(ip, p.get('port'))}"
            env[f"{link}_PROTO"] = proto.lower()
            env[f"{link}_PORT"] = str(p.get("port"))
            env[f"{link}_ADDR"] = ip
    return env


def select_services(services: Iterable[Obj], pod_namespace: str, enable_service_links: bool,
                    master_namespace: str = "default") -> list[Obj]:
    """Which services a pod sees: ``default/kubernetes`` always, its namespace's when links are on.

    A service in the pod's own namespace wins over the master one of the same name.
    """
    by_name: dict[str, Obj] = {}
    master: dict[str, Obj] = {}
    for svc in services:
        meta = svc.get("metadata") or {}
        ns, name = meta.get("namespace"), meta.get("name")
        if ns == master_namespace and name == "kubernetes":
            master[name] = svc
        if ns == pod_namespace and enable_service_links:
            by_name[name] = svc
    for name, svc in master.items():
        by_name.setdefault(name, svc)
    return list(by_name.values())


# --------------------------------------------------------------------- $(VAR) expansion


def expand(text: str, *mappings: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: ``$$`` escapes, unknown references stay as written."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end < 0:
                # An unterminated reference is kept literally, as upstream does.
                out.append(text[i:])
                break
            name = text[i + 2 : end]
            for m in mappings:
                if name in m:
                    out.append(m[name])
                    break
            else:
                out.append(text[i : end + 1])
            i = end + 1
        else:
            out.append("$")
            i += 1
    return "".join(out)


# --------------------------------------------------------------------- downward API


# An address, or all of a pod's (or node's) addresses, primary first.
IPs = str | Sequence[str]


def field_ref(pod: Obj, path: str, pod_ip: IPs = "", host_ip: IPs = "") -> str:
    """The value of a fieldRef.fieldPath for this pod. pod_ip and host_ip are an address, or
    all of them primary first (status.podIPs and hostIPs are then comma-separated, as upstream)."""
    pod_ips = [pod_ip] if isinstance(pod_ip, str) else list(pod_ip)
    host_ips = [host_ip] if isinstance(host_ip, str) else list(host_ip)
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", "default"),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName") or spec.get("serviceAccount") or "",
        "status.podIP": pod_ips[0] if pod_ips else "",
        "status.podIPs": ",".join(pod_ips),
        "status.hostIP": host_ips[0] if host_ips else "",
        "status.hostIPs": ",".join(host_ips),
    }
    if path in simple:
        return str(simple[path])
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']*)'\]", path) or \
        re.fullmatch(r'metadata\.(labels|annotations)\["([^"]*)"\]', path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        # Only valid in downwardAPI volumes: one key="value" line per entry, sorted.
        items = sorted((meta.get(path.split(".")[1]) or {}).items())
        return "\n".join(f'{k}="{_quote(v)}"' for k, v in items) + ("\n" if items else "")
    raise EnvError(f"unsupported fieldPath {path!r}")


def _quote(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _node_allocatable_default(resource: str, node_allocatable: Mapping[str, str]) -> Any:
    return node_allocatable.get(resource.split(".", 1)[-1])


def resource_ref(pod: Obj, ref: Obj, default_container: str = "",
                 node_allocatable: Mapping[str, str] | None = None) -> str:
    """The value of a resourceFieldRef: the quantity divided by the divisor, rounded up.

    A limit that is not set falls back to the node's allocatable, as upstream does.
    """
    cname = ref.get("containerName") or default_container
    resource = ref.get("resource") or ""
    container = next((c for c in (pod.get("spec") or {}).get("containers") or [] if c.get("name") == cname),
                     None)
    if container is None:
        container = next((c for c in (pod.get("spec") or {}).get("initContainers") or []
                          if c.get("name") == cname), None)
    if container is None:
        raise EnvError(f"resourceFieldRef: container {cname!r} not found")
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or not name:
        raise EnvError(f"unsupported resource {resource!r}")
    res = (container.get("resources") or {}).get(kind) or {}
    raw = res.get(name)
    if raw is None and kind == "requests":
        raw = ((container.get("resources") or {}).get("limits") or {}).get(name)
    if raw is None:
        raw = _node_allocatable_default(resource, node_allocatable or {})
    if raw is None:
        return "0"
    value = parse_quantity(raw).value_exact
    divisor = parse_quantity(ref.get("divisor") or "1").value_exact
    if divisor == 0:
        raise EnvError("resourceFieldRef divisor is zero")
    return str(math.ceil(value / divisor))


# --------------------------------------------------------------------- the whole environment


def _decode_secret(data: Obj, key: str) -> str:
    import base64

    return base64.b64decode(data[key]).decode("utf-8", errors="replace")


async def container_env(pod: Obj, container: Obj, *, get_configmap: ObjectGetter, get_secret: ObjectGetter,
                        services: Iterable[Obj] = (), pod_ip: IPs = "", host_ip: IPs = "",
                        node_allocatable: Mapping[str, str] | None = None,
                        warn: Callable[[str], None] | None = None) -> dict[str, str]:
    """Everything the container sees as environment, or EnvError if a required source is missing."""
    ns = (pod.get("metadata") or {}).get("namespace") or "default"
    spec = pod.get("spec") or {}
    env: dict[str, str] = {}
    svc_env = service_env(select_services(services, ns, spec.get("enableServiceLinks", True) is not False))
    invalid: list[str] = []
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix") or ""
        if "configMapRef" in src:
            ref = src["configMapRef"]
            cm = await get_configmap(ns, ref.get("name", ""))
            if cm is None:
                if ref.get("optional"):
                    continue
                raise EnvError(f'configmap "{ref.get("name")}" not found')
            values = {**(cm.get("data") or {})}
        elif "secretRef" in src:
            ref = src["secretRef"]
            sec = await get_secret(ns, ref.get("name", ""))
            if sec is None:
                if ref.get("optional"):
                    continue
                raise EnvError(f'secret "{ref.get("name")}" not found')
            data = sec.get("data") or {}
            values = {k: _decode_secret(data, k) for k in data}
            values.update(sec.get("stringData") or {})
        else:
            continue
        for k, v in values.items():
            name = prefix + k
            if not _ENV_NAME.match(name):
                invalid.append(k)
                continue
            env[name] = v
    if invalid and warn is not None:
        warn("Keys [" + ", ".join(sorted(invalid)) + "] from the EnvFrom were skipped since they are "
             "invalid environment variable names.")
    for e in container.get("env") or []:
        name = e.get("name", "")
        if "valueFrom" not in e:
            # Expansion sees what is defined so far in this container, then service variables.
            env[name] = expand(e.get("value") or "", env, svc_env)
            continue
        vf = e["valueFrom"] or {}
        if "configMapKeyRef" in vf:
            ref = vf["configMapKeyRef"]
            cm = await get_configmap(ns, ref.get("name", ""))
            if cm is None or ref.get("key") not in {**(cm.get("data") or {}), **(cm.get("binaryData") or {})}:
                if ref.get("optional"):
                    continue
                what = "configmap" if cm is None else f'key "{ref.get("key")}" in configmap'
                raise EnvError(f'{what} "{ref.get("name")}" not found' if cm is None
                               else f'couldn\'t find {what} {ns}/{ref.get("name")}')
            env[name] = (cm.get("data") or {}).get(ref["key"], "")
        elif "secretKeyRef" in vf:
            ref = vf["secretKeyRef"]
            sec = await get_secret(ns, ref.get("name", ""))
            data = (sec or {}).get("data") or {}
            if sec is None or ref.get("key") not in data:
                if ref.get("optional"):
                    continue
                raise EnvError(f'secret "{ref.get("name")}" not found' if sec is None
                               else f'couldn\'t find key {ref.get("key")} in Secret {ns}/{ref.get("name")}')
            env[name] = _decode_secret(data, ref["key"])
        elif "fieldRef" in vf:
            env[name] = field_ref(pod, vf["fieldRef"].get("fieldPath", ""), pod_ip, host_ip)
        elif "resourceFieldRef" in vf:
            env[name] = resource_ref(pod, vf["resourceFieldRef"], container.get("name", ""), node_allocatable)
    # Service variables come first: anything the user defines overrides them.
    return {**svc_env, **env}


def expand_command(container: Obj, env: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """command and args with $(VAR) references to the final environment expanded."""
    return ([expand(c, env) for c in container.get("command") or []],
            [expand(a, env) for a in container.get("args") or []])
