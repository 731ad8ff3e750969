"""Multiruns on Hydra's launchers and sweepers, run through the real command."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module

from backprop_lab.train import CONFIG_MODULE, CONFIG_NAME

SCRIPT = Path(sys.executable).with_name("backprop-train")
QUICK = ("trainer.max_epochs=5", "plots=false")


def run_command(tmp_path, *args, timeout=300):
    return subprocess.run([str(SCRIPT), *args, f"paths.log_dir={tmp_path}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout)


def job_metrics(tmp_path) -> dict[int, dict]:
    (sweep_dir,) = tmp_path.glob("train/multiruns/*")
    return {int(p.parent.name): json.loads(p.read_text())
            for p in sweep_dir.glob("*/metrics.json")}


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_four_job_sweep_on_a_launcher_writes_four_metrics_files(tmp_path, launcher):
    out = run_command(tmp_path, "-m", f"hydra/launcher={launcher}", "seed=0,1,2,3", *QUICK)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = job_metrics(tmp_path)
    assert sorted(metrics) == [0, 1, 2, 3]
    assert sorted(m["seed"] for m in metrics.values()) == [0, 1, 2, 3]
    assert all(m["status"] == "completed" and m["steps"] == 5 for m in metrics.values())


def test_failed_job_is_reported_and_the_other_jobs_complete(tmp_path):
    out = run_command(tmp_path, "-m", f"logger.csv.save_dir={tmp_path}/csv_a,/proc/no_such_dir,"
                      f"{tmp_path}/csv_c", *QUICK)
    assert out.returncode == 1
    metrics = job_metrics(tmp_path)
    assert [metrics[i]["status"] for i in range(3)] == ["completed", "failed", "completed"]
    assert "/proc/no_such_dir" in metrics[1]["reason"]
    (sweep_dir,) = tmp_path.glob("train/multiruns/*")
    assert "Traceback" in (sweep_dir / "1" / "error.txt").read_text()
    last_lines = out.stderr.strip().splitlines()[-2:]
    assert last_lines[0].startswith(f"backprop-train: job {sweep_dir / '1'} failed:")
    assert last_lines[1] == "backprop-train: 1 of 3 jobs failed"


def test_optuna_search_of_three_trials_saves_its_best_parameters(tmp_path):
    out = run_command(tmp_path, "hparams_search=xor_optuna", "hydra.sweeper.n_trials=3",
                      "trainer.max_epochs=30")
    assert out.returncode == 0, out.stderr[-3000:]
    (sweep_dir,) = tmp_path.glob("train/multiruns/*")
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"optimizer.lr", "optimizer.momentum",
                                           "model.init.scale"}
    val_losses = [m["val_loss"] for m in job_metrics(tmp_path).values()]
    assert len(val_losses) == 3 and results["best_value"] == pytest.approx(min(val_losses))
    assert "Best parameters" in out.stdout + out.stderr


def test_mlflow_sweep_records_both_runs_with_metrics_in_sqlite(tmp_path):
    from mlflow.tracking import MlflowClient

    out = run_command(tmp_path, "-m", "logger=mlflow", "model.backward=manual,autograd",
                      "trainer.max_epochs=8")
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("backprop-lab")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.params["backward"] for r in runs) == ["autograd", "manual"]
    for run in runs:
        assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 8
        pictures = {a.path for a in client.list_artifacts(run.info.run_id, "pictures")}
        assert "pictures/decision_boundary.png" in pictures


def test_slurm_launcher_config_sets_partition_time_gpus_cpus_and_memory():
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        cfg = compose(CONFIG_NAME, overrides=["hydra/launcher=slurm",
                                              "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.gpus_per_node,
            launcher.cpus_per_task, launcher.mem_gb) == ("gpu", 30, 0, 2, 4)
