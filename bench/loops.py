"""The event loop a benchmark's processes run on: uvloop where installed, as `kyb server` uses."""

from __future__ import annotations

import os


def use_uvloop() -> str:
    """Install uvloop unless KYB_NO_UVLOOP is set or it is missing; the loop's name."""
    if os.environ.get("KYB_NO_UVLOOP"):
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    uvloop.install()
    return "uvloop"
