"""``backprop-eval``: a checkpoint evaluated in a fresh process, predictions, bad inputs."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from backprop_lab.data import MoonsDataModule
from backprop_lab.eval import CONFIG_NAME as EVAL_CONFIG, PROG
from backprop_lab.eval import _validate as validate_eval
from backprop_lab.evaluation import evaluate
from backprop_lab.module import BackpropModule
from backprop_lab.run import train
from backprop_lab.train import CONFIG_MODULE, CONFIG_NAME

SCRIPT = Path(sys.executable).with_name("backprop-eval")
MOONS = ("data=moons", "data.samples=60", "seed=3")


@pytest.fixture(scope="module")
def moons_run(tmp_path_factory):
    """A short training run on two moons with an 8-unit hidden layer: its metrics.json."""
    out = tmp_path_factory.mktemp("train") / "run"
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        cfg = compose(CONFIG_NAME, overrides=[
            f"paths.output_dir={out}", "plots=false", "model.hidden=[8]", "optimizer.lr=2.0",
            "trainer.max_epochs=60", *MOONS,
        ])
    metrics = train(cfg)
    assert metrics["status"] == "completed"
    return metrics


def eval_cfg(tmp_path, *overrides):
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        return compose(EVAL_CONFIG, overrides=[f"paths.output_dir={tmp_path / 'eval'}",
                                               *overrides])


def test_eval_in_a_fresh_process_reproduces_the_runs_val_and_test_metrics(moons_run, tmp_path):
    # No data= given: the checkpoint carries its data's config, so the split is the run's.
    out = subprocess.run(
        [str(SCRIPT), f"ckpt_path={moons_run['checkpoint']}", f"paths.log_dir={tmp_path}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (metrics_file,) = tmp_path.glob("eval/runs/*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["status"] == "completed" and metrics["data"].endswith("MoonsDataModule")
    for key in ("val_loss", "val_acc", "test_loss", "test_acc"):
        assert metrics[key] == pytest.approx(moons_run[key], abs=1e-7), key
    assert f"outputs: {metrics_file.parent}" in out.stdout


def test_predictions_are_the_networks_output_on_points_scaled_as_in_training(moons_run,
                                                                             tmp_path):
    points = tmp_path / "points.csv"
    points.write_text("label,x2,x1\nfoo,0.25,-1.0\nbar,0.0,0.5\nbaz,-0.5,2.0\n")
    metrics = evaluate(eval_cfg(tmp_path, f"ckpt_path={moons_run['checkpoint']}",
                                f"predict={points}", *MOONS))
    assert metrics["predicted_points"] == 3
    with open(metrics["predictions"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["x1", "x2", "probability", "class"]

    # The same points through the checkpoint's network, scaled with the training split's
    # statistics as the datamodule computes them.
    data = MoonsDataModule(samples=60, seed=3)
    raw = np.array([[-1.0, 0.25], [0.5, 0.0], [2.0, -0.5]])
    x = torch.tensor((raw - data.mean) / data.std, dtype=torch.float32)
    model = BackpropModule.load_from_checkpoint(moons_run["checkpoint"], map_location="cpu")
    with torch.no_grad():
        expected = model.net(x)[:, 0]
    for row, point, p in zip(rows, raw, expected.tolist()):
        assert [float(row["x1"]), float(row["x2"])] == point.tolist()
        assert float(row["probability"]) == pytest.approx(p, abs=1e-7)
        assert int(row["class"]) == int(p > 0.5)


def test_regression_checkpoint_predicts_one_column_per_output(make_cfg, tmp_path):
    table = tmp_path / "table.csv"
    table.write_text("a,b,u,v\n" + "".join(f"{i},{i % 3},{i / 10},{1 - i / 20}\n"
                                            for i in range(12)))
    run = train(make_cfg("data=csv", f"data.path={table}", "data.target=[u,v]",
                         "model.output_activation=identity", "trainer.max_epochs=3",
                         "target_loss=null"))
    points = tmp_path / "points.csv"
    points.write_text("a,b\n1,2\n")
    metrics = evaluate(eval_cfg(tmp_path, f"ckpt_path={run['checkpoint']}", "data=csv",
                                f"data.path={table}", "data.target=[u,v]",
                                f"predict={points}"))
    header = Path(metrics["predictions"]).read_text().splitlines()[0]
    assert header == "a,b,y_hat_u,y_hat_v"
    assert metrics["val_acc"] is None and metrics["val_loss"] >= 0


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ([], "ckpt_path is required, e.g. ckpt_path=logs/train/runs/"),
        (["ckpt_path=nowhere.ckpt"], "ckpt_path=nowhere.ckpt: no such checkpoint file"),
        (["ckpt_path={points}"], "is not a checkpoint of this project's network"),
        (["ckpt_path={ckpt}", "data=breast_cancer",
          "data.features=[mean radius,mean texture,mean area]"],
         "the data has 3 input columns but the checkpoint's network takes 2"),
        (["ckpt_path={ckpt}", "data=moons", "predict={wide}"],
         "predict: CSV file {wide} has no column 'x1'; the network takes 2 inputs (x1, x2) "
         "and the file has 3 columns (a, b, c)"),
        (["ckpt_path={ckpt}", "data=moons", "predict={nan}"],
         "column 'x2', row 1 (line 2) is NaN"),
        (["ckpt_path={ckpt}", "data=moons", "predict=missing.csv"], "missing.csv does not exist"),
        (["ckpt_path={ckpt}", "predict={partial}"],
         "predict: CSV file {partial} has no column 'x2'"),
    ],
)
def test_bad_eval_input_exits_2_with_one_line_and_writes_nothing(moons_run, tmp_path, refusal,
                                                                 overrides, expected):
    files = {"points": tmp_path / "points.txt", "wide": tmp_path / "wide.csv",
             "nan": tmp_path / "nan.csv", "partial": tmp_path / "partial.csv"}
    files["points"].write_text("not a checkpoint\n")
    files["wide"].write_text("a,b,c\n1,2,3\n")
    files["nan"].write_text("x1,x2\n1,nan\n")
    files["partial"].write_text("x1,y\n1,2\n")  # names one input: not read by position
    names = {key: str(path) for key, path in files.items()} | {"ckpt": moons_run["checkpoint"]}
    args = [arg.replace("[mean radius,mean texture,mean area]",
                        "['mean radius','mean texture','mean area']").format(**names)
            for arg in overrides]
    logs = tmp_path / "logs"
    line = refusal([*args, f"paths.log_dir={logs}"], config_name=EVAL_CONFIG,
                   check=validate_eval, prog=PROG)
    assert expected.format(**names) in line
    assert not logs.exists()
