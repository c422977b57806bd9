"""Foundation checks: the adapter against torch's CosineAnnealingLR, resume, the Ray fixture."""

from __future__ import annotations

import pickle

import pytest
import torch

from distsched import schedules as S


def _sgd(groups: int = 3) -> torch.optim.Optimizer:
    params = [{"params": [torch.nn.Parameter(torch.zeros(1))]} for _ in range(groups)]
    return torch.optim.SGD(params, lr=0.1)


def test_adapter_matches_torch_cosine():
    opt_ref, opt = _sgd(), _sgd()
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt_ref, T_max=1000, eta_min=1e-3)
    ours = S.ScheduledLR(opt, S.cosine(lr=0.1, total_steps=1000, min_lr=1e-3))
    for _ in range(1000):
        assert ours.get_last_lr() == pytest.approx(ref.get_last_lr(), rel=1e-9)
        opt_ref.step()
        opt.step()
        ref.step()
        ours.step()


def test_resume_from_state_dict_gives_same_sequence():
    sched = S.warmup(S.cosine(lr=0.1, total_steps=200), warmup_steps=20)
    a = S.ScheduledLR(_sgd(), sched, multipliers=[1.0, 0.5, 0.25])
    full = []
    for _ in range(150):
        full.append(a.get_last_lr())
        a.step()
    b = S.ScheduledLR(_sgd(), sched, multipliers=[1.0, 0.5, 0.25])
    for _ in range(70):
        b.step()
    c = S.ScheduledLR(_sgd(), sched)
    c.load_state_dict(pickle.loads(pickle.dumps(b.state_dict())))
    resumed = full[:70]
    for _ in range(80):
        resumed.append(c.get_last_lr())
        c.step()
    assert resumed == full


def test_invalid_parameter_names_parameter():
    with pytest.raises(ValueError, match="total_steps"):
        S.cosine(lr=0.1, total_steps=0)
    with pytest.raises(ValueError, match="min_lr"):
        S.cosine(lr=0.1, total_steps=10, min_lr=0.2)


def test_ray_fixture_runs_real_tasks(ray_cluster):
    import ray

    @ray.remote
    def square(x: int) -> int:
        return x * x

    assert ray.get([square.remote(i) for i in range(5)]) == [0, 1, 4, 9, 16]
    assert ray.cluster_resources()["CPU"] == 2


def test_embedded_cluster_listens_on_loopback_with_token_auth(ray_cluster):
    import psutil
    import ray
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    assert is_token_auth_enabled()
    node = ray.nodes()[0]
    assert node["NodeManagerAddress"] == "127.0.0.1"
    gcs_port = int(ray_cluster["address"].rsplit(":", 1)[1])
    ports = {gcs_port, node["NodeManagerPort"], node["ObjectManagerPort"]}
    listening = {
        c.laddr.port: c.laddr.ip for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN
    }
    for port in ports:
        assert port in listening, port
        assert listening[port] in ("127.0.0.1", "::ffff:127.0.0.1"), (port, listening[port])
