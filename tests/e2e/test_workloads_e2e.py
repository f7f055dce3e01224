"""Workload controllers through the real kubectl: CronJob, rollout restart/pause/resume/undo, HPA."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from .conftest import Server, needs_kubectl, wait_for

pytestmark = [needs_kubectl, pytest.mark.skipif(os.geteuid() != 0, reason="the process runtime isolates as root")]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
HELLO = "Hello from the Kubernetes cluster"


@pytest.fixture(scope="module")
def hello_cronjob(server: Server) -> str:
    """The docs' CronJob, created once: its first scheduled run comes within a minute, while
    the other tests run, and test_cronjob_runs_on_schedule (last in this file) looks at it."""
    # The process runtime runs the command on the host: busybox's image is not needed.
    server.kubectl("apply", "-f", str(EXAMPLES / "cronjob-hello.yaml"))
    return "hello"


def test_create_job_from_cronjob(server: Server, hello_cronjob: str):
    server.kubectl("create", "job", "--from=cronjob/hello", "manual")
    job = server.kjson("get", "job", "manual")
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("CronJob", "hello")
    assert job["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"] == "manual"
    server.kubectl("wait", "--for=condition=complete", "job/manual", "--timeout=60s", timeout=90)
    assert server.kubectl("logs", "job/manual").stdout.splitlines()[-1] == HELLO
    row = server.kubectl("get", "job", "manual", "--no-headers").stdout.split()
    assert row[:3] == ["manual", "Complete", "1/1"], row


def _deployment(name: str, command: list[str], replicas: int = 1, resources: dict | None = None) -> str:
    container = {"name": "main", "image": "busybox:1.36", "command": command}
    if resources:
        container["resources"] = resources
    return json.dumps({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
                       "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                                "template": {"metadata": {"labels": {"app": name}},
                                             "spec": {"containers": [container]}}}})


def _rollout(server: Server, name: str) -> None:
    out = server.kubectl("rollout", "status", f"deployment/{name}", "--timeout=90s", timeout=120).stdout
    assert "successfully rolled out" in out, out


def _pods(server: Server, app: str) -> set[str]:
    return {p["metadata"]["name"] for p in server.kjson("get", "pods", "-l", f"app={app}")["items"]
            if not p["metadata"].get("deletionTimestamp")}


def _images_by_rs(server: Server, app: str) -> dict[str, tuple[str, int]]:
    return {rs["metadata"]["name"]: (rs["spec"]["template"]["spec"]["containers"][0]["image"],
                                     rs["spec"]["replicas"])
            for rs in server.kjson("get", "rs", "-l", f"app={app}")["items"]}


def test_rollout_restart_pause_resume_undo(server: Server):
    server.kubectl("apply", "-f", "-", input=_deployment("roll", SLEEPER, replicas=2))
    _rollout(server, "roll")
    before = _pods(server, "roll")

    # restart: a new template (stamped restartedAt) and so new pods, the image unchanged.
    assert "restarted" in server.kubectl("rollout", "restart", "deployment/roll").stdout
    _rollout(server, "roll")
    d = server.kjson("get", "deploy", "roll")
    assert "kubectl.kubernetes.io/restartedAt" in d["spec"]["template"]["metadata"]["annotations"]
    wait_for(lambda: len(_pods(server, "roll")) == 2, timeout=60)
    assert not _pods(server, "roll") & before
    assert len(_images_by_rs(server, "roll")) == 2

    # pause: template changes are recorded but not rolled out.
    server.kubectl("rollout", "pause", "deployment/roll")
    server.kubectl("set", "image", "deployment/roll", "main=busybox:1.37")
    server.kubectl("set", "env", "deployment/roll", "COLOR=blue")

    def observed() -> dict:
        d = server.kjson("get", "deploy", "roll")
        return d["status"].get("observedGeneration") == d["metadata"]["generation"] and d
    d = wait_for(observed, timeout=30)
    assert d["spec"]["paused"] is True
    progressing = next(c for c in d["status"]["conditions"] if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("Unknown", "DeploymentPaused")
    assert all(img == "busybox:1.36" for img, _ in _images_by_rs(server, "roll").values())

    # resume: both changes roll out together, as one revision.
    server.kubectl("rollout", "resume", "deployment/roll")
    _rollout(server, "roll")
    rs = _images_by_rs(server, "roll")
    assert sorted(rs.values()) == [("busybox:1.36", 0), ("busybox:1.36", 0), ("busybox:1.37", 2)], rs
    hist = server.kubectl("rollout", "history", "deployment/roll").stdout
    assert [ln.split()[0] for ln in hist.splitlines()[2:] if ln.strip()] == ["1", "2", "3"], hist
    rev3 = server.kubectl("rollout", "history", "deployment/roll", "--revision=3").stdout
    assert "busybox:1.37" in rev3 and "COLOR" in rev3, rev3

    # undo to the first revision: its template comes back as revision 4.
    assert "rolled back" in server.kubectl("rollout", "undo", "deployment/roll", "--to-revision=1").stdout
    _rollout(server, "roll")
    d = server.kjson("get", "deploy", "roll")
    c = d["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "busybox:1.36" and not c.get("env")
    assert "kubectl.kubernetes.io/restartedAt" not in (d["spec"]["template"]["metadata"].get("annotations") or {})
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "4"
    hist = server.kubectl("rollout", "history", "deployment/roll").stdout
    assert [ln.split()[0] for ln in hist.splitlines()[2:] if ln.strip()] == ["2", "3", "4"], hist
    p = server.kubectl("rollout", "undo", "deployment/roll", "--to-revision=1", check=False)
    assert p.returncode != 0 and "unable to find specified revision 1" in p.stderr, p.stderr
    server.kubectl("delete", "deployment", "roll", "--timeout=60s")


def test_hpa_scales_a_cpu_burner_up_and_down(server: Server, tmp_path: Path):
    # Each replica burns cpu until the flag file appears; its limit (200m) makes the cgroup
    # throttle it, so three replicas cost this machine at most 0.6 cpu.
    stop = tmp_path / "stop"
    burn = ["sh", "-c", f"trap 'exit 0' TERM; while [ ! -e {stop} ]; do :; done; "
                        "while true; do sleep 1; done"]
    server.kubectl("apply", "-f", "-", input=_deployment(
        "burner", burn, resources={"requests": {"cpu": "100m"}, "limits": {"cpu": "200m"}}))
    try:
        _rollout(server, "burner")
        server.kubectl("autoscale", "deployment", "burner", "--min=1", "--max=3", "--cpu-percent=50")
        # Without it the scale-down would wait out upstream's five-minute stabilisation window.
        server.kubectl("patch", "hpa", "burner", "--type=merge",
                       "-p", '{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":0}}}}')
        seen: list[str] = []

        def replicas(n: int):
            def check() -> bool:
                row = server.kubectl("get", "hpa", "burner", "--no-headers").stdout
                seen.append(row)
                return server.kjson("get", "deploy", "burner")["spec"]["replicas"] == n
            return check
        wait_for(replicas(3), timeout=90, interval=1.0)

        # kubectl shows the utilisation that made it scale: far above the 50% target. (The
        # scale can land between two samples, before the status with the metric is read.)
        def shown_utilisation() -> int | None:
            row = server.kubectl("get", "hpa", "burner", "--no-headers").stdout
            seen.append(row)
            m = re.search(r"cpu: (\d+)%/50%", row)
            return int(m.group(1)) if m else None
        used = [int(m.group(1)) for row in seen if (m := re.search(r"cpu: (\d+)%/50%", row))]
        if not used:
            used.append(wait_for(shown_utilisation, timeout=30, interval=1.0))
        assert max(used) > 100, seen
        hpa = server.kjson("get", "hpa", "burner")
        assert hpa["apiVersion"] == "autoscaling/v2" and hpa["status"]["desiredReplicas"] == 3

        stop.touch()
        seen.clear()
        wait_for(replicas(1), timeout=90, interval=1.0)
        desc = server.kubectl("describe", "hpa", "burner").stdout
        assert "New size: 3; reason: cpu resource utilization (percentage of request) above target" in desc, desc
        assert "New size: 1; reason: All metrics below target" in desc, desc
        row = server.kubectl("get", "hpa", "burner", "--no-headers").stdout.split()
        assert row[0] == "burner" and re.fullmatch(r"\d+%/50%", row[3]) and int(row[3].split("%")[0]) < 50, row
    finally:
        stop.touch()
        server.kubectl("delete", "hpa", "burner", check=False)
        server.kubectl("delete", "deployment", "burner", "--timeout=60s", check=False)


def test_cronjob_runs_on_schedule(server: Server, hello_cronjob: str):
    def scheduled_job() -> dict | None:
        for job in server.kjson("get", "jobs")["items"]:
            owners = job["metadata"].get("ownerReferences") or []
            if job["metadata"]["name"].startswith("hello-") and owners and owners[0]["name"] == "hello":
                return job
        return None
    # "* * * * *": the first run is at the next minute, at most 60 s after the fixture created it.
    job = wait_for(scheduled_job, timeout=75, interval=1.0)
    name = job["metadata"]["name"]
    assert re.fullmatch(r"hello-\d+", name)
    server.kubectl("wait", "--for=condition=complete", f"job/{name}", "--timeout=60s", timeout=90)
    log = server.kubectl("logs", f"job/{name}").stdout.splitlines()
    assert log[-1] == HELLO and len(log) == 2, log  # `date`, then the greeting

    # NAME SCHEDULE(five fields) TIMEZONE SUSPEND ACTIVE LAST-SCHEDULE AGE
    row = server.kubectl("get", "cronjob", "hello", "--no-headers").stdout.split()
    assert row[:9] == ["hello", "*", "*", "*", "*", "*", "<none>", "False", "0"], row
    assert re.fullmatch(r"\d+s|\d+m\d*s?", row[9]), row
    cj = wait_for(lambda: (cj := server.kjson("get", "cronjob", "hello"))["status"].get("lastSuccessfulTime")
                  and cj, timeout=20)
    assert cj["status"]["lastScheduleTime"] <= cj["status"]["lastSuccessfulTime"]
    server.kubectl("delete", "cronjob", "hello", "--timeout=60s")
    # The jobs it created, the manual one too, go with it.
    wait_for(lambda: not server.kjson("get", "jobs")["items"], timeout=30)
