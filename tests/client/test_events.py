"""The shared event recorder against a real in-process API server: what it writes, how repeats
and similar events aggregate, the spam filter, and that a refused write fails nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kybernetes.client import Client
from kybernetes.client.events import COMBINED, EventRecorder, FakeRecorder

from tests.apiserver.conftest import start_api, stop_api


@pytest.fixture
async def api_client(tmp_path: Path) -> AsyncIterator[Client]:
    api = await start_api(tmp_path)
    c = Client.in_process(api.handle)
    try:
        yield c
    finally:
        await c.close()
        await stop_api(api)


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def cm(name: str, ns: str = "default") -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "resourceVersion": "7"}}


async def events(client: Client, ns: str = "default") -> list[dict]:
    return (await client.resource("v1", "events").list(ns))["items"]


async def test_an_event_names_its_object_source_and_times(api_client: Client) -> None:
    rec = EventRecorder(api_client, "deployment-controller")
    rec.event(cm("web"), "Normal", "ScalingReplicaSet", "Scaled up replica set web-1 from 0 to 3")
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "uid": "u-n1"}}
    kubelet = EventRecorder(api_client, "kubelet", host="n1")
    kubelet.event(node, "Normal", "Starting", "Starting kubelet.")
    await rec.flush()
    await kubelet.flush()
    by_reason = {e["reason"]: e for e in await events(api_client)}
    ev = by_reason["ScalingReplicaSet"]
    assert ev["metadata"]["name"].startswith("web.")
    assert ev["involvedObject"] == {"kind": "ConfigMap", "apiVersion": "v1", "name": "web", "namespace": "default",
                                    "uid": "uid-web", "resourceVersion": "7"}
    assert ev["type"] == "Normal" and ev["count"] == 1
    assert ev["source"] == {"component": "deployment-controller"}
    assert ev["reportingComponent"] == "deployment-controller"
    assert ev["firstTimestamp"] == ev["lastTimestamp"]
    # A cluster-scoped object's events live in the default namespace, the host named.
    started = by_reason["Starting"]
    assert "namespace" not in started["involvedObject"]
    assert started["source"] == {"component": "kubelet", "host": "n1"}
    assert started["reportingInstance"] == "n1"
    await rec.close()
    await kubelet.close()


async def test_repeats_are_counted_on_one_event(api_client: Client) -> None:
    clock = Clock()
    rec = EventRecorder(api_client, "replicaset-controller", clock=clock)
    for _ in range(3):
        rec.event(cm("rs"), "Warning", "FailedCreate", "Error creating: quota exceeded")
        clock.t += 5
    rec.event(cm("rs"), "Normal", "SuccessfulCreate", "Created pod: rs-abc")
    await rec.flush()
    evs = {e["reason"]: e for e in await events(api_client)}
    assert len(await events(api_client)) == 2
    failed = evs["FailedCreate"]
    assert failed["count"] == 3
    assert failed["firstTimestamp"] < failed["lastTimestamp"]
    assert evs["SuccessfulCreate"]["count"] == 1
    # An Event deleted (or expired) meanwhile is started again, not lost.
    await api_client.resource("v1", "events").delete(failed["metadata"]["name"], "default")
    rec.event(cm("rs"), "Warning", "FailedCreate", "Error creating: quota exceeded")
    await rec.flush()
    assert [e["reason"] for e in await events(api_client)].count("FailedCreate") == 1
    await rec.close()


async def test_similar_events_are_combined_after_ten(api_client: Client) -> None:
    rec = EventRecorder(api_client, "statefulset-controller", clock=Clock())
    for i in range(14):
        rec.event(cm("web"), "Normal", "SuccessfulCreate", f"create Pod web-{i} in StatefulSet web successful")
    await rec.flush()
    evs = await events(api_client)
    plain = [e for e in evs if not e["message"].startswith(COMBINED)]
    combined = [e for e in evs if e["message"].startswith(COMBINED)]
    assert len(plain) == 9
    assert len(combined) == 1
    assert combined[0]["count"] == 5
    assert combined[0]["message"] == COMBINED + "create Pod web-13 in StatefulSet web successful"
    await rec.close()


async def test_spam_filter_drops_beyond_the_burst_and_refills(api_client: Client) -> None:
    clock = Clock()
    rec = EventRecorder(api_client, "kubelet", host="n1", clock=clock)
    for _ in range(30):
        rec.event(cm("noisy"), "Warning", "BackOff", "Back-off restarting failed container")
    await rec.flush()
    [ev] = await events(api_client)
    assert ev["count"] == 25
    clock.t += 300  # one token back
    rec.event(cm("noisy"), "Warning", "BackOff", "Back-off restarting failed container")
    rec.event(cm("noisy"), "Warning", "BackOff", "Back-off restarting failed container")
    await rec.flush()
    [ev] = await events(api_client)
    assert ev["count"] == 26
    # Another object has a bucket of its own.
    rec.event(cm("quiet"), "Normal", "Pulled", "ok")
    await rec.flush()
    assert len(await events(api_client)) == 2
    await rec.close()


async def test_a_refused_write_fails_nothing_and_later_events_still_land(api_client: Client) -> None:
    rec = EventRecorder(api_client, "job-controller", retry_delay=0.01)
    rec.event(cm("ghost", ns="no-such-namespace"), "Normal", "Completed", "Job completed")
    rec.event(cm("real"), "Normal", "Completed", "Job completed")
    await rec.flush()
    assert [e["involvedObject"]["name"] for e in await events(api_client)] == ["real"]
    await rec.close()
    rec.event(cm("late"), "Normal", "Completed", "after close: ignored")
    assert [e["involvedObject"]["name"] for e in await events(api_client)] == ["real"]


async def test_the_queue_is_bounded() -> None:
    class Never:
        def resource(self, *a, **kw):
            raise AssertionError("not reached: the writer never runs in this test")

    rec = EventRecorder(Never(), "c", queue_size=3, spam_burst=100)
    for i in range(5):
        rec.event(cm(f"o{i}"), "Normal", "R", "m")
    assert rec.dropped == 2
    assert rec._task is not None
    rec._task.cancel()


def test_fake_recorder_keeps_what_was_recorded() -> None:
    rec = FakeRecorder()
    rec.eventf(cm("d"), "Normal", "ScalingReplicaSet", "Scaled up replica set %s from %d to %d", "d-1", 0, 2)
    assert rec.events == ["Normal ScalingReplicaSet Scaled up replica set d-1 from 0 to 2"]
    assert rec.reasons() == ["ScalingReplicaSet"]
    assert rec.objects[0]["name"] == "d"
