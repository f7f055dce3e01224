"""The real kubectl the tests drive: the one on PATH, if it is recent enough.

The suite is written against kubectl 1.27 and newer (the versions these machines
ship). A machine with only an older kubectl (Debian's kubernetes-client is 1.20)
skips the tests that drive it rather than failing on commands that kubectl lacks.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

MIN_MINOR = 27


def _usable(path: str | None) -> tuple[str | None, str]:
    if path is None:
        return None, "kubectl is not installed"
    try:
        out = subprocess.run([path, "version", "--client", "-o", "json"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
        minor = int("".join(ch for ch in json.loads(out)["clientVersion"]["minor"] if ch.isdigit()))
    except (OSError, subprocess.SubprocessError, ValueError, KeyError) as e:
        return None, f"cannot tell {path}'s version: {e}"
    if minor < MIN_MINOR:
        return None, f"{path} is kubectl 1.{minor}; these tests drive 1.{MIN_MINOR} or newer"
    return path, ""


KUBECTL, _WHY = _usable(shutil.which("kubectl"))
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason=_WHY or "kubectl is not usable")
