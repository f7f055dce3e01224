"""Image references, normalised as Docker and containerd do.

``busybox`` is ``docker.io/library/busybox:latest``; ``127.0.0.1:5000/web:1`` names the
registry ``127.0.0.1:5000``; a reference with a digest (``name@sha256:…``) pins content
and its tag, if any, is informational. A first path component is a registry host when
it contains a ``.`` or a ``:`` or is ``localhost``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kybernetes.images.errors import InvalidReference

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAINS = ("index.docker.io", "registry-1.docker.io")
DEFAULT_TAG = "latest"

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
_SHA256 = re.compile(r"^sha256:[a-f0-9]{64}$")
_DOMAIN = re.compile(r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
                     r"|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$")
MAX_NAME = 255


@dataclass(frozen=True)
class Reference:
    domain: str  # "docker.io", "127.0.0.1:5000"
    path: str  # "library/busybox"
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The repository, fully qualified: ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    @property
    def tagged(self) -> str | None:
        """``name:tag`` (the repo tag this reference records), None for digest-only references."""
        return f"{self.name}:{self.tag}" if self.tag else None

    @property
    def digested(self) -> str | None:
        return f"{self.name}@{self.digest}" if self.digest else None

    @property
    def object(self) -> str:
        """What to ask the registry's manifests endpoint for: the digest if pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def familiar(self) -> str:
        """The short form Docker prints: ``busybox:latest``, ``127.0.0.1:5000/web:1``."""
        name = self.name
        if self.domain == DEFAULT_DOMAIN:
            name = self.path[len("library/"):] if self.path.startswith("library/") else self.path
        out = name + (f":{self.tag}" if self.tag else "")
        return out + (f"@{self.digest}" if self.digest else "")

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.domain, self.path, None, digest)

    def is_latest(self) -> bool:
        """True when the tag is ``latest`` (explicit or implied) and no digest pins it."""
        return self.digest is None and (self.tag or DEFAULT_TAG) == DEFAULT_TAG


def is_digest(s: str) -> bool:
    return bool(_SHA256.match(s))


def parse(ref: str) -> Reference:
    """Parse and normalise a reference; a missing tag and digest means ``latest``."""
    if not isinstance(ref, str) or not ref or ref != ref.strip():
        raise InvalidReference(f"invalid reference format: {ref!r}")
    rest, _, digest = ref.partition("@")
    if digest and not _DIGEST.match(digest):
        raise InvalidReference(f"invalid reference format: invalid digest in {ref!r}")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.match(tag):
            raise InvalidReference(f"invalid reference format: invalid tag in {ref!r}")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, remainder
        if not _DOMAIN.match(domain):
            raise InvalidReference(f"invalid reference format: invalid registry host in {ref!r}")
    else:
        domain, path = DEFAULT_DOMAIN, rest
    if domain in LEGACY_DOMAINS:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"library/{path}"
    if not path or any(not _COMPONENT.match(c) for c in path.split("/")):
        if path.lower() != path:
            raise InvalidReference(f"invalid reference format: repository name must be lowercase: {ref!r}")
        raise InvalidReference(f"invalid reference format: {ref!r}")
    if len(domain) + 1 + len(path) > MAX_NAME:
        raise InvalidReference(f"invalid reference format: repository name must not be more than "
                               f"{MAX_NAME} characters: {ref!r}")
    if tag is None and not digest:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest or None)
