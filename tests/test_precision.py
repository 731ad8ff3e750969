"""Trainer precisions (32-true, 64-true, bf16-mixed) in both backward modes, and autocast."""

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from backprop_lab.data import XOR_INPUTS, XOR_TARGETS
from backprop_lab.network import MLP
from backprop_lab.run import train

PARAM_DTYPE = {"32-true": "torch.float32", "64-true": "torch.float64",
               "bf16-mixed": "torch.float32"}
# The loss autograd gives: bf16-mixed runs mse_loss in float32 under autocast.
LOSS_DTYPE = {"32-true": "torch.float32", "64-true": "torch.float64",
              "bf16-mixed": "torch.float32"}
BF16_EPS = torch.finfo(torch.bfloat16).eps  # 2^-7; bf16 rounds to within half of this


class RecordDtypes(Callback):
    """Records the loss's dtype and each parameter's and its gradient's dtype after backward.

    ``train`` merges ``metrics_summary`` into the metrics it returns.
    """

    def __init__(self) -> None:
        self.loss_dtypes: set[str] = set()
        self.param_dtypes: dict[str, set[str]] = {}

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.loss_dtypes.add(str(loss.dtype))

    def on_after_backward(self, trainer, pl_module) -> None:
        for name, p in pl_module.net.named_parameters():
            self.param_dtypes.setdefault(name, set()).add(f"{p.dtype} {p.grad.dtype}")

    def metrics_summary(self) -> dict:
        return {"recorded_dtypes": {
            "loss": sorted(self.loss_dtypes),
            "params": {name: sorted(seen) for name, seen in self.param_dtypes.items()},
        }}


@pytest.mark.parametrize("backward", ["manual", "autograd"])
@pytest.mark.parametrize("precision", ["32-true", "64-true", "bf16-mixed"])
def test_training_keeps_parameter_and_gradient_dtypes_at_each_precision(
        make_cfg, precision, backward):
    # ++ sets trainer.precision whether or not conf/trainer declares the key.
    metrics = train(make_cfg(
        f"trainer.precision={precision}", f"model.backward={backward}", "trainer.max_epochs=3",
        f"+callbacks.record_dtypes._target_={__name__}.RecordDtypes",
    ))

    assert metrics["status"] == "completed" and metrics["steps"] == 3
    recorded = metrics["recorded_dtypes"]
    assert recorded["loss"] == [LOSS_DTYPE[precision]]
    dtype = PARAM_DTYPE[precision]
    # Each parameter, then its gradient: the same dtype, also when bf16-mixed computes in bf16.
    assert recorded["params"] == {
        name: [f"{dtype} {dtype}"]
        for name in ("layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias")
    }
    assert all(0.0 < metrics[k] < 1.0 for k in ("train_loss", "val_loss", "test_loss"))


def xor_network(seed: int) -> tuple[MLP, torch.Tensor, torch.Tensor]:
    net = MLP()
    net.initialize(seed=seed)
    return net, torch.tensor(XOR_INPUTS), torch.tensor(XOR_TARGETS)


@pytest.mark.parametrize("seed", range(5))
def test_manual_backward_under_bf16_autocast_matches_autograd(seed):
    net, x, y = xor_network(seed)
    results = {}
    for backward in ("manual", "autograd"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_hat = net(x, backward)
            loss = net.loss(y_hat, y, backward)
        results[backward] = (y_hat, loss, torch.autograd.grad(loss, list(net.parameters())))

    manual_y_hat, manual_loss, manual_grads = results["manual"]
    autograd_y_hat, autograd_loss, autograd_grads = results["autograd"]
    assert manual_y_hat.dtype == autograd_y_hat.dtype == torch.bfloat16
    assert manual_loss.dtype == autograd_loss.dtype == torch.float32
    # Each weight entry is reached through about eight bf16 roundings (y_hat, 1 - y_hat, the
    # deltas, h (1 - h), the products and the batch sums), each within eps/2, so either
    # gradient is within about 4 eps of the exact one, relative to its largest entry, and the
    # two within 8 eps (6%). Gradients that cancel over the batch can exceed this; these seeds
    # reach at most 5.2 eps.
    for m, a in zip(manual_grads, autograd_grads):
        assert m.dtype == a.dtype == torch.float32
        gap = (m - a).abs().max() / a.abs().max()
        assert gap <= 8 * BF16_EPS, f"{gap / BF16_EPS:.2f} eps"


def test_float64_inputs_are_not_cast_under_autocast():
    net, x, y = xor_network(0)
    net.double()
    x, y = x.double(), y.double()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = net.loss(net(x, "manual"), y, "manual")
        reference = net.loss(net(x, "autograd"), y, "autograd")
    grads = torch.autograd.grad(loss, list(net.parameters()))
    expected = torch.autograd.grad(reference, list(net.parameters()))

    # Autocast leaves float64 alone, so both run in float64 and agree to rounding.
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(reference.item(), abs=1e-15)
    for g, e in zip(grads, expected):
        assert g.dtype == torch.float64
        assert torch.allclose(g, e, rtol=0, atol=1e-12)


def test_manual_backward_ignores_autocast_around_the_backward_call():
    net, x, y = xor_network(0)
    weights = list(net.parameters())
    outside = torch.autograd.grad(net.loss(net(x, "manual"), y, "manual"), weights)

    # A float32 forward whose backward is called under autocast: on the CPU the caller's
    # autocast state reaches backward, and would otherwise put its matrix products in bf16.
    loss = net.loss(net(x, "manual"), y, "manual")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = torch.autograd.grad(loss, weights)

    for i, o in zip(inside, outside):
        assert i.dtype == torch.float32
        assert torch.equal(i, o)


@pytest.mark.parametrize("precision", ["32-true", "64-true", "bf16-mixed"])
def test_fused_manual_backward_keeps_dtypes_at_each_precision(make_cfg, precision):
    metrics = train(make_cfg(
        f"trainer.precision={precision}", "model.manual_impl=fused", "trainer.max_epochs=3",
        f"+callbacks.record_dtypes._target_={__name__}.RecordDtypes",
    ))
    assert metrics["status"] == "completed" and metrics["steps"] == 3
    assert metrics["recorded_dtypes"]["loss"] == [LOSS_DTYPE[precision]]
    dtype = PARAM_DTYPE[precision]
    assert metrics["recorded_dtypes"]["params"] == {
        name: [f"{dtype} {dtype}"]
        for name in ("layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias")
    }


@pytest.mark.parametrize("seed", range(5))
def test_fused_backward_under_bf16_autocast_matches_autograd(seed):
    net, x, y = xor_network(seed)
    results = {}
    for backward, impl in (("manual", "fused"), ("autograd", "readable")):
        net.manual_impl = impl
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_hat, loss = net.forward_and_loss(x, y, backward)
        results[backward] = (y_hat, loss, torch.autograd.grad(loss, list(net.parameters())))
    (fused_y_hat, fused_loss, fused), (y_hat, loss, reference) = results.values()
    assert fused_y_hat.dtype == y_hat.dtype == torch.bfloat16
    assert fused_loss.dtype == loss.dtype == torch.float32
    # The same bound as the readable path's test above, for the same reasons.
    for f, a in zip(fused, reference):
        assert f.dtype == a.dtype == torch.float32
        gap = (f - a).abs().max() / a.abs().max()
        assert gap <= 8 * BF16_EPS, f"{gap / BF16_EPS:.2f} eps"
