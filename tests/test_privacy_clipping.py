"""Per-example clipping modes (``privacy.clipping``): every mode takes the same DP-SGD step as Opacus' hooks
(same clipped sum, same noise), ``auto`` picks a mode that supports every layer, and ghost clipping works in
``make_private`` (with virtual steps) and in the training loop."""

from __future__ import annotations

import warnings

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
    assert resolve_clipping(lm, "auto") == "ghost"          # norm samplers for Embedding and Linear
    assert resolve_clipping(conv, "auto") == "hooks"        # no norm sampler for Conv2d
    assert resolve_clipping(attention, "auto") == "hooks"   # no grad sampler: Opacus' hooks use torch.func
    assert not supports(attention, "ew") and supports(conv, "ew")
    with pytest.raises(ValueError, match="clipping 'ghost' does not support every layer .*Conv2d"):
        resolve_clipping(conv, "ghost")


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
