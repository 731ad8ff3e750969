"""Train both backward modes from one config and report how far apart they end up.

Both runs get the same seed, hence identical initial weights and batches; only
``model.backward`` differs. Each writes its own run directory (``manual/``, ``autograd/``)
under the comparison's directory, which receives ``comparison.json`` and ``comparison.md``.
"""

import csv
import json
import logging
from pathlib import Path

from omegaconf import DictConfig, open_dict

from backprop_lab.metrics_file import write_metrics
from backprop_lab.run import train

log = logging.getLogger(__name__)

MODES = ("manual", "autograd")


def read_losses(history_csv: Path) -> list[float]:
    """The per-step training losses of a run's history.csv, in step order."""
    with history_csv.open(newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def trajectory_gap(losses_a: list[float], losses_b: list[float]) -> tuple[float, int]:
    """Largest |loss_a - loss_b| over the steps both runs took, and the step where it occurs."""
    gaps = [abs(a - b) for a, b in zip(losses_a, losses_b)]
    if not gaps:
        return float("nan"), -1
    step = max(range(len(gaps)), key=gaps.__getitem__)
    return gaps[step], step


def weight_gap(weights_a: dict, weights_b: dict) -> float:
    """Largest |w_a - w_b| over every entry of every weight tensor (nested lists or None)."""

    def flat(value):
        if value is None:
            return []
        if isinstance(value, list):
            return [x for item in value for x in flat(item)]
        return [value]

    gaps = [abs(a - b) for name in weights_a
            for a, b in zip(flat(weights_a[name]), flat(weights_b.get(name)))]
    return max(gaps, default=0.0)


def summarize(runs: dict[str, dict], losses: dict[str, list[float]]) -> dict:
    """The comparison's figures from both runs' metrics and loss trajectories."""
    manual, autograd = runs["manual"], runs["autograd"]
    loss_gap, loss_gap_step = trajectory_gap(losses["manual"], losses["autograd"])
    step_manual, step_autograd = manual.get("step_ms_mean"), autograd.get("step_ms_mean")
    return {
        "max_abs_loss_gap": loss_gap,
        "max_abs_loss_gap_step": loss_gap_step,
        "steps_compared": min(len(losses["manual"]), len(losses["autograd"])),
        "max_abs_final_weight_gap": weight_gap(manual["weights"], autograd["weights"]),
        "test_acc": {mode: runs[mode].get("test_acc") for mode in MODES},
        "final_train_loss": {mode: runs[mode].get("train_loss") for mode in MODES},
        "epochs": {mode: runs[mode].get("epochs") for mode in MODES},
        "step_ms_mean": {"manual": step_manual, "autograd": step_autograd},
        # Above 1 means the manual backward is faster.
        "speed_ratio": (step_autograd / step_manual if step_manual and step_autograd else None),
        "status": {mode: runs[mode]["status"] for mode in MODES},
    }


def comparison_rows(summary: dict) -> list[tuple[str, str]]:
    """(quantity, value) rows for the terminal table and the markdown file."""
    acc, steps = summary["test_acc"], summary["step_ms_mean"]
    ratio = summary["speed_ratio"]

    def ms(value):
        return "-" if value is None else f"{value:.3f} ms"

    return [
        ("largest |loss manual - loss autograd| over the trajectory",
         f"{summary['max_abs_loss_gap']:.3g} (step {summary['max_abs_loss_gap_step']} of "
         f"{summary['steps_compared']})"),
        ("largest |final weight manual - autograd|", f"{summary['max_abs_final_weight_gap']:.3g}"),
        ("test accuracy, manual / autograd", f"{acc['manual']} / {acc['autograd']}"),
        ("epochs, manual / autograd",
         f"{summary['epochs']['manual']} / {summary['epochs']['autograd']}"),
        ("forward + backward per step, manual / autograd",
         f"{ms(steps['manual'])} / {ms(steps['autograd'])}"),
        ("speed ratio (autograd time / manual time)", "-" if ratio is None else f"{ratio:.2f}"),
    ]


def to_markdown(rows: list[tuple[str, str]]) -> str:
    lines = ["| quantity | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines) + "\n"


def compare(cfg: DictConfig) -> dict:
    """Train ``cfg`` once per backward mode and write the comparison; returns its summary."""
    output_dir = Path(cfg.paths.output_dir)
    runs, losses = {}, {}
    for mode in MODES:
        run_cfg = cfg.copy()
        with open_dict(run_cfg):
            run_cfg.model.backward = mode
            run_cfg.paths.output_dir = str(output_dir / mode)
            run_cfg.compare = False
        log.info("training with the %s backward into %s", mode, output_dir / mode)
        runs[mode] = train(run_cfg)
        history = output_dir / mode / "history.csv"
        losses[mode] = read_losses(history) if history.is_file() else []

    summary = summarize(runs, losses)
    summary["output_dir"] = str(output_dir)
    summary["pictures"] = draw_pictures(output_dir, losses) if cfg.get("plots", True) else []
    rows = comparison_rows(summary)
    (output_dir / "comparison.md").write_text(
        "# Manual backward against autograd\n\n" + to_markdown(rows)
        + "".join(f"\n![{Path(p).stem}]({Path(p).name})\n" for p in summary["pictures"])
    )
    (output_dir / "comparison.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_metrics(output_dir, {"status": _overall_status(runs), "comparison": summary,
                               "seed": cfg.seed, "backward": "both"})
    summary["rows"] = rows
    return summary


def _overall_status(runs: dict[str, dict]) -> str:
    statuses = {run["status"] for run in runs.values()}
    return statuses.pop() if len(statuses) == 1 else "mixed"


def draw_pictures(output_dir: Path, losses: dict[str, list[float]]) -> list[str]:
    """Both loss curves on one log-scale plot, and the gradient gaps over training."""
    from backprop_lab import plots

    curves = {mode: [(list(range(len(values))), values)] for mode, values in losses.items()}
    paths = [plots.loss_curves(curves, output_dir / "loss_curves.png",
                               title="training loss, manual and autograd backward")]
    parity_csv = output_dir / "manual" / "parity.csv"
    if parity_csv.is_file():
        with parity_csv.open(newline="") as f:
            rows = [{"step": int(r["step"]), "param": r["param"], "max_abs": float(r["max_abs"]),
                     "max_rel": float(r["max_rel"])} for r in csv.DictReader(f)]
        if rows:
            paths.append(plots.gradient_difference(rows, output_dir / "gradient_difference.png"))
    return [str(p) for p in paths]
