"""The records the image service exchanges: OCI descriptors, platforms, media types, images."""

from __future__ import annotations

import platform as _platform
from dataclasses import dataclass, field
from typing import Any

# Manifests and indexes.
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
# Configs.
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
# Layers.
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_NONDIST_LAYER = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_NONDIST_LAYER_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
LAYER_TYPES = (OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, DOCKER_LAYER_GZIP, DOCKER_LAYER, DOCKER_FOREIGN_LAYER,
               OCI_NONDIST_LAYER, OCI_NONDIST_LAYER_GZIP)

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
         "armv6l": "arm", "i386": "386", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x",
         "riscv64": "riscv64"}


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def host_platform() -> Platform:
    machine = _platform.machine().lower()
    arch = _ARCH.get(machine, machine)
    variant = "v8" if arch == "arm64" else ("v7" if machine == "armv7l" else ("v6" if machine == "armv6l" else ""))
    return Platform("linux", arch, variant)


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a manifest says about a blob it references."""

    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    platform: Platform | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Descriptor:
        p = d.get("platform")
        return cls(
            media_type=d.get("mediaType", ""), digest=d["digest"], size=int(d["size"]),
            urls=tuple(d.get("urls") or ()), annotations=tuple(sorted((d.get("annotations") or {}).items())),
            platform=Platform(p.get("os", ""), p.get("architecture", ""), p.get("variant", "")) if p else None,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = {"os": self.platform.os, "architecture": self.platform.architecture}
            if self.platform.variant:
                out["platform"]["variant"] = self.platform.variant
        return out


@dataclass
class Image:
    """One image in the node's store, as CRI's Image message describes it."""

    id: str  # "sha256:<hex of the config blob>", as containerd names images
    repo_tags: list[str] = field(default_factory=list)  # "docker.io/library/busybox:latest"
    repo_digests: list[str] = field(default_factory=list)  # "docker.io/library/busybox@sha256:…"
    size: int = 0  # bytes of the image's content (config + layers, as stored)
    # The image config's "config" object: Entrypoint, Cmd, Env, WorkingDir, User, ExposedPorts,
    # Volumes, Labels, StopSignal (keys as the OCI image spec spells them).
    config: dict[str, Any] = field(default_factory=dict)
    # The uncompressed layers' digests (rootfs.diff_ids), lowest first.
    diff_ids: list[str] = field(default_factory=list)
    manifest_digest: str = ""  # the platform manifest this image was made from
    created_at: float = 0.0
    last_used: float = 0.0
    pinned: bool = False
