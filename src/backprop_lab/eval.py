"""``backprop-eval``: the Hydra app that evaluates a checkpoint and predicts new points."""

import sys

import hydra
from omegaconf import DictConfig

from backprop_lab.config_checks import ConfigError
from backprop_lab.hydra_errors import one_line, preflight

CONFIG_MODULE = "backprop_lab.conf"
CONFIG_NAME = "eval"
PROG = "backprop-eval"


def _validate(cfg: DictConfig) -> None:
    from backprop_lab.evaluation import validate

    validate(cfg)


def format_summary(metrics: dict) -> str:
    """Two or three lines for the terminal: the metrics, the predictions, the outputs."""

    def pair(stage: str) -> str:
        loss, acc = metrics.get(f"{stage}_loss"), metrics.get(f"{stage}_acc")
        shown = f"{stage}: loss {loss:.6g}"
        return shown if acc is None else f"{shown}  acc {acc:.3f}"

    lines = [f"{metrics['status']}: {metrics['ckpt_path']} on {metrics['data']}",
             "  " + "  |  ".join(pair(stage) for stage in ("val", "test"))]
    if "predictions" in metrics:
        lines.append(f"  predicted {metrics['predicted_points']} points: "
                     f"{metrics['predictions']}")
    lines.append(f"  outputs: {metrics['output_dir']}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name=CONFIG_NAME)
def hydra_main(cfg: DictConfig) -> None:
    """The Hydra app: evaluate one checkpoint; exits 2 with one line on bad input."""
    from backprop_lab.evaluation import evaluate

    try:
        metrics = evaluate(cfg)
    except ConfigError as err:
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
    print(format_summary(metrics))


def main() -> None:
    """Console entry point: reject bad overrides in one line, then hand over to Hydra."""
    preflight(sys.argv[1:], CONFIG_MODULE, CONFIG_NAME, _validate, prog=PROG)
    hydra_main()


if __name__ == "__main__":
    main()
