"""Server-side apply and managed fields (``metadata.managedFields``).

This module owns field ownership the way apiserver's field manager and
structured-merge-diff define it, as pure functions over JSON objects:

* :class:`FieldSet`, a set of field paths in the tree shape of the FieldsV1
  format (``{"f:spec": {"f:replicas": {}}}``), with set algebra and conversion
  to and from FieldsV1 dicts;
* :func:`fields_of`, the fields an applied configuration sets;
* :func:`apply`, the object after a manager applies its configuration: merged
  by the schema's list semantics, with the fields the manager stopped applying
  removed, conflicts with other managers raised (409) unless forced;
* :func:`track_update`, ownership bookkeeping for ordinary writes (create,
  update, patch): the writer takes every field it changed.

The schema (:mod:`kybernetes.api.schema`) says how lists and maps are owned:
``x-kubernetes-list-type`` map lists are owned per item by their list-map keys
(``k:``), set lists per value (``v:``), atomic lists and atomic maps as a whole.
Nothing here touches storage or HTTP; the API server passes the manager name,
the live object and the time, and stores what comes back.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, cache
from typing import Any

import orjson

from kybernetes.api.errors import StatusError, bad_request
from kybernetes.api.schema import ANY, ARRAY, MAP, OBJECT, Node, get_schema

APPLY = "Apply"
UPDATE = "Update"
FIELDS_V1 = "FieldsV1"

# Upstream keeps at most this many Update entries; older ones are folded into
# one "ancient-changes" entry per apiVersion so managedFields cannot grow forever.
MAX_UPDATE_MANAGERS = 10
ANCIENT_CHANGES = "ancient-changes"

# Server-owned fields: nobody owns them, whatever a request says. Removed as
# exact paths (not subtrees), as upstream's strip set: metadata itself is not
# owned, but labels below it are.
_SERVER_META = ("name", "namespace", "uid", "resourceVersion", "creationTimestamp", "generation",
                "selfLink", "managedFields", "deletionTimestamp", "deletionGracePeriodSeconds")
# Of those, the ones an apply configuration may not set: the merged object keeps
# the live values (name and namespace come from the URL and must match).
_CONFIG_DROPPED = ("uid", "resourceVersion", "creationTimestamp", "generation", "selfLink",
                   "deletionTimestamp", "deletionGracePeriodSeconds")

# List-map key fields that may be omitted because the server defaults them.
# Upstream reads these from the OpenAPI ``default``; the 1.32 JSON Schema we load
# does not carry defaults, so the few that matter are named here.
_KEY_DEFAULTS: dict[str, dict[str, Any]] = {
    "io.k8s.api.core.v1.ContainerPort": {"protocol": "TCP"},
    "io.k8s.api.core.v1.ServicePort": {"protocol": "TCP"},
}

_ATOMIC = "atomic"
_SET = "set"
_MAPLIST = "map"

# Stand-in schema for a field a struct does not declare: owned as a whole.
_OPAQUE = Node("opaque")
_ABSENT: Any = object()

Path = tuple[str, ...]


# ---- field sets --------------------------------------------------------------------


class FieldSet:
    """A set of field paths, stored as a tree keyed by FieldsV1 path elements.

    Path elements are the FieldsV1 key strings themselves: ``f:<field>``,
    ``k:<json object of the list-map keys>``, ``v:<json value>`` (set items) and
    ``i:<index>``. ``members`` are the elements whose path (prefix + element) is
    in the set; ``children`` hold paths that continue below an element. A child
    set is never empty.
    """

    __slots__ = ("children", "members")

    def __init__(self, members: Collection[str] = (), children: dict[str, FieldSet] | None = None) -> None:
        self.members: set[str] = set(members)
        self.children: dict[str, FieldSet] = children if children is not None else {}

    # -- construction and queries

    @classmethod
    def from_paths(cls, paths: Collection[Sequence[str]]) -> FieldSet:
        out = cls()
        for p in paths:
            out.insert(p)
        return out

    def insert(self, path: Sequence[str]) -> None:
        if not path:
            return
        node = self
        for pe in path[:-1]:
            nxt = node.children.get(pe)
            if nxt is None:
                nxt = node.children[pe] = FieldSet()
            node = nxt
        node.members.add(path[-1])

    def has(self, path: Sequence[str]) -> bool:
        node: FieldSet | None = self
        for pe in path[:-1]:
            node = node.children.get(pe) if node is not None else None
        return node is not None and bool(path) and path[-1] in node.members

    def empty(self) -> bool:
        return not self.members and not self.children

    def copy(self) -> FieldSet:
        return FieldSet(self.members, {pe: c.copy() for pe, c in self.children.items()})

    def paths(self, prefix: Path = ()) -> Iterator[Path]:
        """Every path in the set: a node's members first, then its children, each sorted."""
        for pe in sorted(self.members, key=_pe_sort_key):
            yield prefix + (pe,)
        for pe in sorted(self.children, key=_pe_sort_key):
            yield from self.children[pe].paths(prefix + (pe,))

    def __len__(self) -> int:
        return len(self.members) + sum(len(c) for c in self.children.values())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FieldSet):
            return NotImplemented
        return self.members == other.members and self.children == other.children

    def __repr__(self) -> str:
        return f"FieldSet({orjson.dumps(self.to_fields_v1()).decode()})"

    # -- algebra (results are new sets; operands are not modified)

    def union(self, other: FieldSet) -> FieldSet:
        children = {pe: c.copy() for pe, c in self.children.items()}
        for pe, c in other.children.items():
            mine = children.get(pe)
            children[pe] = mine.union(c) if mine is not None else c.copy()
        return FieldSet(self.members | other.members, children)

    def difference(self, other: FieldSet) -> FieldSet:
        """Paths of self that are not paths of other (member for member; no subtree removal)."""
        children: dict[str, FieldSet] = {}
        for pe, c in self.children.items():
            theirs = other.children.get(pe)
            d = c.difference(theirs) if theirs is not None else c.copy()
            if not d.empty():
                children[pe] = d
        return FieldSet(self.members - other.members, children)

    def intersection(self, other: FieldSet) -> FieldSet:
        children: dict[str, FieldSet] = {}
        for pe, c in self.children.items():
            theirs = other.children.get(pe)
            if theirs is not None:
                i = c.intersection(theirs)
                if not i.empty():
                    children[pe] = i
        return FieldSet(self.members & other.members, children)

    def without_subtrees(self, prefixes: FieldSet) -> FieldSet:
        """Self minus every path at or below a member of ``prefixes``."""
        children: dict[str, FieldSet] = {}
        for pe, c in self.children.items():
            if pe in prefixes.members:
                continue
            theirs = prefixes.children.get(pe)
            d = c.without_subtrees(theirs) if theirs is not None else c.copy()
            if not d.empty():
                children[pe] = d
        return FieldSet(self.members - prefixes.members, children)

    # -- FieldsV1

    def to_fields_v1(self) -> dict[str, Any]:
        """The FieldsV1 JSON form, keys ordered as upstream serializes them."""
        out: dict[str, Any] = {}
        for pe in sorted(self.members | self.children.keys(), key=_pe_sort_key):
            child = self.children.get(pe)
            if child is None:
                out[pe] = {}
                continue
            inner = child.to_fields_v1()
            out[pe] = {".": {}, **inner} if pe in self.members else inner
        return out

    @classmethod
    def from_fields_v1(cls, doc: Any) -> FieldSet:
        """Parse a FieldsV1 dict; ValueError if it is malformed."""
        if not isinstance(doc, dict):
            raise ValueError("FieldsV1 must be a JSON object")
        out = cls()
        for key, sub in doc.items():
            if key == ".":
                continue
            if not isinstance(sub, dict):
                raise ValueError(f"FieldsV1 value of {key!r} must be an object")
            pe = _normalize_pe(key)
            if not sub or "." in sub:
                out.members.add(pe)
            child = cls.from_fields_v1(sub)
            if not child.empty():
                existing = out.children.get(pe)
                out.children[pe] = existing.union(child) if existing is not None else child
        return out


def _normalize_pe(key: str) -> str:
    # Keys are compared as strings, so "k:" and "v:" JSON must be canonical.
    prefix, _, rest = key.partition(":")
    if not _ or prefix not in ("f", "k", "v", "i"):
        raise ValueError(f"invalid FieldsV1 path element {key!r}")
    if prefix == "f":
        return key
    if prefix == "i":
        try:
            return "i:" + str(int(rest))
        except ValueError:
            raise ValueError(f"invalid FieldsV1 index {key!r}") from None
    try:
        value = orjson.loads(rest)
    except orjson.JSONDecodeError:
        raise ValueError(f"invalid FieldsV1 path element {key!r}") from None
    if prefix == "k":
        if not isinstance(value, dict):
            raise ValueError(f"invalid FieldsV1 key {key!r}")
        return "k:" + orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return "v:" + orjson.dumps(value).decode()


def _value_sort_key(v: Any) -> tuple[Any, ...]:
    # A total order over JSON values, grouping by type first (numbers, strings,
    # booleans, lists, maps, null), like structured-merge-diff's value ordering.
    if isinstance(v, bool):
        return (2, v)
    if isinstance(v, (int, float)):
        return (0, float(v))
    if isinstance(v, str):
        return (1, v)
    if isinstance(v, list):
        return (3, tuple(_value_sort_key(x) for x in v))
    if isinstance(v, dict):
        return (4, tuple((k, _value_sort_key(v[k])) for k in sorted(v)))
    return (5,)


@lru_cache(maxsize=4096)
def _pe_sort_key(pe: str) -> tuple[Any, ...]:
    # Field names sort before list keys, values and indices, as upstream orders
    # path elements; within a kind, by name, key fields, value or index.
    kind, rest = pe[0], pe[2:]
    if kind == "f":
        return (0, rest)
    if kind == "k":
        keys = orjson.loads(rest)
        return (1, tuple((k, _value_sort_key(keys[k])) for k in sorted(keys)))
    if kind == "v":
        return (2, _value_sort_key(orjson.loads(rest)))
    return (3, int(rest))


def _go_string(v: Any) -> str:
    # How structured-merge-diff prints a key value in a path: strings quoted.
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, (int, float)):
        return str(v)
    return orjson.dumps(v).decode()


def path_string(path: Sequence[str]) -> str:
    """A path as upstream prints it in conflicts: ``.spec.containers[name="nginx"].image``."""
    out = []
    for pe in path:
        kind, rest = pe[0], pe[2:]
        if kind == "f":
            out.append("." + rest)
        elif kind == "k":
            keys = orjson.loads(rest)
            out.append("[" + ",".join(f"{k}={_go_string(keys[k])}" for k in sorted(keys)) + "]")
        elif kind == "v":
            out.append("[=" + _go_string(orjson.loads(rest)) + "]")
        else:
            out.append(f"[{rest}]")
    return "".join(out)


# ---- schema semantics --------------------------------------------------------------


@cache
def _definition_map_type(defname: str) -> str | None:
    # Definitions such as LabelSelector and OwnerReference declare themselves
    # atomic; the compiled Node only keeps field-level extensions.
    raw = get_schema().defs.get(defname)
    return raw.get("x-kubernetes-map-type") if raw else None


def _atomic_object(node: Node | None) -> bool:
    if node is None:
        return False
    if node.kind not in (OBJECT, MAP, ANY):
        return True  # a scalar schema holding an object: replaced as a whole
    mt = node.map_type
    if mt is None and node.name:
        mt = _definition_map_type(node.name)
    return mt == "atomic"


def _list_semantics(node: Node | None) -> tuple[str, tuple[str, ...]]:
    """(atomic | set | map, list-map keys) of a list field, as upstream derives them."""
    if node is None or node.kind != ARRAY:
        return _ATOMIC, ()  # untyped lists are atomic
    lt = node.list_type
    if lt == "map":
        keys = node.list_map_keys or ((node.merge_key,) if node.merge_key else ())
        return (_MAPLIST, keys) if keys else (_ATOMIC, ())
    if lt == "set":
        return _SET, ()
    if lt == "atomic":
        return _ATOMIC, ()
    # No list type: fall back to the strategic-merge-patch annotations.
    if "merge" in (node.strategy or "").split(","):
        return (_MAPLIST, (node.merge_key,)) if node.merge_key else (_SET, ())
    return _ATOMIC, ()


def _child(node: Node | None, key: str) -> tuple[Node | None, bool]:
    """(schema of field ``key``, whether it is a declared struct field)."""
    if node is None or node.kind == ANY:
        return None, False
    if node.kind == OBJECT:
        sub = node.prop(key)
        return (sub, True) if sub is not None else (_OPAQUE, False)
    if node.kind == MAP:
        return node.values, False
    return _OPAQUE, False


def _item_pe(item: Any, index: int, kind: str, keys: tuple[str, ...], items: Node | None) -> str:
    if kind == _SET:
        return "v:" + orjson.dumps(item).decode()
    if isinstance(item, dict):
        defaults = _KEY_DEFAULTS.get(items.name or "", {}) if items is not None else {}
        values = {}
        for k in sorted(keys):
            if k in item:
                values[k] = item[k]
            elif k in defaults:
                values[k] = defaults[k]
        if values:
            return "k:" + orjson.dumps(values).decode()
    # An item without its keys is invalid upstream; index it rather than fail.
    return f"i:{index}"


def _granular(value: Any, node: Node | None) -> bool:
    """Whether ownership goes below ``value`` (False: it is owned as a whole)."""
    if isinstance(value, dict):
        return not _atomic_object(node)
    if isinstance(value, list):
        return _list_semantics(node)[0] != _ATOMIC
    return False


def _object_fields(value: dict[str, Any], node: Node | None) -> FieldSet:
    out = FieldSet()
    for k, v in value.items():
        pe = "f:" + k
        child, declared = _child(node, k)
        if child is _OPAQUE or not _granular(v, child):
            out.members.add(pe)
            continue
        # Declared struct fields are owned through their leaves; map entries,
        # and structs with nothing inside, are owned themselves too.
        if not declared or v == {}:
            out.members.add(pe)
        sub = _list_fields(v, child) if isinstance(v, list) else _object_fields(v, child)
        if not sub.empty():
            out.children[pe] = sub
    return out


def _list_fields(value: list[Any], node: Node | None) -> FieldSet:
    out = FieldSet()
    kind, keys = _list_semantics(node)
    items = node.items if node is not None else None
    for i, item in enumerate(value):
        pe = _item_pe(item, i, kind, keys, items)
        out.members.add(pe)
        if kind == _MAPLIST and isinstance(item, dict) and _granular(item, items):
            sub = _object_fields(item, items)
            if not sub.empty():
                have = out.children.get(pe)
                out.children[pe] = have.union(sub) if have is not None else sub
    return out


def _strip_set() -> FieldSet:
    meta = FieldSet({"f:" + n for n in _SERVER_META})
    return FieldSet({"f:apiVersion", "f:kind", "f:metadata"}, {"f:metadata": meta})


_STRIP = _strip_set()


def _ignored(subresource: str, ignore: Collection[str] | None) -> FieldSet:
    # Writes to the main resource never own status and writes to /status never
    # own spec (upstream's reset fields), so neither steals the other's fields.
    if ignore is None:
        ignore = ("status",) if not subresource else ("spec",) if subresource == "status" else ()
    return FieldSet({"f:" + n for n in ignore})


def _tracked(fs: FieldSet, ignored: FieldSet) -> FieldSet:
    return fs.difference(_STRIP).without_subtrees(ignored)


def fields_of(obj: dict[str, Any], node: Node | None, *, subresource: str = "",
              ignore: Collection[str] | None = None) -> FieldSet:
    """The fields ``obj`` sets, as an apply configuration owns them.

    Server-owned metadata (name, uid, resourceVersion, ...), apiVersion and kind
    are never owned, nor status for a main-resource write (``ignore`` overrides
    which top-level fields are left out).
    """
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return _tracked(_object_fields(obj, node), _ignored(subresource, ignore))


def _ensure_named(fs: FieldSet, node: Node | None) -> FieldSet:
    """``fs`` plus every declared struct field that has owned fields below it.

    Pruning compares these: a struct the applier used to fill and nobody fills
    any more goes away whole, defaults inside it included.
    """
    out = FieldSet(fs.members)
    for pe, sub in fs.children.items():
        if pe[0] == "f":
            child, declared = _child(node, pe[2:])
            if declared:
                out.members.add(pe)
        else:
            child = node.items if node is not None and node.kind == ARRAY else None
        out.children[pe] = _ensure_named(sub, child)
    return out


# ---- values ------------------------------------------------------------------------


def _equal(a: Any, b: Any) -> bool:
    # JSON equality: true is not 1, but 1 is 1.0.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def _merge(live: Any, cfg: Any, node: Node | None) -> Any:
    """``cfg`` applied over ``live``: granular maps merge, granular lists merge by item."""
    if live is _ABSENT:
        # Merging into nothing still drops the configuration's nulls.
        live = {} if isinstance(cfg, dict) else None
    if isinstance(cfg, dict) and isinstance(live, dict) and not _atomic_object(node):
        out = dict(live)
        for k, v in cfg.items():
            if v is None:
                # A null in a configuration owns the field and leaves it unset.
                out.pop(k, None)
                continue
            child, _ = _child(node, k)
            out[k] = _merge(live.get(k, _ABSENT), v, child)
        return out
    if isinstance(cfg, list) and isinstance(live, list):
        kind, keys = _list_semantics(node)
        if kind != _ATOMIC:
            return _merge_list(live, cfg, node, kind, keys)
    return copy.deepcopy(cfg)


def _merge_list(live: list[Any], cfg: list[Any], node: Node | None, kind: str, keys: tuple[str, ...]) -> list[Any]:
    """Merge two granular lists by item identity.

    Items only in the live list keep their place among their neighbours; items
    in both follow the configuration's order, and the configuration's new items
    are placed where the configuration puts them — the order structured-merge-diff
    produces, so repeated applies do not shuffle lists.
    """
    items = node.items if node is not None else None
    lpe = [_item_pe(x, i, kind, keys, items) for i, x in enumerate(live)]
    cpe = [_item_pe(x, i, kind, keys, items) for i, x in enumerate(cfg)]
    live_by: dict[str, Any] = {}
    for pe, x in zip(lpe, live):
        live_by.setdefault(pe, x)
    cfg_by: dict[str, Any] = {}
    for pe, x in zip(cpe, cfg):
        cfg_by.setdefault(pe, x)
    shared = [pe for pe in dict.fromkeys(cpe) if pe in live_by]
    next_shared = 0  # index into shared of the next shared item the config reaches

    def merged_item(pe: str) -> Any:
        c = cfg_by[pe]
        if pe in live_by and kind == _MAPLIST:
            return _merge(live_by[pe], c, items)
        return copy.deepcopy(c)

    out: list[Any] = []
    done: set[str] = set()
    i = j = 0
    while i < len(lpe) or j < len(cpe):
        if j < len(cpe) and cpe[j] in done:
            j += 1  # a duplicate in the configuration
            continue
        if i < len(lpe) and j < len(cpe) and lpe[i] == cpe[j]:
            out.append(merged_item(cpe[j]))
            done.add(cpe[j])
            i, j = i + 1, j + 1
            next_shared += 1
            continue
        if i < len(lpe):
            pe = lpe[i]
            if pe not in cfg_by:
                out.append(copy.deepcopy(live[i]))
                i += 1
                continue
            if pe in done or (j < len(cpe) and next_shared < len(shared) and shared[next_shared] != pe):
                # Already placed, or a shared item the configuration moved later.
                i += 1
                continue
        if j < len(cpe):
            pe = cpe[j]
            out.append(merged_item(pe))
            done.add(pe)
            if next_shared < len(shared) and shared[next_shared] == pe:
                next_shared += 1
            j += 1
        else:
            i += 1  # unreachable with well-formed input; guarantees progress
    return out


def _remove(value: Any, fs: FieldSet, node: Node | None) -> Any:
    """``value`` without the subtrees at the members of ``fs``."""
    if isinstance(value, dict) and not _atomic_object(node):
        out = {}
        for k, v in value.items():
            pe = "f:" + k
            if pe in fs.members:
                continue
            sub = fs.children.get(pe)
            out[k] = _remove(v, sub, _child(node, k)[0]) if sub is not None else v
        return out
    if isinstance(value, list):
        kind, keys = _list_semantics(node)
        if kind == _ATOMIC:
            return value
        items = node.items if node is not None else None
        kept = []
        for i, item in enumerate(value):
            pe = _item_pe(item, i, kind, keys, items)
            if pe in fs.members:
                continue
            sub = fs.children.get(pe)
            kept.append(_remove(item, sub, items) if sub is not None else item)
        return kept
    return value


@dataclass
class _Diff:
    modified: FieldSet = field(default_factory=FieldSet)
    added: FieldSet = field(default_factory=FieldSet)
    removed: FieldSet = field(default_factory=FieldSet)


def _compare(old: Any, new: Any, node: Node | None, path: list[str], diff: _Diff, implicit: bool = False) -> None:
    """Record which paths changed from ``old`` to ``new`` (either may be _ABSENT)."""
    if old is _ABSENT:
        _one_side(new, node, path, diff.added, added=True, implicit=implicit)
        return
    if new is _ABSENT:
        _one_side(old, node, path, diff.removed, added=False, implicit=False)
        return
    # null and an empty container compare as values; null against a filled
    # container compares the contents.
    if old is None and isinstance(new, (dict, list)) and new:
        old = type(new)()
    elif new is None and isinstance(old, (dict, list)) and old:
        new = type(old)()
    if isinstance(old, dict) and isinstance(new, dict) and (old or new) and not _atomic_object(node):
        for k in {**old, **new}:
            child, declared = _child(node, k)
            path.append("f:" + k)
            _compare(old.get(k, _ABSENT), new.get(k, _ABSENT), child, path, diff,
                     declared and _implicit(k, new.get(k), child, node))
            path.pop()
        return
    if isinstance(old, list) and isinstance(new, list) and (old or new):
        kind, keys = _list_semantics(node)
        if kind != _ATOMIC:
            items = node.items if node is not None else None
            olds: dict[str, Any] = {}
            for i, x in enumerate(old):
                olds.setdefault(_item_pe(x, i, kind, keys, items), x)
            news: dict[str, Any] = {}
            for i, x in enumerate(new):
                news.setdefault(_item_pe(x, i, kind, keys, items), x)
            for pe in {**olds, **news}:
                path.append(pe)
                _compare(olds.get(pe, _ABSENT), news.get(pe, _ABSENT), items, path, diff)
                path.pop()
            return
    if not _equal(old, new):
        diff.modified.insert(path)


def _implicit(key: str, value: Any, node: Node | None, parent: Node | None) -> bool:
    # Go always serializes a non-pointer struct and a field without omitempty
    # (a required field), so upstream never sees those appear: it owns what is
    # inside them, not the field itself. Filled structs and required fields are
    # the closest the schema gets to saying which fields those are.
    if parent is not None and key in parent.required:
        return True
    return isinstance(value, dict) and bool(value) and node is not None and node.kind == OBJECT


def _one_side(value: Any, node: Node | None, path: list[str], into: FieldSet, *, added: bool,
              implicit: bool) -> None:
    """Every path of a subtree present on one side only (added or removed)."""
    if path and not (implicit and _granular(value, node)):
        into.insert(path)
    if isinstance(value, dict) and _granular(value, node):
        for k, v in value.items():
            child, declared = _child(node, k)
            path.append("f:" + k)
            _one_side(v, child, path, into, added=added,
                      implicit=added and declared and _implicit(k, v, child, node))
            path.pop()
    elif isinstance(value, list) and _granular(value, node):
        kind, keys = _list_semantics(node)
        items = node.items if node is not None else None
        for i, x in enumerate(value):
            path.append(_item_pe(x, i, kind, keys, items))
            _one_side(x, items, path, into, added=added, implicit=False)
            path.pop()


def _diff(old: dict[str, Any], new: dict[str, Any], node: Node | None, ignored: FieldSet) -> _Diff:
    d = _Diff()
    _compare(old, new, node, [], d)
    return _Diff(_tracked(d.modified, ignored), _tracked(d.added, ignored), _tracked(d.removed, ignored))


# ---- managedFields entries ---------------------------------------------------------

Key = tuple[str, str, str, str]  # manager, operation, apiVersion (Update only), subresource


@dataclass
class ManagedEntry:
    """One metadata.managedFields entry, decoded."""

    manager: str
    operation: str
    api_version: str
    fields: FieldSet
    time: str | None = None
    subresource: str = ""

    @property
    def key(self) -> Key:
        # An applier is one owner whatever version it applies with; updaters
        # are told apart by version, as upstream's manager identifiers.
        version = self.api_version if self.operation == UPDATE else ""
        return (self.manager, self.operation, version, self.subresource)

    def encode(self) -> dict[str, Any]:
        out: dict[str, Any] = {"manager": self.manager, "operation": self.operation,
                               "apiVersion": self.api_version}
        if self.time:
            out["time"] = self.time
        out["fieldsType"] = FIELDS_V1
        out["fieldsV1"] = self.fields.to_fields_v1()
        if self.subresource:
            out["subresource"] = self.subresource
        return out


def decode_managed_fields(entries: Any) -> dict[Key, ManagedEntry]:
    """metadata.managedFields decoded by owner; ValueError if malformed."""
    if entries is None:
        return {}
    if not isinstance(entries, list):
        raise ValueError("managedFields must be a list")
    out: dict[Key, ManagedEntry] = {}
    for raw in entries:
        if not isinstance(raw, dict):
            raise ValueError("managedFields entries must be objects")
        op = raw.get("operation")
        if op not in (APPLY, UPDATE):
            raise ValueError("operation must be `Apply` or `Update`")
        if raw.get("fieldsType", FIELDS_V1) != FIELDS_V1:
            raise ValueError(f"invalid fieldsType {raw.get('fieldsType')!r}")
        e = ManagedEntry(manager=str(raw.get("manager") or ""), operation=op,
                         api_version=str(raw.get("apiVersion") or ""),
                         fields=FieldSet.from_fields_v1(raw.get("fieldsV1") or {}),
                         time=raw.get("time") or None, subresource=str(raw.get("subresource") or ""))
        have = out.get(e.key)
        if have is not None:
            e.fields = have.fields.union(e.fields)
        out[e.key] = e
    return out


def encode_managed_fields(entries: dict[Key, ManagedEntry]) -> list[dict[str, Any]]:
    """Entries in upstream's order: Apply before Update, then oldest first, then by name."""
    ordered = sorted(entries.values(), key=lambda e: (e.operation, e.time or "", e.manager, e.api_version,
                                                      e.subresource))
    return [e.encode() for e in ordered]


def _is_reset(managed: Any) -> bool:
    # Sending [] or [{}] is how a client asks to clear managedFields.
    return isinstance(managed, list) and (not managed or managed == [{}])


def _live_entries(obj: dict[str, Any] | None) -> dict[Key, ManagedEntry]:
    meta = (obj or {}).get("metadata")
    try:
        return decode_managed_fields(meta.get("managedFields") if isinstance(meta, dict) else None)
    except ValueError:
        # Unreadable stored ownership starts over rather than blocking writes.
        return {}


def _without_managed(obj: dict[str, Any] | None) -> dict[str, Any]:
    """A read-only view of obj without managedFields: shallow copies of the two levels touched,
    because this runs on every write and a deep copy of the object would cost more than the diff."""
    if obj is None:
        return {}
    out = dict(obj)
    meta = out.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        out["metadata"] = {k: v for k, v in meta.items() if k != "managedFields"}
    return out


def _drop_empty(entries: dict[Key, ManagedEntry], keep: Key | None = None) -> None:
    for k in [k for k, e in entries.items() if e.fields.empty() and k != keep]:
        del entries[k]


def _cap_updates(entries: dict[Key, ManagedEntry]) -> None:
    """Fold the oldest Update entries into per-version "ancient-changes" entries."""
    updates = sorted((k for k, e in entries.items() if e.operation == UPDATE),
                     key=lambda k: (entries[k].time or "", k))
    excess = len(updates) - MAX_UPDATE_MANAGERS
    first_of_version: dict[str, Key] = {}
    for k in updates:
        if excess <= 0:
            break
        e = entries[k]
        bucket: Key = (ANCIENT_CHANGES, UPDATE, e.api_version, "")
        if k == bucket or e.api_version not in first_of_version:
            first_of_version.setdefault(e.api_version, k)
            continue
        if bucket not in entries:
            first = entries.pop(first_of_version[e.api_version])
            entries[bucket] = ManagedEntry(ANCIENT_CHANGES, UPDATE, e.api_version, first.fields, first.time)
        b = entries[bucket]
        b.fields = b.fields.union(e.fields)
        b.time = e.time
        del entries[k]
        excess -= 1


# ---- conflicts ---------------------------------------------------------------------


def _print_manager(key: Key) -> str:
    manager, op, version, subresource = key
    out = orjson.dumps(manager).decode()
    if subresource:
        out += f" with subresource {orjson.dumps(subresource).decode()}"
    if op == UPDATE:
        out += f" using {version}"
    return out


def _conflict_error(conflicts: dict[Key, FieldSet]) -> StatusError:
    found = [(k, p) for k in sorted(conflicts) for p in conflicts[k].paths()]
    causes = [{"reason": "FieldManagerConflict", "message": f"conflict with {_print_manager(k)}",
               "field": path_string(p)} for k, p in found]
    if len(found) == 1:
        k, p = found[0]
        message = f"Apply failed with 1 conflict: conflict with {_print_manager(k)}: {path_string(p)}"
    else:
        lines = []
        for k in sorted(conflicts):
            lines.append(f"conflicts with {_print_manager(k)}:")
            lines.extend(f"- {path_string(p)}" for p in conflicts[k].paths())
        message = f"Apply failed with {len(found)} conflicts: " + "\n".join(lines)
    return StatusError(409, "Conflict", message, {"causes": causes})


# ---- apply and update --------------------------------------------------------------


def apply(live: dict[str, Any] | None, applied: dict[str, Any], *, manager: str, node: Node | None,
          force: bool = False, now: str, subresource: str = "", api_version: str | None = None,
          ignore: Collection[str] | None = None) -> dict[str, Any]:
    """The object after ``manager`` applies the configuration ``applied`` to ``live``.

    ``live`` is None when the apply creates the object. The configuration's
    fields are merged in; fields ``manager`` applied before and has dropped are
    removed unless another manager owns them; a change to a field another
    manager owns raises a 409 Conflict unless ``force``, which moves the field
    to ``manager``. The result carries the updated ``metadata.managedFields``.
    ``api_version``, when given, is the version the request's URL serves, which
    the configuration must use. ``ignore`` overrides which top-level fields
    this write may not touch (default: status for the main resource, spec for
    the status subresource). The arguments are not modified.
    """
    if not isinstance(applied, dict):
        raise bad_request("apply patch must be an object")
    meta = applied.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise bad_request("metadata must be an object")
    if isinstance(meta, dict) and meta.get("managedFields") is not None:
        raise bad_request("metadata.managedFields must be nil")
    version = str(applied.get("apiVersion") or "")
    if api_version is not None and version != api_version:
        raise bad_request("Incorrect version specified in apply patch. "
                          f"Specified patch version: {version}, expected: {api_version}")
    ignored = _ignored(subresource, ignore)
    config = {k: v for k, v in applied.items() if "f:" + k not in ignored.members}
    if isinstance(meta, dict):
        config["metadata"] = {k: v for k, v in meta.items() if k not in _CONFIG_DROPPED}

    current = _without_managed(live)
    entries = _live_entries(live)
    me: Key = (manager, APPLY, "", subresource)
    previous = entries.get(me)
    raw_config_set = _object_fields(config, node)
    config_set = _tracked(raw_config_set, ignored)

    merged = _merge(current, config, node)
    entries[me] = ManagedEntry(manager, APPLY, version, config_set,
                               previous.time if previous else None, subresource)
    if previous is not None and not previous.fields.empty():
        # Drop what this manager applied before and nobody (itself included)
        # owns now. Server-owned and ignored fields are never dropped.
        owned = raw_config_set.union(_STRIP).union(ignored)
        for e in entries.values():
            owned = owned.union(e.fields)
        gone = _ensure_named(previous.fields, node).difference(_ensure_named(owned, node))
        if not gone.empty():
            merged = _remove(merged, gone, node)

    diff = _diff(current, merged, node, ignored)
    changed = diff.modified.union(diff.added)
    conflicts: dict[Key, FieldSet] = {}
    for k, e in entries.items():
        if k != me:
            c = e.fields.intersection(changed)
            if not c.empty():
                conflicts[k] = c
    if conflicts and not force:
        raise _conflict_error(conflicts)
    for k, e in entries.items():
        if k != me:
            e.fields = e.fields.difference(conflicts.get(k, FieldSet())).difference(diff.removed)
    _drop_empty(entries, keep=me)

    # A no-op apply keeps its timestamp so that re-applying the same file writes
    # nothing (upstream does not touch the time when the object is unchanged).
    mine = entries[me]
    if mine.time is None or not _equal(current, merged):
        mine.time = now
    out_meta = merged.setdefault("metadata", {})
    out_meta["managedFields"] = encode_managed_fields(entries)
    return merged


def track_update(old: dict[str, Any] | None, new: dict[str, Any], *, manager: str, api_version: str,
                 node: Node | None, subresource: str = "", now: str,
                 ignore: Collection[str] | None = None) -> list[dict[str, Any]]:
    """The managedFields for ``new`` after a create, update or patch by ``manager``.

    ``old`` is the stored object (None on create) and ``new`` the object about
    to be stored. Every field that changed is taken from its previous owners
    and given to ``manager`` in its Update entry for ``api_version`` and
    ``subresource``; removed fields leave every owner. For a main-resource write
    the managedFields sent in ``new`` are honoured (``[]`` or ``[{}]`` clears
    them), else the stored ones are kept, as upstream. ``node`` is the kind's
    schema, needed to tell list items apart.
    """
    sent = (new.get("metadata") or {}).get("managedFields") if isinstance(new.get("metadata"), dict) else None
    entries: dict[Key, ManagedEntry] | None = None
    if not subresource and sent is not None:
        if _is_reset(sent):
            entries = {}
        else:
            try:
                entries = decode_managed_fields(sent) or None
            except ValueError:
                entries = None
    if entries is None:
        entries = _live_entries(old)

    diff = _diff(_without_managed(old), _without_managed(new), node, _ignored(subresource, ignore))
    changed = diff.modified.union(diff.added)
    taken = changed.union(diff.removed)
    for e in entries.values():
        e.fields = e.fields.difference(taken)
    if not changed.empty():
        me: Key = (manager, UPDATE, api_version, subresource)
        mine = entries.get(me)
        base = mine.fields if mine is not None else FieldSet()
        entries[me] = ManagedEntry(manager, UPDATE, api_version, base.union(changed), now, subresource)
    _drop_empty(entries)
    _cap_updates(entries)
    return encode_managed_fields(entries)


def manager_name(field_manager: str | None, user_agent: str | None) -> str:
    """The manager a write is recorded under: ``?fieldManager=`` or the User-Agent's product.

    kubectl sends "kubectl-client-side-apply/v1.32.0 (linux/amd64) kubernetes/abc",
    recorded as "kubectl-client-side-apply"; upstream caps the name at 128 bytes.
    """
    if field_manager:
        return field_manager
    return (user_agent or "").split("/", 1)[0][:128]
