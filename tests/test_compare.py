"""experiment=compare: both backward modes from one seed, and the figures that compare them."""

import json

import pytest

from backprop_lab.compare import compare, trajectory_gap, weight_gap


def test_trajectory_gap_finds_the_largest_gap_over_common_steps():
    assert trajectory_gap([0.5, 0.4, 0.3], [0.5, 0.41, 0.3, 0.2]) == (pytest.approx(0.01), 1)


def test_weight_gap_covers_every_entry_and_skips_absent_biases():
    a = {"w_hidden": [[1.0, 2.0], [3.0, 4.0]], "b_hidden": None, "w_out": [[0.5, 0.5]]}
    b = {"w_hidden": [[1.0, 2.0], [3.0, 4.25]], "b_hidden": None, "w_out": [[0.5, 0.4]]}
    assert weight_gap(a, b) == pytest.approx(0.25)


def test_compare_trains_both_modes_to_the_same_trajectory_and_writes_the_table(make_cfg,
                                                                              tmp_path):
    summary = compare(make_cfg("experiment=compare", "seed=0", "plots=true"))
    out = tmp_path / "run"
    assert summary["status"] == {"manual": "completed", "autograd": "completed"}
    assert summary["test_acc"] == {"manual": 1.0, "autograd": 1.0}
    assert summary["epochs"]["manual"] == summary["epochs"]["autograd"]
    assert summary["steps_compared"] == summary["epochs"]["manual"]
    assert 0 <= summary["max_abs_loss_gap"] < 1e-5
    assert 0 <= summary["max_abs_final_weight_gap"] < 1e-4
    assert summary["speed_ratio"] > 0

    manual = json.loads((out / "manual" / "metrics.json").read_text())
    autograd = json.loads((out / "autograd" / "metrics.json").read_text())
    assert (manual["backward"], autograd["backward"]) == ("manual", "autograd")
    assert summary["speed_ratio"] == pytest.approx(
        autograd["step_ms_mean"] / manual["step_ms_mean"])
    assert json.loads((out / "comparison.json").read_text())["max_abs_loss_gap"] == \
        summary["max_abs_loss_gap"]
    table = (out / "comparison.md").read_text()
    assert "largest |loss manual - loss autograd| over the trajectory" in table
    assert "speed ratio" in table
    assert (out / "loss_curves.png").stat().st_size > 0
    assert (out / "gradient_difference.png").stat().st_size > 0
