"""Local SGD driven by the learning rate: sync rules that choose the period H from the LR, and the
engine that averages models over any torch.distributed process group.

>>> from distsched.sync import QSR, suggest_alpha
>>> rule = QSR(h_base=4, alpha=suggest_alpha(lr_peak=0.1, h_base=4))
>>> rule.next_period(0, lr=0.1), rule.next_period(500, lr=0.02)
(4, 100)
"""

from distsched.sync.averager import LocalSGD, OuterSGD
from distsched.sync.backend import default_backend, free_port, init_process_group
from distsched.sync.compression import CODECS, CastCodec, Codec, FullCodec, Int8Codec, LRCompression, make_codec
from distsched.sync.fragments import assign_fragments, balanced_cuts
from distsched.sync.rules import (
    H_CAP,
    QSR,
    RULES,
    AdaComm,
    FixedH,
    LRCompensation,
    PostLocal,
    SyncRule,
    suggest_alpha,
)

__all__ = [
    "CODECS",
    "CastCodec",
    "Codec",
    "FullCodec",
    "Int8Codec",
    "LRCompression",
    "assign_fragments",
    "balanced_cuts",
    "make_codec",
    "H_CAP",
    "QSR",
    "RULES",
    "AdaComm",
    "FixedH",
    "LRCompensation",
    "LocalSGD",
    "OuterSGD",
    "PostLocal",
    "SyncRule",
    "default_backend",
    "free_port",
    "init_process_group",
    "suggest_alpha",
]
