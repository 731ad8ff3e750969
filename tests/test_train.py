"""Training through ``train(cfg)`` in-process, with configs composed by Hydra."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backprop_lab.network import MLP
from backprop_lab.run import train
from backprop_lab.train import format_summary

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# Groups whose every option a run must accept; hydra/ and paths/ are exercised by every run.
GROUPS = ("model", "data", "optimizer", "trainer", "logger", "callbacks", "experiment")
REQUIRED_METRICS = {
    "status", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
    "epochs", "steps", "wall_seconds", "backward", "seed",
}


# Options that need CUDA; on a machine without it only their composition is tested here.
NEEDS_CUDA = {"trainer=gpu", "trainer=ddp"}
# DDP starts its processes by running the command line again, so it cannot run inside pytest;
# tests/test_distributed.py runs it through the command.
RUN_AS_COMMAND = {"trainer=ddp_sim"}


def group_options():
    for group in GROUPS:
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            option = f"{group}={path.stem}"
            if option not in RUN_AS_COMMAND and (option not in NEEDS_CUDA
                                                 or torch.cuda.is_available()):
                yield option


def test_xor_reaches_accuracy_one_in_both_modes_with_the_same_final_loss(make_cfg):
    results = {
        mode: train(make_cfg("experiment=xor", f"model.backward={mode}", "seed=0", run=mode))
        for mode in ("manual", "autograd")
    }
    for mode, metrics in results.items():
        assert metrics["status"] == "completed", mode
        assert metrics["stop_reason"] == "reached target loss", mode
        assert metrics["train_acc"] == metrics["val_acc"] == metrics["test_acc"] == 1.0, mode
        assert metrics["test_loss"] < 0.01
    manual, autograd = results["manual"], results["autograd"]
    assert abs(manual["test_loss"] - autograd["test_loss"]) < 1e-5
    assert abs(manual["train_loss"] - autograd["train_loss"]) < 1e-5


@pytest.mark.parametrize("option", list(group_options()))
def test_every_config_option_composes_and_trains_one_step(make_cfg, option, tmp_path):
    extra = []
    if option == "data=csv":
        table = tmp_path / "points.csv"
        table.write_text("a,b,label\n0,0,0\n0,1,1\n1,0,1\n1,1,0\n0.5,0.2,1\n0.9,0.8,0\n")
        extra = [f"data.path={table}", "data.features=[a,b]", "data.target=label"]
    if option == "data=rows":
        extra = ["data.x=[[0.05,0.1],[0.5,0.2]]", "data.y=[[0.0],[1.0]]"]
    metrics = train(make_cfg(option, "trainer.max_epochs=1", *extra))
    assert metrics["status"] == "completed"
    assert metrics["steps"] == 1 and metrics["epochs"] == 1
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert REQUIRED_METRICS <= set(on_disk)
    assert on_disk["steps"] == 1


def test_gpu_and_ddp_trainer_configs_compose(make_cfg):
    gpu, ddp, ddp_sim = (make_cfg(f"trainer={name}") for name in ("gpu", "ddp", "ddp_sim"))
    assert (gpu.trainer.accelerator, gpu.trainer.devices) == ("gpu", 1)
    assert (ddp.trainer.accelerator, ddp.trainer.devices, ddp.trainer.strategy) == ("gpu", -1,
                                                                                    "ddp")
    assert (ddp_sim.trainer.accelerator, ddp_sim.trainer.devices) == ("cpu", 2)


def test_run_directory_holds_config_logs_checkpoint_and_metrics(make_cfg, tmp_path):
    metrics = train(make_cfg("trainer.max_epochs=5", "logger=tensorboard", "seed=4"))
    run = tmp_path / "run"
    assert (run / "config_resolved.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert metrics["checkpoint"] == str(run / "checkpoints" / "last.ckpt")
    assert metrics["seed"] == 4 and metrics["backward"] == "manual"
    assert metrics["wall_seconds"] > 0 and metrics["steps"] == 5


def test_checkpoint_loads_in_a_plain_python_process_without_hydra(make_cfg, tmp_path):
    metrics = train(make_cfg("trainer.max_epochs=3", "model.backward=autograd"))
    script = (
        "import sys, json\n"
        "from backprop_lab.module import BackpropModule\n"
        "m = BackpropModule.load_from_checkpoint(sys.argv[1])\n"
        "assert 'hydra' not in sys.modules and 'omegaconf' not in sys.modules\n"
        "print(json.dumps({'backward': m.net.backward,\n"
        "    'w_hidden': m.net.layers[0].weight.tolist(), 'lr': m.hparams.optimizer['lr']}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, metrics["checkpoint"]],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded["backward"] == "autograd"
    assert loaded["w_hidden"] == metrics["weights"]["w_hidden"]
    assert loaded["lr"] == 1.0


def test_seed_keras_experiment_takes_one_sgd_step_of_mean_squared_error(make_cfg):
    """Glorot weights, zero biases, MSE, SGD lr 0.1: one step equals w - 0.1 dL/dw."""
    cfg = make_cfg("experiment=seed_keras", "trainer.max_epochs=1", "seed=5")
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum) == ("sgd", 0.1, 0.0)
    assert (cfg.model.loss, cfg.model.init.scheme, cfg.model.bias) == ("mse", "glorot_uniform", True)
    metrics = train(cfg)

    net = MLP(backward="autograd")
    net.initialize(seed=5, scheme="glorot_uniform")
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([[0.0], [1.0], [1.0], [0.0]])
    net.loss(net(x), y).backward()
    for name, tensor in net.named_weights().items():
        expected = (tensor - 0.1 * tensor.grad).tolist()
        assert torch.allclose(torch.tensor(metrics["weights"][name]), torch.tensor(expected),
                              rtol=0, atol=1e-7), name


def test_bias_free_network_with_explicit_weights_starts_from_w1_to_w6(make_cfg):
    cfg = make_cfg(
        "model.bias=false",
        "model.init.weights={w_hidden: [[0.15, 0.2], [0.25, 0.3]], w_out: [[0.4, 0.45]]}",
        "trainer.max_epochs=1", "optimizer.lr=1e-9", "optimizer.momentum=0",
    )
    metrics = train(cfg)
    assert metrics["weights"]["b_hidden"] is None and metrics["weights"]["b_out"] is None
    w_hidden, (w_out,) = metrics["weights"]["w_hidden"], metrics["weights"]["w_out"]
    assert w_hidden[0] + w_hidden[1] == pytest.approx([0.15, 0.2, 0.25, 0.3], abs=1e-7)
    assert w_out == pytest.approx([0.4, 0.45], abs=1e-7)


def test_single_run_draws_its_pictures_as_png(make_cfg, tmp_path):
    metrics = train(make_cfg("plots=true", "trainer.max_epochs=10", "callbacks.parity.every_n_steps=2"))
    names = sorted(Path(p).name for p in metrics["pictures"])
    assert names == ["decision_boundary.png", "gradient_difference.png",
                     "hidden_activations.png", "loss_curve.png"]
    for name in names:
        data = (tmp_path / "run" / "pictures" / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000


def test_breast_cancer_experiment_classifies_the_held_out_rows(make_cfg):
    metrics = train(make_cfg("experiment=breast_cancer"))
    assert metrics["status"] == "completed" and metrics["steps"] == 300
    # 114 test rows never seen in training; measured 0.965 from seed 0.
    assert metrics["test_acc"] > 0.9
    assert metrics["val_acc"] > 0.9


def test_fused_manual_backward_trains_xor_along_the_readable_trajectory(make_cfg, tmp_path):
    """Same seed, same steps: the fused and readable runs' losses agree at every step."""
    runs = {impl: train(make_cfg("trainer.max_epochs=200", "target_loss=null",
                                 "callbacks.parity.every_n_steps=20",
                                 f"model.manual_impl={impl}", run=impl))
            for impl in ("readable", "fused")}
    fused = runs["fused"]
    assert fused["status"] == "completed" and fused["steps"] == 200
    assert (fused["manual_impl"], runs["readable"]["manual_impl"]) == ("fused", "readable")
    assert "[backward=manual (fused), loss=mse" in format_summary(fused)
    assert fused["parity"]["checks"] == 10 and fused["parity"]["failure"] is None
    assert max(fused["parity"]["max_rel"].values()) < 1e-4

    def losses(impl):
        lines = (tmp_path / impl / "history.csv").read_text().splitlines()[1:]
        return [float(line.split(",")[2]) for line in lines]

    readable_losses, fused_losses = losses("readable"), losses("fused")
    assert len(fused_losses) == 200 and fused_losses[-1] < fused_losses[0]
    assert fused_losses == pytest.approx(readable_losses, abs=1e-6)
    for stage in ("train", "val", "test"):
        assert fused[f"{stage}_loss"] == pytest.approx(runs["readable"][f"{stage}_loss"],
                                                       abs=1e-6)
