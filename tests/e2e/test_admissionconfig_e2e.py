"""kyb server --admission-control-config-file: cluster-wide Pod Security defaults and exemptions, through kubectl."""

from __future__ import annotations

from .conftest import Server, free_port, needs_kubectl
from .test_policy_e2e import pending_pod

pytestmark = [needs_kubectl]

ADMISSION = """\
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: PodSecurity
  path: podsecurity.yaml
"""

POD_SECURITY = """\
apiVersion: pod-security.admission.config.k8s.io/v1
kind: PodSecurityConfiguration
defaults:
  enforce: "baseline"
  enforce-version: "latest"
exemptions:
  usernames: []
  runtimeClasses: []
  namespaces: ["trusted"]
"""


def test_default_enforce_level_and_exempt_namespace(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "podsecurity.yaml").write_text(POD_SECURITY)
    (conf / "admission.yaml").write_text(ADMISSION)
    # Only admission matters here: no node, no scheduler.
    s = Server(tmp_path / "kyb", free_port(), ["--admission-control-config-file", str(conf / "admission.yaml"),
                                                "--disable", "kubelet,scheduler"])
    s.data_dir.mkdir()
    s.start()
    try:
        root = {"securityContext": {"privileged": True}}
        s.kubectl("create", "namespace", "plain")
        p = s.kubectl("apply", "-f", "-", input=pending_pod("root", "plain", **root), check=False)
        assert p.returncode != 0
        assert 'pods "root" is forbidden: violates PodSecurity "baseline:latest": privileged' in p.stderr, p.stderr
        s.kubectl("create", "namespace", "trusted")
        p = s.kubectl("apply", "-f", "-", input=pending_pod("root", "trusted", **root), check=False)
        assert p.returncode == 0, p.stderr
        # A namespace's own label still chooses its level over the cluster default.
        s.kubectl("label", "ns", "plain", "pod-security.kubernetes.io/enforce=privileged")
        p = s.kubectl("apply", "-f", "-", input=pending_pod("root", "plain", **root), check=False)
        assert p.returncode == 0, p.stderr
    finally:
        s.stop()
