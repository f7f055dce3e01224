"""Label and field selectors: parsing, matching, and the label-key/value syntax.

This module owns the label language: what a label key and value may look like
(qualified names, label values), the `?labelSelector=` query-string grammar
(`a=b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, `a>1`, comma = AND), the
metav1.LabelSelector object form (matchLabels + matchExpressions), the
`?fieldSelector=` grammar (`=`, `==`, `!=`, comma = AND, backslash escapes) and
the per-kind sets of selectable fields the API server offers.

Selectors are parsed once into objects whose `matches()` is cheap, because the
server evaluates them against every object of a list and every watch event.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kybernetes.api.errors import FieldError, bad_request, forbidden, invalid, required

# --- label key / value syntax (apimachinery util/validation) ----------------------------------------------

QUALIFIED_NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
QUALIFIED_NAME_ERR = ("must consist of alphanumeric characters, '-', '_' or '.', "
                      "and must start and end with an alphanumeric character")
QUALIFIED_NAME_MAX = 63
LABEL_VALUE_FMT = "(" + QUALIFIED_NAME_FMT + ")?"
LABEL_VALUE_ERR = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
                   "and must start and end with an alphanumeric character")
LABEL_VALUE_MAX = 63
DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN_FMT = DNS1123_LABEL_FMT + "(\\." + DNS1123_LABEL_FMT + ")*"
DNS1123_SUBDOMAIN_ERR = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                         "'-' or '.', and must start and end with an alphanumeric character")
DNS1123_SUBDOMAIN_MAX = 253

_qualified_name_re = re.compile(QUALIFIED_NAME_FMT)
_label_value_re = re.compile(LABEL_VALUE_FMT)
_dns1123_subdomain_re = re.compile(DNS1123_SUBDOMAIN_FMT)


def regex_error(msg: str, fmt: str, *examples: str) -> str:
    """The wording apimachinery uses for a failed regex check (its odd double spaces included)."""
    if not examples:
        return f"{msg} (regex used for validation is '{fmt}')"
    parts = [("" if i == 0 else " or ") + f"'{ex}', " for i, ex in enumerate(examples)]
    return f"{msg} (e.g. {''.join(parts)}regex used for validation is '{fmt}')"


def max_len_error(n: int) -> str:
    return f"must be no more than {n} characters"


def is_dns1123_subdomain(value: str) -> list[str]:
    errs = []
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        errs.append(max_len_error(DNS1123_SUBDOMAIN_MAX))
    if not _dns1123_subdomain_re.fullmatch(value):
        errs.append(regex_error(DNS1123_SUBDOMAIN_ERR, DNS1123_SUBDOMAIN_FMT, "example.com"))
    return errs


def is_path_segment_name(value: str) -> list[str]:
    """Why ``value`` cannot be one segment of a URL path (upstream's IsValidPathSegmentName); [] if it can."""
    if value in (".", ".."):
        return [f"may not be '{value}'"]
    return [f"may not contain '{c}'" for c in ("/", "%") if c in value]


def is_qualified_name(value: str) -> list[str]:
    """Errors for a label key / annotation key / finalizer: `[prefix/]name`."""
    errs: list[str] = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            errs.extend("prefix part " + m for m in is_dns1123_subdomain(prefix))
    else:
        return [
            "a qualified name " + regex_error(QUALIFIED_NAME_ERR, QUALIFIED_NAME_FMT, "MyName", "my.name", "123-abc")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > QUALIFIED_NAME_MAX:
        errs.append("name part " + max_len_error(QUALIFIED_NAME_MAX))
    if not _qualified_name_re.fullmatch(name):
        errs.append("name part " + regex_error(QUALIFIED_NAME_ERR, QUALIFIED_NAME_FMT, "MyName", "my.name", "123-abc"))
    return errs


def is_valid_label_value(value: str) -> list[str]:
    errs = []
    if len(value) > LABEL_VALUE_MAX:
        errs.append(max_len_error(LABEL_VALUE_MAX))
    if not _label_value_re.fullmatch(value):
        errs.append(regex_error(LABEL_VALUE_ERR, LABEL_VALUE_FMT, "MyValue", "my_value", "12345"))
    return errs


def validate_labels(labels: Any, path: str) -> list[FieldError]:
    """metadata.labels-style map: every key a qualified name, every value a label value."""
    errs: list[FieldError] = []
    if not labels:
        return errs
    for k in sorted(labels):
        v = labels[k]
        errs.extend(invalid(path, k, m) for m in is_qualified_name(k))
        if not isinstance(v, str):
            errs.append(invalid(path, v, "must be a string"))
            continue
        errs.extend(invalid(path, v, m) for m in is_valid_label_value(v))
    return errs


# --- label selector requirements ---------------------------------------------------------------------------

# Operator spellings as selection.Operator names them; "=" and "==" are one operator once parsed.
EQUALS, NOT_EQUALS, IN, NOT_IN, EXISTS, DOES_NOT_EXIST, GT, LT = "=", "!=", "in", "notin", "exists", "!", "gt", "lt"


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str
    values: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.op == EXISTS:
            return self.key
        if self.op == DOES_NOT_EXIST:
            return "!" + self.key
        if self.op in (IN, NOT_IN):
            return f"{self.key} {self.op} ({','.join(self.values)})"
        if self.op == GT:
            return f"{self.key}>{self.values[0]}"
        if self.op == LT:
            return f"{self.key}<{self.values[0]}"
        return f"{self.key}{self.op}{self.values[0]}"

    def compile(self) -> Callable[[Mapping[str, str]], bool]:
        key = self.key
        if self.op == EQUALS:
            val = self.values[0]
            return lambda labels: labels.get(key) == val
        if self.op == NOT_EQUALS:
            val = self.values[0]
            return lambda labels: labels.get(key) != val
        if self.op == IN:
            vals = frozenset(self.values)
            return lambda labels: key in labels and labels[key] in vals
        if self.op == NOT_IN:
            vals = frozenset(self.values)
            return lambda labels: key not in labels or labels[key] not in vals
        if self.op == EXISTS:
            return lambda labels: key in labels
        if self.op == DOES_NOT_EXIST:
            return lambda labels: key not in labels
        bound = int(self.values[0])
        greater = self.op == GT

        def numeric(labels: Mapping[str, str]) -> bool:
            raw = labels.get(key)
            if raw is None:
                return False
            try:
                n = int(raw)
            except ValueError:
                return False
            return n > bound if greater else n < bound

        return numeric


def _new_requirement(key: str, op: str, values: list[str], path: str = "") -> Requirement:
    """Check a requirement as labels.NewRequirement does; raises _RequirementError."""
    pre = path + "." if path else ""
    errs: list[FieldError] = []
    key_msgs = is_qualified_name(key)
    if key_msgs:
        errs.append(invalid(pre + "key", key, "; ".join(key_msgs)))
    vpath = pre + "values"
    if op in (IN, NOT_IN):
        if not values:
            errs.append(invalid(vpath, values, "for 'in', 'notin' operators, values set can't be empty"))
    elif op in (EQUALS, NOT_EQUALS):
        if len(values) != 1:
            errs.append(invalid(vpath, values, "exact-match compatibility requires one single value"))
    elif op in (EXISTS, DOES_NOT_EXIST):
        if values:
            errs.append(invalid(vpath, values, "values set must be empty for exists and does not exist"))
    elif op in (GT, LT):
        if len(values) != 1:
            errs.append(invalid(vpath, values, "for 'Gt', 'Lt' operators, exactly one value is required"))
        for i, v in enumerate(values):
            try:
                int(v)
            except ValueError:
                errs.append(invalid(f"{vpath}[{i}]", v, "for 'Gt', 'Lt' operators, the value must be an integer"))
    else:
        errs.append(FieldError("NotSupported", pre + "operator", "", op))
    if op not in (GT, LT):
        for i, v in enumerate(values):
            msgs = is_valid_label_value(v)
            if msgs:
                errs.append(invalid(f"{vpath}[{i}][{key}]", v, "; ".join(msgs)))
    if errs:
        raise _RequirementError(errs)
    uniq = sorted(set(values)) if op in (IN, NOT_IN) else list(values)
    return Requirement(key, op, tuple(uniq))


class _RequirementError(ValueError):
    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        msg = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(str(e) for e in errors) + "]"
        super().__init__(msg)


class InvalidSelector(ValueError):
    """A metav1.LabelSelector object that cannot be used; `.errors` are field errors for a 422."""

    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


class LabelSelector:
    """A compiled label selector: an AND of requirements, or the selector that matches nothing."""

    __slots__ = ("_checks", "_equal_items", "nothing", "requirements")

    def __init__(self, requirements: list[Requirement] | tuple[Requirement, ...] = (), *, nothing: bool = False):
        self.requirements = tuple(sorted(requirements, key=lambda r: r.key))
        self.nothing = nothing
        # Most selectors in practice are plain equalities (matchLabels); a dict-items check beats closures.
        if all(r.op == EQUALS for r in self.requirements):
            self._equal_items: tuple[tuple[str, str], ...] | None = tuple(
                (r.key, r.values[0]) for r in self.requirements)
            self._checks: tuple[Callable[[Mapping[str, str]], bool], ...] = ()
        else:
            self._equal_items = None
            self._checks = tuple(r.compile() for r in self.requirements)

    @classmethod
    def parse(cls, s: str | None) -> LabelSelector:
        """Parse the query-string form; raise a 400 StatusError on bad syntax."""
        if not s or not s.strip():
            return EVERYTHING
        return cls(_Parser(s).parse())

    @classmethod
    def from_dict(cls, labels: Mapping[str, str]) -> LabelSelector:
        """The selector `k1=v1,k2=v2` for a label map, as labels.SelectorFromSet."""
        return cls([Requirement(k, EQUALS, (v,)) for k, v in labels.items()])

    @property
    def empty(self) -> bool:
        """True when the selector selects everything (no requirements)."""
        return not self.requirements and not self.nothing

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        if self.nothing:
            return False
        if labels is None:
            labels = {}
        items = self._equal_items
        if items is not None:
            for k, v in items:
                if labels.get(k) != v:
                    return False
            return True
        for check in self._checks:
            if not check(labels):
                return False
        return True

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)

    def __repr__(self) -> str:
        return "LabelSelector(<nothing>)" if self.nothing else f"LabelSelector({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, LabelSelector) and self.nothing == other.nothing
                and self.requirements == other.requirements)

    def __hash__(self) -> int:
        return hash((self.requirements, self.nothing))


EVERYTHING = LabelSelector()
NOTHING = LabelSelector(nothing=True)

# metav1.LabelSelectorOperator -> our operator
_OBJECT_OPS = {"In": IN, "NotIn": NOT_IN, "Exists": EXISTS, "DoesNotExist": DOES_NOT_EXIST}


def validate_label_selector_object(sel: Any, path: str) -> list[FieldError]:
    """Field errors for a metav1.LabelSelector (as metav1 validation.ValidateLabelSelector)."""
    errs: list[FieldError] = []
    if sel is None:
        return errs
    if not isinstance(sel, dict):
        return [invalid(path, sel, "must be an object")]
    errs.extend(validate_labels(sel.get("matchLabels") or {}, path + ".matchLabels"))
    for i, expr in enumerate(sel.get("matchExpressions") or []):
        p = f"{path}.matchExpressions[{i}]"
        if not isinstance(expr, dict):
            errs.append(invalid(p, expr, "must be an object"))
            continue
        op = expr.get("operator")
        values = expr.get("values") or []
        if op in ("In", "NotIn"):
            if not values:
                errs.append(required(p + ".values", "must be specified when `operator` is 'In' or 'NotIn'"))
        elif op in ("Exists", "DoesNotExist"):
            if values:
                errs.append(forbidden(p + ".values",
                                      "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"))
        else:
            errs.append(invalid(p + ".operator", op, "not a valid selector operator"))
        key = expr.get("key") or ""
        errs.extend(invalid(p + ".key", key, m) for m in is_qualified_name(key))
        for j, v in enumerate(values):
            errs.extend(invalid(f"{p}.values[{j}]", v, m) for m in is_valid_label_value(str(v)))
    return errs


def from_label_selector_object(sel: dict | None, path: str = "spec.selector") -> LabelSelector:
    """Compile a metav1.LabelSelector; None selects nothing, {} selects everything.

    Raises InvalidSelector (with field errors under `path`) when the object is invalid.
    """
    if sel is None:
        return NOTHING
    errs = validate_label_selector_object(sel, path)
    if errs:
        raise InvalidSelector(errs)
    reqs = [Requirement(k, EQUALS, (v,)) for k, v in (sel.get("matchLabels") or {}).items()]
    for expr in sel.get("matchExpressions") or []:
        op = _OBJECT_OPS[expr["operator"]]
        values = expr.get("values") or []
        reqs.append(Requirement(expr["key"], op, tuple(sorted(set(values))) if op in (IN, NOT_IN) else ()))
    return LabelSelector(reqs)


def selector_string(sel: dict | None) -> str:
    """The query-string form of a metav1.LabelSelector (what scale subresources report as status.selector)."""
    return str(from_label_selector_object(sel))


# --- the label selector grammar --------------------------------------------------------------------------

_IDENT, _IN, _NOTIN, _EQ, _DEQ, _NEQ, _NOT, _OPEN, _CLOSE, _COMMA, _GT, _LT, _EOS = range(13)
_SPECIALS = {"==": _DEQ, "!=": _NEQ, "=": _EQ, "!": _NOT, "(": _OPEN, ")": _CLOSE, ",": _COMMA, ">": _GT,
             "<": _LT}
_SPECIAL_CHARS = frozenset("=!(),<>")
_BINARY_OPS = "in, notin, =, ==, !=, gt, lt"


def _lex(s: str) -> list[tuple[int, str]]:
    toks: list[tuple[int, str]] = []
    i, n = 0, len(s)
    while i < n:
        ch = s[i]
        if ch.isspace():
            i += 1
            continue
        if ch in _SPECIAL_CHARS:
            two = s[i:i + 2]
            if two in ("==", "!="):
                toks.append((_SPECIALS[two], two))
                i += 2
            else:
                toks.append((_SPECIALS[ch], ch))
                i += 1
            continue
        j = i
        while j < n and not s[j].isspace() and s[j] not in _SPECIAL_CHARS:
            j += 1
        word = s[i:j]
        toks.append((_IN if word == "in" else _NOTIN if word == "notin" else _IDENT, word))
        i = j
    toks.append((_EOS, ""))
    return toks


class _Parser:
    """Recursive-descent parser following apimachinery's labels grammar and its error wording."""

    def __init__(self, s: str):
        self.toks = _lex(s)
        self.pos = 0

    def _peek(self, values: bool = True) -> tuple[int, str]:
        tok, lit = self.toks[self.pos]
        # Inside values, the keywords are ordinary words: `a in (in, notin)` is legal.
        if values and tok in (_IN, _NOTIN):
            tok = _IDENT
        return tok, lit

    def _next(self, values: bool = True) -> tuple[int, str]:
        tok, lit = self._peek(values)
        if self.pos < len(self.toks) - 1:
            self.pos += 1
        return tok, lit

    def parse(self) -> list[Requirement]:
        reqs: list[Requirement] = []
        while True:
            tok, lit = self._peek()
            if tok in (_IDENT, _NOT):
                try:
                    reqs.append(self._requirement())
                except (_SyntaxError, _RequirementError) as e:
                    raise bad_request(f"unable to parse requirement: {e}") from None
                tok, lit = self._next()
                if tok == _EOS:
                    return reqs
                if tok == _COMMA:
                    t2, l2 = self._peek()
                    if t2 not in (_IDENT, _NOT):
                        raise bad_request(f"found '{l2}', expected: identifier after ','")
                    continue
                raise bad_request(f"found '{lit}', expected: ',' or 'end of string'")
            if tok == _EOS:
                return reqs
            raise bad_request(f"found '{lit}', expected: !, identifier, or 'end of string'")

    def _requirement(self) -> Requirement:
        op = ""
        tok, lit = self._next()
        if tok == _NOT:
            op = DOES_NOT_EXIST
            tok, lit = self._next()
        if tok != _IDENT:
            raise _SyntaxError(f"found '{lit}', expected: identifier")
        key = lit
        key_errs = is_qualified_name(key)
        if key_errs:
            raise _RequirementError([invalid("key", key, "; ".join(key_errs))])
        if self._peek()[0] in (_EOS, _COMMA) and op != DOES_NOT_EXIST:
            op = EXISTS
        if op in (EXISTS, DOES_NOT_EXIST):
            return _new_requirement(key, op, [])
        tok, lit = self._next(values=False)
        op = {_IN: IN, _NOTIN: NOT_IN, _EQ: EQUALS, _DEQ: EQUALS, _NEQ: NOT_EQUALS, _GT: GT, _LT: LT}.get(tok, "")
        if not op:
            raise _SyntaxError(f"found '{lit}', expected: {_BINARY_OPS}")
        values = self._value_set() if op in (IN, NOT_IN) else self._exact_value()
        return _new_requirement(key, op, values)

    def _exact_value(self) -> list[str]:
        tok, _ = self._peek()
        if tok in (_EOS, _COMMA):
            return [""]
        tok, lit = self._next()
        if tok == _IDENT:
            return [lit]
        raise _SyntaxError(f"found '{lit}', expected: identifier")

    def _value_set(self) -> list[str]:
        tok, lit = self._next()
        if tok != _OPEN:
            raise _SyntaxError(f"found '{lit}' expected: '('")
        tok, lit = self._peek()
        if tok == _CLOSE:
            self._next()
            return [""]
        if tok not in (_IDENT, _COMMA):
            raise _SyntaxError(f"found '{lit}', expected: ',', ')' or identifier")
        values: list[str] = []
        # An empty slot between commas stands for the empty value, as upstream treats `(,a)` and `(a,)`.
        expect_value = True
        while True:
            tok, lit = self._next()
            if tok == _IDENT:
                if not expect_value:
                    raise _SyntaxError(f"found '{lit}', expected: ',' or ')'")
                values.append(lit)
                expect_value = False
            elif tok == _COMMA:
                if expect_value:
                    values.append("")
                expect_value = True
            elif tok == _CLOSE:
                if expect_value:
                    values.append("")
                return values
            else:
                raise _SyntaxError(f"found '{lit}', expected: ',', or identifier")


class _SyntaxError(ValueError):
    pass


# --- field selectors -----------------------------------------------------------------------------------------

_FIELD_OPS = ("!=", "==", "=")


@dataclass(frozen=True)
class FieldSelector:
    """An AND of `field=value` / `field!=value` terms; a missing field compares as ""."""

    requirements: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def parse(cls, s: str | None) -> FieldSelector:
        if not s:
            return cls()
        reqs: list[tuple[str, str, str]] = []
        for part in sorted(_split_terms(s)):
            if not part:
                continue
            term = _split_term(part)
            if term is None:
                raise bad_request(f"invalid selector: '{s}'; can't understand '{part}'")
            lhs, op, rhs = term
            reqs.append((lhs, "!=" if op == "!=" else "=", _unescape(rhs)))
        return cls(tuple(reqs))

    @property
    def empty(self) -> bool:
        return not self.requirements

    @property
    def fields(self) -> list[str]:
        return [f for f, _, _ in self.requirements]

    def matches(self, fields: Mapping[str, str]) -> bool:
        for field, op, value in self.requirements:
            if (fields.get(field, "") == value) != (op == "="):
                return False
        return True

    def check_supported(self, supported: frozenset[str] | set[str]) -> None:
        """Raise the upstream 400 for the first field this kind cannot be selected on."""
        for field in self.fields:
            if field not in supported:
                raise bad_request(f"field label not supported: {field}")

    def value_for(self, field: str) -> str | None:
        """The value an `=` term pins `field` to (lets the server narrow e.g. spec.nodeName lists)."""
        for f, op, v in self.requirements:
            if f == field and op == "=":
                return v
        return None

    def __str__(self) -> str:
        return ",".join(f"{f}{op}{_escape(v)}" for f, op, v in self.requirements)


def _split_terms(s: str) -> list[str]:
    terms, start, escaped = [], 0, False
    for i, ch in enumerate(s):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            terms.append(s[start:i])
            start = i + 1
    terms.append(s[start:])
    return terms


def _split_term(term: str) -> tuple[str, str, str] | None:
    for i in range(len(term)):
        for op in _FIELD_OPS:
            if term.startswith(op, i):
                return term[:i], op, term[i + len(op):]
    return None


def _unescape(s: str) -> str:
    if not any(c in s for c in "\\,="):
        return s
    out, slash = [], False
    for c in s:
        if slash:
            if c not in "\\,=":
                raise bad_request(f"invalid field selector: invalid escape sequence: \\{c}")
            out.append(c)
            slash = False
        elif c == "\\":
            slash = True
        elif c in ",=":
            # Go prints the rune with %v, i.e. as its code point.
            raise bad_request(f"invalid field selector: unescaped character in value: {ord(c)}")
        else:
            out.append(c)
    if slash:
        raise bad_request("invalid field selector: invalid escape sequence: \\")
    return "".join(out)


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


# --- selectable fields per kind --------------------------------------------------------------------------

# Kinds whose field sets omit metadata.namespace because they are cluster-scoped.
_CLUSTER_SCOPED = frozenset({
    "Node", "Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding",
    "CustomResourceDefinition", "PriorityClass", "IngressClass", "CertificateSigningRequest", "CSIDriver",
    "CSINode", "VolumeAttachment", "RuntimeClass", "APIService", "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration", "ClusterTrustBundle", "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding", "FlowSchema", "PriorityLevelConfiguration",
})


def _s(v: Any) -> str:
    return "" if v is None else str(v)


def _b(v: Any) -> str:
    return "true" if v else "false"


def _pod_fields(o: dict) -> dict[str, str]:
    spec, status = o.get("spec") or {}, o.get("status") or {}
    ips = status.get("podIPs") or []
    pod_ip = (ips[0] or {}).get("ip", "") if ips else status.get("podIP", "")
    return {
        "spec.nodeName": _s(spec.get("nodeName")),
        "spec.restartPolicy": _s(spec.get("restartPolicy")),
        "spec.schedulerName": _s(spec.get("schedulerName")),
        "spec.serviceAccountName": _s(spec.get("serviceAccountName")),
        "spec.hostNetwork": _b(spec.get("hostNetwork")),
        "status.phase": _s(status.get("phase")),
        "status.podIP": _s(pod_ip),
        "status.nominatedNodeName": _s(status.get("nominatedNodeName")),
    }


def _event_fields(o: dict) -> dict[str, str]:
    io = o.get("involvedObject") or {}
    source = (o.get("source") or {}).get("component") or o.get("reportingComponent") or ""
    return {
        "involvedObject.kind": _s(io.get("kind")),
        "involvedObject.namespace": _s(io.get("namespace")),
        "involvedObject.name": _s(io.get("name")),
        "involvedObject.uid": _s(io.get("uid")),
        "involvedObject.apiVersion": _s(io.get("apiVersion")),
        "involvedObject.resourceVersion": _s(io.get("resourceVersion")),
        "involvedObject.fieldPath": _s(io.get("fieldPath")),
        "reason": _s(o.get("reason")),
        "reportingComponent": _s(o.get("reportingComponent")),
        "source": _s(source),
        "type": _s(o.get("type")),
    }


def _replicas(o: dict) -> dict[str, str]:
    return {"status.replicas": str(int((o.get("status") or {}).get("replicas") or 0))}


def _legacy_name(o: dict) -> dict[str, str]:
    # Upstream keeps a bare "name" field on a few kinds for backward compatibility.
    return {"name": _s((o.get("metadata") or {}).get("name"))}


_KIND_FIELDS: dict[str, Callable[[dict], dict[str, str]]] = {
    "Pod": _pod_fields,
    "Event": _event_fields,
    "Secret": lambda o: {"type": _s(o.get("type"))},
    "Node": lambda o: {"spec.unschedulable": _b((o.get("spec") or {}).get("unschedulable"))},
    "Namespace": lambda o: {"status.phase": _s((o.get("status") or {}).get("phase")), **_legacy_name(o)},
    "ReplicaSet": _replicas,
    "ReplicationController": _replicas,
    "Job": lambda o: {"status.successful": str(int((o.get("status") or {}).get("succeeded") or 0))},
    "PersistentVolume": _legacy_name,
    "PersistentVolumeClaim": _legacy_name,
    "CertificateSigningRequest": lambda o: {"spec.signerName": _s((o.get("spec") or {}).get("signerName"))},
    "ClusterTrustBundle": lambda o: {"spec.signerName": _s((o.get("spec") or {}).get("signerName"))},
}

_EMPTY_FIELDS: dict[str, frozenset[str]] = {k: frozenset(fn({})) for k, fn in _KIND_FIELDS.items()}


def is_namespaced_kind(kind: str) -> bool:
    return kind not in _CLUSTER_SCOPED


def field_set(kind: str, obj: dict, namespaced: bool | None = None) -> dict[str, str]:
    """The fields a field selector can test on `obj`, with their string values."""
    meta = obj.get("metadata") or {}
    if namespaced is None:
        namespaced = is_namespaced_kind(kind)
    out = {"metadata.name": _s(meta.get("name"))}
    if namespaced:
        out["metadata.namespace"] = _s(meta.get("namespace"))
    fn = _KIND_FIELDS.get(kind)
    if fn is not None:
        out.update(fn(obj))
    return out


def supported_fields(kind: str, namespaced: bool | None = None) -> frozenset[str]:
    """Field names `field_set` yields for this kind: anything else is a 400 'field label not supported'."""
    if namespaced is None:
        namespaced = is_namespaced_kind(kind)
    base = {"metadata.name", "metadata.namespace"} if namespaced else {"metadata.name"}
    return frozenset(base | _EMPTY_FIELDS.get(kind, frozenset()))


def parse_selectors(label_selector: str | None, field_selector: str | None, kind: str,
                    namespaced: bool | None = None) -> tuple[LabelSelector, FieldSelector]:
    """Parse both list/watch selectors for `kind`, raising the upstream 400s."""
    ls = LabelSelector.parse(label_selector)
    fs = FieldSelector.parse(field_selector)
    fs.check_supported(supported_fields(kind, namespaced))
    return ls, fs


__all__ = [
    "EVERYTHING", "NOTHING", "FieldSelector", "InvalidSelector", "LabelSelector", "Requirement",
    "field_set", "from_label_selector_object", "is_dns1123_subdomain", "is_namespaced_kind", "is_qualified_name",
    "is_valid_label_value", "parse_selectors", "regex_error", "selector_string", "supported_fields",
    "validate_label_selector_object", "validate_labels",
]
