"""The CronJob controller with an injected clock, against a real in-process API server.

Tests move the fake clock past a scheduled time and then ask for one pass;
`run_pass` waits until a pass that started after the request has finished, so
"nothing was created" is an observation, not a hope.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from kybernetes.client import Client
from kybernetes.controllers.common import parse_time
from kybernetes.controllers.cronjob import (
    SCHEDULED_TIMESTAMP_ANNOTATION,
    CronJobController,
    Schedule,
    parse_go_duration,
)
from kybernetes.controllers.job import rfc3339
from tests.apiserver.conftest import eventually, start_api, stop_api

Obj = dict[str, Any]


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


# ---------------------------------------------------------------------------- schedules


@pytest.mark.parametrize(("spec", "after", "want"), [
    ("*/5 * * * *", "2024-01-01T00:05:00", "2024-01-01T00:10:00"),
    ("*/5 * * * ?", "2024-01-01T00:06:30", "2024-01-01T00:10:00"),
    ("@hourly", "2024-01-01T00:30:00", "2024-01-01T01:00:00"),
    ("@daily", "2024-01-01T00:30:00", "2024-01-02T00:00:00"),
    ("@midnight", "2024-01-01T00:30:00", "2024-01-02T00:00:00"),
    ("@weekly", "2024-01-01T00:30:00", "2024-01-07T00:00:00"),  # the next Sunday
    ("@monthly", "2024-01-15T00:00:00", "2024-02-01T00:00:00"),
    ("@yearly", "2024-01-15T00:00:00", "2025-01-01T00:00:00"),
    ("@annually", "2024-01-15T00:00:00", "2025-01-01T00:00:00"),
    ("0 9 * * MON-FRI", "2024-01-05T10:00:00", "2024-01-08T09:00:00"),
    ("@every 90s", "2024-01-01T00:00:00", "2024-01-01T00:01:30"),
    ("@every 1h30m", "2024-01-01T00:00:00", "2024-01-01T01:30:00"),
])
def test_schedule_next(spec: str, after: str, want: str) -> None:
    assert Schedule(spec).next(ts(after)) == ts(want)


def test_schedule_time_zone_and_format() -> None:
    s = Schedule("0 9 * * *", "Asia/Tokyo")
    nxt = s.next(ts("2024-01-01T01:00:00"))  # 10:00 in Tokyo: tomorrow's 09:00 is 00:00Z
    assert nxt == ts("2024-01-02T00:00:00")
    assert s.format(nxt) == "2024-01-02T09:00:00+09:00"
    assert Schedule("@hourly").format(ts("2024-01-01T01:00:00")) == "2024-01-01T01:00:00Z"


def test_most_recent_and_missed_count() -> None:
    s = Schedule("*/5 * * * *")
    assert s.most_recent(ts("2024-01-01T00:00:00"), ts("2024-01-01T00:04:59")) == (None, 0)
    assert s.most_recent(ts("2024-01-01T00:00:00"), ts("2024-01-01T00:05:00")) == (ts("2024-01-01T00:05:00"), 1)
    assert s.most_recent(ts("2024-01-01T00:00:00"), ts("2024-01-01T00:17:00")) == (ts("2024-01-01T00:15:00"), 3)
    # A year of missed minutes is estimated, not iterated.
    start = time.perf_counter()
    recent, missed = Schedule("* * * * *").most_recent(ts("2023-01-01T00:00:00"), ts("2024-01-01T00:00:30"))
    assert recent == ts("2024-01-01T00:00:00") and missed == 525600
    assert time.perf_counter() - start < 0.5
    every = Schedule("@every 10m")
    assert every.most_recent(ts("2024-01-01T00:00:00"), ts("2024-01-01T00:35:00")) == (ts("2024-01-01T00:30:00"), 3)


def test_bad_schedules_are_errors() -> None:
    for bad in ("61 * * * *", "* * *", "@fortnightly", "@every xyz"):
        with pytest.raises(ValueError):
            Schedule(bad)
    assert parse_go_duration("1h2m3.5s") == 3723.5


# ---------------------------------------------------------------------------- against the API server


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, client: Client, ctl: CronJobController, clock: FakeClock):
        self.client = client
        self.ctl = ctl
        self.clock = clock
        self.cronjobs = client.resource("batch/v1", "cronjobs")
        self.jobs = client.resource("batch/v1", "jobs")
        self.gen = 0
        self.done_gen = -1
        orig = ctl.reconcile

        async def counted(key: str) -> None:
            gen = self.gen
            try:
                await orig(key)
            finally:
                self.done_gen = max(self.done_gen, gen)
        ctl.reconcile = counted  # type: ignore[method-assign]

    async def run_pass(self, name: str) -> None:
        self.gen += 1
        want = self.gen
        self.ctl.enqueue(f"default/{name}")
        await eventually(lambda: self.done_gen >= want, what=f"a pass over {name}")

    async def create(self, name: str, schedule: str, **spec: Any) -> Obj:
        cj = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name},
              "spec": {"schedule": schedule, **spec, "jobTemplate": {
                  "metadata": {"labels": {"app": name}, "annotations": {"note": "from-template"}},
                  "spec": {"template": {"spec": {"restartPolicy": "Never",
                                                 "containers": [{"name": "c", "image": "busybox"}]}}}}}}
        created = await self.cronjobs.create(cj, "default")
        await self.run_pass(name)
        return created

    async def at(self, name: str, when: float) -> None:
        self.clock.now = when
        await self.run_pass(name)

    async def job_names(self) -> list[str]:
        return sorted(j["metadata"]["name"] for j in (await self.jobs.list("default"))["items"])

    async def cj(self, name: str) -> Obj:
        return await self.cronjobs.get(name, "default")

    async def finish_job(self, name: str, cond: str = "Complete", when: float | None = None) -> None:
        """What the Job controller writes when a Job ends."""
        t = rfc3339(when if when is not None else self.clock.now)
        status: Obj = {"conditions": [{"type": cond, "status": "True", "lastTransitionTime": t}],
                       "startTime": t}
        if cond == "Complete":
            status["completionTime"] = t
        await self.jobs.patch(name, {"status": status}, namespace="default", subresource="status")


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    api = await start_api(tmp_path)
    clock = FakeClock()
    ctl = CronJobController(Client.in_process(api.handle), clock=clock)
    await ctl.start()
    client = Client.in_process(api.handle)
    try:
        yield Harness(client, ctl, clock)
    finally:
        await client.close()
        await ctl.stop()
        await ctl.client.close()
        await stop_api(api)


def boundary(t: float, minutes: int) -> float:
    """The first multiple of `minutes` after t."""
    step = minutes * 60
    return (int(t) // step + 1) * step


async def test_creates_job_at_schedule(h: Harness) -> None:
    cj = await h.create("tick", "*/5 * * * *")
    created = parse_time(cj["metadata"]["creationTimestamp"])
    assert created is not None
    first = boundary(created, 5)
    h.clock.now = first - 1
    await h.run_pass("tick")
    assert await h.job_names() == []
    await h.at("tick", first + 2)
    name = f"tick-{int(first // 60)}"
    assert await h.job_names() == [name]
    job = await h.jobs.get(name, "default")
    assert job["metadata"]["annotations"][SCHEDULED_TIMESTAMP_ANNOTATION] == rfc3339(first)
    assert job["metadata"]["annotations"]["note"] == "from-template"
    assert job["metadata"]["labels"]["app"] == "tick"
    ref = job["metadata"]["ownerReferences"][0]
    assert ref["kind"] == "CronJob" and ref["controller"] and ref["uid"] == cj["metadata"]["uid"]
    st = (await h.cj("tick"))["status"]
    assert st["lastScheduleTime"] == rfc3339(first)
    assert [a["name"] for a in st["active"]] == [name] and st["active"][0]["kind"] == "Job"
    # A second pass in the same minute starts nothing new.
    await h.run_pass("tick")
    assert await h.job_names() == [name]
    # Completion moves it out of active and into lastSuccessfulTime.
    await h.finish_job(name, when=first + 30)
    await eventually(lambda: _no_active(h, "tick"), what="active cleared")
    st = (await h.cj("tick"))["status"]
    assert st["lastSuccessfulTime"] == rfc3339(first + 30)


async def _no_active(h: Harness, name: str) -> bool:
    return not (await h.cj(name)).get("status", {}).get("active")


async def test_forbid_skips_while_active_then_runs(h: Harness) -> None:
    cj = await h.create("fb", "*/5 * * * *", concurrencyPolicy="Forbid")
    t0 = boundary(parse_time(cj["metadata"]["creationTimestamp"]) or 0, 5)
    await h.at("fb", t0 + 1)
    assert len(await h.job_names()) == 1
    await h.at("fb", t0 + 301)
    assert len(await h.job_names()) == 1
    # Once the first finishes, the run that was held back starts.
    await h.finish_job(f"fb-{int(t0 // 60)}")
    await eventually(lambda: _count(h, 2), what="held-back run started")
    assert f"fb-{int((t0 + 300) // 60)}" in await h.job_names()


async def _count(h: Harness, n: int) -> bool:
    return len(await h.job_names()) == n


async def test_allow_runs_concurrently(h: Harness) -> None:
    cj = await h.create("al", "*/5 * * * *")
    t0 = boundary(parse_time(cj["metadata"]["creationTimestamp"]) or 0, 5)
    await h.at("al", t0 + 1)
    await h.at("al", t0 + 301)
    assert len(await h.job_names()) == 2
    assert len((await h.cj("al"))["status"]["active"]) == 2


async def test_replace_deletes_the_running_job(h: Harness) -> None:
    cj = await h.create("rp", "*/5 * * * *", concurrencyPolicy="Replace")
    t0 = boundary(parse_time(cj["metadata"]["creationTimestamp"]) or 0, 5)
    await h.at("rp", t0 + 1)
    await h.at("rp", t0 + 301)
    second = f"rp-{int((t0 + 300) // 60)}"
    assert await h.job_names() == [second]
    assert [a["name"] for a in (await h.cj("rp"))["status"]["active"]] == [second]


async def test_starting_deadline_skips_old_runs(h: Harness) -> None:
    cj = await h.create("sd", "*/5 * * * *", startingDeadlineSeconds=30)
    t0 = boundary(parse_time(cj["metadata"]["creationTimestamp"]) or 0, 5)
    # 40 s late for t0, and the deadline is 30 s: skipped.
    await h.at("sd", t0 + 40)
    assert await h.job_names() == []
    # Within the deadline for the next run: started.
    await h.at("sd", t0 + 320)
    assert await h.job_names() == [f"sd-{int((t0 + 300) // 60)}"]


async def test_too_many_missed_runs_warns_and_runs_latest(h: Harness) -> None:
    cj = await h.create("late", "* * * * *")
    created = parse_time(cj["metadata"]["creationTimestamp"]) or 0
    later = boundary(created + 3 * 3600, 1)
    await h.at("late", later + 5)
    assert await h.job_names() == [f"late-{int(later // 60)}"]

    async def warned() -> bool:
        evs = (await h.client.resource("v1", "events").list("default"))["items"]
        return any(e["reason"] == "TooManyMissedTimes" and e["involvedObject"]["name"] == "late" for e in evs)
    await eventually(warned, what="TooManyMissedTimes event")


async def test_suspend_creates_nothing(h: Harness) -> None:
    cj = await h.create("zz", "*/5 * * * *", suspend=True)
    t0 = boundary(parse_time(cj["metadata"]["creationTimestamp"]) or 0, 5)
    await h.at("zz", t0 + 1)
    assert await h.job_names() == []
    await h.cronjobs.patch("zz", {"spec": {"suspend": False}}, namespace="default")
    await h.run_pass("zz")
    assert await h.job_names() == [f"zz-{int(t0 // 60)}"]


async def test_history_limits(h: Harness) -> None:
    cj = await h.create("hist", "*/5 * * * *", successfulJobsHistoryLimit=1, failedJobsHistoryLimit=1)
    t = boundary(parse_time(cj["metadata"]["creationTimestamp"]) or 0, 5)
    names = []
    for i, outcome in enumerate(["Complete", "Complete", "Failed", "Failed"]):
        await h.at("hist", t + i * 300 + 1)
        name = f"hist-{int((t + i * 300) // 60)}"
        names.append(name)
        await h.finish_job(name, outcome, when=t + i * 300 + 10)
    await h.run_pass("hist")
    await eventually(lambda: _names(h, [names[1], names[3]]), what="only the newest of each kept")


async def _names(h: Harness, want: list[str]) -> bool:
    return await h.job_names() == sorted(want)


async def test_time_zone(h: Harness) -> None:
    cj = await h.create("tz", "0 * * * *", timeZone="Asia/Kolkata")  # whole hours at +05:30 are :30 UTC
    created = parse_time(cj["metadata"]["creationTimestamp"]) or 0
    due = (int(created - 1800) // 3600 + 1) * 3600 + 1800
    await h.at("tz", due + 1)
    name = f"tz-{int(due // 60)}"
    assert await h.job_names() == [name]
    ann = (await h.jobs.get(name, "default"))["metadata"]["annotations"][SCHEDULED_TIMESTAMP_ANNOTATION]
    assert ann.endswith(":00:00+05:30")


async def test_with_the_job_controller(h: Harness) -> None:
    """CronJob -> Job -> pod -> Complete -> lastSuccessfulTime, with both controllers running."""
    from kybernetes.controllers.job import JobController
    jc = JobController(h.ctl.client, backoff_base=0.0)
    await jc.start()
    try:
        cj = await h.create("e2e", "*/5 * * * *")
        t0 = boundary(parse_time(cj["metadata"]["creationTimestamp"]) or 0, 5)
        await h.at("e2e", t0 + 1)
        name = f"e2e-{int(t0 // 60)}"
        pods = h.client.resource("v1", "pods")

        async def pod() -> Obj | None:
            items = (await pods.list("default", label_selector=f"batch.kubernetes.io/job-name={name}"))["items"]
            return items[0] if items else None
        p = await eventually(pod, what="the job's pod")
        await pods.patch(p["metadata"]["name"], {"status": {"phase": "Succeeded"}}, namespace="default",
                         subresource="status")

        async def succeeded() -> bool:
            st = (await h.cj("e2e")).get("status") or {}
            return bool(st.get("lastSuccessfulTime")) and not st.get("active")
        await eventually(succeeded, what="cronjob saw the job complete")
    finally:
        await jc.stop()
