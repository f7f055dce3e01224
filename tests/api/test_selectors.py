"""Label and field selector parsing/matching, with upstream's error messages."""

import pytest

from kybernetes.api.errors import StatusError
from kybernetes.api.selectors import (
    FieldSelector,
    InvalidSelector,
    LabelSelector,
    field_set,
    from_label_selector_object,
    is_qualified_name,
    is_valid_label_value,
    parse_selectors,
    selector_string,
    supported_fields,
    validate_label_selector_object,
)

LABELS = {"app": "web", "tier": "frontend", "version": "3"}


@pytest.mark.parametrize("sel,expected", [
    ("", True),
    ("app=web", True),
    ("app==web", True),
    ("app=db", False),
    ("app!=db", True),
    ("app!=web", False),
    ("missing!=x", True),
    ("app in (web,db)", True),
    ("app in (db)", False),
    ("missing in (x)", False),
    ("app notin (db,cache)", True),
    ("app notin (web)", False),
    ("missing notin (x)", True),
    ("app", True),
    ("missing", False),
    ("!missing", True),
    ("!app", False),
    ("app=web,tier=frontend", True),
    ("app=web,tier=backend", False),
    ("  app = web ,  tier in ( frontend , backend ) ", True),
    ("version>2", True),
    ("version<3", False),
    ("app>1", False),  # non-numeric label values never satisfy gt/lt
    ("app in (in, notin, web)", True),  # keywords are plain words inside a value list
    ("missing=", False),  # `key=` needs the label present with the empty value
])
def test_label_selector_matching(sel, expected):
    assert LabelSelector.parse(sel).matches(LABELS) is expected


def test_empty_value_equality_requires_presence():
    assert LabelSelector.parse("a=").matches({"a": ""})
    assert not LabelSelector.parse("a=").matches({})


def test_empty_and_nothing():
    assert LabelSelector.parse("").empty
    assert LabelSelector.parse(None).matches({})
    assert not LabelSelector.parse("a").empty
    nothing = from_label_selector_object(None)
    assert not nothing.matches({}) and not nothing.empty
    assert from_label_selector_object({}).empty


def test_string_form_is_sorted_and_canonical():
    s = LabelSelector.parse("z in (b,a), a==1, !m, k, n notin (y,x), v>3")
    assert str(s) == "a=1,k,!m,n notin (x,y),v>3,z in (a,b)"  # sorted by key, as upstream
    assert LabelSelector.parse(str(s)) == s


@pytest.mark.parametrize("sel,message", [
    ("a b", "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt"),
    ("a in b", "unable to parse requirement: found 'b' expected: '('"),
    ("a in (b", "unable to parse requirement: found '', expected: ',', or identifier"),
    ("a in (b c)", "unable to parse requirement: found 'c', expected: ',' or ')'"),
    ("a=b,", "found '', expected: identifier after ','"),
    ("=b", "found '=', expected: !, identifier, or 'end of string'"),
    ("a=b c", "found 'c', expected: ',' or 'end of string'"),
    ("!=b", "found '!=', expected: !, identifier, or 'end of string'"),
    ("! =b", "unable to parse requirement: found '=', expected: identifier"),
    ("a=(b)", "unable to parse requirement: found '(', expected: identifier"),
    ("a>b", ("unable to parse requirement: values[0]: Invalid value: \"b\": "
            "for 'Gt', 'Lt' operators, the value must be an integer")),
])
def test_label_selector_syntax_errors(sel, message):
    with pytest.raises(StatusError) as e:
        LabelSelector.parse(sel)
    assert e.value.code == 400
    assert e.value.reason == "BadRequest"
    assert e.value.message == message


def test_label_selector_rejects_bad_keys_and_values():
    with pytest.raises(StatusError) as e:
        LabelSelector.parse("bad key!x=1")
    assert e.value.code == 400
    with pytest.raises(StatusError) as e:
        LabelSelector.parse("-a=b")
    assert e.value.message.startswith('unable to parse requirement: key: Invalid value: "-a": name part must')
    with pytest.raises(StatusError) as e:
        LabelSelector.parse("a=-b-")
    assert 'values[0][a]: Invalid value: "-b-": a valid label must be an empty string' in e.value.message


def test_empty_value_lists():
    assert LabelSelector.parse("a in ()").matches({"a": ""})
    assert LabelSelector.parse("a in (,x)").matches({"a": ""})
    assert LabelSelector.parse("a in (x,)").matches({"a": "x"})


def test_from_dict_and_object_form():
    assert LabelSelector.from_dict({"app": "web"}).matches(LABELS)
    sel = from_label_selector_object({
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["frontend", "edge"]},
            {"key": "canary", "operator": "DoesNotExist"},
            {"key": "version", "operator": "Exists"},
            {"key": "env", "operator": "NotIn", "values": ["prod"]},
        ],
    })
    assert sel.matches(LABELS)
    assert not sel.matches({**LABELS, "canary": "1"})
    assert not sel.matches({**LABELS, "env": "prod"})
    assert selector_string({"matchLabels": {"b": "2", "a": "1"}}) == "a=1,b=2"


def test_object_form_validation_errors():
    errs = validate_label_selector_object({
        "matchLabels": {"bad key": "v"},
        "matchExpressions": [
            {"key": "a", "operator": "In", "values": []},
            {"key": "b", "operator": "Exists", "values": ["x"]},
            {"key": "c", "operator": "Foo"},
            {"key": "d", "operator": "In", "values": ["bad value"]},
        ],
    }, "spec.selector")
    texts = [str(e) for e in errs]
    assert texts[0].startswith('spec.selector.matchLabels: Invalid value: "bad key": name part must consist of')
    assert "spec.selector.matchExpressions[0].values: Required value: must be specified when `operator` is " \
           "'In' or 'NotIn'" in texts
    assert "spec.selector.matchExpressions[1].values: Forbidden: may not be specified when `operator` is " \
           "'Exists' or 'DoesNotExist'" in texts
    assert 'spec.selector.matchExpressions[2].operator: Invalid value: "Foo": not a valid selector operator' \
        in texts
    assert any(t.startswith('spec.selector.matchExpressions[3].values[0]: Invalid value: "bad value"')
               for t in texts)
    with pytest.raises(InvalidSelector) as e:
        from_label_selector_object({"matchExpressions": [{"key": "a", "operator": "In"}]})
    assert e.value.errors[0].type == "Required"


def test_qualified_name_messages():
    assert is_qualified_name("example.com/my-label") == []
    assert is_qualified_name("a/b/c")[0].startswith("a qualified name must consist of")
    assert is_qualified_name("/x") == ["prefix part must be non-empty"]
    assert is_qualified_name("Bad_Prefix/x")[0].startswith("prefix part a lowercase RFC 1123 subdomain")
    assert is_qualified_name("x" * 64) == ["name part must be no more than 63 characters"]
    assert is_qualified_name("-x") == [
        ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
        "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
        "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")]
    assert is_valid_label_value("") == []
    assert is_valid_label_value("x" * 64)[0] == "must be no more than 63 characters"


# --- field selectors ------------------------------------------------------------------------------------


def test_field_selector_parse_and_match():
    fs = FieldSelector.parse("status.phase=Running,spec.nodeName!=n1")
    assert fs.requirements == (("spec.nodeName", "!=", "n1"), ("status.phase", "=", "Running"))
    assert fs.matches({"status.phase": "Running", "spec.nodeName": "n2"})
    assert not fs.matches({"status.phase": "Running", "spec.nodeName": "n1"})
    assert not fs.matches({"status.phase": "Pending"})
    assert FieldSelector.parse("a==b").requirements == (("a", "=", "b"),)
    assert FieldSelector.parse("spec.nodeName=").matches({"spec.nodeName": ""})
    assert FieldSelector.parse("").empty and FieldSelector.parse(None).matches({})
    assert fs.value_for("status.phase") == "Running"
    assert fs.value_for("spec.nodeName") is None


def test_field_selector_escapes():
    fs = FieldSelector.parse(r"metadata.name=a\,b\=c\\d")
    assert fs.requirements == (("metadata.name", "=", "a,b=c\\d"),)
    assert str(fs) == r"metadata.name=a\,b\=c\\d"


@pytest.mark.parametrize("sel,message", [
    ("foo", "invalid selector: 'foo'; can't understand 'foo'"),
    ("a=b,c", "invalid selector: 'a=b,c'; can't understand 'c'"),
    (r"a=b\x", "invalid field selector: invalid escape sequence: \\x"),
    ("a=b=c", "invalid field selector: unescaped character in value: 61"),
    ("a=b\\", "invalid field selector: invalid escape sequence: \\"),
])
def test_field_selector_errors(sel, message):
    with pytest.raises(StatusError) as e:
        FieldSelector.parse(sel)
    assert e.value.code == 400
    assert e.value.message == message


def test_unsupported_field_rejected_like_upstream():
    with pytest.raises(StatusError) as e:
        parse_selectors("app=web", "foo=bar", "Pod")
    assert e.value.code == 400 and e.value.message == "field label not supported: foo"
    ls, fs = parse_selectors("app=web", "spec.nodeName=n1", "Pod")
    assert ls.matches(LABELS) and fs.requirements == (("spec.nodeName", "=", "n1"),)
    with pytest.raises(StatusError):
        parse_selectors(None, "metadata.namespace=x", "Node")  # cluster-scoped kinds have no namespace field


def test_pod_field_set():
    pod = {
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"nodeName": "n1", "restartPolicy": "Always", "schedulerName": "default-scheduler",
                 "serviceAccountName": "default", "hostNetwork": True},
        "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.5"}], "nominatedNodeName": ""},
    }
    assert field_set("Pod", pod) == {
        "metadata.name": "p", "metadata.namespace": "ns", "spec.nodeName": "n1", "spec.restartPolicy": "Always",
        "spec.schedulerName": "default-scheduler", "spec.serviceAccountName": "default",
        "spec.hostNetwork": "true", "status.phase": "Running", "status.podIP": "10.0.0.5",
        "status.nominatedNodeName": "",
    }
    assert set(field_set("Pod", pod)) == supported_fields("Pod")
    assert field_set("Pod", {"metadata": {"name": "p"}})["spec.hostNetwork"] == "false"


def test_other_kinds_field_sets():
    ev = {"metadata": {"name": "e", "namespace": "ns"}, "involvedObject": {"kind": "Pod", "name": "p", "uid": "u"},
          "reason": "Started", "type": "Normal", "reportingComponent": "kubelet"}
    fs = field_set("Event", ev)
    assert fs["involvedObject.kind"] == "Pod" and fs["involvedObject.uid"] == "u"
    assert fs["source"] == "kubelet"  # falls back to the reporting controller
    assert set(fs) == supported_fields("Event")
    assert {"involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
            "reason", "reportingComponent", "type", "involvedObject.namespace", "involvedObject.name"} <= set(fs)
    assert field_set("Secret", {"metadata": {"name": "s"}, "type": "Opaque"})["type"] == "Opaque"
    node = field_set("Node", {"metadata": {"name": "n"}, "spec": {"unschedulable": True}})
    assert node == {"metadata.name": "n", "spec.unschedulable": "true"}
    ns = field_set("Namespace", {"metadata": {"name": "x"}, "status": {"phase": "Active"}})
    assert ns == {"metadata.name": "x", "status.phase": "Active", "name": "x"}
    assert field_set("ReplicaSet", {"metadata": {}, "status": {"replicas": 3}})["status.replicas"] == "3"
    assert field_set("ReplicationController", {"metadata": {}})["status.replicas"] == "0"
    assert field_set("Job", {"metadata": {}, "status": {"succeeded": 2}})["status.successful"] == "2"
    assert set(field_set("ConfigMap", {"metadata": {"name": "c", "namespace": "d"}})) == {"metadata.name",
                                                                                          "metadata.namespace"}
