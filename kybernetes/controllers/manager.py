"""The controller manager: builds and runs the built-in controllers of a server.

In `kyb server` the controllers talk to the API server through the in-process
transport; `ControllerManager(client, ...)` takes any Client, so the same
controllers run as a separate process against a remote server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
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
from .replicaset import ReplicaSetController
from .resourcequota import ResourceQuotaController
from .serviceaccount import RootCACertPublisher, ServiceAccountController, TokensController
from .servicelb import ServiceLBController
from .statefulset import StatefulSetController

log = logging.getLogger("kybernetes.controllers")


class ControllerManager:
    def __init__(self, client: Client, resources: list[tuple[str, str, str, bool]], *,
                 node_monitor_grace_period: float = 40.0, root_ca: str = "",
                 storage_dir: str | None = None, cluster_signing_key: str = "",
                 service_account_key: str = "", cluster_cidrs: str | Sequence[str] | None = None,
                 node_cidr_mask_size_ipv4: int = 24, node_cidr_mask_size_ipv6: int = 64,
                 service_cidrs: str | Sequence[str] = (), servicelb: bool = True,
                 lb_pools: str | Sequence[str] | None = None):
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
        given, else the nodes' own, as k3s's servicelb."""
        self.client = client
        client.shared_informers = SharedInformers()
        namespaced = [(av, plural) for av, _kind, plural, ns in resources if ns]
        self.controllers: list[Controller] = [NamespaceController(client, namespaced),
                                              GarbageCollector(client, resources),
                                              ClusterRoleAggregationController(client),
                                              ResourceQuotaController(client, resources),
                                              ReplicaSetController(client), DeploymentController(client),
                                              DaemonSetController(client), StatefulSetController(client),
                                              JobController(client), CronJobController(client),
                                              DisruptionController(client),
                                              EndpointsController(client), EndpointSliceController(client),
                                              EndpointSliceMirroringController(client),
                                              HorizontalPodAutoscalerController(client),
                                              NodeLifecycleController(client,
                                                                      grace_period=node_monitor_grace_period),
                                              ServiceAccountController(client),
                                              PersistentVolumeController(client, storage_dir=storage_dir),
                                              *([RootCACertPublisher(client, root_ca)] if root_ca else []),
                                              *([TokensController(client, service_account_key.encode(), root_ca)]
                                                if service_account_key else []),
                                              CSRApprovingController(client), CSRCleaner(client),
                                              BootstrapSigner(client), TokenCleaner(client),
                                              *([CSRSigningController(client, root_ca.encode(),
                                                                      cluster_signing_key.encode())]
                                                if root_ca and cluster_signing_key else []),
                                              *([NodeIPAMController(client, cluster_cidrs,
                                                                    node_cidr_mask_size_ipv4=node_cidr_mask_size_ipv4,
                                                                    node_cidr_mask_size_ipv6=node_cidr_mask_size_ipv6,
                                                                    service_cidrs=service_cidrs)]
                                                if cluster_cidrs else []),
                                              *([ServiceLBController(client, pools=lb_pools)]
                                                if servicelb else [])]

    @classmethod
    def in_process(cls, api, **options: Any) -> ControllerManager:
        client = Client.in_process(api.handle)
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
        return cls(client, resources, **options)

    async def start(self) -> None:
        await asyncio.gather(*(c.start() for c in self.controllers))

    async def stop(self) -> None:
        for c in self.controllers:
            await c.stop()
        if self.client.shared_informers is not None:
            await self.client.shared_informers.stop()
        await self.client.close()
