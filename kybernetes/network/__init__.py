"""The node's networking: IP address management, the pod network (bridge/veth,
dual-stack), the service proxy, cluster DNS and network policy."""
