"""Audit logging as kube-apiserver does it: a policy, audit.k8s.io/v1 Events, and a log backend.

Three parts, each usable alone:

* ``Policy`` (``parse_policy``/``load_policy``): an audit.k8s.io/v1 Policy.
  Its first rule that matches a request decides the request's level (None,
  Metadata, Request, RequestResponse) and the stages left out; no match is
  level None. ``Policy.decide`` is on every request's path, so the rules are
  compiled to sets once.
* ``Audit``: the request chain's filter. Its place is right after
  authentication and before impersonation, as upstream's WithAudit::

      with_request_info -> [Audit.failed_authentication] -> Authenticate -> Audit -> Impersonate
          -> Authorize -> read_body -> handler

  There it sees the authenticated identity (the policy judges that one), and
  it sees the identity change when Impersonate acts (the event's
  impersonatedUser). It records RequestReceived, then ResponseComplete, with
  ResponseStarted between them for watches and other long-running requests,
  or Panic when the rest of the chain fails unexpectedly (and re-raises). It
  answers a StatusError itself, as ``APIServer.handle`` would, so that the
  status it records is the one sent, and every response it returns carries
  the ``Audit-Id`` header. ``Audit.failed_authentication`` is a second,
  optional filter, placed just before Authenticate, that records refused
  credentials (401) as upstream does.
* ``AuditWriter`` and the backends: events are queued (bounded) and written
  in batches by a background task through a thread of its own, so a request
  never waits for a disk. A full queue drops events, counts them and warns.
  ``LogBackend`` writes one JSON line per event, to a file rotated the way
  kube-apiserver's log backend (lumberjack) rotates it, or to stdout ("-").

``AuditOptions`` carries kube-apiserver's --audit-* flags (``add_flags``,
``options_from_args``) and builds the filter (``AuditOptions.build``).

Other filters add to the event of the request being served with
``annotate(key, value)`` (``record_authorization`` for the authorizer's
decision); outside an audited request these do nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import gzip
import ipaddress
import logging
import os
import random
import shutil
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import orjson
import yaml

from ..api import errors
from ..api.selectors import is_dns1123_subdomain
from .request import Handler, Request, Response
from .requestinfo import RequestInfo
from .rest import decode_body

log = logging.getLogger("kybernetes.audit")

API_VERSION = "audit.k8s.io/v1"

LEVEL_NONE = "None"
LEVEL_METADATA = "Metadata"
LEVEL_REQUEST = "Request"
LEVEL_REQUEST_RESPONSE = "RequestResponse"
LEVELS = (LEVEL_NONE, LEVEL_METADATA, LEVEL_REQUEST, LEVEL_REQUEST_RESPONSE)  # in increasing detail
_RANK = {level: i for i, level in enumerate(LEVELS)}

STAGE_REQUEST_RECEIVED = "RequestReceived"
STAGE_RESPONSE_STARTED = "ResponseStarted"
STAGE_RESPONSE_COMPLETE = "ResponseComplete"
STAGE_PANIC = "Panic"
STAGES = (STAGE_REQUEST_RECEIVED, STAGE_RESPONSE_STARTED, STAGE_RESPONSE_COMPLETE, STAGE_PANIC)

DECISION_ANNOTATION = "authorization.k8s.io/decision"
REASON_ANNOTATION = "authorization.k8s.io/reason"
AUDIT_ID_HEADER = "Audit-Id"

# Requests whose response is a stream or a taken-over connection, as kube-apiserver's long-running check.
LONG_RUNNING_VERBS = frozenset(("watch", "proxy"))
LONG_RUNNING_SUBRESOURCES = frozenset(("attach", "exec", "proxy", "log", "portforward"))

_MAX_USER_AGENT = 1024


# ------------------------------------------------------------------ policy


class PolicyError(ValueError):
    """An audit policy that cannot be used; the message says what is wrong and where."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy says about one request (upstream's RequestAuditConfig with its level)."""

    level: str
    omit_stages: frozenset[str] = frozenset()
    omit_managed_fields: bool = False

    @property
    def rank(self) -> int:
        return _RANK[self.level]


NOT_AUDITED = Decision(LEVEL_NONE)


@dataclass(frozen=True, slots=True)
class GroupResources:
    """One ``resources`` entry of a rule, with its patterns sorted by kind for a quick match."""

    group: str
    resources: tuple[str, ...]
    resource_names: frozenset[str]
    exact: frozenset[str]  # "pods", "pods/log"
    any_resource: bool  # "*": every resource and every subresource
    subresources: frozenset[str]  # from "*/scale": "scale"
    all_subresources_of: frozenset[str]  # from "pods/*": "pods"

    @classmethod
    def of(cls, group: str, resources: Iterable[str], resource_names: Iterable[str]) -> GroupResources:
        res = tuple(resources)
        return cls(group, res, frozenset(resource_names), frozenset(r for r in res if "*" not in r), "*" in res,
                   frozenset(r[2:] for r in res if r.startswith("*/")),
                   frozenset(r[:-2] for r in res if r.endswith("/*") and r != "*/*"))

    def matches(self, info: RequestInfo) -> bool:
        if not self.resources:
            return True
        if self.resource_names and info.name not in self.resource_names:
            return False
        if self.any_resource:
            return True
        sub = info.subresource
        if sub:
            return (f"{info.resource}/{sub}" in self.exact or sub in self.subresources
                    or info.resource in self.all_subresources_of)
        # "pods/*" also names the bare resource, as upstream's matcher reads it.
        return info.resource in self.exact or info.resource in self.all_subresources_of


@dataclass(frozen=True, slots=True)
class Rule:
    """One policy rule: every selector it has must match (an empty one matches anything)."""

    level: str
    users: frozenset[str] = frozenset()
    user_groups: frozenset[str] = frozenset()
    verbs: frozenset[str] = frozenset()
    resources: tuple[GroupResources, ...] = ()
    namespaces: frozenset[str] | None = None  # None: any; "" in it: cluster-scoped resources
    non_resource_urls: tuple[str, ...] = ()
    omit_stages: frozenset[str] = frozenset()
    omit_managed_fields: bool | None = None  # None: the policy's

    def matches(self, user: str, groups: Iterable[str], info: RequestInfo) -> bool:
        if self.users and user not in self.users:
            return False
        if self.user_groups and self.user_groups.isdisjoint(groups):
            return False
        if self.verbs and info.verb not in self.verbs:
            return False
        if self.namespaces is not None or self.resources:
            if not info.is_resource:
                return False
            if self.namespaces is not None and info.namespace not in self.namespaces:
                return False
            return not self.resources or any(g.group == info.group and g.matches(info) for g in self.resources)
        if self.non_resource_urls:
            return not info.is_resource and any(_path_matches(info.path, u) for u in self.non_resource_urls)
        return True


def _path_matches(path: str, spec: str) -> bool:
    return spec == "*" or spec == path or (spec.endswith("*") and path.startswith(spec.rstrip("*")))


class Policy:
    """An audit.k8s.io/v1 Policy, ready to judge requests."""

    def __init__(self, rules: Iterable[Rule], omit_stages: Iterable[str] = (), omit_managed_fields: bool = False):
        self.rules = tuple(rules)
        self.omit_stages = frozenset(omit_stages)
        self.omit_managed_fields = omit_managed_fields
        # One Decision per rule, made once: deciding allocates nothing.
        self._decisions = tuple(
            Decision(r.level, self.omit_stages | r.omit_stages,
                     self.omit_managed_fields if r.omit_managed_fields is None else r.omit_managed_fields)
            for r in self.rules)
        self._default = Decision(LEVEL_NONE, self.omit_stages, self.omit_managed_fields)

    def decide(self, user: str, groups: Iterable[str], info: RequestInfo) -> Decision:
        """The level and omitted stages for a request by ``user``: its first matching rule's, else None."""
        for rule, decision in zip(self.rules, self._decisions):
            if rule.matches(user, groups, info):
                return decision
        return self._default


_POLICY_FIELDS = {"apiVersion", "kind", "metadata", "rules", "omitStages", "omitManagedFields"}
_RULE_FIELDS = {"level", "users", "userGroups", "verbs", "resources", "namespaces", "nonResourceURLs",
                "omitStages", "omitManagedFields"}
_GROUP_RESOURCES_FIELDS = {"group", "resources", "resourceNames"}


def parse_policy(source: str | bytes | Mapping[str, Any]) -> Policy:
    """The Policy in a YAML or JSON document (or its already decoded mapping); PolicyError if unusable.

    Beyond upstream's checks, unknown fields are refused: a misspelt selector
    ("userGroup") would otherwise widen a rule to every request silently.
    """
    if isinstance(source, Mapping):
        doc: Any = source
    else:
        try:
            doc = yaml.load(source, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError as e:
            raise PolicyError(f"audit policy is not valid YAML or JSON: {e}") from None
    if not isinstance(doc, Mapping):
        raise PolicyError("audit policy must be an object with apiVersion audit.k8s.io/v1 and kind Policy")
    if doc.get("kind") != "Policy":
        raise PolicyError(f'audit policy has kind {doc.get("kind")!r}, want "Policy"')
    if doc.get("apiVersion") != API_VERSION:
        raise PolicyError(f'audit policy has apiVersion {doc.get("apiVersion")!r}, want "{API_VERSION}"')
    errs: list[errors.FieldError] = []
    _unknown_fields(doc, _POLICY_FIELDS, "", errs)
    omit = _stages(doc.get("omitStages"), "omitStages", errs)
    omit_mf = _bool(doc.get("omitManagedFields"), "omitManagedFields", errs)
    raw_rules = doc.get("rules")
    rules: list[Rule] = []
    if raw_rules is not None and not isinstance(raw_rules, list):
        errs.append(errors.FieldError("TypeInvalid", "rules", "must be a list", raw_rules))
    else:
        for i, raw in enumerate(raw_rules or []):
            rule = _rule(raw, f"rules[{i}]", errs)
            if rule is not None:
                rules.append(rule)
    if errs:
        raise PolicyError("invalid audit policy: " + (str(errs[0]) if len(errs) == 1 else
                                                      "[" + ", ".join(str(e) for e in errs) + "]"))
    if not rules:
        raise PolicyError("invalid audit policy: it has no rules (nothing would be audited)")
    return Policy(rules, omit, bool(omit_mf))


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """The Policy in a file; PolicyError, naming the file, if it cannot be read or used."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise PolicyError(f"cannot read audit policy file {str(path)!r}: {e.strerror or e}") from None
    try:
        return parse_policy(data)
    except PolicyError as e:
        raise PolicyError(f"{e} (in {path})") from None


def _unknown_fields(obj: Mapping[str, Any], known: set[str], path: str, errs: list[errors.FieldError]) -> None:
    for k in obj:
        if k not in known:
            errs.append(errors.FieldError("Invalid", f"{path}.{k}" if path else str(k), "unknown field"))


def _strings(value: Any, path: str, errs: list[errors.FieldError]) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        errs.append(errors.FieldError("TypeInvalid", path, "must be a list of strings", value))
        return []
    return value


def _bool(value: Any, path: str, errs: list[errors.FieldError]) -> bool | None:
    if value is not None and not isinstance(value, bool):
        errs.append(errors.FieldError("TypeInvalid", path, "must be true or false", value))
        return None
    return value


def _stages(value: Any, path: str, errs: list[errors.FieldError]) -> frozenset[str]:
    out = _strings(value, path, errs)
    for i, s in enumerate(out):
        if s not in STAGES:
            errs.append(errors.invalid(f"{path}[{i}]", s, "allowed stages are " + ",".join(STAGES)))
    return frozenset(out)


def _rule(raw: Any, path: str, errs: list[errors.FieldError]) -> Rule | None:
    if not isinstance(raw, Mapping):
        errs.append(errors.FieldError("TypeInvalid", path, "must be an object", raw))
        return None
    _unknown_fields(raw, _RULE_FIELDS, path, errs)
    level = raw.get("level")
    if not level:
        errs.append(errors.required(f"{path}.level"))
    elif level not in LEVELS:
        errs.append(errors.not_supported(f"{path}.level", level, list(LEVELS)))
    urls = _strings(raw.get("nonResourceURLs"), f"{path}.nonResourceURLs", errs)
    for i, url in enumerate(urls):
        if url == "*":
            continue
        if not url.startswith("/"):
            errs.append(errors.invalid(f"{path}.nonResourceURLs[{i}]", url,
                                       "non-resource URL rules must begin with a '/' character"))
        if "*" in url[:-1]:
            errs.append(errors.invalid(f"{path}.nonResourceURLs[{i}]", url,
                                       "non-resource URL wildcards '*' must be the final character of the rule"))
    groups: list[GroupResources] = []
    raw_resources = raw.get("resources")
    if raw_resources is not None and not isinstance(raw_resources, list):
        errs.append(errors.FieldError("TypeInvalid", f"{path}.resources", "must be a list", raw_resources))
        raw_resources = None
    for i, gr in enumerate(raw_resources or []):
        gpath = f"{path}.resources[{i}]"
        if not isinstance(gr, Mapping):
            errs.append(errors.FieldError("TypeInvalid", gpath, "must be an object", gr))
            continue
        _unknown_fields(gr, _GROUP_RESOURCES_FIELDS, gpath, errs)
        group = gr.get("group") or ""
        if not isinstance(group, str):
            errs.append(errors.FieldError("TypeInvalid", f"{gpath}.group", "must be a string", group))
            continue
        if group and (msgs := is_dns1123_subdomain(group)):
            errs.append(errors.invalid(f"{gpath}.group", group, ",".join(msgs)))
        resources = _strings(gr.get("resources"), f"{gpath}.resources", errs)
        names = _strings(gr.get("resourceNames"), f"{gpath}.resourceNames", errs)
        if names and not resources:
            errs.append(errors.invalid(f"{gpath}.resourceNames", names,
                                       "using resourceNames requires at least one resource"))
        groups.append(GroupResources.of(group, resources, names))
    namespaces = raw.get("namespaces")
    ns = _strings(namespaces, f"{path}.namespaces", errs)
    if urls and (groups or ns):
        errs.append(errors.invalid(f"{path}.nonResourceURLs", urls,
                                   "rules cannot apply to both regular resources and non-resource URLs"))
    users = _strings(raw.get("users"), f"{path}.users", errs)
    user_groups = _strings(raw.get("userGroups"), f"{path}.userGroups", errs)
    verbs = _strings(raw.get("verbs"), f"{path}.verbs", errs)
    omit = _stages(raw.get("omitStages"), f"{path}.omitStages", errs)
    omit_mf = _bool(raw.get("omitManagedFields"), f"{path}.omitManagedFields", errs)
    return Rule(level=level if level in LEVELS else LEVEL_NONE, users=frozenset(users),
                user_groups=frozenset(user_groups), verbs=frozenset(verbs), resources=tuple(groups),
                namespaces=frozenset(ns) if ns else None, non_resource_urls=tuple(urls), omit_stages=omit,
                omit_managed_fields=omit_mf)


# ------------------------------------------------------------------ events


_last_second: tuple[int, str] = (-1, "")  # the second last formatted, and its text: most stamps share it


def timestamp(ns: int) -> str:
    """A metav1.MicroTime as JSON writes it: "2026-12-04T01:02:03.123456Z" (UTC, microseconds)."""
    global _last_second
    sec, rem = divmod(ns, 1_000_000_000)
    cached = _last_second
    if cached[0] != sec:
        cached = _last_second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{cached[1]}.{rem // 1000:06d}Z"


# Audit IDs need to be unique, not secret: a generator seeded from the OS once, instead of a
# getrandom() system call (and a release of the GIL) on every request.
_ids = random.Random(os.urandom(32))


def new_audit_id() -> str:
    """A random (version 4) UUID, as upstream's audit IDs are, made a few times quicker than the uuid module."""
    n = (_ids.getrandbits(128) & ~(0xF000 << 64) | (0x4000 << 64)) & ~(0xC000 << 48) | (0x8000 << 48)
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def source_ips(req: Request) -> list[str]:
    """The client's addresses, as upstream lists them: X-Forwarded-For's, X-Real-Ip, then the peer's.

    The peer's address is read from ``req.remote`` when the front door sets one.
    """
    out: list[str] = []
    for header in ("x-forwarded-for", "x-real-ip"):
        value = req.headers.get(header)
        if not value:
            continue
        for part in value.split(","):
            ip = part.strip()
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                continue
            if ip not in out:
                out.append(ip)
    remote = getattr(req, "remote", "") or ""
    if remote and remote not in out:
        out.append(remote)
    return out


def request_uri(req: Request) -> str:
    """The path and query the client asked for (the query re-encoded from its parsed form)."""
    return f"{req.path}?{urlencode(req.query)}" if req.query else req.path


def is_long_running(info: RequestInfo) -> bool:
    return info.verb in LONG_RUNNING_VERBS or info.subresource in LONG_RUNNING_SUBRESOURCES


def _object_ref(info: RequestInfo) -> dict[str, str] | None:
    if not info.is_resource:
        return None
    ref = {"resource": info.resource}  # in _OBJECT_REF_ORDER
    if info.namespace:
        ref["namespace"] = info.namespace
    if info.name:
        ref["name"] = info.name
    if info.group:
        ref["apiGroup"] = info.group
    if info.version:
        ref["apiVersion"] = info.version
    if info.subresource:
        ref["subresource"] = info.subresource
    return ref


def _user(name: str, groups: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if name:
        out["username"] = name
    g = list(groups)
    if g:
        out["groups"] = g
    return out


def _status_of(resp: Response) -> dict[str, Any]:
    """The event's responseStatus: the code, and for a metav1.Status body its bounded fields."""
    body = resp.body
    if body[:16] == b'{"kind":"Status"' and resp.stream is None:
        try:
            status = orjson.loads(body)
        except orjson.JSONDecodeError:
            status = None
        if isinstance(status, dict):
            out: dict[str, Any] = {"metadata": {}}
            for k in ("status", "message", "reason", "details"):
                if status.get(k):
                    out[k] = status[k]
            out["code"] = resp.status
            return out
    return {"metadata": {}, "code": resp.status}


def _without_managed_fields(obj: Any) -> Any:
    """``obj`` (freshly decoded, so ours to change) without metadata.managedFields, in lists and tables too."""
    if isinstance(obj, dict):
        meta = obj.get("metadata")
        if isinstance(meta, dict):
            meta.pop("managedFields", None)
        items = obj.get("items")
        if isinstance(items, list):
            for item in items:
                _without_managed_fields(item)
        rows = obj.get("rows")
        if obj.get("kind") == "Table" and isinstance(rows, list):
            for row in rows:
                if isinstance(row, dict):
                    _without_managed_fields(row.get("object"))
    return obj


def _decode_request_body(req: Request) -> Any:
    """The request's body as the handler reads it (JSON, YAML or protobuf), or None if it is not one."""
    try:
        return decode_body(req.body, req.headers.get("content-type", ""))
    except Exception:  # a body the handler refused (400) is not the auditor's to explain
        return None


_UNSET: Any = object()
_OBJECT_REF_ORDER = ("resource", "namespace", "name", "uid", "apiGroup", "apiVersion", "resourceVersion",
                     "subresource")  # upstream's ObjectReference fields


class Event:
    """The audit record of one request, snapshotted into an audit.k8s.io/v1 Event at each stage.

    A snapshot shares the record's dicts: it is encoded when emitted, before the record changes.
    """

    __slots__ = ("level", "audit_id", "request_uri", "verb", "user", "impersonated_user", "source_ips",
                 "user_agent", "object_ref", "response_status", "request_object", "response_object",
                 "received", "annotations")

    def __init__(self, level: str, audit_id: str, req: Request, info: RequestInfo, received_ns: int) -> None:
        self.level = level
        self.audit_id = audit_id
        self.request_uri = request_uri(req)
        self.verb = info.verb
        self.user = _user(req.user, req.groups)
        self.impersonated_user: dict[str, Any] | None = None
        self.source_ips = source_ips(req)
        ua = req.headers.get("user-agent") or ""
        self.user_agent = ua if len(ua) <= _MAX_USER_AGENT else ua[:_MAX_USER_AGENT] + "...TRUNCATED"
        self.object_ref = _object_ref(info)
        self.response_status: dict[str, Any] | None = None
        self.request_object: Any = _UNSET
        self.response_object: Any = _UNSET
        self.received = timestamp(received_ns)
        self.annotations: dict[str, str] | None = None  # made when first needed, as most requests have none

    def annotate(self, key: str, value: str) -> None:
        if self.annotations is None:
            self.annotations = {}
        old = self.annotations.get(key)
        if old is not None and old != value:
            log.debug("audit %s: annotation %s is already %r; not setting it to %r", self.audit_id, key, old, value)
            return
        self.annotations[key] = value

    def fill_object_ref(self, obj: Any) -> None:
        """Complete objectRef from the request's object (a created object's name, an update's version)."""
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        ref = self.object_ref
        if ref is None or not isinstance(meta, dict):
            return
        added = False
        for k in ("namespace", "name", "uid", "resourceVersion"):
            v = meta.get(k)
            if k not in ref and v and isinstance(v, str):
                ref[k] = v
                added = True
        if added:
            self.object_ref = {k: ref[k] for k in _OBJECT_REF_ORDER if k in ref}

    def snapshot(self, stage: str, now_ns: int | None = None) -> dict[str, Any]:
        """The Event of this record at ``stage``, fields in upstream's order."""
        out: dict[str, Any] = {"kind": "Event", "apiVersion": API_VERSION, "level": self.level,
                               "auditID": self.audit_id, "stage": stage, "requestURI": self.request_uri,
                               "verb": self.verb, "user": self.user}
        if self.impersonated_user is not None:
            out["impersonatedUser"] = self.impersonated_user
        if self.source_ips:
            out["sourceIPs"] = self.source_ips
        if self.user_agent:
            out["userAgent"] = self.user_agent
        if self.object_ref is not None:
            out["objectRef"] = self.object_ref
        if self.response_status is not None:
            out["responseStatus"] = self.response_status
        if self.request_object is not _UNSET:
            out["requestObject"] = self.request_object
        if self.response_object is not _UNSET:
            out["responseObject"] = self.response_object
        out["requestReceivedTimestamp"] = self.received
        out["stageTimestamp"] = (self.received if stage == STAGE_REQUEST_RECEIVED or now_ns is None
                                 else timestamp(now_ns))
        if self.annotations:
            out["annotations"] = self.annotations
        return out


# The record of the request this task is serving, for annotate(); None outside an audited request.
_current: contextvars.ContextVar[Event | None] = contextvars.ContextVar("kybernetes_audit_event", default=None)


def annotate(key: str, value: str) -> None:
    """Add an annotation to the audit event of the request being served (nothing if it is not audited).

    The first value set for a key stays, as upstream keeps it. Events of stages
    already written do not change.
    """
    ev = _current.get()
    if ev is not None:
        ev.annotate(key, value)


def record_authorization(allowed: bool, reason: str = "") -> None:
    """The authorizer's answer, as upstream's authorization filter annotates the event."""
    ev = _current.get()
    if ev is not None:
        ev.annotate(DECISION_ANNOTATION, "allow" if allowed else "forbid")
        ev.annotate(REASON_ANNOTATION, reason)


# ------------------------------------------------------------------ backends and the writer


class Backend(Protocol):
    """Where events end up. Called from the writer's own thread, one call at a time."""

    def write(self, lines: list[bytes]) -> None:
        """Write encoded events, each one JSON line ending in a newline."""

    def close(self) -> None:
        """Flush and release what the backend holds."""


MEGABYTE = 1024 * 1024
DEFAULT_MAX_SIZE_MB = 100  # lumberjack's, which kube-apiserver uses when --audit-log-maxsize is 0
BACKUP_TIME_FORMAT = "%Y-%m-%dT%H-%M-%S"  # then ".mmm", as lumberjack names backups


class LogBackend:
    """One JSON line per event, to stdout ("-") or to a file rotated as kube-apiserver's log backend does.

    The file is rotated before a write would take it past ``max_size_mb``
    (0: 100 MB): it is renamed to ``<name>-<UTC time>.<ext>``, e.g.
    ``audit-2026-12-04T01-02-03.123.log``, and a new file is started. Then
    backups beyond the newest ``max_backups`` and those older than
    ``max_age_days`` are removed (0: keep them), and, with ``compress``, the
    rest are gzipped.
    """

    def __init__(self, path: str, max_size_mb: int = 0, max_backups: int = 0, max_age_days: int = 0,
                 compress: bool = False, now: Callable[[], float] = time.time) -> None:
        self.path = path
        self.max_size = (max_size_mb or DEFAULT_MAX_SIZE_MB) * MEGABYTE
        self.max_backups = max_backups
        self.max_age_days = max_age_days
        self.compress = compress
        self.now = now
        self._file: Any = None
        self._size = 0
        if path != "-":
            # Fail at start-up, not at the first event: the directory and the file must be writable.
            p = Path(path)
            p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._open()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "ab", buffering=0)
        self._size = os.fstat(fd).st_size

    def write(self, lines: list[bytes]) -> None:
        if self.path == "-":
            out = getattr(sys.stdout, "buffer", None)
            if out is None:  # a replaced stdout (tests capturing it) may take text only
                sys.stdout.write(b"".join(lines).decode())
            else:
                out.write(b"".join(lines))
            sys.stdout.flush()
            return
        if self._file is None:
            self._open()
        chunk: list[bytes] = []
        size = self._size
        for line in lines:
            if size + len(line) > self.max_size and size > 0:
                self._file.write(b"".join(chunk))
                chunk = []
                self._rotate()
                size = 0
            chunk.append(line)
            size += len(line)
        self._file.write(b"".join(chunk))
        self._size = size

    def _rotate(self) -> None:
        self._file.close()
        self._file = None
        try:
            os.replace(self.path, self.backup_name(self.now()))
        except FileNotFoundError:  # removed under us: start afresh
            pass
        self._open()
        self._mill()

    def backup_name(self, t: float) -> str:
        """The name the file gets when rotated at ``t`` (a free one: a second rotation within the
        same millisecond takes the next millisecond)."""
        p = Path(self.path)
        ms = int(t * 1000)
        while True:
            dt = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
            name = p.with_name(f"{p.stem}-{dt.strftime(BACKUP_TIME_FORMAT)}.{ms % 1000:03d}{p.suffix}")
            if not name.exists() and not Path(f"{name}.gz").exists():
                return str(name)
            ms += 1

    def backups(self) -> list[tuple[float, Path]]:
        """The rotated files beside the log, newest first, with the times in their names."""
        p = Path(self.path)
        prefix = p.stem + "-"
        out = []
        for f in p.parent.iterdir():
            name = f.name
            base = name[:-3] if name.endswith(".gz") else name
            if not base.startswith(prefix) or not base.endswith(p.suffix) or f == p:
                continue
            stamp = base[len(prefix):len(base) - len(p.suffix)] if p.suffix else base[len(prefix):]
            try:
                dt = datetime.strptime(stamp, BACKUP_TIME_FORMAT + ".%f").replace(tzinfo=timezone.utc)
            except ValueError:
                continue
            out.append((dt.timestamp(), f))
        out.sort(key=lambda x: x[0], reverse=True)
        return out

    def _mill(self) -> None:
        files = self.backups()
        remove: list[Path] = []
        if self.max_backups > 0:
            kept: set[str] = set()
            for _, f in files:
                key = f.name[:-3] if f.name.endswith(".gz") else f.name
                if key in kept or len(kept) < self.max_backups:
                    kept.add(key)
                else:
                    remove.append(f)
        if self.max_age_days > 0:
            cutoff = self.now() - self.max_age_days * 86400
            remove.extend(f for t, f in files if t < cutoff and f not in remove)
        for f in remove:
            try:
                f.unlink()
            except OSError as e:
                log.warning("cannot remove old audit log %s: %s", f, e)
        if self.compress:
            for _, f in files:
                if f in remove or f.name.endswith(".gz"):
                    continue
                try:
                    with open(f, "rb") as src, gzip.open(f"{f}.gz", "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    f.unlink()
                except OSError as e:
                    log.warning("cannot compress old audit log %s: %s", f, e)

    def close(self) -> None:
        if self.path == "-":
            sys.stdout.flush()
        elif self._file is not None:
            self._file.close()
            self._file = None


# One JSON line per event; non-string keys can come from a YAML body's object.
_ENCODING = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS


class _Writer:
    """What the writers share: events dropped are counted, and warned about at most every 10 s."""

    def __init__(self) -> None:
        self.dropped = 0
        self.written = 0
        self._last_warning = 0.0
        self._unwarned = 0

    def _encode(self, event: dict[str, Any]) -> bytes | None:
        """The event's JSON line, or None (dropped and counted) if it cannot be encoded."""
        try:
            return orjson.dumps(event, option=_ENCODING)
        except TypeError as e:
            self._drop(f"cannot encode event {event.get('auditID')}: {e}")
            return None

    def _drop(self, why: str) -> None:
        self.dropped += 1
        self._unwarned += 1
        now = time.monotonic()
        if now - self._last_warning >= 10.0 or self.dropped == 1:
            log.warning("dropped %d audit event(s): %s (%d dropped in all)", self._unwarned, why, self.dropped)
            self._last_warning = now
            self._unwarned = 0


class AuditWriter(_Writer):
    """Writes events in batches from a background task, so that no request waits for the backend.

    ``emit`` encodes the event and appends the line to a bounded queue; when
    the queue is full the event is dropped and counted (``dropped``), with a
    warning at most every 10 s. The backend runs in one thread of its own, one
    batch at a time, in order. (Encoding at once keeps the queue to bytes,
    which the garbage collector need not walk, on a server with a big heap.)
    """

    def __init__(self, backend: Backend, queue_size: int = 10_000, batch_size: int = 1000,
                 linger: float = 0.005) -> None:
        """queue_size: events waiting to be written before new ones are dropped; batch_size: events per
        write at most; linger: seconds to let a batch grow once woken (each write is a thread hop)."""
        super().__init__()
        self.backend = backend
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.linger = linger
        self._pending: deque[bytes] = deque()
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False

    def start(self) -> None:
        """Start the background task (``emit`` starts it too, on the first event)."""
        if self._task is None:
            self._wake, self._idle = asyncio.Event(), asyncio.Event()
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="audit-writer")
            self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-writer")

    def emit(self, event: dict[str, Any]) -> None:
        """Queue one event for writing; never waits."""
        if self._closing:
            self._drop("the audit writer is stopped")
            return
        if len(self._pending) >= self.queue_size:
            self._drop(f"the audit queue is full ({self.queue_size} events)")
            return
        line = self._encode(event)
        if line is None:
            return
        if self._task is None:
            self.start()
        self._pending.append(line)
        assert self._wake is not None and self._idle is not None
        self._idle.clear()
        self._wake.set()


    async def _run(self) -> None:
        assert self._wake is not None and self._idle is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._idle.set()
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                if self.linger and not self._closing and len(self._pending) < self.batch_size:
                    await asyncio.sleep(self.linger)
                continue
            n = min(len(self._pending), self.batch_size)
            lines = [self._pending.popleft() for _ in range(n)]
            try:
                await loop.run_in_executor(self._executor, self.backend.write, lines)
                self.written += n
            except Exception as e:  # a full disk must not stop auditing for good
                for _ in range(n):
                    self._drop(f"writing failed: {e}")

    async def flush(self) -> None:
        """Wait until every event emitted so far has been handed to the backend."""
        if self._task is not None and not self._task.done():
            assert self._idle is not None
            await self._idle.wait()

    async def stop(self) -> None:
        """Write what is queued, then close the backend. Events emitted afterwards are dropped."""
        self._closing = True
        if self._task is not None:
            assert self._wake is not None
            self._wake.set()
            await self._task
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.backend.close)
        if self._executor is not None:
            self._executor.shutdown(wait=False)


class BlockingWriter(_Writer):
    """Writes events on the event loop, as upstream's default ``--audit-log-mode=blocking`` does.

    The events of one turn of the loop go out in one write at its end (a file
    write lands in the page cache in microseconds). Handing each batch to a
    thread instead costs the server about 50 µs of CPU per event in wake-ups
    and GIL hand-offs (bench/authz.py), more than encoding and writing it.
    ``strict`` (``blocking-strict``) writes each event as it is emitted and
    lets a failure propagate, so that a request whose RequestReceived event
    cannot be written fails, as upstream's.
    """

    def __init__(self, backend: Backend, strict: bool = False) -> None:
        super().__init__()
        self.backend = backend
        self.strict = strict
        self._pending: list[bytes] = []
        self._scheduled = False
        self._closing = False

    def emit(self, event: dict[str, Any]) -> None:
        if self._closing:
            self._drop("the audit writer is stopped")
            return
        line = self._encode(event)
        if line is None:
            return
        if self.strict:
            try:
                self.backend.write([line])
            except Exception as e:
                self._drop(f"writing failed: {e}")
                raise
            self.written += 1
            return
        self._pending.append(line)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._write_pending)

    def _write_pending(self) -> None:
        self._scheduled = False
        lines, self._pending = self._pending, []
        if not lines:
            return
        try:
            self.backend.write(lines)
            self.written += len(lines)
        except Exception as e:  # a full disk must not stop auditing for good
            for _ in lines:
                self._drop(f"writing failed: {e}")

    async def flush(self) -> None:
        self._write_pending()

    async def stop(self) -> None:
        self._write_pending()
        self._closing = True
        self.backend.close()


# ------------------------------------------------------------------ the filter


_CLOSED_EARLY = {"metadata": {}, "status": "Success", "message": "Connection closed early", "code": 200}


def _with_audit_id(resp: Response, audit_id: str) -> Response:
    if resp.native is None:
        # A new dict: a handler may hand out one it shares.
        resp.headers = {**resp.headers, AUDIT_ID_HEADER: audit_id}
    return resp


def _auth_methods(req: Request) -> str:
    """What credentials a refused request brought, in upstream's words."""
    methods = []
    auth = (req.headers.get("authorization") or "").strip()
    scheme = auth.split(" ", 1)[0].lower() if " " in auth else ""
    if scheme == "basic":
        methods.append("basic")
    if scheme == "bearer":
        methods.append("bearer")
    if (req.query.get("access_token") or "").strip():
        methods.append("access_token")
    if req.peer is not None:
        methods.append("x509")
    if methods:
        return "Authentication failed, attempted: " + ", ".join(methods)
    return "Authentication failed, no credentials provided"


class Audit:
    """The audit filter of the request chain; see the module's docstring for its place.

    policy: which requests are audited and at which level;
    writer: where their events go (an AuditWriter around a backend);
    clock: nanoseconds since the epoch (tests pass a fake one).
    """

    def __init__(self, policy: Policy, writer: AuditWriter | BlockingWriter,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.policy = policy
        self.writer = writer
        self.clock = clock

    @property
    def dropped(self) -> int:
        """Events lost because the queue was full or the backend failed."""
        return self.writer.dropped

    async def flush(self) -> None:
        await self.writer.flush()

    async def stop(self) -> None:
        """Write every queued event and close the backend (at server shutdown)."""
        await self.writer.stop()

    def _emit(self, ev: Event, stage: str, omit: frozenset[str]) -> None:
        if stage not in omit:
            try:
                self.writer.emit(ev.snapshot(stage, self.clock()))
            except Exception:
                # Only a blocking-strict writer lets a failure through (it is counted as dropped):
                # the request fails if its first event could not be stored, as upstream's.
                if stage == STAGE_REQUEST_RECEIVED:
                    raise errors.internal("failed to store audit event") from None

    async def __call__(self, req: Request, rest: Handler) -> Response:
        info = req.info
        assert info is not None, "the request info filter runs before audit"
        decision = self.policy.decide(req.user, req.groups, info)
        audit_id = req.headers.get("audit-id") or new_audit_id()
        if decision.level == LEVEL_NONE:
            try:
                resp = await rest(req)
            except errors.StatusError as e:
                resp = Response(e.code, e.to_bytes())
            return _with_audit_id(resp, audit_id)

        ev = Event(decision.level, audit_id, req, info, self.clock())
        omit = decision.omit_stages
        self._emit(ev, STAGE_REQUEST_RECEIVED, omit)
        long_running = is_long_running(info)
        started = False
        if req.upgrade is not None:
            upgrade = req.upgrade

            async def audited_upgrade(user: str, groups: tuple[str, ...]) -> Any:
                # The connection is about to be taken over: upstream records a 101 at this point.
                nonlocal started
                started = True
                ev.response_status = {"metadata": {}, "code": 101}
                self._emit(ev, STAGE_RESPONSE_STARTED, omit)
                return await upgrade(user, groups)
            req.upgrade = audited_upgrade

        identity = (req.user, req.groups)
        token = _current.set(ev)
        try:
            try:
                resp = await rest(req)
            except errors.StatusError as e:
                resp = Response(e.code, e.to_bytes())
        except asyncio.CancelledError:
            if ev.response_status is None:
                ev.response_status = _CLOSED_EARLY
            self._emit(ev, STAGE_RESPONSE_COMPLETE, omit)
            raise
        except Exception as e:
            ev.response_status = {"metadata": {}, "status": "Failure", "message": f"APIServer panic'd: {e!r}",
                                  "reason": "InternalError", "code": 500}
            self._emit(ev, STAGE_PANIC, omit)
            raise
        finally:
            _current.reset(token)
            if (req.user, req.groups) != identity:
                ev.impersonated_user = _user(req.user, req.groups)

        self._record(ev, decision, req, resp, started)
        if resp.stream is not None:
            if not started:
                self._emit(ev, STAGE_RESPONSE_STARTED, omit)
            resp.stream = _AuditedStream(resp.stream, lambda failure: self._finish(ev, omit, failure))
        else:
            if long_running and not started:
                self._emit(ev, STAGE_RESPONSE_STARTED, omit)
            self._emit(ev, STAGE_RESPONSE_COMPLETE, omit)
        return _with_audit_id(resp, audit_id)

    def _record(self, ev: Event, decision: Decision, req: Request, resp: Response, upgraded: bool) -> None:
        """What the response and the request's body add to the event, as far as the level asks."""
        if not upgraded:
            ev.response_status = _status_of(resp)
        if req.body and (decision.rank >= _RANK[LEVEL_REQUEST] or ev.verb in ("create", "update")):
            obj = _decode_request_body(req)
            if obj is not None:
                ev.fill_object_ref(obj)
                if decision.rank >= _RANK[LEVEL_REQUEST]:
                    ev.request_object = _without_managed_fields(obj) if decision.omit_managed_fields else obj
        if (decision.rank >= _RANK[LEVEL_REQUEST_RESPONSE] and resp.stream is None and resp.native is None
                and resp.body and resp.content_type.startswith("application/json")):
            try:
                obj = orjson.loads(resp.body)
            except orjson.JSONDecodeError:
                return
            ev.response_object = _without_managed_fields(obj) if decision.omit_managed_fields else obj

    def _finish(self, ev: Event, omit: frozenset[str], failure: BaseException | None) -> None:
        if failure is not None:
            ev.response_status = {"metadata": {}, "status": "Failure",
                                  "message": f"APIServer panic'd: {failure!r}", "reason": "InternalError",
                                  "code": 500}
            self._emit(ev, STAGE_PANIC, omit)
        else:
            self._emit(ev, STAGE_RESPONSE_COMPLETE, omit)

    async def failed_authentication(self, req: Request, rest: Handler) -> Response:
        """A filter for just before Authenticate: records requests refused for their credentials (401).

        As upstream, such an event has no user, its stage is ResponseStarted and
        its responseStatus says which credentials were tried.
        """
        try:
            return await rest(req)
        except errors.StatusError as e:
            if e.code != 401 or req.info is None:
                raise
            decision = self.policy.decide("", (), req.info)
            audit_id = req.headers.get("audit-id") or new_audit_id()
            if decision.level != LEVEL_NONE:
                ev = Event(decision.level, audit_id, req, req.info, self.clock())
                ev.user = {}  # nobody: the credentials were refused
                ev.response_status = {"metadata": {}, "message": _auth_methods(req), "code": 401}
                self._emit(ev, STAGE_RESPONSE_STARTED, decision.omit_stages)
            return _with_audit_id(Response(e.code, e.to_bytes()), audit_id)


class _AuditedStream:
    """A response stream that reports once when it ends: exhausted, closed by its reader, or failed."""

    __slots__ = ("_inner", "_it", "_on_end", "_ended")

    def __init__(self, inner: AsyncIterator[bytes], on_end: Callable[[BaseException | None], None]) -> None:
        self._inner = inner
        self._it = inner.__aiter__()
        self._on_end = on_end
        self._ended = False

    def _end(self, failure: BaseException | None) -> None:
        if not self._ended:
            self._ended = True
            self._on_end(failure)

    def __aiter__(self) -> _AuditedStream:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._it.__anext__()
        except (StopAsyncIteration, asyncio.CancelledError):
            self._end(None)
            raise
        except Exception as e:
            self._end(e)
            raise

    async def aclose(self) -> None:
        self._end(None)
        # As the front door closes a stream: its own close() if it has one, else aclose().
        close = getattr(self._inner, "close", None) or getattr(self._inner, "aclose", None)
        if close is not None:
            r = close()
            if asyncio.iscoroutine(r):
                await r


# ------------------------------------------------------------------ flags


LOG_MODES = ("batch", "blocking", "blocking-strict")


@dataclass(frozen=True)
class AuditOptions:
    """kube-apiserver's --audit-* flags (the log backend's), with their defaults."""

    policy_file: str = ""
    log_path: str = ""  # "-": stdout
    log_maxsize: int = 0  # MB; 0: 100
    log_maxbackup: int = 0  # 0: keep every backup
    log_maxage: int = 0  # days; 0: keep backups however old
    log_compress: bool = False
    queue_size: int = 10_000  # --audit-log-batch-buffer-size
    mode: str = "blocking"  # --audit-log-mode: blocking, blocking-strict or batch

    def validate(self) -> list[str]:
        problems = []
        for flag, value in (("--audit-log-maxsize", self.log_maxsize), ("--audit-log-maxbackup", self.log_maxbackup),
                            ("--audit-log-maxage", self.log_maxage)):
            if value < 0:
                problems.append(f"{flag} must be greater than or equal to 0")
        if self.queue_size <= 0:
            problems.append("--audit-log-batch-buffer-size must be greater than 0")
        if self.mode not in LOG_MODES:
            problems.append(f"invalid audit log mode {self.mode}, allowed modes are {', '.join(LOG_MODES)}")
        return problems

    @property
    def enabled(self) -> bool:
        return bool(self.policy_file and self.log_path)

    def build(self) -> Audit | None:
        """The filter these flags ask for; None when auditing is off (no policy file, or no log path).

        ValueError (PolicyError for the policy) with a message for the user when they cannot be used.
        """
        problems = self.validate()
        if problems:
            raise ValueError("; ".join(problems))
        if not self.policy_file:
            if self.log_path:
                log.warning("--audit-log-path is set but --audit-policy-file is not: nothing is audited")
            return None
        policy = load_policy(self.policy_file)
        if not self.log_path:
            log.warning("--audit-policy-file is set but --audit-log-path is not: nothing is audited")
            return None
        try:
            backend = LogBackend(self.log_path, self.log_maxsize, self.log_maxbackup, self.log_maxage,
                                 self.log_compress)
        except OSError as e:
            raise ValueError(f"cannot open audit log {self.log_path!r}: {e.strerror or e}") from None
        if self.mode == "batch":
            return Audit(policy, AuditWriter(backend, self.queue_size))
        return Audit(policy, BlockingWriter(backend, strict=self.mode == "blocking-strict"))


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add kube-apiserver's audit log flags to ``parser`` (``kyb server``)."""
    g = parser.add_argument_group("audit")
    g.add_argument("--audit-policy-file", default="", metavar="PATH",
                   help="audit.k8s.io/v1 Policy (YAML or JSON) deciding what is audited; without one, nothing is")
    g.add_argument("--audit-log-path", default="", metavar="PATH",
                   help="write audit events, one JSON line each, to this file ('-': standard output)")
    g.add_argument("--audit-log-maxsize", type=int, default=0, metavar="MB",
                   help="rotate the audit log before it grows past this many megabytes (0: 100)")
    g.add_argument("--audit-log-maxbackup", type=int, default=0, metavar="N",
                   help="keep at most this many rotated audit logs (0: all)")
    g.add_argument("--audit-log-maxage", type=int, default=0, metavar="DAYS",
                   help="remove rotated audit logs older than this many days (0: never)")
    g.add_argument("--audit-log-compress", action="store_true", help="gzip rotated audit logs")
    g.add_argument("--audit-log-mode", default="blocking", metavar="MODE",
                   help="how events are written: blocking (on the server's event loop, at the end of each "
                        "turn; the default, as upstream's), blocking-strict (each as it happens; a request "
                        "whose first event cannot be written fails) or batch (queued, written by a thread)")
    g.add_argument("--audit-log-batch-buffer-size", type=int, default=10_000, metavar="N",
                   help="with --audit-log-mode=batch: events queued for writing before new ones are dropped")


def options_from_args(args: argparse.Namespace) -> AuditOptions:
    """The AuditOptions of flags added by ``add_flags``."""
    return AuditOptions(policy_file=args.audit_policy_file, log_path=args.audit_log_path,
                        log_maxsize=args.audit_log_maxsize, log_maxbackup=args.audit_log_maxbackup,
                        log_maxage=args.audit_log_maxage, log_compress=args.audit_log_compress,
                        queue_size=args.audit_log_batch_buffer_size, mode=args.audit_log_mode)
