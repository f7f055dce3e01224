"""Where to pull a registry's images from: the k3s ``registries.yaml`` file, parsed and answered.

The file's shape is k3s's (and RKE2's)::

    mirrors:
      docker.io:                      # a registry name, or "*" for every registry without its own entry
        endpoint: ["https://mirror.example.com:5000", "http://127.0.0.1:5001"]
        rewrite: {"^library/(.*)": "mirrored/$1"}
    configs:
      mirror.example.com:5000:        # an endpoint's host[:port] (or "*")
        auth: {username: u, password: p}    # or auth: base64(u:p), or identity_token
        tls: {ca_file: …, cert_file: …, key_file: …, insecure_skip_verify: false}

:meth:`RegistriesConfig.endpoints` answers the one question the registry client asks: which
endpoints to try, in order, for a registry. As containerd does under k3s, a registry's mirrors
come first and its own "default endpoint" last (unless the node disables that fallback);
rewrites apply to mirrors only. An endpoint URL with no path gets ``/v2``; a URL with a path is
taken as the API root as written (containerd's ``override_path``), which is how a
``/v2/some-project`` style mirror is reached. Without a scheme, and for the default endpoint,
HTTPS is used except for loopback hosts, which Docker and containerd treat as insecure.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")
# Docker Hub's API does not live at its name's host.
DOCKER_HUB_ENDPOINT = "https://registry-1.docker.io/v2"


@dataclass(frozen=True)
class Credential:
    """One registry's login, from a kubernetes.io/dockerconfigjson Secret or registries.yaml."""

    registry: str  # host[:port] as in a reference's domain; "*.example.com" matches subdomains
    username: str = ""
    password: str = ""
    identity_token: str = ""

    def __repr__(self) -> str:  # never print a secret into a log
        return f"Credential(registry={self.registry!r}, username={self.username!r})"


@dataclass(frozen=True)
class TLSConfig:
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    insecure_skip_verify: bool = False


@dataclass(frozen=True)
class Endpoint:
    """One place a registry's API answers: ``url`` is the API root (it ends in ``/v2`` unless
    the config gave a path of its own); requests go to ``url + "/" + path + "/manifests/…"``."""

    url: str
    host: str  # host[:port] of url: what credentials and TLS settings are looked up by
    tls: TLSConfig = TLSConfig()
    mirror: bool = False
    rewrite: tuple[tuple[str, str], ...] = ()  # (Go regexp, replacement with $1) in file order
    credential: Credential | None = None  # from registries.yaml's configs for this host

    def repository(self, path: str) -> str:
        """The repository path to ask this endpoint for: the first matching rewrite rule, if any."""
        for pattern, replacement in self.rewrite:
            rx = re.compile(pattern)
            if rx.search(path):
                return rx.sub(_go_replacement(replacement), path, count=1)
        return path


def _go_replacement(rep: str) -> str:
    # k3s writes Go regexp replacements ($1, ${1}, ${name}); Python's re wants \g<1>.
    rep = rep.replace("\\", "\\\\")
    return re.sub(r"\$\{(\w+)\}|\$(\d+)", lambda m: "\\g<%s>" % (m.group(1) or m.group(2)), rep)


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1, with or without a port."""
    h = host
    if h.startswith("["):
        h = h[1:h.find("]")] if "]" in h else h[1:]
    elif h.count(":") == 1:
        h = h.rsplit(":", 1)[0]
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def normalize_host(registry: str) -> str:
    """``https://index.docker.io/v1/`` → ``docker.io``; ``http://reg:5000/v2/`` → ``reg:5000``."""
    r = registry.strip()
    if "://" in r:
        r = urlsplit(r).netloc
    r = r.split("/", 1)[0].lower()
    return "docker.io" if r in DOCKER_HUB_ALIASES else r


def host_matches(pattern: str, host: str) -> bool:
    """A credential's registry against a host: equal (Docker Hub's names are one), or a
    ``*.domain`` glob for one label, as the kubelet's credential keys allow."""
    p, h = normalize_host(pattern), normalize_host(host)
    if p == h:
        return True
    if p.startswith("*."):
        p_host, _, p_port = p.partition(":")
        h_host, _, h_port = h.partition(":")
        if p_port != h_port:
            return False
        suffix = p_host[1:]
        return h_host.endswith(suffix) and "." not in h_host[: -len(suffix)]
    return False


def _endpoint_url(raw: str, where: str) -> tuple[str, str]:
    """(API root URL, host[:port]) of an endpoint as written in the config."""
    s = raw.strip()
    if not s:
        raise ValueError(f"{where}: empty endpoint")
    if "://" not in s:
        host = s.split("/", 1)[0]
        s = ("http://" if is_loopback(host) else "https://") + s
    u = urlsplit(s)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise ValueError(f"{where}: endpoint {raw!r} must be an http:// or https:// URL")
    path = u.path.rstrip("/")
    if not path:
        path = "/v2"
    return f"{u.scheme}://{u.netloc}{path}", u.netloc.lower()


def default_endpoint_url(domain: str) -> str:
    if normalize_host(domain) == "docker.io":
        return DOCKER_HUB_ENDPOINT
    return ("http://" if is_loopback(domain) else "https://") + domain + "/v2"


@dataclass
class RegistriesConfig:
    # registry name (or "*") -> (endpoint URLs as written, rewrite rules)
    mirrors: dict[str, tuple[list[str], list[tuple[str, str]]]] = field(default_factory=dict)
    # endpoint host[:port] (or "*") -> (credential or None, TLS settings)
    configs: dict[str, tuple[Credential | None, TLSConfig]] = field(default_factory=dict)
    # k3s's --disable-default-registry-endpoint: only for registries that have a mirrors entry.
    disable_default_endpoint: bool = False

    def _config(self, host: str) -> tuple[Credential | None, TLSConfig]:
        h = normalize_host(host)
        for key, value in self.configs.items():
            if normalize_host(key) == h:
                return value
        return self.configs.get("*", (None, TLSConfig()))

    def credentials(self, host: str) -> Credential | None:
        """The configured login for an endpoint host (``configs[host].auth``, else ``configs["*"]``)."""
        return self._config(host)[0]

    def tls(self, host: str) -> TLSConfig:
        return self._config(host)[1]

    def endpoints(self, domain: str) -> list[Endpoint]:
        """Where to pull ``domain``'s images from, in the order to try them."""
        key = normalize_host(domain)
        entry = None
        for name, value in self.mirrors.items():
            if name != "*" and normalize_host(name) == key:
                entry = value
                break
        if entry is None:
            entry = self.mirrors.get("*")
        out: list[Endpoint] = []
        seen: set[str] = set()
        default_url = default_endpoint_url(domain)
        if entry:
            urls, rewrite = entry
            for raw in urls:
                url, host = _endpoint_url(raw, f"mirrors[{domain}]")
                if url in seen:
                    continue
                seen.add(url)
                cred, tls = self._config(host)
                # Listing the registry itself among its mirrors is common; it is then the default
                # endpoint, which never gets rewrites.
                mirror = url != default_url
                out.append(Endpoint(url, host, tls, mirror, tuple(rewrite) if mirror else (), cred))
        if default_url not in seen and not (entry and self.disable_default_endpoint):
            host = urlsplit(default_url).netloc
            cred, tls = self._config(host)
            out.append(Endpoint(default_url, host, tls, False, (), cred))
        return out


def _str(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError(f"{where} must be a string")
    return str(value)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a mapping")
    return value


def _auth(value: Any, host: str, where: str) -> Credential | None:
    a = _mapping(value, where)
    unknown = set(a) - {"username", "password", "auth", "identity_token", "identitytoken"}
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    username, password = _str(a.get("username"), f"{where}.username"), _str(a.get("password"), f"{where}.password")
    token = _str(a.get("identity_token", a.get("identitytoken")), f"{where}.identity_token")
    if a.get("auth"):
        username, password = _decode_auth(_str(a["auth"], f"{where}.auth"), where)
    if not (username or password or token):
        return None
    return Credential(host, username, password, token)


def _decode_auth(value: str, where: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value.strip() + "=" * (-len(value.strip()) % 4), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as e:
        raise ValueError(f"{where}.auth is not base64 of user:password") from e
    username, sep, password = decoded.partition(":")
    if not sep:
        raise ValueError(f"{where}.auth is not base64 of user:password")
    return username, password


def parse_registries(doc: Any, source: str = "registries.yaml",
                     *, disable_default_endpoint: bool = False) -> RegistriesConfig:
    """Check and convert a loaded registries.yaml document."""
    root = _mapping(doc, source)
    unknown = set(root) - {"mirrors", "configs"}
    if unknown:
        raise ValueError(f"{source}: unknown top-level field(s) {', '.join(sorted(unknown))} "
                         "(expected mirrors and configs)")
    cfg = RegistriesConfig(disable_default_endpoint=disable_default_endpoint)
    for name, m in _mapping(root.get("mirrors"), f"{source}: mirrors").items():
        where = f"{source}: mirrors[{name}]"
        m = _mapping(m, where)
        bad = set(m) - {"endpoint", "rewrite"}
        if bad:
            raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(bad))}")
        eps = m.get("endpoint") or []
        if isinstance(eps, str):
            eps = [eps]
        if not isinstance(eps, list):
            raise ValueError(f"{where}.endpoint must be a list of URLs")
        urls = [_str(e, f"{where}.endpoint") for e in eps]
        for u in urls:
            _endpoint_url(u, where)
        rewrite = []
        for pattern, rep in _mapping(m.get("rewrite"), f"{where}.rewrite").items():
            try:
                re.compile(str(pattern))
            except re.error as e:
                raise ValueError(f"{where}.rewrite: invalid regular expression {pattern!r}: {e}") from e
            rewrite.append((str(pattern), _str(rep, f"{where}.rewrite[{pattern}]")))
        cfg.mirrors[str(name)] = (urls, rewrite)
    for host, c in _mapping(root.get("configs"), f"{source}: configs").items():
        where = f"{source}: configs[{host}]"
        c = _mapping(c, where)
        bad = set(c) - {"auth", "tls"}
        if bad:
            raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(bad))}")
        t = _mapping(c.get("tls"), f"{where}.tls")
        bad = set(t) - {"ca_file", "cert_file", "key_file", "insecure_skip_verify"}
        if bad:
            raise ValueError(f"{where}.tls: unknown field(s) {', '.join(sorted(bad))}")
        skip = t.get("insecure_skip_verify", False)
        if not isinstance(skip, bool):
            raise ValueError(f"{where}.tls.insecure_skip_verify must be true or false")
        tls = TLSConfig(_str(t.get("ca_file"), f"{where}.tls.ca_file"),
                        _str(t.get("cert_file"), f"{where}.tls.cert_file"),
                        _str(t.get("key_file"), f"{where}.tls.key_file"), skip)
        if bool(tls.cert_file) != bool(tls.key_file):
            raise ValueError(f"{where}.tls: cert_file and key_file go together")
        cfg.configs[str(host)] = (_auth(c.get("auth"), normalize_host(str(host)), f"{where}.auth"), tls)
    return cfg


def load_registries(path: str | None, *, disable_default_endpoint: bool = False) -> RegistriesConfig:
    """Read a registries.yaml; a missing file (or no path) is an empty config."""
    if not path:
        return RegistriesConfig(disable_default_endpoint=disable_default_endpoint)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return RegistriesConfig(disable_default_endpoint=disable_default_endpoint)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML: {e}") from e
    return parse_registries(doc, path, disable_default_endpoint=disable_default_endpoint)
