"""certificates.k8s.io/v1 CertificateSigningRequest: what the object is and what the built-in signers accept.

Written from the upstream API reference and the behaviour of its registry:

* on create the server fills ``spec.username``/``groups``/``uid`` from the
  requesting user and drops any status (nobody creates a pre-approved request);
* ``spec`` never changes after create; the main resource never writes status;
  ``/status`` writes the certificate and conditions but keeps the Approved and
  Denied conditions as they were; ``/approval`` writes conditions but keeps the
  certificate as it was; conditions get their timestamps filled in;
* validation: ``spec.request`` is a PEM ``CERTIFICATE REQUEST`` with a valid
  self-signature, ``signerName`` is ``domain/path``, ``usages`` are known and
  unique, ``expirationSeconds`` at least 600, Approved/Denied/Failed appear at
  most once with status True (Approved and Denied exclusive), such conditions
  are never removed, and ``status.certificate`` holds CERTIFICATE PEM blocks
  and is never changed once set.

The subject rules of the built-in signers (``kube-apiserver-client``,
``kube-apiserver-client-kubelet``, ``kubelet-serving``) and the issuing of a
certificate from a request are here too, as pure functions the signing and
approving controllers (controllers/certificates.py) call.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kybernetes.api.errors import FieldError, duplicate, forbidden, invalid, not_supported, required, too_long
from kybernetes.api.times import format_time

GROUP = "certificates.k8s.io"
API_VERSION = f"{GROUP}/v1"
KIND = "CertificateSigningRequest"

KUBE_APISERVER_CLIENT = "kubernetes.io/kube-apiserver-client"
KUBELET_CLIENT = "kubernetes.io/kube-apiserver-client-kubelet"
KUBELET_SERVING = "kubernetes.io/kubelet-serving"
LEGACY_UNKNOWN = "kubernetes.io/legacy-unknown"
BUILTIN_SIGNERS = (KUBE_APISERVER_CLIENT, KUBELET_CLIENT, KUBELET_SERVING)

APPROVED, DENIED, FAILED = "Approved", "Denied", "Failed"
NODE_PREFIX = "system:node:"
NODES_GROUP = "system:nodes"
MIN_EXPIRATION = 600

# Usage -> x509 KeyUsage flag (cryptography's keyword) or ExtendedKeyUsage OID.
KEY_USAGES = {
    "signing": "digital_signature", "digital signature": "digital_signature",
    "content commitment": "content_commitment", "key encipherment": "key_encipherment",
    "key agreement": "key_agreement", "data encipherment": "data_encipherment", "cert sign": "key_cert_sign",
    "crl sign": "crl_sign", "encipher only": "encipher_only", "decipher only": "decipher_only",
}
EXT_KEY_USAGES = {
    "any": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE, "server auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "client auth": ExtendedKeyUsageOID.CLIENT_AUTH, "code signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email protection": ExtendedKeyUsageOID.EMAIL_PROTECTION, "s/mime": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "ipsec end system": x509.ObjectIdentifier("1.3.6.1.5.5.7.3.5"),
    "ipsec tunnel": x509.ObjectIdentifier("1.3.6.1.5.5.7.3.6"),
    "ipsec user": x509.ObjectIdentifier("1.3.6.1.5.5.7.3.7"),
    "timestamping": ExtendedKeyUsageOID.TIME_STAMPING, "ocsp signing": ExtendedKeyUsageOID.OCSP_SIGNING,
    "microsoft sgc": x509.ObjectIdentifier("1.3.6.1.4.1.311.10.3.3"),
    "netscape sgc": x509.ObjectIdentifier("2.16.840.1.113730.4.1"),
}
ALL_USAGES = sorted({*KEY_USAGES, *EXT_KEY_USAGES})

_CLIENT_USAGES = ({"digital signature", "key encipherment", "client auth"}, {"digital signature", "client auth"})
_SERVING_USAGES = ({"digital signature", "key encipherment", "server auth"}, {"digital signature", "server auth"})
_APISERVER_CLIENT_USAGES = {"digital signature", "key encipherment", "client auth"}


class CSRError(ValueError):
    """A request a signer or the API cannot accept; the message says why."""


def _d(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def _l(x: Any) -> list:
    return x if isinstance(x, list) else []


# -- parsing -------------------------------------------------------------------------------------------------------


def request_pem(obj: dict) -> bytes:
    """spec.request as PEM bytes (JSON carries []byte fields base64-encoded)."""
    raw = _d(obj.get("spec")).get("request")
    if not isinstance(raw, str) or not raw:
        raise CSRError("PEM block type must be CERTIFICATE REQUEST")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise CSRError("spec.request must be base64-encoded PEM") from None


def parse_request(pem: bytes) -> x509.CertificateSigningRequest:
    """The PKCS#10 request of a PEM CERTIFICATE REQUEST block, its signature checked."""
    start = pem.find(b"-----BEGIN ")
    if start < 0 or not pem[start:].startswith(b"-----BEGIN CERTIFICATE REQUEST-----"):
        raise CSRError("PEM block type must be CERTIFICATE REQUEST")
    try:
        csr = x509.load_pem_x509_csr(pem[start:])
    except ValueError as e:
        raise CSRError(f"x509: malformed certificate request: {e}") from None
    try:
        ok = csr.is_signature_valid
    except Exception:  # noqa: BLE001 - unsupported algorithms are as bad as wrong signatures
        ok = False
    if not ok:
        raise CSRError("x509: ECDSA verification failure" if not isinstance(csr.public_key(), rsa.RSAPublicKey)
                       else "crypto/rsa: verification error")
    return csr


def parse_csr_object(obj: dict) -> x509.CertificateSigningRequest:
    return parse_request(request_pem(obj))


def certificate_pem(obj: dict) -> bytes:
    raw = _d(obj.get("status")).get("certificate")
    if not isinstance(raw, str) or not raw:
        return b""
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return b"\0"  # undecodable: never a valid certificate


def _check_certificate(pem: bytes) -> str | None:
    """Why status.certificate is unacceptable, or None."""
    if not pem:
        return None
    blocks = 0
    rest = pem
    while True:
        start = rest.find(b"-----BEGIN ")
        if start < 0:
            break
        line_end = rest.find(b"\n", start)
        header = rest[start:line_end if line_end >= 0 else len(rest)].strip()
        label = header[len(b"-----BEGIN "):].rstrip(b"-")
        end_marker = b"-----END " + label + b"-----"
        end = rest.find(end_marker, start)
        if end < 0:
            break
        block = rest[start:end + len(end_marker)]
        if label != b"CERTIFICATE":
            return f'only CERTIFICATE PEM blocks are allowed, found "{label.decode(errors="replace")}"'
        body = block.split(b"\n", 1)[1] if b"\n" in block else b""
        if b":" in body:  # base64 has no colons: this is a "Name: value" header line
            return "no PEM block headers are permitted"
        try:
            x509.load_pem_x509_certificate(block)
        except ValueError as e:
            return f"x509: malformed certificate: {e}"
        blocks += 1
        rest = rest[end + len(end_marker):]
    if blocks == 0:
        return "must contain at least one CERTIFICATE PEM block"
    return None


# -- the registry's rules ------------------------------------------------------------------------------------------


def prepare_create(obj: Any, user: str, groups: tuple[str, ...] | list[str], uid: str = "") -> None:
    """Who asked, from the request's authentication (never from the body); no status on create."""
    if not isinstance(obj, dict):
        return
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        spec = obj["spec"] = {}
    spec["username"] = user
    spec["groups"] = [g for g in groups]
    if uid:
        spec["uid"] = uid
    else:
        spec.pop("uid", None)
    spec.pop("extra", None)
    obj.pop("status", None)


def _conditions(obj: dict, type_: str | None = None) -> list[dict]:
    out = [c for c in _l(_d(obj.get("status")).get("conditions")) if isinstance(c, dict)]
    return out if type_ is None else [c for c in out if c.get("type") == type_]


def _preserve(conds: list[dict], old: list[dict], type_: str) -> bool:
    """Put the old conditions of a type back in their places in ``conds``; False if their number differs."""
    old_of_type = [c for c in old if c.get("type") == type_]
    places = [i for i, c in enumerate(conds) if c.get("type") == type_]
    if len(places) != len(old_of_type):
        return False
    for i, c in zip(places, old_of_type, strict=True):
        conds[i] = c
    return True


def prepare_update(new: dict, cur: dict, subresource: str) -> None:
    """What each kind of write may change, applied in place to ``new`` (cur is the stored object)."""
    new["spec"] = cur.get("spec")
    if subresource == "":
        if "status" in cur:
            new["status"] = cur["status"]
        else:
            new.pop("status", None)
        return
    status = new.get("status")
    if not isinstance(status, dict):
        status = new["status"] = {}
    if subresource == "status":
        # Approval is /approval's business: the Approved/Denied conditions stay exactly as they were,
        # where the new list has them; a write that adds or removes one keeps the old conditions, as
        # upstream's status strategy does.
        conds = _conditions(new)
        if not (_preserve(conds, _conditions(cur), APPROVED) and _preserve(conds, _conditions(cur), DENIED)):
            conds = _conditions(cur)
        if conds:
            status["conditions"] = conds
        else:
            status.pop("conditions", None)
    elif subresource == "approval":
        old_cert = _d(cur.get("status")).get("certificate")
        if old_cert:
            status["certificate"] = old_cert
        else:
            status.pop("certificate", None)
    _fill_condition_times(new, cur)
    if not status:
        new.pop("status", None)


def _fill_condition_times(new: dict, cur: dict | None) -> None:
    now = format_time()
    old = {c.get("type"): c for c in _conditions(cur)} if cur else {}
    for c in _conditions(new):
        if not c.get("lastUpdateTime"):
            c["lastUpdateTime"] = now
        if not c.get("lastTransitionTime"):
            prev = old.get(c.get("type"))
            if prev and prev.get("status") == c.get("status") and prev.get("lastTransitionTime"):
                c["lastTransitionTime"] = prev["lastTransitionTime"]
            else:
                c["lastTransitionTime"] = now


def _validate_signer_name(name: Any, path: str) -> list[FieldError]:
    from kybernetes.api.validation import is_dns1123_label
    from kybernetes.api.selectors import is_dns1123_subdomain

    if not name:
        return [required(path)]
    if not isinstance(name, str):
        return [invalid(path, name, "must be a string")]
    segs = name.split("/")
    if len(segs) != 2:
        return [invalid(path, name, "must be a fully qualified domain and path of the form 'example.com/signer-name'")]
    domain, rest = segs
    errs: list[FieldError] = []
    if len(domain) > 253:
        errs.append(too_long(path, 253))
    labels = domain.split(".")
    for lbl in labels:
        msgs = is_dns1123_label(lbl)
        if msgs:
            errs.append(invalid(path, domain, f'validating label "{lbl}": {msgs[0]}'))
            break
    if len(labels) < 2:
        errs.append(invalid(path, domain, "should be a domain with at least two segments separated by dots"))
    for part in rest.split("."):
        msgs = is_dns1123_subdomain(part)
        if msgs:
            errs.append(invalid(path, rest, f'validating component "{part}": {msgs[0]}'))
            break
    return errs


def validate(obj: dict, old: dict | None) -> list[FieldError]:
    """Semantic errors of a CertificateSigningRequest create (old None) or update."""
    errs: list[FieldError] = []
    spec = _d(obj.get("spec"))
    old_spec = _d(old.get("spec")) if old else {}
    try:
        parse_csr_object(obj)
    except CSRError as e:
        errs.append(invalid("spec.request", spec.get("request"), str(e)))
    usages = _l(spec.get("usages"))
    if not usages:
        errs.append(required("spec.usages"))
    # What an older object already holds is tolerated on its updates (spec is immutable anyway).
    old_usages = _l(old_spec.get("usages"))
    tolerate_unknown = old is not None and any(u not in ALL_USAGES for u in old_usages)
    tolerate_dups = old is not None and len(set(map(str, old_usages))) < len(old_usages)
    seen: set[Any] = set()
    for i, u in enumerate(usages):
        if u not in ALL_USAGES and not tolerate_unknown:
            errs.append(not_supported(f"spec.usages[{i}]", u, ALL_USAGES))
        if u in seen and not tolerate_dups:
            errs.append(duplicate(f"spec.usages[{i}]", u))
        seen.add(u)
    signer = spec.get("signerName")
    if signer == LEGACY_UNKNOWN and old_spec.get("signerName") != LEGACY_UNKNOWN:
        errs.append(invalid("spec.signerName", signer, "the legacy signerName is not allowed via this API version"))
    elif signer != LEGACY_UNKNOWN:
        errs.extend(_validate_signer_name(signer, "spec.signerName"))
    exp = spec.get("expirationSeconds")
    if exp is not None and isinstance(exp, int) and exp < MIN_EXPIRATION:
        errs.append(invalid("spec.expirationSeconds", exp,
                            f"may not specify a duration less than {MIN_EXPIRATION} seconds (10 minutes)"))
    errs.extend(_validate_conditions(obj, old))
    cert = certificate_pem(obj)
    old_cert = certificate_pem(old) if old else b""
    if not (old is not None and cert == old_cert):
        why = _check_certificate(cert)
        if why:
            errs.append(invalid("status.certificate", "<certificate data>", why))
    if old is not None:
        for t in (APPROVED, DENIED, FAILED):
            if len(_conditions(obj, t)) < len(_conditions(old, t)):
                errs.append(forbidden("status.conditions", f'updates may not remove a condition of type "{t}"'))
        if cert != old_cert and old_cert:
            errs.append(forbidden("status.certificate", "updates may not modify existing certificate content"))
    return errs


def _validate_conditions(obj: dict, old: dict | None) -> list[FieldError]:
    errs: list[FieldError] = []
    old_types = [c.get("type") for c in _conditions(old)] if old else []
    both_before = APPROVED in old_types and DENIED in old_types
    dup_before = len(old_types) != len(set(old_types))
    seen: set[str] = set()
    approved = denied = False
    for i, c in enumerate(_conditions(obj)):
        p = f"status.conditions[{i}]"
        t = c.get("type") or ""
        if not t and "" not in old_types:
            errs.append(required(p + ".type"))
        allowed = ["True"] if t in (APPROVED, DENIED, FAILED) else ["False", "True", "Unknown"]
        st = c.get("status")
        if not st:
            errs.append(required(p + ".status"))
        elif st not in allowed:
            errs.append(not_supported(p + ".status", st, allowed))
        if not both_before:
            if t == APPROVED:
                approved = True
                if denied:
                    errs.append(invalid(p + ".type", t, "Approved and Denied conditions are mutually exclusive"))
            elif t == DENIED:
                denied = True
                if approved:
                    errs.append(invalid(p + ".type", t, "Approved and Denied conditions are mutually exclusive"))
        if t in seen and not dup_before:
            errs.append(duplicate(p + ".type", t))
        seen.add(t)
    return errs


# -- state ---------------------------------------------------------------------------------------------------------


def is_approved(obj: dict) -> bool:
    return any(c.get("status") == "True" for c in _conditions(obj, APPROVED))


def is_denied(obj: dict) -> bool:
    return any(c.get("status") == "True" for c in _conditions(obj, DENIED))


def is_failed(obj: dict) -> bool:
    return any(c.get("status") == "True" for c in _conditions(obj, FAILED))


def has_certificate(obj: dict) -> bool:
    return bool(_d(obj.get("status")).get("certificate"))


def condition(type_: str, reason: str, message: str) -> dict:
    now = format_time()
    return {"type": type_, "status": "True", "reason": reason, "message": message,
            "lastUpdateTime": now, "lastTransitionTime": now}


# -- subject rules of the built-in signers ---------------------------------------------------------------------------


def _orgs(csr: x509.CertificateSigningRequest) -> list[str]:
    return [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]


def common_name(csr: x509.CertificateSigningRequest) -> str:
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else ""


def sans(csr: x509.CertificateSigningRequest) -> tuple[list[str], list[str], list[str], list[str]]:
    """(DNS names, IP addresses, emails, URIs) the request asks for."""
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], [], [], []
    return (list(ext.get_values_for_type(x509.DNSName)),
            [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)],
            list(ext.get_values_for_type(x509.RFC822Name)),
            list(ext.get_values_for_type(x509.UniformResourceIdentifier)))


def check_kubelet_client(csr: x509.CertificateSigningRequest, usages: list[str]) -> None:
    """A node's client certificate: O=system:nodes, CN=system:node:<name>, no SANs, client usages."""
    if _orgs(csr) != [NODES_GROUP]:
        raise CSRError("subject organization is not system:nodes")
    dns, ips, emails, uris = sans(csr)
    for what, values in (("DNS", dns), ("Email", emails), ("IP", ips), ("URI", uris)):
        if values:
            raise CSRError(f"{what} subjectAltNames are not allowed")
    if not common_name(csr).startswith(NODE_PREFIX):
        raise CSRError("subject common name does not begin with system:node:")
    if set(usages) not in _CLIENT_USAGES or len(set(usages)) != len(usages):
        raise CSRError(f"usages did not match {sorted(_CLIENT_USAGES[0])}")


def check_kubelet_serving(csr: x509.CertificateSigningRequest, usages: list[str]) -> None:
    """A kubelet's serving certificate: O=system:nodes, CN=system:node:<name>, DNS/IP SANs, server usages."""
    if _orgs(csr) != [NODES_GROUP]:
        raise CSRError("subject organization is not system:nodes")
    dns, ips, emails, uris = sans(csr)
    if not dns and not ips:
        raise CSRError("DNS or IP subjectAltName is required")
    if emails:
        raise CSRError("Email subjectAltNames are not allowed")
    if uris:
        raise CSRError("URI subjectAltNames are not allowed")
    if set(usages) not in _SERVING_USAGES or len(set(usages)) != len(usages):
        raise CSRError(f"usages did not match {sorted(_SERVING_USAGES[0])}")
    if not common_name(csr).startswith(NODE_PREFIX):
        raise CSRError("subject common name does not begin with system:node:")


def check_kube_apiserver_client(csr: x509.CertificateSigningRequest, usages: list[str]) -> None:
    """Any client certificate for the API server: client usages only."""
    for u in usages:
        if u not in _APISERVER_CLIENT_USAGES:
            raise CSRError(f"invalid usage for client certificate: {u}")


SIGNER_CHECKS = {
    KUBE_APISERVER_CLIENT: check_kube_apiserver_client,
    KUBELET_CLIENT: check_kubelet_client,
    KUBELET_SERVING: check_kubelet_serving,
}


# -- issuing -------------------------------------------------------------------------------------------------------


def issue(csr: x509.CertificateSigningRequest, usages: list[str], ca_cert: x509.Certificate, ca_key: Any, *,
          ttl: float, now: datetime.datetime | None = None) -> bytes:
    """A certificate (PEM) for the request's subject, SANs and public key, signed by the CA.

    Only the request's subject alternative names are carried over (its other
    extensions are dropped); key usages come from ``usages``; validity starts
    a little in the past (clock skew) and never outlasts the CA.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    # Backdated for clock skew: 5 minutes, or about 1% of the life of a short (< 8 h) certificate.
    backdate = datetime.timedelta(seconds=300 if ttl >= 8 * 3600 else ttl / 100)
    not_before = now - backdate
    not_after = min(now + datetime.timedelta(seconds=ttl), ca_cert.not_valid_after_utc)
    flags = {v: False for v in set(KEY_USAGES.values())}
    ekus: list[x509.ObjectIdentifier] = []
    for u in usages:
        if u in KEY_USAGES:
            flags[KEY_USAGES[u]] = True
        elif u in EXT_KEY_USAGES:
            if EXT_KEY_USAGES[u] not in ekus:
                ekus.append(EXT_KEY_USAGES[u])
        else:
            raise CSRError(f'unrecognized usage values: ["{u}"]')
    if not flags["key_agreement"]:
        flags["encipher_only"] = flags["decipher_only"] = False
    b = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(ca_cert.subject)
         .public_key(csr.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(not_before).not_valid_after(not_after)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if any(flags.values()):
        b = b.add_extension(x509.KeyUsage(**flags), critical=True)
    if ekus:
        b = b.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        b = b.add_extension(san, critical=False)
    except x509.ExtensionNotFound:
        pass
    try:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    except (AttributeError, ValueError):
        pass
    return b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


# -- requesting (the client side: kubelets) ------------------------------------------------------------------------


def make_request(key: Any, cn: str, orgs: list[str], *, dns: list[str] = (), ips: list[str] = ()) -> bytes:
    """A PEM CERTIFICATE REQUEST for ``cn``/``orgs`` (and SANs) signed with ``key``."""
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def csr_object(request: bytes, signer: str, usages: list[str], *, generate_name: str = "csr-",
               expiration_seconds: int | None = None) -> dict:
    spec: dict[str, Any] = {"request": base64.b64encode(request).decode(), "signerName": signer,
                            "usages": list(usages)}
    if expiration_seconds is not None:
        spec["expirationSeconds"] = expiration_seconds
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"generateName": generate_name}, "spec": spec}
