"""Patching objects: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge patch.

Strategic merge patch is the Kubernetes dialect that ``kubectl apply`` (client-side,
three-way), ``edit``, ``label``, ``annotate`` and ``patch`` send. It needs to know,
per field, whether a list merges by a key or is replaced; that comes from the
upstream schema (:mod:`kybernetes.api.schema`) as ``x-kubernetes-patch-strategy``
and ``x-kubernetes-patch-merge-key``. The directives it understands are those
apiserver applies: ``$patch`` (replace / merge / delete), ``$retainKeys``,
``$setElementOrder/<field>`` and ``$deleteFromPrimitiveList/<field>``; a null
value deletes a field.

Failures become the metav1.Status errors apiserver answers with. None of the
functions mutate their arguments.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import jsonpointer

from kybernetes.api.errors import StatusError, bad_request
from kybernetes.api.schema import MAP, OBJECT, Node

MAX_JSON_PATCH_OPERATIONS = 10000

_DIRECTIVE = "$patch"
_RETAIN_KEYS = "$retainKeys"
_SET_ORDER = "$setElementOrder"
_DELETE_PRIMITIVE = "$deleteFromPrimitiveList"

# apimachinery's mergepatch error texts; the ones apiserver answers with 400.
_ERR_PRIMITIVE_LIST = "invalid patch format of primitive list"
_ERR_RETAIN_KEYS = "invalid patch format of retainKeys"
_ERR_SET_ORDER = "invalid patch format of setElementOrder list"
_ERR_LIST_OF_LISTS = "lists of lists are not supported"


def _rejected() -> StatusError:
    # What apiserver's generic 422 says; the underlying error text is not passed on.
    return StatusError(422, "Invalid", "the server rejected our request due to an error in our request", {})


def _server_error(message: str) -> StatusError:
    # apiserver returns other merge failures unclassified, which renders as a 500
    # carrying the raw message (e.g. a missing merge key).
    return StatusError(500, "InternalError", message)


class _PatchError(Exception):
    def __init__(self, status: StatusError) -> None:
        super().__init__(status.message)
        self.status = status


def _bad(message: str) -> _PatchError:
    return _PatchError(bad_request(message))


def _go(value: Any) -> str:
    """A value printed the way Go's %v prints decoded JSON, for error messages."""
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, list):
        return "[" + " ".join(_go(v) for v in value) + "]"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _no_merge_key(item: Any, key: str) -> _PatchError:
    return _PatchError(_server_error(f"map: {_go(item)} does not contain declared merge key: {key}"))


# ---- RFC 6902 -------------------------------------------------------------------------


def json_patch(doc: dict[str, Any], ops: Any) -> dict[str, Any]:
    """Apply an RFC 6902 JSON patch to a copy of ``doc``.

    A body that is not a list of operation objects is a 400; an operation that
    cannot be applied (failed test, missing path, unknown op) is apiserver's
    generic 422; more than 10000 operations is a 413.
    """
    if not isinstance(ops, list) or not all(isinstance(op, dict) for op in ops):
        what = "object" if isinstance(ops, dict) else "array" if isinstance(ops, list) else type(ops).__name__
        raise bad_request(f"json: cannot unmarshal {what} into Go value of type jsonpatch.Patch")
    if len(ops) > MAX_JSON_PATCH_OPERATIONS:
        raise StatusError(413, "RequestEntityTooLarge",
                          f"Request entity too large: The allowed maximum operations in a JSON patch is "
                          f"{MAX_JSON_PATCH_OPERATIONS}, got {len(ops)}")
    try:
        return jsonpatch.JsonPatch(ops).apply(doc, in_place=False)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, KeyError, IndexError,
            TypeError, ValueError) as e:
        raise _rejected() from e


# ---- RFC 7386 -------------------------------------------------------------------------


def merge_patch(doc: dict[str, Any], patch: Any) -> dict[str, Any]:
    """Apply an RFC 7386 JSON merge patch to a copy of ``doc``: objects merge, null deletes,
    everything else (lists included) replaces. A non-object patch is a 400, as upstream."""
    if not isinstance(patch, dict):
        raise bad_request("Invalid JSON Patch")
    return _merge_obj(doc if isinstance(doc, dict) else {}, patch)


def _merge_obj(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(target)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict):
            cur = out.get(k)
            out[k] = _merge_obj(cur if isinstance(cur, dict) else {}, v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# ---- strategic merge patch ----------------------------------------------------------------


def strategic_merge_patch(doc: dict[str, Any], patch: Any, node: Node | None) -> dict[str, Any]:
    """Apply a strategic merge patch to a copy of ``doc``.

    ``node`` is the schema node of the object's kind (``get_schema().node_for(...)``).
    Without one (a kind the schema does not know) maps still merge and lists are
    replaced. Directive keys never reach the result.
    """
    if not isinstance(patch, dict):
        raise bad_request(f"json: cannot unmarshal {_json_kind(patch)} into Go value of type "
                          "map[string]interface {}")
    original = copy.deepcopy(doc) if isinstance(doc, dict) else {}
    try:
        return _merge_map(original, copy.deepcopy(patch), node)
    except _PatchError as e:
        raise e.status from None
    except RecursionError:
        raise bad_request("patch is nested too deeply") from None


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "null"


def _child(node: Node | None, key: str) -> Node | None:
    if node is None:
        return None
    if node.kind == OBJECT:
        return node.props.get(key)
    if node.kind == MAP:
        return node.values
    return None


def _strategy(node: Node | None) -> str:
    """The non-retainKeys part of a field's patch strategy ("merge", "replace" or "")."""
    if node is None or not node.strategy:
        return ""
    parts = node.strategy.split(",")
    if len(parts) == 1:
        return "" if parts[0] == "retainKeys" else parts[0]
    if len(parts) == 2 and "retainKeys" in parts:
        return parts[1] if parts[0] == "retainKeys" else parts[0]
    raise _PatchError(_server_error(f"unexpected patch strategy: {_go(parts)}"))


def _is_directive_key(key: str) -> bool:
    return key == _RETAIN_KEYS or key.startswith((_SET_ORDER + "/", _DELETE_PRIMITIVE + "/"))


def _clean(value: Any) -> tuple[Any, bool]:
    """Make patch content fit to store: a map carrying ``$patch`` is dropped (as
    upstream's removeDirectives does), null map values and stray directive keys
    are removed (upstream's decoding into Go types drops them)."""
    if isinstance(value, dict):
        if _DIRECTIVE in value:
            return None, False
        out = {}
        for k, v in value.items():
            if v is None or _is_directive_key(k):
                continue
            v, keep = _clean(v)
            if keep:
                out[k] = v
        return out, True
    if isinstance(value, list):
        res = []
        for v in value:
            v, keep = _clean(v)
            if keep:
                res.append(v)
        return res, True
    return value, True


def _merge_map(original: dict[str, Any], patch: dict[str, Any], node: Node | None) -> dict[str, Any]:
    if _DIRECTIVE in patch:
        directive = patch[_DIRECTIVE]
        if directive == "replace":
            del patch[_DIRECTIVE]
            return _clean(patch)[0]
        if directive == "delete":
            return {}
        raise _PatchError(_server_error(f"unknown patch type: {directive} in map: {_go(patch)}"))

    _apply_retain_keys(original, patch)
    _apply_set_element_order(original, patch, node)

    for key, pv in patch.items():
        delete_list = False
        if key.startswith(_DELETE_PRIMITIVE):
            key = _extract_key(key, _DELETE_PRIMITIVE, _ERR_PRIMITIVE_LIST)
            delete_list = True
        if pv is None:
            original.pop(key, None)
            continue
        if key not in original:
            if not delete_list:
                value, keep = _clean(pv)
                if keep:
                    original[key] = value
            continue
        ov = original[key]
        if type(ov) is not type(pv) or not isinstance(ov, (dict, list)):
            if not delete_list:
                value, keep = _clean(pv)
                if keep:
                    original[key] = value
                else:
                    del original[key]
            continue
        child = _child(node, key)
        strategy = _strategy(child)
        if isinstance(ov, dict):
            original[key] = _clean(pv)[0] if strategy == "replace" else _merge_map(ov, pv, child)
        elif strategy == "merge" or delete_list:
            items = child.items if child is not None else None
            merge_key = child.merge_key if child is not None else None
            original[key] = _merge_list(ov, pv, items, merge_key or "", delete_list)[0]
        else:
            original[key] = _clean(pv)[0]
    return original


def _extract_key(key: str, prefix: str, error: str) -> str:
    head, sep, rest = key.partition("/")
    if not sep or head != prefix:
        raise _bad(error)
    return rest


def _apply_retain_keys(original: dict[str, Any], patch: dict[str, Any]) -> None:
    if _RETAIN_KEYS not in patch:
        return
    retain = patch.pop(_RETAIN_KEYS)
    if not isinstance(retain, list):
        raise _bad(_ERR_RETAIN_KEYS)
    keep = {k for k in retain if isinstance(k, str)}
    for k, v in patch.items():
        if v is None or k.startswith((_DELETE_PRIMITIVE, _SET_ORDER)):
            continue
        if k not in keep:
            raise _bad(_ERR_RETAIN_KEYS)
    for k in list(original):
        if k not in keep:
            del original[k]


def _apply_set_element_order(original: dict[str, Any], patch: dict[str, Any], node: Node | None) -> None:
    for key in [k for k in patch if k.startswith(_SET_ORDER)]:
        order = patch.pop(key)
        if not isinstance(order, list):
            raise _bad(_ERR_SET_ORDER)
        field = _extract_key(key, _SET_ORDER, _ERR_SET_ORDER)
        has_orig, has_patch = field in original, field in patch
        ov = original.get(field) if has_orig else None
        pv = patch.get(field) if has_patch else None
        if has_orig and not isinstance(ov, list):
            raise _PatchError(_server_error(f"expected a []interface {{}}, but received a {_json_kind(ov)}"))
        if has_patch and not isinstance(pv, list):
            raise _PatchError(_server_error(f"expected a []interface {{}}, but received a {_json_kind(pv)}"))
        child = _child(node, field)
        strategy = _strategy(child)
        merge_key = (child.merge_key if child is not None else None) or ""
        items = child.items if child is not None else None
        _check_order(pv or [], order, merge_key)
        live_order = ov or []
        if has_orig and not has_patch:
            merged = ov
        elif has_patch and not has_orig:
            merged = _clean(pv)[0]
        elif has_orig and has_patch:
            if strategy == "merge":
                merged, live_order = _merge_list(ov, pv, items, merge_key, False)
            else:
                merged = _clean(pv)[0]
        else:
            continue
        maps = _element_kind(list(ov or []) + list(pv or []))
        if maps is None or (maps and not merge_key):
            original[field] = merged
        else:
            in_patch, server_only = _partition(merged, order, merge_key, maps)
            original[field] = _normalize_order(in_patch, server_only, order, live_order, merge_key, maps)
        patch.pop(field, None)


def _check_order(patch_list: list[Any], order: list[Any], merge_key: str) -> None:
    """Every non-deleted item of the patch list must appear in $setElementOrder, in that order."""
    if not order or not patch_list:
        return
    items = [x for x in patch_list if not (merge_key and isinstance(x, dict) and x.get(_DIRECTIVE) == "delete")]
    i = j = 0
    while i < len(items) and j < len(order):
        if isinstance(items[i], dict) and _DIRECTIVE in items[i]:
            i += 1
            continue
        if _key_equal(items[i], order[j], merge_key):
            i += 1
        j += 1
    if i < len(items) and j >= len(order):
        raise _PatchError(_server_error(f"The order in patch list:\n{_go(patch_list)}\n doesn't match "
                                        f"{_SET_ORDER} list:\n{_go(order)}\n"))


def _key_equal(left: Any, right: Any, merge_key: str) -> bool:
    if not merge_key:
        return _same(left, right)
    if not isinstance(left, dict) or not isinstance(right, dict):
        raise _PatchError(_server_error("expected a map, but received a " + _json_kind(left)))
    if merge_key not in left:
        raise _no_merge_key(left, merge_key)
    if merge_key not in right:
        raise _no_merge_key(right, merge_key)
    return _same(left[merge_key], right[merge_key])


def _same(a: Any, b: Any) -> bool:
    # Go compares decoded JSON scalars by type and value; Python would make True == 1.
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def _element_kind(values: list[Any]) -> bool | None:
    """True for a list of maps, False for scalars, None when there are no elements."""
    first = None
    for v in values:
        if isinstance(v, list):
            raise _PatchError(_rejected())
        kind = isinstance(v, dict)
        if first is None:
            first = kind
        elif first != kind:
            raise _PatchError(_server_error(f"list element types are not identical: {_go(values)}"))
    return first


def _merge_list(original: list[Any], patch: list[Any], items: Node | None, merge_key: str,
                delete_list: bool) -> tuple[list[Any], list[Any]]:
    """Merge a patch list into a live list; returns (result, live order).

    The live order is what upstream's later $setElementOrder step compares against.
    Upstream deletes and appends within the live list's own Go backing array, so that
    step sees the list after deletions with new items filling the freed slots; it is
    reproduced here because it decides where server-only items land.
    """
    if not original and not patch:
        return original, original
    maps = _element_kind(original + patch)
    live_view = original
    if not maps:
        if delete_list:
            return [x for x in original if not any(_same(x, d) for d in patch)], original
        merged: list[Any] = []
        for x in original + patch:
            if not any(_same(x, y) for y in merged):
                merged.append(x)
    else:
        if not merge_key:
            name = items.name if items is not None and items.name else "Struct"
            raise _PatchError(_server_error(f"cannot merge lists without merge key for {name}"))
        size = len(original)
        original, patch, remaining, replaced = _apply_list_directives(original, patch, merge_key)
        merged = list(original)
        added: list[Any] = []
        for item in patch:
            if merge_key not in item:
                raise _no_merge_key(item, merge_key)
            idx = _find(merged, merge_key, item[merge_key])
            if idx is None:
                value, keep = _clean(item)
                if keep:
                    merged.append(value)
                    added.append(value)
            else:
                merged[idx] = _merge_map(merged[idx], item, items)
        live_view = remaining if replaced else (remaining + added)[:size]
    in_patch, server_only = _partition(merged, patch, merge_key, bool(maps))
    return _normalize_order(in_patch, server_only, patch, original, merge_key, bool(maps)), live_view


def _find(values: list[Any], merge_key: str, want: Any) -> int | None:
    for i, v in enumerate(values):
        if not isinstance(v, dict):
            raise _PatchError(_server_error(f"value for key {i} is not a map"))
        if merge_key in v and _same(v[merge_key], want):
            return i
    return None


def _apply_list_directives(original: list[Any], patch: list[Any],
                           merge_key: str) -> tuple[list[Any], list[Any], list[Any], bool]:
    """Handle list elements carrying $patch.

    Returns (list to merge into, patch without directive elements, live list after
    deletions, whether a replace directive was seen)."""
    rest: list[Any] = []
    replace = False
    for item in patch:
        if _DIRECTIVE not in item:
            rest.append(item)
            continue
        directive = item[_DIRECTIVE]
        if directive == "delete":
            if merge_key not in item:
                raise _no_merge_key(item, merge_key)
            want = item[merge_key]
            original = [o for o in original if not (isinstance(o, dict) and merge_key in o
                                                     and _same(o[merge_key], want))]
        elif directive == "replace":
            replace = True
        elif directive == "merge":
            raise _PatchError(_server_error("merging lists cannot yet be specified in the patch"))
        else:
            raise _PatchError(_server_error(f"unknown patch type: {directive} in map: {_go(item)}"))
    if replace:
        return [_clean(x)[0] for x in rest], [], original, True
    return original, rest, original, False


def _index(values: list[Any], item: Any, merge_key: str, maps: bool) -> int:
    if maps:
        want = item.get(merge_key) if isinstance(item, dict) else None
        for i, v in enumerate(values):
            if isinstance(v, dict) and _same(v.get(merge_key), want):
                return i
        return -1
    for i, v in enumerate(values):
        if _same(v, item):
            return i
    return -1


def _partition(merged: list[Any], by: list[Any], merge_key: str, maps: bool) -> tuple[list[Any], list[Any]]:
    """Split merged items into those named in ``by`` and the server-only rest, keeping order."""
    in_by: list[Any] = []
    rest: list[Any] = []
    for v in merged:
        if maps:
            if not isinstance(v, dict):
                raise _PatchError(_server_error(f"expected a map, but received a {_json_kind(v)}"))
            if merge_key not in v:
                raise _no_merge_key(v, merge_key)
            found = any(isinstance(b, dict) and merge_key in b and _same(b[merge_key], v[merge_key]) for b in by)
        else:
            found = any(_same(b, v) for b in by)
        (in_by if found else rest).append(v)
    return in_by, rest


def _sort_by(values: list[Any], order: list[Any], merge_key: str, maps: bool) -> list[Any]:
    deleted: list[Any] = []
    if maps:
        for v in values + order:
            if isinstance(v, dict) and merge_key not in v:
                raise _no_merge_key(v, merge_key)
        deleted = [v for v in values if v.get(_DIRECTIVE) == "delete"]
        values = [v for v in values if v.get(_DIRECTIVE) != "delete"]
    positions = [_index(order, v, merge_key, maps) for v in values]
    # Items the order does not name keep their relative place after the named ones.
    ranked = sorted(range(len(values)), key=lambda i: (positions[i] < 0, positions[i]))
    return [values[i] for i in ranked] + deleted


def _normalize_order(in_patch: list[Any], server_only: list[Any], patch_order: list[Any],
                     server_order: list[Any], merge_key: str, maps: bool) -> list[Any]:
    """Patch items in the patch's order, server-only items in the live order, and the two
    interleaved so each server-only item stays before the first patch item it preceded live.
    Precedence is $setElementOrder (or patch order) over the live order, as upstream."""
    right = _sort_by(in_patch, patch_order, merge_key, maps)
    left = _sort_by(server_only, server_order, merge_key, maps)
    out: list[Any] = []
    i = j = 0
    while i < len(left) or j < len(right):
        if i >= len(left):
            out.append(right[j])
            j += 1
        elif j >= len(right):
            out.append(left[i])
            i += 1
        else:
            li = _index(server_order, left[i], merge_key, maps)
            ri = _index(server_order, right[j], merge_key, maps)
            if li >= 0 and ri >= 0 and li < ri:
                out.append(left[i])
                i += 1
            else:
                out.append(right[j])
                j += 1
    return out
