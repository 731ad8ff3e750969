"""``backprop-experiments``: regenerate every study under ``experiments/`` from the tools.

Each study folder keeps a hand-written README.md (the command and the finding); everything
else in it (tables, JSON, pictures) is written here and must not be edited by hand.
"""

import argparse
import json
import logging
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from backprop_lab import plots
from backprop_lab.manual_backward import sigmoid_mlp, squared_error
from backprop_lab.network import MLP

log = logging.getLogger(__name__)

PROG = "backprop-experiments"

# The worked example: a 2-2-1 sigmoid network without biases, one sample, L = 1/2 (y_hat - y)^2.
# These are the values most step-by-step backpropagation walk-throughs use.
SEED_EXAMPLE = {
    "x": [0.05, 0.10],
    "y": 0.01,
    "w_hidden": [[0.15, 0.20], [0.25, 0.30]],
    "w_out": [[0.40, 0.45]],
}
WEIGHT_NAMES = ("w1", "w2", "w3", "w4", "w5", "w6")


def seed_example_values(example: dict = SEED_EXAMPLE) -> dict:
    """Forward values, loss and gradients of the worked example, in float64, three ways."""
    x = torch.tensor([example["x"]], dtype=torch.float64)  # (1, 2)
    y = torch.tensor([[example["y"]]], dtype=torch.float64)  # (1, 1)
    (w1, w2), (w3, w4) = example["w_hidden"]
    ((w5, w6),) = example["w_out"]
    x1, x2 = example["x"]

    # The closed form, written out scalar by scalar.
    def sigmoid(z: float) -> float:
        return 1.0 / (1.0 + math.exp(-z))

    z_h1, z_h2 = w1 * x1 + w2 * x2, w3 * x1 + w4 * x2
    h1, h2 = sigmoid(z_h1), sigmoid(z_h2)
    z_out = w5 * h1 + w6 * h2
    y_hat = sigmoid(z_out)
    loss = 0.5 * (y_hat - example["y"]) ** 2
    closed_dw1 = (y_hat - example["y"]) * y_hat * (1 - y_hat) * w5 * h1 * (1 - h1) * x1

    gradients = {}
    for mode in ("manual", "autograd"):
        w_hidden = torch.tensor(example["w_hidden"], dtype=torch.float64, requires_grad=True)
        w_out = torch.tensor(example["w_out"], dtype=torch.float64, requires_grad=True)
        if mode == "manual":
            mode_loss = squared_error(sigmoid_mlp(x, w_hidden, None, w_out, None), y, half=True)
        else:
            h = torch.sigmoid(x @ w_hidden.T)
            mode_loss = 0.5 * ((torch.sigmoid(h @ w_out.T) - y) ** 2).mean()
        mode_loss.backward()
        flat = torch.cat([w_hidden.grad.reshape(-1), w_out.grad.reshape(-1)]).tolist()
        gradients[mode] = dict(zip(WEIGHT_NAMES, flat))
        gradients[f"{mode}_loss"] = mode_loss.item()

    # The same example under the Keras loss (mean of squares, no 1/2): every gradient doubles.
    w_hidden = torch.tensor(example["w_hidden"], dtype=torch.float64, requires_grad=True)
    w_out = torch.tensor(example["w_out"], dtype=torch.float64, requires_grad=True)
    squared_error(sigmoid_mlp(x, w_hidden, None, w_out, None), y, half=False).backward()
    mse_dw1 = w_hidden.grad[0, 0].item()

    return {
        "example": example,
        "forward": {"z_h1": z_h1, "h1": h1, "z_h2": z_h2, "h2": h2, "z_out": z_out,
                    "y_hat": y_hat},
        "loss_half_mse": loss,
        "dL_dw1": {"closed_form": closed_dw1, "manual": gradients["manual"]["w1"],
                   "autograd": gradients["autograd"]["w1"], "manual_with_mse": mse_dw1},
        "gradients": {"manual": gradients["manual"], "autograd": gradients["autograd"]},
        "loss_by_mode": {"manual": gradients["manual_loss"],
                         "autograd": gradients["autograd_loss"]},
    }


def seed_example_table(values: dict) -> str:
    """The worked example as markdown: forward values, loss, and dL/dw side by side."""
    ex, fwd = values["example"], values["forward"]
    lines = [
        "# Worked example, recomputed",
        "",
        f"Input x = ({ex['x'][0]}, {ex['x'][1]}), target y = {ex['y']}, "
        f"w1..w4 = {ex['w_hidden'][0] + ex['w_hidden'][1]}, w5, w6 = {ex['w_out'][0]}, "
        "no biases, L = 1/2 (y_hat - y)^2. All values in float64.",
        "",
        "## Forward pass",
        "",
        "| quantity | value |",
        "|---|---|",
    ]
    lines += [f"| {name} | {value:.12f} |" for name, value in fwd.items()]
    lines += [f"| L | {values['loss_half_mse']:.12e} |", "",
              "## dL/dw1", "", "| computed by | dL/dw1 |", "|---|---|"]
    how_names = {"closed_form": "closed form (y_hat - y) y_hat (1 - y_hat) w5 h1 (1 - h1) x1",
                 "manual": "manual backward", "autograd": "autograd",
                 "manual_with_mse": "manual backward, loss (y_hat - y)^2 without the 1/2"}
    lines += [f"| {how_names[how]} | {value:.15e} |" for how, value in values["dL_dw1"].items()]
    manual, autograd = values["gradients"]["manual"], values["gradients"]["autograd"]
    lines += ["", "## Every weight", "",
              "| weight | manual backward | autograd | manual - autograd |", "|---|---|---|---|"]
    lines += [f"| {name} | {manual[name]:.15e} | {autograd[name]:.15e} | "
              f"{manual[name] - autograd[name]:.1e} |" for name in WEIGHT_NAMES]
    return "\n".join(lines) + "\n"


def seed_example(folder: Path) -> dict:
    """Recompute the worked example into ``folder``: table.md, values.json and two pictures."""
    values = seed_example_values()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "table.md").write_text(seed_example_table(values))
    (folder / "values.json").write_text(json.dumps(values, indent=2) + "\n")
    weights = {"w_hidden": SEED_EXAMPLE["w_hidden"], "b_hidden": None,
               "w_out": SEED_EXAMPLE["w_out"], "b_out": None}
    x = torch.tensor([SEED_EXAMPLE["x"]]).numpy()
    y = torch.tensor([[SEED_EXAMPLE["y"]]]).numpy()
    plots.hidden_activations(weights, folder / "hidden_activations.png", x, y)
    plots.decision_boundary(weights, x, y, folder / "output.png",
                            title="y_hat of the worked example's network")
    return values


# The widely reproduced step-by-step example (M. Mazur, "A Step by Step Backpropagation
# Example", 2015): a 2-2-2 sigmoid network whose biases are not trained, one sample, E = sum of
# 1/2 (target - output)^2, SGD with learning rate 0.5. conf/experiment/step_by_step.yaml holds
# its settings; these are the figures as published, with their printed digits.
STEP_BY_STEP_PUBLISHED = {
    "out_h1": 0.593269992, "out_h2": 0.596884378, "out_o1": 0.75136507, "out_o2": 0.772928465,
    "E_total": 0.298371109, "dE/dw5": 0.082167041, "dE/dw1": 0.000438568,
    "w1": 0.149780716, "w2": 0.19956143, "w3": 0.24975114, "w4": 0.29950229,
    "w5": 0.35891648, "w6": 0.408666186, "w7": 0.511301270, "w8": 0.561370121,
    "E_total after 1 step": 0.291027924, "E_total at step 10000": 0.0000351085,
}


def _step_by_step_run(mode: str, log_dir: Path, epochs: int) -> dict:
    """metrics.json of ``backprop-train experiment=step_by_step`` for ``epochs`` steps."""
    from hydra import compose, initialize_config_module

    from backprop_lab.run import train

    with initialize_config_module("backprop_lab.conf", version_base="1.3"):
        cfg = compose("train", overrides=[
            "experiment=step_by_step", f"model.backward={mode}", f"trainer.max_epochs={epochs}",
            f"paths.output_dir={log_dir / f'step_by_step_{mode}_{epochs}'}",
            "callbacks=none", "logger=csv",
        ])
    return train(cfg)


def step_by_step_values(log_dir: Path, long_run: int = 10_000) -> dict:
    """The example recomputed: forward values and gradients by the network in float64, one and
    ``long_run`` training steps by ``backprop-train``, in both backward modes."""
    cfg_weights = {"w_hidden": [[0.15, 0.20], [0.25, 0.30]], "b_hidden": [0.35, 0.35],
                   "w_out": [[0.40, 0.45], [0.50, 0.55]], "b_out": [0.60, 0.60]}
    x = torch.tensor([[0.05, 0.10]], dtype=torch.float64)  # (1, 2)
    y = torch.tensor([[0.01, 0.99]], dtype=torch.float64)  # (1, 2)
    values = {"published": STEP_BY_STEP_PUBLISHED}
    for mode in ("manual", "autograd"):
        net = MLP(2, [2], 2, bias=True, freeze_bias=True, backward=mode, loss="half_mse",
                  reduction="sum").double()
        net.initialize(weights=cfg_weights)
        h = torch.sigmoid(net.layers[0](x))  # (1, 2)
        y_hat = net(x)  # (1, 2)
        loss = net.loss(y_hat, y)
        grads = net.gradients(x, y, mode)
        one = _step_by_step_run(mode, log_dir, 1)
        many = _step_by_step_run(mode, log_dir, long_run)
        updated = [v for name in ("w_hidden", "w_out") for row in one["weights"][name]
                   for v in row]
        values[mode] = {
            "out_h1": h[0, 0].item(), "out_h2": h[0, 1].item(),
            "out_o1": y_hat[0, 0].item(), "out_o2": y_hat[0, 1].item(),
            "E_total": loss.item(), "dE/dw5": grads["w_out"][0, 0].item(),
            "dE/dw1": grads["w_hidden"][0, 0].item(),
            **{f"w{i + 1}": v for i, v in enumerate(updated)},
            # The loss after the update, on the same sample: backprop-train's test loss.
            "E_total after 1 step": one["test_loss"],
            # Measured by the training step itself, before that step's update.
            f"E_total at step {long_run}": many["train_loss"],
        }
    return values


def step_by_step_table(values: dict) -> str:
    """Published figures next to both backward modes, as markdown."""
    published, manual, autograd = values["published"], values["manual"], values["autograd"]
    lines = ["# Step-by-step example, recomputed", "",
             "2-2-2 sigmoid network, x = (0.05, 0.10), targets (0.01, 0.99), biases 0.35 and "
             "0.60 not trained, E = sum of 1/2 (target - output)^2, SGD with learning rate "
             "0.5, float64. w1..w8 after the first step.", "",
             "| quantity | published | manual backward | autograd | manual - published |",
             "|---|---|---|---|---|"]
    for name in manual:
        given = published.get(name)
        shown = "-" if given is None else f"{given}"
        gap = "-" if given is None else f"{manual[name] - given:.1e}"
        lines.append(f"| {name} | {shown} | {manual[name]:.12g} | {autograd[name]:.12g} | "
                     f"{gap} |")
    return "\n".join(lines) + "\n"


def step_by_step(folder: Path, log_dir: Path) -> dict:
    """Recompute the step-by-step example into ``folder``: table.md and values.json."""
    values = step_by_step_values(log_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "table.md").write_text(step_by_step_table(values))
    (folder / "values.json").write_text(json.dumps(values, indent=2) + "\n")
    return values


def xor_manual_vs_autograd(folder: Path, log_dir: Path, seeds: int = 20) -> Path:
    """A sweep of ``seeds`` seeds x both backward modes on XOR, then its report into ``folder``."""
    sweep_dir = log_dir / "xor_manual_vs_autograd"
    command = [
        sys.executable, "-m", "backprop_lab.train", "-m", "experiment=xor",
        "model.backward=manual,autograd", f"seed=range({seeds})", "plots=false",
        f"paths.log_dir={log_dir}", f"hydra.sweep.dir={sweep_dir}",
    ]
    # A fixed sweep directory keeps the report's paths stable; old jobs must not mix in.
    shutil.rmtree(sweep_dir, ignore_errors=True)
    log.info("running %s", " ".join(command[2:]))
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    from backprop_lab import report

    code = report.main([str(sweep_dir), "--out", str(folder)])
    if code != 0:
        raise RuntimeError(f"backprop-report exited with {code}")
    return folder


def main(argv: list[str] | None = None) -> int:
    """Regenerate the studies; ``--only`` picks one."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="experiments", type=Path,
                        help="the experiments folder (default: ./experiments)")
    parser.add_argument("--log-dir", default="logs/experiments", type=Path,
                        help="where the sweeps' run directories go (default: logs/experiments)")
    parser.add_argument("--only", choices=("seed_example", "step_by_step",
                                           "xor_manual_vs_autograd"))
    parser.add_argument("--seeds", type=int, default=20, help="seeds per mode in the XOR sweep")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"{PROG}: error: {args.root} is not a directory; run from the repository root "
              "or pass --root", file=sys.stderr)
        return 2
    if args.seeds < 1:
        print(f"{PROG}: error: --seeds={args.seeds} must be at least 1", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    start = time.perf_counter()
    if args.only in (None, "seed_example"):
        seed_example(args.root / "seed_example")
    if args.only in (None, "step_by_step"):
        step_by_step(args.root / "step_by_step", args.log_dir.resolve())
    if args.only in (None, "xor_manual_vs_autograd"):
        xor_manual_vs_autograd(args.root / "xor_manual_vs_autograd", args.log_dir.resolve(),
                               args.seeds)
    print(f"{PROG}: studies written under {args.root} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
