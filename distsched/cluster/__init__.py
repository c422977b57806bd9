"""Ray at the edge: start or join a cluster, run a worker group, the federated actor-pool executor
(floor 5; the only package that imports Ray)."""

from distsched.cluster.executor import ActorPool, ray_executor
from distsched.cluster.local import LOOPBACK, connect
from distsched.cluster.progress import MetricsFollower, Progress
from distsched.cluster.session import RaySession
from distsched.cluster.trainer import planned_steps, train_on_ray

__all__ = [
    "LOOPBACK",
    "ActorPool",
    "MetricsFollower",
    "Progress",
    "RaySession",
    "connect",
    "planned_steps",
    "ray_executor",
    "train_on_ray",
]
