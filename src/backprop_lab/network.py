"""The two-layer sigmoid network whose gradients are computed either by autograd or by hand."""

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from backprop_lab.manual_backward import SigmoidMLPFunction, squared_error

BACKWARDS = ("manual", "autograd")
LOSSES = ("mse", "half_mse")
INIT_SCHEMES = ("uniform", "normal", "glorot_uniform")

# Names of the explicit initial weights, in the shape nn.Linear stores them.
WEIGHT_NAMES = ("w_hidden", "b_hidden", "w_out", "b_out")


class SigmoidMLP(nn.Module):
    """Inputs -> sigmoid hidden layer -> sigmoid output; 2-2-1 by default.

    ``hidden.weight`` is ``w_hidden`` (H, I) and ``output.weight`` is ``w_out`` (O, H), as in
    ``nn.Linear``. ``backward="manual"`` routes the forward through ``SigmoidMLPFunction`` so that
    gradients come from the hand-derived backward; ``"autograd"`` uses plain torch operations.
    """

    # The Function the manual mode runs; a test may put a deliberately wrong one here.
    manual_function: type[torch.autograd.Function] = SigmoidMLPFunction

    def __init__(
        self,
        n_inputs: int = 2,
        n_hidden: int = 2,
        n_outputs: int = 1,
        bias: bool = True,
        backward: str = "manual",
    ) -> None:
        super().__init__()
        if backward not in BACKWARDS:
            raise ValueError(f"backward={backward!r} is not one of {', '.join(BACKWARDS)}")
        self.backward = backward
        self.hidden = nn.Linear(n_inputs, n_hidden, bias=bias)
        self.output = nn.Linear(n_hidden, n_outputs, bias=bias)

    def forward(self, x: Tensor, backward: str | None = None) -> Tensor:
        """``y_hat`` (B, O) in (0, 1) for ``x`` (B, I); ``backward`` overrides the module's mode."""
        if (backward or self.backward) == "manual":
            y_hat, _ = self.manual_function.apply(
                x, self.hidden.weight, self.hidden.bias, self.output.weight, self.output.bias
            )
            return y_hat
        h = torch.sigmoid(F.linear(x, self.hidden.weight, self.hidden.bias))  # (B, H)
        return torch.sigmoid(F.linear(h, self.output.weight, self.output.bias))  # (B, O)

    def loss(self, y_hat: Tensor, y: Tensor, kind: str = "mse", backward: str | None = None
             ) -> Tensor:
        """Scalar loss: ``mse`` is mean of squares, ``half_mse`` is mean of 1/2 squares."""
        if kind not in LOSSES:
            raise ValueError(f"loss={kind!r} is not one of {', '.join(LOSSES)}")
        half = kind == "half_mse"
        if (backward or self.backward) == "manual":
            return squared_error(y_hat, y, half=half)
        mse = F.mse_loss(y_hat, y)
        return 0.5 * mse if half else mse

    def gradients(self, x: Tensor, y: Tensor, kind: str, backward: str) -> dict[str, Tensor]:
        """dL/dw for every trainable weight by the given backward, leaving ``.grad`` untouched."""
        named = {n: t for n, t in self.named_weights().items() if t is not None and t.requires_grad}
        with torch.enable_grad():
            loss = self.loss(self(x, backward), y, kind, backward)
            grads = torch.autograd.grad(loss, list(named.values()))
        return dict(zip(named, grads))

    def named_weights(self) -> dict[str, Tensor | None]:
        """The tensors under their derivation names: w_hidden, b_hidden, w_out, b_out."""
        return {
            "w_hidden": self.hidden.weight,
            "b_hidden": self.hidden.bias,
            "w_out": self.output.weight,
            "b_out": self.output.bias,
        }

    @torch.no_grad()
    def initialize(
        self,
        seed: int = 0,
        scheme: str = "uniform",
        scale: float = 1.0,
        weights: dict | None = None,
    ) -> None:
        """Set initial weights from their own seeded generator, then apply explicit values.

        ``uniform`` draws from U(-scale, scale), ``normal`` from N(0, scale^2) and
        ``glorot_uniform`` from U(-a, a) with a = scale * sqrt(6 / (fan_in + fan_out)) and zero
        biases, as Keras' Dense layer does. The generator is private, so the weights depend on
        ``seed`` alone and not on whatever else consumed the global random state. ``weights``
        maps any of w_hidden, b_hidden, w_out, b_out to nested lists that replace the draw.
        """
        if scheme not in INIT_SCHEMES:
            raise ValueError(f"init scheme={scheme!r} is not one of {', '.join(INIT_SCHEMES)}")
        generator = torch.Generator().manual_seed(seed)
        for layer in (self.hidden, self.output):
            for tensor in (layer.weight, layer.bias):
                if tensor is None:
                    continue
                draw = torch.empty(tensor.shape, dtype=torch.float64)
                if scheme == "uniform":
                    draw.uniform_(-scale, scale, generator=generator)
                elif scheme == "normal":
                    draw.normal_(0.0, scale, generator=generator)
                elif tensor is layer.bias:
                    draw.zero_()
                else:
                    fan_out, fan_in = tensor.shape
                    limit = scale * math.sqrt(6.0 / (fan_in + fan_out))
                    draw.uniform_(-limit, limit, generator=generator)
                tensor.copy_(draw)

        if weights is not None and not isinstance(weights, dict):
            raise ValueError(f"init weights={weights!r} must map names ({', '.join(WEIGHT_NAMES)})"
                             " to nested lists of numbers")
        current = self.named_weights()
        for name, value in (weights or {}).items():
            if name not in current:
                raise ValueError(
                    f"init weights: unknown name {name!r}; known names: {', '.join(WEIGHT_NAMES)}"
                )
            if current[name] is None:
                raise ValueError(f"init weights: {name!r} given but the network has no biases")
            shape = tuple(current[name].shape)
            try:
                given = torch.as_tensor(value, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(f"init weights: {name}={value!r} is not a nested list of numbers "
                                 f"of shape {shape}") from None
            if tuple(given.shape) != shape:
                raise ValueError(
                    f"init weights: {name} has shape {tuple(given.shape)}, the network needs {shape}"
                )
            if not torch.isfinite(given).all():
                raise ValueError(f"init weights: {name}={value!r} holds NaN or infinite values")
            current[name].copy_(given)
