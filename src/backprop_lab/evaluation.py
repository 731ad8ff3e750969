"""Evaluate a trained checkpoint on a data set, and predict new points with it.

``evaluate(cfg)`` checks everything first (the checkpoint loads, the data builds and fits the
network, the points file reads), and only then creates the output directory, so that a bad
input leaves nothing behind. It returns what ``metrics.json`` holds.
"""

import csv
import logging
import os
import time
from pathlib import Path

from omegaconf import DictConfig

from backprop_lab.config_checks import ConfigError, check_log_dir
from backprop_lab.metrics_file import write_metrics

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.csv"


def _load_checkpoint(ckpt_path):
    """The BackpropModule in ``ckpt_path`` (on the CPU) and the data state saved beside it."""
    import torch

    from backprop_lab.module import BackpropModule

    if ckpt_path is None or not str(ckpt_path):
        raise ConfigError("ckpt_path is required, e.g. ckpt_path=logs/train/runs/<run>/"
                          "checkpoints/last.ckpt")
    path = Path(str(ckpt_path)).expanduser().absolute()
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file ({path})")
    try:
        # Lightning checkpoints hold plain Python containers next to tensors.
        raw = torch.load(path, map_location="cpu", weights_only=False)
        model = BackpropModule.load_from_checkpoint(path, map_location="cpu")
    except Exception as err:  # torch and Lightning raise many kinds for a file that is not one
        raise ConfigError(f"ckpt_path={ckpt_path} is not a checkpoint of this project's "
                          f"network ({type(err).__name__}: {err})".splitlines()[0]) from None
    # The datamodule's state_dict, which Lightning files under the datamodule's class name.
    inputs = next((value for value in raw.values() if isinstance(value, dict)
                   and {"feature_names", "mean", "std"} <= value.keys()), None)
    if inputs is None:
        n_inputs = model.hparams.n_inputs
        inputs = {"feature_names": [f"x{i + 1}" for i in range(n_inputs)],
                  "target_names": [], "mean": [0.0] * n_inputs, "std": [1.0] * n_inputs}
    return path, model.float().eval(), inputs


def _check_data_fits(model, datamodule) -> None:
    hparams = model.hparams
    if datamodule.n_features != hparams.n_inputs:
        raise ConfigError(f"the data has {datamodule.n_features} input columns but the "
                          f"checkpoint's network takes {hparams.n_inputs}")
    if datamodule.n_targets != hparams.n_outputs:
        raise ConfigError(f"the data has {datamodule.n_targets} target columns but the "
                          f"checkpoint's network has {hparams.n_outputs} outputs")
    if hparams.loss == "bce" and not datamodule.binary_targets:
        raise ConfigError("the checkpoint's network was trained with loss=bce, which needs "
                          "targets in {0, 1}; this data's targets take other values")


def _read_points(path, inputs: dict):
    """The points to predict, as the network sees them (scaled) and as the file gives them."""
    import numpy as np

    from backprop_lab import data_sources

    raw, names = data_sources.read_points(path, inputs["feature_names"])
    scaled = (raw - np.asarray(inputs["mean"])) / np.asarray(inputs["std"])  # (N, n_inputs)
    return raw, scaled, names


def prepare(cfg: DictConfig):
    """Everything an evaluation needs, checked; raises ConfigError with one line otherwise."""
    from omegaconf import OmegaConf

    from backprop_lab.run import build_data

    check_log_dir(cfg)
    path, model, inputs = _load_checkpoint(cfg.get("ckpt_path"))
    data_cfg = cfg.get("data")
    if data_cfg is None:
        if inputs.get("data_config") is None:
            raise ConfigError(f"ckpt_path={cfg.ckpt_path} does not say which data it was "
                              "trained on; give data=... (and the run's seed=...)")
        data_cfg = OmegaConf.create(inputs["data_config"])
    datamodule = build_data(data_cfg)
    _check_data_fits(model, datamodule)
    points = None
    if cfg.get("predict") is not None:
        population = model.hparams.get("population", 1)
        if population > 1:
            # Limitation: K members would need K prediction columns each; not written yet.
            raise ConfigError(f"predict: the checkpoint holds a population of {population} "
                              "networks; backprop-eval predicts with single networks only")
        try:
            points = _read_points(cfg.predict, inputs)
        except ValueError as err:
            raise ConfigError(f"predict: {err}") from None
    return path, model, inputs, data_cfg, datamodule, points


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for an evaluation that cannot run; writes nothing."""
    prepare(cfg)


def _write_predictions(path: Path, model, inputs: dict, points) -> int:
    """One row per point: its input columns as given, then the network's output(s).

    A classifier (one output) gets ``probability`` of class 1 and the ``class``; a regression
    network gets one ``y_hat_<target>`` column per output.
    """
    import torch

    raw, scaled, names = points
    with torch.no_grad():
        y_hat = model.net(torch.tensor(scaled, dtype=torch.float32))  # (N, n_outputs)
    if model.classifies:
        probability = model.net.probability(y_hat)[:, 0]
        columns = ["probability", "class"]
        outputs = [[float(p), int(p > 0.5)] for p in probability]
    else:
        targets = inputs.get("target_names") or []
        if len(targets) != y_hat.shape[1]:
            targets = [str(i + 1) for i in range(y_hat.shape[1])]
        columns = [f"y_hat_{name}" for name in targets]
        outputs = y_hat.tolist()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*names, *columns])
        for row, out in zip(raw.tolist(), outputs):
            writer.writerow([*(repr(v) for v in row), *out])
    os.replace(tmp, path)
    return len(outputs)


def evaluate(cfg: DictConfig) -> dict:
    """Validate and test the checkpoint on ``cfg.data``; predict ``cfg.predict`` if given.

    Writes into ``cfg.paths.output_dir``: ``metrics.json`` (status, the checkpoint, val and
    test loss and accuracy) and, with points, ``predictions.csv``.
    """
    from backprop_lab.run import route_lightning_logs, stage_metrics, quiet_lightning_warnings

    path, model, inputs, data_cfg, datamodule, points = prepare(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    import lightning as L
    from hydra.utils import instantiate

    quiet_lightning_warnings()
    route_lightning_logs()
    metrics = {"status": "failed", "ckpt_path": str(path), "data": data_cfg._target_,
               "backward": model.hparams.backward, "loss": model.hparams.loss,
               "output_dir": str(output_dir)}
    start = time.perf_counter()
    try:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        trainer = instantiate(cfg.trainer, logger=False, callbacks=[],
                              enable_progress_bar=False)
        for stage, run in (("val", trainer.validate), ("test", trainer.test)):
            results = run(model, datamodule=datamodule, verbose=False)[0]
            metrics.update(stage_metrics(stage, results))
        if points is not None:
            prediction_file = output_dir / PREDICTIONS_FILE
            metrics["predicted_points"] = _write_predictions(prediction_file, model, inputs,
                                                             points)
            metrics["predictions"] = str(prediction_file)
        metrics["status"] = "completed"
    except BaseException as err:
        metrics["reason"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        metrics["wall_seconds"] = time.perf_counter() - start
        write_metrics(output_dir, metrics)
        log.info("evaluation %s in %.2f s; metrics in %s", metrics["status"],
                 metrics["wall_seconds"], output_dir / "metrics.json")
    return metrics
