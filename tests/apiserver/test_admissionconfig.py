"""--admission-control-config-file: reading an AdmissionConfiguration and the PodSecurity plugin's part of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kybernetes.api.errors import StatusError
from kybernetes.apiserver.admissionconfig import (
    AdmissionConfigError,
    pod_security_options,
    read_admission_configuration,
)
from kybernetes.apiserver.podsecurity import BASELINE, LevelVersion, PodSecurity, Version
from kybernetes.cli.main import main

# As the Kubernetes docs write it ("Enforce Pod Security Standards by Configuring the Built-in
# Admission Controller"), comments and all.
DOCS_EXAMPLE = """\
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: PodSecurity
  configuration:
    apiVersion: pod-security.admission.config.k8s.io/v1 # see compatibility note
    kind: PodSecurityConfiguration
    # Defaults applied when a mode label is not set.
    #
    # Level label values must be one of:
    # - "privileged" (default)
    # - "baseline"
    # - "restricted"
    #
    # Version label values must be one of:
    # - "latest" (default)
    # - specific version like "v1.32"
    defaults:
      enforce: "privileged"
      enforce-version: "latest"
      audit: "privileged"
      audit-version: "latest"
      warn: "privileged"
      warn-version: "latest"
    exemptions:
      # Array of authenticated usernames to exempt.
      usernames: []
      # Array of runtime class names to exempt.
      runtimeClasses: []
      # Array of namespaces to exempt.
      namespaces: []
"""

PRIVILEGED_DEFAULTS = {"enforce": "privileged", "enforce-version": "latest", "audit": "privileged",
                       "audit-version": "latest", "warn": "privileged", "warn-version": "latest"}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def psc(defaults: dict | None = None, exemptions: dict | None = None,
        api_version: str = "pod-security.admission.config.k8s.io/v1") -> dict:
    doc: dict = {"apiVersion": api_version, "kind": "PodSecurityConfiguration"}
    if defaults is not None:
        doc["defaults"] = defaults
    if exemptions is not None:
        doc["exemptions"] = exemptions
    return doc


def admission(*plugins: dict, api_version: str = "apiserver.config.k8s.io/v1") -> str:
    return json.dumps({"apiVersion": api_version, "kind": "AdmissionConfiguration", "plugins": list(plugins)})


def options_error(config: object) -> str:
    with pytest.raises(AdmissionConfigError) as e:
        pod_security_options(config)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_the_docs_example_as_written(tmp_path: Path) -> None:
    plugins = read_admission_configuration(write(tmp_path / "admission.yaml", DOCS_EXAMPLE))
    assert list(plugins) == ["PodSecurity"]
    opts = pod_security_options(plugins["PodSecurity"])
    assert opts == {"defaults": PRIVILEGED_DEFAULTS, "exempt_usernames": [], "exempt_namespaces": [],
                    "exempt_runtime_classes": []}
    assert PodSecurity(**opts).defaults.fully_privileged
    # The same with the stricter defaults and exemptions the page suggests one sets.
    stricter = DOCS_EXAMPLE.replace('enforce: "privileged"', 'enforce: "baseline"').replace(
        "namespaces: []", "namespaces: [kube-system]").replace("usernames: []", 'usernames: ["ci-bot"]')
    opts = pod_security_options(read_admission_configuration(write(tmp_path / "b.yaml", stricter))["PodSecurity"])
    psa = PodSecurity(**opts)
    assert psa.defaults.enforce == LevelVersion(BASELINE) and psa.defaults.warn.level == "privileged"
    assert psa.exempt_namespaces == {"kube-system"} and psa.exempt_usernames == {"ci-bot"}


async def test_defaults_enforce_and_exemptions_apply() -> None:
    opts = pod_security_options(psc({"enforce": "baseline", "enforce-version": "v1.30"},
                                    {"namespaces": ["trusted"], "usernames": ["ci-bot"]}))
    psa = PodSecurity(**opts)
    privileged = {"metadata": {"name": "p"},
                  "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}]}}
    plain_ns = {"metadata": {"name": "plain"}}
    with pytest.raises(StatusError) as e:
        await psa.admit_pod(plain_ns, {**privileged, "metadata": {"name": "p", "namespace": "plain"}}, None,
                            "alice", (), [])
    assert e.value.code == 403 and 'violates PodSecurity "baseline:v1.30"' in e.value.message
    await psa.admit_pod({"metadata": {"name": "trusted"}},
                        {**privileged, "metadata": {"name": "p", "namespace": "trusted"}}, None, "alice", (), [])
    await psa.admit_pod(plain_ns, {**privileged, "metadata": {"name": "p", "namespace": "plain"}}, None,
                        "ci-bot", (), [])
    # A namespace label still overrides the default.
    labelled = {"metadata": {"name": "open", "labels": {"pod-security.kubernetes.io/enforce": "privileged"}}}
    await psa.admit_pod(labelled, {**privileged, "metadata": {"name": "p", "namespace": "open"}}, None,
                        "alice", (), [])
    assert psa.defaults.enforce.version == Version(30)


def test_path_is_relative_to_the_config_files_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "etc" / "psa" / "podsecurity.yaml",
          "apiVersion: pod-security.admission.config.k8s.io/v1beta1\nkind: PodSecurityConfiguration\n"
          "defaults: {enforce: restricted}\nexemptions: {runtimeClasses: [kata.example.com]}\n")
    cfg = write(tmp_path / "etc" / "admission" / "config.json",
                admission({"name": "PodSecurity", "path": "../psa/podsecurity.yaml"}))
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    opts = pod_security_options(read_admission_configuration(cfg)["PodSecurity"])
    assert opts["defaults"]["enforce"] == "restricted" and opts["defaults"]["warn"] == "privileged"
    assert opts["exempt_runtime_classes"] == ["kata.example.com"]
    # A path to a file that is not there names it.
    cfg = write(tmp_path / "etc" / "admission" / "missing.yaml", admission({"name": "PodSecurity", "path": "nope.yaml"}))
    with pytest.raises(AdmissionConfigError, match=r"cannot read the configuration of admission plugin PodSecurity "
                                                   r".*etc/admission/nope\.yaml: No such file"):
        read_admission_configuration(cfg)


def test_other_versions_entries_and_plugins(tmp_path: Path) -> None:
    # The older group of AdmissionConfiguration, the older PodSecurityConfiguration versions.
    for av in ("pod-security.admission.config.k8s.io/v1beta1", "pod-security.admission.config.k8s.io/v1alpha1"):
        cfg = write(tmp_path / "a.yaml", admission({"name": "PodSecurity", "configuration": psc(api_version=av)},
                                                   api_version="apiserver.k8s.io/v1alpha1"))
        assert pod_security_options(read_admission_configuration(cfg)["PodSecurity"])["defaults"] == \
            PRIVILEGED_DEFAULTS
    # Other plugins' entries are ignored, their files never read; the first entry for a name wins;
    # an entry with neither configuration nor path leaves the plugin its defaults.
    cfg = write(tmp_path / "b.yaml", admission(
        {"name": "EventRateLimit", "path": "does-not-exist.yaml"},
        {"name": "ResourceQuota", "configuration": {"apiVersion": "x/v1", "kind": "Whatever"}},
        {"name": "PodSecurity"},
        {"name": "PodSecurity", "configuration": psc({"enforce": "restricted"})}))
    assert read_admission_configuration(cfg) == {"PodSecurity": None}
    assert pod_security_options(None) == {}
    # An empty configuration file, and no plugins at all.
    write(tmp_path / "empty.yaml", "")
    cfg = write(tmp_path / "c.yaml", admission({"name": "PodSecurity", "path": "empty.yaml"}))
    assert read_admission_configuration(cfg) == {"PodSecurity": None}
    cfg = write(tmp_path / "d.yaml", "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\n")
    assert read_admission_configuration(cfg) == {}
    # An upstream legacy file for ImagePolicyWebhook: for a plugin that does not run here.
    cfg = write(tmp_path / "e.yaml", "imagePolicy: {kubeConfigFile: /x, allowTTL: 50}\n")
    assert read_admission_configuration(cfg) == {}


@pytest.mark.parametrize("config, want", [
    (psc({"enforce": "strict"}),
     'invalid configuration: defaults.enforce: Invalid value: "strict": must be one of privileged, baseline, '
     'restricted'),
    (psc({"warn-version": "1.30"}),
     'defaults.warn-version: Invalid value: "1.30": must be "latest" or "v1.x"'),
    (psc({"audit-version": "v2.0"}), 'defaults.audit-version: Invalid value: "v2.0"'),
    (psc({"enforce": 3}), 'defaults.enforce: Invalid value: 3: must be a string'),
    (psc(exemptions={"namespaces": "kube-system"}),
     'exemptions.namespaces: Invalid value: "kube-system": must be a list of strings'),
    (psc(exemptions={"usernames": {"a": 1}}), "exemptions.usernames: Invalid value"),
    (psc(exemptions={"runtimeClasses": [7]}), "exemptions.runtimeClasses[0]: Invalid value: 7: must be a string"),
    (psc(exemptions={"namespaces": ["Kube_System"]}), 'exemptions.namespaces[0]: Invalid value: "Kube_System": '
                                                      "a lowercase RFC 1123 label"),
    (psc(exemptions={"runtimeClasses": ["a..b"]}), 'exemptions.runtimeClasses[0]: Invalid value: "a..b"'),
    (psc(exemptions={"namespaces": ["a", "a"]}), 'exemptions.namespaces[1]: Duplicate value: "a"'),
    (psc(exemptions={"usernames": [""]}), 'exemptions.usernames[0]: Invalid value: "": username must not be empty'),
    (psc({"enforcee": "baseline"}), "defaults.enforcee: Invalid value: unknown field"),
    (psc(exemptions={"namespace": ["x"]}), "exemptions.namespace: Invalid value: unknown field"),
    (psc(defaults=["enforce"]), "defaults: Invalid value"),
    ({**psc(), "kind": "PodSecurityPolicy"}, "expected kind PodSecurityConfiguration"),
    (psc(api_version="pod-security.admission.config.k8s.io/v2"), "of apiVersion 'pod-security.admission"),
    ("enforce: baseline", "expected a PodSecurityConfiguration object, got str"),
])
def test_pod_security_configuration_errors(config: object, want: str) -> None:
    msg = options_error(config)
    assert msg.startswith("admission plugin PodSecurity: ") and want in msg, msg


def test_several_errors_at_once() -> None:
    msg = options_error(psc({"enforce": "strict", "warn": "loud"}, {"namespaces": "x"}))
    assert msg.count("Invalid value") == 3 and msg.index("defaults.enforce") < msg.index("defaults.warn"), msg


@pytest.mark.parametrize("text, want", [
    ("plugins: [", "not valid YAML or JSON"),
    ("- a\n- b\n", "expected an AdmissionConfiguration object, got list"),
    ("apiVersion: v1\nkind: ConfigMap\n", "expected kind AdmissionConfiguration of apiVersion "
                                          "apiserver.config.k8s.io/v1 or apiserver.k8s.io/v1alpha1"),
    ("apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins: {name: PodSecurity}\n",
     "plugins: Invalid value"),
    ("apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins: [{path: x.yaml}]\n",
     "plugins[0].name: Required value"),
    ("apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\n"
     "plugins: [{name: PodSecurity, configuration: enforce}]\n", "plugins[0].configuration: Invalid value"),
    ("apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugin: []\n", "plugin: Invalid value: unknown field"),
])
def test_admission_configuration_errors(tmp_path: Path, text: str, want: str) -> None:
    cfg = write(tmp_path / "admission.yaml", text)
    with pytest.raises(AdmissionConfigError) as e:
        read_admission_configuration(cfg)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(cfg)) and want in msg, msg
    with pytest.raises(AdmissionConfigError, match="cannot read admission configuration .*: No such file"):
        read_admission_configuration(tmp_path / "missing.yaml")


def test_kyb_server_refuses_a_bad_file_naming_the_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KYB_NO_UVLOOP", "1")
    bad = write(tmp_path / "admission.yaml", DOCS_EXAMPLE.replace('warn: "privileged"', 'warn: "loud"'))
    with pytest.raises(SystemExit) as e:
        main(["server", "--data-dir", str(tmp_path / "data"), "--admission-control-config-file", str(bad)])
    msg = str(e.value)
    assert msg == ('kyb server: --admission-control-config-file: admission plugin PodSecurity: invalid '
                   'configuration: defaults.warn: Invalid value: "loud": must be one of privileged, baseline, '
                   'restricted'), msg
    assert not (tmp_path / "data").exists()  # refused before anything was made
