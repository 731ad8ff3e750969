"""GradientParity and TrainingHistory on real training runs."""

import csv
import json
import math

import pytest
import torch

from backprop_lab.callbacks import gradient_gap
from backprop_lab.manual_backward import MLPFunction
from backprop_lab.network import MLP
from backprop_lab.run import train


class HiddenGradientTooLarge(MLPFunction):
    """A wrong backward: the hidden weights' gradient comes out 10% too large."""

    @staticmethod
    def backward(ctx, grad_y_hat, *grad_hidden):
        grads = list(MLPFunction.backward(ctx, grad_y_hat, *grad_hidden))
        grads[2] = grads[2] * 1.1  # x, the activation names, then w_hidden
        return tuple(grads)


def read_rows(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_parity_check_passes_the_real_manual_backward(make_cfg, tmp_path):
    metrics = train(make_cfg("trainer.max_epochs=12", "callbacks.parity.every_n_steps=4"))
    parity = metrics["parity"]
    assert metrics["status"] == "completed"
    assert parity["checks"] == 3 and parity["failure"] is None
    assert set(parity["max_rel"]) == {"w_hidden", "b_hidden", "w_out", "b_out"}
    assert max(parity["max_rel"].values()) < 1e-4
    rows = read_rows(tmp_path / "run" / "parity.csv")
    assert [int(r["step"]) for r in rows] == [0] * 4 + [4] * 4 + [8] * 4


def test_parity_check_stops_a_wrong_backward_naming_weight_step_and_gap(
        make_cfg, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(MLP, "manual_function", HiddenGradientTooLarge)
    metrics = train(make_cfg("trainer.max_epochs=50", "callbacks.parity.every_n_steps=5"))
    failure = metrics["parity"]["failure"]
    assert metrics["status"] == "parity_failed"
    assert failure["param"] == "w_hidden" and failure["step"] == 0
    assert failure["max_rel"] == pytest.approx(0.1, rel=1e-3)
    assert metrics["steps"] == 1  # the step under way finishes, then training stops
    assert "gradient parity failed at step 0: w_hidden differs from autograd" in metrics[
        "stop_reason"]
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["status"] == "parity_failed"
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "w_hidden" in errors[0] and "tolerance 0.0001" in errors[0]


def test_history_records_each_step_loss_as_the_csv_logger_does(make_cfg, tmp_path):
    metrics = train(make_cfg("trainer.max_epochs=7", "model.backward=autograd"))
    history = read_rows(tmp_path / "run" / "history.csv")
    logged = [r for r in read_rows(tmp_path / "run" / "csv" / "metrics.csv") if r["train/loss"]]
    assert [int(r["step"]) for r in history] == list(range(7))
    assert [float(r["loss"]) for r in history] == pytest.approx(
        [float(r["train/loss"]) for r in logged], rel=1e-6)
    assert all(float(r["forward_ms"]) > 0 and float(r["backward_ms"]) > 0 for r in history)
    later = history[1:]
    expected = sum(float(r["forward_ms"]) + float(r["backward_ms"]) for r in later) / len(later)
    assert metrics["step_ms_mean"] == pytest.approx(expected, rel=1e-9)


def test_gradient_gap_is_relative_to_the_largest_entry_and_flags_one_sided_nan():
    reference = torch.tensor([1.0, -2.0, 1e-9])
    assert gradient_gap(reference.clone(), reference) == (0.0, 0.0)
    max_abs, max_rel = gradient_gap(reference + torch.tensor([0.0, 0.0, 1e-6]), reference)
    assert max_abs == pytest.approx(1e-6, rel=1e-3) and max_rel == pytest.approx(5e-7, rel=1e-3)
    both_nan = torch.tensor([math.nan, 1.0])
    assert gradient_gap(both_nan, both_nan.clone()) == (0.0, 0.0)
    assert math.isnan(gradient_gap(torch.tensor([math.nan, 1.0]), torch.tensor([0.5, 1.0]))[1])
