"""Compressed exchange of local-SGD deltas: low-precision casts and block-scaled int8, each worker's
payload gathered by all workers and summed in full precision.

A codec turns a flat full-precision tensor ``d`` into a payload (the tensors a worker sends) and back:
``decode(encode(d)) ~= d``. With error feedback (Seide et al. 2014, "1-bit SGD"; Karimireddy et al.
2019, "Error Feedback Fixes SignSGD") the part lost to compression is carried to the next round:

    ``s_r = d_r + e_{r-1}``,   send ``q_r = encode(s_r)``,   ``e_r = s_r - decode(q_r)``,

so ``sum_r decode(q_r) + e_R = sum_r d_r``: nothing is lost, only delayed.

Summing: the payloads are exchanged with ``all_gather`` and each worker decodes every payload and adds
them in rank order in the bucket's own precision (float32 or float64). Summing int8 (or bf16) inside
an ``all_reduce`` would overflow (int8) or round at every partial sum (bf16); the gather is exact, and
every worker computes the same sum bit for bit. Payload bytes per worker: ``n * itemsize`` (bf16,
fp16: 2 bytes per element; int8: 1 byte per element plus one float32 scale per block). On a ring,
all_gather moves ``(K - 1) * payload`` per worker against ``2 (K - 1) / K * payload`` for all_reduce;
at K = 2 both are one payload.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
import torch.distributed as dist

from distsched._checks import check_choice, check_int

#: codec names accepted by ``LocalSGD(compression=...)`` and the ``sync.compression`` config key.
CODECS = ("none", "bf16", "fp16", "int8")
#: codec names an :class:`LRCompression` level may name (``fp32``: the delta in full precision).
LEVEL_CODECS = ("fp32", "bf16", "fp16", "int8")

_FP16_MAX = 65504.0


@dataclasses.dataclass(frozen=True)
class Codec:
    """Base: ``encode(d) -> payload``, ``decode(payload, n, dtype) -> d_hat``, ``payload_bytes(n)``."""

    name: ClassVar[str] = "none"

    def encode(self, d: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, payload: list[torch.Tensor], n: int, dtype: torch.dtype) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def payload_bytes(self, n: int) -> int:
        """Bytes one worker sends for ``n`` elements."""
        return sum(t.numel() * t.element_size() for t in self.encode(torch.zeros(n)))


@dataclasses.dataclass(frozen=True)
class CastCodec(Codec):
    """Cast to ``bfloat16`` or ``float16`` (fp16 values clamped to +-65504, its largest finite)."""

    dtype: str = "bf16"

    def __post_init__(self) -> None:
        check_choice("dtype", self.dtype, ("bf16", "fp16"))

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.dtype == "bf16" else torch.float16

    def encode(self, d: torch.Tensor) -> list[torch.Tensor]:
        if self.dtype == "fp16":
            d = d.clamp(-_FP16_MAX, _FP16_MAX)
        return [d.to(self.torch_dtype)]

    def decode(self, payload: list[torch.Tensor], n: int, dtype: torch.dtype) -> torch.Tensor:
        return payload[0].to(dtype)

    def payload_bytes(self, n: int) -> int:
        return 2 * n


@dataclasses.dataclass(frozen=True)
class Int8Codec(Codec):
    """Symmetric int8 with one float32 scale per block of ``block`` elements:
    ``scale_b = max_i |d_i| / 127``, ``q_i = round(d_i / scale_b)`` in [-127, 127],
    ``d_hat_i = q_i * scale_b`` (a block of zeros has scale 0 and decodes to 0)."""

    block: int = 1024

    def __post_init__(self) -> None:
        check_int("block", self.block, 1)

    def _blocks(self, n: int) -> int:
        return max(1, math.ceil(n / self.block))

    def encode(self, d: torch.Tensor) -> list[torch.Tensor]:
        n, nb = d.numel(), self._blocks(d.numel())
        padded = torch.zeros(nb * self.block, dtype=d.dtype, device=d.device)
        padded[:n] = d.reshape(-1)
        blocks = padded.view(nb, self.block)
        scale = blocks.abs().amax(dim=1) / 127.0
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.round(blocks / safe[:, None]).clamp_(-127, 127).to(torch.int8)
        return [q.reshape(-1)[:n].clone(), scale.to(torch.float32)]

    def decode(self, payload: list[torch.Tensor], n: int, dtype: torch.dtype) -> torch.Tensor:
        q, scale = payload
        nb = scale.numel()
        padded = torch.zeros(nb * self.block, dtype=dtype, device=q.device)
        padded[:n] = q.to(dtype)
        return (padded.view(nb, self.block) * scale.to(dtype)[:, None]).reshape(-1)[:n]

    def payload_bytes(self, n: int) -> int:
        return n + 4 * self._blocks(n)


@dataclasses.dataclass(frozen=True)
class FullCodec(Codec):
    """The delta itself, in its own precision (4 bytes per float32 element): an LR-driven level that
    asks for no compression."""

    def encode(self, d: torch.Tensor) -> list[torch.Tensor]:
        return [d.clone()]

    def decode(self, payload: list[torch.Tensor], n: int, dtype: torch.dtype) -> torch.Tensor:
        return payload[0].to(dtype)

    def payload_bytes(self, n: int) -> int:
        return 4 * n


def _level_codec(name: str) -> Codec:
    name = check_choice("codec", name, LEVEL_CODECS)
    return FullCodec() if name == "fp32" else Int8Codec() if name == "int8" else CastCodec(name)


@dataclasses.dataclass(frozen=True)
class LRCompression:
    """Compression strength from the learning rate, a rule like the sync rules: at a sync step ``t``
    the codec is that of the first level ``(threshold, codec)`` with ``lr_t / lr_peak >= threshold``
    (levels in decreasing threshold, the last one at 0). Default: bf16 while the LR is at least half
    its peak, int8 below (fewer bits as the LR decays: the pseudo-gradients shrink with the LR and
    error feedback returns what was lost). Every worker reads the same schedule, so they agree.
    """

    lr_peak: float
    levels: tuple[tuple[float, str], ...] = ((0.5, "bf16"), (0.0, "int8"))

    def __post_init__(self) -> None:
        from distsched._checks import check_non_negative, check_positive

        check_positive("lr_peak", self.lr_peak)
        levels = tuple((float(check_non_negative("threshold", float(th))), str(name)) for th, name in self.levels)
        if not levels:
            raise ValueError("levels must name at least one (threshold, codec), got none")
        for _, name in levels:
            _level_codec(name)
        thresholds = [th for th, _ in levels]
        if thresholds != sorted(thresholds, reverse=True) or thresholds[-1] != 0.0:
            raise ValueError(f"levels must have decreasing thresholds ending at 0, got {thresholds}")
        object.__setattr__(self, "levels", levels)

    def codec_name(self, lr: float) -> str:
        """The codec's name at learning rate ``lr``."""
        ratio = float(lr) / self.lr_peak
        return next(name for th, name in self.levels if ratio >= th)

    def codec_at(self, lr: float) -> Codec:
        """The codec at learning rate ``lr``."""
        return _level_codec(self.codec_name(lr))


def make_codec(compression: str | Codec | None) -> Codec | None:
    """``None``/``"none"`` -> None (full precision, the plain engine); ``"bf16"``, ``"fp16"``,
    ``"int8"`` -> the codec; a :class:`Codec` is returned as is."""
    if compression is None or isinstance(compression, Codec):
        return compression
    name = check_choice("compression", compression, CODECS)
    if name == "none":
        return None
    if name == "int8":
        return Int8Codec()
    return CastCodec(name)


def compress_with_feedback(
    codec: Codec, d: torch.Tensor, residual: torch.Tensor | None
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """``s = d + residual``; returns ``(encode(s), s - decode(encode(s)))`` (the new residual; None
    without error feedback). ``d`` is not modified."""
    s = d if residual is None else d + residual
    payload = codec.encode(s)
    if residual is None:
        return payload, None
    return payload, s - codec.decode(payload, s.numel(), s.dtype)


class GatherSum:
    """An in-flight exchange: every worker's payload gathered (``async_op=True``); :meth:`wait` returns
    ``sum_k decode(payload_k)`` in the reference dtype, the same bit for bit on every worker."""

    def __init__(
        self, codec: Codec, payload: list[torch.Tensor], n: int, dtype: torch.dtype, world_size: int, group=None
    ) -> None:
        self.codec, self.n, self.dtype = codec, n, dtype
        self.gathered = [[torch.empty_like(p) for _ in range(world_size)] for p in payload]
        self.works = [dist.all_gather(g, p, group=group, async_op=True) for g, p in zip(self.gathered, payload)]
        self.bytes = sum(p.numel() * p.element_size() for p in payload)

    def wait(self) -> torch.Tensor:
        for w in self.works:
            w.wait()
        total = None
        for k in range(len(self.gathered[0])):
            part = self.codec.decode([g[k] for g in self.gathered], self.n, self.dtype)
            total = part if total is None else total + part
        return total
