"""kybernetes: a Kubernetes-compatible container orchestrator written in Python."""

__version__ = "0.1.0"
