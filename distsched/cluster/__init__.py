"""Ray at the edge: start or join a cluster, run a worker group (floor 4)."""

from distsched.cluster.local import LOOPBACK, connect
from distsched.cluster.progress import MetricsFollower, Progress
from distsched.cluster.session import RaySession
from distsched.cluster.trainer import planned_steps, train_on_ray

__all__ = ["LOOPBACK", "MetricsFollower", "Progress", "RaySession", "connect", "planned_steps", "train_on_ray"]
