"""The CronJob controller: creates a Job at each scheduled time.

Each pass looks at the CronJob's Jobs and its status, finds the most recent
scheduled time that has not been run yet (no earlier than lastScheduleTime or
the creation time, nor than now - startingDeadlineSeconds), applies the
concurrencyPolicy (Allow, Forbid, Replace) and creates the Job named
`<cronjob>-<scheduled time in minutes since the epoch>`, so a repeated pass
can never start the same run twice. It then trims finished Jobs to the history
limits and asks to be called again when the next run is due.

Schedule arithmetic is the `croniter` library's, in spec.timeZone (an IANA
zone through zoneinfo) or UTC; `@every <duration>` is counted from the last
run as upstream's parser does. The clock is injectable so tests need not wait
for minutes to pass.
"""

from __future__ import annotations

import copy
import logging
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

from ..api.errors import StatusError
from ..api.validation import parse_cron
from ..client import Client
from .base import Controller, Requeue, key_of
from .common import controller_ref, owner_reference, parse_time
from .job import has_condition, is_job_finished, rfc3339

log = logging.getLogger("kybernetes.controllers.cronjob")

Obj = dict[str, Any]

SCHEDULED_TIMESTAMP_ANNOTATION = "batch.kubernetes.io/cronjob-scheduled-timestamp"

# Upstream warns when more than this many start times were missed: usually a
# clock problem or a controller that was down, and a hint to set a deadline.
TOO_MANY_MISSED = 100

# Woken slightly after the scheduled time so the pass finds it due.
_REQUEUE_SLACK = 0.1

_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
           "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration such as "1h30m" or "90s" (what @every takes)."""
    text = text.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(body):
        if m.start() != pos:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(body) or not body:
        raise ValueError(f"invalid duration {text!r}")
    return sign * total


class Schedule:
    """A CronJob schedule in a time zone: the next time after t, the last one at or before t."""

    def __init__(self, spec: str, time_zone: str | None = None):
        spec = spec.strip()
        # Validation is the API's parser, so the controller accepts exactly
        # what the server accepted and reports the same errors.
        parsed = parse_cron(spec)
        zone = time_zone or parsed.timezone
        self.tz = ZoneInfo(zone) if zone else timezone.utc
        if spec.startswith(("TZ=", "CRON_TZ=")):
            spec = spec.split(None, 1)[1] if " " in spec else ""
        self.every: float | None = None
        self.expr = ""
        if spec.startswith("@every "):
            # Upstream's constant-delay schedule rounds down to whole seconds, at least one.
            self.every = max(1.0, float(int(parse_go_duration(spec[len("@every "):]))))
        else:
            expr = _MACROS.get(spec, spec)
            # robfig/cron reads "?" as "*"; croniter only knows the latter everywhere.
            self.expr = " ".join("*" if f == "?" else f for f in expr.split())

    def next(self, t: float) -> float:
        """The first scheduled time strictly after t."""
        if self.every is not None:
            return float(int(t)) + self.every
        return croniter(self.expr, datetime.fromtimestamp(t, self.tz)).get_next(float)

    def prev(self, t: float) -> float:
        """The last scheduled time at or before t (at second resolution)."""
        # croniter's get_prev is strictly before its start; one second past
        # t's whole second includes a schedule time equal to t.
        return croniter(self.expr, datetime.fromtimestamp(int(t) + 1, self.tz)).get_prev(float)

    def most_recent(self, earliest: float, now: float) -> tuple[float | None, int]:
        """(latest scheduled time in (earliest, now], how many fell in that window).

        The count is estimated from the interval between two runs, as upstream,
        so a CronJob that missed a year of minutes costs no year of iteration.
        """
        first = self.next(earliest)
        if first > now:
            return None, 0
        if self.every is not None:
            k = int((now - first) // self.every)
            return first + k * self.every, k + 1
        recent = self.prev(now)
        if recent < first:
            # Irregular schedules: fall back to the first time, which is due.
            recent = first
        second = self.next(first)
        interval = max(second - first, 1.0)
        return recent, int((recent - first) // interval) + 1

    def format(self, t: float) -> str:
        """RFC 3339 in the schedule's zone, as upstream writes the scheduled-timestamp annotation."""
        s = datetime.fromtimestamp(t, self.tz).replace(microsecond=0).isoformat()
        return s[:-6] + "Z" if s.endswith("+00:00") else s


def job_name(cronjob: Obj, scheduled: float) -> str:
    return f"{cronjob['metadata']['name']}-{int(scheduled // 60)}"


def _cronjob_owner_key(job: Obj) -> list[str]:
    ref = controller_ref(job)
    if not ref or ref.get("kind") != "CronJob" or not str(ref.get("apiVersion", "")).startswith("batch/"):
        return []
    return [f"{job['metadata'].get('namespace')}/{ref.get('name')}"]


def _job_ref(job: Obj) -> Obj:
    m = job["metadata"]
    return {"apiVersion": "batch/v1", "kind": "Job", "name": m["name"], "namespace": m.get("namespace"),
            "uid": m["uid"], "resourceVersion": m.get("resourceVersion")}


def _start_of(job: Obj) -> float:
    return (parse_time((job.get("status") or {}).get("startTime"))
            or parse_time(job["metadata"].get("creationTimestamp")) or 0.0)


class CronJobController(Controller):
    """Reconciles batch/v1 CronJobs: one Job per scheduled time."""

    name = "cronjob"

    def __init__(self, client: Client, *, clock: Callable[[], float] = time.time):
        super().__init__(client)
        self.clock = clock
        self.cronjobs = self.informer("batch/v1", "cronjobs", resync_period=300)
        self.jobs = self.informer("batch/v1", "jobs")
        self.jobs.add_index("cronjob", _cronjob_owner_key)
        self.cronjobs.add_handler(on_add=self._on_cronjob, on_update=lambda old, new: self._on_cronjob(new))
        self.jobs.add_handler(on_add=self._on_job, on_update=lambda old, new: self._on_job(new),
                              on_delete=self._on_job)
        # The CronJob as our last status write returned it, until the cache
        # catches up: a stale lastScheduleTime must not look like a missed run.
        self._written: dict[str, Obj] = {}

    def _on_cronjob(self, cj: Obj) -> None:
        self.enqueue(key_of(cj))

    def _on_job(self, job: Obj) -> None:
        for key in _cronjob_owner_key(job):
            self.enqueue(key)

    def _latest(self, key: str) -> Obj | None:
        cached = self.cronjobs.get(key)
        written = self._written.get(key)
        if cached is None or written is None:
            self._written.pop(key, None)
            return cached
        if written["metadata"].get("uid") == cached["metadata"].get("uid") and \
                int(written["metadata"].get("resourceVersion") or 0) > \
                int(cached["metadata"].get("resourceVersion") or 0):
            return written
        self._written.pop(key, None)
        return cached

    async def reconcile(self, key: str) -> None:
        cj = self._latest(key)
        if cj is None:
            self._written.pop(key, None)
            return
        now = self.clock()
        uid = cj["metadata"]["uid"]
        spec = cj.get("spec") or {}
        status: Obj = copy.deepcopy(cj.get("status") or {})
        before = copy.deepcopy(status)
        jobs = [j for j in self.jobs.by_index("cronjob", key) if (controller_ref(j) or {}).get("uid") == uid]
        events: list[tuple[str, str, str]] = []

        await self._sync_active(cj, jobs, status, events)
        if cj["metadata"].get("deletionTimestamp"):
            await self._finish(key, cj, status, before, events, now)
            return
        await self._cleanup_history(cj, jobs, events)
        if spec.get("suspend"):
            await self._finish(key, cj, status, before, events, now)
            return

        try:
            sched = Schedule(spec.get("schedule") or "", spec.get("timeZone"))
        except (ValueError, KeyError) as e:
            # Retrying cannot fix a bad schedule; an edit of the CronJob enqueues it again.
            reason = "UnknownTimeZone" if "zone" in str(e).lower() else "UnparseableSchedule"
            events.append(("Warning", reason, f"unparseable schedule: {spec.get('schedule')!r} : {e}"))
            await self._finish(key, cj, status, before, events, now)
            return

        earliest = parse_time(status.get("lastScheduleTime")) or parse_time(cj["metadata"].get("creationTimestamp"))
        earliest = earliest if earliest is not None else now
        deadline = spec.get("startingDeadlineSeconds")
        if deadline is not None:
            # Runs missed by more than the deadline are skipped, not started late.
            earliest = max(earliest, now - deadline)
        scheduled, missed = sched.most_recent(earliest, now)
        if scheduled is None:
            await self._finish(key, cj, status, before, events, now, sched)
            return
        if missed > TOO_MANY_MISSED:
            events.append(("Warning", "TooManyMissedTimes",
                           f"too many missed start times: {missed}. Set or decrease "
                           ".spec.startingDeadlineSeconds or check clock skew"))
        if deadline is not None and scheduled + deadline < now:
            events.append(("Warning", "MissSchedule",
                           f"Missed scheduled time to start a job: {sched.format(scheduled)}"))
            await self._finish(key, cj, status, before, events, now, sched)
            return
        name = job_name(cj, scheduled)
        active: list[Obj] = status.get("active") or []
        if any(r.get("name") == name for r in active):
            await self._finish(key, cj, status, before, events, now, sched)
            return
        policy = spec.get("concurrencyPolicy") or "Allow"
        if policy == "Forbid" and active:
            # The run is not marked done: it may still start within its deadline.
            log.info("cronjob %s: not starting %s, previous run still active (Forbid)", key, name)
            await self._finish(key, cj, status, before, events, now, sched)
            return
        if policy == "Replace" and active:
            for ref in list(active):
                await self._delete_job(ref["name"], cj, events)
            status["active"] = active = []

        created = await self._create_job(cj, sched, scheduled, name, events)
        if created is not None:
            if not is_job_finished(created):
                active.append(_job_ref(created))
                status["active"] = active
            status["lastScheduleTime"] = rfc3339(scheduled)
        await self._finish(key, cj, status, before, events, now, sched)

    async def _finish(self, key: str, cj: Obj, status: Obj, before: Obj, events: list[tuple[str, str, str]],
                      now: float, sched: Schedule | None = None) -> None:
        """Write the status if it changed, record events, and ask to be woken for the next run."""
        if not status.get("active"):
            status.pop("active", None)
        if status != before:
            body = {**cj, "status": status}
            cj = await self.client.resource("batch/v1", "cronjobs").update_status(body)
            self._written[key] = cj
        for etype, reason, message in events:
            self.recorder.event(cj, etype, reason, message)
        if sched is not None:
            raise Requeue(after=max(sched.next(now) - now, 0.0) + _REQUEUE_SLACK)

    async def _sync_active(self, cj: Obj, jobs: list[Obj], status: Obj, events: list[tuple[str, str, str]]) -> None:
        """status.active lists exactly the CronJob's unfinished Jobs; finished ones update lastSuccessfulTime."""
        by_uid = {j["metadata"]["uid"]: j for j in jobs}
        active: list[Obj] = []
        for ref in status.get("active") or []:
            job = by_uid.get(ref.get("uid"))
            if job is None:
                # The cache may not have a Job we just created: ask the server before forgetting it.
                try:
                    job = await self.client.resource("batch/v1", "jobs").get(ref["name"], cj["metadata"]["namespace"])
                except StatusError as e:
                    if e.code != 404:
                        raise
                    job = None
                if job is None or job["metadata"].get("uid") != ref.get("uid"):
                    continue
            if is_job_finished(job):
                continue
            active.append(ref)
        seen = {r.get("uid") for r in active}
        for job in jobs:
            uid = job["metadata"]["uid"]
            if is_job_finished(job):
                if uid in {r.get("uid") for r in status.get("active") or []}:
                    cond = "Complete" if has_condition(job, "Complete") else "Failed"
                    events.append(("Normal", "SawCompletedJob",
                                   f"Saw completed job: {job['metadata']['name']}, status: {cond}"))
                if has_condition(job, "Complete"):
                    done = parse_time((job.get("status") or {}).get("completionTime"))
                    last = parse_time(status.get("lastSuccessfulTime"))
                    if done is not None and (last is None or done > last):
                        status["lastSuccessfulTime"] = rfc3339(done)
            elif uid not in seen and not job["metadata"].get("deletionTimestamp"):
                active.append(_job_ref(job))
                seen.add(uid)
        status["active"] = active

    async def _cleanup_history(self, cj: Obj, jobs: list[Obj], events: list[tuple[str, str, str]]) -> None:
        spec = cj.get("spec") or {}
        for cond, limit_field in (("Complete", "successfulJobsHistoryLimit"), ("Failed", "failedJobsHistoryLimit")):
            limit = spec.get(limit_field)
            if limit is None:
                continue
            done = sorted((j for j in jobs if has_condition(j, cond) and not j["metadata"].get("deletionTimestamp")),
                          key=_start_of)
            for job in done[:max(len(done) - limit, 0)]:
                await self._delete_job(job["metadata"]["name"], cj, events)

    async def _delete_job(self, name: str, cj: Obj, events: list[tuple[str, str, str]]) -> None:
        try:
            await self.client.resource("batch/v1", "jobs").delete(
                name, cj["metadata"]["namespace"], propagation_policy="Background")
        except StatusError as e:
            if e.code != 404:
                raise
            return
        events.append(("Normal", "SuccessfulDelete", f"Deleted job {name}"))

    async def _create_job(self, cj: Obj, sched: Schedule, scheduled: float, name: str,
                          events: list[tuple[str, str, str]]) -> Obj | None:
        template = (cj.get("spec") or {}).get("jobTemplate") or {}
        tmeta = template.get("metadata") or {}
        annotations = dict(tmeta.get("annotations") or {})
        annotations[SCHEDULED_TIMESTAMP_ANNOTATION] = sched.format(scheduled)
        job: Obj = {"apiVersion": "batch/v1", "kind": "Job",
                    "metadata": {"name": name, "namespace": cj["metadata"]["namespace"],
                                 "labels": dict(tmeta.get("labels") or {}), "annotations": annotations,
                                 "ownerReferences": [owner_reference(cj)]},
                    "spec": copy.deepcopy(template.get("spec") or {})}
        jobs_rc = self.client.resource("batch/v1", "jobs")
        try:
            created = await jobs_rc.create(job, cj["metadata"]["namespace"])
        except StatusError as e:
            if e.code != 409:
                events.append(("Warning", "FailedCreate", f"Error creating job: {e.message}"))
                raise
            # A previous pass created it and we did not see the status write land.
            existing = await jobs_rc.get(name, cj["metadata"]["namespace"])
            if (controller_ref(existing) or {}).get("uid") == cj["metadata"]["uid"]:
                return existing
            return None
        events.append(("Normal", "SuccessfulCreate", f"Created job {name}"))
        log.info("cronjob %s/%s: created job %s", cj["metadata"]["namespace"], cj["metadata"]["name"], name)
        return created
