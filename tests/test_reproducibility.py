"""Same config, same numbers; a resumed run ends where an uninterrupted one does; divergence."""

import json

import pytest

from backprop_lab.run import train

# Numbers that measure the machine rather than the training.
MACHINE_KEYS = {"wall_seconds", "fit_seconds", "forward_ms_mean", "backward_ms_mean",
                "step_ms_mean", "output_dir", "checkpoint", "pictures"}
MINI_BATCHES = ("data=moons", "data.batch_size=16", "model.hidden=[4]")


def comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in MACHINE_KEYS}


def test_same_config_and_seed_give_identical_metrics(make_cfg, tmp_path):
    first = train(make_cfg(*MINI_BATCHES, "trainer.max_epochs=4", "seed=3", run="a"))
    second = train(make_cfg(*MINI_BATCHES, "trainer.max_epochs=4", "seed=3", run="b"))
    other = train(make_cfg(*MINI_BATCHES, "trainer.max_epochs=4", "seed=4", run="c"))
    on_disk = [json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("a", "b")]
    assert comparable(on_disk[0]) == comparable(on_disk[1])
    assert comparable(first) == comparable(second)
    assert first["weights"] != other["weights"]


@pytest.mark.parametrize("backward", ["manual", "autograd"])
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(make_cfg, tmp_path, backward):
    mode = f"model.backward={backward}"
    whole = train(make_cfg(*MINI_BATCHES, mode, "trainer.max_epochs=12", "target_loss=null",
                           run="whole"))
    first_half = train(make_cfg(*MINI_BATCHES, mode, "trainer.max_epochs=6", "target_loss=null",
                                run="half"))
    resumed = train(make_cfg(*MINI_BATCHES, mode, "trainer.max_epochs=12", "target_loss=null",
                             f"ckpt_path={first_half['checkpoint']}", run="resumed"))
    assert resumed["steps"] == whole["steps"] > first_half["steps"]
    assert resumed["weights"] == whole["weights"]


def test_divergence_stops_at_the_step_and_says_so(make_cfg, caplog):
    metrics = train(make_cfg("model.output_activation=identity", "model.activation=relu",
                             "optimizer.lr=100", "trainer.max_epochs=200"))
    assert metrics["status"] == "diverged"
    assert metrics["steps"] < 200
    reason = metrics["stop_reason"]
    assert reason.startswith("the loss became ") and f"at step {metrics['steps'] - 1};" in reason
    assert "last finite loss" in reason and "learning rate 100" in reason
    assert any("diverged: the loss became" in r.getMessage() for r in caplog.records)
