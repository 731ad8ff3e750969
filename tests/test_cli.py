"""The ``backprop-train`` command: a real subprocess run, and one-line errors for bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from backprop_lab.hydra_errors import preflight
from backprop_lab.config_checks import check_config
from backprop_lab.train import CONFIG_MODULE, CONFIG_NAME

SCRIPT = Path(sys.executable).with_name("backprop-train")


def test_backprop_train_subprocess_writes_metrics_json(tmp_path):
    out = subprocess.run(
        [str(SCRIPT), f"paths.log_dir={tmp_path}", "trainer.max_epochs=20", "seed=1"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (metrics_file,) = tmp_path.glob("train/runs/*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 20
    assert f"outputs: {metrics_file.parent}" in out.stdout
    assert (metrics_file.parent / ".hydra" / "config.yaml").is_file()
    assert (metrics_file.parent / "train.log").is_file()


def test_module_entry_point_rejects_a_bad_value_in_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "backprop_lab.train", "model.backward=foo",
         f"paths.log_dir={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "backprop-train: error: model.backward='foo' is not allowed; "
        "choose one of: manual, autograd"
    ]
    assert not any(tmp_path.iterdir())  # no run directory was started


@pytest.mark.parametrize(
    "args, expected",
    [
        (["model.backward=foo"], "model.backward='foo' is not allowed; choose one of: manual"),
        (["optimizer.lr=-0.5"], "optimizer.lr=-0.5 is not allowed; it must be a number above 0"),
        (["optimizer.lr=0"], "optimizer.lr=0 is not allowed"),
        (["model.loss=l1"], "model.loss='l1' is not allowed; choose one of: mse, half_mse"),
        (["model.foo=1"], "model.foo is not a known key; keys of model: n_inputs"),
        (["trainer=tpu"], "Could not find 'trainer/tpu'; Available options in 'trainer': auto"),
        (["model.n_hidden=0"], "model.n_hidden=0 is not allowed; it must be an integer >= 1"),
        (["seed=-3"], "seed=-3 is not allowed"),
        (["-m", "model.backward=manual,autograd,fast"], "model.backward='fast' is not allowed"),
        (["-m", "seed=0,1", "optimizer.lr=0.1,-1"], "optimizer.lr=-1 is not allowed"),
    ],
)
def test_bad_override_exits_2_with_one_line_naming_the_key(args, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        preflight(args, CONFIG_MODULE, CONFIG_NAME, check_config, prog="backprop-train")
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("backprop-train: error: ")
    assert expected in lines[0]


def test_good_overrides_and_sweeps_pass_the_preflight(capsys):
    for args in (["model.backward=autograd", "optimizer=adam"],
                 ["-m", "model.backward=manual,autograd", "seed=range(3)"],
                 ["--help"]):
        preflight(args, CONFIG_MODULE, CONFIG_NAME, check_config, prog="backprop-train")
    assert capsys.readouterr().err == ""
