"""The ``backprop-train`` command: a real subprocess run, and one-line errors for bad input."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from backprop_lab.hydra_errors import preflight
from backprop_lab.run import validate
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
        (["optimizer.lr=-0.5"], "optimizer.lr=-0.5 is not allowed; it must be a finite number above 0"),
        (["optimizer.lr=0"], "optimizer.lr=0 is not allowed"),
        (["model.loss=l1"], "model.loss='l1' is not allowed; choose one of: mse, half_mse"),
        (["model.foo=1"], "model.foo is not a known key; keys of model: n_inputs"),
        (["trainer=tpu"], "Could not find 'trainer/tpu'; Available options in 'trainer': auto"),
        (["model.hidden=[0]"], "model.hidden.0=0 is not allowed; it must be an integer between 1 and 10000"),
        (["seed=-3"], "seed=-3 is not allowed"),
        (["-m", "model.backward=manual,autograd,fast"], "model.backward='fast' is not allowed"),
        (["-m", "seed=0,1", "optimizer.lr=0.1,-1"], "optimizer.lr=-1 is not allowed"),
        (["optimizer.lr=inf"], "optimizer.lr=inf is not allowed"),
        (["optimizer.momentum=1.5"], "optimizer.momentum=1.5 is not allowed; it must be a number"),
        (["optimizer=adam", "optimizer.betas=[2,3]"], "Invalid beta parameter at index 0: 2"),
        (["model.n_inputs=3"], "model.n_inputs=3 does not match the data, which has 2 input"),
        (["model.init.weights={w_hidden: [[1, 2, 3]]}"],
         "init weights: w_hidden has shape (1, 3), the network needs (2, 2)"),
        (["model.init.weights={w_out: [[nan, 1]]}"], "w_out=[[nan, 1]] holds NaN or infinite"),
        (["model.bias=false", "model.init.weights={b_out: [0.5]}"],
         "init weights: 'b_out' given but that layer has no bias"),
        (["model.init.seed=abc"], "model.init.seed='abc' is not allowed; it must be an integer"),
        (["target_loss=-1"], "target_loss=-1 is not allowed"),
        (["evaluate=maybe"], "evaluate='maybe' is not allowed; use true or false"),
        (["trainer.check_val_every_n_epoch=0"], "trainer.check_val_every_n_epoch=0 is not"),
        (["trainer.min_epochs=10", "trainer.max_epochs=3"], "must not exceed trainer.max_epochs"),
        (["model.hidden=[100000000]"], "model.hidden.0=100000000 is not allowed"),
        (["model.hidden=[]"], "model.hidden=[] is not allowed; give a list of widths"),
        (["model.activation=swish"], "model.activation='swish' is not allowed; use one of: "),
        (["model.activation=[tanh,relu]"], "give one value or 1, one per layer"),
        (["model.loss=bce"], "model.loss=bce takes the output as logits"),
        (["model.reduction=max"], "model.reduction='max' is not allowed; choose one of: mean"),
        (["model.manual_impl=fast"],
         "model.manual_impl='fast' is not allowed; choose one of: readable, fused"),
        (["model.freeze_bias=sometimes"], "model.freeze_bias='sometimes' is not allowed"),
        (["+model.foo=1"], "unexpected keyword argument 'foo'"),
        (["-m", "model.init.seed=0,abc"], "model.init.seed='abc' is not allowed"),
    ],
)
def test_bad_override_exits_2_with_one_line_naming_the_key(args, expected, refusal):
    assert expected in refusal(args)


def test_log_dir_that_is_a_file_is_refused(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(SystemExit):
        preflight([f"paths.log_dir={a_file / 'logs'}"], CONFIG_MODULE, CONFIG_NAME, validate,
                  prog="backprop-train")
    assert f"{a_file} is a file, not a directory" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a CPU-only machine")
def test_bce_on_targets_outside_zero_and_one_is_refused(tmp_path, capsys):
    table = tmp_path / "table.csv"
    table.write_text("a,b,y\n" + "".join(f"{i},{i % 3},{i * 0.5}\n" for i in range(10)))
    with pytest.raises(SystemExit):
        preflight(["data=csv", f"data.path={table}", "model.loss=bce",
                   "model.output_activation=identity"], CONFIG_MODULE, CONFIG_NAME, validate,
                  prog="backprop-train")
    assert "model.loss=bce needs targets in {0, 1}" in capsys.readouterr().err


@pytest.fixture(scope="module")
def wide_checkpoint(tmp_path_factory):
    """The checkpoint of a 3-epoch run of a 2-8-1 network."""
    from hydra import compose, initialize_config_module

    from backprop_lab.run import train

    out = tmp_path_factory.mktemp("wide") / "run"
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        cfg = compose(CONFIG_NAME, overrides=[f"paths.output_dir={out}", "plots=false",
                                              "model.hidden=[8]", "trainer.max_epochs=3"])
    return train(cfg)["checkpoint"]


@pytest.mark.parametrize("args, expected", [
    (["ckpt_path={ckpt}"], "holds net.layers.0.weight of shape (8, 2) but this config's "
                           "network has (2, 2)"),
    (["ckpt_path={ckpt}", "model.hidden=[8]", "trainer.max_epochs=3"],
     "was saved after epoch 3; resuming needs trainer.max_epochs above that (it is 3)"),
    (["ckpt_path={text}"], "is not a checkpoint of this project"),
    (["ckpt_path={folder}"], "is a directory; give the checkpoint file"),
    (["callbacks.parity.every_n_steps=0"], "callbacks.parity: every_n_steps=0 must be at least 1"),
    (["callbacks.parity.tolerance=-1"], "callbacks.parity: tolerance=-1 must be a number above 0"),
    (["callbacks.checkpoint.every_n_epochs=-5"], "callbacks.checkpoint: Invalid value for "
                                                 "every_n_epochs=-5"),
    (["trainer.precision=bf16-true"], "trainer.precision='bf16-true' is not allowed"),
    (["data=csv", "data.path={targets}"], "the data's targets run from 0 to 2, but "
                                          "model.output_activation=sigmoid only gives values"),
    (["seed=1.5"], "seed=1.5 is not allowed"),
    (["data=moons", "data.samples=0"], "data.samples=0 is not allowed"),
])
def test_bad_resume_callback_or_target_setting_is_refused_before_any_output(
        args, expected, wide_checkpoint, tmp_path, refusal):
    targets = tmp_path / "targets.csv"
    targets.write_text("a,b,y\n" + "".join(f"{i},{i % 4},{i % 3}\n" for i in range(12)))
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    names = {"ckpt": wide_checkpoint, "text": tmp_path / "text.ckpt", "folder": tmp_path,
             "targets": targets}
    logs = tmp_path / "logs"
    assert expected in refusal([a.format(**names) for a in args] + [f"paths.log_dir={logs}"])
    assert not logs.exists()


def test_gpu_trainer_without_cuda_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit):
        preflight(["trainer=gpu"], CONFIG_MODULE, CONFIG_NAME, validate, prog="backprop-train")
    assert "needs a CUDA device and none is visible" in capsys.readouterr().err


def test_good_overrides_and_sweeps_pass_the_preflight(capsys):
    for args in (["model.backward=autograd", "optimizer=adam"],
                 ["-m", "model.backward=manual,autograd", "seed=range(3)"],
                 ["--help"]):
        preflight(args, CONFIG_MODULE, CONFIG_NAME, validate, prog="backprop-train")
    assert capsys.readouterr().err == ""


# What the command line must not import before training starts: each costs a second or more.
HEAVY_MODULES = ("torch", "lightning", "matplotlib", "mlflow", "optuna", "sklearn")
SHOW_IMPORTED_AFTER_MAIN = f"""
import sys
from backprop_lab.train import main
sys.argv = ["backprop-train", *sys.argv[1:]]
try:
    main()
finally:
    print("imported:", [m for m in {HEAVY_MODULES!r} if m in sys.modules])
"""


@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job"]], ids=["help", "cfg_job"])
def test_help_and_cfg_job_import_no_heavy_library(args):
    out = subprocess.run([sys.executable, "-c", SHOW_IMPORTED_AFTER_MAIN, *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "imported: []"
    expected = "backprop-train: train a small sigmoid network" if args == ["--help"] else "seed: 0"
    assert expected in out.stdout


HYDRAS_OWN_HELP = """
import sys
from backprop_lab.train import hydra_main
sys.argv = ["backprop-train", *sys.argv[1:]]
hydra_main()
"""


@pytest.mark.parametrize("args", [["--help"], ["experiment=xor", "model.hidden=[4,4]", "-h"],
                                  ["optimizer=adam", "hydra.help.app_name=other", "--help"]],
                         ids=["plain", "overrides", "hydra_override"])
def test_fast_help_prints_exactly_what_hydras_help_prints(args):
    from backprop_lab.fast_help import fast_help

    hydra = subprocess.run([sys.executable, "-c", HYDRAS_OWN_HELP, *args], capture_output=True,
                           text=True, timeout=120)
    assert hydra.returncode == 0, hydra.stderr[-2000:]
    ours = fast_help(args, CONFIG_MODULE, CONFIG_NAME)
    assert ours + "\n" == hydra.stdout
    assert "data: blobs, breast_cancer, circles, csv, moons, rows, spiral, xor\n" in ours


@pytest.mark.parametrize("args", [["--hydra-help"], ["--help", "--resolve"],
                                  ["-m", "seed=0,1", "--help"], ["model.backward=autograd"],
                                  ["hydra.help.template=$HYDRA_CONFIG_GROUPS", "--help"],
                                  ["trainer=tpu", "--help"]],
                         ids=["hydra_help", "resolve", "multirun", "no_help", "template",
                              "bad_override"])
def test_fast_help_leaves_every_other_form_to_hydra(args):
    from backprop_lab.fast_help import fast_help

    assert fast_help(args, CONFIG_MODULE, CONFIG_NAME) is None


def test_ctrl_c_keeps_a_resumable_run_and_exits_130(tmp_path):
    process = subprocess.Popen(
        [str(SCRIPT), f"paths.log_dir={tmp_path}", "trainer.max_epochs=1000000",
         "target_loss=null", "plots=false"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A background process may inherit SIGINT ignored; a user's Ctrl-C is not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    # Interrupt once training is under way: the first periodic checkpoint is on disk.
    while not list(tmp_path.glob("train/runs/*/checkpoints/*.ckpt")):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)

    assert process.returncode == 130, stderr[-2000:]
    (run,) = tmp_path.glob("train/runs/*")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["steps"] >= 500
    assert metrics["stop_reason"] == "interrupted by a signal (Ctrl-C)"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}" in stdout
