"""The RBAC authorizer: Roles, ClusterRoles and their bindings, with upstream's semantics.

This module owns three things:

* ``RBACAuthorizer``, the ``Authorizer`` (see ``authorization.py``) that answers
  "may this user do this?" from the rbac.authorization.k8s.io objects in the
  watch cache, as upstream's RBAC authorizer does from its informers: deny by
  default, ClusterRoleBindings grant everywhere (resources in every namespace,
  cluster-scoped resources, non-resource URLs), RoleBindings grant only
  resource requests in their own namespace, and a binding whose role is missing
  grants nothing.
* The rule resolution the escalation checks need (``rules_applying``,
  ``resolve``, ``role_ref_rules``) and the attributes of the ``bind`` and
  ``escalate`` checks (``bind_attributes``, ``escalate_attributes``).
* The pure escalation logic: ``covers`` (do the rules a user holds cover the
  rules they are granting, atom by atom) and ``escalation_message`` (upstream's
  wording when they do not).

The authorizer sits on every request's path, so it never decodes JSON per
request: it keeps an index (subject -> bindings -> compiled rules) rebuilt only
when one of the four RBAC caches changed, re-decoding only the objects whose
cache entry changed, and it remembers the resolved grants per (user, groups,
namespace) until the next change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from ..api.kinds import Registry
from .watchcache import Entry, ResourceCache, WatchCache

Obj = dict[str, Any]

GROUP = "rbac.authorization.k8s.io"
VERSION = "v1"
SA_PREFIX = "system:serviceaccount:"

# What an aggregationRule needs: it can gather any rule, so only a holder of
# everything may set or change one (upstream's "fullAuthority").
FULL_AUTHORITY: list[Obj] = [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]},
                             {"verbs": ["*"], "nonResourceURLs": ["*"]}]
AGGREGATION_MESSAGE = "must have cluster-admin privileges to use the aggregationRule"

_RULE_FIELDS = ("verbs", "apiGroups", "resources", "resourceNames", "nonResourceURLs")
_EMPTY: frozenset[str] = frozenset()

# The resolved-grants memo is cleared when it grows past this, so a stream of
# distinct users cannot grow it without bound.
_MEMO_MAX = 8192


# ---------------------------------------------------------------- Go-style text

_GO_ESCAPES = {"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t", "\v": r"\v",
               "\\": "\\\\", '"': '\\"'}


def go_quote(s: str) -> str:
    """A string as Go's %q writes it: upstream's messages quote names this way."""
    if s.isprintable() and '"' not in s and "\\" not in s:
        return '"' + s + '"'
    out = ['"']
    for ch in s:
        esc = _GO_ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ch.isprintable():
            out.append(ch)
        else:
            o = ord(ch)
            out.append(f"\\x{o:02x}" if o < 0x80 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
    out.append('"')
    return "".join(out)


def go_quote_list(items: Iterable[str]) -> str:
    """A []string as Go's %q writes it: ["a" "b"]."""
    return "[" + " ".join(go_quote(s) for s in items) + "]"


def _aggregate(messages: Sequence[str]) -> str:
    """Several errors as apimachinery's aggregate error prints them (deduplicated)."""
    if len(messages) == 1:
        return messages[0]
    seen: list[str] = []
    for m in messages:
        if m not in seen:
            seen.append(m)
    if len(seen) == 1:
        return seen[0]
    return "[" + ", ".join(seen) + "]"


def _not_found(kind: str, name: str, plural: bool) -> str:
    if kind not in ("Role", "ClusterRole"):
        return f"unsupported role reference kind: {go_quote(kind)}"
    # Upstream's authorizer reads listers, which name the resource in the
    # singular; the registry (escalation checks) names it in the plural.
    resource = kind.lower() + ("s" if plural else "")
    return f"{resource}.{GROUP} {go_quote(name)} not found"


# ---------------------------------------------------------------- rules

def _str_list(v: Any) -> list[str] | None:
    """A list of strings (None/missing is empty), or None when it is anything else."""
    if v is None:
        return []
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return v
    return None


def clean_rule(raw: Any) -> Obj | None:
    """A PolicyRule with only well-typed fields (verbs always, others when non-empty), or None.

    A rule with a field of the wrong type is dropped whole: it cannot be read
    safely, and dropping a rule only ever takes permissions away.
    """
    if not isinstance(raw, dict):
        return None
    out: Obj = {}
    for f in _RULE_FIELDS:
        vals = _str_list(raw.get(f))
        if vals is None:
            return None
        if vals or f == "verbs":
            out[f] = list(vals)
    return out


class _Rule:
    """One policy rule compiled for matching: sets instead of lists, wildcards as flags."""

    __slots__ = ("any_group", "any_resource", "any_url", "any_verb", "groups", "names", "policy", "resources",
                 "sub_any", "url_prefixes", "urls", "verbs")

    def __init__(self, policy: Obj):
        self.policy = policy
        verbs = policy.get("verbs", ())
        self.verbs = frozenset(verbs)
        self.any_verb = "*" in self.verbs
        self.groups = frozenset(policy.get("apiGroups", ()))
        self.any_group = "*" in self.groups
        self.resources = frozenset(policy.get("resources", ()))
        self.any_resource = "*" in self.resources
        # "*/scale" grants the scale subresource of every resource; there is
        # deliberately no "pods/*" form (upstream refuses it: it would grant
        # subresources added later).
        self.sub_any = frozenset(r[2:] for r in self.resources if r.startswith("*/"))
        self.names = frozenset(policy.get("resourceNames", ()))
        urls = policy.get("nonResourceURLs", ())
        self.urls = frozenset(urls)
        self.any_url = "*" in self.urls
        self.url_prefixes = tuple(u.rstrip("*") for u in urls if u.endswith("*"))

    def allows_resource(self, verb: str, group: str, combined: str, sub: str, name: str) -> bool:
        return ((self.any_verb or verb in self.verbs)
                and (self.any_group or group in self.groups)
                and (self.any_resource or combined in self.resources or (sub != "" and sub in self.sub_any))
                and (not self.names or name in self.names))

    def allows_url(self, verb: str, path: str) -> bool:
        if not (self.any_verb or verb in self.verbs):
            return False
        if self.any_url or path in self.urls:
            return True
        return any(path.startswith(p) for p in self.url_prefixes)


def _compile_rules(obj: Obj) -> tuple[_Rule, ...]:
    rules = obj.get("rules")
    if not isinstance(rules, list):
        return ()
    out = []
    for raw in rules:
        policy = clean_rule(raw)
        if policy is not None:
            out.append(_Rule(policy))
    return tuple(out)


# ---------------------------------------------------------------- bindings

Subject = tuple[str, str, str]  # kind, name, namespace


class _BindingSpec:
    """What a binding object says, decoded once per stored version."""

    __slots__ = ("name", "namespace", "role_kind", "role_name", "subjects")

    def __init__(self, name: str, namespace: str, role_kind: str, role_name: str,
                 subjects: list[Subject | None]):
        self.name = name
        self.namespace = namespace
        self.role_kind = role_kind
        self.role_name = role_name
        # Positions are kept (None for a malformed subject) so that "the first
        # subject that applies" is counted as upstream counts it.
        self.subjects = subjects


def _parse_binding(obj: Obj, name: str, namespace: str) -> _BindingSpec | None:
    ref = obj.get("roleRef")
    if not isinstance(ref, dict):
        return None
    kind, rname = ref.get("kind"), ref.get("name")
    if not isinstance(kind, str) or not isinstance(rname, str):
        return None
    raw_subjects = obj.get("subjects")
    if raw_subjects is None:
        raw_subjects = []
    if not isinstance(raw_subjects, list):
        return None
    subjects: list[Subject | None] = []
    for s in raw_subjects:
        subj: Subject | None = None
        if isinstance(s, dict):
            sk, sn, sns = s.get("kind"), s.get("name"), s.get("namespace") or ""
            if isinstance(sk, str) and isinstance(sn, str) and isinstance(sns, str):
                subj = (sk, sn, sns)
        subjects.append(subj)
    return _BindingSpec(name, namespace, kind, rname, subjects)


class _Binding:
    """A binding joined to the rules of its role (None when the role is missing)."""

    __slots__ = ("order", "reasons", "rules", "spec")

    def __init__(self, spec: _BindingSpec, order: int, rules: tuple[_Rule, ...] | None):
        self.spec = spec
        self.order = order
        self.rules = rules
        self.reasons: dict[int, str] = {}

    def source(self, i: int) -> str:
        """How upstream names this binding as the source of a rule, for its i-th subject."""
        r = self.reasons.get(i)
        if r is None:
            s = self.spec
            kind, name, sns = s.subjects[i]  # type: ignore[misc]
            if kind == "ServiceAccount":
                who = f"{kind} {go_quote(name + '/' + (sns or s.namespace))}"
            else:
                who = f"{kind} {go_quote(name)}"
            if s.namespace:
                r = (f"RoleBinding {go_quote(s.name + '/' + s.namespace)} of {s.role_kind} "
                     f"{go_quote(s.role_name)} to {who}")
            else:
                r = f"ClusterRoleBinding {go_quote(s.name)} of {s.role_kind} {go_quote(s.role_name)} to {who}"
            self.reasons[i] = r
        return r


class _Scope:
    """Bindings of one scope ("" for ClusterRoleBindings, else a namespace) by the user or group they name."""

    __slots__ = ("groups", "users")

    def __init__(self) -> None:
        self.users: dict[str, list[tuple[_Binding, int]]] = {}
        self.groups: dict[str, list[tuple[_Binding, int]]] = {}


def _subject_user(kind: str, name: str, sns: str, binding_ns: str) -> str | None:
    """The user name a User or ServiceAccount subject matches (None: it matches none)."""
    if kind == "User":
        return name
    if kind == "ServiceAccount":
        # A RoleBinding may leave its service accounts' namespace implicit; a
        # ClusterRoleBinding's must be explicit or the subject matches nobody.
        ns = sns or binding_ns
        return f"{SA_PREFIX}{ns}:{name}" if ns else None
    return None


class _Index:
    __slots__ = ("cluster_roles", "roles", "scopes")

    def __init__(self) -> None:
        self.cluster_roles: dict[str, tuple[_Rule, ...]] = {}
        self.roles: dict[tuple[str, str], tuple[_Rule, ...]] = {}
        self.scopes: dict[str, _Scope] = {}

    def role_rules(self, kind: str, name: str, namespace: str) -> tuple[_Rule, ...] | None:
        if kind == "ClusterRole":
            return self.cluster_roles.get(name)
        if kind == "Role":
            # A ClusterRoleBinding cannot reference a Role: there is none in "".
            return self.roles.get((namespace, name)) if namespace else None
        return None

    def add_binding(self, spec: _BindingSpec, order: int) -> None:
        b = _Binding(spec, order, self.role_rules(spec.role_kind, spec.role_name, spec.namespace))
        scope = self.scopes.get(spec.namespace)
        if scope is None:
            scope = self.scopes[spec.namespace] = _Scope()
        for i, subj in enumerate(spec.subjects):
            if subj is None:
                continue
            kind, name, sns = subj
            if kind == "Group":
                scope.groups.setdefault(name, []).append((b, i))
                continue
            user = _subject_user(kind, name, sns, spec.namespace)
            if user is not None:
                scope.users.setdefault(user, []).append((b, i))


class _Resolved:
    """What one (user, groups, namespace) is granted: rules with their source, and why not more."""

    __slots__ = ("deny_reason", "grants", "missing")

    def __init__(self, grants: tuple[tuple[tuple[_Rule, ...], str], ...], missing: tuple[tuple[str, str], ...]):
        self.grants = grants
        self.missing = missing
        self.deny_reason = ("RBAC: " + _aggregate([_not_found(k, n, False) for k, n in missing])) if missing else ""


# ---------------------------------------------------------------- the authorizer

def _attr(attributes: Obj, key: str) -> str:
    v = attributes.get(key)
    return v if isinstance(v, str) else ""


def compile_rules(rules: list[Obj]) -> tuple[_Rule, ...]:
    """Policy rules compiled for ``rules_allow`` (malformed rules are dropped)."""
    return _compile_rules({"rules": rules})


def rules_allow(rules: tuple[_Rule, ...], attributes: Obj, resource: bool) -> bool:
    """Whether any of the compiled rules allows the request (upstream's RulesAllow)."""
    verb = _attr(attributes, "verb")
    if not resource:
        path = _attr(attributes, "path")
        return any(r.allows_url(verb, path) for r in rules)
    sub = _attr(attributes, "subresource")
    combined = _attr(attributes, "resource") + ("/" + sub if sub else "")
    group, name = _attr(attributes, "group"), _attr(attributes, "name")
    return any(r.allows_resource(verb, group, combined, sub, name) for r in rules)


class RBACAuthorizer:
    """Authorization from Roles, ClusterRoles, RoleBindings and ClusterRoleBindings in the watch cache."""

    def __init__(self, cache: WatchCache, registry: Registry):
        self._cache = cache
        prefixes = []
        for plural in ("roles", "clusterroles", "rolebindings", "clusterrolebindings"):
            k = registry.by_resource(GROUP, VERSION, plural)
            prefixes.append(k.storage_prefix if k is not None else "")
        self._prefixes = tuple(prefixes)
        self._sig: tuple | None = None
        self._index = _Index()
        self._memo: dict[tuple[str, tuple[str, ...], str], _Resolved] = {}
        # Decoded objects by storage key, each with the cache entry it came
        # from: a rebuild decodes again only what was written since.
        self._parsed: tuple[dict[str, tuple[Entry, Any]], ...] = ({}, {}, {}, {})

    # -- the index

    def _caches(self) -> list[ResourceCache | None]:
        caches = self._cache.caches
        return [caches.get(p) if p else None for p in self._prefixes]

    def _signature(self, caches: list[ResourceCache | None]) -> tuple:
        # Every change to a cache appends an event (a new last rv) or, on a
        # relist, moves base_rv; len and id catch anything else cheaply.
        sig: list[Any] = [self._cache.base_rv]
        for c in caches:
            if c is None:
                sig.append(None)
            else:
                ev = c.events
                sig.append((id(c.objects), len(c.objects), ev[-1].rv if ev else 0))
        return tuple(sig)

    def _current(self) -> _Index:
        caches = self._caches()
        sig = self._signature(caches)
        if sig != self._sig:
            self._index = self._build(caches)
            self._memo = {}
            self._sig = sig
        return self._index

    def _decode(self, slot: int, cache: ResourceCache | None, parse: Any) -> list[Any]:
        old = self._parsed[slot]
        new: dict[str, tuple[Entry, Any]] = {}
        out = []
        if cache is not None:
            for key, entry in cache.objects.items():
                hit = old.get(key)
                if hit is not None and hit[0] is entry:
                    parsed = hit[1]
                else:
                    parsed = None
                    try:
                        obj = orjson.loads(entry.raw)
                    except orjson.JSONDecodeError:
                        obj = None
                    if isinstance(obj, dict) and isinstance(entry.name, str) and isinstance(entry.namespace, str):
                        parsed = parse(obj, entry)
                new[key] = (entry, parsed)
                if parsed is not None:
                    out.append(parsed)
        self._parsed = (*self._parsed[:slot], new, *self._parsed[slot + 1:])
        return out

    def _build(self, caches: list[ResourceCache | None]) -> _Index:
        idx = _Index()
        for ns, name, rules in self._decode(0, caches[0], lambda o, e: (e.namespace, e.name, _compile_rules(o))):
            if ns:
                idx.roles[(ns, name)] = rules
        for _ns, name, rules in self._decode(1, caches[1], lambda o, e: (e.namespace, e.name, _compile_rules(o))):
            idx.cluster_roles[name] = rules
        rbs = [s for s in self._decode(2, caches[2], lambda o, e: _parse_binding(o, e.name, e.namespace))
               if s.namespace]
        crbs = self._decode(3, caches[3], lambda o, e: _parse_binding(o, e.name, ""))
        # Upstream visits ClusterRoleBindings first, then the namespace's
        # RoleBindings, each in lister order; ours is by name, so the allowing
        # binding a reason names is the same every time.
        crbs.sort(key=lambda s: s.name)
        rbs.sort(key=lambda s: (s.namespace, s.name))
        for order, spec in enumerate(crbs + rbs):
            idx.add_binding(spec, order)
        return idx

    def _resolve(self, user: str, groups: tuple[str, ...], namespace: str) -> _Resolved:
        idx = self._current()
        if type(groups) is not tuple:
            groups = tuple(groups) if isinstance(groups, (list, set, frozenset)) else ()
        memo_key = (user, groups, namespace)
        try:
            got = self._memo.get(memo_key)
        except TypeError:
            # A review body can name a user or groups of any JSON type; what is
            # not a string names nobody.
            user = user if isinstance(user, str) else ""
            groups = tuple(g for g in groups if isinstance(g, str))
            namespace = namespace if isinstance(namespace, str) else ""
            memo_key = (user, groups, namespace)
            got = self._memo.get(memo_key)
        if got is not None:
            return got
        hits: dict[_Binding, int] = {}
        for scope_name in (("", namespace) if namespace else ("",)):
            scope = idx.scopes.get(scope_name)
            if scope is None:
                continue
            lists = [scope.users.get(user, ())] + [scope.groups.get(g, ()) for g in groups]
            for lst in lists:
                for b, i in lst:
                    # The first subject of a binding that applies is the one a
                    # reason names, whichever way the user matched.
                    prev = hits.get(b)
                    if prev is None or i < prev:
                        hits[b] = i
        ordered = sorted(hits.items(), key=lambda kv: kv[0].order)
        grants = tuple((b.rules, b.source(i)) for b, i in ordered if b.rules is not None)
        missing = tuple((b.spec.role_kind, b.spec.role_name) for b, _ in ordered if b.rules is None)
        res = _Resolved(grants, missing)
        if len(self._memo) >= _MEMO_MAX:
            self._memo = {}
        self._memo[memo_key] = res
        return res

    # -- Authorizer

    def authorize(self, user: str, groups: tuple[str, ...], attributes: Obj, resource: bool) -> tuple[bool, str]:
        """(allowed, reason): upstream's "RBAC: allowed by ..." on allow; on deny "" or the resolution errors."""
        verb = _attr(attributes, "verb")
        if resource:
            res = self._resolve(user, groups, _attr(attributes, "namespace"))
            group = _attr(attributes, "group")
            sub = _attr(attributes, "subresource")
            combined = _attr(attributes, "resource")
            if sub:
                combined = combined + "/" + sub
            name = _attr(attributes, "name")
            for rules, source in res.grants:
                for r in rules:
                    if r.allows_resource(verb, group, combined, sub, name):
                        return True, "RBAC: allowed by " + source
        else:
            # Non-resource URLs have no namespace, so only ClusterRoleBindings apply.
            res = self._resolve(user, groups, "")
            path = _attr(attributes, "path")
            for rules, source in res.grants:
                for r in rules:
                    if r.allows_url(verb, path):
                        return True, "RBAC: allowed by " + source
        return False, res.deny_reason

    def rules_for(self, user: str, groups: tuple[str, ...], namespace: str) -> tuple[list[Obj], list[Obj], bool]:
        """SelfSubjectRulesReview's (resourceRules, nonResourceRules, incomplete), as upstream lists them.

        As upstream, every rule of every applicable binding is listed in the
        order visited, without merging; a rule naming non-resource URLs is
        listed even when it came through a RoleBinding (where it grants
        nothing), since upstream's rules review does the same.
        """
        res_rules: list[Obj] = []
        non_rules: list[Obj] = []
        for rules, _source in self._resolve(user, groups, namespace).grants:
            for r in rules:
                p = r.policy
                if "resources" in p:
                    info: Obj = {"verbs": list(p["verbs"])}
                    for f in ("apiGroups", "resources", "resourceNames"):
                        if f in p:
                            info[f] = list(p[f])
                    res_rules.append(info)
                if "nonResourceURLs" in p:
                    non_rules.append({"verbs": list(p["verbs"]), "nonResourceURLs": list(p["nonResourceURLs"])})
        return res_rules, non_rules, False

    # -- for the escalation checks

    def resolve(self, user: str, groups: tuple[str, ...], namespace: str) -> tuple[list[Obj], list[str]]:
        """(rules, resolution errors): every policy rule the user holds in the namespace ("" = cluster-wide only).

        The errors name missing roles as upstream's registry does (plural
        resource), for the "; resolution errors: ..." tail of an escalation
        refusal.
        """
        res = self._resolve(user, groups, namespace)
        rules = [_copy_policy(r.policy) for rules, _ in res.grants for r in rules]
        return rules, [_not_found(k, n, True) for k, n in res.missing]

    def rules_applying(self, user: str, groups: tuple[str, ...], namespace: str) -> list[Obj]:
        """The policy rules (resource and non-resource) an escalation check weighs as the user's own."""
        return self.resolve(user, groups, namespace)[0]

    def role_ref_rules(self, role_ref: Obj, namespace: str) -> list[Obj] | None:
        """The rules a binding's roleRef grants (namespace = the binding's, "" for a ClusterRoleBinding).

        None when the role does not exist (or the kind is neither Role nor
        ClusterRole): upstream then refuses the binding with NotFound, see
        ``role_ref_not_found``.
        """
        if not isinstance(role_ref, dict):
            return None
        kind, name = role_ref.get("kind"), role_ref.get("name")
        if not isinstance(kind, str) or not isinstance(name, str):
            return None
        rules = self._current().role_rules(kind, name, namespace)
        if rules is None:
            return None
        return [_copy_policy(r.policy) for r in rules]

    def confirm_no_escalation(self, user: str, groups: tuple[str, ...], namespace: str,
                              rules: list[Obj]) -> str | None:
        """None when the user already holds every rule; else upstream's refusal message.

        The caller wraps it as upstream does: a 403 Forbidden whose message is
        ``<plural>.rbac.authorization.k8s.io "<name>" is forbidden: <this>``.
        """
        owner, errs = self.resolve(user, groups, namespace)
        ok, missing = covers(owner, rules)
        if ok:
            return None
        return escalation_message(user, groups, missing, errs)


def _copy_policy(p: Obj) -> Obj:
    return {k: list(v) for k, v in p.items()}


def role_ref_not_found(role_ref: Obj) -> tuple[str, str]:
    """(resource, name) for the NotFound a binding to a missing role gets, e.g. ("roles", "reader")."""
    kind = role_ref.get("kind") if isinstance(role_ref, dict) else None
    name = role_ref.get("name") if isinstance(role_ref, dict) else None
    resource = "roles" if kind == "Role" else "clusterroles"
    return resource, name if isinstance(name, str) else ""


def bind_attributes(role_ref: Obj, binding_namespace: str) -> Obj:
    """The check that lets a user create a binding to a role they do not hold: verb bind on the role.

    Asked in the binding's namespace ("" for a ClusterRoleBinding), so `bind`
    can be delegated per namespace.
    """
    kind = role_ref.get("kind")
    return {"verb": "bind", "group": role_ref.get("apiGroup") or "", "version": "",
            "resource": "clusterroles" if kind == "ClusterRole" else "roles",
            "subresource": "", "namespace": binding_namespace, "name": role_ref.get("name") or ""}


def escalate_attributes(plural: str, namespace: str, name: str) -> Obj:
    """The check that lets a user write a Role/ClusterRole with rules they do not hold: verb escalate."""
    return {"verb": "escalate", "group": GROUP, "version": "*", "resource": plural, "subresource": "",
            "namespace": namespace, "name": name}


# ---------------------------------------------------------------- escalation: covers

def breakdown_rule(rule: Obj) -> list[Obj]:
    """A rule as atoms of one group, resource, verb and (if any) name; URLs pair only with verbs."""
    p = clean_rule(rule)
    if p is None:
        return []
    verbs = p["verbs"]
    names = p.get("resourceNames", ())
    out: list[Obj] = []
    for g in p.get("apiGroups", ()):
        for r in p.get("resources", ()):
            for v in verbs:
                if names:
                    out.extend({"apiGroups": [g], "resources": [r], "verbs": [v], "resourceNames": [n]}
                               for n in names)
                else:
                    out.append({"apiGroups": [g], "resources": [r], "verbs": [v]})
    for u in p.get("nonResourceURLs", ()):
        for v in verbs:
            out.append({"nonResourceURLs": [u], "verbs": [v]})
    return out


def _resources_cover(owner: Sequence[str], wanted: Sequence[str]) -> bool:
    if "*" in owner:
        return True
    for path in wanted:
        if path in owner:
            continue
        # "*/scale" in the owner's rule covers "deployments/scale".
        head, sep, tail = path.partition("/")
        if not sep or "*/" + tail not in owner:
            return False
    return True


def _url_covered(owner: Sequence[str], path: str) -> bool:
    return any(o == path or (o.endswith("*") and path.startswith(o.rstrip("*"))) for o in owner)


def _rule_covers(owner: Obj, atom: Obj) -> bool:
    ov, og = owner.get("verbs", ()), owner.get("apiGroups", ())
    onames = owner.get("resourceNames", ())
    names = atom.get("resourceNames", ())
    if not ("*" in ov or all(v in ov for v in atom.get("verbs", ()))):
        return False
    if not ("*" in og or all(g in og for g in atom.get("apiGroups", ()))):
        return False
    if not _resources_cover(owner.get("resources", ()), atom.get("resources", ())):
        return False
    if not all(_url_covered(owner.get("nonResourceURLs", ()), u) for u in atom.get("nonResourceURLs", ())):
        return False
    # An owner limited to names never covers an atom for every name.
    if not names:
        return not onames
    return not onames or all(n in onames for n in names)


def covers(owner_rules: list[Obj], requested_rules: list[Obj]) -> tuple[bool, list[Obj]]:
    """(covered, uncovered atoms): whether the owner's rules grant everything the requested rules do.

    Each requested rule is broken into atoms (one group, resource, verb and
    name each) and an atom is covered when a single owner rule covers it, as
    upstream's escalation check does. Owner rules of the wrong shape cover
    nothing; requested rules of the wrong shape grant nothing and so need no
    cover.
    """
    owners = [p for p in (clean_rule(r) for r in owner_rules) if p is not None]
    uncovered = [atom for req in requested_rules for atom in breakdown_rule(req)
                 if not any(_rule_covers(o, atom) for o in owners)]
    return not uncovered, uncovered


# ---------------------------------------------------------------- escalation: the message

def compact_rules(rules: list[Obj]) -> list[Obj]:
    """Merge atoms of one group and one resource (nothing else) that differ only by verb, as upstream does."""
    out: list[Obj] = []
    simple: dict[tuple[str, str], Obj] = {}
    for r in rules:
        groups, resources = r.get("apiGroups") or [], r.get("resources") or []
        if (len(groups) == 1 and len(resources) == 1 and not r.get("resourceNames")
                and not r.get("nonResourceURLs") and set(r) <= {"apiGroups", "resources", "verbs"}):
            key = (groups[0], resources[0])
            if key in simple:
                simple[key]["verbs"].extend(r.get("verbs") or [])
            else:
                simple[key] = {"apiGroups": [groups[0]], "resources": [resources[0]],
                               "verbs": list(r.get("verbs") or [])}
        else:
            out.append(r)
    out.extend(simple.values())
    return out


def compact_string(rule: Obj) -> str:
    """A rule as upstream prints it in escalation refusals: {APIGroups:["apps"], Resources:["deployments"], ...}."""
    parts = []
    for field, label in (("apiGroups", "APIGroups"), ("resources", "Resources"),
                         ("nonResourceURLs", "NonResourceURLs"), ("resourceNames", "ResourceNames"),
                         ("verbs", "Verbs")):
        vals = rule.get(field)
        if vals:
            parts.append(f"{label}:{go_quote_list(vals)}")
    return "{" + ", ".join(parts) + "}"


def escalation_message(user: str, groups: Sequence[str], missing_rules: list[Obj],
                       resolution_errors: Sequence[str] = ()) -> str:
    """Upstream's refusal of a Role/ClusterRole/binding write that grants more than the writer holds.

    ``missing_rules`` are the uncovered atoms from ``covers``; they are
    compacted, printed one per line, sorted and deduplicated. The caller puts
    it behind ``<plural>.rbac.authorization.k8s.io "<name>" is forbidden: ``.
    """
    lines = sorted({compact_string(r) for r in compact_rules(missing_rules)})
    msg = (f"user {go_quote(user)} (groups={go_quote_list(groups)}) is attempting to grant RBAC permissions "
           f"not currently held:\n" + "\n".join(lines))
    if resolution_errors:
        # Upstream prints its one aggregated resolution error as a Go slice.
        msg += f"; resolution errors: [{_aggregate(list(resolution_errors))}]"
    return msg
