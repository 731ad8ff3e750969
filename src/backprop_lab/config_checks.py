"""Checks of a composed config's values that fail before any training starts, in one line.

These read values only; ``backprop_lab.run.validate`` adds the checks that need the objects
built (explicit weights, optimizer settings that torch refuses, data against model widths).
The lists of allowed names live next to the code that uses them and import torch, so they are
imported only when a check runs: ``backprop-train --help`` and ``--cfg job`` never need them.
"""

import math
import os
from numbers import Integral, Real
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# Seeds go to numpy as well as torch, and numpy takes 32-bit seeds only.
MAX_SEED = 2**32 - 1
# Wider layers are not what this project is for, and a typo such as 100000000 would hang.
MAX_WIDTH = 10_000
# Members of one population; 100 000 networks of the default size are still a few MB.
MAX_POPULATION = 100_000
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
# Limitation: bf16-true and 16-mixed are left out: with bfloat16 weights, or float16 and its
# gradient scaler, the parity check's float32 tolerances do not apply.
PRECISIONS = ("32-true", "64-true", "bf16-mixed")
# metrics.json keys a hyper-parameter sweeper may minimise.
OPTIMIZED_METRICS = ("val_loss", "test_loss", "train_loss", "epochs_to_target")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what is allowed."""


def _value(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, throw_on_missing=False)


def _choice(cfg: DictConfig, key: str, allowed) -> None:
    value = _value(cfg, key)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _boolean(cfg: DictConfig, key: str) -> None:
    value = _value(cfg, key)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} is not allowed; use true or false")


def _integer(cfg: DictConfig, key: str, low: int, high: int | None = None,
             allow_none: bool = False) -> None:
    value = _value(cfg, key)
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low or (
            high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        extra = " or null" if allow_none else ""
        raise ConfigError(f"{key}={value!r} is not allowed; it must be an integer {bound}{extra}")


def _number(cfg: DictConfig, key: str, low: float, inclusive: bool = True,
            allow_none: bool = False) -> None:
    value = _value(cfg, key)
    if value is None and allow_none:
        return
    ok = (not isinstance(value, bool) and isinstance(value, Real) and math.isfinite(value)
          and (value >= low if inclusive else value > low))
    if not ok:
        bound = f">= {low}" if inclusive else f"above {low}"
        extra = " or null" if allow_none else ""
        raise ConfigError(f"{key}={value!r} is not allowed; it must be a finite number {bound}"
                          f"{extra}")


def _one_or_per_layer(cfg: DictConfig, key: str, n_layers: int, ok, allowed: str) -> None:
    """``key`` holds one allowed value, or a list of ``n_layers`` of them."""
    value = _value(cfg, key)
    values = list(value) if OmegaConf.is_list(value) else [value]
    if OmegaConf.is_list(value) and len(values) != n_layers:
        raise ConfigError(f"{key}={values} is not allowed; give one value or {n_layers}, one per "
                          "layer")
    for item in values:
        if not ok(item):
            raise ConfigError(f"{key}={item!r} is not allowed; use {allowed}")


def _check_model(cfg: DictConfig) -> None:
    from backprop_lab.manual_backward import ACTIVATIONS, REDUCTIONS
    from backprop_lab.network import BACKWARDS, INIT_SCHEMES, LOSSES, MANUAL_IMPLS

    _choice(cfg, "model.backward", BACKWARDS)
    _choice(cfg, "model.manual_impl", MANUAL_IMPLS)
    _choice(cfg, "model.loss", LOSSES)
    _choice(cfg, "model.init.scheme", INIT_SCHEMES)
    _choice(cfg, "model.reduction", REDUCTIONS)
    _choice(cfg, "model.output_activation", ACTIVATIONS)
    for key in ("model.n_inputs", "model.n_outputs"):
        _integer(cfg, key, 1, MAX_WIDTH, allow_none=True)
    hidden = _value(cfg, "model.hidden")
    if not OmegaConf.is_list(hidden) or len(hidden) == 0:
        raise ConfigError(f"model.hidden={hidden!r} is not allowed; give a list of widths such "
                          "as [2] or [4, 4]")
    for i in range(len(hidden)):
        _integer(cfg, f"model.hidden.{i}", 1, MAX_WIDTH)
    _one_or_per_layer(cfg, "model.activation", len(hidden), lambda v: v in ACTIVATIONS,
                      f"one of: {', '.join(ACTIVATIONS)}")
    for key in ("model.bias", "model.freeze_bias"):
        _one_or_per_layer(cfg, key, len(hidden) + 1, lambda v: isinstance(v, bool),
                          "true or false")
    if _value(cfg, "model.loss") == "bce" and _value(cfg, "model.output_activation") != "identity":
        raise ConfigError(f"model.loss=bce takes the output as logits; model.output_activation="
                          f"{_value(cfg, 'model.output_activation')!r} must be identity")
    _number(cfg, "model.init.scale", 0.0, inclusive=False)
    _integer(cfg, "model.population", 1, MAX_POPULATION)
    _integer(cfg, "model.init.seed", 0, MAX_SEED - _value(cfg, "model.population") + 1)


def _check_population(cfg: DictConfig) -> None:
    """A population trains its members independently only if nothing mixes their gradients.

    SGD (with or without momentum, weight decay, Nesterov) and Adam update each weight from its
    own gradient, so they keep members apart; clipping by the global gradient norm scales all
    members by one factor computed from all of them, and so couples them.
    """
    if _value(cfg, "model.population") == 1:
        return
    clip = _value(cfg, "trainer.gradient_clip_val")
    algorithm = _value(cfg, "trainer.gradient_clip_algorithm") or "norm"
    if clip not in (None, 0, 0.0) and algorithm != "value":
        raise ConfigError(
            f"model.population={_value(cfg, 'model.population')} with trainer.gradient_clip_val="
            f"{clip} (clipping by the norm of all gradients) would couple the members; use "
            "trainer.gradient_clip_algorithm=value, which clips each entry on its own, or no "
            "clipping")
    if _value(cfg, "compare"):
        raise ConfigError("compare=true trains single networks; run a population in each mode "
                          "with -m model.backward=manual,autograd instead")


def _check_optimizer(cfg: DictConfig) -> None:
    from backprop_lab.optimizers import check_optimizer_settings

    settings = OmegaConf.to_container(cfg.optimizer, resolve=True)
    name = settings.pop("name", None)
    try:
        check_optimizer_settings(name, settings)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _check_trainer(cfg: DictConfig) -> None:
    if _value(cfg, "trainer.max_epochs") != -1:
        _integer(cfg, "trainer.max_epochs", 1)
    _integer(cfg, "trainer.min_epochs", 0, allow_none=True)
    max_epochs, min_epochs = _value(cfg, "trainer.max_epochs"), _value(cfg, "trainer.min_epochs")
    if min_epochs is not None and max_epochs != -1 and min_epochs > max_epochs:
        raise ConfigError(f"trainer.min_epochs={min_epochs} is not allowed; it must not exceed "
                          f"trainer.max_epochs={max_epochs}")
    _integer(cfg, "trainer.check_val_every_n_epoch", 1, allow_none=True)
    _boolean(cfg, "trainer.deterministic")
    _choice(cfg, "trainer.accelerator", ACCELERATORS)
    _choice(cfg, "trainer.precision", PRECISIONS)
    devices = _value(cfg, "trainer.devices")
    if devices not in ("auto", -1):
        _integer(cfg, "trainer.devices", 1)
    if _value(cfg, "trainer.accelerator") in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.accelerator={_value(cfg, 'trainer.accelerator')} needs a "
                              "CUDA device and none is visible; use trainer=cpu or trainer=auto")


def check_log_dir(cfg: DictConfig) -> None:
    """paths.log_dir must be, or be creatable as, a writable directory."""
    log_dir = _value(cfg, "paths.log_dir")
    if not isinstance(log_dir, str) or not log_dir:
        raise ConfigError(f"paths.log_dir={log_dir!r} is not allowed; give a directory path")
    existing = Path(log_dir).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"paths.log_dir={log_dir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"paths.log_dir={log_dir}: {existing} is not writable")


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first value in ``cfg`` that training cannot use."""
    # The seed first: model.init.seed and the data's seed are interpolations of it.
    _integer(cfg, "seed", 0, MAX_SEED)
    _check_model(cfg)
    _number(cfg, "target_loss", 0.0, allow_none=True)
    for key in ("evaluate", "plots", "compare"):
        _boolean(cfg, key)
    _choice(cfg, "optimized_metric", OPTIMIZED_METRICS)
    _check_optimizer(cfg)
    _check_population(cfg)
    _integer(cfg, "data.batch_size", 1, allow_none=True)
    _check_trainer(cfg)
    check_log_dir(cfg)
    ckpt_path = _value(cfg, "ckpt_path")
    if ckpt_path is not None and Path(str(ckpt_path)).is_dir():
        raise ConfigError(f"ckpt_path={ckpt_path} is a directory; give the checkpoint file, "
                          "e.g. checkpoints/last.ckpt inside a run directory")
    if ckpt_path is not None and not Path(str(ckpt_path)).is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file")
