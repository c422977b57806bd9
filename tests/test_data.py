"""The shared data layer: one factory contract for ``train`` and ``simulate``, one digits loader, one
MLP, and the old simulate factory forms refused with a one-line pointer to the new one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distsched.data import ArrayData, arrays_from_factory, bundle_from_factory, digits, digits_flat, mlp
from distsched.federated import fed_config
from distsched.train import DataConfig, ModelConfig


def _arrays(n: int = 20):
    rng = np.random.default_rng(0)
    return rng.random((n, 2, 3)), np.arange(n) % 4, rng.random((6, 2, 3)), np.arange(6) % 4


def _pair():
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(12, 5, generator=g), torch.arange(12) % 3), TensorDataset(
        torch.rand(4, 5, generator=g), torch.tensor([0, 1, 2, 0])
    )


def _model(input_shape, num_classes, width=7):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(input_shape)), width),
                               torch.nn.Linear(width, num_classes))


@pytest.mark.parametrize("factory", ["_arrays", "_pair"])
def test_one_data_factory_serves_train_and_simulate(factory):
    path = f"{__name__}:{factory}"
    bundle, arrays = bundle_from_factory(path), arrays_from_factory(path)
    assert isinstance(arrays, ArrayData) and bundle.input_shape == arrays.input_shape
    assert bundle.num_classes == arrays.num_classes
    x_train = torch.stack([bundle.train[i][0] for i in range(len(bundle.train))])
    assert np.array_equal(x_train.numpy(), arrays.x_train) and np.array_equal(bundle.targets, arrays.y_train)
    assert len(bundle.test) == len(arrays.y_test)


def test_one_model_factory_serves_train_and_simulate():
    path = f"{__name__}:_model"
    train_model = ModelConfig(name=path, kwargs={"width": 3}).build((2, 3), 4)
    cfg = fed_config({"rounds": 1, "sampling": {"cohort_size": 2}, "model": {"name": path, "kwargs": {"width": 3}}})
    from distsched.data import build_model

    sim_model = build_model(cfg.model.name, (2, 3), 4, cfg.model.hidden, cfg.model.kwargs)
    assert train_model[1].weight.shape == sim_model[1].weight.shape == (3, 6)


def test_digits_are_the_same_pixels_for_train_and_simulate():
    flat, images = digits_flat(test_size=297, seed=0), digits(test_fraction=0.2, seed=0)
    all_flat = np.sort(np.concatenate([flat.x_train, flat.x_test]).reshape(-1, 64), axis=0)
    x_img = torch.cat([images.train.tensors[0], images.test.tensors[0]]).reshape(-1, 64).numpy()
    assert np.array_equal(all_flat, np.sort(x_img, axis=0))


def test_mlp_takes_a_feature_count_or_a_shape():
    torch.manual_seed(0)
    a = mlp(64, 10, (16,))
    torch.manual_seed(0)
    b = mlp((1, 8, 8), 10, (16,))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize(
    "block, message",
    [
        ({"data": {"name": "factory", "params": {"factory": "m:f"}}}, "data.name 'factory' was replaced"),
        ({"model": {"factory": "m:f"}}, "model.factory/model.params were replaced"),
        ({"data": {"name": "m:f", "params": {"n": 1}}}, "a factory takes data.kwargs"),
        ({"model": {"name": "resnet"}}, "model.name must be one of 'mlp', 'cnn', 'gpt' or an import path"),
    ],
)
def test_old_simulate_factory_forms_are_refused(block, message):
    with pytest.raises(ValueError, match=message):
        fed_config({"rounds": 1, "sampling": {"cohort_size": 2}, **block})


def test_train_data_config_loads_a_factory():
    bundle = DataConfig(name=f"{__name__}:_pair").load(seed=0)
    assert bundle.input_shape == (5,) and bundle.num_classes == 3
