"""The built-in ingress controller of a two-node cluster, through kubectl, with the docs' Ingresses.

`kyb server` (node-a) and `kyb agent` (node-b) each run in a network namespace on a LAN the
test made, and each node's ingress answers on its own address, ports 80 and 443 (the
defaults). The backends are busybox pods whose `nc` runs a shell script from a ConfigMap for
each connection: it answers any path with its Service's name, its pod's name and the request
it got (so the test sees what the ingress forwarded), and speaks WebSocket echo when asked
to upgrade. The Ingresses are the Kubernetes documentation's examples as they are: simple
fanout, name-based virtual hosting, TLS, a default backend; none names a class, so the
default IngressClass the controller made serves them.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
import ssl

import pytest

from kybernetes.images import build

from .conftest import Server, needs_kubectl, wait_for
from .nodenet import SERVER_NODE, NodeLan, capable, two_nodes

_OK, _WHY = capable()
pytestmark = [needs_kubectl, pytest.mark.skipif(not _OK, reason=_WHY)]

LAN: NodeLan  # the test's LAN; requests come from its host_ip

# One connection of the backend: an HTTP request in, an answer naming $SERVICE and the pod out;
# a WebSocket upgrade is answered with 101 and then every text frame (< 126 bytes) is echoed.
BACKEND = r"""
read -r method target proto
headers=""; key=""
while read -r line; do
  line=$(printf '%s' "$line" | tr -d '\r')
  [ -z "$line" ] && break
  headers="$headers$line
"
  case "$line" in [Ss]ec-[Ww]eb[Ss]ocket-[Kk]ey:*) key=$(echo "${line#*:}" | tr -d ' ');; esac
done
if [ -z "$key" ]; then
  body="$SERVICE $(hostname) $method $target
$headers"
  printf 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
    "${#body}" "$body"
  exit 0
fi
accept=$(printf '%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11' "$key" | sha1sum | cut -c1-40 | xxd -r -p | base64)
printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
printf 'Sec-WebSocket-Accept: %s\r\n\r\n' "$accept"
while :; do
  set -- $(dd bs=1 count=2 2>/dev/null | od -An -v -tu1)
  [ $# -eq 2 ] || exit 0
  op=$(( $1 & 15 )); len=$(( $2 & 127 ))
  if [ $op -eq 8 ]; then printf '\210\000'; exit 0; fi
  set -- $(dd bs=1 count=4 2>/dev/null | od -An -v -tu1)
  m0=$1; m1=$2; m2=$3; m3=$4
  out=""; i=0
  for b in $(dd bs=1 count=$len 2>/dev/null | od -An -v -tu1); do
    case $(( i % 4 )) in 0) m=$m0;; 1) m=$m1;; 2) m=$m2;; *) m=$m3;; esac
    out="$out\\$(printf %03o $(( b ^ m )))"
    i=$(( i + 1 ))
  done
  printf "\\201\\$(printf %03o $len)$out"
done
"""


def _backend(name: str, replicas: int = 1, port: int = 80) -> list[dict]:
    """A Deployment of the echo backend and its Service `name` (port `port` → 8080), on the server node."""
    labels = {"app": name}
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": {
            "replicas": replicas, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {
                "nodeSelector": {"kubernetes.io/hostname": SERVER_NODE},
                "volumes": [{"name": "script", "configMap": {"name": "echo-backend"}}],
                "containers": [{
                    "name": "echo", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                    "env": [{"name": "SERVICE", "value": name}],
                    "command": ["sh", "-c", "touch /tmp/ready; exec nc -ll -p 8080 -e sh /script/backend.sh"],
                    "ports": [{"containerPort": 8080, "name": "http"}],
                    "volumeMounts": [{"name": "script", "mountPath": "/script"}],
                    "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1,
                                       "failureThreshold": 1}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {
            "selector": labels, "ports": [{"name": "http", "port": port, "targetPort": 8080}]}},
    ]


def _apply(s: Server, *objs: dict) -> None:
    s.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    global LAN
    images = tmp_path_factory.mktemp("images")
    with build.busybox_image("busybox:latest") as img:
        bb = build.write_oci_layout(str(images / "busybox.tar"), img)
    # The ingress takes its upstream ports (80, 443) as it does beside an API server on 6443.
    with two_nodes(tmp_path_factory, [bb], server_args=("--ingress-http-port", "80", "--ingress-https-port",
                                                        "443")) as (lan, server, agent):
        LAN = lan
        server.kubectl("create", "configmap", "echo-backend", "--from-literal", f"backend.sh={BACKEND}")
        _apply(server, *_backend("service1", port=4200), *_backend("service2", port=8080),
               *_backend("test", replicas=2))
        for name in ("service1", "service2", "test"):
            server.kubectl("rollout", "status", f"deployment/{name}", "--timeout=90s")
        yield server, agent


def request(ip: str, host: str, path: str, *, port: int = 80, tls: bool = False,
            headers: str = "") -> tuple[int, dict[str, str], str]:
    """One HTTP/1.1 request to the ingress at ip:port for `host`; (status, headers, body)."""
    raw = socket.create_connection((ip, port), timeout=10)
    sock: socket.socket = raw
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock = ctx.wrap_socket(raw, server_hostname=host)
    with sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{headers}\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if fields.get("transfer-encoding") == "chunked":
        out, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size.split(b";")[0], 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        body = out
    return int(lines[0].split()[1]), fields, body.decode()


def answered_by(ip: str, host: str, path: str, **kw) -> str:
    """The Service whose backend answered (the first word of the echo), or the status code."""
    code, _h, body = request(ip, host, path, **kw)
    return body.split()[0] if code == 200 else str(code)


def _wait_routed(ip: str, host: str, path: str, want: str, **kw) -> None:
    got = []

    def ok() -> bool:
        got.append(answered_by(ip, host, path, **kw))
        return got[-1] == want
    try:
        wait_for(ok, 20)
    except Exception:
        raise AssertionError(f"{host}{path} at {ip}: {got[-3:]}, want {want}") from None


def test_simple_fanout_on_every_node_with_status_and_forwarded_headers(cluster):
    s, agent = cluster
    classes = s.kjson("get", "ingressclass")["items"]
    assert [c["metadata"]["name"] for c in classes] == ["kybernetes"], classes
    assert classes[0]["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"] == "true"
    s.kubectl("apply", "-f", "-", input="""
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: simple-fanout-example
spec:
  rules:
  - host: foo.bar.com
    http:
      paths:
      - path: /foo
        pathType: Prefix
        backend:
          service:
            name: service1
            port:
              number: 4200
      - path: /bar
        pathType: Prefix
        backend:
          service:
            name: service2
            port:
              number: 8080
""")
    try:
        # Both nodes answer, though every backend pod runs on the server's node.
        for ip in (s.ns.node_ip, agent.ns.node_ip):
            _wait_routed(ip, "foo.bar.com", "/foo", "service1")
            assert answered_by(ip, "foo.bar.com", "/bar") == "service2"
            assert answered_by(ip, "foo.bar.com", "/foo/deeper?x=1") == "service1"
            assert answered_by(ip, "FOO.bar.com:80", "/bar/") == "service2"
            # Prefix matches whole path elements; other hosts and paths are the ingress's 404.
            assert answered_by(ip, "foo.bar.com", "/foobar") == "404"
            assert answered_by(ip, "other.com", "/foo") == "404"
        code, _h, body = request(s.ns.node_ip, "foo.bar.com", "/foo/x?y=1", headers="X-Forwarded-For: 192.0.2.7\r\n")
        assert code == 200
        first, *rest = body.split("\n")
        assert first.split()[2:] == ["GET", "/foo/x?y=1"], body
        got = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in rest if ln)}
        assert got["host"] == "foo.bar.com"
        assert got["x-forwarded-for"] == f"192.0.2.7, {LAN.host_ip}", got
        assert got["x-forwarded-host"] == "foo.bar.com" and got["x-forwarded-proto"] == "http", got
        # kubectl get ingress: ADDRESS lists both nodes, as k3s's Traefik behind servicelb does.
        want = sorted([s.ns.node_ip, agent.ns.node_ip])

        def address() -> bool:
            ing = s.kjson("get", "ingress", "simple-fanout-example")
            lb = (ing.get("status") or {}).get("loadBalancer") or {}
            return sorted(i["ip"] for i in lb.get("ingress") or []) == want
        wait_for(address, 30)
        table = s.kubectl("get", "ingress", "simple-fanout-example").stdout
        assert "kybernetes" in table and all(ip in table for ip in want), table
        described = s.kubectl("describe", "ingress", "simple-fanout-example").stdout
        assert "service1:4200" in described and "<error" not in described, described
    finally:
        s.kubectl("delete", "ingress", "simple-fanout-example")
    wait_for(lambda: answered_by(s.ns.node_ip, "foo.bar.com", "/foo") == "404", 20)


def test_name_based_virtual_hosting_and_exact_paths(cluster):
    s, _agent = cluster
    s.kubectl("apply", "-f", "-", input="""
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: name-virtual-host-ingress
spec:
  rules:
  - host: foo.bar.com
    http:
      paths:
      - pathType: Prefix
        path: "/"
        backend:
          service:
            name: service1
            port:
              number: 4200
  - host: "*.foo.com"
    http:
      paths:
      - pathType: Prefix
        path: "/"
        backend:
          service:
            name: service2
            port:
              name: http
      - pathType: Exact
        path: "/exact"
        backend:
          service:
            name: service1
            port:
              number: 4200
""")
    try:
        ip = s.ns.node_ip
        _wait_routed(ip, "foo.bar.com", "/", "service1")
        assert answered_by(ip, "bar.foo.com", "/anything") == "service2"
        assert answered_by(ip, "bar.foo.com", "/exact") == "service1"       # Exact beats Prefix
        assert answered_by(ip, "bar.foo.com", "/exact/") == "service2"      # Exact is exact
        assert answered_by(ip, "foo.com", "/") == "404"                     # * covers one label
        assert answered_by(ip, "a.bar.foo.com", "/") == "404"
    finally:
        s.kubectl("delete", "ingress", "name-virtual-host-ingress")


def _tls_pair(tmp_path, host: str) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(key, hashes.SHA256()))
    crt, k = tmp_path / "tls.crt", tmp_path / "tls.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return str(crt), str(k)


def _served_cert_cn(ip: str, host: str) -> str:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((ip, 443), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def test_tls_by_sni_from_a_secret_and_the_ssl_redirect(cluster, tmp_path):
    s, agent = cluster
    host = "https-example.foo.com"
    crt, key = _tls_pair(tmp_path, host)
    s.kubectl("create", "secret", "tls", "testsecret-tls", f"--cert={crt}", f"--key={key}")
    s.kubectl("apply", "-f", "-", input="""
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: tls-example-ingress
  annotations:
    ingress.kubernetes.io/ssl-redirect: "true"
spec:
  tls:
  - hosts:
      - https-example.foo.com
    secretName: testsecret-tls
  rules:
  - host: https-example.foo.com
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: service1
            port:
              number: 4200
""")
    try:
        for ip in (s.ns.node_ip, agent.ns.node_ip):
            _wait_routed(ip, host, "/cart", "service1", port=443, tls=True)
            assert _served_cert_cn(ip, host) == host
            # Another name gets the controller's generated default certificate.
            assert _served_cert_cn(ip, "unknown.example") != host
            code, headers, _ = request(ip, host, "/cart?id=1")
            assert code == 308 and headers["location"] == f"https://{host}/cart?id=1", (code, headers)
        _code, _h, body = request(s.ns.node_ip, host, "/cart", port=443, tls=True)
        assert "X-Forwarded-Proto: https" in body, body
        # A new certificate in the Secret is served to new connections without a restart.
        crt2, key2 = _tls_pair(tmp_path, "rotated.foo.com")
        secret = s.kubectl("create", "secret", "tls", "testsecret-tls", f"--cert={crt2}", f"--key={key2}",
                           "--dry-run=client", "-o", "yaml").stdout
        s.kubectl("apply", "-f", "-", input=secret)
        wait_for(lambda: _served_cert_cn(s.ns.node_ip, host) == "rotated.foo.com", 20)
    finally:
        s.kubectl("delete", "ingress", "tls-example-ingress")
        s.kubectl("delete", "secret", "testsecret-tls")


def test_default_backend_load_balanced_and_an_unready_pod_drops_out(cluster):
    s, _agent = cluster
    s.kubectl("apply", "-f", "-", input="""
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: test-ingress
spec:
  defaultBackend:
    service:
      name: test
      port:
        number: 80
""")
    try:
        ip = s.ns.node_ip
        _wait_routed(ip, "whatever.example", "/", "test")
        pods = sorted(p["metadata"]["name"] for p in s.kjson("get", "pods", "-l", "app=test")["items"])
        assert len(pods) == 2

        def pods_answering(n: int) -> list[str]:
            return [request(ip, "any.example", f"/{i}")[2].split()[1] for i in range(n)]
        assert sorted(set(pods_answering(10))) == pods   # both ready pods share the requests
        s.kubectl("exec", pods[0], "--", "rm", "/tmp/ready")

        def unready() -> bool:
            pod = s.kjson("get", "pod", pods[0])
            return any(c["type"] == "Ready" and c["status"] == "False" for c in pod["status"]["conditions"])
        wait_for(unready, 20)
        wait_for(lambda: set(pods_answering(6)) == {pods[1]}, 10)
        assert set(pods_answering(20)) == {pods[1]}
        s.kubectl("exec", pods[0], "--", "touch", "/tmp/ready")
        wait_for(lambda: set(pods_answering(10)) == set(pods), 20)
    finally:
        s.kubectl("delete", "ingress", "test-ingress")


def test_websocket_echo_through_the_ingress(cluster):
    import aiohttp

    s, agent = cluster
    s.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "ws"},
        "spec": {"rules": [{"host": "ws.example", "http": {"paths": [{
            "path": "/ws", "pathType": "Prefix",
            "backend": {"service": {"name": "service2", "port": {"number": 8080}}}}]}}]}}))
    try:
        ip = agent.ns.node_ip  # through the agent's ingress, to a pod on the server node
        _wait_routed(ip, "ws.example", "/ws", "service2")

        async def talk() -> list[str]:
            async with aiohttp.ClientSession() as session, session.ws_connect(
                    f"http://{ip}/ws/echo", headers={"Host": "ws.example"}) as ws:
                got = []
                for msg in ("hello", "through the ingress", "x" * 100):
                    await ws.send_str(msg)
                    got.append((await ws.receive(timeout=10)).data)
                return got
        assert asyncio.run(talk()) == ["hello", "through the ingress", "x" * 100]
    finally:
        s.kubectl("delete", "ingress", "ws")
