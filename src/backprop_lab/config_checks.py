"""Checks of a composed config that fail before any training starts, with one clear message."""

from numbers import Integral, Real

from omegaconf import DictConfig, OmegaConf

from backprop_lab.network import BACKWARDS, INIT_SCHEMES, LOSSES
from backprop_lab.optimizers import check_optimizer_settings


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what is allowed."""


def _choice(cfg: DictConfig, key: str, allowed) -> None:
    value = OmegaConf.select(cfg, key)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _positive_int(cfg: DictConfig, key: str, allow_none: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        extra = " or null" if allow_none else ""
        raise ConfigError(f"{key}={value!r} is not allowed; it must be an integer >= 1{extra}")


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first value in ``cfg`` that training cannot use."""
    _choice(cfg, "model.backward", BACKWARDS)
    _choice(cfg, "model.loss", LOSSES)
    _choice(cfg, "model.init.scheme", INIT_SCHEMES)
    for key in ("model.n_inputs", "model.n_hidden", "model.n_outputs"):
        _positive_int(cfg, key)
    if not isinstance(cfg.model.bias, bool):
        raise ConfigError(f"model.bias={cfg.model.bias!r} is not allowed; use true or false")
    scale = cfg.model.init.scale
    if isinstance(scale, bool) or not isinstance(scale, Real) or not scale > 0:
        raise ConfigError(f"model.init.scale={scale!r} is not allowed; it must be above 0")

    seed = cfg.seed
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ConfigError(f"seed={seed!r} is not allowed; it must be an integer >= 0")
    target = cfg.get("target_loss")
    if target is not None and (isinstance(target, bool) or not isinstance(target, Real)):
        raise ConfigError(f"target_loss={target!r} is not allowed; it must be a number or null")

    settings = OmegaConf.to_container(cfg.optimizer, resolve=True)
    name = settings.pop("name", None)
    try:
        check_optimizer_settings(name, settings)
    except ValueError as err:
        raise ConfigError(str(err)) from None

    _positive_int(cfg, "data.batch_size", allow_none=True)
    max_epochs = cfg.trainer.get("max_epochs")
    if max_epochs != -1:
        _positive_int(cfg, "trainer.max_epochs")
