"""The guarantee a DP user is promised (issue 9): secret noise by default, no unprivatized signal steering
training, no resume that drops the budget, no overspending by gradient accumulation, bounded PRV memory,
small targets reachable with RDP, and the drop-in ``make_private``."""

from __future__ import annotations

import copy
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distsched.privacy import (
    RDP_ORDERS,
    BudgetExhausted,
    attach_privacy,
    epsilon,
    make_private,
    plan,
    private_training,
)

warnings.filterwarnings("ignore", message="Full backward hook")
warnings.filterwarnings("ignore", message="Optimal order")


def _data(n=200, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# -- 1. secret noise by default ---------------------------------------------------------------


def _attached_step(reproducible: bool, state=None):
    """One DP step of a freshly attached worker (same config, same model, same data); returns the
    parameters after it, the loader's first batch and the privacy state."""
    data = _data()
    model = _model()
    cfg = {"noise_multiplier": 1.0, "delta": 1e-5, "reproducible": reproducible}
    pt, loader = attach_privacy(cfg, model, torch.optim.SGD(model.parameters(), lr=0.5), data,
                                [np.arange(200)], 0, batch_size=20, total_steps=10, seed=3)
    if state is not None:
        pt.load_state_dict(state)
    batch = loader.batch_sampler.draw(0)
    x, y = data.tensors[0][:20], data.tensors[1][:20]
    pt.optimizer.zero_grad()
    pt.loss_fn(nn.CrossEntropyLoss())(pt.model(x), y).backward()  # clipping auto: ghost for this MLP
    pt.optimizer.step()
    pt.after_step()
    return _flat(pt.model), batch, pt.state_dict()


def test_two_runs_of_one_config_draw_different_noise_and_batches_unless_reproducible():
    """Before: the noise seed was ``seed * 1_000_003 + rank`` and the batches came from ``seed``, both in
    config.yaml: two runs were identical and the noise could be subtracted from a released gradient."""
    a, batch_a, state_a = _attached_step(reproducible=False)
    b, batch_b, _ = _attached_step(reproducible=False)
    assert not torch.equal(a, b) and batch_a != batch_b
    assert "noise_rng" not in state_a and state_a["reproducible"] is False  # the secret is never written
    c, batch_c, state_c = _attached_step(reproducible=True)
    d, batch_d, _ = _attached_step(reproducible=True)
    assert torch.equal(c, d) and batch_c == batch_d and "noise_rng" in state_c


def test_private_noise_uses_opacus_secure_mode_and_a_resume_draws_fresh_noise():
    model = _model()
    pt = private_training(model, torch.optim.SGD(model.parameters(), lr=0.1), sample_rate=0.1,
                          expected_batch_size=20, max_grad_norm=1.0, delta=1e-5, noise=1.0)
    assert pt.optimizer.secure_mode and not pt.reproducible
    # resuming a secure run from the same state twice: the two continuations differ
    _, _, state = _attached_step(reproducible=False)
    first, _, _ = _attached_step(reproducible=False, state=state)
    second, _, _ = _attached_step(reproducible=False, state=state)
    assert not torch.equal(first, second)
    # a reproducible run resumed twice continues identically
    _, _, state = _attached_step(reproducible=True)
    assert torch.equal(_attached_step(True, state)[0], _attached_step(True, state)[0])


def _fed_config(reproducible: bool):
    return {
        "rounds": 2, "seed": 1, "data": {"name": "digits"},
        "partition": {"scheme": "iid", "num_clients": 20}, "sampling": {"fraction": 0.5, "poisson": True},
        "dp": {"noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 1e-4, "reproducible": reproducible},
    }


def test_dp_fedavg_noise_and_cohorts_are_secret_unless_reproducible():
    """Before: the server noise came from ``round_rng(cfg.seed, round)`` and the cohorts from ``cfg.seed``."""
    from distsched.federated.simulation import Simulation

    def round0(reproducible):
        sim = Simulation(_fed_config(reproducible))
        dim = sim.params.numel()
        result = SimpleNamespace(update_sum=np.ones(dim), weight_sum=3.0, unclipped=2, clients=[0, 1, 2],
                                 losses=np.zeros(3))
        mean, info = sim.combine(0, [result])
        return mean, [tuple(sim.sampler.sample(r).participants) for r in range(4)], info

    m1, c1, _ = round0(False)
    m2, c2, _ = round0(False)
    assert not np.array_equal(m1, m2) and c1 != c2
    m3, c3, _ = round0(True)
    m4, c4, _ = round0(True)
    assert np.array_equal(m3, m4) and c3 == c4


# -- 2. only privatized signals steer training ------------------------------------------------

_TRAIN = {"schedule": {"name": "constant", "lr": 0.1}, "steps": 10, "workers": 1,
          "privacy": {"noise_multiplier": 1.0, "delta": 1e-5}}


@pytest.mark.parametrize(("extra", "where"), [
    ({"controller": {"name": "plateau", "factor": 0.5, "patience": 2}}, "controller:"),
    ({"sync": {"name": "adacomm", "h_0": 2}}, "sync.name: AdaComm"),
])
def test_loss_driven_blocks_are_refused_with_privacy(extra, where, tmp_path, capsys):
    """Before: a plateau controller or AdaComm read the raw loss with DP on (LR 0.1 -> 0.005, H 4 -> 18)
    while epsilon did not move."""
    import yaml

    from distsched.cli import main
    from distsched.train.config import config_from_mapping

    with pytest.raises(ValueError, match=where):
        config_from_mapping({**_TRAIN, **extra})
    config_from_mapping({k: v for k, v in {**_TRAIN, **extra}.items() if k != "privacy"})  # fine without DP
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**_TRAIN, **extra}))
    assert main(["train", str(path), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and where in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("sync", [{"rule": "fixed", "h": 4}, {"rule": "qsr", "h_base": 2, "alpha": 0.2},
                                  {"rule": "post_local", "switch_step": 5, "h": 4}])
def test_lr_and_step_driven_sync_rules_stay_allowed(sync):
    from distsched.train.config import config_from_mapping

    config_from_mapping({**_TRAIN, "sync": sync})


def test_federated_records_mark_unprivatized_metrics():
    from distsched.federated.dp import NOT_PRIVATE_METRICS
    from distsched.federated.simulation import RoundRecord

    assert set(NOT_PRIVATE_METRICS) == {"train_loss", "unclipped_fraction"}
    assert set(NOT_PRIVATE_METRICS) <= {f for f in RoundRecord.__dataclass_fields__}


# -- 3. a resume cannot drop or loosen the budget ----------------------------------------------


def _pt(**kw):
    model = _model()
    args = {"sample_rate": 0.1, "expected_batch_size": 20, "max_grad_norm": 1.0, "delta": 1e-5, "noise": 1.0}
    return private_training(model, torch.optim.SGD(model.parameters(), lr=0.1), **{**args, **kw})


def test_resume_that_drops_or_loosens_the_budget_or_accountant_is_refused():
    """Before: a checkpoint with a guard, loaded without a target, silently ran past the budget."""
    saved = _pt(target_epsilon=3.0)
    saved.accountant.step(1.0, 0.1, 50)
    state = saved.state_dict()
    for kw, match in [({}, "privacy.target_epsilon: .*cannot drop"),
                      ({"target_epsilon": 5.0}, "privacy.target_epsilon: .*cannot raise"),
                      ({"target_epsilon": 3.0, "accountant": "prv"}, "privacy.accountant"),
                      ({"target_epsilon": 3.0, "delta": 1e-3}, "privacy.delta"),
                      ({"target_epsilon": 3.0, "eps_error": 0.1}, "privacy.eps_error")]:
        with pytest.raises(ValueError, match=match):
            _pt(**kw).load_state_dict(copy.deepcopy(state))
    tighter = _pt(target_epsilon=2.0)
    tighter.load_state_dict(state)
    assert tighter.guard.target_epsilon == 2.0 and tighter.accountant.steps == 50


# -- 4. gradient accumulation is charged what the guard checked ---------------------------------


def _two_backward_then_step(pt, data):
    x, y = data.tensors
    for sl in (slice(0, 20), slice(20, 40)):
        nn.functional.cross_entropy(pt.model(x[sl]), y[sl]).backward()
    pt.optimizer.step()


def test_gradient_accumulation_cannot_overspend():
    """Before: with two backward() before one step() the guard checked (sigma, q) and the hook charged 2q
    (epsilon 1.164 > target 1.136)."""
    sigma, q = 1.0, 0.1
    one, two = epsilon([(sigma, q, 1)], 1e-5), epsilon([(sigma, 2 * q, 1)], 1e-5)
    target = (one + two) / 2
    pt = _pt(noise=sigma, target_epsilon=target)
    assert pt.allows_next_step()  # one backward would fit
    before = _flat(pt.model)
    with pytest.raises(BudgetExhausted, match="sample_rate=0.2"):
        _two_backward_then_step(pt, _data())
    assert pt.accountant.steps == 0 and torch.equal(_flat(pt.model), before)  # nothing taken, nothing charged
    ok = _pt(noise=sigma, target_epsilon=two)
    _two_backward_then_step(ok, _data())
    assert ok.accountant.history == [(sigma, 2 * q, 1)] and ok.epsilon <= two


def _loop(model, optimizer, loader, epochs=1):
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()


def test_make_private_virtual_steps_charge_once_per_logical_batch():
    data = _data(n=400)
    runs = {}
    for physical in (None, 7):
        model = _model()
        m, opt, loader = make_private(model, torch.optim.SGD(model.parameters(), lr=0.5),
                                      DataLoader(data, batch_size=40), noise_multiplier=1.2, max_grad_norm=1.0,
                                      delta=1e-5, max_physical_batch_size=physical, noise_seed=11)
        sizes = []
        for x, y in loader:
            sizes.append(len(x))
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
        runs[physical] = (_flat(m), opt.privacy.accountant.history, sizes)
    assert runs[None][1] == runs[7][1] == [(1.2, 0.1, 10)]  # 10 logical steps per epoch, one charge each
    assert max(runs[7][2]) <= 7 < max(runs[None][2])
    torch.testing.assert_close(runs[7][0], runs[None][0], rtol=1e-5, atol=1e-6)  # same clipped sum, same noise


def test_make_private_plans_the_noise_guards_the_budget_and_refuses_other_loaders():
    data = _data(n=400)
    model = _model()
    m, opt, loader = make_private(model, torch.optim.SGD(model.parameters(), lr=0.5),
                                  DataLoader(data, batch_size=40, shuffle=True), target_epsilon=2.0, delta=1e-5,
                                  epochs=3, max_grad_norm=1.0)
    _loop(m, opt, loader, epochs=3)
    expected = plan(target_epsilon=2.0, delta=1e-5, sample_rate=0.1, steps=30)
    assert opt.privacy.accountant.history == [(expected.noise_multiplier, 0.1, 30)]
    assert opt.privacy.epsilon <= 2.0
    with pytest.raises(BudgetExhausted):  # the budget is spent: a 4th epoch is refused at its first step
        _loop(m, opt, loader)
    # steps on batches of one's own (shuffled) loader are refused: not the sampling the accountant charges
    model = _model()
    m, opt, loader = make_private(model, torch.optim.SGD(model.parameters(), lr=0.5),
                                  DataLoader(data, batch_size=40), noise_multiplier=1.0, delta=1e-5,
                                  max_grad_norm=1.0)
    with pytest.raises(ValueError, match="Poisson loader"):
        _loop(m, opt, DataLoader(data, batch_size=40, shuffle=True))


def test_batchnorm_model_is_refused_naming_the_fix():
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"opacus\.validators\.ModuleValidator\.fix\(model\)"):
        make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), DataLoader(_data(), batch_size=20),
                     noise_multiplier=1.0, delta=1e-5, max_grad_norm=1.0)


# -- 5. PRV memory, 6. the RDP floor -------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["epsilon", "--accountant", "prv", "--sigma", "0.05", "--sample-rate", "0.01", "--steps", "1000",
     "--delta", "1e-5"],
])
def test_prv_that_would_allocate_gigabytes_is_refused_in_one_line(argv, capsys):
    """Before: 25-132 GiB allocations and a traceback."""
    from distsched.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "GiB" in err and "'rdp'" in err


def test_small_targets_are_reachable_with_rdp():
    """Before: Opacus' orders stop at 63, so epsilon < 0.103 at delta 1e-5 was refused ("take fewer steps")."""
    p = plan(target_epsilon=0.1, delta=1e-5, sample_rate=0.01, steps=1000)
    ref = RDPAccountant()
    ref.history = [(p.noise_multiplier, 0.01, 1000)]
    assert 0.1 - 1e-3 <= p.epsilon <= 0.1
    assert ref.get_epsilon(delta=1e-5, alphas=list(RDP_ORDERS)) == pytest.approx(p.epsilon, rel=1e-12)
    with pytest.raises(ValueError, match="larger delta or accountant 'prv'"):
        plan(target_epsilon=0.001, delta=1e-5, sample_rate=0.01, steps=1000)
    # the hint is true: a larger delta reaches it
    assert plan(target_epsilon=0.003, delta=0.1, sample_rate=0.01, steps=1000).epsilon <= 0.003
