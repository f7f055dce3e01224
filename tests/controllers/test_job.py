"""The Job controller against a real in-process API server, with the kubelet simulated.

There is no kubelet here: a test finishes a pod by writing its status
(phase and a terminated container) through the pods/status subresource, as a
kubelet would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kybernetes.api.errors import StatusError
from kybernetes.client import Client
from kybernetes.controllers.job import (
    COMPLETION_INDEX_KEY,
    JOB_TRACKING_FINALIZER,
    JobController,
    format_indexes,
    match_pod_failure_policy,
    parse_indexes,
    rfc3339,
)
from tests.apiserver.conftest import eventually, start_api, stop_api

Obj = dict[str, Any]


class Cluster:
    def __init__(self, client: Client, ctl: JobController):
        self.client = client
        self.ctl = ctl
        self.jobs = client.resource("batch/v1", "jobs")
        self.pods = client.resource("v1", "pods")

    async def create(self, name: str, **spec: Any) -> Obj:
        return await self.jobs.create(job(name, **spec), "default")

    async def job(self, name: str) -> Obj:
        return await self.jobs.get(name, "default")

    async def pods_of(self, name: str, *, active_only: bool = False) -> list[Obj]:
        items = (await self.pods.list("default", label_selector=f"batch.kubernetes.io/job-name={name}"))["items"]
        if active_only:
            items = [p for p in items if p["status"].get("phase") not in ("Succeeded", "Failed")
                     and not p["metadata"].get("deletionTimestamp")]
        return sorted(items, key=lambda p: p["metadata"]["name"])

    async def wait_active(self, name: str, n: int) -> list[Obj]:
        async def have() -> list[Obj] | None:
            pods = await self.pods_of(name, active_only=True)
            return pods if len(pods) == n else None
        return await eventually(have, what=f"{n} active pods of {name}")

    async def finish(self, pod: Obj, phase: str = "Succeeded", exit_code: int | None = None,
                     conditions: list[Obj] | None = None) -> None:
        """What a kubelet writes when the pod's container terminates."""
        code = exit_code if exit_code is not None else (0 if phase == "Succeeded" else 1)
        status: Obj = {"phase": phase, "containerStatuses": [{
            "name": "c", "ready": False, "restartCount": 0, "image": "busybox", "imageID": "",
            "state": {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                     "finishedAt": "2024-01-01T00:00:00Z"}}}]}
        if conditions:
            status["conditions"] = conditions
        await self.pods.patch(pod["metadata"]["name"], {"status": status}, namespace="default",
                              subresource="status")

    async def set_ready(self, pod: Obj) -> None:
        await self.pods.patch(pod["metadata"]["name"], {"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True"}]}}, namespace="default", subresource="status")

    async def wait_condition(self, name: str, typ: str, timeout: float = 5.0) -> Obj:
        async def has() -> Obj | None:
            j = await self.job(name)
            for c in j["status"].get("conditions") or []:
                if c["type"] == typ and c["status"] == "True":
                    return j
            return None
        return await eventually(has, timeout=timeout, what=f"{name} condition {typ}")


def job(name: str, *, restart: str = "Never", **spec: Any) -> Obj:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"template": {"spec": {"restartPolicy": restart,
                                           "containers": [{"name": "c", "image": "busybox"}]}}, **spec}}


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def clock() -> FakeClock:
    import time
    return FakeClock(time.time())


@pytest.fixture
async def cluster(tmp_path: Path, clock: FakeClock, request) -> AsyncIterator[Cluster]:
    api = await start_api(tmp_path)
    base = getattr(request, "param", 0.0)
    ctl = JobController(Client.in_process(api.handle), backoff_base=base, clock=clock)
    await ctl.start()
    client = Client.in_process(api.handle)
    try:
        yield Cluster(client, ctl)
    finally:
        await client.close()
        await ctl.stop()
        await ctl.client.close()
        await stop_api(api)


# ---------------------------------------------------------------------------- pure helpers


def test_index_intervals_round_trip() -> None:
    assert format_indexes({0, 1, 2, 4}) == "0-2,4"
    assert format_indexes(set()) == ""
    assert format_indexes({3, 5, 6, 7, 9}) == "3,5-7,9"
    assert parse_indexes("0-2,4", 10) == {0, 1, 2, 4}
    assert parse_indexes("0-2,4,x", 3) == {0, 1, 2}


def test_pod_failure_policy_matching() -> None:
    pod = {"metadata": {"name": "p", "namespace": "ns"},
           "status": {"phase": "Failed",
                      "conditions": [{"type": "DisruptionTarget", "status": "True"}],
                      "containerStatuses": [{"name": "main", "state": {"terminated": {"exitCode": 42}}},
                                            {"name": "side", "state": {"terminated": {"exitCode": 0}}}]}}
    policy = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "Other"}]},
                        {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In",
                                                              "values": [42]}}]}
    action, msg = match_pod_failure_policy(policy, pod)
    assert action == "FailJob"
    assert msg == "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 1"
    # NotIn ignores containers that exited 0.
    assert match_pod_failure_policy({"rules": [{"action": "Count", "onExitCodes": {
        "operator": "NotIn", "values": [42]}}]}, pod) == (None, None)
    assert match_pod_failure_policy({"rules": [{"action": "Ignore", "onPodConditions": [
        {"type": "DisruptionTarget", "status": "True"}]}]}, pod)[0] == "Ignore"


def test_backoff_doubles_and_caps() -> None:
    ctl = JobController.__new__(JobController)
    ctl.backoff_base, ctl.backoff_max = 10.0, 360.0
    assert ctl._backoff_remaining(0, 100.0, 100.0) == 0
    assert [ctl._backoff_remaining(n, 0.0, 0.0) for n in (1, 2, 3, 6, 7, 50)] == [10, 20, 40, 320, 360, 360]


# ---------------------------------------------------------------------------- against the API server


async def test_completions_and_parallelism(cluster: Cluster) -> None:
    await cluster.create("pi", completions=5, parallelism=2)
    pods = await cluster.wait_active("pi", 2)
    for p in pods:
        assert JOB_TRACKING_FINALIZER in p["metadata"]["finalizers"]
        assert p["metadata"]["ownerReferences"][0]["kind"] == "Job"
        assert p["metadata"]["generateName"] == "pi-"
    j = await eventually(lambda: _status(cluster, "pi", "active", 2), what="active 2")
    assert j["status"]["startTime"]
    done = 0
    while done < 5:
        pods = await cluster.wait_active("pi", min(2, 5 - done))
        await cluster.finish(pods[0])
        done += 1
        await eventually(lambda d=done: _status(cluster, "pi", "succeeded", d), what=f"succeeded {done}")
    j = await cluster.wait_condition("pi", "Complete")
    st = j["status"]
    assert st["succeeded"] == 5 and st.get("failed", 0) == 0 and st["active"] == 0
    assert st["completionTime"] and not st.get("uncountedTerminatedPods")
    types = {c["type"]: c for c in st["conditions"]}
    assert types["SuccessCriteriaMet"]["reason"] == "CompletionsReached"
    assert types["Complete"]["reason"] == "CompletionsReached"
    assert types["Complete"]["message"] == "Reached expected number of succeeded pods"
    # Counted pods lose the finalizer but stay for their logs.
    pods = await cluster.pods_of("pi")
    assert len(pods) == 5 and all(not p["metadata"].get("finalizers") for p in pods)


async def _status(cluster: Cluster, name: str, field: str, want: Any) -> Obj | None:
    j = await cluster.job(name)
    return j if (j.get("status") or {}).get(field, 0) == want else None


async def test_ready_count(cluster: Cluster) -> None:
    await cluster.create("r", completions=2, parallelism=2)
    pods = await cluster.wait_active("r", 2)
    await cluster.set_ready(pods[0])
    await eventually(lambda: _status(cluster, "r", "ready", 1), what="ready 1")


async def test_backoff_limit_exceeded(cluster: Cluster) -> None:
    await cluster.create("bo", backoffLimit=1)
    for _ in range(2):
        pods = await cluster.wait_active("bo", 1)
        await cluster.finish(pods[0], "Failed", 1)
    j = await cluster.wait_condition("bo", "Failed")
    st = j["status"]
    assert st["failed"] == 2 and st["active"] == 0
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert failed["message"] == "Job has reached the specified backoff limit"
    assert any(c["type"] == "FailureTarget" for c in st["conditions"])
    assert "completionTime" not in st
    assert len(await cluster.pods_of("bo", active_only=True)) == 0


@pytest.mark.parametrize("cluster", [1000.0], indirect=True)
async def test_failed_pod_is_replaced_only_after_backoff(cluster: Cluster, clock: FakeClock) -> None:
    await cluster.create("slow", backoffLimit=5)
    pods = await cluster.wait_active("slow", 1)
    clock.now = 1_704_067_200.0  # the pod's finishedAt below: the back-off starts there
    await cluster.finish(pods[0], "Failed", 1)
    await eventually(lambda: _status(cluster, "slow", "failed", 1), what="failure counted")
    assert await cluster.pods_of("slow", active_only=True) == []
    clock.now += 1001
    cluster.ctl.enqueue("default/slow")
    await cluster.wait_active("slow", 1)


async def test_active_deadline(cluster: Cluster, clock: FakeClock) -> None:
    await cluster.create("dl", activeDeadlineSeconds=30, completions=1)
    await cluster.wait_active("dl", 1)
    clock.now += 31
    cluster.ctl.enqueue("default/dl")
    j = await cluster.wait_condition("dl", "Failed")
    failed = next(c for c in j["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "DeadlineExceeded"
    assert failed["message"] == "Job was active longer than specified deadline"
    # The killed pod is counted as failed before the Job is, and then lets go.
    assert j["status"]["failed"] == 1 and j["status"]["active"] == 0
    await eventually(lambda: _no_pods(cluster, "dl"), what="deleted pod gone once released")


async def _no_pods(cluster: Cluster, name: str) -> bool:
    return not await cluster.pods_of(name)


async def test_ttl_after_finished(cluster: Cluster, clock: FakeClock) -> None:
    await cluster.create("ttl", ttlSecondsAfterFinished=100)
    pods = await cluster.wait_active("ttl", 1)
    await cluster.finish(pods[0])
    await cluster.wait_condition("ttl", "Complete")
    cluster.ctl.enqueue("default/ttl")
    assert (await cluster.job("ttl"))["metadata"]["name"] == "ttl"
    clock.now += 101
    cluster.ctl.enqueue("default/ttl")

    async def gone() -> bool:
        try:
            await cluster.job("ttl")
        except StatusError as e:
            return e.code == 404
        return False
    await eventually(gone, what="job deleted after ttl")


async def test_indexed_completion(cluster: Cluster) -> None:
    await cluster.create("ix", completions=5, parallelism=3, completionMode="Indexed")
    pods = await cluster.wait_active("ix", 3)
    by_ix = {int(p["metadata"]["annotations"][COMPLETION_INDEX_KEY]): p for p in pods}
    assert sorted(by_ix) == [0, 1, 2]
    for ix, p in by_ix.items():
        assert p["metadata"]["labels"][COMPLETION_INDEX_KEY] == str(ix)
        assert p["metadata"]["generateName"] == f"ix-{ix}-"
        assert p["spec"]["hostname"] == f"ix-{ix}"
        env = {e["name"]: e for e in p["spec"]["containers"][0]["env"]}
        assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
            f"metadata.annotations['{COMPLETION_INDEX_KEY}']"
    await cluster.finish(by_ix[0])
    await cluster.finish(by_ix[2])
    await eventually(lambda: _status(cluster, "ix", "completedIndexes", "0,2"), what="indexes 0,2")

    async def indexes_running() -> list[int] | None:
        pods = await cluster.pods_of("ix", active_only=True)
        ixs = sorted(int(p["metadata"]["annotations"][COMPLETION_INDEX_KEY]) for p in pods)
        return ixs if ixs == [1, 3, 4] else None
    await eventually(indexes_running, what="indexes 1,3,4 running")
    for p in await cluster.pods_of("ix", active_only=True):
        if p["metadata"]["annotations"][COMPLETION_INDEX_KEY] != "3":
            await cluster.finish(p)
    await eventually(lambda: _status(cluster, "ix", "completedIndexes", "0-2,4"), what="indexes 0-2,4")
    j = await cluster.job("ix")
    assert j["status"]["succeeded"] == 4
    # A failed index is retried with a pod of the same index.
    p3 = (await cluster.wait_active("ix", 1))[0]
    await cluster.finish(p3, "Failed")
    p3b = await eventually(lambda: _pod_other_than(cluster, "ix", p3), what="index 3 replaced")
    assert p3b["metadata"]["annotations"][COMPLETION_INDEX_KEY] == "3"
    await cluster.finish(p3b)
    j = await cluster.wait_condition("ix", "Complete")
    assert j["status"]["completedIndexes"] == "0-4" and j["status"]["succeeded"] == 5
    assert j["status"]["failed"] == 1


async def _pod_other_than(cluster: Cluster, name: str, pod: Obj) -> Obj | None:
    for p in await cluster.pods_of(name, active_only=True):
        if p["metadata"]["uid"] != pod["metadata"]["uid"]:
            return p
    return None


async def test_pod_failure_policy_fail_job(cluster: Cluster) -> None:
    policy = {"rules": [{"action": "FailJob", "onExitCodes": {"containerName": "c", "operator": "In",
                                                              "values": [42]}}]}
    await cluster.create("pfp", completions=3, parallelism=2, backoffLimit=6, podFailurePolicy=policy)
    pods = await cluster.wait_active("pfp", 2)
    await cluster.finish(pods[0], "Failed", 42)
    j = await cluster.wait_condition("pfp", "Failed")
    failed = next(c for c in j["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PodFailurePolicy"
    assert failed["message"] == (f"Container c for pod default/{pods[0]['metadata']['name']} failed with exit "
                                 "code 42 matching FailJob rule at index 0")


async def test_pod_failure_policy_ignore_and_count(cluster: Cluster) -> None:
    policy = {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        {"action": "Count", "onExitCodes": {"operator": "In", "values": [1]}}]}
    await cluster.create("ign", backoffLimit=0, podFailurePolicy=policy)
    pod = (await cluster.wait_active("ign", 1))[0]
    # A disrupted pod is replaced without counting against backoffLimit 0.
    await cluster.finish(pod, "Failed", 137, conditions=[{"type": "DisruptionTarget", "status": "True"}])
    pod2 = await eventually(lambda: _pod_other_than(cluster, "ign", pod), what="ignored failure replaced")
    j = await cluster.job("ign")
    assert j["status"].get("failed", 0) == 0
    await cluster.finish(pod2, "Failed", 1)
    j = await cluster.wait_condition("ign", "Failed")
    assert j["status"]["failed"] == 1
    assert next(c for c in j["status"]["conditions"] if c["type"] == "Failed")["reason"] == "BackoffLimitExceeded"


async def test_suspend_and_resume(cluster: Cluster, clock: FakeClock) -> None:
    await cluster.create("sus", completions=4, parallelism=2)
    await cluster.wait_active("sus", 2)
    await cluster.jobs.patch("sus", {"spec": {"suspend": True}}, namespace="default")
    j = await cluster.wait_condition("sus", "Suspended")
    cond = next(c for c in j["status"]["conditions"] if c["type"] == "Suspended")
    assert cond["reason"] == "JobSuspended" and cond["message"] == "Job suspended"
    await eventually(lambda: _no_pods(cluster, "sus"), what="suspended job's pods deleted")
    j = await eventually(lambda: _status(cluster, "sus", "active", 0), what="active 0")
    # Pods removed by suspension are not failures.
    assert j["status"].get("failed", 0) == 0
    clock.now += 60
    await cluster.jobs.patch("sus", {"spec": {"suspend": False}}, namespace="default")
    await cluster.wait_active("sus", 2)

    async def resumed() -> Obj | None:
        j = await cluster.job("sus")
        c = next(c for c in j["status"]["conditions"] if c["type"] == "Suspended")
        return j if c["status"] == "False" and c["reason"] == "JobResumed" else None
    j = await eventually(resumed, what="resumed condition")
    # activeDeadlineSeconds counts from the resumption.
    assert j["status"]["startTime"] == rfc3339(clock.now)


async def test_suspended_from_creation_creates_nothing(cluster: Cluster) -> None:
    await cluster.create("idle", suspend=True)
    j = await cluster.wait_condition("idle", "Suspended")
    assert not j["status"].get("startTime")
    assert await cluster.pods_of("idle") == []


async def test_deleted_pods_are_counted_through_the_finalizer(cluster: Cluster) -> None:
    await cluster.create("del", completions=2, parallelism=2, backoffLimit=3)
    pods = await cluster.wait_active("del", 2)
    # A succeeded pod deleted before the controller got to it is still counted.
    await cluster.ctl.stop()  # nothing counts while we finish and delete
    await cluster.finish(pods[0])
    await cluster.pods.delete(pods[0]["metadata"]["name"], "default")
    held = await cluster.pods.get(pods[0]["metadata"]["name"], "default")
    assert held["metadata"]["deletionTimestamp"] and JOB_TRACKING_FINALIZER in held["metadata"]["finalizers"]
    # A running pod deleted by a user counts as a failure and is replaced.
    await cluster.pods.delete(pods[1]["metadata"]["name"], "default")
    ctl = JobController(cluster.ctl.client, backoff_base=0.0, clock=cluster.ctl.clock)
    cluster.ctl = ctl
    await ctl.start()
    j = await eventually(lambda: _status(cluster, "del", "succeeded", 1), what="deleted success counted")
    j = await eventually(lambda: _status(cluster, "del", "failed", 1), what="deleted running pod failed")
    assert not j["status"].get("uncountedTerminatedPods")
    new = await cluster.wait_active("del", 1)
    assert new[0]["metadata"]["uid"] not in {p["metadata"]["uid"] for p in pods}
    await eventually(lambda: _names_gone(cluster, [p["metadata"]["name"] for p in pods]),
                     what="released pods deleted")


async def _names_gone(cluster: Cluster, names: list[str]) -> bool:
    have = {p["metadata"]["name"] for p in await cluster.pods_of("del")}
    return not (have & set(names))


async def test_work_queue_mode(cluster: Cluster) -> None:
    await cluster.create("wq", parallelism=3, completions=None)
    pods = await cluster.wait_active("wq", 3)
    await cluster.finish(pods[0])
    # No new pods once one worker succeeded; the others finish the queue.
    await eventually(lambda: _status(cluster, "wq", "succeeded", 1), what="one success")
    assert len(await cluster.pods_of("wq", active_only=True)) == 2
    await cluster.finish(pods[1])
    await cluster.finish(pods[2])
    j = await cluster.wait_condition("wq", "Complete")
    assert j["status"]["succeeded"] == 3


async def test_finalizers_released_when_job_deleted(cluster: Cluster) -> None:
    await cluster.create("gone", completions=1)
    pod = (await cluster.wait_active("gone", 1))[0]
    await cluster.jobs.delete("gone", "default", propagation_policy="Orphan")

    async def released() -> bool:
        p = await cluster.pods.get(pod["metadata"]["name"], "default")
        return JOB_TRACKING_FINALIZER not in (p["metadata"].get("finalizers") or [])
    await eventually(released, what="finalizer removed from the orphan")
