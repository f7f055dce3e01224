"""Certificates for nodes: signing and approving CertificateSigningRequests, and the bootstrap token plumbing.

* CSRSigningController issues certificates from the cluster CA for approved
  requests to the built-in signers ``kubernetes.io/kube-apiserver-client``,
  ``kubernetes.io/kube-apiserver-client-kubelet`` and
  ``kubernetes.io/kubelet-serving``, each with its subject rules (see
  api/certificates.py); a request that breaks them gets a Failed condition
  (reason SignerValidationFailure) instead. A certificate lives as long as
  ``spec.expirationSeconds`` asks, at most the signing duration (a year, as
  upstream's default) and never past the CA.
* CSRApprovingController approves a node client certificate (CN
  system:node:<name>, O system:nodes, signer kube-apiserver-client-kubelet) as
  upstream's csrapproving controller does: it asks the authorizer, with a
  SubjectAccessReview for the requester (the CSR's username, uid, groups and
  extra), whether they may ``create`` ``certificatesigningrequests/selfnodeclient``
  (a node renewing its own certificate: username == CN) or, failing that,
  ``certificatesigningrequests/nodeclient`` (anyone asking for a node's). The
  default bindings grant selfnodeclient to system:nodes and nodeclient to
  system:bootstrappers (bootstrappolicy.py, as kubeadm and k3s bind them), so a
  bootstrap token gets a node its first certificate and a node renews its own;
  who else may is RBAC's to say. A request refused is looked at again on the
  informer's resync or its next change. It also approves kubelet serving
  certificates asked for by the node itself whose names are all the node's own
  addresses (status.addresses, and its name). Upstream leaves serving
  certificates to an external approver because a node can claim any address;
  kubeadm and k3s setups usually approve them automatically. We do too: the
  API server then checks the kubelet's certificate against the address it
  dials, so ``kubectl logs``/``exec`` work on a joined node without a manual
  ``kubectl certificate approve`` while no node gets a certificate for an
  address it does not report.
* BootstrapSigner keeps the kube-public ``cluster-info`` ConfigMap signed
  (``jws-kubeconfig-<token id>``) with every bootstrap token allowed to sign,
  so a joining node can check the CA it reads there with its token.
* CSRCleaner deletes requests an hour after they were approved, denied or
  failed, a day after they were made if still pending, or once their
  certificate has expired.
* TokenCleaner deletes bootstrap token Secrets once they have expired.
"""

from __future__ import annotations

import base64
import binascii
import copy
import logging
import time
from typing import Any

from ..api import certificates as csrs
from ..api.errors import StatusError
from ..api.times import parse_time
from ..client import Client, Informer
from ..client.informer import strip_managed_fields
from .base import Controller, Requeue

log = logging.getLogger("kybernetes.controllers.certificates")

Obj = dict[str, Any]

CSR_API = "certificates.k8s.io/v1"
CSR_PLURAL = "certificatesigningrequests"
DEFAULT_SIGNING_DURATION = 365 * 24 * 3600.0
BOOTSTRAP_TOKEN_TYPE = "bootstrap.kubernetes.io/token"
BOOTSTRAP_SECRET_PREFIX = "bootstrap-token-"
CLUSTER_INFO = "cluster-info"
JWS_PREFIX = "jws-kubeconfig-"
SUBJECT_ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
# (subresource of certificatesigningrequests the requester must be allowed to create, approval message),
# as upstream's sarApprover tries them; selfnodeclient only where the requester is the node named.
NODE_CLIENT_PERMISSIONS = (
    ("selfnodeclient", "Auto approving self kubelet client certificate after SubjectAccessReview."),
    ("nodeclient", "Auto approving kubelet client certificate after SubjectAccessReview."),
)


def _csr_informer(controller: Controller) -> Informer:
    inf = controller.informer(CSR_API, CSR_PLURAL, namespaced=False, resync_period=300)
    inf.add_handler(on_add=lambda o: controller.enqueue(o["metadata"]["name"]),
                    on_update=lambda _old, new: controller.enqueue(new["metadata"]["name"]))
    return inf


class CSRSigningController(Controller):
    name = "csrsigning"

    def __init__(self, client: Client, ca_cert_pem: bytes, ca_key_pem: bytes, *,
                 duration: float = DEFAULT_SIGNING_DURATION):
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        super().__init__(client)
        self.ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
        self.ca_key = serialization.load_pem_private_key(ca_key_pem, None)
        self.duration = duration
        self.api = client.resource(CSR_API, CSR_PLURAL, namespaced=False)
        self.csrs = _csr_informer(self)

    def ttl(self, expiration_seconds: Any) -> float:
        """The requested life, capped at the signing duration and at least 10 minutes."""
        if not isinstance(expiration_seconds, int) or isinstance(expiration_seconds, bool):
            return self.duration
        return float(min(max(expiration_seconds, csrs.MIN_EXPIRATION), self.duration))

    async def reconcile(self, key: str) -> None:
        cur = self.csrs.get(key)
        if cur is None or csrs.has_certificate(cur) or not csrs.is_approved(cur) or csrs.is_failed(cur):
            return
        spec = cur.get("spec") or {}
        check = csrs.SIGNER_CHECKS.get(spec.get("signerName") or "")
        if check is None:
            return  # someone else's signer
        obj = copy.deepcopy(cur)
        usages = list(spec.get("usages") or [])
        try:
            req = csrs.parse_csr_object(cur)
            check(req, usages)
            pem = csrs.issue(req, usages, self.ca_cert, self.ca_key, ttl=self.ttl(spec.get("expirationSeconds")))
        except csrs.CSRError as e:
            log.info("csr %s: not signing: %s", key, e)
            obj.setdefault("status", {}).setdefault("conditions", []).append(
                csrs.condition(csrs.FAILED, "SignerValidationFailure", str(e)))
        else:
            obj.setdefault("status", {})["certificate"] = base64.b64encode(pem).decode()
            log.info("csr %s: issued a certificate for %s (%s)", key, csrs.common_name(req), spec.get("signerName"))
        await self.api.update_status(obj)


class CSRApprovingController(Controller):
    name = "csrapproving"

    def __init__(self, client: Client):
        super().__init__(client)
        self.api = client.resource(CSR_API, CSR_PLURAL, namespaced=False)
        self.csrs = _csr_informer(self)
        self.csrs.add_index("username", _username_index)
        self.nodes = self.informer("v1", "nodes", namespaced=False)
        # A serving certificate waits for its node's addresses: a node's change brings its requests back.
        self.nodes.add_handler(on_add=self._on_node, on_update=lambda _old, new: self._on_node(new))

    def _on_node(self, node: Obj) -> None:
        for csr in self.csrs.by_index("username", csrs.NODE_PREFIX + node["metadata"]["name"]):
            if (csr.get("spec") or {}).get("signerName") != csrs.KUBELET_SERVING:
                continue  # a client certificate's approval does not depend on the node
            if not csrs.has_certificate(csr) and not csrs.is_approved(csr) and not csrs.is_denied(csr):
                self.enqueue(csr["metadata"]["name"])

    async def decide(self, csr: Obj) -> str | None:
        """The approval message when the request is one to approve, None otherwise."""
        spec = csr.get("spec") or {}
        signer = spec.get("signerName")
        if signer not in (csrs.KUBELET_CLIENT, csrs.KUBELET_SERVING):
            return None
        try:
            req = csrs.parse_csr_object(csr)
        except csrs.CSRError:
            return None
        usages = list(spec.get("usages") or [])
        username = spec.get("username") or ""
        cn = csrs.common_name(req)
        try:
            if signer == csrs.KUBELET_CLIENT:
                csrs.check_kubelet_client(req, usages)
            else:
                csrs.check_kubelet_serving(req, usages)
        except csrs.CSRError:
            return None
        if signer == csrs.KUBELET_CLIENT:
            # As upstream's recognizers, in order: a node's own renewal first, then any node client request.
            for subresource, message in NODE_CLIENT_PERMISSIONS:
                if subresource == "selfnodeclient" and username != cn:
                    continue
                if await self.allowed(spec, subresource):
                    return message
            log.debug("csr %s: a node client certificate request, but %s may not create "
                      "certificatesigningrequests/nodeclient or selfnodeclient",
                      (csr.get("metadata") or {}).get("name"), username)
            return None
        return self._serving_decision(username, set(spec.get("groups") or []), cn, req)

    async def allowed(self, spec: Obj, subresource: str) -> bool:
        """Whether the CSR's requester may create certificatesigningrequests/<subresource>: a
        SubjectAccessReview for them, as upstream's approver asks the authorizer."""
        user, groups = spec.get("username") or "", list(spec.get("groups") or [])
        if not user and not groups:
            return False
        review_spec: Obj = {"user": user, "groups": groups, "resourceAttributes": {
            "group": "certificates.k8s.io", "version": "*", "resource": CSR_PLURAL,
            "subresource": subresource, "verb": "create"}}
        if spec.get("uid"):
            review_spec["uid"] = spec["uid"]
        if spec.get("extra"):
            review_spec["extra"] = spec["extra"]
        review = await self.client.request("POST", SUBJECT_ACCESS_REVIEWS, body={
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": review_spec})
        return isinstance(review, dict) and (review.get("status") or {}).get("allowed") is True

    def _serving_decision(self, username: str, groups: set[str], cn: str, req: Any) -> str | None:
        if username != cn or csrs.NODES_GROUP not in groups:
            return None
        node = self.nodes.get(cn[len(csrs.NODE_PREFIX):])
        if node is None:
            return None
        addrs = (node.get("status") or {}).get("addresses") or []
        ips = {a.get("address") for a in addrs if a.get("type") in ("InternalIP", "ExternalIP")}
        names = {a.get("address") for a in addrs if a.get("type") in ("Hostname", "InternalDNS", "ExternalDNS")}
        names.add(node["metadata"]["name"])
        dns, req_ips, _, _ = csrs.sans(req)
        if all(d in names for d in dns) and all(ip in ips for ip in req_ips):
            return "Auto approving a kubelet serving certificate for the node's own addresses."
        return None

    async def reconcile(self, key: str) -> None:
        cur = self.csrs.get(key)
        if cur is None or csrs.has_certificate(cur) or csrs.is_approved(cur) or csrs.is_denied(cur):
            return
        message = await self.decide(cur)
        if message is None:
            return
        obj = copy.deepcopy(cur)
        obj.setdefault("status", {}).setdefault("conditions", []).append(
            csrs.condition(csrs.APPROVED, "AutoApproved", message))
        await self.api.update_subresource(key, "approval", obj)
        log.info("csr %s: approved (%s)", key, message)


def _username_index(csr: Obj) -> list[str]:
    u = (csr.get("spec") or {}).get("username")
    return [u] if u else []


APPROVED_TTL = 3600.0
DENIED_TTL = 3600.0
PENDING_TTL = 24 * 3600.0


class CSRCleaner(Controller):
    """Deletes requests once they have served: approved, denied or failed ones after an hour,
    pending ones after a day, and any whose certificate has expired (upstream's csrcleaner)."""

    name = "csrcleaner"
    workers = 1

    def __init__(self, client: Client):
        super().__init__(client)
        self.api = client.resource(CSR_API, CSR_PLURAL, namespaced=False)
        self.csrs = _csr_informer(self)

    def deadline(self, csr: Obj) -> float:
        meta = csr.get("metadata") or {}
        created = parse_time(meta.get("creationTimestamp")) or time.time()
        conds = {c.get("type"): c for c in (csr.get("status") or {}).get("conditions") or []}
        ends = [created + PENDING_TTL]
        for t, ttl in ((csrs.APPROVED, APPROVED_TTL), (csrs.DENIED, DENIED_TTL), (csrs.FAILED, DENIED_TTL)):
            c = conds.get(t)
            if c is not None and c.get("status") == "True":
                ends.append((parse_time(c.get("lastUpdateTime")) or created) + ttl)
        pem = csrs.certificate_pem(csr)
        if pem:
            try:
                from cryptography import x509
                ends.append(x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp())
            except ValueError:
                pass
        return min(ends)

    async def reconcile(self, key: str) -> None:
        csr = self.csrs.get(key)
        if csr is None:
            return
        left = self.deadline(csr) - time.time()
        if left > 0:
            raise Requeue(after=left + 0.1)
        try:
            await self.api.delete(key)
            log.info("deleted CertificateSigningRequest %s: done with", key)
        except StatusError as e:
            if e.code != 404:
                raise


# -- bootstrap tokens ----------------------------------------------------------------------------------------------


def token_fields(secret: Obj) -> dict[str, str]:
    """The decoded data of a bootstrap token Secret ({} if it is not one)."""
    if secret.get("type") != BOOTSTRAP_TOKEN_TYPE:
        return {}
    out = {}
    for k, v in (secret.get("data") or {}).items():
        try:
            out[k] = base64.b64decode(v or "", validate=True).decode()
        except (binascii.Error, ValueError, UnicodeDecodeError):
            continue
    return out


def token_expiry(fields: dict[str, str]) -> float | None:
    """When the token expires (epoch seconds), None if never; an unreadable date counts as expired."""
    exp = fields.get("expiration")
    if not exp:
        return None
    t = parse_time(exp)
    return t if t is not None else 0.0


def _token_informer(controller: Controller, handler) -> Informer:
    inf = Informer(controller.reader("v1", "secrets"), namespace="kube-system",
                   field_selector=f"type={BOOTSTRAP_TOKEN_TYPE}", transform=strip_managed_fields)
    controller.informers.append(inf)
    controller._own_informers.append(inf)
    inf.add_handler(on_add=handler, on_update=lambda _old, new: handler(new), on_delete=handler)
    return inf


class BootstrapSigner(Controller):
    name = "bootstrapsigner"
    workers = 1

    def __init__(self, client: Client):
        super().__init__(client)
        self.api = client.resource("v1", "configmaps")
        self.configmaps = Informer(self.reader("v1", "configmaps"), namespace="kube-public",
                                   field_selector=f"metadata.name={CLUSTER_INFO}",
                                   transform=strip_managed_fields)
        self.informers.append(self.configmaps)
        self._own_informers.append(self.configmaps)
        self.configmaps.add_handler(on_add=self._kick, on_update=lambda _old, new: self._kick(new))
        self.tokens = _token_informer(self, self._kick)

    def _kick(self, _obj: Obj) -> None:
        self.enqueue(CLUSTER_INFO)

    async def reconcile(self, key: str) -> None:
        from ..apiserver.pki import detached_jws

        cm = self.configmaps.get(f"kube-public/{CLUSTER_INFO}")
        if cm is None:
            return
        data = dict(cm.get("data") or {})
        content = data.get("kubeconfig")
        if content is None:
            return
        now = time.time()
        want: dict[str, str] = {}
        next_expiry: float | None = None
        for secret in self.tokens.list():
            f = token_fields(secret)
            tid, sec = f.get("token-id", ""), f.get("token-secret", "")
            if (secret.get("metadata") or {}).get("deletionTimestamp") or f.get("usage-bootstrap-signing") != "true":
                continue
            if secret["metadata"].get("name") != BOOTSTRAP_SECRET_PREFIX + tid or not tid or not sec:
                continue
            exp = token_expiry(f)
            if exp is not None:
                if exp <= now:
                    continue
                next_expiry = exp if next_expiry is None else min(next_expiry, exp)
            want[JWS_PREFIX + tid] = detached_jws(content, tid, sec)
        new = {k: v for k, v in data.items() if not k.startswith(JWS_PREFIX)} | want
        if new != data:
            try:
                await self.api.update({**cm, "data": new}, "kube-public")
            except StatusError as e:
                if e.code not in (404, 409):
                    raise
        if next_expiry is not None:
            raise Requeue(after=max(next_expiry - now, 0.5))


class TokenCleaner(Controller):
    name = "tokencleaner"
    workers = 1

    def __init__(self, client: Client):
        super().__init__(client)
        self.api = client.resource("v1", "secrets")
        self.tokens = _token_informer(self, lambda s: self.enqueue(s["metadata"]["name"]))

    async def reconcile(self, key: str) -> None:
        secret = self.tokens.get(f"kube-system/{key}")
        if secret is None or (secret.get("metadata") or {}).get("deletionTimestamp"):
            return
        exp = token_expiry(token_fields(secret))
        if exp is None:
            return
        left = exp - time.time()
        if left > 0:
            raise Requeue(after=left + 0.1)
        try:
            await self.api.delete(key, "kube-system")
            log.info("deleted expired bootstrap token %s", key)
        except StatusError as e:
            if e.code != 404:
                raise
