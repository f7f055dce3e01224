"""The controller manager: builds and runs the built-in controllers of a server.

In `kyb server` the controllers talk to the API server through the in-process
transport; `ControllerManager(client, ...)` takes any Client, so the same
controllers run as a separate process against a remote server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from ..client import Client
from ..client.informer import SharedInformers
from .base import Controller
from .certificates import (
    BootstrapSigner,
    CSRApprovingController,
    CSRCleaner,
    CSRSigningController,
    TokenCleaner,
)
from .clusterroleaggregation import ClusterRoleAggregationController
from .cronjob import CronJobController
from .daemonset import DaemonSetController
from .deployment import DeploymentController
from .disruption import DisruptionController
from .endpoints import EndpointsController
from .endpointslice import EndpointSliceController, EndpointSliceMirroringController
from .hpa import HorizontalPodAutoscalerController
from .garbagecollector import GarbageCollector
from .job import JobController
from .namespace import NamespaceController
from .nodeipam import NodeIPAMController
from .nodelifecycle import NodeLifecycleController
from .persistentvolume import PersistentVolumeController
from .replicaset import ReplicaSetController, ReplicationManager
from .resourcequota import ResourceQuotaController
from .serviceaccount import RootCACertPublisher, ServiceAccountController, TokensController
from .servicelb import ServiceLBController
from .statefulset import StatefulSetController

log = logging.getLogger("kybernetes.controllers")

SA_PREFIX = "system:serviceaccount:kube-system:"
SA_GROUPS = ("system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated")


class ControllerManager:
    def __init__(self, client: Client, resources: list[tuple[str, str, str, bool]], *,
                 node_monitor_grace_period: float = 40.0, root_ca: str = "",
                 storage_dir: str | None = None, cluster_signing_key: str = "",
                 service_account_key: str = "", cluster_cidrs: str | Sequence[str] | None = None,
                 node_cidr_mask_size_ipv4: int = 24, node_cidr_mask_size_ipv6: int = 64,
                 service_cidrs: str | Sequence[str] = (), servicelb: bool = True,
                 lb_pools: str | Sequence[str] | None = None,
                 client_for: Callable[[str], Client] | None = None):
        """resources: (apiVersion, kind, plural, namespaced) of every served resource, one per storage;
        root_ca: the cluster CA (PEM) published to every namespace as kube-root-ca.crt (none if empty);
        storage_dir: where the local-path provisioner makes volumes (no provisioning if None);
        cluster_signing_key: the CA's private key (PEM): with root_ca, it signs approved
        CertificateSigningRequests (no signing if empty);
        service_account_key: the API server's service-account signing key (PEM): it signs the
        long-lived tokens of kubernetes.io/service-account-token Secrets (none filled in if empty);
        cluster_cidrs: the pod network, one CIDR or an IPv4,IPv6 pair ("a,b" or a list): nodes get
        spec.podCIDRs of the node mask sizes from it (no node IPAM if None), avoiding service_cidrs;
        servicelb: give LoadBalancer Services addresses, from lb_pools (CIDRs or "a-b" ranges) if
        given, else the nodes' own, as k3s's servicelb;
        client_for: a client acting as the kube-system service account of that name (each controller
        gets its own, as upstream's --use-service-account-credentials); None: all use ``client``."""
        self.client = client
        # The shared informers read as the manager itself (client), each controller writes as its own.
        client.shared_informers = SharedInformers(client)

        def as_(account: str) -> Client:
            # Each controller acts as its own service account, as upstream's
            # --use-service-account-credentials: its bootstrap role says what it may do.
            if client_for is None:
                return client
            c = client_for(account)
            c.shared_informers = client.shared_informers
            self._clients.append(c)
            return c
        self._clients: list[Client] = []
        namespaced = [(av, plural) for av, _kind, plural, ns in resources if ns]
        self.controllers: list[Controller] = [NamespaceController(as_("namespace-controller"), namespaced),
                                              GarbageCollector(as_("generic-garbage-collector"), resources),
                                              ClusterRoleAggregationController(as_("clusterrole-aggregation-controller")),
                                              ResourceQuotaController(as_("resourcequota-controller"), resources),
                                              ReplicaSetController(as_("replicaset-controller")),
                                              ReplicationManager(as_("replication-controller")),
                                              DeploymentController(as_("deployment-controller")),
                                              DaemonSetController(as_("daemon-set-controller")), StatefulSetController(as_("statefulset-controller")),
                                              JobController(as_("job-controller")), CronJobController(as_("cronjob-controller")),
                                              DisruptionController(as_("disruption-controller")),
                                              EndpointsController(as_("endpoint-controller")), EndpointSliceController(as_("endpointslice-controller")),
                                              EndpointSliceMirroringController(as_("endpointslicemirroring-controller")),
                                              HorizontalPodAutoscalerController(as_("horizontal-pod-autoscaler")),
                                              NodeLifecycleController(as_("node-controller"),
                                                                      grace_period=node_monitor_grace_period),
                                              ServiceAccountController(as_("service-account-controller")),
                                              PersistentVolumeController(as_("persistent-volume-binder"), storage_dir=storage_dir),
                                              *([RootCACertPublisher(as_("root-ca-cert-publisher"), root_ca)] if root_ca else []),
                                              *([TokensController(as_("tokens-controller"), service_account_key.encode(), root_ca)]
                                                if service_account_key else []),
                                              CSRApprovingController(as_("certificate-controller")), CSRCleaner(as_("certificate-controller")),
                                              BootstrapSigner(as_("bootstrap-signer")), TokenCleaner(as_("token-cleaner")),
                                              *([CSRSigningController(as_("certificate-controller"), root_ca.encode(),
                                                                      cluster_signing_key.encode())]
                                                if root_ca and cluster_signing_key else []),
                                              *([NodeIPAMController(as_("node-controller"), cluster_cidrs,
                                                                    node_cidr_mask_size_ipv4=node_cidr_mask_size_ipv4,
                                                                    node_cidr_mask_size_ipv6=node_cidr_mask_size_ipv6,
                                                                    service_cidrs=service_cidrs)]
                                                if cluster_cidrs else []),
                                              *([ServiceLBController(as_("servicelb-controller"), pools=lb_pools)]
                                                if servicelb else [])]

    @classmethod
    def in_process(cls, api, **options: Any) -> ControllerManager:
        # As upstream's kube-controller-manager: its own identity lists and watches for every
        # controller (the shared informers), and each controller acts as its service account.
        client = Client.in_process(api.handle, user="system:kube-controller-manager",
                                   groups=("system:authenticated",))
        if options.get("cluster_cidrs"):
            # Pod CIDRs never overlap the Service ranges this API server hands out.
            options.setdefault("service_cidrs", api.service_cidr)
        seen: set[str] = set()
        resources = []
        for k in api.registry.kinds:
            if k.storage_prefix not in seen:
                seen.add(k.storage_prefix)
                resources.append((k.api_version, k.kind, k.plural, k.namespaced))
        # Propagation finalizers (orphan, foregroundDeletion) are only added
        # when a garbage collector is there to remove them.
        api.rest.gc_enabled = True

        def client_for(account: str) -> Client:
            return Client.in_process(api.handle, user=SA_PREFIX + account, groups=SA_GROUPS)
        return cls(client, resources, client_for=client_for, **options)

    async def start(self) -> None:
        await asyncio.gather(*(c.start() for c in self.controllers))

    async def stop(self) -> None:
        for c in self.controllers:
            await c.stop()
        if self.client.shared_informers is not None:
            await self.client.shared_informers.stop()
        for c in self._clients:
            await c.close()
        await self.client.close()
