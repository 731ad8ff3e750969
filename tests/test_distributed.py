"""DDP on two CPU processes (trainer=ddp_sim), alone and inside a Hydra multirun."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from backprop_lab.run import train

SCRIPT = Path(sys.executable).with_name("backprop-train")
EPOCHS = "trainer.max_epochs=30"


def run_command(tmp_path, *args):
    return subprocess.run([str(SCRIPT), *args, EPOCHS, "plots=false", f"paths.log_dir={tmp_path}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_ddp_sim_single_run_writes_one_run_directory(tmp_path):
    out = run_command(tmp_path, "trainer=ddp_sim")
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = tmp_path.glob("train/runs/*")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 30
    assert (run_dir / "ddp_process.log").is_file()  # the second process joined this directory
    assert out.stdout.count("outputs:") == 1


def test_ddp_sim_in_a_multirun_matches_one_process_training_in_both_modes(tmp_path, make_cfg):
    """Two processes with half the batch each end where one process with the whole batch does."""
    out = run_command(tmp_path, "-m", "trainer=ddp_sim", "model.backward=manual,autograd")
    assert out.returncode == 0, out.stderr[-3000:]
    (sweep_dir,) = tmp_path.glob("train/multiruns/*")
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["0", "1", "multirun.yaml"]
    assert len(list(tmp_path.glob("train/*/*"))) == 1  # no directories from the extra ranks

    for job, mode in ((0, "manual"), (1, "autograd")):
        ddp = json.loads((sweep_dir / str(job) / "metrics.json").read_text())
        single = train(make_cfg("trainer=cpu", f"model.backward={mode}", EPOCHS, run=mode))
        assert ddp["backward"] == mode and ddp["status"] == "completed"
        for name, weight in single["weights"].items():
            gap = np.abs(np.array(ddp["weights"][name]) - np.array(weight)).max()
            assert gap < 1e-6, (mode, name, gap)
