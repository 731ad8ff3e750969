"""One training run from a composed config: fit, evaluate, write ``metrics.json``.

Lightning and the model are imported only once training starts, so that the command line
answers ``--help`` and ``--cfg job`` quickly.
"""

import contextlib
import json
import logging
import math
import os
import time
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from backprop_lab.config_checks import ConfigError, check_config
from backprop_lab.metrics_file import write_metrics

log = logging.getLogger(__name__)


class _DropAdvert(logging.Filter):
    """Drops Lightning's tips to install its cloud products, printed on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡")


def route_lightning_logs() -> None:
    """Send Lightning's log records through Hydra's handlers (console and train.log) only.

    Lightning attaches a console handler of its own on import, which would print each line
    twice next to Hydra's.
    """
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler):
                logger.removeHandler(handler)
        logger.propagate = True
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdvert())


def quiet_lightning_warnings() -> None:
    """Silence Lightning's warnings that do not apply to this project's small in-memory data."""
    # One batch of four rows needs no worker processes; Lightning's advice says otherwise.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    # Lightning 2.6 calls a torch.utils._pytree API that torch 2.13 marks deprecated.
    warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\).*")
    # XOR's four rows split evenly over DDP processes, so each is evaluated exactly once.
    warnings.filterwarnings("ignore", ".*it is recommended to use `Trainer\\(devices=1.*")
    # The module casts every batch to its dtype, whichever data module served it.
    warnings.filterwarnings("ignore", ".*overridden `on_after_batch_transfer` in `Lightning.*")


def stage_metrics(stage: str, logged: dict) -> dict:
    """``{stage}_loss`` and ``{stage}_acc`` as floats (None when not logged)."""
    metrics = {}
    for name in ("loss", "acc"):
        value = logged.get(f"{stage}/{name}")
        metrics[f"{stage}_{name}"] = None if value is None else float(value)
    return metrics


def _divergence_message(trainer, lr) -> str | None:
    """One line (step, loss, last finite loss, learning rate) if the loss stopped being finite."""
    from backprop_lab.callbacks import StopOnDivergence

    for callback in trainer.callbacks:
        if isinstance(callback, StopOnDivergence) and callback.diverged_at is not None:
            step, loss, last = callback.diverged_at
            last_text = "none" if last is None else f"{last:.6g}"
            return (f"the loss became {loss} at step {step}; last finite loss {last_text}; "
                    f"learning rate {lr}")
    return None


def _stop_reason(trainer, lr) -> tuple[str, str]:
    """(status, reason) from the divergence and early-stopping callbacks and the trainer."""
    from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

    stopper = trainer.early_stopping_callback
    reason = getattr(stopper, "stopping_reason", None)
    divergence = _divergence_message(trainer, lr)
    if divergence is None and reason == EarlyStoppingReason.NON_FINITE_METRIC:
        divergence = (f"the epoch's loss was not finite by epoch {trainer.current_epoch}; "
                      f"learning rate {lr}")
    if divergence is not None:
        log.error("diverged: %s", divergence)
        return "diverged", divergence
    if reason == EarlyStoppingReason.STOPPING_THRESHOLD:
        return "completed", "reached target loss"
    if trainer.interrupted:
        return "interrupted", "interrupted"
    return "completed", "max epochs"


def trainer_parity_message(trainer) -> str:
    """The failure line of the trainer's GradientParity callback."""
    from backprop_lab.callbacks import GradientParity

    for callback in trainer.callbacks:
        if isinstance(callback, GradientParity) and callback.failure is not None:
            return callback.failure_message()
    return "gradient parity failed"


def _watch_worst_member(callbacks: list) -> None:
    """A population stops at the target loss once its worst member is there, not its mean."""
    from lightning.pytorch.callbacks import EarlyStopping

    for callback in callbacks:
        if isinstance(callback, EarlyStopping) and callback.monitor == "train/loss":
            callback.monitor = "train/loss_max"


def _population_pictures(folder: Path, tracker, metrics: dict) -> list[Path]:
    """Every member's loss curve, faint, and the histogram of epochs to the target."""
    import torch

    from backprop_lab import plots

    losses = torch.stack(tracker.curves).T.tolist()  # K curves, one loss per epoch
    epochs = list(range(1, len(tracker.curves) + 1))
    # Limitation: at most 200 members are drawn, so that a large population stays legible.
    curves = [(epochs, member) for member in losses[:200]]
    label = f"{metrics['backward']}, {len(losses)} members"
    reached = {label: [row["epochs_to_target"] for row in metrics["members"]]}
    return [plots.loss_curves({label: curves}, folder / "loss_curve.png"),
            plots.convergence_histogram(reached, folder / "epochs_to_target.png")]


def _draw_pictures(output_dir: Path, metrics: dict, datamodule, trainer) -> list[str]:
    """Decision boundary, hidden-unit maps, loss curve and gradient gaps of a finished run."""
    from backprop_lab import plots
    from backprop_lab.callbacks import GradientParity, PopulationTracker, TrainingHistory

    x, y = datamodule.train_arrays()
    weights = metrics["weights"]
    folder = output_dir / "pictures"
    paths = []
    if metrics.get("population", 1) > 1:
        for callback in trainer.callbacks:
            if isinstance(callback, PopulationTracker) and callback.curves:
                paths += _population_pictures(folder, callback, metrics)
        return [str(p) for p in paths]
    if x.shape[1] == 2:
        # Maps over the input plane exist only for two inputs.
        model = dict(trainer.lightning_module.hparams)
        paths += [
            plots.decision_boundary(weights, x, y, folder / "decision_boundary.png",
                                    model=model),
            plots.hidden_activations(weights, folder / "hidden_activations.png", x, y,
                                     model=model),
        ]
    for callback in trainer.callbacks:
        if isinstance(callback, TrainingHistory) and callback.rows:
            steps, losses = zip(*((row[0], row[2]) for row in callback.rows))
            label = metrics["backward"]
            paths.append(plots.loss_curves({label: [(steps, losses)]},
                                           folder / "loss_curve.png"))
        if isinstance(callback, GradientParity) and callback.rows:
            rows = [dict(zip(callback.HEADER, row)) for row in callback.rows]
            paths.append(plots.gradient_difference(rows, folder / "gradient_difference.png"))
    return [str(p) for p in paths]


def _log_artifacts(trainer, paths: list[str]) -> None:
    """Attach the run's pictures to every logger that stores files (MLflow)."""
    for logger in trainer.loggers:
        run_id = getattr(logger, "run_id", None)
        if run_id is None or not hasattr(logger.experiment, "log_artifact"):
            continue
        for path in paths:
            logger.experiment.log_artifact(run_id, path, artifact_path="pictures")


def _checkpoint_path(trainer) -> str | None:
    """The final checkpoint written by the run, if any."""
    callback = trainer.checkpoint_callback
    if callback is None:
        return None
    last = Path(callback.dirpath or "") / "last.ckpt"
    if callback.dirpath and last.is_file():
        return str(last)
    return callback.best_model_path or None


def _weights(model) -> dict:
    """The network's weights as nested lists (None for an absent bias)."""
    return {name: None if t is None else t.detach().tolist()
            for name, t in model.net.named_weights().items()}


# Set by the first process of a DDP run for the processes Lightning starts next to it.
DDP_JOB_ARGS = "BACKPROP_LAB_DDP_JOB_ARGS"


def is_rank_zero() -> bool:
    """True outside DDP and in its first process (Lightning sets RANK / LOCAL_RANK for others)."""
    from lightning.fabric.utilities.rank_zero import _get_rank

    return (_get_rank() or 0) == 0


# What Lightning's DDP launcher leaves in the environment of the first process. Left set, it
# tells the next job of a sweep that its processes already exist, and the job hangs or fails.
DDP_LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE",
                        DDP_JOB_ARGS)


@contextlib.contextmanager
def ddp_job_scope():
    """Run one job's DDP training, then close its process group and restore the environment."""
    saved = {name: os.environ.get(name) for name in DDP_LAUNCH_VARIABLES}
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def share_job_with_ddp_processes(output_dir: Path) -> None:
    """Tell the DDP processes Lightning is about to start which job they belong to.

    Lightning starts them by running the command line again. Inside a Hydra multirun that line
    holds the whole sweep, so each process would run every job into new directories; the
    processes read this instead (see ``backprop_lab.train.main``) and join this job's directory.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    overrides = list(HydraConfig.get().overrides.task)
    os.environ[DDP_JOB_ARGS] = json.dumps(overrides + [
        f"hydra.run.dir={output_dir}", "hydra.output_subdir=null", "hydra.job.name=ddp_process",
    ])


def build_data(data_cfg: DictConfig):
    """The datamodule ``data_cfg`` describes; a setting it refuses is named as ``data.<key>``.

    The datamodule also keeps ``data_cfg``, resolved, so that checkpoints carry it (see
    ``TableDataModule.state_dict``) and ``backprop-eval`` can rebuild the same data.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        datamodule = instantiate(data_cfg)
    except (InstantiationException, ValueError) as err:
        message = str(err.__cause__ or err) if isinstance(err, InstantiationException) \
            else str(err)
        key = message.split("=", 1)[0]
        if key in data_cfg and not key.startswith("data."):
            message = f"data.{message}"
        raise ConfigError(message) from None
    datamodule.data_config = OmegaConf.to_container(data_cfg, resolve=True)
    return datamodule


def build(cfg: DictConfig):
    """The datamodule and the LightningModule that ``cfg`` describes, checked against each other.

    Builds the optimizer once as well, so that settings torch refuses fail here, not mid-run.
    """
    from hydra.utils import instantiate

    datamodule = build_data(cfg.data)
    # A null width in the model config takes the data's (a CSV's is known only once read).
    widths = {key: value for key, value in (("n_inputs", datamodule.n_features),
                                            ("n_outputs", datamodule.n_targets))
              if cfg.model.get(key) is None}
    model = instantiate(
        cfg.model, optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        **widths, _convert_="all",
    )
    model.configure_optimizers()
    n_features, n_targets = datamodule.n_features, datamodule.n_targets
    if model.hparams.loss == "bce" and not datamodule.binary_targets:
        raise ConfigError("model.loss=bce needs targets in {0, 1}; this data's targets take "
                          "other values (use mse or half_mse for regression)")
    if model.hparams.n_inputs != n_features:
        raise ConfigError(f"model.n_inputs={model.hparams.n_inputs} does not match the data, "
                          f"which has {n_features} input columns")
    if model.hparams.n_outputs != n_targets:
        raise ConfigError(f"model.n_outputs={model.hparams.n_outputs} does not match the data, "
                          f"which has {n_targets} target columns")
    _check_targets_reachable(model.hparams, datamodule)
    return datamodule, model


# What each output activation can produce; a squared error towards a target outside it can
# never reach zero, which is a mistake in the config, not an experiment.
OUTPUT_RANGES = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0), "relu": (0.0, math.inf)}


def _check_targets_reachable(hparams, datamodule) -> None:
    low, high = OUTPUT_RANGES.get(hparams.output_activation, (-math.inf, math.inf))
    if hparams.loss == "bce":
        return  # the logits are unbounded; bce checks its targets itself
    y_low, y_high = datamodule.target_range()
    if y_low < low or y_high > high:
        raise ConfigError(
            f"the data's targets run from {y_low:g} to {y_high:g}, but "
            f"model.output_activation={hparams.output_activation} only gives values in "
            f"[{low:g}, {high:g}]; use model.output_activation=identity for such targets")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError, with one line naming the problem, for a config that cannot train.

    Writes nothing: it checks the values, then builds the data, the model and its optimizer.
    """
    from hydra.errors import InstantiationException

    check_config(cfg)
    try:
        _, model = build(cfg)
        _check_callbacks(cfg)
    except ConfigError:
        raise
    except InstantiationException as err:
        raise ConfigError(str(err.__cause__ or err)) from None
    except (ValueError, TypeError, RuntimeError) as err:
        raise ConfigError(str(err)) from None
    if cfg.get("ckpt_path") is not None:
        check_resumable(cfg.ckpt_path, model, cfg.trainer.max_epochs)


def _check_callbacks(cfg: DictConfig) -> None:
    """Build every callback once, with a stand-in output directory, so that their own checks
    of their settings run before a run directory exists."""
    from hydra.utils import instantiate

    if not cfg.get("callbacks"):
        return
    stand_in = OmegaConf.create({"paths": {"output_dir": "checking-callbacks"},
                                 "target_loss": cfg.get("target_loss"),
                                 "callbacks": OmegaConf.to_container(cfg.callbacks)})
    for name, settings in stand_in.callbacks.items():
        try:
            instantiate(settings)
        except Exception as err:
            cause = err.__cause__ or err
            raise ConfigError(f"callbacks.{name}: {cause}".splitlines()[0]) from None


def check_resumable(ckpt_path, model, max_epochs) -> None:
    """ConfigError unless ``ckpt_path`` is a checkpoint of this model that training can go on
    from: the same parameter shapes, and an epoch below ``trainer.max_epochs``."""
    import torch

    path = Path(str(ckpt_path)).expanduser()
    try:
        # Lightning checkpoints hold plain Python containers next to tensors.
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        saved = checkpoint["state_dict"]
    except Exception as err:
        raise ConfigError(f"ckpt_path={ckpt_path} is not a checkpoint of this project "
                          f"({type(err).__name__})") from None
    for name, tensor in model.state_dict().items():
        if name in saved and tuple(saved[name].shape) != tuple(tensor.shape):
            raise ConfigError(
                f"ckpt_path={ckpt_path} holds {name} of shape {tuple(saved[name].shape)} but "
                f"this config's network has {tuple(tensor.shape)}; resume with the settings "
                "the checkpoint was trained with")
    missing = sorted(set(model.state_dict()) - set(saved))
    if missing:
        raise ConfigError(f"ckpt_path={ckpt_path} has no {missing[0]}; it was trained with "
                          "another network shape")
    epoch = checkpoint.get("epoch", 0)
    if max_epochs != -1 and epoch >= max_epochs:
        raise ConfigError(f"ckpt_path={ckpt_path} was saved after epoch {epoch}; resuming "
                          f"needs trainer.max_epochs above that (it is {max_epochs})")


def _fit_and_evaluate(cfg: DictConfig, trainer, model, datamodule) -> dict:
    """Fit, then validate and test the final weights; the metrics this adds to metrics.json."""
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_seconds = time.perf_counter() - start
    status, reason = _stop_reason(trainer, cfg.optimizer.lr)
    metrics = stage_metrics("train", trainer.callback_metrics)
    for callback in trainer.callbacks:
        if hasattr(callback, "metrics_summary"):
            metrics.update(callback.metrics_summary())
    if (metrics.get("parity") or {}).get("failure") is not None:
        status, reason = "parity_failed", trainer_parity_message(trainer)

    if cfg.get("evaluate", True) and status != "interrupted":
        for stage, run in (("val", trainer.validate), ("test", trainer.test)):
            results = run(model, datamodule=datamodule, verbose=False)[0]
            metrics.update(stage_metrics(stage, results))
    metrics.update(
        status=status,
        stop_reason=reason,
        epochs=trainer.current_epoch,
        epochs_to_target=(trainer.current_epoch if reason == "reached target loss" else None),
        steps=trainer.global_step,
        fit_seconds=fit_seconds,
        weights=_weights(model),
    )
    return metrics


def train(cfg: DictConfig) -> dict:
    """Fit and evaluate the model that ``cfg`` describes; return what ``metrics.json`` holds.

    Writes into ``cfg.paths.output_dir``: the resolved config, logs, checkpoints and
    ``metrics.json``. A run that fails still leaves ``metrics.json`` with status ``failed``.
    """
    validate(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if is_rank_zero():
        OmegaConf.save(cfg, output_dir / "config_resolved.yaml", resolve=True)

    import lightning as L
    from hydra.utils import instantiate

    quiet_lightning_warnings()
    route_lightning_logs()

    metrics = {
        "status": "failed",
        "backward": cfg.model.backward,
        "manual_impl": cfg.model.get("manual_impl", "readable"),
        "loss": cfg.model.loss,
        "seed": cfg.seed,
        "target_loss": cfg.get("target_loss"),
        "output_dir": str(output_dir),
    }
    start = time.perf_counter()
    trainer = None
    model = None
    try:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
        loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
        if cfg.model.get("population", 1) > 1:
            _watch_worst_member(callbacks)
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
        # Under 64-true the parameters are made in float64, so that explicit initial weights
        # such as 0.35 are kept exactly rather than rounded to float32 first.
        with trainer.init_module():
            datamodule, model = build(cfg)
        distributed = trainer.world_size > 1 and is_rank_zero()
        with ddp_job_scope() if distributed else contextlib.nullcontext():
            if distributed:
                share_job_with_ddp_processes(output_dir)
            metrics.update(_fit_and_evaluate(cfg, trainer, model, datamodule))
        if cfg.get("plots", True) and trainer.is_global_zero:
            metrics["pictures"] = _draw_pictures(output_dir, metrics, datamodule, trainer)
        metrics["checkpoint"] = _checkpoint_path(trainer)
        if trainer.is_global_zero:
            _log_artifacts(trainer, metrics.get("pictures", []))
    except BaseException as err:
        metrics["reason"] = f"{type(err).__name__}: {err}"
        if trainer is not None:
            metrics.update(epochs=trainer.current_epoch, steps=trainer.global_step,
                           checkpoint=_checkpoint_path(trainer))
        if model is not None:
            metrics["weights"] = _weights(model)
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            # Lightning turns Ctrl-C into SystemExit after its own clean-up.
            metrics.update(status="interrupted", reason="interrupted by a signal (Ctrl-C)",
                           stop_reason="interrupted by a signal (Ctrl-C)")
        raise
    finally:
        metrics["wall_seconds"] = time.perf_counter() - start
        if is_rank_zero():
            write_metrics(output_dir, metrics)
            log.info("%s (%s) after %s steps in %.2f s; metrics in %s", metrics["status"],
                     metrics.get("stop_reason") or metrics.get("reason"), metrics.get("steps"),
                     metrics["wall_seconds"], output_dir / "metrics.json")
    return metrics
