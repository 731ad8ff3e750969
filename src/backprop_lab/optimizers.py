"""Optimizers built from plain settings, so that checkpoints hold no Hydra objects."""

import torch

# The optimizers a config may name, with the keyword arguments each accepts.
OPTIMIZERS = {
    "sgd": (torch.optim.SGD, ("lr", "momentum", "dampening", "weight_decay", "nesterov")),
    "adam": (torch.optim.Adam, ("lr", "betas", "eps", "weight_decay", "amsgrad")),
}


def check_optimizer_settings(name: str, settings: dict) -> None:
    """Raise ValueError naming the first setting that the optimizer cannot take."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer.name={name!r} is not one of: {', '.join(OPTIMIZERS)}")
    _, allowed = OPTIMIZERS[name]
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ValueError(
            f"optimizer.{unknown[0]} is not a setting of {name}; allowed: {', '.join(allowed)}"
        )
    lr = settings.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"optimizer.lr={lr!r} is not allowed; it must be a number above 0")
    momentum = settings.get("momentum", 0.0)
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or momentum < 0:
        raise ValueError(f"optimizer.momentum={momentum!r} is not allowed; it must be >= 0")


def build_optimizer(params, name: str = "sgd", **settings) -> torch.optim.Optimizer:
    """The optimizer called ``name`` ("sgd" or "adam") over ``params`` with ``settings``."""
    check_optimizer_settings(name, settings)
    cls, _ = OPTIMIZERS[name]
    return cls(params, **settings)
