"""``backprop-report`` on a real four-job sweep: its numbers, missing and failed jobs, errors."""

import csv
import json
import shutil
import statistics
import subprocess
import sys

import pytest
import yaml
from matplotlib.image import imread

from backprop_lab import report

SWEEP = ["model.backward=manual,autograd", "seed=0,1", "trainer.max_epochs=20"]
# Hydra numbers the jobs of SWEEP in this order.
JOBS = [("manual", 0), ("manual", 1), ("autograd", 0), ("autograd", 1)]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The multirun directory of one real ``backprop-train -m`` sweep of four jobs."""
    log_dir = tmp_path_factory.mktemp("logs")
    out = subprocess.run(
        [sys.executable, "-m", "backprop_lab.train", "-m", *SWEEP, f"paths.log_dir={log_dir}"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (multirun,) = log_dir.glob("train/multiruns/*")
    return multirun


@pytest.fixture
def sweep_copy(sweep, tmp_path):
    """A copy of the sweep that a test may damage."""
    return shutil.copytree(sweep, tmp_path / "sweep")


def _summary(path) -> dict[str, dict]:
    with path.open(newline="") as handle:
        return {row["model.backward"]: row for row in csv.DictReader(handle)}


def _job_metrics(multirun, number: int) -> dict:
    return json.loads((multirun / str(number) / "metrics.json").read_text())


def test_sweep_expansion_numbers_jobs_as_hydra_did(sweep):
    expected = report.expand_sweep([*SWEEP, "paths.log_dir=x"])

    assert [job[:2] for job in expected] == [
        [f"model.backward={backward}", f"seed={seed}"] for backward, seed in JOBS
    ]
    for number, overrides in enumerate(expected):
        written = yaml.safe_load((sweep / str(number) / ".hydra" / "overrides.yaml").read_text())
        assert written[:3] == overrides[:3]


def test_summary_csv_holds_exactly_the_statistics_of_the_jobs_metrics_json(sweep_copy, capsys):
    status = report.main([str(sweep_copy)])  # no --out: the report goes into the one DIR

    assert status == 0
    assert capsys.readouterr().out.strip() == f"report: {sweep_copy / 'report.md'}"
    summary = _summary(sweep_copy / "summary.csv")
    assert list(summary) == ["manual", "autograd"]
    for backward in ("manual", "autograd"):
        row = summary[backward]
        jobs = [_job_metrics(sweep_copy, n) for n, (b, _) in enumerate(JOBS) if b == backward]
        assert all(m["status"] == "completed" for m in jobs)
        assert (row["n_runs"], row["n_completed"], row["n_missing"]) == ("2", "2", "0")
        for column, key in (("train_loss", "train_loss"), ("test_loss", "test_loss"),
                            ("train_acc", "train_acc"), ("test_acc", "test_acc"),
                            ("step_ms", "step_ms_mean")):
            values = [m[key] for m in jobs if m.get(key) is not None]
            if not values:
                assert row[f"{column}_mean"] == row[f"{column}_min"] == ""
                continue
            assert float(row[f"{column}_mean"]) == statistics.fmean(values)
            assert float(row[f"{column}_std"]) == statistics.stdev(values)
            assert float(row[f"{column}_min"]) == min(values)
            assert float(row[f"{column}_max"]) == max(values)
        # 20 epochs are far too few to reach the target loss 0.01.
        assert [m.get("epochs_to_target") for m in jobs] == [None, None]
        assert row["n_reached_target"] == "0" and row["epochs_to_target_mean"] == ""

    text = (sweep_copy / "report.md").read_text()
    assert "![training loss of every run](loss_curves.png)" in text
    assert imread(sweep_copy / "loss_curves.png").shape[:2] == (500, 800)
    if (sweep_copy / "0" / "parity.csv").is_file():
        picture = "gradient_difference_model.backward_manual.png"
        assert f"]({picture})" in text
        assert imread(sweep_copy / picture).shape[:2] == (500, 800)


def test_loss_history_falls_back_to_lightnings_csv_with_the_same_losses(sweep_copy):
    job = report.Run(name="0", path=sweep_copy / "0", overrides=[])
    from_history = report.loss_history(job)
    (sweep_copy / "0" / "history.csv").unlink(missing_ok=True)

    steps, losses = report.loss_history(job)

    assert steps == list(range(20))
    assert len(losses) == 20 and losses[-1] == _job_metrics(sweep_copy, 0)["train_loss"]
    if from_history is not None:  # one step per epoch: the same losses either way
        assert from_history[0] == steps
        assert from_history[1] == pytest.approx(losses, rel=1e-6)


def test_report_lists_not_started_killed_and_failed_jobs(sweep_copy, tmp_path):
    shutil.rmtree(sweep_copy / "3")  # autograd seed 1 has not started
    (sweep_copy / "2" / "metrics.json").unlink()  # autograd seed 0 is running or was killed
    failed = _job_metrics(sweep_copy, 1)  # manual seed 1 failed
    failed.update(status="failed", reason="RuntimeError: out of memory")
    (sweep_copy / "1" / "metrics.json").write_text(json.dumps(failed))
    out = tmp_path / "out"

    assert report.main([str(sweep_copy), "--out", str(out)]) == 0

    text = (out / "report.md").read_text()
    failures = text.split("## Runs that did not complete")[1].split("## Missing jobs")[0]
    missing = text.split("## Missing jobs")[1]
    assert "sweep/1 | `model.backward=manual seed=1" in failures
    assert "| failed | RuntimeError: out of memory |" in failures
    assert "sweep/2 | `model.backward=autograd seed=0" in missing
    assert "| running or killed (no metrics.json) |" in missing
    assert "sweep/3 | `model.backward=autograd seed=1" in missing
    assert "| not started (no directory) |" in missing
    summary = _summary(out / "summary.csv")
    assert [summary["manual"][k] for k in ("n_runs", "n_completed", "n_missing")] == [
        "2", "1", "0"
    ]
    assert [summary["autograd"][k] for k in ("n_runs", "n_completed", "n_missing")] == [
        "0", "0", "2"
    ]
    assert float(summary["manual"]["train_loss_mean"]) == _job_metrics(sweep_copy, 0)[
        "train_loss"
    ]


@pytest.mark.parametrize("make_dir", [False, True], ids=["missing_dir", "dir_without_runs"])
def test_bad_directory_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, make_dir):
    given = tmp_path / "given"
    if make_dir:
        (given / "empty").mkdir(parents=True)
    out = tmp_path / "out"

    status = report.main([str(given), "--out", str(out)])

    assert status == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"backprop-report: error: {given} ")
    assert not out.exists()


def test_population_members_count_as_replicates_with_their_own_epochs(tmp_path):
    log_dir = tmp_path / "logs"
    out = subprocess.run(
        [sys.executable, "-m", "backprop_lab.train", "-m", "model.backward=manual,autograd",
         "model.population=3", "experiment=xor", "trainer.max_epochs=150", "plots=false",
         f"paths.log_dir={log_dir}"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (multirun,) = log_dir.glob("train/multiruns/*")
    assert report.main([str(multirun)]) == 0

    rows = _summary(multirun / "summary.csv")
    for number, backward in enumerate(("manual", "autograd")):
        members = _job_metrics(multirun, number)["members"]
        reached = [m["epochs_to_target"] for m in members if m["epochs_to_target"]]
        row = rows[backward]
        assert int(row["n_runs"]) == 3 and int(row["n_reached_target"]) == len(reached)
        assert float(row["epochs_to_target_mean"]) == pytest.approx(statistics.fmean(reached))
        assert float(row["train_loss_max"]) == max(m["train_loss"] for m in members)
    text = (multirun / "report.md").read_text()
    assert "6 of the runs counted below are members of populations" in text
    assert imread(multirun / "loss_curves.png").shape[:2] == (500, 800)


def test_out_that_is_a_file_is_refused_in_one_line(sweep, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert report.main([str(sweep), "--out", str(a_file)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"backprop-report: error: --out {a_file}: {a_file} is a file, not a "
                     "directory"]
