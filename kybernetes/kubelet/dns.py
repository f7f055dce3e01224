"""A pod's /etc/resolv.conf and /etc/hosts, as the kubelet writes them for its containers.

resolv.conf follows ``dnsPolicy``: ClusterFirst (the default) points at the cluster
DNS with the ``<ns>.svc.<domain> svc.<domain> <domain>`` search path and ``ndots:5``
(host-network pods fall back to Default unless ClusterFirstWithHostNet); Default is
the node's own resolv.conf; None is only what ``dnsConfig`` says. ``dnsConfig`` adds
nameservers, searches and options on top, within upstream's limits (3 nameservers, 32
search domains). hosts carries localhost, the pod's addresses under its hostname (and
its FQDN with a subdomain), and ``hostAliases``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]

MAX_NAMESERVERS = 3
MAX_SEARCHES = 32
CLUSTER_NDOTS = 5


@dataclass
class ResolvConf:
    nameservers: list[str] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = []
        if self.searches:
            lines.append("search " + " ".join(self.searches))
        lines += [f"nameserver {ns}" for ns in self.nameservers]
        if self.options:
            lines.append("options " + " ".join(self.options))
        return "\n".join(lines) + "\n"


def parse_resolv_conf(text: str) -> ResolvConf:
    out = ResolvConf()
    for raw in text.splitlines():
        parts = raw.split("#", 1)[0].split(";", 1)[0].split()
        if not parts:
            continue
        if parts[0] == "nameserver" and len(parts) > 1:
            out.nameservers.append(parts[1])
        elif parts[0] in ("search", "domain"):
            out.searches = parts[1:]
        elif parts[0] == "options":
            out.options.extend(parts[1:])
    return out


def _merge_options(base: list[str], extra: list[Obj]) -> list[str]:
    opts: dict[str, str] = {}
    for o in base:
        name, _, value = o.partition(":")
        opts[name] = o
    for o in extra:
        name = o.get("name") or ""
        if name:
            opts[name] = f"{name}:{o['value']}" if o.get("value") not in (None, "") else name
    return list(opts.values())


def resolv_conf(pod: Obj, *, cluster_dns: list[str], cluster_domain: str, host: ResolvConf) -> ResolvConf:
    """The resolv.conf a pod's containers get."""
    spec = pod.get("spec") or {}
    policy = spec.get("dnsPolicy") or "ClusterFirst"
    host_network = bool(spec.get("hostNetwork"))
    if policy == "ClusterFirst" and host_network:
        policy = "Default"
    if policy in ("ClusterFirst", "ClusterFirstWithHostNet") and not cluster_dns:
        policy = "Default"  # no cluster DNS on this node: upstream falls back the same way
    if policy in ("ClusterFirst", "ClusterFirstWithHostNet"):
        ns = (pod.get("metadata") or {}).get("namespace") or "default"
        out = ResolvConf(list(cluster_dns),
                         [f"{ns}.svc.{cluster_domain}", f"svc.{cluster_domain}", cluster_domain, *host.searches],
                         [f"ndots:{CLUSTER_NDOTS}"])
    elif policy == "None":
        out = ResolvConf()
    else:  # Default
        out = ResolvConf(list(host.nameservers), list(host.searches), list(host.options))
    cfg = spec.get("dnsConfig") or {}
    out.nameservers = list(dict.fromkeys(out.nameservers + list(cfg.get("nameservers") or [])))[:MAX_NAMESERVERS]
    out.searches = list(dict.fromkeys(out.searches + list(cfg.get("searches") or [])))[:MAX_SEARCHES]
    out.options = _merge_options(out.options, list(cfg.get("options") or []))
    return out


def missing_cluster_dns(pod: Obj, cluster_dns: list[str]) -> bool:
    """True when the pod asks for the cluster DNS and this node has none (upstream's MissingClusterDNS)."""
    spec = pod.get("spec") or {}
    policy = spec.get("dnsPolicy") or "ClusterFirst"
    wants = policy == "ClusterFirstWithHostNet" or (policy == "ClusterFirst" and not spec.get("hostNetwork"))
    return wants and not cluster_dns


def hosts_file(pod: Obj, pod_ips: list[str], cluster_domain: str) -> str:
    """The kubelet-managed /etc/hosts of a pod with its own network."""
    spec = pod.get("spec") or {}
    meta = pod.get("metadata") or {}
    hostname = (spec.get("hostname") or meta.get("name") or "")[:63]
    lines = ["# Kubernetes-managed hosts file.", "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
             "fe00::0\tip6-localnet", "fe00::0\tip6-mcastprefix", "fe00::1\tip6-allnodes", "fe00::2\tip6-allrouters"]
    names = hostname
    if spec.get("subdomain"):
        ns = meta.get("namespace") or "default"
        names = f"{hostname}.{spec['subdomain']}.{ns}.svc.{cluster_domain}\t{hostname}"
    lines += [f"{ip}\t{names}" for ip in pod_ips]
    aliases = spec.get("hostAliases") or []
    if aliases:
        lines.append("")
        lines.append("# Entries added by HostAliases.")
        lines += [f"{a.get('ip')}\t{chr(9).join(a.get('hostnames') or [])}" for a in aliases if a.get("ip")]
    return "\n".join(lines) + "\n"


def host_network_hosts_file(host_hosts: str, pod: Obj) -> str:
    """The node's /etc/hosts plus hostAliases, for a pod on the node's network."""
    aliases = (pod.get("spec") or {}).get("hostAliases") or []
    if not aliases:
        return host_hosts
    extra = ["", "# Entries added by HostAliases."]
    extra += [f"{a.get('ip')}\t{chr(9).join(a.get('hostnames') or [])}" for a in aliases if a.get("ip")]
    return host_hosts.rstrip("\n") + "\n" + "\n".join(extra) + "\n"
