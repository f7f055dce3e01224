"""metav1.Time on the wire: RFC 3339 in UTC with whole seconds, as upstream serializes it."""

from __future__ import annotations

import time
from datetime import datetime, timezone

_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_time(t: float | None = None) -> str:
    """A Unix time (now when None) as a metav1.Time string."""
    return datetime.fromtimestamp(time.time() if t is None else t, timezone.utc).strftime(_FORMAT)


def parse_time(ts: str | None) -> float | None:
    """A metav1.Time (or MicroTime; the fraction is dropped) string as a Unix time; None if unreadable."""
    if not ts:
        return None
    try:
        return datetime.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None
