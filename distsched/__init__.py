"""distsched: distributed, federated and differentially private training in which the
learning-rate schedule is the control signal.

Subpackages are imported on demand (``from distsched import schedules``) so that importing
the package stays cheap and never starts Ray or torch.distributed.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
