"""Populations: K networks in one run, each following the trajectory of its own single run."""

import csv

import numpy as np
import pytest
import torch

from backprop_lab.hydra_errors import preflight
from backprop_lab.manual_backward import MLPFunction
from backprop_lab.network import MLP
from backprop_lab.run import train, validate
from backprop_lab.train import CONFIG_MODULE, CONFIG_NAME

XOR_X = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
XOR_Y = torch.tensor([[0.0], [1.0], [1.0], [0.0]], dtype=torch.float64)


@pytest.mark.parametrize("loss, reduction", [("mse", "mean"), ("half_mse", "sum"),
                                             ("bce", "mean")])
@pytest.mark.parametrize("backward", ["manual", "autograd"])
def test_member_gradients_equal_those_of_the_member_alone_float64(loss, reduction, backward):
    output = "identity" if loss == "bce" else "sigmoid"
    settings = dict(loss=loss, reduction=reduction, output_activation=output, hidden=[3])
    population = MLP(2, n_outputs=1, population=4, **settings).double()
    population.initialize(seed=5)
    grads = population.gradients(XOR_X, XOR_Y, backward)
    losses = population.member_losses(population(XOR_X), XOR_Y)
    for i in range(4):
        alone = MLP(2, n_outputs=1, **settings).double()
        alone.initialize(seed=5 + i)
        assert losses[i].item() == pytest.approx(alone.loss(alone(XOR_X), XOR_Y).item(),
                                                 rel=1e-14)
        for name, grad in alone.gradients(XOR_X, XOR_Y, backward).items():
            torch.testing.assert_close(grads[name][i], grad, rtol=0, atol=1e-14)


def test_manual_backward_with_a_member_dimension_passes_gradcheck():
    generator = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64,
                           requires_grad=True)

    x = rand(5, 2)  # shared by the members
    params = (rand(3, 4, 2), rand(3, 4), rand(3, 1, 4), rand(3, 1))  # (K, n_l, n_{l-1}) ...
    assert torch.autograd.gradcheck(
        lambda *t: MLPFunction.apply(t[0], ("tanh", "sigmoid"), *t[1:])[0], (x, *params))


def _single_run_losses(run_dir) -> list[float]:
    with open(run_dir / "history.csv", newline="") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


@pytest.mark.parametrize("backward", ["manual", "autograd"])
def test_each_member_follows_the_trajectory_of_its_single_run(make_cfg, tmp_path, backward):
    common = ("experiment=xor", f"model.backward={backward}", "seed=3", "trainer.max_epochs=150")
    metrics = train(make_cfg(*common, "model.population=3", run="population"))
    assert metrics["population"] == 3 and metrics["steps"] == metrics["epochs"]
    curves = np.load(tmp_path / "population" / "member_losses.npz")
    assert curves["epoch"].tolist() == list(range(1, metrics["epochs"] + 1))

    for member in range(3):
        single = train(make_cfg(*common, f"model.init.seed={3 + member}",
                                run=f"single{member}"))
        losses = _single_run_losses(tmp_path / f"single{member}")
        # The single run stops at the target; up to there both are the same network.
        np.testing.assert_allclose(curves["loss"][: len(losses), member], losses, rtol=0,
                                   atol=1e-6)
        row = metrics["members"][member]
        assert row["init_seed"] == 3 + member
        assert row["epochs_to_target"] == single["epochs_to_target"]
    reached = sum(row["epochs_to_target"] is not None for row in metrics["members"])
    assert metrics["fraction_converged"] == reached / 3
    assert (tmp_path / "population" / "members.csv").read_text().startswith(
        "member,init_seed,epochs_to_target,train_loss,train_acc\n")


def test_population_stops_once_every_member_reached_the_target(make_cfg):
    metrics = train(make_cfg("experiment=xor", "seed=0", "model.population=2"))
    epochs = [row["epochs_to_target"] for row in metrics["members"]]
    assert metrics["stop_reason"] == "reached target loss"
    assert metrics["epochs"] == max(epochs) and metrics["fraction_converged"] == 1.0


@pytest.mark.parametrize("args, expected", [
    (["model.population=4", "+trainer.gradient_clip_val=1.0"],
     "model.population=4 with trainer.gradient_clip_val=1.0 (clipping by the norm of all "
     "gradients) would couple the members"),
    (["model.population=0"], "model.population=0 is not allowed"),
    (["model.population=2", "compare=true"], "compare=true trains single networks"),
])
def test_settings_that_would_couple_members_are_refused_in_one_line(args, expected, refusal):
    assert expected in refusal(args)


def test_entrywise_clipping_keeps_members_apart_and_is_accepted(capsys):
    preflight(["model.population=4", "+trainer.gradient_clip_val=1.0",
               "+trainer.gradient_clip_algorithm=value"], CONFIG_MODULE, CONFIG_NAME, validate,
              prog="backprop-train")
    assert capsys.readouterr().err == ""
