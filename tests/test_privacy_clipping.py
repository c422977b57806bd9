"""Per-example clipping modes (``privacy.clipping``): every mode takes the same DP-SGD step as Opacus' hooks
(same clipped sum, same noise), ``auto`` picks a mode that supports every layer, and ghost clipping works in
``make_private`` (with virtual steps) and in the training loop."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distsched.privacy import make_private, private_training
from distsched.privacy.clipping import resolve_clipping, supports

warnings.filterwarnings("ignore", message="Full backward hook")


def _mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))


def _steps(mode, steps=3):
    torch.manual_seed(0)
    x, y = torch.randn(64, 6), torch.randint(0, 2, (64,))
    model = _mlp()
    pt = private_training(model, torch.optim.SGD(model.parameters(), lr=0.5), sample_rate=0.1,
                          expected_batch_size=64, max_grad_norm=0.1, delta=1e-5, noise=1.0, noise_seed=3,
                          clipping=mode)
    crit = pt.loss_fn(nn.CrossEntropyLoss())
    for _ in range(steps):
        pt.optimizer.zero_grad()
        crit(pt.model(x), y).backward()
        pt.optimizer.step()
        pt.after_step()
    return pt, torch.cat([p.detach().flatten() for p in pt.model.parameters()])


@pytest.mark.parametrize("mode", ["functorch", "ew", "ghost"])
def test_every_mode_takes_the_step_opacus_hooks_takes(mode):
    ref_pt, ref = _steps("hooks")
    pt, got = _steps(mode)
    assert pt.clipping == mode and ref_pt.clipping == "hooks"
    assert not torch.equal(got, _steps("hooks", steps=0)[1])  # the steps moved the parameters
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    assert pt.accountant.history == ref_pt.accountant.history == [(1.0, 0.1, 3)]


def test_auto_picks_a_mode_supporting_every_layer():
    lm = nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(32, 50))
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    attention = nn.MultiheadAttention(8, 2)
    assert resolve_clipping(lm, "auto") == "ghost"          # closed forms for Embedding and Linear
    assert resolve_clipping(conv, "auto") == "ghost"        # Conv2d through its grad sampler, Linear closed form
    assert resolve_clipping(attention, "auto") == "hooks"   # no grad sampler: Opacus' hooks use torch.func
    assert not supports(attention, "ew") and supports(conv, "ew")
    assert resolve_clipping(conv, "ghost") == "ghost"       # Conv2d's per-example gradients, Linear's ghost norm
    with pytest.raises(ValueError, match="clipping 'ghost' does not support every layer .*MultiheadAttention"):
        resolve_clipping(attention, "ghost")                # no grad sampler, no norm sampler
    from distsched.data.gpt import GPT

    small_gpt = GPT(50, 8, layers=1, heads=2, dim=16)
    assert resolve_clipping(small_gpt, "auto") == "ghost"   # Linear, Embedding, LayerNorm: all in closed form
    assert resolve_clipping(_mlp(), "auto") == "ghost"
    with_attention = nn.Sequential(nn.Linear(8, 8), nn.Transformer(8, 2, 1, 1, 16, batch_first=True).encoder)
    assert resolve_clipping(with_attention, "auto") == "hooks"  # MultiheadAttention: torch.func only


def test_make_private_with_ghost_clipping_and_virtual_steps():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=g)
    data = TensorDataset(x, (x[:, 0] > 0).long())
    model = _mlp()
    with pytest.raises(ValueError, match="pass criterion="):
        make_private(model, torch.optim.SGD(model.parameters(), lr=0.5), DataLoader(data, batch_size=40),
                     noise_multiplier=1.0, delta=1e-5, max_grad_norm=1.0, clipping="ghost")
    finals = {}
    for physical in (None, 7):
        model = _mlp()
        m, opt, crit, loader = make_private(model, torch.optim.SGD(model.parameters(), lr=0.5),
                                            DataLoader(data, batch_size=40), noise_multiplier=1.0, delta=1e-5,
                                            max_grad_norm=1.0, clipping="auto", criterion=nn.CrossEntropyLoss(),
                                            max_physical_batch_size=physical, noise_seed=5)
        assert opt.privacy.clipping == "ghost"
        for xb, yb in loader:
            opt.zero_grad()
            crit(m(xb), yb).backward()
            opt.step()
        assert opt.privacy.accountant.history == [(1.0, 0.1, 10)]
        finals[physical] = torch.cat([p.detach().flatten() for p in m.parameters()])
    torch.testing.assert_close(finals[7], finals[None], rtol=1e-5, atol=1e-6)


def test_training_config_takes_a_clipping_mode():
    from distsched.train.config import config_from_mapping

    base = {"schedule": {"name": "constant", "lr": 0.1}, "steps": 10, "workers": 1}
    for mode in ("auto", "hooks", "functorch", "ew", "ghost"):
        config_from_mapping({**base, "privacy": {"noise_multiplier": 1.0, "clipping": mode}})
    with pytest.raises(ValueError, match="privacy.clipping"):
        config_from_mapping({**base, "privacy": {"noise_multiplier": 1.0, "clipping": "fast"}})


def test_ghost_refuses_a_step_after_a_plain_backward():
    """Ghost clipping clips only through its loss wrapper: a plain ``loss.backward()`` would leave the
    gradients unclipped, so the step is refused before any noise is added or anything charged."""
    model = _mlp()
    pt = private_training(model, torch.optim.SGD(model.parameters(), lr=0.5), sample_rate=0.1,
                          expected_batch_size=64, max_grad_norm=0.1, delta=1e-5, noise=1.0, clipping="ghost")
    x, y = torch.randn(64, 6), torch.randint(0, 2, (64,))
    before = torch.cat([p.detach().flatten() for p in pt.model.parameters()])
    nn.functional.cross_entropy(pt.model(x), y).backward()
    with pytest.raises(ValueError, match="a plain loss.backward\\(\\) does not clip"):
        pt.optimizer.step()
    assert pt.accountant.steps == 0
    assert torch.equal(before, torch.cat([p.detach().flatten() for p in pt.model.parameters()]))
    pt.optimizer.zero_grad()
    crit = pt.loss_fn(nn.CrossEntropyLoss())
    crit(pt.model(x), y).backward()
    pt.optimizer.step()
    assert pt.accountant.steps == 1
    # two backward passes before one step: Opacus' ghost optimizer would charge one batch for two
    pt.optimizer.zero_grad()
    crit(pt.model(x), y).backward()
    crit(pt.model(x), y).backward()
    with pytest.raises(ValueError, match="2 backward passes before one step"):
        pt.optimizer.step()
    assert pt.accountant.steps == 1


# ------------------------------------------------------------------------------------- per-layer clipping
PER_LAYER = [0.02, 0.05, 0.1, 0.2]  # one per tensor of _mlp(): W1, b1, W2, b2; sensitivity sqrt(sum C_i^2)


def _per_layer_steps(mode, steps=3, reference=False):
    """``steps`` DP-SGD steps with per-layer thresholds: distsched's ``private_training`` in ``mode``, or
    (``reference``) Opacus' own ``GradSampleModule`` + ``DPPerLayerOptimizer`` with the same noise seed."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPPerLayerOptimizer

    torch.manual_seed(0)
    x, y = torch.randn(64, 6), torch.randint(0, 2, (64,))
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    if reference:
        model = GradSampleModule(model)
        opt = DPPerLayerOptimizer(opt, noise_multiplier=1.0, max_grad_norm=PER_LAYER, expected_batch_size=64,
                                  generator=torch.Generator().manual_seed(3))
    else:
        pt = private_training(model, opt, sample_rate=0.1, expected_batch_size=64, max_grad_norm=PER_LAYER,
                              delta=1e-5, noise=1.0, noise_seed=3, clipping=mode)
        model, opt = pt.model, pt.optimizer
        opt.clipping = pt.clipping  # the mode in use, for the test
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return opt, torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("mode", ["auto", "hooks", "functorch", "ew"])
def test_per_layer_step_is_opacus_per_layer_optimizers(mode):
    """Same seed, reproducible mode: every mode per-layer clipping composes with takes the step Opacus'
    ``DPPerLayerOptimizer`` takes (``auto`` picks hooks: ghost has no per-layer mode)."""
    ref_opt, ref = _per_layer_steps(None, reference=True)
    opt, got = _per_layer_steps(mode)
    assert opt.clipping == ("hooks" if mode == "auto" else mode)
    assert not torch.equal(got, _per_layer_steps("hooks", steps=0)[1])  # the steps moved the parameters
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    assert opt.max_grad_norm == pytest.approx(ref_opt.max_grad_norm, rel=1e-6)
    _, flat = _steps("hooks")  # flat clipping (C = 0.1) takes another step
    assert not torch.allclose(flat, got, atol=1e-4)


def test_per_layer_clipped_sum_and_noise_std_closed_form():
    """The released gradient is ``(sum_j clip_i(g_ij) + N(0, sigma^2 sum_i C_i^2)) / B``: the clipped sum
    against per-example gradients clipped by hand (``min(1, C_i / (||g_ij|| + 1e-6))``), the noise std
    against ``sigma sqrt(sum_i C_i^2)`` (secret noise, as a private run draws it)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 250), nn.Tanh(), nn.Linear(250, 4))  # 11k coordinates
    x, y = torch.randn(32, 40), torch.randint(0, 4, (32,))
    norms = [0.1, 0.2, 0.3, 0.4]
    params = list(model.parameters())
    summed = [torch.zeros_like(p) for p in params]
    for i in range(32):
        grads = torch.autograd.grad(nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params)
        summed = [s + min(1.0, c / (float(g.norm()) + 1e-6)) * g for s, g, c in zip(summed, grads, norms)]
    released = {}
    for sigma in (1e-9, 2.0):  # ~no noise: the clipped sum; then the noise alone
        m = nn.Sequential(nn.Linear(40, 250), nn.Tanh(), nn.Linear(250, 4))
        m.load_state_dict(model.state_dict())
        pt = private_training(m, torch.optim.SGD(m.parameters(), lr=0.0), sample_rate=0.1, expected_batch_size=32,
                              max_grad_norm=norms, delta=1e-5, noise=sigma)
        pt.optimizer.zero_grad()
        nn.functional.cross_entropy(pt.model(x), y).backward()
        pt.optimizer.step()
        released[sigma] = [p.grad.detach() * 32 for p in pt.model.parameters()]
        assert pt.accountant.history == [(sigma, 0.1, 1)]  # charged as flat clipping at the sensitivity
    for got, want in zip(released[1e-9], summed):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    noise = torch.cat([(r - s).flatten() for r, s in zip(released[2.0], summed)])
    sensitivity = float(np.linalg.norm(norms))  # 0.548; flat at max C_i would be 0.4, at sum C_i 1.0
    assert float(noise.std()) == pytest.approx(2.0 * sensitivity, rel=0.04)


def test_per_layer_config_splits_the_flat_threshold_and_takes_thresholds():
    """``per_layer: true`` alone: ``C_i = C / sqrt(P)`` (sensitivity C, as Opacus' examples split it);
    ``clipping_norms``: those thresholds; ``auto`` resolves to hooks."""
    from distsched.privacy import attach_privacy

    data = TensorDataset(torch.randn(100, 6), torch.randint(0, 2, (100,)))
    shards = [np.arange(100)]
    for block, want in (({"per_layer": True, "max_grad_norm": 2.0}, [1.0] * 4),
                        ({"per_layer": True, "clipping_norms": PER_LAYER}, PER_LAYER)):
        model = _mlp()
        pt, _ = attach_privacy({"noise_multiplier": 1.0, **block}, model, torch.optim.SGD(model.parameters(), lr=0.1),
                               data, shards, 0, batch_size=10, total_steps=5)
        assert pt.optimizer.max_grad_norms == pytest.approx(want)
        assert pt.optimizer.max_grad_norm == pytest.approx(float(np.linalg.norm(want)), rel=1e-6)
        assert pt.clipping == "hooks"


@pytest.mark.parametrize(("block", "mode", "needle"), [
    ({"per_layer": True, "clipping": "ghost"}, None, "privacy.per_layer: clipping 'ghost' has no per-layer"),
    ({"clipping_norms": [1.0, 1.0, 1.0, 1.0]}, None, "privacy.clipping_norms: per-layer thresholds need per_layer"),
    ({"per_layer": True, "clipping_norms": [1.0, 1.0, 1.0, 1.0], "max_grad_norm": 1.0}, None,
     "privacy.max_grad_norm: with clipping_norms"),
    ({"per_layer": True, "clipping_norms": [1.0, -1.0, 1.0, 1.0]}, None, "clipping_norms must be > 0"),
    ({"per_layer": True, "clipping_norms": [1.0, 1.0]}, "single", "the model has 4, got 2"),
    ({"per_layer": True, "clipping": "functorch"}, "group", "no per-layer clipping across workers"),
    ({"clipping": "ghost"}, "group", "'ghost' is not available in group mode"),
])
def test_clipping_combinations_refused_in_one_line(block, mode, needle):
    from distsched.privacy.config import privacy_config
    from distsched.privacy.training import check_clipping

    with pytest.raises(ValueError, match=needle) as info:
        cfg = privacy_config({"noise_multiplier": 1.0, **block})
        check_clipping(cfg, _mlp(), mode)
    assert "\n" not in str(info.value)
    if mode == "group":  # the same block runs in local mode (one DPOptimizer per worker)
        check_clipping(privacy_config({"noise_multiplier": 1.0, **block}), _mlp(), "local")


@pytest.mark.parametrize("sets", [["privacy.per_layer=true", "privacy.clipping=ghost"],
                                  ["privacy.per_layer=true", "privacy.clipping=functorch"],
                                  ["privacy.per_layer=true", "privacy.clipping_norms=[1.0, 1.0]"]])
def test_cli_refuses_a_clipping_combination_before_anything_starts(tmp_path, capsys, sets):
    """``distsched train`` with a per-layer combination Opacus has no optimizer for (ghost; functorch across
    workers in group mode) or thresholds that do not match the model: one line, exit 2, no run folder."""
    from distsched.cli import main

    argv = ["train", "examples/digits_dp.yaml", "--out", str(tmp_path / "runs")]
    for s in sets:
        argv += ["--set", s]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "privacy." in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# ------------------------------------------------------------------------ ghost clipping's memory
def _tiny_gpt():
    from distsched.data.gpt import GPT

    torch.manual_seed(2)
    return GPT(600, 8, layers=1, heads=2, dim=128)  # head 128 x 600 > NOISE_CHUNK: the noise comes in chunks


def _ghost_run(ours, steps=3):
    """``steps`` ghost-clipping steps on a tiny GPT (LayerNorm: fast gradient clipping; Linear, Embedding:
    ghost norms): distsched's (``ours``) or Opacus' own module, optimizer and loss, same noise seed."""
    from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    from distsched.data import token_cross_entropy
    from distsched.privacy import PerExampleLoss

    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 600, (16, 8), generator=g), torch.randint(0, 600, (16, 8), generator=g)
    model = _tiny_gpt()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    crit = PerExampleLoss(token_cross_entropy)
    if ours:
        pt = private_training(model, opt, sample_rate=0.1, expected_batch_size=16, max_grad_norm=0.5, delta=1e-5,
                              noise=1.0, noise_seed=3, clipping="ghost")
        model, opt, crit = pt.model, pt.optimizer, pt.loss_fn(crit)
    else:
        model = GradSampleModuleFastGradientClipping(model, max_grad_norm=0.5, use_ghost_clipping=True)
        opt = DPOptimizerFastGradientClipping(opt, noise_multiplier=1.0, max_grad_norm=0.5, expected_batch_size=16,
                                              generator=torch.Generator().manual_seed(3))
        crit = DPLossFastGradientClipping(model, opt, crit, "mean")
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        crit(model(x), y).backward()
        opt.step()
    return model, opt, crit, (x, y)


def test_ghost_step_equals_opacus_ghost_clipping():
    """distsched's ghost clipping (one backward pass, the clipped sum from the hooks' book-keeping, gradients
    moved, noise added in place in chunks) takes Opacus' two-pass step with the same noise seed, to float
    rounding (the clipped sum is added up in another order)."""
    ours, ref = _ghost_run(True)[0], _ghost_run(False)[0]
    before = torch.cat([p.detach().flatten() for p in _tiny_gpt().parameters()])
    got = torch.cat([p.detach().flatten() for p in ours.parameters()])
    assert not torch.equal(got, before)
    torch.testing.assert_close(got, torch.cat([p.detach().flatten() for p in ref.parameters()]), rtol=1e-5,
                               atol=1e-6)


def _gpt_steps(mode, steps=2):
    """``steps`` reproducible DP steps (same noise seed) on a small GPT (every layer kind of the ``gpt`` model)."""
    from distsched.data import token_cross_entropy
    from distsched.data.gpt import GPT
    from distsched.privacy import PerExampleLoss

    g = torch.Generator().manual_seed(4)
    x, y = torch.randint(0, 40, (12, 10), generator=g), torch.randint(0, 40, (12, 10), generator=g)
    torch.manual_seed(3)
    model = GPT(40, 10, layers=2, heads=2, dim=24)
    pt = private_training(model, torch.optim.SGD(model.parameters(), lr=0.5), sample_rate=0.1,
                          expected_batch_size=12, max_grad_norm=0.05, delta=1e-5, noise=0.5, noise_seed=11,
                          clipping=mode)
    crit = pt.loss_fn(PerExampleLoss(token_cross_entropy))
    for _ in range(steps):
        pt.optimizer.zero_grad()
        crit(pt.model(x), y).backward()
        pt.optimizer.step()
    return pt, torch.cat([p.detach().flatten() for p in pt.model.parameters()])


def test_ghost_step_on_gpt_equals_the_hooks_step():
    """A full DP step (clip at C = 0.05, so that every example is clipped, plus reproducible noise) in ghost
    mode on the transformer equals the step of Opacus' hooks (per-example gradients materialized)."""
    ref_pt, ref = _gpt_steps("hooks")
    pt, got = _gpt_steps("ghost")
    assert pt.clipping == "ghost" and ref_pt.clipping == "hooks"
    assert not torch.equal(got, _gpt_steps("hooks", steps=0)[1])
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_ghost_step_on_a_cnn_equals_the_hooks_step():
    """Conv2d has no closed form: ghost takes its per-example gradients (Opacus' grad sampler) and sums them
    clipped with the Linear head's closed form; the step equals the hooks step (``auto`` picks ghost here)."""
    from distsched.data.models import cnn

    g = torch.Generator().manual_seed(6)
    x, y = torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
    finals = {}
    for mode in ("hooks", "auto"):
        torch.manual_seed(2)
        model = cnn((1, 8, 8), 10, hidden=(4, 6))
        pt = private_training(model, torch.optim.SGD(model.parameters(), lr=0.5), sample_rate=0.1,
                              expected_batch_size=16, max_grad_norm=0.05, delta=1e-5, noise=0.5, noise_seed=2,
                              clipping=mode)
        crit = pt.loss_fn(nn.CrossEntropyLoss())
        for _ in range(2):
            pt.optimizer.zero_grad()
            crit(pt.model(x), y).backward()
            pt.optimizer.step()
        finals[pt.clipping] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert set(finals) == {"hooks", "ghost"}
    torch.testing.assert_close(finals["ghost"], finals["hooks"], rtol=1e-5, atol=1e-6)


def test_ghost_runs_one_backward_pass_without_weight_gradients():
    """Ghost clipping backpropagates once (Opacus: twice), and autograd computes no gradient of a layer whose
    input needs one (the clipped sums replace them): only the embeddings' are reached."""
    from distsched.data import token_cross_entropy
    from distsched.data.gpt import GPT
    from distsched.privacy import PerExampleLoss

    model = GPT(40, 10, layers=1, heads=2, dim=16)
    reached = {name: 0 for name, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        p.register_post_accumulate_grad_hook(lambda _p, name=name: reached.__setitem__(name, reached[name] + 1))
    pt = private_training(model, torch.optim.SGD(model.parameters(), lr=0.1), sample_rate=0.1,
                          expected_batch_size=4, max_grad_norm=1.0, delta=1e-5, noise=1.0, clipping="ghost")
    x = torch.randint(0, 40, (4, 10))
    out = pt.model(x)
    passes = []
    out.register_hook(lambda g: passes.append(1))
    pt.loss_fn(PerExampleLoss(token_cross_entropy))(out, x).backward()
    assert len(passes) == 1
    assert {n for n, k in reached.items() if k} == {"tok.weight", "pos.weight"}
    assert all(p.grad is not None for p in model.parameters())  # every clipped sum set
    pt.optimizer.step()


def test_ghost_with_an_input_that_requires_grad_and_with_unused_layers():
    """An input requiring grad: the full backward pass, the same step. A layer the forward does not call:
    gradient 0 (noise only). A called layer whose output the loss ignores: refused, not clipped as 0."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 6), torch.randint(0, 2, (16,))
    finals = []
    for input_grad in (False, True):
        model = _mlp()
        pt = private_training(model, torch.optim.SGD(model.parameters(), lr=0.5), sample_rate=0.1,
                              expected_batch_size=16, max_grad_norm=0.1, delta=1e-5, noise=1.0, noise_seed=3,
                              clipping="ghost")
        pt.loss_fn(nn.CrossEntropyLoss())(pt.model(x.clone().requires_grad_(input_grad)), y).backward()
        pt.optimizer.step()
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(finals[0], finals[1], rtol=1e-6, atol=1e-7)

    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.ignored, self.idle = nn.Linear(6, 2), nn.Linear(6, 2), nn.Linear(6, 2)

        def forward(self, v, call_ignored=False):
            if call_ignored:
                self.ignored(v)
            return self.used(v)

    model = Branches()
    pt = private_training(model, torch.optim.SGD(model.parameters(), lr=0.5), sample_rate=0.1,
                          expected_batch_size=16, max_grad_norm=0.1, delta=1e-5, noise=1.0, clipping="ghost")
    crit = pt.loss_fn(nn.CrossEntropyLoss())
    crit(pt.model(x), y).backward()
    assert float(model.idle.weight.grad.abs().sum()) == 0.0 and float(model.used.weight.grad.abs().sum()) > 0
    assert model.idle.weight._norm_sample.shape == (16,) and float(model.idle.weight._norm_sample.sum()) == 0
    pt.optimizer.step()
    with pytest.raises(RuntimeError, match="no per-example norm"):
        crit(pt.model(x, call_ignored=True), y).backward()


def test_secure_chunked_noise_has_the_nominal_std():
    """``secure_mode`` noise drawn in chunks: each element ``(n1 + n2 + n3 + n4) / 2``, std ``sigma C``."""
    from distsched.privacy.ghost import NOISE_CHUNK, add_noise_in_place

    t = torch.zeros(3 * NOISE_CHUNK + 5)
    add_noise_in_place(t, 0.7, torch.Generator().manual_seed(1), secure_mode=True)
    assert float(t.std()) == pytest.approx(0.7, rel=0.01) and abs(float(t.mean())) < 0.01
    assert float(t[-5:].abs().sum()) > 0  # the tail got noise too


def _peak_step_bytes(model, opt, crit, batch):
    """Peak of live tensor bytes torch allocates during one training step (its CPU allocator as the
    profiler records it: what ``torch.cuda.max_memory_allocated`` measures on a GPU)."""
    import json
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    x, y = batch
    opt.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        crit(model(x), y).backward()
        opt.step()
    with tempfile.TemporaryDirectory() as d:
        prof.export_chrome_trace(f"{d}/t.json")
        events = json.load(open(f"{d}/t.json"))["traceEvents"]
    mem = [e["args"] for e in events if e.get("name") == "[memory]"]
    start = mem[0]["Total Allocated"] - mem[0]["Bytes"]  # the profiler's running total carries over sessions
    return max(m["Total Allocated"] for m in mem) - start


def test_ghost_step_peak_memory_is_close_to_non_private():
    """At its peak, Opacus' ghost step holds a gradient-sized copy more than distsched's (first-pass
    gradients, ``summed_grad``, noise buffers), and distsched's at most half a gradient more than a plain step."""
    from distsched.data import token_cross_entropy
    from distsched.privacy import PerExampleLoss

    ours, ref = _ghost_run(True, steps=1), _ghost_run(False, steps=1)
    _, _, _, batch = ours
    plain = _tiny_gpt()
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.5)
    plain_opt.step()  # (no state for SGD without momentum)
    base = _peak_step_bytes(plain, plain_opt, PerExampleLoss(token_cross_entropy), batch)
    grads = 4 * sum(p.numel() for p in plain.parameters())
    mine, theirs = _peak_step_bytes(*ours), _peak_step_bytes(*ref)
    assert mine <= base + 0.5 * grads, (mine, base, grads)
    assert theirs >= mine + 0.9 * grads, (theirs, mine, grads)  # what the fix removed at the peak


def test_ghost_on_an_empty_batch_adds_only_noise():
    """An empty Poisson batch: the clipped sum is 0 and the step is the noise alone (std sigma C / B_expected)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 200), nn.LayerNorm(200), nn.Linear(200, 2))
    before = [p.detach().clone() for p in model.parameters()]
    pt = private_training(model, torch.optim.SGD(model.parameters(), lr=1.0), sample_rate=0.1,
                          expected_batch_size=4, max_grad_norm=2.0, delta=1e-5, noise=1.0, clipping="ghost")
    pt.loss_fn(nn.CrossEntropyLoss())(pt.model(torch.randn(0, 6)), torch.zeros(0, dtype=torch.long)).backward()
    assert all(float(p.grad.abs().sum()) == 0 for p in model.parameters())
    pt.optimizer.step()
    moved = torch.cat([(b - p.detach()).flatten() for p, b in zip(model.parameters(), before)])
    assert float(moved.std()) == pytest.approx(2.0 / 4, rel=0.05)
