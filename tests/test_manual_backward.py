"""The hand-derived backward against gradcheck, autograd and the closed form of the derivation."""

import pytest
import torch
from torch.nn import functional as F

from backprop_lab.manual_backward import (
    bce_with_logits,
    fused_mlp_loss,
    mlp,
    sigmoid_mlp,
    squared_error,
)
from backprop_lab.network import MLP


def random_problem(batch: int, bias: bool, dtype=torch.float64, seed: int = 0):
    """x (B, 2), y (B, 1) in {0, 1}, and weights of a 2-2-1 network, all requiring grad."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 2, generator=g, dtype=dtype)
    y = torch.randint(0, 2, (batch, 1), generator=g).to(dtype)
    params = {
        "w_hidden": torch.randn(2, 2, generator=g, dtype=dtype),
        "b_hidden": torch.randn(2, generator=g, dtype=dtype) if bias else None,
        "w_out": torch.randn(1, 2, generator=g, dtype=dtype),
        "b_out": torch.randn(1, generator=g, dtype=dtype) if bias else None,
    }
    x.requires_grad_(True)
    for p in params.values():
        if p is not None:
            p.requires_grad_(True)
    return x, y, params


def autograd_loss(x, y, p, half):
    h = torch.sigmoid(F.linear(x, p["w_hidden"], p["b_hidden"]))
    y_hat = torch.sigmoid(F.linear(h, p["w_out"], p["b_out"]))
    mse = F.mse_loss(y_hat, y)
    return 0.5 * mse if half else mse


def manual_loss(x, y, p, half):
    y_hat = sigmoid_mlp(x, p["w_hidden"], p["b_hidden"], p["w_out"], p["b_out"])
    return squared_error(y_hat, y, half=half)


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("half", [False, True], ids=["mse", "half_mse"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_manual_backward_passes_gradcheck_float64(batch, half, bias):
    x, y, p = random_problem(batch, bias, seed=batch)
    inputs = (x, p["w_hidden"], p["b_hidden"], p["w_out"], p["b_out"])

    def loss_of(x, w_hidden, b_hidden, w_out, b_out):
        return squared_error(sigmoid_mlp(x, w_hidden, b_hidden, w_out, b_out), y, half=half)

    assert torch.autograd.gradcheck(loss_of, inputs, eps=1e-6, atol=1e-7)
    # The network's output alone, with a batch of output gradients rather than a scalar's.
    assert torch.autograd.gradcheck(sigmoid_mlp, inputs, eps=1e-6, atol=1e-7)


def test_loss_gradient_with_respect_to_target_passes_gradcheck():
    g = torch.Generator().manual_seed(3)
    y_hat = torch.rand(5, 1, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(5, 1, generator=g, dtype=torch.float64, requires_grad=True)
    for half in (False, True):
        assert torch.autograd.gradcheck(lambda a, b: squared_error(a, b, half), (y_hat, y))


def grads(loss, x, p):
    tensors = [x] + [t for t in p.values() if t is not None]
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("half", [False, True], ids=["mse", "half_mse"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_manual_grad_matches_autograd_float64(half, bias):
    x, y, p = random_problem(64, bias, seed=11)
    manual = grads(manual_loss(x, y, p, half), x, p)
    reference = grads(autograd_loss(x, y, p, half), x, p)
    assert manual_loss(x, y, p, half).item() == pytest.approx(autograd_loss(x, y, p, half).item(),
                                                              abs=1e-15)
    for m, r in zip(manual, reference):
        assert m.dtype == torch.float64
        assert torch.allclose(m, r, rtol=0, atol=1e-12), (m - r).abs().max()


@pytest.mark.parametrize("half", [False, True], ids=["mse", "half_mse"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_manual_grad_matches_autograd_float32(half, bias):
    """Every parameter's gradient, element by element, within 1e-6 relative."""
    x, y, p = random_problem(64, bias, dtype=torch.float32, seed=12)
    x.requires_grad_(False)
    params = [t for t in p.values() if t is not None]
    manual = torch.autograd.grad(manual_loss(x, y, p, half), params)
    reference = torch.autograd.grad(autograd_loss(x, y, p, half), params)
    for m, r in zip(manual, reference):
        assert m.dtype == torch.float32
        assert torch.allclose(m, r, rtol=1e-6, atol=0), ((m - r).abs() / r.abs()).max()


def test_closed_form_dl_dw1_equals_manual_gradient():
    """dL/dw1 = (y_hat - y) y_hat (1 - y_hat) w5 h1 (1 - h1) x1 for L = 1/2 (y_hat - y)^2."""
    w1, w2, w3, w4, w5, w6 = 0.15, 0.20, 0.25, 0.30, 0.40, 0.45
    x1, x2, y = (torch.tensor(v, dtype=torch.float64) for v in (0.05, 0.10, 0.01))
    w_hidden = torch.tensor([[w1, w2], [w3, w4]], dtype=torch.float64, requires_grad=True)
    w_out = torch.tensor([[w5, w6]], dtype=torch.float64, requires_grad=True)
    x = torch.stack([x1, x2]).reshape(1, 2)  # (B=1, I=2)

    y_hat = sigmoid_mlp(x, w_hidden, None, w_out, None)
    squared_error(y_hat, y.reshape(1, 1), half=True).backward()

    def sigmoid(z):
        return 1 / (1 + torch.exp(-z))

    h1, h2 = sigmoid(w1 * x1 + w2 * x2), sigmoid(w3 * x1 + w4 * x2)
    out = sigmoid(w5 * h1 + w6 * h2)
    closed_form = (out - y) * out * (1 - out) * w5 * h1 * (1 - h1) * x1
    assert y_hat.item() == pytest.approx(out.item(), abs=1e-15)
    assert w_hidden.grad[0, 0].item() == pytest.approx(closed_form.item(), rel=1e-13)
    assert closed_form.item() != 0.0


def test_mse_gradient_is_twice_half_mse_gradient():
    x, y, p = random_problem(8, bias=True, seed=5)
    full = grads(manual_loss(x, y, p, half=False), x, p)
    half = grads(manual_loss(x, y, p, half=True), x, p)
    for f, h in zip(full, half):
        assert torch.allclose(f, 2 * h, rtol=1e-14, atol=0)


def test_parameters_that_do_not_require_grad_get_none():
    x, y, p = random_problem(4, bias=True, seed=6)
    x.requires_grad_(False)
    p["b_hidden"].requires_grad_(False)
    p["w_out"].requires_grad_(False)
    manual_loss(x, y, p, half=False).backward()
    assert x.grad is None and p["b_hidden"].grad is None and p["w_out"].grad is None
    assert p["w_hidden"].grad is not None and p["b_out"].grad is not None
    assert p["w_hidden"].grad.abs().sum() > 0


def test_loss_refuses_targets_whose_shape_would_broadcast():
    with pytest.raises(ValueError, match=r"y_hat has shape \(4, 1\) but y has \(4,\)"):
        squared_error(torch.zeros(4, 1), torch.zeros(4))


GRID_WIDTHS = [[3], [4, 4]]
GRID_ACTIVATIONS = ["sigmoid", "tanh", "relu"]
GRID_LOSSES = ["mse", "half_mse", "bce"]


def grid_network(hidden, activation, loss, reduction, backward, bias=True, freeze_bias=False):
    """An MLP of the grid in float64: bce reads one logit; squared errors fit two outputs."""
    n_outputs, output_activation = (1, "identity") if loss == "bce" else (2, "sigmoid")
    net = MLP(n_inputs=3, hidden=hidden, n_outputs=n_outputs, activation=activation,
              output_activation=output_activation, bias=bias, freeze_bias=freeze_bias,
              backward=backward, loss=loss, reduction=reduction).double()
    net.initialize(seed=len(hidden) * 7 + GRID_ACTIVATIONS.index(activation), scale=1.5)
    return net


def grid_data(loss, n_outputs, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 3, generator=g, dtype=torch.float64)
    if loss == "bce":
        return x, torch.randint(0, 2, (16, 1), generator=g).double()
    return x, torch.rand(16, n_outputs, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", GRID_LOSSES)
@pytest.mark.parametrize("activation", GRID_ACTIVATIONS)
@pytest.mark.parametrize("hidden", GRID_WIDTHS, ids=["h3", "h4x4"])
def test_manual_backward_passes_gradcheck_over_the_grid(hidden, activation, loss, reduction):
    net = grid_network(hidden, activation, loss, reduction, "manual")
    x, y = grid_data(loss, net.layers[-1].out_features)
    params = [t.detach().clone().requires_grad_(True)
              for layer in net.layers for t in (layer.weight, layer.bias)]
    x.requires_grad_(True)

    def loss_of(x, *params):
        y_hat = mlp(x, net.activations, *params)
        if loss == "bce":
            return bce_with_logits(y_hat, y, reduction)
        return squared_error(y_hat, y, half=loss == "half_mse", reduction=reduction)

    assert torch.autograd.gradcheck(loss_of, (x, *params), eps=1e-6, atol=1e-6)


# Every width with every activation, and one network with a different activation per layer.
SHAPES = [(h, a) for h in GRID_WIDTHS for a in GRID_ACTIVATIONS] + [([4, 4], ["tanh", "relu"])]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", GRID_LOSSES)
@pytest.mark.parametrize("hidden, activation", SHAPES, ids=lambda v: str(v).replace(" ", ""))
def test_manual_grad_matches_autograd_over_the_grid_float64(hidden, activation, loss, reduction):
    grads = {}
    for backward in ("manual", "autograd"):
        net = grid_network(hidden, "tanh" if isinstance(activation, list) else activation,
                           loss, reduction, backward)
        if isinstance(activation, list):
            net.activations = (*activation, net.activations[-1])
        x, y = grid_data(loss, net.layers[-1].out_features, seed=1)
        grads[backward] = net.gradients(x, y, backward)
    assert grads["manual"].keys() == grads["autograd"].keys()
    for name, grad in grads["manual"].items():
        assert torch.allclose(grad, grads["autograd"][name], rtol=0, atol=1e-12), name


def test_frozen_and_absent_biases_get_no_gradient_and_the_rest_match_autograd():
    grads = {}
    for backward in ("manual", "autograd"):
        net = grid_network([4, 4], "tanh", "mse", "sum", backward,
                           bias=[True, False, True], freeze_bias=[False, False, True])
        x, y = grid_data("mse", 2, seed=2)
        grads[backward] = net.gradients(x, y, backward)
    assert sorted(grads["manual"]) == ["b_hidden1", "w_hidden1", "w_hidden2", "w_out"]
    for name, grad in grads["manual"].items():
        assert torch.allclose(grad, grads["autograd"][name], rtol=0, atol=1e-12), name


def test_bce_on_extreme_logits_stays_finite_and_matches_autograd():
    z = torch.tensor([[-800.0], [-30.0], [0.0], [30.0], [800.0]], dtype=torch.float64,
                     requires_grad=True)
    y = torch.tensor([[1.0], [0.0], [1.0], [1.0], [0.0]], dtype=torch.float64)
    manual = bce_with_logits(z, y, "sum")
    (grad,) = torch.autograd.grad(manual, z)
    reference = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="sum")
    (expected,) = torch.autograd.grad(reference, z)
    assert torch.isfinite(manual) and manual.item() == pytest.approx(reference.item(), rel=1e-15)
    assert torch.allclose(grad, expected, rtol=0, atol=1e-15)


# The fused path: network and loss in one Function, over the same grid as the readable one.
def fused_loss_of(net, y):
    """The fused loss as a function of (x, w_1, b_1, ...), for gradcheck."""

    def loss_of(x, *params):
        return fused_mlp_loss(x, y, net.activations, net.loss_name, net.reduction, *params)[0]

    return loss_of


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", GRID_LOSSES)
@pytest.mark.parametrize("activation", GRID_ACTIVATIONS)
@pytest.mark.parametrize("hidden", GRID_WIDTHS, ids=["h3", "h4x4"])
def test_fused_backward_passes_gradcheck_over_the_grid(hidden, activation, loss, reduction):
    net = grid_network(hidden, activation, loss, reduction, "manual")
    x, y = grid_data(loss, net.layers[-1].out_features)
    params = [t.detach().clone().requires_grad_(True)
              for layer in net.layers for t in (layer.weight, layer.bias)]
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(fused_loss_of(net, y), (x, *params), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", GRID_LOSSES)
@pytest.mark.parametrize("hidden, activation", SHAPES, ids=lambda v: str(v).replace(" ", ""))
def test_fused_grad_and_loss_match_autograd_over_the_grid_float64(hidden, activation, loss,
                                                                   reduction):
    results = {}
    for backward, impl in (("manual", "fused"), ("autograd", "readable")):
        net = grid_network(hidden, "tanh" if isinstance(activation, list) else activation,
                           loss, reduction, backward)
        net.manual_impl = impl
        if isinstance(activation, list):
            net.activations = (*activation, net.activations[-1])
        x, y = grid_data(loss, net.layers[-1].out_features, seed=1)
        y_hat, value = net.forward_and_loss(x, y)
        results[backward] = (y_hat, value, net.gradients(x, y, backward))
    (fused_y_hat, fused_value, fused), (y_hat, value, reference) = results.values()
    assert torch.equal(fused_y_hat, y_hat)
    assert fused_value.item() == pytest.approx(value.item(), rel=1e-14)
    assert fused.keys() == reference.keys()
    for name, grad in fused.items():
        assert grad.abs().max() > 0, name
        assert torch.allclose(grad, reference[name], rtol=0, atol=1e-12), name


def test_fused_gives_frozen_and_absent_biases_no_gradient_and_the_rest_match_autograd():
    grads = {}
    for backward in ("manual", "autograd"):
        net = grid_network([4, 4], "tanh", "mse", "sum", backward,
                           bias=[True, False, True], freeze_bias=[False, False, True])
        net.manual_impl = "fused"
        x, y = grid_data("mse", 2, seed=2)
        grads[backward] = net.gradients(x, y, backward)
    assert sorted(grads["manual"]) == ["b_hidden1", "w_hidden1", "w_hidden2", "w_out"]
    for name, grad in grads["manual"].items():
        assert torch.allclose(grad, grads["autograd"][name], rtol=0, atol=1e-12), name


def test_fused_computes_only_the_gradients_asked_for():
    x, y, p = random_problem(4, bias=True, seed=6)
    x.requires_grad_(False)
    p["b_hidden"].requires_grad_(False)
    p["w_out"].requires_grad_(False)
    params = (p["w_hidden"], p["b_hidden"], p["w_out"], p["b_out"])
    loss, _ = fused_mlp_loss(x, y, ("sigmoid", "sigmoid"), "mse", "mean", *params)
    loss.backward()
    assert x.grad is None and p["b_hidden"].grad is None and p["w_out"].grad is None
    reference = torch.autograd.grad(autograd_loss(x, y, p, half=False),
                                    [p["w_hidden"], p["b_out"]])
    assert torch.allclose(p["w_hidden"].grad, reference[0], rtol=0, atol=1e-15)
    assert torch.allclose(p["b_out"].grad, reference[1], rtol=0, atol=1e-15)


def test_fused_scales_its_gradients_by_the_incoming_gradient():
    x, y, p = random_problem(8, bias=True, seed=7)
    params = list(p.values())
    loss, _ = fused_mlp_loss(x, y, ("sigmoid", "sigmoid"), "half_mse", "sum", *params)
    once = torch.autograd.grad(loss, params, retain_graph=True)
    thrice = torch.autograd.grad(3 * loss, params)
    for a, b in zip(once, thrice):
        assert torch.allclose(3 * a, b, rtol=1e-15, atol=0)


def test_fused_without_grad_mode_keeps_no_gradients_and_gives_the_same_loss():
    x, y, p = random_problem(16, bias=True, seed=8)
    params = list(p.values())
    with_grads, y_hat = fused_mlp_loss(x, y, ("sigmoid", "sigmoid"), "mse", "mean", *params)
    with torch.no_grad():
        without, y_hat_no_grad = fused_mlp_loss(x, y, ("sigmoid", "sigmoid"), "mse", "mean",
                                                *params)
    assert not without.requires_grad and not y_hat.requires_grad
    assert torch.equal(without, with_grads.detach()) and torch.equal(y_hat_no_grad, y_hat)


@pytest.mark.parametrize("half", [False, True], ids=["mse", "half_mse"])
def test_fused_grad_matches_autograd_float32(half):
    x, y, p = random_problem(64, bias=True, dtype=torch.float32, seed=12)
    x.requires_grad_(False)
    params = list(p.values())
    loss, _ = fused_mlp_loss(x, y, ("sigmoid", "sigmoid"), "half_mse" if half else "mse",
                             "mean", *params)
    fused = torch.autograd.grad(loss, params)
    reference = torch.autograd.grad(autograd_loss(x, y, p, half), params)
    for f, r in zip(fused, reference):
        assert f.dtype == torch.float32
        assert torch.allclose(f, r, rtol=1e-5, atol=0), ((f - r).abs() / r.abs()).max()


def test_fused_refuses_targets_whose_shape_would_broadcast():
    x, _, p = random_problem(4, bias=True)
    with pytest.raises(ValueError, match=r"y_hat has shape \(4, 1\) but y has \(4,\)"):
        fused_mlp_loss(x, torch.zeros(4, dtype=x.dtype), ("sigmoid", "sigmoid"), "mse", "mean",
                       *p.values())


def test_network_refuses_an_unknown_manual_impl():
    with pytest.raises(ValueError, match="manual_impl='fast' is not one of readable, fused"):
        MLP(manual_impl="fast")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_fused_broadcast_layers_match_autograd_at_many_rows(bias):
    """From BROADCAST_MIN_ROWS rows, layers of up to four inputs and several units skip the
    matrix product; the one-unit layer keeps it."""
    from backprop_lab.manual_backward import BROADCAST_MAX_FAN_IN, BROADCAST_MIN_ROWS

    results = {}
    for backward in ("manual", "autograd"):
        net = MLP(n_inputs=BROADCAST_MAX_FAN_IN, hidden=[3, 1], n_outputs=2, bias=bias,
                  activation="tanh", backward=backward, manual_impl="fused").double()
        net.initialize(seed=4, scale=1.5)
        g = torch.Generator().manual_seed(4)
        x = torch.randn(BROADCAST_MIN_ROWS, BROADCAST_MAX_FAN_IN, generator=g,
                        dtype=torch.float64)
        y = torch.rand(BROADCAST_MIN_ROWS, 2, generator=g, dtype=torch.float64)
        results[backward] = (net.forward_and_loss(x, y), net.gradients(x, y, backward))
    ((fused_y_hat, fused_loss), fused), ((y_hat, loss), reference) = results.values()
    assert torch.allclose(fused_y_hat, y_hat, rtol=0, atol=1e-14)
    assert fused_loss.item() == pytest.approx(loss.item(), rel=1e-13)
    for name, grad in fused.items():
        assert torch.allclose(grad, reference[name], rtol=0, atol=1e-12), name
