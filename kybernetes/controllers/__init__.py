"""Controllers: level-triggered loops that make the cluster match its desired state."""
