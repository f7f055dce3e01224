"""The built-in Ingress controller: HTTP(S) routing from each node's ports 80 and 443 to Services' pods.

`routing` turns Ingresses, IngressClasses, Services and EndpointSlices into a
route table (pure functions); `tls` picks a certificate per SNI name from
kubernetes.io/tls Secrets; `proxy` is the asyncio HTTP/1.1 reverse proxy that
answers from the table; `controller` feeds both from informers and writes the
Ingresses' status.
"""

from .controller import IngressController
from .proxy import IngressProxy
from .routing import CONTROLLER_NAME, DEFAULT_CLASS_NAME, RouteTable, build_table
from .tls import CertStore

__all__ = ["CONTROLLER_NAME", "DEFAULT_CLASS_NAME", "CertStore", "IngressController", "IngressProxy",
           "RouteTable", "build_table"]
