"""The scheduler: assigns pending pods to nodes through the API (queue, framework, plugins).

Run it with ``await Scheduler(client, SchedulerConfig()).run()``; see scheduler.py.
"""

from .framework import FitError, Framework, Status, reasons_summary
from .nodeinfo import Cache, NodeInfo, PodInfo
from .plugins import default_plugins
from .preemption import Preemptor
from .queue import SchedulingQueue
from .scheduler import Scheduler, SchedulerConfig

__all__ = [
    "Cache", "FitError", "Framework", "NodeInfo", "PodInfo", "Preemptor", "Scheduler", "SchedulerConfig",
    "SchedulingQueue", "Status", "default_plugins", "reasons_summary",
]
