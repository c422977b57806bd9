"""The byte-level language-model workload: the ``stdlib_text`` corpus (files, split, cache, windows,
natural clients), the ``gpt`` model (causality, size, Opacus per-sample gradients and ghost clipping
against per-example autograd) and the one loss for classification and next-byte prediction."""

from __future__ import annotations

import hashlib
import json
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distsched.data import evaluate, gpt, stdlib_text, stdlib_text_arrays, token_cross_entropy
from distsched.data.text import client_of, is_validation, load_corpus, stdlib_files, stdlib_root, stdlib_windows

TREE = {
    "os.py": b"import sys\n" * 40,
    "json/__init__.py": b"from .decoder import *\n" * 30,
    "json/decoder.py": b"class JSONDecoder: pass\n" * 50,
    "json/tests/t.py": b"# kept: only test/ folders are left out\n" * 3,
    "test/test_os.py": b"left out\n",
    "asyncio/test/x.py": b"left out too\n",
    "site-packages/pkg/mod.py": b"left out\n",
    "README.txt": b"not python\n",
}


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "lib"
    for rel, raw in TREE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(raw)
    for i in range(40):  # enough files that both splits are non-empty
        (root / f"m{i:02d}.py").write_bytes(f"x{i} = {i}\n".encode() * (5 + 7 * i))
    return root


def test_files_skip_test_and_site_packages(tree):
    files = stdlib_files(tree)
    assert "json/tests/t.py" in files and "os.py" in files and "json/decoder.py" in files
    assert not [f for f in files if f.startswith(("test/", "site-packages/")) or "/test/" in f]
    assert not [f for f in files if not f.endswith(".py")]
    assert client_of("json/decoder.py") == "json" and client_of("os.py") == "os"


def test_corpus_cache_manifest_and_split(tree, tmp_path):
    corpus = load_corpus(0.2, cache_dir=tmp_path / "cache", root=tree)
    m = corpus.manifest
    files = stdlib_files(tree)
    assert sorted(m["files"]) == files and m["train_files"] + m["val_files"] == len(files)
    val = m["files"][m["train_files"]:]
    assert val and all(is_validation(f, 0.2) for f in val)
    assert not any(is_validation(f, 0.2) for f in m["files"][: m["train_files"]])
    # the content hash, recomputed from the files in the manifest's order
    h = hashlib.sha256()
    for f in m["files"]:
        raw = (tree / f).read_bytes()
        h.update(f"{f}\0{len(raw)}\0".encode() + raw)
    assert corpus.sha256 == h.hexdigest()
    # the cache file is the files' bytes, concatenated in that order
    assert corpus.path.read_bytes() == b"".join((tree / f).read_bytes() for f in m["files"])
    # clients: contiguous runs of train files of one top-level module or package
    offs = corpus.client_offsets
    for k, name in enumerate(corpus.clients):
        mine = [f for f in m["files"][: m["train_files"]] if client_of(f) == name]
        lo = m["file_offsets"][m["files"].index(mine[0])]
        assert (lo, int(offs[k + 1]) - lo) == (int(offs[k]), sum(len((tree / f).read_bytes()) for f in mine))
    # a second load reads the cache (same file), a changed file makes a new one
    assert load_corpus(0.2, cache_dir=tmp_path / "cache", root=tree).path == corpus.path
    (tree / "os.py").write_bytes(b"changed\n" * 50)
    again = load_corpus(0.2, cache_dir=tmp_path / "cache", root=tree)
    assert again.path != corpus.path and again.sha256 != corpus.sha256


def test_windows_are_next_byte_pairs_within_one_client(tree, tmp_path):
    s = stdlib_windows(context=16, val_fraction=0.2, val_windows=None, cache_dir=tmp_path, root=tree)
    raw = s.corpus.path.read_bytes()
    offs = s.corpus.client_offsets
    for i in range(len(s.train)):
        x, y = s.train[i]
        start = int(s.train.starts[i])
        assert x.dtype == torch.int64 and x.shape == (16,)
        assert bytes(x.tolist()) == raw[start:start + 16] and bytes(y.tolist()) == raw[start + 1:start + 17]
        k = int(s.train.targets[i])  # the window and its targets lie inside its client's bytes
        assert offs[k] <= start and start + 17 <= offs[k + 1]
    assert all(int(st) >= s.corpus.train_bytes for st in s.validation.starts)
    x_all, y_all = s.train.arrays()
    assert x_all.dtype == np.uint8 and np.array_equal(x_all[3], s.train[3][0].numpy())
    assert np.array_equal(y_all[:, :-1], x_all[:, 1:])
    parts = s.natural_partition()
    assert sum(len(p) for p in parts) == len(s.train)
    # one argsort, equal to the per-client scan it replaced (clients without a window left out)
    ref = [p for p in (np.flatnonzero(s.train.targets == k) for k in range(len(s.clients))) if len(p)]
    assert len(parts) == len(ref) and all(np.array_equal(a, b) for a, b in zip(parts, ref))
    # lazily opened, never pickled: a worker receives the path and the window starts only
    s.train[0]
    assert isinstance(s.train._mm, np.memmap)
    clone = pickle.loads(pickle.dumps(s.train))
    assert clone._mm is None and torch.equal(clone[5][0], s.train[5][0])


def test_stdlib_corpus_of_this_interpreter(tmp_path):
    b = stdlib_text(context=64, val_windows=100, cache_dir=str(tmp_path))
    m = b.manifest
    assert m["root"] == str(stdlib_root()) and m["total_bytes"] > 1_000_000 and len(m["files"]) > 200
    assert b.task == "lm" and b.num_classes == 256 and b.input_shape == (64,) and len(b.test) == 100
    assert not [f for f in m["files"] if f.split("/")[0] in ("test", "site-packages")]
    arrays = stdlib_text_arrays(context=64, val_windows=100, cache_dir=str(tmp_path))
    sizes = np.sort([len(p) for p in arrays.natural_partition])
    assert len(sizes) > 50 and sizes[-1] > 20 * np.median(sizes)  # heavy-tailed
    assert arrays.partition_classes <= m["clients"] and arrays.x_train.shape == (len(b.train), 64)
    assert json.loads(json.dumps(m))["sha256"] == m["sha256"]


# ------------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("kw, low, high", [({"layers": 4, "dim": 128}, 0.8e6, 1.2e6),
                                           ({"layers": 8, "dim": 512, "heads": 8}, 20e6, 26e6)])
def test_gpt_sizes(kw, low, high):
    n = sum(p.numel() for p in gpt((64,), 256, **kw).parameters())
    assert low <= n <= high


def test_gpt_is_causal_and_refuses_long_inputs():
    torch.manual_seed(0)
    model = gpt((12,), 256, layers=2, heads=2, dim=16)
    x = torch.randint(0, 256, (2, 12))
    x2 = x.clone()
    x2[:, 7] = (x2[:, 7] + 1) % 256
    a, b = model(x), model(x2)
    assert a.shape == (2, 12, 256)
    assert torch.equal(a[:, :7], b[:, :7]) and not torch.allclose(a[:, 7:], b[:, 7:])
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="dim must be a multiple"):
        gpt((8,), 256, heads=3, dim=16)


def _per_example_grads(model, x, y):
    out = []
    for i in range(len(x)):
        model.zero_grad()
        token_cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        out.append({n: p.grad.clone() for n, p in model.named_parameters()})
    model.zero_grad()
    return out


def test_opacus_per_example_gradients_and_ghost_norms():
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.validators import ModuleValidator

    torch.manual_seed(0)
    model = gpt((8,), 256, layers=2, heads=2, dim=16)
    assert ModuleValidator.validate(model, strict=False) == []
    x, y = torch.randint(0, 256, (3, 8)), torch.randint(0, 256, (3, 8))
    ref = _per_example_grads(model, x, y)
    gsm = GradSampleModule(model)  # hooks; the loss averages B * T targets, so example i gets mean_t
    token_cross_entropy(gsm(x), y).backward()
    for name, p in model.named_parameters():
        for i in range(3):
            torch.testing.assert_close(p.grad_sample[i], ref[i][name], rtol=1e-4, atol=1e-6)
    gsm._close()
    norms = torch.stack([torch.sqrt(sum((g**2).sum() for g in r.values())) for r in ref])
    ghost = GradSampleModuleFastGradientClipping(model, max_grad_norm=1.0, use_ghost_clipping=True)
    token_cross_entropy(ghost(x), y).backward()
    torch.testing.assert_close(ghost.get_norm_sample(), norms, rtol=1e-4, atol=1e-6)


# -------------------------------------------------------------------------------------- loss, eval
def test_one_loss_for_labels_and_tokens():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(5, 7, generator=g), torch.randint(0, 7, (5,), generator=g)
    assert torch.equal(token_cross_entropy(logits, labels), F.cross_entropy(logits, labels))
    seq, tok = torch.randn(2, 4, 7, generator=g), torch.randint(0, 7, (2, 4), generator=g).to(torch.uint8)
    manual = -torch.log_softmax(seq, -1).gather(-1, tok.long()[..., None]).mean()
    torch.testing.assert_close(token_cross_entropy(seq, tok), manual)


def test_evaluate_reports_bits_per_byte(tree, tmp_path):
    s = stdlib_windows(context=16, val_fraction=0.2, val_windows=None, cache_dir=tmp_path, root=tree)
    torch.manual_seed(0)
    model = gpt((16,), 256, layers=1, heads=2, dim=16)
    out = evaluate(model, s.validation, torch.device("cpu"), batch_size=3)
    x, y = s.validation.arrays()
    with torch.no_grad():
        logits = model(torch.as_tensor(x))
    ref = float(token_cross_entropy(logits, torch.as_tensor(y)))
    assert out["test_loss"] == pytest.approx(ref, rel=1e-5)
    assert out["test_bpb"] == pytest.approx(ref / math.log(2), rel=1e-5)
    assert 7.0 < out["test_bpb"] < 8.5  # an untrained model: about log2(256) = 8 bits per byte
