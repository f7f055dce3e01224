"""Static pods: pods a kubelet runs from manifest files, with mirror pods in the API.

As upstream's file source does, each ``*.yaml``/``*.yml``/``*.json`` file in the
manifest directory holds one Pod. The kubelet runs it whatever the API says; its
name gets ``-<node>`` appended, its uid is a hash of the manifest and node (so an
edited file is a new pod), and a mirror pod of the same name carrying the
``kubernetes.io/config.mirror`` annotation shows it in the API. A mirror pod that
is deleted, or left over from an older manifest, is replaced; removing the file
stops the pod and deletes its mirror.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import Any

import orjson
import yaml

Obj = dict[str, Any]

log = logging.getLogger(__name__)

CONFIG_MIRROR = "kubernetes.io/config.mirror"
CONFIG_HASH = "kubernetes.io/config.hash"
CONFIG_SOURCE = "kubernetes.io/config.source"
CONFIG_SEEN = "kubernetes.io/config.seen"


def is_mirror(pod: Obj) -> bool:
    return CONFIG_MIRROR in ((pod.get("metadata") or {}).get("annotations") or {})


def load_manifest(path: str, node_name: str) -> Obj | None:
    """The static pod defined by one file, ready to run; None if the file holds no Pod."""
    with open(path, "rb") as f:
        raw = f.read()
    doc = orjson.loads(raw) if path.endswith(".json") else yaml.load(raw, Loader=getattr(yaml, "CSafeLoader",
                                                                                          yaml.SafeLoader))
    if not isinstance(doc, dict) or doc.get("kind") != "Pod":
        return None
    meta = dict(doc.get("metadata") or {})
    spec = dict(doc.get("spec") or {})
    ns = meta.get("namespace") or "default"
    digest = hashlib.md5(raw + node_name.encode() + ns.encode(), usedforsecurity=False).hexdigest()
    meta["name"] = f"{meta.get('name', os.path.splitext(os.path.basename(path))[0])}-{node_name}"
    meta["namespace"] = ns
    meta["uid"] = digest
    meta["annotations"] = {**(meta.get("annotations") or {}), CONFIG_HASH: digest, CONFIG_SOURCE: "file",
                           CONFIG_SEEN: time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())}
    spec["nodeName"] = node_name
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    # Static pods cannot reach the API for a service account token.
    spec.setdefault("enableServiceLinks", True)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": {}}


def scan(directory: str, node_name: str) -> dict[str, Obj]:
    """uid -> static pod for every manifest in the directory (bad files are logged and skipped)."""
    out: dict[str, Obj] = {}
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return out
    for name in names:
        if name.startswith(".") or not name.endswith((".yaml", ".yml", ".json")):
            continue
        path = os.path.join(directory, name)
        try:
            pod = load_manifest(path, node_name)
        except (OSError, ValueError, yaml.YAMLError) as e:
            log.warning("static pod manifest %s: %s", path, e)
            continue
        if pod is not None:
            out[pod["metadata"]["uid"]] = pod
    return out


def mirror_of(pod: Obj, node_uid: str | None) -> Obj:
    """The mirror pod to create in the API for a static pod."""
    meta = pod["metadata"]
    annotations = {**meta.get("annotations", {}), CONFIG_MIRROR: meta["annotations"][CONFIG_HASH]}
    m: Obj = {"name": meta["name"], "namespace": meta["namespace"], "labels": dict(meta.get("labels") or {}),
              "annotations": annotations}
    if node_uid:
        m["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": pod["spec"]["nodeName"],
                                 "uid": node_uid, "controller": True}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": m, "spec": pod["spec"]}
