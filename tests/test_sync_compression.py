"""Codecs and error feedback, in one process: round-trip error bounds, payload sizes, and the error
feedback identity ``sum_r decode(q_r) + e_R = sum_r d_r``."""

from __future__ import annotations

import pytest
import torch

from distsched.sync import CastCodec, FullCodec, Int8Codec, LRCompression, make_codec
from distsched.sync.compression import compress_with_feedback


def _int8_reference(s: torch.Tensor, block: int) -> torch.Tensor:
    """Block absmax int8, written out block by block."""
    out = torch.zeros_like(s)
    for i in range(0, s.numel(), block):
        c = s[i : i + block]
        m = c.abs().max()
        if m > 0:
            scale = m / 127.0
            out[i : i + block] = torch.round(c / scale).clamp(-127, 127) * scale
    return out


@pytest.mark.parametrize("n,block", [(1, 4), (10, 4), (1000, 64), (4096, 1024), (37, 1024)])
def test_int8_matches_blockwise_reference_and_payload_size(n, block):
    gen = torch.Generator().manual_seed(n)
    d = torch.randn(n, generator=gen) * torch.logspace(-3, 1, n)  # blocks of very different scales
    codec = Int8Codec(block=block)
    payload = codec.encode(d)
    assert payload[0].dtype == torch.int8 and payload[1].dtype == torch.float32
    assert sum(p.numel() * p.element_size() for p in payload) == codec.payload_bytes(n) == n + 4 * -(-n // block)
    assert torch.equal(codec.decode(payload, n, torch.float32), _int8_reference(d, block))
    # error at most half a quantum per element: |d - d_hat| <= max|block| / 254
    err = (d - codec.decode(payload, n, torch.float32)).abs()
    for i in range(0, n, block):
        assert err[i : i + block].max() <= d[i : i + block].abs().max() / 254 * (1 + 1e-6)


def test_int8_zero_block_and_float64():
    d = torch.zeros(8, dtype=torch.float64)
    d[5:] = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    codec = Int8Codec(block=4)
    out = codec.decode(codec.encode(d), 8, torch.float64)
    assert out.dtype == torch.float64 and torch.equal(out[:4], torch.zeros(4, dtype=torch.float64))
    # the block's largest value comes back up to the float32 rounding of its scale (sent as float32)
    assert out[6].item() == pytest.approx(-2.0, rel=1e-7) and out[6].item() == -127 * float(torch.tensor(2 / 127))


@pytest.mark.parametrize("name,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_casts(name, dtype):
    d = torch.tensor([1e-3, -0.5, 3.14159, 1e6])
    codec = make_codec(name)
    assert isinstance(codec, CastCodec) and codec.payload_bytes(4) == 8
    out = codec.decode(codec.encode(d), 4, torch.float32)
    expected = d.clamp(-65504, 65504).to(dtype).float() if name == "fp16" else d.to(dtype).float()
    assert torch.equal(out, expected) and torch.isfinite(out).all()


def test_make_codec_none_is_full_precision():
    assert make_codec(None) is None and make_codec("none") is None
    with pytest.raises(ValueError, match=r"compression must be one of"):
        make_codec("int4")


@pytest.mark.parametrize("codec", [Int8Codec(block=16), CastCodec("bf16"), CastCodec("fp16")])
def test_error_feedback_loses_nothing(codec):
    """What was sent plus the final residual equals the true sum of the deltas (float64 to see the
    identity without float32 rounding of the running sums), while what was sent alone does not."""
    gen = torch.Generator().manual_seed(0)
    n, rounds = 100, 25
    residual = torch.zeros(n, dtype=torch.float64)
    true_sum = torch.zeros(n, dtype=torch.float64)
    sent_sum = torch.zeros(n, dtype=torch.float64)
    for _ in range(rounds):
        d = torch.randn(n, generator=gen, dtype=torch.float64) * 1e-2
        payload, residual = compress_with_feedback(codec, d, residual)
        sent_sum += codec.decode(payload, n, torch.float64)
        true_sum += d
    torch.testing.assert_close(sent_sum + residual, true_sum, rtol=0, atol=1e-15)
    assert (sent_sum - true_sum).abs().max() > 1e-7  # compression did lose something along the way
    # and the residual stays bounded (about one quantum), it does not accumulate
    assert residual.abs().max() < 5e-4


def test_without_error_feedback_the_residual_is_none():
    payload, residual = compress_with_feedback(Int8Codec(), torch.ones(3), None)
    assert residual is None and payload[0].tolist() == [127, 127, 127]


def test_lr_compression_picks_the_level_of_the_lr():
    rule = LRCompression(lr_peak=2.0, levels=((0.75, "fp32"), (0.25, "bf16"), (0.0, "int8")))
    names = [rule.codec_name(lr) for lr in (2.0, 1.5, 1.49, 0.5, 0.49, 0.0)]
    assert names == ["fp32", "fp32", "bf16", "bf16", "int8", "int8"]
    assert isinstance(rule.codec_at(2.0), FullCodec) and rule.codec_at(2.0).payload_bytes(10) == 40
    assert isinstance(rule.codec_at(0.0), Int8Codec)
    assert LRCompression(lr_peak=1.0).codec_name(0.5) == "bf16" and LRCompression(lr_peak=1.0).codec_name(0.4) == "int8"


@pytest.mark.parametrize(
    "kwargs,match",
    [({"lr_peak": 0.0}, r"lr_peak must be > 0"),
     ({"lr_peak": 1.0, "levels": ((0.5, "int4"), (0.0, "int8"))}, r"codec must be one of"),
     ({"lr_peak": 1.0, "levels": ((0.2, "bf16"), (0.5, "int8"))}, r"decreasing thresholds ending at 0"),
     ({"lr_peak": 1.0, "levels": ((0.5, "bf16"),)}, r"decreasing thresholds ending at 0"),
     ({"lr_peak": 1.0, "levels": ()}, r"at least one")],
)
def test_lr_compression_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LRCompression(**kwargs)
