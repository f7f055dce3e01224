"""The node agent: registers its Node, heartbeats, and runs the pods bound to it.

See kubelet.py for the wiring; ``Kubelet`` and ``KubeletConfig`` are the public API.
"""

from kybernetes.kubelet.kubelet import Kubelet, KubeletConfig

__all__ = ["Kubelet", "KubeletConfig"]
