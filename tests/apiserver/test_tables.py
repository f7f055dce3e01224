"""Tests for kybernetes.apiserver.tables: the Table responses behind `kubectl get`."""

from datetime import UTC, datetime, timedelta

import pytest

from kybernetes.apiserver.tables import (
    JSONPathError,
    custom_resource_table,
    format_label_selector,
    human_duration,
    jsonpath,
    table,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def ts(delta: timedelta) -> str:
    return (NOW - delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def meta(name: str, age: timedelta = timedelta(minutes=10), **extra) -> dict:
    return {"name": name, "namespace": "default", "creationTimestamp": ts(age), **extra}


def cells(group: str, kind: str, obj: dict) -> list:
    return table(group, kind, [obj], now=NOW)["rows"][0]["cells"]


def by_name(group: str, kind: str, obj: dict) -> dict:
    t = table(group, kind, [obj], now=NOW)
    return {c["name"]: cell for c, cell in zip(t["columnDefinitions"], t["rows"][0]["cells"], strict=True)}


# --------------------------------------------------------------------------- HumanDuration


@pytest.mark.parametrize(("delta", "text"), [
    (timedelta(0), "0s"),
    (timedelta(milliseconds=-1500), "0s"),
    (timedelta(seconds=-2), "<invalid>"),
    (timedelta(seconds=59), "59s"),
    (timedelta(seconds=90), "90s"),
    (timedelta(seconds=119, milliseconds=999), "119s"),
    (timedelta(seconds=120), "2m"),
    (timedelta(seconds=150), "2m30s"),
    (timedelta(minutes=9, seconds=59), "9m59s"),
    (timedelta(minutes=10, seconds=30), "10m"),
    (timedelta(minutes=179), "179m"),
    (timedelta(hours=3), "3h"),
    (timedelta(hours=3, minutes=5), "3h5m"),
    (timedelta(hours=7, minutes=59, seconds=59), "7h59m"),
    (timedelta(hours=8, minutes=30), "8h"),
    (timedelta(hours=47, minutes=59), "47h"),
    (timedelta(hours=48), "2d"),
    (timedelta(days=2, hours=1), "2d1h"),
    (timedelta(days=7, hours=23), "7d23h"),
    (timedelta(days=8, hours=5), "8d"),
    (timedelta(days=729), "729d"),
    (timedelta(days=730), "2y"),
    (timedelta(days=731), "2y1d"),
    (timedelta(days=365 * 8), "8y"),
    (timedelta(days=365 * 10 + 100), "10y"),
])
def test_human_duration(delta: timedelta, text: str) -> None:
    assert human_duration(delta) == text


# --------------------------------------------------------------------------- Pods


def pod(name: str = "p", *, phase: str = "Running", statuses: list | None = None, init: list | None = None,
        init_statuses: list | None = None, containers: int = 1, conditions: list | None = None,
        **meta_extra) -> dict:
    spec: dict = {"containers": [{"name": f"c{i}", "image": "busybox"} for i in range(containers)],
                  "nodeName": "n1"}
    if init is not None:
        spec["initContainers"] = init
    status: dict = {"phase": phase, "podIPs": [{"ip": "10.0.0.5"}], "podIP": "10.0.0.5"}
    if statuses is not None:
        status["containerStatuses"] = statuses
    if init_statuses is not None:
        status["initContainerStatuses"] = init_statuses
    if conditions is not None:
        status["conditions"] = conditions
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta(name, **meta_extra), "spec": spec,
            "status": status}


def running(name: str = "c0", ready: bool = True, restarts: int = 0, last_finished: str | None = None) -> dict:
    cs = {"name": name, "ready": ready, "restartCount": restarts, "state": {"running": {"startedAt": ts(
        timedelta(minutes=1))}}}
    if last_finished:
        cs["lastState"] = {"terminated": {"exitCode": 1, "finishedAt": last_finished}}
    return cs


def waiting(reason: str, name: str = "c0", restarts: int = 0, last_finished: str | None = None) -> dict:
    cs = {"name": name, "ready": False, "restartCount": restarts, "state": {"waiting": {"reason": reason}}}
    if last_finished:
        cs["lastState"] = {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": last_finished}}
    return cs


def terminated(name: str = "c0", exit_code: int = 0, reason: str | None = None, signal: int = 0) -> dict:
    state: dict = {"exitCode": exit_code}
    if reason:
        state["reason"] = reason
    if signal:
        state["signal"] = signal
    return {"name": name, "ready": False, "restartCount": 0, "state": {"terminated": state}}


def pod_status(p: dict) -> tuple[str, str, str]:
    row = cells("", "Pod", p)
    return row[1], row[2], row[3]


def test_pod_running_ready() -> None:
    row = cells("", "Pod", pod(statuses=[running()]))
    assert row == ["p", "1/1", "Running", "0", "10m", "10.0.0.5", "n1", "<none>", "<none>"]


def test_pod_pending_without_statuses() -> None:
    p = pod(phase="Pending")
    p["spec"].pop("nodeName")
    p["status"] = {"phase": "Pending"}
    assert cells("", "Pod", p)[1:3] == ["0/1", "Pending"]
    assert cells("", "Pod", p)[5:7] == ["<none>", "<none>"]


@pytest.mark.parametrize("reason", ["ContainerCreating", "ErrImagePull", "ImagePullBackOff"])
def test_pod_waiting_reason_is_status(reason: str) -> None:
    assert pod_status(pod(phase="Pending", statuses=[waiting(reason)]))[:2] == ("0/1", reason)


def test_pod_crashloop_restarts_with_last_restart_age() -> None:
    p = pod(statuses=[waiting("CrashLoopBackOff", restarts=5, last_finished=ts(timedelta(minutes=5)))])
    assert pod_status(p) == ("0/1", "CrashLoopBackOff", "5 (5m ago)")


def test_pod_restarts_without_last_state_have_no_suffix() -> None:
    assert pod_status(pod(statuses=[running(restarts=3)]))[2] == "3"


def test_pod_latest_restart_across_containers_wins() -> None:
    p = pod(containers=2, statuses=[
        running("c0", restarts=1, last_finished=ts(timedelta(hours=2))),
        running("c1", restarts=2, last_finished=ts(timedelta(seconds=40))),
    ])
    assert pod_status(p) == ("2/2", "Running", "3 (40s ago)")


def test_pod_completed_has_row_condition() -> None:
    p = pod(phase="Succeeded", statuses=[terminated(reason="Completed")])
    t = table("", "Pod", [p], now=NOW)
    assert t["rows"][0]["cells"][1:3] == ["0/1", "Completed"]
    assert t["rows"][0]["conditions"][0]["type"] == "Completed"
    assert t["rows"][0]["conditions"][0]["reason"] == "Succeeded"
    running_row = table("", "Pod", [pod(statuses=[running()])], now=NOW)["rows"][0]
    assert "conditions" not in running_row


def test_pod_container_error_and_exit_codes() -> None:
    assert pod_status(pod(phase="Failed", statuses=[terminated(exit_code=1, reason="Error")]))[1] == "Error"
    assert pod_status(pod(phase="Failed", statuses=[terminated(exit_code=137)]))[1] == "ExitCode:137"
    assert pod_status(pod(phase="Failed", statuses=[terminated(exit_code=137, signal=9)]))[1] == "Signal:9"


def test_pod_first_container_state_wins() -> None:
    p = pod(containers=2, statuses=[waiting("ErrImagePull", "c0"), waiting("ContainerCreating", "c1")])
    assert pod_status(p)[1] == "ErrImagePull"


def test_pod_completed_container_with_running_sibling() -> None:
    statuses = [terminated("c0", reason="Completed"), running("c1")]
    ready = [{"type": "Ready", "status": "True"}]
    assert pod_status(pod(containers=2, statuses=statuses, conditions=ready))[:2] == ("1/2", "Running")
    assert pod_status(pod(containers=2, statuses=statuses))[:2] == ("1/2", "NotReady")


def test_pod_init_progress() -> None:
    init = [{"name": "i0", "image": "x"}, {"name": "i1", "image": "x"}]
    p = pod(phase="Pending", init=init, init_statuses=[
        terminated("i0", exit_code=0, reason="Completed"),
        {"name": "i1", "ready": False, "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}},
    ], statuses=[waiting("PodInitializing")])
    assert pod_status(p)[:2] == ("0/1", "Init:1/2")
    p = pod(phase="Pending", init=init[:1], init_statuses=[
        {"name": "i0", "ready": False, "restartCount": 0, "state": {"running": {}}}])
    assert pod_status(p)[1] == "Init:0/1"


def test_pod_init_failures() -> None:
    init = [{"name": "i0", "image": "x"}]
    err = pod(phase="Pending", init=init, init_statuses=[terminated("i0", exit_code=1, reason="Error")])
    assert pod_status(err)[1] == "Init:Error"
    code = pod(phase="Pending", init=init, init_statuses=[terminated("i0", exit_code=2)])
    assert pod_status(code)[1] == "Init:ExitCode:2"
    crash = pod(phase="Pending", init=init, init_statuses=[
        waiting("CrashLoopBackOff", "i0", restarts=4, last_finished=ts(timedelta(seconds=30)))])
    # Restarts of a failing init container count while the pod initialises.
    assert pod_status(crash)[1:] == ("Init:CrashLoopBackOff", "4 (30s ago)")


def test_pod_sidecar_counts_as_container() -> None:
    init = [{"name": "side", "image": "x", "restartPolicy": "Always"}]
    side = {"name": "side", "ready": True, "started": True, "restartCount": 2,
            "state": {"running": {}}}
    p = pod(init=init, init_statuses=[side], statuses=[running()],
            conditions=[{"type": "Initialized", "status": "True"}])
    assert pod_status(p) == ("2/2", "Running", "2")


def test_pod_terminating_and_node_lost() -> None:
    deleting = pod(statuses=[running()], deletionTimestamp=ts(timedelta(seconds=5)))
    assert pod_status(deleting)[1] == "Terminating"
    finished = pod(phase="Succeeded", statuses=[terminated(reason="Completed")],
                   deletionTimestamp=ts(timedelta(seconds=5)))
    assert pod_status(finished)[1] == "Completed"
    lost = pod(statuses=[running()], deletionTimestamp=ts(timedelta(seconds=5)))
    lost["status"]["reason"] = "NodeLost"
    assert pod_status(lost)[1] == "Unknown"


def test_pod_scheduling_gated_and_status_reason() -> None:
    gated = pod(phase="Pending", conditions=[{"type": "PodScheduled", "status": "False",
                                              "reason": "SchedulingGated"}])
    assert pod_status(gated)[1] == "SchedulingGated"
    evicted = pod(phase="Failed")
    evicted["status"]["reason"] = "Evicted"
    assert pod_status(evicted)[1] == "Evicted"


def test_pod_wide_cells() -> None:
    p = pod(statuses=[running()], conditions=[{"type": "example.com/gate", "status": "True"}])
    p["spec"]["readinessGates"] = [{"conditionType": "example.com/gate"}, {"conditionType": "other"}]
    p["status"]["nominatedNodeName"] = "n2"
    row = by_name("", "Pod", p)
    assert (row["IP"], row["Node"], row["Nominated Node"], row["Readiness Gates"]) == ("10.0.0.5", "n1", "n2",
                                                                                      "1/2")


# --------------------------------------------------------------------------- wide columns


@pytest.mark.parametrize(("group", "kind", "wide"), [
    ("", "Pod", ["IP", "Node", "Nominated Node", "Readiness Gates"]),
    ("", "Node", ["Internal-IP", "External-IP", "OS-Image", "Kernel-Version", "Container-Runtime"]),
    ("", "Service", ["Selector"]),
    ("apps", "Deployment", ["Containers", "Images", "Selector"]),
    ("apps", "ReplicaSet", ["Containers", "Images", "Selector"]),
    ("apps", "StatefulSet", ["Containers", "Images"]),
    ("apps", "DaemonSet", ["Containers", "Images", "Selector"]),
    ("batch", "Job", ["Containers", "Images", "Selector"]),
    ("batch", "CronJob", ["Containers", "Images", "Selector"]),
    ("", "Event", ["Subobject", "Source", "First Seen", "Count", "Name"]),
    ("", "PersistentVolume", ["VolumeMode"]),
    ("rbac.authorization.k8s.io", "RoleBinding", ["Users", "Groups", "ServiceAccounts"]),
])
def test_wide_columns_have_priority_one(group: str, kind: str, wide: list[str]) -> None:
    cols = table(group, kind, [], now=NOW)["columnDefinitions"]
    assert [c["name"] for c in cols if c["priority"] == 1] == wide
    assert cols[0]["format"] == "name" or kind == "Event"
    for c in cols:
        assert set(c) == {"name", "type", "format", "description", "priority"}


def test_column_names_follow_upstream() -> None:
    names = {k: [c["name"] for c in table(g, k, [])["columnDefinitions"]] for g, k in [
        ("apps", "Deployment"), ("", "Service"), ("batch", "Job"), ("batch", "CronJob"),
        ("", "Event"), ("autoscaling", "HorizontalPodAutoscaler"), ("networking.k8s.io", "Ingress"),
        ("", "Secret"), ("apps", "DaemonSet")]}
    assert names["Deployment"] == ["Name", "Ready", "Up-to-date", "Available", "Age", "Containers", "Images",
                                   "Selector"]
    assert names["Service"] == ["Name", "Type", "Cluster-IP", "External-IP", "Port(s)", "Age", "Selector"]
    assert names["Job"] == ["Name", "Status", "Completions", "Duration", "Age", "Containers", "Images",
                            "Selector"]
    assert names["CronJob"] == ["Name", "Schedule", "Timezone", "Suspend", "Active", "Last Schedule", "Age",
                                "Containers", "Images", "Selector"]
    assert names["Event"] == ["Last Seen", "Type", "Reason", "Object", "Subobject", "Source", "Message",
                              "First Seen", "Count", "Name"]
    assert names["HorizontalPodAutoscaler"] == ["Name", "Reference", "Targets", "MinPods", "MaxPods",
                                                "Replicas", "Age"]
    assert names["Ingress"] == ["Name", "Class", "Hosts", "Address", "Ports", "Age"]
    assert names["Secret"] == ["Name", "Type", "Data", "Age"]
    assert names["DaemonSet"] == ["Name", "Desired", "Current", "Ready", "Up-to-date", "Available",
                                  "Node Selector", "Age", "Containers", "Images", "Selector"]


# --------------------------------------------------------------------------- workloads


def test_deployment_row() -> None:
    d = {"metadata": meta("web", timedelta(hours=3, minutes=5)),
         "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web", "tier": "fe"},
                                              "matchExpressions": [{"key": "env", "operator": "In",
                                                                    "values": ["prod", "dev"]}]},
                  "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"},
                                                       {"name": "log", "image": "busybox"}]}}},
         "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}}
    assert cells("apps", "Deployment", d) == ["web", "2/3", 3, 2, "3h5m", "nginx,log", "nginx:1.27,busybox",
                                              "app=web,env in (dev,prod),tier=fe"]
    empty = {"metadata": meta("new"), "spec": {}, "status": {}}
    assert cells("apps", "Deployment", empty)[1:4] == ["0/0", 0, 0]


def test_selectors() -> None:
    assert format_label_selector(None) == "<none>"
    assert format_label_selector({}) == "<none>"
    assert format_label_selector({"matchExpressions": [{"key": "a", "operator": "Exists"},
                                                       {"key": "b", "operator": "DoesNotExist"},
                                                       {"key": "c", "operator": "NotIn", "values": ["x"]}]}) \
        == "a,!b,c notin (x)"
    assert format_label_selector({"matchExpressions": [{"key": "a", "operator": "Bogus"}]}) == "<error>"
    bad = {"metadata": meta("d"), "spec": {"selector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}}
    assert cells("apps", "Deployment", bad)[-1] == "<invalid>"


def test_replicaset_statefulset_daemonset_rows() -> None:
    tmpl = {"spec": {"nodeSelector": {"disk": "ssd"}, "containers": [{"name": "c", "image": "i"}]}}
    rs = {"metadata": meta("rs"), "spec": {"replicas": 2, "selector": {"matchLabels": {"a": "b"}},
                                           "template": tmpl}, "status": {"replicas": 2, "readyReplicas": 1}}
    assert cells("apps", "ReplicaSet", rs) == ["rs", 2, 2, 1, "10m", "c", "i", "a=b"]
    sts = {"metadata": meta("db"), "spec": {"replicas": 3, "template": tmpl}, "status": {"readyReplicas": 3}}
    assert cells("apps", "StatefulSet", sts) == ["db", "3/3", "10m", "c", "i"]
    ds = {"metadata": meta("ds"), "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": tmpl},
          "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberReady": 2,
                     "updatedNumberScheduled": 3, "numberAvailable": 2}}
    assert cells("apps", "DaemonSet", ds) == ["ds", 3, 3, 2, 3, 2, "disk=ssd", "10m", "c", "i", "a=b"]


def test_controller_revision_row() -> None:
    cr = {"metadata": meta("ds-abc", ownerReferences=[{"apiVersion": "apps/v1", "kind": "DaemonSet",
                                                        "name": "ds", "controller": True}]), "revision": 4}
    assert cells("apps", "ControllerRevision", cr) == ["ds-abc", "daemonset.apps/ds", 4, "10m"]


@pytest.mark.parametrize(("conditions", "deleting", "status"), [
    ([{"type": "Complete", "status": "True"}], False, "Complete"),
    ([{"type": "Failed", "status": "True"}], False, "Failed"),
    ([], True, "Terminating"),
    ([{"type": "Suspended", "status": "True"}], False, "Suspended"),
    ([{"type": "FailureTarget", "status": "True"}], False, "FailureTarget"),
    ([{"type": "Complete", "status": "False"}], False, "Running"),
])
def test_job_status(conditions: list, deleting: bool, status: str) -> None:
    m = meta("j", deletionTimestamp=ts(timedelta(seconds=1))) if deleting else meta("j")
    job = {"metadata": m, "spec": {"completions": 1, "template": {"spec": {"containers": []}}},
           "status": {"conditions": conditions}}
    assert cells("batch", "Job", job)[1] == status


def test_job_completions_and_duration() -> None:
    base = {"metadata": meta("j"), "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}},
                                            "selector": {"matchLabels": {"job-name": "j"}}}}
    done = {**base, "spec": {**base["spec"], "completions": 3},
            "status": {"succeeded": 3, "startTime": ts(timedelta(minutes=9)),
                       "completionTime": ts(timedelta(minutes=7, seconds=30))}}
    assert cells("batch", "Job", done)[2:4] == ["3/3", "90s"]
    running_job = {**base, "spec": {**base["spec"], "parallelism": 4},
                   "status": {"succeeded": 1, "startTime": ts(timedelta(minutes=3))}}
    assert cells("batch", "Job", running_job)[2:4] == ["1/1 of 4", "3m"]
    assert cells("batch", "Job", {**base, "status": {}})[2:4] == ["0/1", ""]
    assert cells("batch", "Job", {**base, "status": {}})[-1] == "job-name=j"


def test_cronjob_row() -> None:
    cj = {"metadata": meta("nightly", timedelta(days=3)),
          "spec": {"schedule": "0 3 * * *", "suspend": False,
                   "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}}},
          "status": {"active": [{"name": "nightly-1"}], "lastScheduleTime": ts(timedelta(hours=9))}}
    assert cells("batch", "CronJob", cj) == ["nightly", "0 3 * * *", "<none>", "False", 1, "9h", "3d", "c", "i",
                                             "<none>"]
    cj["spec"]["timeZone"] = "Europe/Paris"
    del cj["spec"]["suspend"], cj["status"]["lastScheduleTime"]
    assert cells("batch", "CronJob", cj)[2:6] == ["Europe/Paris", "<unset>", 1, "<none>"]


# --------------------------------------------------------------------------- services, nodes


def svc(type_: str, **spec) -> dict:
    return {"metadata": meta("s"), "spec": {"type": type_, "clusterIP": "10.96.0.10",
                                           "clusterIPs": ["10.96.0.10"], "selector": {"app": "x"}, **spec}}


def test_service_rows() -> None:
    assert cells("", "Service", svc("ClusterIP", ports=[{"port": 80, "protocol": "TCP"},
                                                        {"port": 53, "protocol": "UDP"}])) == [
        "s", "ClusterIP", "10.96.0.10", "<none>", "80/TCP,53/UDP", "10m", "app=x"]
    node_port = svc("NodePort", ports=[{"port": 80, "nodePort": 30080, "protocol": "TCP"}],
                    externalIPs=["1.2.3.4"])
    assert cells("", "Service", node_port)[3:5] == ["1.2.3.4", "80:30080/TCP"]
    pending = svc("LoadBalancer", ports=[{"port": 443, "nodePort": 31443}])
    assert cells("", "Service", pending)[3:5] == ["<pending>", "443:31443/TCP"]
    lb = svc("LoadBalancer", ports=[])
    lb["status"] = {"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}, {"hostname": "lb.example.com"}]}}
    assert cells("", "Service", lb)[3:5] == ["5.6.7.8,lb.example.com", "<none>"]
    ext = {"metadata": meta("e"), "spec": {"type": "ExternalName", "externalName": "db.example.com"}}
    assert cells("", "Service", ext) == ["e", "ExternalName", "<none>", "db.example.com", "<none>", "10m",
                                         "<none>"]
    headless = svc("ClusterIP", clusterIP="None", clusterIPs=["None"], ports=[{"port": 5432}])
    assert cells("", "Service", headless)[2:5] == ["None", "<none>", "5432/TCP"]


def node(**kw) -> dict:
    n = {"metadata": meta("node-1", timedelta(days=20), labels={
        "node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/worker": "",
        "kubernetes.io/hostname": "node-1"}),
         "spec": {},
         "status": {"conditions": [{"type": "MemoryPressure", "status": "False"},
                                   {"type": "Ready", "status": "True"}],
                    "addresses": [{"type": "Hostname", "address": "node-1"},
                                  {"type": "InternalIP", "address": "192.168.1.10"}],
                    "nodeInfo": {"kubeletVersion": "v1.32.0", "osImage": "Debian GNU/Linux 12",
                                 "kernelVersion": "6.1.0", "containerRuntimeVersion": "kybernetes://0.1.0"}}}
    n.update(kw)
    return n


def test_node_rows() -> None:
    assert cells("", "Node", node()) == ["node-1", "Ready", "control-plane,worker", "20d", "v1.32.0",
                                         "192.168.1.10", "<none>", "Debian GNU/Linux 12", "6.1.0",
                                         "kybernetes://0.1.0"]
    cordoned = node(spec={"unschedulable": True})
    cordoned["status"]["conditions"][1]["status"] = "Unknown"
    assert cells("", "Node", cordoned)[1] == "NotReady,SchedulingDisabled"
    bare = {"metadata": {"name": "n", "labels": {"kubernetes.io/role": "edge"}}, "status": {}}
    assert cells("", "Node", bare) == ["n", "Unknown", "edge", "<unknown>", "", "<none>", "<none>",
                                       "<unknown>", "<unknown>", "<unknown>"]


# --------------------------------------------------------------------------- other kinds


def test_simple_core_kinds() -> None:
    assert cells("", "Namespace", {"metadata": meta("ns"), "status": {"phase": "Active"}}) == ["ns", "Active",
                                                                                              "10m"]
    assert cells("", "ConfigMap", {"metadata": meta("cm"), "data": {"a": "1"}, "binaryData": {"b": "AA=="}}) \
        == ["cm", 2, "10m"]
    assert cells("", "Secret", {"metadata": meta("s"), "type": "Opaque", "data": {"a": "MQ=="}}) \
        == ["s", "Opaque", 1, "10m"]
    assert cells("", "ServiceAccount", {"metadata": meta("default")}) == ["default", 0, "10m"]


def test_endpoints_and_slices() -> None:
    ep = {"metadata": meta("web"), "subsets": [{"addresses": [{"ip": f"10.0.0.{i}"} for i in range(1, 5)],
                                                "ports": [{"port": 8080}]}]}
    assert cells("", "Endpoints", ep)[1] == "10.0.0.1:8080,10.0.0.2:8080,10.0.0.3:8080 + 1 more..."
    v6 = {"metadata": meta("v6"), "subsets": [{"addresses": [{"ip": "fd00::1"}], "ports": [{"port": 80}]}]}
    assert cells("", "Endpoints", v6)[1] == "[fd00::1]:80"
    assert cells("", "Endpoints", {"metadata": meta("none")})[1] == "<none>"
    es = {"metadata": meta("web-x"), "addressType": "IPv4", "ports": [{"port": 80, "name": "http"}],
          "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}]}
    assert cells("discovery.k8s.io", "EndpointSlice", es) == ["web-x", "IPv4", "80", "10.0.0.1,10.0.0.2",
                                                              "10m"]
    assert cells("discovery.k8s.io", "EndpointSlice", {"metadata": meta("e"), "addressType": "IPv6"})[2:4] == [
        "<unset>", "<unset>"]


def test_events_core_and_events_v1() -> None:
    ev = {"metadata": meta("p.17a"), "involvedObject": {"kind": "Pod", "name": "p", "fieldPath": "spec.c"},
          "reason": "BackOff", "message": "Back-off restarting  \n", "type": "Warning",
          "source": {"component": "kubelet", "host": "node-1"}, "count": 7,
          "firstTimestamp": ts(timedelta(hours=1)), "lastTimestamp": ts(timedelta(seconds=30))}
    assert cells("", "Event", ev) == ["30s", "Warning", "BackOff", "pod/p", "spec.c", "kubelet, node-1",
                                      "Back-off restarting", "60m", 7, "p.17a"]
    v1 = {"metadata": meta("d.1"), "regarding": {"kind": "Deployment", "name": "d"}, "reason": "ScalingReplicaSet",
          "note": "Scaled up", "type": "Normal", "eventTime": "2024-05-01T11:58:00.000000Z",
          "reportingController": "deployment-controller", "reportingInstance": ""}
    assert cells("events.k8s.io", "Event", v1) == ["2m", "Normal", "ScalingReplicaSet", "deployment/d", "",
                                                   "deployment-controller", "Scaled up", "2m", 1, "d.1"]
    v1["series"] = {"count": 4, "lastObservedTime": "2024-05-01T11:59:50.000000Z"}
    assert cells("events.k8s.io", "Event", v1)[0] == "10s"
    assert cells("events.k8s.io", "Event", v1)[8] == 4


def test_volumes_and_quota() -> None:
    pv = {"metadata": meta("pv1"), "spec": {"capacity": {"storage": "10Gi"},
                                            "accessModes": ["ReadWriteMany", "ReadWriteOnce"],
                                            "persistentVolumeReclaimPolicy": "Retain",
                                            "claimRef": {"namespace": "default", "name": "data"},
                                            "storageClassName": "local"},
          "status": {"phase": "Bound"}}
    assert cells("", "PersistentVolume", pv) == ["pv1", "10Gi", "RWO,RWX", "Retain", "Bound", "default/data",
                                                 "local", "<unset>", "", "10m", "<unset>"]
    pvc = {"metadata": meta("data"), "spec": {"volumeName": "pv1", "storageClassName": "local",
                                              "volumeMode": "Filesystem"},
           "status": {"phase": "Bound", "capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"]}}
    assert cells("", "PersistentVolumeClaim", pvc) == ["data", "Bound", "pv1", "10Gi", "RWO", "local",
                                                       "<unset>", "10m", "Filesystem"]
    rq = {"metadata": meta("q"), "status": {"hard": {"pods": "10", "limits.cpu": "4", "requests.cpu": "2"},
                                            "used": {"pods": "3", "requests.cpu": "500m"}}}
    assert cells("", "ResourceQuota", rq) == ["q", "10m", "pods: 3/10, requests.cpu: 500m/2", "limits.cpu: 0/4"]


def test_networking_and_misc_rows() -> None:
    ing = {"metadata": meta("i"), "spec": {"ingressClassName": "kyb", "tls": [{"hosts": ["a.example"]}],
                                           "rules": [{"host": "a.example"}, {"host": "b.example"}, {},
                                                     {"host": "c.example"}, {"host": "d.example"}]},
           "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}}
    assert cells("networking.k8s.io", "Ingress", ing) == ["i", "kyb", "a.example,b.example,c.example + 2 more...",
                                                          "1.2.3.4", "80, 443", "10m"]
    assert cells("networking.k8s.io", "Ingress", {"metadata": meta("j"), "spec": {}})[1:5] == [
        "<none>", "*", "", "80"]
    lease = {"metadata": meta("node-1"), "spec": {"holderIdentity": "node-1"}}
    assert cells("coordination.k8s.io", "Lease", lease) == ["node-1", "node-1", "10m"]
    sc = {"metadata": meta("local", annotations={"storageclass.kubernetes.io/is-default-class": "true"}),
          "provisioner": "kybernetes.io/local"}
    assert cells("storage.k8s.io", "StorageClass", sc) == ["local (default)", "kybernetes.io/local", "Delete",
                                                           "Immediate", False, "10m"]
    pdb = {"metadata": meta("pdb"), "spec": {"minAvailable": "50%"}, "status": {"disruptionsAllowed": 1}}
    assert cells("policy", "PodDisruptionBudget", pdb) == ["pdb", "50%", "N/A", 1, "10m"]
    pc = {"metadata": meta("high"), "value": 1000, "globalDefault": True}
    assert cells("scheduling.k8s.io", "PriorityClass", pc) == ["high", 1000, True, "10m", ""]
    rb = {"metadata": meta("rb"), "roleRef": {"kind": "ClusterRole", "name": "view"},
          "subjects": [{"kind": "User", "name": "alice"}, {"kind": "Group", "name": "devs"},
                       {"kind": "ServiceAccount", "name": "ci", "namespace": "tools"}]}
    assert cells("rbac.authorization.k8s.io", "RoleBinding", rb) == ["rb", "ClusterRole/view", "10m", "alice",
                                                                     "devs", "tools:ci"]


def test_hpa_targets_v1_and_v2() -> None:
    v1 = {"metadata": meta("h"), "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"},
                                          "minReplicas": 1, "maxReplicas": 5,
                                          "targetCPUUtilizationPercentage": 80},
          "status": {"currentReplicas": 2}}
    assert cells("autoscaling", "HorizontalPodAutoscaler", v1) == ["h", "Deployment/web", "cpu: <unknown>/80%",
                                                                   "1", 5, 2, "10m"]
    v2 = {"metadata": meta("h"), "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"},
                                          "maxReplicas": 5, "metrics": [
                                              {"type": "Resource", "resource": {"name": "cpu", "target": {
                                                  "type": "Utilization", "averageUtilization": 60}}},
                                              {"type": "Pods", "pods": {"target": {"averageValue": "1k"}}},
                                              {"type": "Resource", "resource": {"name": "memory", "target": {
                                                  "averageValue": "100Mi"}}}]},
          "status": {"currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {
              "averageUtilization": 42}}}]}}
    assert cells("autoscaling", "HorizontalPodAutoscaler", v2)[2:4] == [
        "cpu: 42%/60%, <unknown>/1k + 1 more...", "<unset>"]


# --------------------------------------------------------------------------- the Table envelope


def test_table_envelope_and_include_object() -> None:
    p = pod(statuses=[running()])
    t = table("", "Pod", [p], now=NOW, list_meta={"resourceVersion": "42", "continue": "abc"})
    assert t["kind"] == "Table" and t["apiVersion"] == "meta.k8s.io/v1"
    assert t["metadata"] == {"resourceVersion": "42", "continue": "abc"}
    assert t["rows"][0]["object"] == {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                      "metadata": p["metadata"]}
    assert table("", "Pod", [p], now=NOW, include_object="Object")["rows"][0]["object"] is p
    assert "object" not in table("", "Pod", [p], now=NOW, include_object="None")["rows"][0]
    assert table("", "Pod", [], now=NOW)["metadata"] == {}
    with pytest.raises(ValueError):
        table("", "Pod", [p], include_object="Everything")


def test_naive_now_and_default_now() -> None:
    p = pod(statuses=[running()])
    assert cells("", "Pod", p)[4] == "10m"
    assert table("", "Pod", [p], now=NOW.replace(tzinfo=None))["rows"][0]["cells"][4] == "10m"
    recent = pod(statuses=[running()])
    recent["metadata"]["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert table("", "Pod", [recent])["rows"][0]["cells"][4] in ("0s", "1s", "2s")


def test_bad_timestamps_do_not_crash() -> None:
    p = pod(statuses=[running()])
    p["metadata"]["creationTimestamp"] = "yesterday"
    assert cells("", "Pod", p)[4] == "<invalid>"
    del p["metadata"]["creationTimestamp"]
    assert cells("", "Pod", p)[4] == "<unknown>"


# --------------------------------------------------------------------------- generic and custom resources


@pytest.mark.parametrize(("group", "kind"), [
    ("rbac.authorization.k8s.io", "Role"), ("rbac.authorization.k8s.io", "ClusterRole"), ("", "LimitRange"),
    ("apiextensions.k8s.io", "CustomResourceDefinition"), ("example.com", "Widget"),
])
def test_generic_fallback(group: str, kind: str) -> None:
    obj = {"metadata": {"name": "thing", "creationTimestamp": "2024-04-30T10:00:00+02:00"}}
    t = table(group, kind, [obj], now=NOW)
    assert [(c["name"], c["type"], c["format"]) for c in t["columnDefinitions"]] == [
        ("Name", "string", "name"), ("Created At", "date", "")]
    assert t["rows"][0]["cells"] == ["thing", "2024-04-30T08:00:00Z"]
    assert table(group, kind, [{"metadata": {"name": "x"}}], now=NOW)["rows"][0]["cells"][1] == \
        "0001-01-01T00:00:00Z"


def test_jsonpath_subset() -> None:
    doc = {"spec": {"replicas": 3, "a.b": {"c": 1}, "items": [{"n": 1}, {"n": 2}]},
           "status": {"conditions": [{"type": "Synced", "status": "False"},
                                     {"type": "Ready", "status": "True", "age": 5}]}}
    assert jsonpath(doc, ".spec.replicas") == [3]
    assert jsonpath(doc, "{.spec.replicas}") == [3]
    assert jsonpath(doc, "$.spec['a.b'].c") == [1]
    assert jsonpath(doc, ".spec.items[1].n") == [2]
    assert jsonpath(doc, ".spec.items[-1].n") == [2]
    assert jsonpath(doc, ".spec.items[*].n") == [1, 2]
    assert jsonpath(doc, ".spec.items[5].n") == []
    assert jsonpath(doc, ".spec.missing.deeper") == []
    assert jsonpath(doc, '.status.conditions[?(@.type=="Ready")].status') == ["True"]
    assert jsonpath(doc, ".status.conditions[?(@.type!='Ready')].type") == ["Synced"]
    assert jsonpath(doc, ".status.conditions[?(@.age)].type") == ["Ready"]
    assert jsonpath(doc, ".status.conditions[?(@.age > 3)].type") == ["Ready"]
    assert jsonpath(doc, ".") == [doc]
    for bad in (".spec[", ".spec[foo]", ".spec..x", ".spec[?(@.a ~ 1)]"):
        with pytest.raises(JSONPathError):
            jsonpath(doc, bad)


def test_custom_resource_printer_columns() -> None:
    columns = [
        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Ratio", "type": "number", "jsonPath": ".status.ratio"},
        {"name": "Paused", "type": "boolean", "jsonPath": ".spec.paused"},
        {"name": "Labels", "type": "string", "jsonPath": ".metadata.labels", "priority": 1},
        {"name": "Synced", "type": "date", "jsonPath": ".status.lastSync", "description": "last sync"},
    ]
    obj = {"apiVersion": "example.com/v1", "kind": "Widget",
           "metadata": {"name": "w1", "labels": {"b": "2", "a": "1"}},
           "spec": {"replicas": 2.0, "paused": True},
           "status": {"conditions": [{"type": "Ready", "status": "True"}], "ratio": 1, "lastSync": ts(
               timedelta(minutes=4))}}
    t = custom_resource_table(columns, [obj], now=NOW)
    assert [c["name"] for c in t["columnDefinitions"]] == ["Name", "Replicas", "Ready", "Ratio", "Paused",
                                                           "Labels", "Synced"]
    assert t["columnDefinitions"][5]["priority"] == 1
    assert t["columnDefinitions"][6]["description"] == "last sync"
    assert t["rows"][0]["cells"] == ["w1", 2, "True", 1.0, True, "map[a:1 b:2]", "4m"]
    sparse = {"metadata": {"name": "w2"}, "spec": {"replicas": "two"}, "status": {"lastSync": "never"}}
    assert custom_resource_table(columns, [sparse], now=NOW)["rows"][0]["cells"] == [
        "w2", None, None, None, None, None, "<invalid>"]
    same = table("example.com", "Widget", [obj], now=NOW, printer_columns=columns)
    assert same["rows"][0]["cells"] == t["rows"][0]["cells"]


def test_custom_resource_without_columns_gets_age() -> None:
    t = table("example.com", "Widget", [{"metadata": {"name": "w", "creationTimestamp": ts(timedelta(hours=5))}}],
              now=NOW, printer_columns=[])
    assert [(c["name"], c["type"]) for c in t["columnDefinitions"]] == [("Name", "string"), ("Age", "date")]
    assert t["rows"][0]["cells"] == ["w", "5h"]


def test_custom_resource_bad_jsonpath_rejected() -> None:
    with pytest.raises(JSONPathError):
        custom_resource_table([{"name": "X", "type": "string", "jsonPath": ".spec[bad"}], [])
