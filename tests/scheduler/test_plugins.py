"""Each plugin on its own, on plain dicts."""

from __future__ import annotations

from kybernetes.scheduler.framework import SKIP, UNRESOLVABLE, UNSCHEDULABLE
from kybernetes.scheduler.nodeinfo import Cache, NodeInfo, PodInfo, pod_requests
from kybernetes.scheduler.plugins import (
    BalancedAllocation,
    InterPodAffinity,
    NodeAffinity,
    NodeName,
    NodePorts,
    NodeResourcesFit,
    NodeUnschedulable,
    PodTopologySpread,
    TaintToleration,
)
from kybernetes.scheduler.plugins.nodeaffinity import REASON as AFFINITY_REASON

from .helpers import make_node, make_pod


def ni(node: dict, *pods: dict) -> NodeInfo:
    return NodeInfo(node, pods)


def cache_of(nodes: list[dict], pods: list[dict]) -> Cache:
    c = Cache()
    for n in nodes:
        c.add_node(n)
    for p in pods:
        c.add_pod(p)
    return c


# ---------------------------------------------------------------------------- requests


def test_pod_requests_sum_containers_max_init_sidecars_and_overhead():
    spec = {
        "containers": [{"resources": {"requests": {"cpu": "100m", "memory": "100Mi"}}},
                       {"resources": {"requests": {"cpu": "200m"}}}],
        "initContainers": [{"resources": {"requests": {"cpu": "1", "memory": "50Mi"}}}],
        "overhead": {"cpu": "10m"},
    }
    r = pod_requests(spec)
    assert r["cpu"] == 1010  # the init step (1 cpu) outweighs the containers (300m); plus overhead
    assert r["memory"] == 100 * 2**20
    sidecar = {"containers": [{"resources": {"requests": {"cpu": "500m"}}}],
               "initContainers": [{"restartPolicy": "Always", "resources": {"requests": {"cpu": "200m"}}},
                                  {"resources": {"requests": {"cpu": "600m"}}}]}
    # sidecar runs alongside everything: 500+200 for the app, 200+600 during the second init step
    assert pod_requests(sidecar)["cpu"] == 800
    assert pod_requests({"containers": [{"resources": {"limits": {"cpu": "2"}}}]})["cpu"] == 2000


def test_non_zero_requests_for_scoring():
    pi = PodInfo(make_pod("p"))
    assert (pi.cpu, pi.mem) == (0, 0)
    assert (pi.nz_cpu, pi.nz_mem) == (100, 200 * 2**20)


# ---------------------------------------------------------------------------- NodeResourcesFit


def test_fit_reasons_and_pod_count():
    fit = NodeResourcesFit()
    node = make_node("n", cpu="1", memory="1Gi", pods="2", **{"example.com/gpu": "1"})
    full = ni(node, make_pod("a", "800m", "512Mi", node="n"))
    assert fit.filter(PodInfo(make_pod("p", "100m", "100Mi")), full) is None
    st = fit.filter(PodInfo(make_pod("p", "300m", "600Mi")), full)
    assert st.code == UNSCHEDULABLE and st.reasons == ("Insufficient cpu", "Insufficient memory")
    two = ni(node, make_pod("a", node="n"), make_pod("b", node="n"))
    assert fit.filter(PodInfo(make_pod("p")), two).reasons == ("Too many pods",)
    gpu_pod = make_pod("g")
    gpu_pod["spec"]["containers"][0]["resources"] = {"requests": {"example.com/gpu": "2"}}
    assert fit.filter(PodInfo(gpu_pod), full).reasons == ("Insufficient example.com/gpu",)


def test_least_and_most_allocated_and_balanced():
    empty = ni(make_node("e", cpu="4", memory="4Gi"))
    busy = ni(make_node("b", cpu="4", memory="4Gi"), make_pod("x", "3", "3Gi", node="b"))
    pod = PodInfo(make_pod("p", "1", "1Gi"))
    least, most = NodeResourcesFit("LeastAllocated"), NodeResourcesFit("MostAllocated")
    assert least.score(pod, empty) == 75 and least.score(pod, busy) == 0
    assert most.score(pod, empty) == 25 and most.score(pod, busy) == 100
    ratio = NodeResourcesFit("RequestedToCapacityRatio", shape=[(0, 0), (100, 10)])
    assert ratio.score(pod, empty) == 25
    bal = BalancedAllocation()
    skewed = ni(make_node("s", cpu="4", memory="4Gi"), make_pod("x", "3", node="s"))
    assert bal.score(pod, empty) == 100
    assert bal.score(pod, skewed) < bal.score(pod, empty)


# ---------------------------------------------------------------------------- node plugins


def test_node_name_and_unschedulable():
    pod = PodInfo(make_pod("p"))
    pod.node_name = "a"
    assert NodeName().filter(pod, ni(make_node("b"))).code == UNRESOLVABLE
    assert NodeName().filter(pod, ni(make_node("a"))) is None
    assert NodeName().pre_filter(PodInfo(make_pod("q")), Cache()) is SKIP
    cordoned = ni(make_node("c", unschedulable=True))
    st = NodeUnschedulable().filter(PodInfo(make_pod("p")), cordoned)
    assert st.reasons == ("node(s) were unschedulable",)
    tolerant = make_pod("t", tolerations=[{"key": "node.kubernetes.io/unschedulable", "operator": "Exists",
                                           "effect": "NoSchedule"}])
    assert NodeUnschedulable().filter(PodInfo(tolerant), cordoned) is None


def test_node_selector_and_affinity():
    na = NodeAffinity()
    ssd = ni(make_node("a", labels={"disk": "ssd", "gen": "5"}))
    hdd = ni(make_node("b", labels={"disk": "hdd"}))
    sel = PodInfo(make_pod("p", nodeSelector={"disk": "ssd"}))
    assert na.filter(sel, ssd) is None
    assert na.filter(sel, hdd).reasons == (AFFINITY_REASON,)
    req = PodInfo(make_pod("p", affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["4"]}]},
                              {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}]}}}))
    assert na.filter(req, ssd) is None and na.filter(req, hdd) is None
    assert na.filter(req, ni(make_node("c"))) is not None
    pref = PodInfo(make_pod("p", affinity={"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 10, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}},
        {"weight": 5, "preference": {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}}]}}))
    scores = [na.score(pref, n) for n in (ssd, hdd, ni(make_node("c")))]
    assert scores == [15, 5, 0]
    na.normalize(scores)
    assert scores == [100, 33, 0]


def test_taints_and_tolerations():
    tt = TaintToleration()
    node = ni(make_node("n", taints=[{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
                                     {"key": "soft", "effect": "PreferNoSchedule"}]))
    st = tt.filter(PodInfo(make_pod("p")), node)
    assert st.code == UNRESOLVABLE and st.reasons == ("node(s) had untolerated taint {dedicated: gpu}",)
    tolerating = PodInfo(make_pod("p", tolerations=[{"key": "dedicated", "operator": "Equal", "value": "gpu",
                                                     "effect": "NoSchedule"}]))
    assert tt.filter(tolerating, node) is None
    wrong_value = PodInfo(make_pod("p", tolerations=[{"key": "dedicated", "value": "cpu"}]))
    assert tt.filter(wrong_value, node) is not None
    assert tt.filter(PodInfo(make_pod("p", tolerations=[{"operator": "Exists"}])), node) is None
    no_exec = ni(make_node("x", taints=[{"key": "k", "effect": "NoExecute"}]))
    assert tt.filter(PodInfo(make_pod("p")), no_exec) is not None
    clean = ni(make_node("c"))
    state = tt.pre_score(tolerating, Cache(), [node, clean])
    scores = [tt.score(tolerating, n, state) for n in (node, clean)]
    tt.normalize(scores)
    assert scores == [0, 100]


def test_host_ports():
    np = NodePorts()
    web = {"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}
    node = ni(make_node("n"), {**make_pod("a", node="n"), "spec": {**web, "nodeName": "n"}})
    pod = PodInfo({**make_pod("p"), "spec": web})
    assert np.filter(pod, node).reasons == ("node(s) didn't have free ports for the requested pod ports",)
    udp = {"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080, "protocol": "UDP"}]}]}
    assert np.filter(PodInfo({**make_pod("p"), "spec": udp}), node) is None
    assert np.pre_filter(PodInfo(make_pod("q")), Cache()) is SKIP


# ---------------------------------------------------------------------------- inter-pod affinity


def _anti(app: str, key: str = "kubernetes.io/hostname") -> dict:
    return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key}]}}


def test_pod_anti_affinity_and_existing_anti_affinity():
    nodes = [make_node("a", labels={"zone": "z1"}), make_node("b", labels={"zone": "z1"}),
             make_node("c", labels={"zone": "z2"})]
    running = make_pod("web-1", labels={"app": "web"}, node="a", affinity=_anti("web", "zone"))
    cache = cache_of(nodes, [running])
    ipa = InterPodAffinity()
    incoming = PodInfo(make_pod("web-2", labels={"app": "web"}, affinity=_anti("web", "zone")))
    state = ipa.pre_filter(incoming, cache)
    results = {n: ipa.filter(incoming, cache.nodes[n], state) for n in "abc"}
    assert results["a"].reasons == ("node(s) didn't match pod anti-affinity rules",)
    assert results["b"].reasons == ("node(s) didn't match pod anti-affinity rules",)
    assert results["c"] is None
    # An unrelated pod is kept out of zone z1 only by web-1's own anti-affinity if it matches it.
    other = PodInfo(make_pod("db", labels={"app": "web"}))
    st = ipa.filter(other, cache.nodes["b"], ipa.pre_filter(other, cache))
    assert st.reasons == ("node(s) didn't satisfy existing pods anti-affinity rules",)
    plain = PodInfo(make_pod("x", labels={"app": "db"}))
    assert ipa.filter(plain, cache.nodes["b"], ipa.pre_filter(plain, cache)) is None
    assert ipa.pre_filter(plain, cache_of(nodes, [])) is SKIP


def test_pod_affinity_required_and_first_pod_of_group():
    nodes = [make_node("a", labels={"zone": "z1"}), make_node("b", labels={"zone": "z2"})]
    aff = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "zone"}]}}
    ipa = InterPodAffinity()
    first = PodInfo(make_pod("c1", labels={"app": "cache"}, affinity=aff))
    empty = cache_of(nodes, [])
    assert ipa.filter(first, empty.nodes["a"], ipa.pre_filter(first, empty)) is None
    cache = cache_of(nodes, [make_pod("c1", labels={"app": "cache"}, node="b")])
    second = PodInfo(make_pod("c2", labels={"app": "cache"}, affinity=aff))
    state = ipa.pre_filter(second, cache)
    assert ipa.filter(second, cache.nodes["b"], state) is None
    assert ipa.filter(second, cache.nodes["a"], state).reasons == ("node(s) didn't match pod affinity rules",)


def test_preferred_pod_affinity_scores():
    nodes = [make_node("a"), make_node("b")]
    cache = cache_of(nodes, [make_pod("x", labels={"app": "db"}, node="a")])
    pod = PodInfo(make_pod("p", affinity={"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 50, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "db"}},
                                           "topologyKey": "kubernetes.io/hostname"}}]}}))
    ipa = InterPodAffinity()
    state = ipa.pre_score(pod, cache, cache.node_list)
    scores = [ipa.score(pod, n, state) for n in cache.node_list]
    ipa.normalize(scores)
    assert scores == [100, 0]


# ---------------------------------------------------------------------------- topology spread


def test_topology_spread_filter_and_score():
    nodes = [make_node("a", labels={"zone": "z1"}), make_node("b", labels={"zone": "z2"}), make_node("nolabel")]
    pods = [make_pod("w1", labels={"app": "w"}, node="a"), make_pod("w2", labels={"app": "w"}, node="a")]
    cache = cache_of(nodes, pods)
    pts = PodTopologySpread()
    hard = {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "w"}}}
    pod = PodInfo(make_pod("w3", labels={"app": "w"}, topologySpreadConstraints=[hard]))
    state = pts.pre_filter(pod, cache)
    assert pts.filter(pod, cache.nodes["a"], state).reasons == (
        "node(s) didn't match pod topology spread constraints",)
    assert pts.filter(pod, cache.nodes["b"], state) is None
    assert pts.filter(pod, cache.nodes["nolabel"], state).code == UNRESOLVABLE
    soft = dict(hard, whenUnsatisfiable="ScheduleAnyway")
    spod = PodInfo(make_pod("w3", labels={"app": "w"}, topologySpreadConstraints=[soft]))
    assert pts.pre_filter(spod, cache) is SKIP
    feasible = [cache.nodes["a"], cache.nodes["b"]]
    sstate = pts.pre_score(spod, cache, feasible)
    scores = [pts.score(spod, n, sstate) for n in feasible]
    pts.normalize(scores, sstate)
    assert scores[1] == 100 and scores[0] < scores[1]
