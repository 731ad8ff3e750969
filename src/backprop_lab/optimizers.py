"""Optimizers built from plain settings, so that checkpoints hold no Hydra objects."""

import math

import torch

# The optimizers a config may name, with the keyword arguments each accepts.
OPTIMIZERS = {
    "sgd": (torch.optim.SGD, ("lr", "momentum", "dampening", "weight_decay", "nesterov")),
    "adam": (torch.optim.Adam, ("lr", "betas", "eps", "weight_decay", "amsgrad")),
}


# Learning rates multiply float32 gradients; a larger one overflows inside the update itself.
FLOAT32_MAX = torch.finfo(torch.float32).max


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_optimizer_settings(name: str, settings: dict) -> None:
    """Raise ValueError naming the first setting that the optimizer cannot take."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer.name={name!r} is not allowed; choose one of: "
                         f"{', '.join(OPTIMIZERS)}")
    _, allowed = OPTIMIZERS[name]
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ValueError(
            f"optimizer.{unknown[0]} is not a setting of {name}; allowed: {', '.join(allowed)}"
        )
    lr = settings.get("lr")
    if not _is_number(lr) or not 0 < lr <= FLOAT32_MAX:
        raise ValueError(f"optimizer.lr={lr!r} is not allowed; it must be a finite number "
                         "above 0")
    momentum = settings.get("momentum", 0.0)
    if not _is_number(momentum) or not 0 <= momentum < 1:
        raise ValueError(f"optimizer.momentum={momentum!r} is not allowed; it must be a number "
                         "in [0, 1)")


def build_optimizer(params, name: str = "sgd", **settings) -> torch.optim.Optimizer:
    """The optimizer called ``name`` ("sgd" or "adam") over ``params`` with ``settings``."""
    check_optimizer_settings(name, settings)
    cls, _ = OPTIMIZERS[name]
    return cls(params, **settings)
