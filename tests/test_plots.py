"""The pictures: each is a PNG of the pixel size its docstring promises, drawn from real values."""

import subprocess
import sys

import numpy as np
from matplotlib.image import imread

from backprop_lab import plots

XOR_X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])  # (4, 2)
XOR_Y = np.array([[0.0], [1.0], [1.0], [0.0]])  # (4, 1)
# A 2-2-1 network that solves XOR: h1 ~ OR, h2 ~ AND, y_hat ~ h1 and not h2.
XOR_WEIGHTS = {
    "w_hidden": [[6.0, 6.0], [4.0, 4.0]], "b_hidden": [-2.5, -6.0],
    "w_out": [[8.0, -9.0]], "b_out": [-3.5],
}


def _pixels(path) -> tuple[int, int]:
    """(width, height) of a PNG, read by matplotlib's PNG reader."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = imread(path).shape
    return width, height


def test_loss_curves_png_is_800_by_500_with_median_of_many_series(tmp_path):
    steps = np.arange(100)
    curves = {
        "manual": [(steps, 0.25 * np.exp(-steps / r) + 0.005) for r in (10, 20, 30)],
        "autograd": [(steps[:60], 0.25 * np.exp(-steps[:60] / 15) + 0.005)],
    }

    path = plots.loss_curves(curves, tmp_path / "loss.png", title="three seeds")

    assert path == tmp_path / "loss.png"
    assert _pixels(path) == (800, 500)


def test_decision_boundary_png_is_600_by_500_and_shows_both_classes(tmp_path):
    path = plots.decision_boundary(XOR_WEIGHTS, XOR_X, XOR_Y, tmp_path / "boundary.png")

    assert _pixels(path) == (600, 500)
    red, _, blue = imread(path)[..., :3].reshape(-1, 3).T
    # The solved XOR map has large regions of y_hat near 0 (orange) and near 1 (blue).
    assert (red - blue > 0.5).mean() > 0.1
    assert (blue - red > 0.5).mean() > 0.1


def test_hidden_activations_width_is_300_px_per_hidden_unit(tmp_path):
    two = plots.hidden_activations(XOR_WEIGHTS, tmp_path / "two.png", XOR_X, XOR_Y)
    three_without_bias = plots.hidden_activations(
        {"w_hidden": [[1.0, 2.0], [3.0, -4.0], [0.5, 0.5]], "b_hidden": None,
         "w_out": [[1.0, 2.0, 3.0]], "b_out": None},
        tmp_path / "three.png",
    )

    assert _pixels(two) == (600, 320)
    assert _pixels(three_without_bias) == (900, 320)


def test_gradient_difference_png_draws_exact_zeros_on_the_log_axis(tmp_path):
    rows = [
        {"step": str(step), "param": param, "max_abs": str(value), "max_rel": "0"}
        for step in range(0, 20, 5)
        for param, value in (("w_hidden", 2e-8 * (step % 2)), ("w_out", 3e-9), ("b_out", 0.0))
    ]

    path = plots.gradient_difference(rows, tmp_path / "gradients.png", tolerance=1e-6)

    assert _pixels(path) == (800, 500)


def test_convergence_histogram_png_also_when_no_run_reached_the_target(tmp_path):
    some = plots.convergence_histogram(
        {"manual": [110, 120, None], "autograd": [111, 119, 140]}, tmp_path / "some.png"
    )
    none = plots.convergence_histogram({"manual": [None, None]}, tmp_path / "none.png")

    assert _pixels(some) == (800, 500)
    assert _pixels(none) == (800, 500)


def test_report_and_plots_import_neither_lightning_nor_hydra():
    code = (
        "import sys, backprop_lab.report, backprop_lab.plots; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'hydra'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)

    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
