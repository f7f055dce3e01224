"""Errors the image service raises. ``reason`` is what the kubelet shows a user."""

from __future__ import annotations


class ImageError(Exception):
    """Base of every image service error."""

    reason = "ErrImagePull"


class InvalidReference(ImageError):
    reason = "InvalidImageName"


class ImageNotFound(ImageError):
    """The registry (or the local store) has no such repository, tag or digest."""


class Unauthorized(ImageError):
    """The registry refused the credentials (or wants some and none were given)."""


class DigestMismatch(ImageError):
    """Content did not hash to the digest (or size) its descriptor promised."""


class RegistryError(ImageError):
    """Any other failure talking to a registry (HTTP errors, TLS, connection refused)."""


class UnsupportedImage(ImageError):
    """A manifest, media type or platform this node cannot run."""


class ImageInUse(ImageError):
    """Removal refused: a container uses the image."""

    reason = "ImageInUse"
