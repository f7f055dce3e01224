"""Service account tokens: issuing them (TokenRequest), checking them (authentication, TokenReview).

A token is a JWT (RFC 7519) in compact form, signed with the cluster's
service-account key (ES256 for the EC key kyb generates, RS256 for an RSA
key), carrying the claims upstream's bound tokens carry: iss, sub
("system:serviceaccount:NS:NAME"), aud, exp, iat, nbf, jti and the private
"kubernetes.io" claim naming the namespace, the service account and the
object the token is bound to (a Pod, a Secret or a Node) with their uids.

A token stays valid only while the service account, and the object it is
bound to, exist with the uids it names: deleting a pod revokes the tokens its
kubelet was handed. The small JWS encoder/verifier lives here (the format is
a few lines over ``cryptography``'s signatures).

Long-lived tokens kept in ``kubernetes.io/service-account-token`` Secrets
(filled in by the token controller) are upstream's legacy tokens: issuer
"kubernetes/serviceaccount", no audience and no expiry, flat
"kubernetes.io/serviceaccount/..." claims naming the account and the Secret.
One is valid only while that Secret holds exactly it and the account exists
with the uid it names.

Also here: the authentication.k8s.io group's TokenReview, and the issuer's
OpenID discovery documents (/.well-known/openid-configuration, /openid/v1/jwks).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from ..api import errors
from ..api.kinds import Registry
from ..api.times import format_time, parse_time
from ..storage.base import Store
from .watchcache import WatchCache

ISSUER = "https://kubernetes.default.svc.cluster.local"
GROUP = "authentication.k8s.io"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
DEFAULT_EXPIRATION = 3600
MIN_EXPIRATION = 600
MAX_EXPIRATION = 1 << 32
# A bound token whose pod is being deleted keeps working this long after the deletion was asked for.
DELETION_GRACE = 60.0
# Tolerated clock skew for nbf (exp is strict: an expired token is refused).
NBF_LEEWAY = 60.0
SA_PREFIX = "system:serviceaccount:"
LEGACY_ISSUER = "kubernetes/serviceaccount"
_LEGACY = "kubernetes.io/serviceaccount/"


class InvalidToken(Exception):
    """The token is not one of ours, or no longer valid."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --------------------------------------------------------------------- keys and JWS


def generate_key_pem() -> bytes:
    """A new EC P-256 private key (PKCS#8 PEM) for signing service account tokens."""
    k = ec.generate_private_key(ec.SECP256R1())
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())


class Signer:
    """Signs and verifies compact JWS with one private key (EC P-256 -> ES256, RSA -> RS256)."""

    def __init__(self, private_key_pem: bytes | None = None):
        key = serialization.load_pem_private_key(private_key_pem or generate_key_pem(), None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            if not isinstance(key.curve, ec.SECP256R1):
                raise ValueError("service account key: only P-256 EC keys are supported")
            self.alg = "ES256"
        elif isinstance(key, rsa.RSAPrivateKey):
            self.alg = "RS256"
        else:
            raise ValueError("service account key: must be an EC P-256 or RSA private key")
        self.key = key
        self.public = key.public_key()
        der = self.public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        # As upstream derives it: the key id is a digest of the public key, so it survives restarts.
        self.kid = b64url(hashlib.sha256(der).digest())

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        return cls(path.read_bytes())

    def sign(self, claims: dict[str, Any]) -> str:
        header = b64url(orjson.dumps({"alg": self.alg, "kid": self.kid}))
        payload = b64url(orjson.dumps(claims))
        signing_input = f"{header}.{payload}".encode()
        if self.alg == "ES256":
            r, s = decode_dss_signature(self.key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        else:
            sig = self.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return f"{header}.{payload}.{b64url(sig)}"

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a token this key signed; InvalidToken otherwise (time claims are not checked)."""
        parts = token.split(".")
        if len(parts) != 3:
            raise InvalidToken("not a compact JWS")
        try:
            header = orjson.loads(b64url_decode(parts[0]))
            sig = b64url_decode(parts[2])
        except (ValueError, orjson.JSONDecodeError):
            raise InvalidToken("malformed token") from None
        if not isinstance(header, dict) or header.get("alg") != self.alg:
            raise InvalidToken("unexpected signing algorithm")
        signing_input = f"{parts[0]}.{parts[1]}".encode()
        try:
            if self.alg == "ES256":
                if len(sig) != 64:
                    raise InvalidToken("bad signature")
                der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
                self.public.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
            else:
                self.public.verify(sig, signing_input, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise InvalidToken("bad signature") from None
        try:
            claims = orjson.loads(b64url_decode(parts[1]))
        except (ValueError, orjson.JSONDecodeError):
            raise InvalidToken("malformed claims") from None
        if not isinstance(claims, dict):
            raise InvalidToken("malformed claims")
        return claims

    def jwk(self) -> dict[str, str]:
        if self.alg == "ES256":
            nums = self.public.public_numbers()
            return {"use": "sig", "kty": "EC", "kid": self.kid, "crv": "P-256", "alg": "ES256",
                    "x": b64url(nums.x.to_bytes(32, "big")), "y": b64url(nums.y.to_bytes(32, "big"))}
        nums = self.public.public_numbers()
        n = nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big")
        e = nums.e.to_bytes((nums.e.bit_length() + 7) // 8, "big")
        return {"use": "sig", "kty": "RSA", "kid": self.kid, "alg": "RS256", "n": b64url(n), "e": b64url(e)}


def _audiences(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [a for a in value if isinstance(a, str)]
    return []


def legacy_claims(ns: str, sa_name: str, sa_uid: str, secret_name: str) -> dict[str, Any]:
    """The claims of a long-lived token kept in Secret NS/secret_name (no aud, no exp, as upstream)."""
    return {"iss": LEGACY_ISSUER, f"{_LEGACY}namespace": ns, f"{_LEGACY}secret.name": secret_name,
            f"{_LEGACY}service-account.name": sa_name, f"{_LEGACY}service-account.uid": sa_uid,
            "sub": f"{SA_PREFIX}{ns}:{sa_name}"}


def _identity(claims: dict[str, Any]) -> tuple[str, str, str]:
    """(namespace, service account name, its uid) a validated token names, bound or legacy."""
    if claims.get("iss") == LEGACY_ISSUER:
        return (claims.get(f"{_LEGACY}namespace") or "", claims.get(f"{_LEGACY}service-account.name") or "",
                claims.get(f"{_LEGACY}service-account.uid") or "")
    private = claims.get("kubernetes.io") or {}
    sa = private.get("serviceaccount") or {}
    return private.get("namespace", ""), sa.get("name", ""), sa.get("uid", "")


# --------------------------------------------------------------------- the service


class ServiceAccountTokens:
    """TokenRequest, bearer token authentication and TokenReview over one signing key."""

    def __init__(self, store: Store, cache: WatchCache, registry: Registry, *, issuer: str = ISSUER,
                 audiences: list[str] | None = None, key_pem: bytes | None = None):
        self.store = store
        self.cache = cache
        self.registry = registry
        self.issuer = issuer
        # What tokens must be meant for to open this API server (upstream's --api-audiences,
        # which defaults to the issuer).
        self.audiences = list(audiences or [issuer])
        # Without a key from the data dir (kyb server passes one), tokens live as long as the process.
        self.signer = Signer(key_pem)

    def _kind(self, plural: str):
        return self.registry.by_resource("", "v1", plural)

    async def _stored(self, plural: str, ns: str | None, name: str) -> dict | None:
        kv = await self.store.get(self._kind(plural).key(ns, name))
        return orjson.loads(kv.value) if kv is not None else None

    async def _cached(self, plural: str, ns: str | None, name: str) -> dict | None:
        k = self._kind(plural)
        key = k.key(ns, name)
        e = self.cache.cache(k.storage_prefix).objects.get(key)
        if e is None:
            # Maybe created a moment ago: let the cache catch up once before saying no.
            await self.cache.fresh()
            e = self.cache.cache(k.storage_prefix).objects.get(key)
        return orjson.loads(e.raw) if e is not None else None

    # ------------------------------------------------------------ TokenRequest

    async def token_request(self, ns: str, name: str, body: Any) -> tuple[int, bytes]:
        """POST serviceaccounts/NAME/token: a signed token for the service account."""
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request was not a JSON object")
        av, kind = body.get("apiVersion"), body.get("kind")
        if (av and av != API_VERSION) or (kind and kind != "TokenRequest"):
            raise errors.bad_request(f"the body of the request must be an {API_VERSION} TokenRequest "
                                     f"(got {av or '?'} {kind or '?'})")
        meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        if meta.get("name") and meta["name"] != name:
            raise errors.bad_request("the name of the TokenRequest does not match the name of the service account")
        spec = body.get("spec") if isinstance(body.get("spec"), dict) else {}
        audiences = _audiences(spec.get("audiences")) or list(self.audiences)
        exp_s = spec.get("expirationSeconds")
        if exp_s is None:
            exp_s = DEFAULT_EXPIRATION
        errs = []
        if not isinstance(exp_s, int) or isinstance(exp_s, bool):
            errs.append(errors.invalid("spec.expirationSeconds", exp_s, "must be an integer"))
        elif exp_s < MIN_EXPIRATION:
            errs.append(errors.invalid("spec.expirationSeconds", exp_s,
                                       "may not specify a duration less than 10 minutes"))
        elif exp_s > MAX_EXPIRATION:
            errs.append(errors.invalid("spec.expirationSeconds", exp_s,
                                       "may not specify a duration larger than 2^32 seconds"))
        if errs:
            raise errors.invalid_object("TokenRequest", GROUP, name, errs)

        sa = await self._stored("serviceaccounts", ns, name)
        if sa is None:
            raise errors.not_found("serviceaccounts", "", name)
        sa_uid = sa["metadata"].get("uid", "")
        private: dict[str, Any] = {"namespace": ns, "serviceaccount": {"name": name, "uid": sa_uid}}
        ref = spec.get("boundObjectRef")
        if ref:
            if not isinstance(ref, dict):
                raise errors.bad_request("spec.boundObjectRef must be an object")
            await self._bind(ns, name, ref, private)
        now = int(time.time())
        exp = now + exp_s
        claims = {"aud": audiences, "exp": exp, "iat": now, "iss": self.issuer, "jti": str(uuid.uuid4()),
                  "kubernetes.io": private, "nbf": now, "sub": f"{SA_PREFIX}{ns}:{name}"}
        token = self.signer.sign(claims)
        out_spec: dict[str, Any] = {"audiences": audiences, "expirationSeconds": exp_s}
        if ref:
            out_spec["boundObjectRef"] = ref
        out = {"kind": "TokenRequest", "apiVersion": API_VERSION,
               "metadata": {"name": name, "namespace": ns, "creationTimestamp": None},
               "spec": out_spec,
               "status": {"token": token, "expirationTimestamp": format_time(exp)}}
        return 201, orjson.dumps(out)

    async def _bind(self, ns: str, sa_name: str, ref: dict, private: dict[str, Any]) -> None:
        kind = ref.get("kind") or ""
        av = ref.get("apiVersion") or "v1"
        name = ref.get("name") or ""
        uid = ref.get("uid") or ""
        if av != "v1" or kind not in ("Pod", "Secret", "Node"):
            raise errors.bad_request(f'cannot bind a token to an object of kind "{kind}" ({av}): only v1 '
                                     f'Pod, Secret and Node are supported')
        if not name:
            raise errors.invalid_object("TokenRequest", GROUP, sa_name, [errors.required("spec.boundObjectRef.name")])
        plural = kind.lower() + "s"
        obj = await self._stored(plural, None if kind == "Node" else ns, name)
        if obj is None:
            raise errors.not_found(plural, "", name)
        obj_uid = obj["metadata"].get("uid", "")
        if uid and uid != obj_uid:
            raise errors.conflict(plural, "", name, f"the UID in the bound object reference ({uid}) does not "
                                  f"match the UID in record ({obj_uid}); the object might have been deleted "
                                  f"and then recreated")
        private[kind.lower()] = {"name": name, "uid": obj_uid}
        if kind == "Pod":
            spec = obj.get("spec") or {}
            if (spec.get("serviceAccountName") or "default") != sa_name:
                raise errors.bad_request(f'cannot bind a token for serviceaccount "{sa_name}" to a pod that runs '
                                         f'as serviceaccount "{spec.get("serviceAccountName")}"')
            node_name = spec.get("nodeName")
            if node_name:
                node = await self._stored("nodes", None, node_name)
                if node is not None:
                    private["node"] = {"name": node_name, "uid": node["metadata"].get("uid", "")}

    # ------------------------------------------------------------ authentication

    async def validate(self, token: str) -> dict[str, Any]:
        """The claims of a currently valid token of ours; InvalidToken otherwise."""
        claims = self.signer.verify(token)
        if claims.get("iss") == LEGACY_ISSUER:
            await self._validate_legacy(token, claims)
            return claims
        if claims.get("iss") != self.issuer:
            raise InvalidToken("token issued by someone else")
        now = time.time()
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, int | float) or now >= exp:
            raise InvalidToken("token has expired")
        if isinstance(nbf, int | float) and now + NBF_LEEWAY < nbf:
            raise InvalidToken("token not valid yet")
        if not set(_audiences(claims.get("aud"))) & set(self.audiences):
            raise InvalidToken("token audiences are not this server's")
        private = claims.get("kubernetes.io")
        if not isinstance(private, dict):
            raise InvalidToken("token lacks the kubernetes.io claim")
        ns = private.get("namespace") or ""
        sa_ref = private.get("serviceaccount") or {}
        sa_name = sa_ref.get("name") or ""
        if not ns or not sa_name or claims.get("sub") != f"{SA_PREFIX}{ns}:{sa_name}":
            raise InvalidToken("token names no service account")
        sa = await self._cached("serviceaccounts", ns, sa_name)
        if sa is None or sa["metadata"].get("uid") != sa_ref.get("uid"):
            raise InvalidToken("service account token has been invalidated")
        if sa["metadata"].get("deletionTimestamp"):
            raise InvalidToken("service account token has been invalidated")
        for kind in ("pod", "secret", "node"):
            ref = private.get(kind)
            if not isinstance(ref, dict):
                continue
            obj = await self._cached(kind + "s", None if kind == "node" else ns, ref.get("name") or "")
            if obj is None or obj["metadata"].get("uid") != ref.get("uid"):
                raise InvalidToken("service account token has been invalidated")
            deleted = parse_time(obj["metadata"].get("deletionTimestamp"))
            if deleted is not None and deleted < now - DELETION_GRACE:
                raise InvalidToken("service account token has been invalidated")
        return claims

    async def _validate_legacy(self, token: str, claims: dict[str, Any]) -> None:
        ns, sa_name, sa_uid = _identity(claims)
        secret_name = claims.get(f"{_LEGACY}secret.name") or ""
        if not all(isinstance(v, str) and v for v in (ns, sa_name, sa_uid, secret_name)) \
                or claims.get("sub") != f"{SA_PREFIX}{ns}:{sa_name}":
            raise InvalidToken("token names no service account")
        secret = await self._cached("secrets", ns, secret_name)
        if secret is None or secret["metadata"].get("deletionTimestamp"):
            raise InvalidToken(f"secret {ns}/{secret_name} has been deleted")
        try:
            stored = base64.b64decode((secret.get("data") or {}).get("token") or "")
        except ValueError:
            stored = b""
        # Deleting the Secret, or putting another token in it, revokes this one.
        if not hmac.compare_digest(stored, token.encode()):
            raise InvalidToken(f"token does not match the one in secret {ns}/{secret_name}")
        sa = await self._cached("serviceaccounts", ns, sa_name)
        if sa is None or sa["metadata"].get("uid") != sa_uid or sa["metadata"].get("deletionTimestamp"):
            raise InvalidToken("service account token has been invalidated")

    async def authenticate(self, token: str) -> tuple[str, tuple[str, ...]] | None:
        """(user, groups) for a valid service account token, else None."""
        try:
            claims = await self.validate(token)
        except InvalidToken:
            return None
        return user_of(claims)

    # ------------------------------------------------------------ TokenReview

    async def token_review(self, body: Any) -> tuple[int, bytes]:
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request was not a JSON object")
        spec = body.get("spec") if isinstance(body.get("spec"), dict) else {}
        token = spec.get("token")
        if not isinstance(token, str) or not token:
            raise errors.invalid_object("TokenReview", GROUP, "", [errors.required("spec.token")])
        wanted = _audiences(spec.get("audiences"))
        status: dict[str, Any] = {"user": {}}
        try:
            claims = await self.validate(token)
            # A legacy token has no audience: it is meant for this API server alone (as upstream).
            token_auds = _audiences(claims.get("aud")) or list(self.audiences)
            if wanted and not set(wanted) & set(token_auds):
                raise InvalidToken("token audiences do not match the requested audiences")
            user, groups = user_of(claims)
            private = claims.get("kubernetes.io") or {}
            extra: dict[str, list[str]] = {}
            if claims.get("jti"):
                extra["authentication.kubernetes.io/credential-id"] = [f"JTI={claims['jti']}"]
            if isinstance(private.get("pod"), dict):
                extra["authentication.kubernetes.io/pod-name"] = [private["pod"].get("name", "")]
                extra["authentication.kubernetes.io/pod-uid"] = [private["pod"].get("uid", "")]
            if isinstance(private.get("node"), dict):
                extra["authentication.kubernetes.io/node-name"] = [private["node"].get("name", "")]
                extra["authentication.kubernetes.io/node-uid"] = [private["node"].get("uid", "")]
            u: dict[str, Any] = {"username": user, "uid": _identity(claims)[2],
                                 "groups": list(groups)}
            if extra:
                u["extra"] = extra
            status = {"authenticated": True, "user": u,
                      "audiences": [a for a in token_auds if not wanted or a in wanted]}
        except InvalidToken as e:
            status = {"user": {}, "error": f"[invalid bearer token, {e}]"}
        meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        out = {"kind": "TokenReview", "apiVersion": API_VERSION,
               "metadata": {k: v for k, v in meta.items() if k in ("name", "generateName")}
               | {"creationTimestamp": None},
               "spec": spec, "status": status}
        return 201, orjson.dumps(out)

    # ------------------------------------------------------------ discovery

    def openid_configuration(self) -> dict[str, Any]:
        return {"issuer": self.issuer, "jwks_uri": self.issuer.rstrip("/") + "/openid/v1/jwks",
                "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": [self.signer.alg]}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.signer.jwk()]}


def user_of(claims: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    ns, name, _uid = _identity(claims)
    return (f"{SA_PREFIX}{ns}:{name}",
            ("system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"))


def group_entry() -> dict[str, Any]:
    gv = {"groupVersion": API_VERSION, "version": VERSION}
    return {"name": GROUP, "versions": [gv], "preferredVersion": gv}


def resource_list() -> dict[str, Any]:
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": API_VERSION,
            "resources": [{"name": "selfsubjectreviews", "singularName": "selfsubjectreview", "namespaced": False,
                           "kind": "SelfSubjectReview", "verbs": ["create"]},
                          {"name": "tokenreviews", "singularName": "tokenreview", "namespaced": False,
                           "kind": "TokenReview", "verbs": ["create"]}]}


def self_subject_review(user: str, groups: tuple[str, ...]) -> tuple[int, bytes]:
    """SelfSubjectReview (kubectl auth whoami): who the request was authenticated as."""
    info: dict[str, Any] = {"username": user, "groups": list(groups)}
    return 201, orjson.dumps({"kind": "SelfSubjectReview", "apiVersion": API_VERSION,
                              "metadata": {"creationTimestamp": None}, "status": {"userInfo": info}})

