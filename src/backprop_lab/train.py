"""``backprop-train``: the Hydra app that trains one run (or compares both backward modes)."""

import json
import logging
import math
import os
import sys
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig

from backprop_lab.config_checks import ConfigError
from backprop_lab.fast_help import fast_help
from backprop_lab.hydra_errors import one_line, preflight
from backprop_lab.metrics_file import METRICS_FILE, write_metrics
from backprop_lab.run import DDP_JOB_ARGS, is_rank_zero, train, validate

log = logging.getLogger(__name__)

CONFIG_MODULE = "backprop_lab.conf"
CONFIG_NAME = "train"


def format_summary(metrics: dict) -> str:
    """A few lines for the terminal: outcome, final metrics, where the outputs are."""

    def pair(stage: str) -> str:
        loss, acc = metrics.get(f"{stage}_loss"), metrics.get(f"{stage}_acc")
        if loss is None:
            return f"{stage}: -"
        return f"{stage}: loss {loss:.6g}" + ("" if acc is None else f"  acc {acc:.3f}")

    backward = metrics["backward"]
    if backward == "manual" and metrics.get("manual_impl", "readable") != "readable":
        backward += f" ({metrics['manual_impl']})"
    lines = [
        f"{metrics['status']} ({metrics.get('stop_reason', '')}): "
        f"{metrics.get('epochs')} epochs, {metrics.get('steps')} steps, "
        f"{metrics['wall_seconds']:.1f} s  [backward={backward}, "
        f"loss={metrics['loss']}, seed={metrics['seed']}]",
        "  " + "  |  ".join(pair(stage) for stage in ("train", "val", "test")),
        f"  outputs: {metrics['output_dir']}",
    ]
    return "\n".join(lines)


def print_comparison(summary: dict) -> None:
    """The comparison's table, drawn by rich, and where its files are."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="manual backward vs autograd")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for name, value in summary["rows"]:
        table.add_row(name, value)
    console = Console()
    console.print(table)
    console.print(f"outputs: {summary['output_dir']}", soft_wrap=True)


def optimized_value(cfg: DictConfig, metrics: dict) -> float:
    """The number a sweeper minimises: ``cfg.optimized_metric`` of this run's metrics.

    A run that never reached the target loss counts as ``trainer.max_epochs + 1`` epochs; a
    missing or non-finite value is NaN, which Optuna records as a failed trial.
    """
    name = cfg.get("optimized_metric", "val_loss")
    value = metrics.get(name)
    if name == "epochs_to_target" and value is None:
        value = cfg.trainer.max_epochs + 1
    return math.nan if not isinstance(value, (int, float)) else float(value)


def _job_failed(cfg: DictConfig, err: Exception) -> float:
    """Record a failed multirun job and let the sweep go on; SweepOutcome reports it at the end.

    The traceback goes to the job's error.txt, the reason to its metrics.json (unless training
    already wrote one) and to its log, and one line to stderr.
    """
    message = one_line(err) if isinstance(err, ConfigError) else f"{type(err).__name__}: {err}"
    log.error("job failed: %s", message)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "error.txt").write_text(traceback.format_exc())
    if not (output_dir / METRICS_FILE).is_file():
        write_metrics(output_dir, {"status": "failed", "reason": message,
                                   "backward": cfg.model.backward, "seed": cfg.seed})
    return math.nan


def _report_interruption(cfg: DictConfig) -> None:
    """After Ctrl-C: say where the run stopped and how to resume it, then exit 130."""
    from hydra.core.hydra_config import HydraConfig

    from backprop_lab.metrics_file import read_metrics

    try:
        metrics = read_metrics(cfg.paths.output_dir)
    except (OSError, ValueError):
        return
    if metrics.get("status") != "interrupted" or not is_rank_zero():
        return
    print(f"interrupted after {metrics.get('steps')} steps; outputs: {cfg.paths.output_dir}")
    if metrics.get("checkpoint"):
        command = ["backprop-train", *HydraConfig.get().overrides.task,
                   f"ckpt_path={metrics['checkpoint']}"]
        print(f"  resume with: {' '.join(command)}")
    sys.exit(130)  # the shell's status for a program ended by SIGINT


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name=CONFIG_NAME)
def hydra_main(cfg: DictConfig) -> float | None:
    """The Hydra app: one run, or one job of a multirun; returns the value a sweeper minimises."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import InstantiationException
    from hydra.types import RunMode

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        if cfg.get("compare"):
            from backprop_lab.compare import compare

            summary = compare(cfg)
            print_comparison(summary)
            return summary["max_abs_loss_gap"]
        metrics = train(cfg)
    except (ConfigError, InstantiationException) as err:
        if multirun:
            return _job_failed(cfg, ConfigError(one_line(err)))
        print(f"backprop-train: error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        if multirun:
            return _job_failed(cfg, err)
        raise
    except (KeyboardInterrupt, SystemExit):
        _report_interruption(cfg)
        raise
    if is_rank_zero():
        print(format_summary(metrics))
    return optimized_value(cfg, metrics)


def main() -> None:
    """Console entry point: answer --help quickly, reject bad overrides in one line, then hand
    over to Hydra."""
    job_args = os.environ.get(DDP_JOB_ARGS)
    if job_args and os.environ.get("LOCAL_RANK", "0") != "0":
        # A DDP process started by Lightning: run the job it belongs to, not the command line
        # (which, in a multirun, is the whole sweep).
        sys.argv[1:] = json.loads(job_args)
    help_text = fast_help(sys.argv[1:], CONFIG_MODULE, CONFIG_NAME)
    if help_text is not None:
        print(help_text)
        return
    preflight(sys.argv[1:], CONFIG_MODULE, CONFIG_NAME, validate, prog="backprop-train")
    hydra_main()


if __name__ == "__main__":
    main()
