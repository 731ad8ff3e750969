"""Optimizers from plain settings."""

import re

import pytest
import torch

from backprop_lab.optimizers import build_optimizer


def test_sgd_with_momentum_and_adam_are_built_with_their_settings():
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = build_optimizer(params, name="sgd", lr=0.5, momentum=0.9)
    adam = build_optimizer(params, name="adam", lr=0.01, betas=[0.8, 0.99])
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
    assert isinstance(adam, torch.optim.Adam) and tuple(adam.defaults["betas"]) == (0.8, 0.99)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"name": "rmsprop", "lr": 0.1}, "optimizer.name='rmsprop' is not allowed; choose one of: sgd, adam"),
        ({"name": "sgd", "lr": -0.1}, "optimizer.lr=-0.1 is not allowed"),
        ({"name": "sgd", "lr": 0}, "optimizer.lr=0 is not allowed"),
        ({"name": "sgd", "lr": "fast"}, "optimizer.lr='fast' is not allowed"),
        ({"name": "sgd", "lr": 0.1, "momentum": -1}, "optimizer.momentum=-1 is not allowed"),
        ({"name": "sgd", "lr": 0.1, "momentum": 1.0}, "optimizer.momentum=1.0 is not allowed"),
        ({"name": "sgd", "lr": float("inf")}, "optimizer.lr=inf is not allowed"),
        ({"name": "sgd", "lr": 1e308}, "optimizer.lr=1e+308 is not allowed"),
        ({"name": "sgd", "lr": 0.1, "betas": [0.9, 0.9]}, "optimizer.betas is not a setting"),
    ],
)
def test_bad_optimizer_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], **settings)
