"""Pod status as the kubelet reports it: container states, phase and conditions.

Pure functions over what the pod worker knows, so the rules (upstream's getPhase and
the condition generators) can be read, and tested, in one place.
"""

from __future__ import annotations

import time
from typing import Any

from kybernetes.api.pods import qos_class as pod_qos_class
from kybernetes.runtime.base import ContainerState, ContainerStatus

Obj = dict[str, Any]

# Conditions the kubelet owns; any other type on the pod (PodScheduled, DisruptionTarget,
# readiness gates) belongs to someone else and is carried over untouched.
KUBELET_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")


def rfc3339(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def container_id(cid: str) -> str:
    return f"kybernetes://{cid}"


def terminated_state(st: ContainerStatus) -> Obj:
    out: Obj = {"exitCode": st.exit_code if st.exit_code is not None else 0,
                "reason": st.reason or ("Completed" if st.exit_code == 0 else "Error"),
                "startedAt": rfc3339(st.started_at or st.created_at),
                "finishedAt": rfc3339(st.finished_at), "containerID": container_id(st.id)}
    if st.message:
        out["message"] = st.message
    return out


def state_of(st: ContainerStatus | None, waiting: tuple[str, str] | None) -> Obj:
    """The API state of a container from its runtime record and any waiting reason the worker set."""
    if waiting is not None:
        w: Obj = {"reason": waiting[0]}
        if waiting[1]:
            w["message"] = waiting[1]
        return {"waiting": w}
    if st is None or st.state in (ContainerState.CREATED, ContainerState.UNKNOWN):
        return {"waiting": {"reason": "ContainerCreating"}}
    if st.state == ContainerState.RUNNING:
        return {"running": {"startedAt": rfc3339(st.started_at)}}
    return {"terminated": terminated_state(st)}


def phase(pod: Obj, init_statuses: list[Obj], statuses: list[Obj], *, initialized: bool,
          init_failed: bool) -> str:
    """upstream getPhase: Pending until initialized, then by counting container states."""
    spec = pod.get("spec") or {}
    policy = spec.get("restartPolicy") or "Always"
    if init_failed:
        return "Failed"
    if not initialized:
        return "Pending"
    running = waiting = stopped = succeeded = unknown = 0
    for cs in statuses:
        state = cs.get("state") or {}
        if "running" in state:
            running += 1
        elif "terminated" in state:
            stopped += 1
            if state["terminated"].get("exitCode") == 0:
                succeeded += 1
        elif "waiting" in state:
            # A container waiting to restart has run before: it counts as stopped.
            if "terminated" in (cs.get("lastState") or {}):
                stopped += 1
            else:
                waiting += 1
        else:
            unknown += 1
    if waiting:
        return "Pending"
    if running and not unknown:
        return "Running"
    if not running and stopped and not unknown:
        if policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if policy == "Never":
            return "Failed"
        return "Running"
    return "Pending"


def conditions(pod: Obj, *, sandbox_ready: bool, initialized: bool, incomplete_init: list[str],
               unready: list[str], phase_: str, previous: list[Obj]) -> list[Obj]:
    """All pod conditions: the kubelet's, plus everyone else's carried over."""
    now = rfc3339(time.time())
    prev = {c.get("type"): c for c in previous}
    gates = [g.get("conditionType") for g in (pod.get("spec") or {}).get("readinessGates") or []]
    terminal = phase_ in ("Succeeded", "Failed")

    def cond(ctype: str, ok: bool, reason: str = "", message: str = "") -> Obj:
        status = "True" if ok else "False"
        old = prev.get(ctype)
        c: Obj = {"type": ctype, "status": status, "lastProbeTime": None,
                  "lastTransitionTime": old["lastTransitionTime"] if old and old.get("status") == status
                  and old.get("lastTransitionTime") else now}
        if not ok and reason:
            c["reason"] = reason
            if message:
                c["message"] = message
        return c

    out = [cond("PodReadyToStartContainers", sandbox_ready)]
    if initialized:
        out.append(cond("Initialized", True))
    else:
        out.append(cond("Initialized", False, "ContainersNotInitialized",
                        f"containers with incomplete status: [{' '.join(incomplete_init)}]"))
    if terminal:
        out.append(cond("ContainersReady", False, "PodCompleted"))
        out.append(cond("Ready", False, "PodCompleted"))
    else:
        msg = f"containers with unready status: [{' '.join(unready)}]"
        out.append(cond("ContainersReady", not unready, "ContainersNotReady", msg))
        gates_missing = [g for g in gates if (prev.get(g) or {}).get("status") != "True"]
        if unready:
            out.append(cond("Ready", False, "ContainersNotReady", msg))
        elif gates_missing:
            out.append(cond("Ready", False, "ReadinessGatesNotReady",
                            f"corresponding condition of pod readiness gate \"{gates_missing[0]}\" does not exist."
                            if gates_missing[0] not in prev else
                            f"the status of pod readiness gate \"{gates_missing[0]}\" is not \"True\", but False"))
        else:
            out.append(cond("Ready", True))
    mine = set(KUBELET_CONDITIONS)
    others = [c for c in previous if c.get("type") not in mine]
    return others + out


def qos_class(pod: Obj) -> str:
    """Guaranteed / Burstable / BestEffort, as the API server assigned it at create time."""
    return pod_qos_class(pod.get("spec") or {})
