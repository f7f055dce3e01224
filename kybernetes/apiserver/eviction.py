"""The pods/eviction subresource: a delete that honours PodDisruptionBudgets.

An eviction of a pod covered by a budget first takes one disruption from the
budget's status (compare-and-swap on the budget, recording the pod under
status.disruptedPods so the disruption controller does not hand the same
disruption out twice), then deletes the pod with the eviction's DeleteOptions.
A budget with no disruption left answers 429 TooManyRequests, as upstream, and
kubectl drain retries. Pods that are not running yet, or already finished,
are not protected by a budget.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..api import errors
from ..api.errors import StatusError
from ..api.pods import is_pod_ready
from ..api.times import format_time
from ..api.selectors import InvalidSelector, from_label_selector_object
from .rest import Call

PDB_PREFIX = "/registry/poddisruptionbudgets/"


async def evict(rest, pods_kind, ns: str, name: str, body: Any, call: Call) -> tuple[int, bytes]:
    """call: who evicts (the pod is deleted as them, with none of the eviction's own query options)."""
    if not isinstance(body, dict):
        raise errors.bad_request("invalid Eviction")
    bname = (body.get("metadata") or {}).get("name")
    if bname and bname != name:
        raise errors.bad_request("name in URL does not match name in Eviction object")
    delete_options = body.get("deleteOptions") or {}
    pod, _ = await rest._get_current(pods_kind, ns, name)
    phase = (pod.get("status") or {}).get("phase")
    guarded = phase == "Running" and not pod["metadata"].get("deletionTimestamp")
    if guarded:
        await _take_disruption(rest, ns, pod)
    opts = orjson.dumps({"kind": "DeleteOptions", "apiVersion": "v1", **delete_options})
    await rest.delete(pods_kind, ns, name, opts, Call(call.user, call.groups))
    return 201, orjson.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                              "code": 201})


async def _take_disruption(rest, ns: str, pod: dict[str, Any]) -> None:
    labels = pod["metadata"].get("labels") or {}
    matching = []
    kvs, _, _ = await rest.store.list(PDB_PREFIX + ns + "/")
    for kv in kvs:
        pdb = orjson.loads(kv.value)
        try:
            sel = from_label_selector_object((pdb.get("spec") or {}).get("selector"))
        except InvalidSelector:
            continue
        if sel.matches(labels):
            matching.append((kv, pdb))
    if not matching:
        return
    if len(matching) > 1:
        raise StatusError(500, "InternalError", "This pod has more than one PodDisruptionBudget, which the "
                          "eviction subresource does not support.")
    kv, pdb = matching[0]
    name = pdb["metadata"]["name"]
    status = pdb.get("status") or {}
    if (status.get("observedGeneration") or 0) < (pdb["metadata"].get("generation") or 0):
        raise StatusError(429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption "
                          "budget.", {"causes": [{"reason": "DisruptionBudget", "message":
                                                  f"The disruption budget {name} is still being processed by "
                                                  f"the server."}]})
    policy = (pdb.get("spec") or {}).get("unhealthyPodEvictionPolicy")
    if policy == "AlwaysAllow" and not is_pod_ready(pod):
        return
    if (status.get("disruptionsAllowed") or 0) <= 0:
        raise StatusError(429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption "
                          "budget.", {"causes": [{"reason": "DisruptionBudget", "message":
                                                  f"The disruption budget {name} needs "
                                                  f"{status.get('desiredHealthy', 0)} healthy pods and has "
                                                  f"{status.get('currentHealthy', 0)} currently"}]})
    status["disruptionsAllowed"] = status["disruptionsAllowed"] - 1
    disrupted = dict(status.get("disruptedPods") or {})
    disrupted[pod["metadata"]["name"]] = format_time()
    status["disruptedPods"] = disrupted
    pdb["status"] = status
    from ..storage.base import RevisionConflict
    from .rest import encode
    try:
        await rest.store.update(kv.key, encode(pdb), kv.mod_revision)
    except RevisionConflict:
        # Someone else changed the budget: the client retries, as upstream.
        raise StatusError(429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption "
                          "budget.", {"causes": [{"reason": "DisruptionBudget",
                                                  "message": f"The disruption budget {name} was modified "
                                                             f"concurrently; retry."}],
                                      "retryAfterSeconds": 1}) from None
