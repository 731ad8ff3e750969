"""backprop-experiments: the worked example's numbers and the files it writes."""

import json

import pytest

from backprop_lab.studies import main, seed_example, seed_example_values


def test_worked_example_closed_form_manual_and_autograd_agree():
    values = seed_example_values()
    dw1 = values["dL_dw1"]
    assert dw1["manual"] == pytest.approx(dw1["closed_form"], rel=1e-14)
    assert dw1["autograd"] == pytest.approx(dw1["closed_form"], rel=1e-14)
    assert dw1["manual_with_mse"] == pytest.approx(2 * dw1["manual"], rel=1e-14)
    assert values["forward"]["y_hat"] == pytest.approx(0.606477732207, abs=1e-12)
    for name, grad in values["gradients"]["manual"].items():
        assert grad == pytest.approx(values["gradients"]["autograd"][name], rel=1e-14)


def test_seed_example_writes_table_values_and_pictures(tmp_path):
    seed_example(tmp_path)
    assert "| manual backward | 7.116497568160057e-04 |" in (tmp_path / "table.md").read_text()
    assert json.loads((tmp_path / "values.json").read_text())["loss_half_mse"] > 0
    for name in ("hidden_activations.png", "output.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


def test_missing_experiments_folder_exits_2_in_one_line(tmp_path, capsys):
    assert main(["--root", str(tmp_path / "nowhere")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "is not a directory" in lines[0]
