"""MLP: seeded and explicit initial weights, both backward modes agree."""

import pytest
import torch

from backprop_lab.network import MLP


def test_same_seed_gives_same_weights_and_other_seed_differs():
    a, b, c = MLP(), MLP(), MLP()
    a.initialize(seed=7)
    torch.manual_seed(123)  # the global random state must not matter
    b.initialize(seed=7)
    c.initialize(seed=8)
    assert torch.equal(a.layers[0].weight, b.layers[0].weight)
    assert torch.equal(a.layers[1].bias, b.layers[1].bias)
    assert not torch.equal(a.layers[0].weight, c.layers[0].weight)


def test_explicit_weights_map_w1_to_w6_onto_the_tensors():
    net = MLP(bias=False)
    net.initialize(weights={"w_hidden": [[0.1, 0.2], [0.3, 0.4]], "w_out": [[0.5, 0.6]]})
    w_hidden, w_out = net.layers[0].weight, net.layers[1].weight
    assert net.layers[0].bias is None and net.layers[1].bias is None
    # h1 = sigmoid(w1 x1 + w2 x2): row 0 of w_hidden holds w1, w2.
    assert w_hidden[0].tolist() == pytest.approx([0.1, 0.2])
    assert w_hidden[1].tolist() == pytest.approx([0.3, 0.4])
    assert w_out[0].tolist() == pytest.approx([0.5, 0.6])
    x = torch.tensor([[1.0, 0.0]])
    h = torch.sigmoid(torch.tensor([0.1, 0.3]))
    expected = torch.sigmoid(0.5 * h[0] + 0.6 * h[1])
    assert net(x).item() == pytest.approx(expected.item(), abs=1e-7)


def test_glorot_uniform_has_zero_biases_and_bounded_weights():
    net = MLP()
    net.initialize(seed=0, scheme="glorot_uniform")
    hidden, output = net.layers
    assert torch.count_nonzero(hidden.bias) == 0 and torch.count_nonzero(output.bias) == 0
    assert hidden.weight.abs().max() <= (6 / 4) ** 0.5
    assert output.weight.abs().max() <= (6 / 3) ** 0.5
    assert hidden.weight.abs().max() > 0


@pytest.mark.parametrize(
    "weights, message",
    [
        ({"w7": [[0.0]]}, "unknown name 'w7'"),
        ({"w_out": [[0.1, 0.2, 0.3]]}, "w_out has shape (1, 3), the network needs (1, 2)"),
        ({"b_out": [0.0]}, "that layer has no bias"),
    ],
)
def test_bad_explicit_weights_are_refused(weights, message):
    net = MLP(bias="b_out" not in weights)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        net.initialize(weights=weights)


def test_manual_and_autograd_networks_agree_on_output_loss_and_gradients():
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([[0.0], [1.0], [1.0], [0.0]], dtype=torch.float64)
    nets = {}
    for mode in ("manual", "autograd"):
        net = MLP(backward=mode, loss="half_mse").double()
        net.initialize(seed=3)
        loss = net.loss(net(x), y)
        loss.backward()
        nets[mode] = (loss.item(), [p.grad for p in net.parameters()])
    assert nets["manual"][0] == pytest.approx(nets["autograd"][0], abs=1e-15)
    for m, a in zip(nets["manual"][1], nets["autograd"][1]):
        assert torch.allclose(m, a, rtol=0, atol=1e-12)


def test_unknown_backward_or_loss_is_refused():
    with pytest.raises(ValueError, match="backward='foo' is not one of manual, autograd"):
        MLP(backward="foo")
    with pytest.raises(ValueError, match="loss='l1' is not one of mse, half_mse, bce"):
        MLP(loss="l1")
    with pytest.raises(ValueError, match="loss=bce takes the output as logits"):
        MLP(loss="bce")
