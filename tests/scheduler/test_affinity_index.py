"""Inter-pod affinity and topology spread on the Cache's affinity index: the upstream semantics
(symmetry, namespaces, weights, normalisation) and the index staying right as the cache changes.

The last test replays random cache events and compares both plugins with a naive oracle that
walks every placed pod, as the definitions say.
"""

from __future__ import annotations

import math
import random
from collections import Counter

from kybernetes.scheduler.framework import SKIP, UNRESOLVABLE, UNSCHEDULABLE
from kybernetes.scheduler.nodeinfo import HOSTNAME_LABEL, Cache, NodeInfo, PodInfo, pod_key
from kybernetes.scheduler.plugins import InterPodAffinity, PodTopologySpread
from kybernetes.scheduler.plugins.interpodaffinity import (
    REASON_AFFINITY,
    REASON_ANTI_AFFINITY,
    REASON_EXISTING_ANTI_AFFINITY,
)
from kybernetes.scheduler.plugins.nodeaffinity import matches_node_selector_and_affinity
from kybernetes.scheduler.plugins.podtopologyspread import REASON_SKEW
from kybernetes.scheduler.plugins.tainttoleration import tolerates

from .helpers import make_node, make_pod


def cache_of(nodes: list[dict], pods: list[dict] = ()) -> Cache:
    c = Cache()
    for n in nodes:
        c.add_node(n)
    for p in pods:
        c.add_pod(p)
    return c


def term(app: str, key: str = "zone", **extra: object) -> dict:
    return {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key, **extra}


def required(kind: str, *terms: dict) -> dict:
    return {kind: {"requiredDuringSchedulingIgnoredDuringExecution": list(terms)}}


def preferred(kind: str, *weighted: tuple[int, dict]) -> dict:
    return {kind: {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": w, "podAffinityTerm": t} for w, t in weighted]}}


def reasons(plugin, pod: PodInfo, cache: Cache) -> dict[str, str | None]:
    state = plugin.pre_filter(pod, cache)
    if state is SKIP:
        return {ni.name: None for ni in cache.node_list}
    out = {}
    for ni in cache.node_list:
        st = plugin.filter(pod, ni, state)
        out[ni.name] = None if st is None else st.message()
    return out


def raw_scores(plugin, pod: PodInfo, cache: Cache, nodes: list[NodeInfo] | None = None) -> list[int] | None:
    nodes = cache.node_list if nodes is None else nodes
    state = plugin.pre_score(pod, cache, nodes)
    if state is SKIP:
        return None
    return [plugin.score(pod, ni, state) for ni in nodes]


ZONES = [make_node("a1", labels={"zone": "a"}), make_node("a2", labels={"zone": "a"}),
         make_node("b1", labels={"zone": "b"})]


# ---------------------------------------------------------------------------- required terms


def test_existing_pods_anti_affinity_is_symmetric():
    # db-1 refuses any app=web pod of its namespace in its zone; web itself has no terms.
    cache = cache_of(ZONES, [make_pod("db-1", node="a1", labels={"app": "db"},
                                      affinity=required("podAntiAffinity", term("web")))])
    ipa = InterPodAffinity()
    web = PodInfo(make_pod("web", labels={"app": "web"}))
    assert reasons(ipa, web, cache) == {"a1": REASON_EXISTING_ANTI_AFFINITY, "a2": REASON_EXISTING_ANTI_AFFINITY,
                                        "b1": None}
    assert ipa.filter(web, cache.nodes["a2"], ipa.pre_filter(web, cache)).code == UNSCHEDULABLE
    # The term only looks at db-1's own namespace, and only at app=web.
    assert set(reasons(ipa, PodInfo(make_pod("web", labels={"app": "web"}, namespace="other")), cache).values()) \
        == {None}
    assert set(reasons(ipa, PodInfo(make_pod("api", labels={"app": "api"})), cache).values()) == {None}
    # Once db-1 is gone nothing is left to check, and plain pods skip the plugin again.
    cache.remove_pod(make_pod("db-1", node="a1"))
    assert cache.anti_affinity_pods == 0 and not cache.anti_affinity_terms
    assert ipa.pre_filter(web, cache) is SKIP


def test_required_affinity_and_anti_affinity_reasons():
    cache = cache_of(ZONES + [make_node("nozone")], [make_pod("cache-1", node="b1", labels={"app": "cache"})])
    ipa = InterPodAffinity()
    near = PodInfo(make_pod("api", labels={"app": "api"}, affinity=required("podAffinity", term("cache"))))
    assert reasons(ipa, near, cache) == {"a1": REASON_AFFINITY, "a2": REASON_AFFINITY, "b1": None,
                                         "nozone": REASON_AFFINITY}
    assert ipa.filter(near, cache.nodes["a1"], ipa.pre_filter(near, cache)).code == UNRESOLVABLE
    away = PodInfo(make_pod("api", labels={"app": "api"}, affinity=required("podAntiAffinity", term("cache"))))
    assert reasons(ipa, away, cache) == {"a1": None, "a2": None, "b1": REASON_ANTI_AFFINITY, "nozone": None}
    # Every term must match the same pod for affinity: cache-1 is not app=db.
    both = PodInfo(make_pod("api", labels={"app": "api"},
                            affinity=required("podAffinity", term("cache"), term("db"))))
    assert set(reasons(ipa, both, cache).values()) == {REASON_AFFINITY}


def test_namespaces_and_namespace_selector():
    nodes = ZONES
    cache = cache_of(nodes, [make_pod("w-prod", node="a1", labels={"app": "web"}, namespace="prod"),
                             make_pod("w-dev", node="b1", labels={"app": "web"}, namespace="dev")])
    cache.set_namespace({"metadata": {"name": "prod", "labels": {"env": "production"}}})
    cache.set_namespace({"metadata": {"name": "dev", "labels": {"env": "development"}}})
    ipa = InterPodAffinity()

    def blocked(t: dict) -> set[str]:
        pod = PodInfo(make_pod("new", labels={"app": "new"}, namespace="tools",
                               affinity=required("podAntiAffinity", t)))
        return {n for n, r in reasons(ipa, pod, cache).items() if r}

    assert blocked(term("web")) == set()  # own namespace (tools) only
    assert blocked(term("web", namespaces=["prod"])) == {"a1", "a2"}
    assert blocked(term("web", namespaceSelector={})) == {"a1", "a2", "b1"}
    assert blocked(term("web", namespaceSelector={"matchLabels": {"env": "development"}})) == {"b1"}
    # namespaces and namespaceSelector are ORed.
    assert blocked(term("web", namespaces=["prod"],
                        namespaceSelector={"matchLabels": {"env": "development"}})) == {"a1", "a2", "b1"}
    # A namespace relabelled counts with its new labels at once.
    cache.set_namespace({"metadata": {"name": "prod", "labels": {"env": "development"}}})
    assert blocked(term("web", namespaceSelector={"matchLabels": {"env": "development"}})) == {"a1", "a2", "b1"}
    # The symmetric direction: an existing pod's term with a namespaceSelector selects the incoming pod.
    cache.add_pod(make_pod("guard", node="b1", namespace="tools", labels={"app": "guard"},
                           affinity=required("podAntiAffinity",
                                             term("new", namespaceSelector={"matchLabels": {"env": "ops"}}))))
    cache.set_namespace({"metadata": {"name": "ops", "labels": {"env": "ops"}}})
    ops = PodInfo(make_pod("x", labels={"app": "new"}, namespace="ops"))
    assert reasons(ipa, ops, cache)["b1"] == REASON_EXISTING_ANTI_AFFINITY
    assert set(reasons(ipa, PodInfo(make_pod("x", labels={"app": "new"}, namespace="dev")), cache).values()) \
        == {None}


def test_match_label_keys_fold_the_declaring_pods_labels():
    # Each version keeps away from web pods of its own version only.
    def web(name: str, version: str, node: str | None = None) -> dict:
        t = term("web", "kubernetes.io/hostname", matchLabelKeys=["version"])
        return make_pod(name, node=node, labels={"app": "web", "version": version},
                        affinity=required("podAntiAffinity", t))

    cache = cache_of(ZONES, [web("v1-a", "v1", "a1"), web("v2-b", "v2", "b1")])
    assert len(cache.anti_affinity_terms) == 2  # the folded selectors differ
    ipa = InterPodAffinity()
    assert reasons(ipa, PodInfo(web("new", "v1")), cache) == {"a1": REASON_ANTI_AFFINITY, "a2": None, "b1": None}
    assert reasons(ipa, PodInfo(web("new", "v2")), cache) == {"a1": None, "a2": None, "b1": REASON_ANTI_AFFINITY}


def test_first_pod_of_a_self_affine_group_is_let_in_anywhere():
    ipa = InterPodAffinity()
    aff = required("podAffinity", term("cache"))
    first = PodInfo(make_pod("c1", labels={"app": "cache"}, affinity=aff))
    cache = cache_of(ZONES)
    assert set(reasons(ipa, first, cache).values()) == {None}
    # Not when the pod does not match its own terms.
    other = PodInfo(make_pod("c1", labels={"app": "other"}, affinity=aff))
    assert set(reasons(ipa, other, cache).values()) == {REASON_AFFINITY}


def test_a_pod_never_counts_against_itself():
    # A stale copy of the pod being scheduled is still placed (e.g. the informer lags a delete).
    anti = required("podAntiAffinity", term("solo"))
    cache = cache_of(ZONES, [make_pod("solo", node="a1", labels={"app": "solo"}, affinity=anti)])
    ipa = InterPodAffinity()
    assert set(reasons(ipa, PodInfo(make_pod("solo", labels={"app": "solo"}, affinity=anti)), cache).values()) \
        == {None}
    assert reasons(ipa, PodInfo(make_pod("solo-2", labels={"app": "solo"}, affinity=anti)), cache)["a2"] == \
        REASON_ANTI_AFFINITY
    pref = preferred("podAntiAffinity", (10, term("solo")))
    cache = cache_of(ZONES, [make_pod("solo", node="a1", labels={"app": "solo"}, affinity=pref)])
    scores = raw_scores(ipa, PodInfo(make_pod("solo", labels={"app": "solo"}, affinity=pref)), cache)
    assert scores is None or set(scores) == {0}
    assert raw_scores(ipa, PodInfo(make_pod("solo-2", labels={"app": "solo"}, affinity=pref)), cache) == \
        [-20, -20, 0]


# ---------------------------------------------------------------------------- preferred terms


def test_preferred_weights_symmetry_and_normalisation():
    nodes = ZONES + [make_node("c1", labels={"zone": "c"}), make_node("nozone")]
    pods = [
        make_pod("db", node="a1", labels={"app": "db"}),
        # Existing pods' terms that select the incoming app=api pod score it too:
        make_pod("likes-api", node="b1", labels={"app": "x"},
                 affinity=preferred("podAffinity", (7, term("api")))),
        make_pod("avoids-api", node="c1", labels={"app": "y"},
                 affinity=preferred("podAntiAffinity", (3, term("api")))),
        make_pod("needs-api", node="c1", labels={"app": "z"}, affinity=required("podAffinity", term("api"))),
        # Required anti-affinity of existing pods filters; it does not score.
        make_pod("hates-api", node="a2", labels={"app": "w"}, affinity=required("podAntiAffinity", term("api"))),
    ]
    cache = cache_of(nodes, pods)
    api = PodInfo(make_pod("api", labels={"app": "api"}, affinity={
        **preferred("podAffinity", (20, term("db"))), **preferred("podAntiAffinity", (5, term("x")))}))
    ipa = InterPodAffinity()
    # zone a: +20 (db); zone b: +7 (likes-api) -5 (own anti vs x); zone c: -3 +1 (hard weight 1); no zone: 0
    assert raw_scores(ipa, api, cache) == [20, 20, 2, -2, 0]
    assert raw_scores(InterPodAffinity(hard_pod_affinity_weight=10), api, cache) == [20, 20, 2, 7, 0]
    scores = raw_scores(ipa, api, cache)
    ipa.normalize(scores)
    assert scores == [100, 100, 18, 0, 9]  # (s - min) * 100 // (max - min)
    flat = [4, 4, 4]
    ipa.normalize(flat)
    assert flat == [0, 0, 0]
    # Nothing with preferred terms anywhere: the plugin does not score at all.
    plain = PodInfo(make_pod("p", labels={"app": "nothing-selects-me"}))
    assert raw_scores(ipa, plain, cache_of(nodes, [make_pod("db", node="a1", labels={"app": "db"})])) is None
    assert raw_scores(ipa, plain, cache) is None  # the terms there select app=api only


def test_preferred_weight_counts_every_matching_pod():
    cache = cache_of(ZONES, [make_pod(f"w{i}", node="b1", labels={"app": "web"}) for i in range(3)]
                     + [make_pod("w9", node="a1", labels={"app": "web"})])
    pod = PodInfo(make_pod("p", affinity=preferred("podAntiAffinity", (10, term("web", HOSTNAME_LABEL)))))
    assert raw_scores(InterPodAffinity(), pod, cache) == [-10, 0, -30]


# ---------------------------------------------------------------------------- the index follows the cache


def assert_index_consistent(cache: Cache) -> None:
    want: Counter = Counter()
    for ni in cache.node_list:
        for pi in ni.pods.values():
            want[(pi.namespace, pi.group_key, ni.name)] += 1
    got: Counter = Counter()
    for ns, groups in cache.pod_groups.items():
        for gk, g in groups.items():
            assert g.nodes, "empty groups are dropped"
            for ni, n in g.nodes.items():
                assert cache.nodes[ni.name] is ni
                got[(ns, gk, ni.name)] += n
    assert got == want
    terms: Counter = Counter()
    for ni in cache.node_list:
        for pi in ni.pods.values():
            for t in pi.anti_affinity_terms:
                terms[("anti", t.key, ni.name)] += 1
            for t in pi.affinity_terms + pi.preferred_affinity + pi.preferred_anti_affinity:
                terms[("score", t.key, ni.name)] += 1
    got = Counter()
    for index, kind in ((cache.anti_affinity_terms, "anti"), (cache.scoring_terms, "score")):
        for tg in index.values():
            for ni, n in tg.nodes.items():
                got[(kind, tg.term.key, ni.name)] += n
    assert got == terms


def test_index_follows_pods_nodes_and_relabels():
    anti = required("podAntiAffinity", term("web"))
    cache = cache_of(ZONES, [make_pod("w1", node="a1", labels={"app": "web"}, affinity=anti)])
    ipa = InterPodAffinity()
    new = PodInfo(make_pod("w2", labels={"app": "web"}, affinity=anti))
    assert reasons(ipa, new, cache) == {"a1": REASON_ANTI_AFFINITY, "a2": REASON_ANTI_AFFINITY, "b1": None}
    # The node moves to zone b: the counts follow its labels.
    cache.update_node(make_node("a1", labels={"zone": "b"}))
    assert reasons(ipa, new, cache) == {"a1": REASON_ANTI_AFFINITY, "a2": None, "b1": REASON_ANTI_AFFINITY}
    # The pod is relabelled: it no longer matches, but its own term still keeps app=web away.
    cache.update_pod(make_pod("w1", node="a1", labels={"app": "old"}, affinity=anti))
    assert reasons(ipa, new, cache)["b1"] == REASON_EXISTING_ANTI_AFFINITY
    assert reasons(ipa, PodInfo(make_pod("w2", labels={"app": "web"})), cache)["b1"] == \
        REASON_EXISTING_ANTI_AFFINITY
    cache.update_pod(make_pod("w1", node="a1", labels={"app": "old"}))
    assert reasons(ipa, new, cache)["b1"] is None
    assert cache.anti_affinity_pods == 0 and not cache.anti_affinity_terms
    assert_index_consistent(cache)
    cache.update_pod(make_pod("w1", node="a1", labels={"app": "web"}, affinity=anti))
    # Its node goes away: its pods do not count; they come back with the node.
    cache.remove_node(make_node("a1"))
    assert set(reasons(ipa, new, cache).values()) == {None}
    assert not cache.pod_groups and not cache.anti_affinity_terms and cache.anti_affinity_pods == 0
    cache.add_node(make_node("a1", labels={"zone": "a"}))
    assert reasons(ipa, new, cache)["a2"] == REASON_ANTI_AFFINITY
    assert_index_consistent(cache)
    # Assumed, then forgotten.
    cache.assume_pod(new, "b1")
    assert reasons(ipa, PodInfo(make_pod("w3", labels={"app": "web"}, affinity=anti)), cache)["b1"] == \
        REASON_ANTI_AFFINITY
    cache.forget_pod(new.key)
    cache.remove_pod(make_pod("w1", node="a1"))
    assert not cache.pod_groups and not cache.anti_affinity_terms and not cache.scoring_terms
    assert cache.anti_affinity_pods == 0


def test_spread_counts_follow_the_index():
    hard = {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "w"}}}
    nodes = ZONES + [make_node("c1", labels={"zone": "c"}, taints=[{"key": "k", "effect": "NoSchedule"}])]
    pods = [make_pod("w1", node="a1", labels={"app": "w"}), make_pod("w2", node="b1", labels={"app": "w"}),
            make_pod("other-ns", node="b1", labels={"app": "w"}, namespace="x")]
    cache = cache_of(nodes, pods)
    pts = PodTopologySpread()
    pod = PodInfo(make_pod("w3", labels={"app": "w"}, topologySpreadConstraints=[hard]))
    state = pts.pre_filter(pod, cache)
    assert state.counts == [{"a": 1, "b": 1, "c": 0}] and state.mins == [0]
    assert reasons(pts, pod, cache) == {"a1": REASON_SKEW, "a2": REASON_SKEW, "b1": REASON_SKEW, "c1": None}
    # With nodeTaintsPolicy: Honor the tainted zone is no domain: the minimum becomes 1.
    honor = PodInfo(make_pod("w3", labels={"app": "w"}, topologySpreadConstraints=[
        dict(hard, nodeTaintsPolicy="Honor")]))
    assert pts.pre_filter(honor, cache).counts == [{"a": 1, "b": 1}]
    assert set(reasons(pts, honor, cache).values()) == {None}
    # A terminating pod is not counted.
    doomed = make_pod("w1", node="a1", labels={"app": "w"})
    doomed["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    cache.update_pod(doomed)
    assert pts.pre_filter(pod, cache).counts == [{"a": 0, "b": 1, "c": 0}]
    assert_index_consistent(cache)


def test_soft_spread_per_hostname_counts_each_nodes_pods():
    soft = {"maxSkew": 1, "topologyKey": HOSTNAME_LABEL, "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app": "w"}}}
    cache = cache_of(ZONES, [make_pod("w1", node="a1", labels={"app": "w"}),
                             make_pod("w2", node="a1", labels={"app": "w"}),
                             make_pod("w3", node="a2", labels={"app": "w"}),
                             make_pod("x", node="b1", labels={"app": "x"})])
    pts = PodTopologySpread()
    pod = PodInfo(make_pod("w4", labels={"app": "w"}, topologySpreadConstraints=[soft]))
    w = math.log(3 + 2)
    assert raw_scores(pts, pod, cache) == [round(2 * w), round(w), 0]
    # Only the candidate nodes make the domains (the weight), every node's pods are counted.
    feasible = [cache.nodes["a1"], cache.nodes["b1"]]
    assert raw_scores(pts, pod, cache, feasible) == [round(2 * math.log(4)), 0]
    scores = raw_scores(pts, pod, cache)
    pts.normalize(scores, None)
    assert scores[2] == 100 and scores[0] < scores[1] < 100


# ---------------------------------------------------------------------------- against a naive oracle


def _naive_affinity_state(pod: PodInfo, cache: Cache) -> tuple[dict, dict, dict]:
    existing, affinity, anti = Counter(), Counter(), Counter()
    ns = cache.ns_labels
    for ni in cache.node_list:
        for other in ni.pods.values():
            if other.key == pod.key:
                continue
            for t in other.anti_affinity_terms:
                if t.topology_key in ni.labels and t.matches(pod, ns):
                    existing[(t.topology_key, ni.labels[t.topology_key])] += 1
            if pod.affinity_terms and all(t.matches(other, ns) for t in pod.affinity_terms):
                for t in pod.affinity_terms:
                    if t.topology_key in ni.labels:
                        affinity[(t.topology_key, ni.labels[t.topology_key])] += 1
            for t in pod.anti_affinity_terms:
                if t.topology_key in ni.labels and t.matches(other, ns):
                    anti[(t.topology_key, ni.labels[t.topology_key])] += 1
    return dict(existing), dict(affinity), dict(anti)


def _naive_affinity_scores(pod: PodInfo, cache: Cache, hard: int) -> list[int]:
    ns = cache.ns_labels
    by_pair: Counter = Counter()
    for ni in cache.node_list:
        for other in ni.pods.values():
            if other.key == pod.key:
                continue
            weighted = [(t, t.weight, t.matches(other, ns)) for t in pod.preferred_affinity]
            weighted += [(t, -t.weight, t.matches(other, ns)) for t in pod.preferred_anti_affinity]
            weighted += [(t, hard, t.matches(pod, ns)) for t in other.affinity_terms]
            weighted += [(t, t.weight, t.matches(pod, ns)) for t in other.preferred_affinity]
            weighted += [(t, -t.weight, t.matches(pod, ns)) for t in other.preferred_anti_affinity]
            for t, w, hit in weighted:
                if hit and t.topology_key in ni.labels:
                    by_pair[(t.topology_key, ni.labels[t.topology_key])] += w
    return [sum(by_pair[(k, v)] for k, v in ni.labels.items()) for ni in cache.node_list]


def _naive_eligible(pod: PodInfo, ni: NodeInfo, c) -> bool:
    if c.node_affinity_honor and not matches_node_selector_and_affinity(pod, ni):
        return False
    return not c.node_taints_honor or all(tolerates(pod.tolerations, t) for t in ni.schedule_taints)


def _naive_matching(pod: PodInfo, ni: NodeInfo, c) -> int:
    return sum(1 for o in ni.pods.values()
               if o.namespace == pod.namespace and not o.deleting and c.selector.matches(o.labels))


def _naive_spread_counts(pod: PodInfo, cache: Cache) -> list[dict[str, int]]:
    hard = [c for c in pod.spread_constraints if c.hard]
    counts: list[dict[str, int]] = [{} for _ in hard]
    for ni in cache.node_list:
        if any(c.topology_key not in ni.labels for c in hard):
            continue
        for i, c in enumerate(hard):
            if _naive_eligible(pod, ni, c):
                v = ni.labels[c.topology_key]
                counts[i][v] = counts[i].get(v, 0) + _naive_matching(pod, ni, c)
    return counts


def _naive_spread_scores(pod: PodInfo, cache: Cache, nodes: list[NodeInfo]) -> list[int]:
    soft = [c for c in pod.spread_constraints if not c.hard]
    counts: list[dict[str, int]] = [{} for _ in soft]
    for ni in nodes:
        if all(c.topology_key in ni.labels for c in soft):
            for i, c in enumerate(soft):
                counts[i][ni.labels[c.topology_key]] = 0
    for ni in cache.node_list:
        if all(c.topology_key in ni.labels for c in soft):
            for i, c in enumerate(soft):
                v = ni.labels[c.topology_key]
                if v in counts[i] and _naive_eligible(pod, ni, c):
                    counts[i][v] += _naive_matching(pod, ni, c)
    out = []
    for ni in nodes:
        total = 0.0
        for i, c in enumerate(soft):
            if c.topology_key not in ni.labels:
                total = -1
                break
            n = (_naive_matching(pod, ni, c) if c.topology_key == HOSTNAME_LABEL
                 else counts[i].get(ni.labels[c.topology_key], 0))
            total += n * math.log(len(counts[i]) + 2) + c.max_skew - 1
        out.append(round(total))
    return out


def _random_term(r: random.Random) -> dict:
    t: dict = {"topologyKey": r.choice([HOSTNAME_LABEL, "zone", "rack"]),
               "labelSelector": r.choice([{"matchLabels": {"app": r.choice("xyz")}}, {},
                                          {"matchExpressions": [{"key": "app", "operator": "In",
                                                                 "values": r.sample("xyz", 2)}]}])}
    choice = r.random()
    if choice < 0.2:
        t["namespaces"] = r.sample(["d", "e"], 1)
    elif choice < 0.4:
        t["namespaceSelector"] = r.choice([{}, {"matchLabels": {"team": "p"}}])
    if r.random() < 0.1:
        t["matchLabelKeys"] = ["tier"]
    return t


def _random_pod(r: random.Random, name: str, node: str | None) -> dict:
    affinity: dict = {}
    for kind in ("podAffinity", "podAntiAffinity"):
        if r.random() < 0.25:
            affinity.setdefault(kind, {})["requiredDuringSchedulingIgnoredDuringExecution"] = [_random_term(r)]
        if r.random() < 0.3:
            affinity.setdefault(kind, {})["preferredDuringSchedulingIgnoredDuringExecution"] = [
                {"weight": r.choice([1, 5, 100]), "podAffinityTerm": _random_term(r)}]
    spec: dict = {}
    if affinity:
        spec["affinity"] = affinity
    if r.random() < 0.5:
        spec["topologySpreadConstraints"] = [
            {"maxSkew": r.randint(1, 2), "topologyKey": r.choice([HOSTNAME_LABEL, "zone", "rack"]),
             "whenUnsatisfiable": r.choice(["DoNotSchedule", "ScheduleAnyway"]),
             "nodeTaintsPolicy": r.choice(["Honor", "Ignore"]),
             "labelSelector": {"matchLabels": {"app": r.choice("xyz")}}} for _ in range(r.randint(1, 2))]
    if r.random() < 0.1:
        spec["nodeSelector"] = {"zone": "z1"}
    labels = {"app": r.choice("xyz"), **({"tier": r.choice("fb")} if r.random() < 0.5 else {})}
    pod = make_pod(name, node=node, labels=labels, namespace=r.choice(["d", "e"]), **spec)
    if r.random() < 0.05:
        pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return pod


def _random_node(r: random.Random, name: str) -> dict:
    labels = {k: f"{k[0]}{r.randint(1, 3)}" for k in ("zone", "rack") if r.random() < 0.85}
    taints = [{"key": "t", "effect": "NoSchedule"}] if r.random() < 0.15 else None
    return make_node(name, labels=labels, taints=taints)


def test_plugins_agree_with_a_naive_walk_over_every_pod():
    ipa, pts = InterPodAffinity(), PodTopologySpread()
    for seed in range(15):
        r = random.Random(seed)
        cache = Cache()
        cache.set_namespace({"metadata": {"name": "d", "labels": {"team": "p"}}})
        nodes = {f"n{i}": _random_node(r, f"n{i}") for i in range(8)}
        for n in nodes.values():
            cache.add_node(n)
        placed: dict[str, dict] = {}
        for step in range(150):
            x = r.random()
            if x < 0.45:
                pod = _random_pod(r, f"p{step}", r.choice([*nodes, "unknown-node"]))
                if placed and r.random() < 0.15:  # a new version of a placed pod, maybe elsewhere
                    old = r.choice(list(placed.values()))["metadata"]
                    pod["metadata"].update(name=old["name"], namespace=old["namespace"])
                placed[pod_key(pod)] = pod
                cache.add_pod(pod)
            elif x < 0.55 and placed:
                cache.remove_pod(placed.pop(r.choice(list(placed))))
            elif x < 0.62:
                name = r.choice(list(nodes))
                nodes[name] = _random_node(r, name)
                cache.update_node(nodes[name])
            elif x < 0.66:
                name = r.choice(list(nodes))
                cache.remove_node(nodes[name])
                if r.random() < 0.6:
                    cache.add_node(nodes[name])
                else:
                    del nodes[name]
            else:
                incoming = _random_pod(r, f"in{step}", None)
                if placed and r.random() < 0.2:  # the pod has a stale copy placed
                    old = r.choice(list(placed.values()))["metadata"]
                    incoming["metadata"].update(name=old["name"], namespace=old["namespace"])
                pod = PodInfo(incoming)
                state = ipa.pre_filter(pod, cache)
                want = _naive_affinity_state(pod, cache)
                if state is SKIP:
                    assert not pod.affinity_terms and not pod.anti_affinity_terms and not want[0]
                else:
                    assert (state.existing_anti, state.affinity, state.anti) == want
                sstate = ipa.pre_score(pod, cache, cache.node_list)
                got = [0] * len(cache.node_list) if sstate is SKIP else \
                    [ipa.score(pod, ni, sstate) for ni in cache.node_list]
                assert got == _naive_affinity_scores(pod, cache, ipa.hard_pod_affinity_weight)
                tstate = pts.pre_filter(pod, cache)
                if tstate is not SKIP:
                    assert tstate.counts == _naive_spread_counts(pod, cache)
                candidates = [ni for ni in cache.node_list if r.random() < 0.6]
                if candidates and any(not c.hard for c in pod.spread_constraints):
                    soft_state = pts.pre_score(pod, cache, candidates)
                    assert [pts.score(pod, ni, soft_state) for ni in candidates] == \
                        _naive_spread_scores(pod, cache, candidates)
        assert_index_consistent(cache)
