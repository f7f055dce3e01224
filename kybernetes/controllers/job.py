"""The Job controller: runs pods to completion and records how that went.

A Job wants `completions` successful pods, at most `parallelism` at a time
(Indexed Jobs want one success per index 0..completions-1). Failed pods are
replaced after an exponential back-off until `backoffLimit` failures, the
`activeDeadlineSeconds` run out or a `podFailurePolicy` rule fails the Job.
`suspend` deletes the active pods; `ttlSecondsAfterFinished` deletes a finished
Job.

Counting follows upstream's finalizer-based tracking: every pod is created with
the `batch.kubernetes.io/job-tracking` finalizer, so a finished pod cannot
vanish before it is counted. A newly finished pod is first recorded in
status.uncountedTerminatedPods (or, for Indexed Jobs, status.completedIndexes),
then its finalizer is removed, then it moves into status.succeeded/failed. A
crash between any two of those steps loses nothing and counts nothing twice.

Terminal conditions have upstream's shapes: FailureTarget or SuccessCriteriaMet
first, then Failed or Complete once no pod is left running, so
`kubectl wait --for=condition=complete` works.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable
from typing import Any

from ..api.errors import StatusError
from ..api.times import format_time
from ..client import Client
from .base import Controller, Requeue, key_of
from .common import Expectations, controller_ref, is_pod_active, is_pod_ready, parse_time, pod_from_template

log = logging.getLogger("kybernetes.controllers.job")

Obj = dict[str, Any]

JOB_TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"
COMPLETION_INDEX_KEY = "batch.kubernetes.io/job-completion-index"
COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"

# Upstream's pod re-creation back-off: 10 s doubling per consecutive failure, capped at 6 min.
DEFAULT_BACKOFF_BASE = 10.0
DEFAULT_BACKOFF_MAX = 360.0

# Upstream creates pods in slow-start batches so a broken template costs one
# failed call, not `parallelism` of them.
_SLOW_START_INITIAL = 1


def rfc3339(ts: float) -> str:
    return format_time(ts)


def get_condition(obj: Obj, typ: str) -> Obj | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == typ:
            return c
    return None


def has_condition(obj: Obj, typ: str) -> bool:
    c = get_condition(obj, typ)
    return bool(c and c.get("status") == "True")


def is_job_finished(job: Obj) -> bool:
    """Complete or Failed: the conditions `kubectl wait` and the CronJob controller look at."""
    return has_condition(job, "Complete") or has_condition(job, "Failed")


def finished_time(job: Obj) -> float | None:
    for typ in ("Complete", "Failed"):
        c = get_condition(job, typ)
        if c and c.get("status") == "True":
            return parse_time(c.get("lastTransitionTime")) or parse_time((job.get("status") or {})
                                                                           .get("completionTime"))
    return None


def format_indexes(indexes: set[int]) -> str:
    """Upstream's interval notation for completed indexes: {0,1,2,4} -> "0-2,4"."""
    out: list[str] = []
    run: list[int] = []
    for i in sorted(indexes):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [i]
    if run:
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(out)


def parse_indexes(text: str | None, limit: int | None) -> set[int]:
    """The inverse of format_indexes; malformed parts and indexes >= limit are dropped, as upstream."""
    out: set[int] = set()
    for part in (text or "").split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            a = int(lo)
            b = int(hi) if hi else a
        except ValueError:
            continue
        for i in range(a, b + 1):
            if limit is None or i < limit:
                out.add(i)
    return out


def completion_index(pod: Obj) -> int | None:
    meta = pod.get("metadata") or {}
    raw = (meta.get("annotations") or {}).get(COMPLETION_INDEX_KEY)
    if raw is None:
        raw = (meta.get("labels") or {}).get(COMPLETION_INDEX_KEY)
    try:
        ix = int(raw) if raw is not None else None
    except ValueError:
        return None
    return ix if ix is not None and ix >= 0 else None


def _has_finalizer(pod: Obj) -> bool:
    return JOB_TRACKING_FINALIZER in ((pod.get("metadata") or {}).get("finalizers") or [])


def _job_owner_key(pod: Obj) -> list[str]:
    ref = controller_ref(pod)
    if not ref or ref.get("kind") != "Job" or not str(ref.get("apiVersion", "")).startswith("batch/"):
        return []
    return [f"{pod['metadata'].get('namespace')}/{ref.get('name')}"]


def _container_statuses(pod: Obj) -> list[Obj]:
    st = pod.get("status") or {}
    return list(st.get("initContainerStatuses") or []) + list(st.get("containerStatuses") or [])


def _pod_finish_time(pod: Obj, default: float) -> float:
    """When the pod's last container terminated: the start of its back-off period."""
    best: float | None = None
    for cs in _container_statuses(pod):
        t = parse_time(((cs.get("state") or {}).get("terminated") or {}).get("finishedAt"))
        if t is not None and (best is None or t > best):
            best = t
    return best if best is not None else default


def match_pod_failure_policy(policy: Obj | None, pod: Obj) -> tuple[str | None, str | None]:
    """(action, message) of the first rule matching a Failed pod, or (None, None).

    The message is upstream's, which is what users grep for in `kubectl describe`.
    """
    if not policy:
        return None, None
    meta = pod.get("metadata") or {}
    pod_name = f"{meta.get('namespace')}/{meta.get('name')}"
    for i, rule in enumerate(policy.get("rules") or []):
        action = rule.get("action")
        on_codes = rule.get("onExitCodes")
        if on_codes:
            values = set(on_codes.get("values") or [])
            op = on_codes.get("operator")
            want = on_codes.get("containerName")
            for cs in _container_statuses(pod):
                if want and cs.get("name") != want:
                    continue
                term = (cs.get("state") or {}).get("terminated")
                if not term:
                    continue
                code = term.get("exitCode", 0)
                # Containers that exited 0 succeeded; no rule is about them.
                if code == 0:
                    continue
                if (op == "In" and code in values) or (op == "NotIn" and code not in values):
                    return action, (f"Container {cs.get('name')} for pod {pod_name} failed with exit code "
                                    f"{code} matching {action} rule at index {i}")
        for pat in rule.get("onPodConditions") or []:
            for c in (pod.get("status") or {}).get("conditions") or []:
                if c.get("type") == pat.get("type") and c.get("status") == (pat.get("status") or "True"):
                    return action, (f"Pod {pod_name} has condition {c.get('type')} matching {action} "
                                    f"rule at index {i}")
    return None, None


def _condition(typ: str, status: str, reason: str, message: str, now: float) -> Obj:
    ts = rfc3339(now)
    return {"type": typ, "status": status, "lastProbeTime": ts, "lastTransitionTime": ts,
            "reason": reason, "message": message}


def _set_condition(status: Obj, cond: Obj) -> bool:
    """Put cond into status.conditions; the transition time only moves when the status flips."""
    conds = status.setdefault("conditions", [])
    for i, c in enumerate(conds):
        if c.get("type") == cond["type"]:
            if c.get("status") == cond["status"] and c.get("reason") == cond["reason"] \
                    and c.get("message") == cond["message"]:
                return False
            if c.get("status") == cond["status"]:
                cond = {**cond, "lastTransitionTime": c.get("lastTransitionTime") or cond["lastTransitionTime"]}
            conds[i] = cond
            return True
    conds.append(cond)
    return True


class JobController(Controller):
    """Reconciles batch/v1 Jobs against the pods they own."""

    name = "job"

    def __init__(self, client: Client, *, backoff_base: float = DEFAULT_BACKOFF_BASE,
                 backoff_max: float = DEFAULT_BACKOFF_MAX, clock: Callable[[], float] = time.time):
        super().__init__(client)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.clock = clock
        self.jobs = self.informer("batch/v1", "jobs", resync_period=300)
        self.pods = self.informer("v1", "pods")
        self.pods.add_index("job", _job_owner_key)
        self.jobs.add_handler(on_add=self._on_job, on_update=lambda old, new: self._on_job(new),
                              on_delete=self._on_job)
        self.pods.add_handler(on_add=self._on_pod_add, on_update=self._on_pod_update,
                              on_delete=self._on_pod_delete)
        self.expectations = Expectations()
        # Per Job: (failures since the last success, time of the last failure).
        # Kept in memory as upstream's back-off store; a restart forgets it and
        # at worst re-creates a failed pod early.
        self._backoff: dict[str, tuple[int, float]] = {}
        # The Job as our last status write returned it: newer than the cache
        # until the watch catches up, and counting from an older status would
        # count a pod twice or not at all.
        self._written: dict[str, Obj] = {}
        # Pods whose tracking finalizer we removed but whose update the pod
        # cache has not shown yet (upstream's finalizer expectations).
        self._finalizer_gone: dict[str, set[str]] = {}

    # ------------------------------------------------------------------ event handlers

    def _on_job(self, job: Obj) -> None:
        self.enqueue(key_of(job))

    def _on_pod_add(self, pod: Obj) -> None:
        for key in _job_owner_key(pod):
            self.expectations.creation_observed(key)
            self.enqueue(key)

    def _on_pod_update(self, old: Obj, new: Obj) -> None:
        keys = set(_job_owner_key(old)) | set(_job_owner_key(new))
        uid = new["metadata"].get("uid")
        for key in keys:
            if not _has_finalizer(new):
                self._finalizer_gone.get(key, set()).discard(uid)
            if new["metadata"].get("deletionTimestamp") and not old["metadata"].get("deletionTimestamp"):
                self.expectations.deletion_observed(key, key_of(new))
            self.enqueue(key)

    def _on_pod_delete(self, pod: Obj) -> None:
        for key in _job_owner_key(pod):
            self._finalizer_gone.get(key, set()).discard(pod["metadata"].get("uid"))
            self.expectations.deletion_observed(key, key_of(pod))
            self.enqueue(key)

    # ------------------------------------------------------------------ reconcile

    def _latest(self, key: str) -> Obj | None:
        cached = self.jobs.get(key)
        written = self._written.get(key)
        if cached is None or written is None:
            self._written.pop(key, None)
            return cached
        same = written["metadata"].get("uid") == cached["metadata"].get("uid")
        if same and int(written["metadata"].get("resourceVersion") or 0) > \
                int(cached["metadata"].get("resourceVersion") or 0):
            return written
        self._written.pop(key, None)
        return cached

    def _forget(self, key: str) -> None:
        self.expectations.forget(key)
        self._backoff.pop(key, None)
        self._written.pop(key, None)
        self._finalizer_gone.pop(key, None)

    async def reconcile(self, key: str) -> None:
        job = self._latest(key)
        owned_any = self.pods.by_index("job", key)
        if job is None:
            # The Job is gone: nothing will count its pods any more, so they
            # must not be held back by our finalizer.
            self._forget(key)
            await self._release(key, [p for p in owned_any if _has_finalizer(p)])
            return
        uid = job["metadata"]["uid"]
        pods = [p for p in owned_any if (controller_ref(p) or {}).get("uid") == uid]
        strays = [p for p in owned_any if (controller_ref(p) or {}).get("uid") != uid and _has_finalizer(p)]
        if strays:
            await self._release(key, strays)
        if job["metadata"].get("deletionTimestamp"):
            await self._release(key, [p for p in pods if _has_finalizer(p)])
            return
        if is_job_finished(job):
            await self._release(key, [p for p in pods if _has_finalizer(p)])
            await self._ttl(key, job)
            return
        await self._sync(key, job, pods)

    async def _ttl(self, key: str, job: Obj) -> None:
        ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
        if ttl is None:
            return
        done = finished_time(job)
        if done is None:
            return
        remaining = done + ttl - self.clock()
        if remaining > 0:
            raise Requeue(after=remaining)
        meta = job["metadata"]
        try:
            await self.client.resource("batch/v1", "jobs").delete(
                meta["name"], meta.get("namespace"), propagation_policy="Background",
                preconditions={"uid": meta["uid"]})
            log.info("job %s deleted %ss after it finished", key, ttl)
        except StatusError as e:
            # Gone already, or a new Job of the same name (uid precondition): not ours to delete.
            if e.code not in (404, 409):
                raise

    async def _sync(self, key: str, job: Obj, pods: list[Obj]) -> None:
        spec = job.get("spec") or {}
        now = self.clock()
        status: Obj = copy.deepcopy(job.get("status") or {})
        before = copy.deepcopy(status)
        indexed = spec.get("completionMode") == "Indexed"
        completions: int | None = spec.get("completions")
        parallelism: int = spec.get("parallelism", 1) or 0
        suspended = bool(spec.get("suspend"))
        policy = spec.get("podFailurePolicy")
        gone = self._finalizer_gone.setdefault(key, set())
        unc = status.get("uncountedTerminatedPods") or {}
        unc_s: list[str] = list(unc.get("succeeded") or [])
        unc_f: list[str] = list(unc.get("failed") or [])
        done_ix = parse_indexes(status.get("completedIndexes"), completions) if indexed else set()
        success_met = has_condition(job, "SuccessCriteriaMet")
        failure = get_condition(job, "FailureTarget")
        failing = bool(failure and failure.get("status") == "True")
        fail_job_msg: str | None = None
        events: list[tuple[str, str, str]] = []

        # ---- 1. find newly finished pods and decide what each one counts as.
        release: list[Obj] = []  # finished pods whose finalizer can go once the status records them
        failures, last_failure = self._backoff.get(key, (0, 0.0))
        for p in pods:
            puid = p["metadata"]["uid"]
            if not _has_finalizer(p) or puid in gone:
                continue
            phase = (p.get("status") or {}).get("phase")
            terminating = bool(p["metadata"].get("deletionTimestamp"))
            if phase == "Succeeded" and puid not in unc_f:
                if indexed:
                    ix = completion_index(p)
                    if ix is not None and completions is not None and ix < completions:
                        done_ix.add(ix)
                elif puid not in unc_s:
                    unc_s.append(puid)
                failures = 0
                release.append(p)
                continue
            if phase != "Failed" and not terminating:
                continue
            if puid in unc_f or puid in unc_s:
                release.append(p)
                continue
            if phase != "Failed":
                # A pod deleted before it finished. Upstream counts it as a
                # failure (it may be an orphan that never reaches Failed)
                # unless a policy wants the real exit codes, or it was our
                # own doing: suspension or a Job that already succeeded.
                if suspended or success_met or (policy and not failing):
                    if suspended or success_met:
                        release.append(p)
                    continue
                unc_f.append(puid)
                release.append(p)
                continue
            action, msg = match_pod_failure_policy(policy, p)
            release.append(p)
            if action == "Ignore" or success_met:
                continue
            if action == "FailJob" and fail_job_msg is None:
                fail_job_msg = msg
            unc_f.append(puid)
            failures += 1
            last_failure = max(last_failure, _pod_finish_time(p, now))
        self._backoff[key] = (failures, last_failure)

        active = [p for p in pods if is_pod_active(p)]
        succeeded = len(done_ix) if indexed else (status.get("succeeded") or 0) + len(unc_s)
        failed = (status.get("failed") or 0) + len(unc_f)

        # ---- 2. start, suspend and resume bookkeeping.
        if suspended:
            if _set_condition(status, _condition("Suspended", "True", "JobSuspended", "Job suspended", now)):
                events.append(("Normal", "Suspended", "Job suspended"))
        else:
            if has_condition(job, "Suspended"):
                _set_condition(status, _condition("Suspended", "False", "JobResumed", "Job resumed", now))
                events.append(("Normal", "Resumed", "Job resumed"))
                # The deadline runs from the resumption, as upstream.
                status["startTime"] = rfc3339(now)
            elif not status.get("startTime"):
                status["startTime"] = rfc3339(now)

        # ---- 3. has the Job succeeded or failed?
        requeue: float | None = None
        if not failing and not success_met:
            reason = message = None
            if fail_job_msg is not None:
                reason, message = "PodFailurePolicy", fail_job_msg
            else:
                backoff_limit = spec.get("backoffLimit", 6)
                restarts = 0
                if ((spec.get("template") or {}).get("spec") or {}).get("restartPolicy") == "OnFailure":
                    # With OnFailure the kubelet restarts containers in place;
                    # upstream counts those restarts against the limit.
                    restarts = sum(cs.get("restartCount") or 0 for p in active for cs in _container_statuses(p))
                if backoff_limit is not None and failed + restarts > backoff_limit:
                    reason, message = "BackoffLimitExceeded", "Job has reached the specified backoff limit"
                elif not suspended and spec.get("activeDeadlineSeconds") is not None:
                    start = parse_time(status.get("startTime"))
                    if start is not None:
                        left = start + spec["activeDeadlineSeconds"] - now
                        if left <= 0:
                            reason, message = "DeadlineExceeded", "Job was active longer than specified deadline"
                        else:
                            requeue = left
            if reason is not None:
                _set_condition(status, _condition("FailureTarget", "True", reason, message or "", now))
                failing = True
                events.append(("Warning", reason, message or ""))
            elif self._succeeded(indexed, completions, succeeded, active):
                _set_condition(status, _condition("SuccessCriteriaMet", "True", "CompletionsReached",
                                                  "Reached expected number of succeeded pods", now))
                success_met = True

        # ---- 4. bring the pods to the wanted number.
        created: list[Obj] = []
        deleted: list[Obj] = []
        if failing or success_met or suspended:
            deleted = active
        elif self.expectations.satisfied(key):
            if indexed:
                to_delete, to_create = self._plan_indexed(active, done_ix, completions or 0, parallelism)
            else:
                to_delete, to_create = self._plan_nonindexed(active, succeeded, completions, parallelism)
            deleted = to_delete
            if to_create:
                delay = self._backoff_remaining(failures, last_failure, now)
                if delay > 0:
                    requeue = delay if requeue is None else min(requeue, delay)
                else:
                    created = await self._create_pods(key, job, to_create)
        if deleted:
            await self._delete_pods(key, deleted)
            events.extend(("Normal", "SuccessfulDelete", f"Deleted pod: {p['metadata']['name']}") for p in deleted)
        events.extend(("Normal", "SuccessfulCreate", f"Created pod: {p['metadata']['name']}") for p in created)

        gone_now = {p["metadata"]["uid"] for p in deleted}
        status["active"] = len([p for p in active if p["metadata"]["uid"] not in gone_now]) + len(created)
        status["ready"] = sum(1 for p in active if p["metadata"]["uid"] not in gone_now and is_pod_ready(p))
        status["terminating"] = sum(1 for p in pods if p["metadata"].get("deletionTimestamp")
                                    and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))

        # ---- 5. flush 1: record the newly finished pods before their finalizers go.
        status["uncountedTerminatedPods"] = {"succeeded": unc_s, "failed": unc_f} if (unc_s or unc_f) else {}
        if indexed:
            status["completedIndexes"] = format_indexes(done_ix)
        status["succeeded"] = len(done_ix) if indexed else status.get("succeeded") or 0
        status["failed"] = status.get("failed") or 0
        if status != before:
            job = await self._write_status(key, job, status)
            status = copy.deepcopy(job["status"])
            before = copy.deepcopy(status)

        # ---- 6. release the recorded pods, then move them into the counters (flush 2).
        released = await self._release(key, release)
        cached_uids = {p["metadata"]["uid"]: p for p in pods}

        def counted(uid: str) -> bool:
            p = cached_uids.get(uid)
            return p is None or uid in released or uid in gone or not _has_finalizer(p)
        still_s = [u for u in unc_s if not counted(u)]
        still_f = [u for u in unc_f if not counted(u)]
        if not indexed:
            status["succeeded"] = (status.get("succeeded") or 0) + len(unc_s) - len(still_s)
        status["failed"] = (status.get("failed") or 0) + len(unc_f) - len(still_f)
        status["uncountedTerminatedPods"] = {"succeeded": still_s, "failed": still_f} if (still_s or still_f) else {}

        # ---- 7. the terminal condition, once every pod is counted and none runs.
        # Pods deleted in this pass still hold our finalizer: the Job ends
        # only after a later pass has counted them (a Job failed by its
        # deadline reports its killed pod as failed, as upstream).
        running = bool(active) or any(
            p["metadata"].get("deletionTimestamp") and _has_finalizer(p)
            and p["metadata"]["uid"] not in released and p["metadata"]["uid"] not in gone for p in pods)
        if not still_s and not still_f and not running:
            target = get_condition({"status": status}, "FailureTarget")
            if failing and target is not None:
                if _set_condition(status, _condition("Failed", "True", target.get("reason", ""),
                                                      target.get("message", ""), now)):
                    log.info("job %s failed: %s", key, target.get("reason"))
            elif success_met:
                if _set_condition(status, _condition("Complete", "True", "CompletionsReached",
                                                     "Reached expected number of succeeded pods", now)):
                    status["completionTime"] = rfc3339(now)
                    events.append(("Normal", "Completed", "Job completed"))
                    log.info("job %s complete", key)
        if status != before:
            job = await self._write_status(key, job, status)
        for etype, reason, message in events:
            self.recorder.event(job, etype, reason, message)
        if is_job_finished(job):
            await self._ttl(key, job)
        elif requeue is not None:
            raise Requeue(after=requeue)

    @staticmethod
    def _succeeded(indexed: bool, completions: int | None, succeeded: int, active: list[Obj]) -> bool:
        if completions is None:
            # Work-queue mode: one success means the work is done, once the
            # other workers have finished too.
            return succeeded > 0 and not active
        return succeeded >= completions

    def _backoff_remaining(self, failures: int, last_failure: float, now: float) -> float:
        if failures <= 0:
            return 0.0
        delay = min(self.backoff_base * (2 ** min(failures - 1, 30)), self.backoff_max)
        return last_failure + delay - now

    def _plan_nonindexed(self, active: list[Obj], succeeded: int, completions: int | None,
                         parallelism: int) -> tuple[list[Obj], list[int | None]]:
        if completions is None:
            want = len(active) if succeeded > 0 else parallelism
        else:
            want = max(0, min(parallelism, completions - succeeded))
        if len(active) > want:
            order = sorted(active, key=lambda p: (is_pod_ready(p),
                                                  _neg_ts(p["metadata"].get("creationTimestamp"))))
            return order[:len(active) - want], []
        return [], [None] * (want - len(active))

    def _plan_indexed(self, active: list[Obj], done: set[int], completions: int,
                      parallelism: int) -> tuple[list[Obj], list[int | None]]:
        by_ix: dict[int, list[Obj]] = {}
        to_delete: list[Obj] = []
        for p in active:
            ix = completion_index(p)
            if ix is None or ix >= completions or ix in done:
                to_delete.append(p)
            else:
                by_ix.setdefault(ix, []).append(p)
        for pods in by_ix.values():
            if len(pods) > 1:
                # Keep the most advanced copy of an index.
                pods.sort(key=lambda p: (not is_pod_ready(p), p["metadata"].get("creationTimestamp") or ""))
                to_delete.extend(pods[1:])
        running = len(by_ix)
        if running > parallelism:
            extra = sorted(by_ix, reverse=True)[:running - parallelism]
            to_delete.extend(by_ix[ix][0] for ix in extra)
            return to_delete, []
        missing = [ix for ix in range(completions) if ix not in done and ix not in by_ix]
        return to_delete, list(missing[:parallelism - running])

    # ------------------------------------------------------------------ writes

    def _new_pod(self, job: Obj, index: int | None) -> Obj:
        template = (job.get("spec") or {}).get("template") or {}
        name = job["metadata"]["name"]
        pod = pod_from_template(template, job, generate_name=f"{name}-" if index is None else f"{name}-{index}-")
        meta = pod["metadata"]
        meta["finalizers"] = [*(meta.get("finalizers") or []), JOB_TRACKING_FINALIZER]
        if index is not None:
            meta.setdefault("annotations", {})[COMPLETION_INDEX_KEY] = str(index)
            meta["labels"][COMPLETION_INDEX_KEY] = str(index)
            spec = pod["spec"]
            # A stable hostname per index lets indexed workers find each other
            # through a headless Service named by spec.subdomain.
            spec.setdefault("hostname", f"{name}-{index}")
            env_var = {"name": COMPLETION_INDEX_ENV, "valueFrom": {"fieldRef": {
                "apiVersion": "v1", "fieldPath": f"metadata.annotations['{COMPLETION_INDEX_KEY}']"}}}
            for field in ("initContainers", "containers"):
                for c in spec.get(field) or []:
                    env = c.setdefault("env", [])
                    if not any(e.get("name") == COMPLETION_INDEX_ENV for e in env):
                        env.append(env_var)
        return pod

    async def _create_pods(self, key: str, job: Obj, indexes: list[int | None]) -> list[Obj]:
        pods_rc = self.client.resource("v1", "pods")
        ns = job["metadata"].get("namespace")
        created: list[Obj] = []
        batch = _SLOW_START_INITIAL
        pending = list(indexes)
        while pending:
            chunk, pending = pending[:batch], pending[batch:]
            self.expectations.expect_creations(key, len(chunk))
            results = await asyncio.gather(*(pods_rc.create(self._new_pod(job, ix), ns) for ix in chunk),
                                           return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            for r in results:
                if isinstance(r, BaseException):
                    self.expectations.creation_failed(key)
                else:
                    created.append(r)
            if errors:
                # Creations not attempted are not expected either.
                for e in errors:
                    log.warning("job %s: creating pod: %s", key, e)
                if isinstance(errors[0], Exception):
                    raise errors[0]
                return created
            batch *= 2
        return created

    async def _delete_pods(self, key: str, pods: list[Obj]) -> None:
        pods_rc = self.client.resource("v1", "pods")
        self.expectations.expect_deletions(key, [key_of(p) for p in pods])
        for p in pods:
            try:
                await pods_rc.delete(p["metadata"]["name"], p["metadata"].get("namespace"),
                                     preconditions={"uid": p["metadata"]["uid"]})
            except StatusError as e:
                self.expectations.deletion_observed(key, key_of(p))
                if e.code not in (404, 409):
                    raise

    async def _release(self, key: str, pods: list[Obj]) -> set[str]:
        """Remove our tracking finalizer from pods; returns the uids now free of it."""
        done: set[str] = set()
        pods_rc = self.client.resource("v1", "pods")
        gone = self._finalizer_gone.setdefault(key, set())
        for p in pods:
            meta = p["metadata"]
            fins = list(meta.get("finalizers") or [])
            if JOB_TRACKING_FINALIZER not in fins:
                done.add(meta["uid"])
                continue
            if meta["uid"] in gone:
                done.add(meta["uid"])
                continue
            # The test op makes this a compare-and-swap on the finalizer list,
            # so another party's finalizer written meanwhile is not lost.
            ops = [{"op": "test", "path": "/metadata/uid", "value": meta["uid"]},
                   {"op": "test", "path": "/metadata/finalizers", "value": fins},
                   {"op": "replace", "path": "/metadata/finalizers",
                    "value": [f for f in fins if f != JOB_TRACKING_FINALIZER]}]
            try:
                await pods_rc.patch(meta["name"], ops, namespace=meta.get("namespace"), patch_type="json")
            except StatusError as e:
                if e.code != 404:
                    raise
            gone.add(meta["uid"])
            done.add(meta["uid"])
        return done

    async def _write_status(self, key: str, job: Obj, status: Obj) -> Obj:
        body = {**job, "status": status}
        # PUT with the resourceVersion we computed from: if the Job changed
        # meanwhile the write conflicts and the key is reconciled afresh.
        new = await self.client.resource("batch/v1", "jobs").update_status(body)
        self._written[key] = new
        return new


def _neg_ts(ts: str | None) -> float:
    t = parse_time(ts)
    return -(t or 0.0)
