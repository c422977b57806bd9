"""Ray at the edge: start or join a cluster, run a worker group (floor 4)."""

from distsched.cluster.local import LOOPBACK, connect

__all__ = ["LOOPBACK", "connect"]
