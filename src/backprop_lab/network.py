"""The multi-layer perceptron whose gradients come from autograd or from the manual backward."""

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from backprop_lab.manual_backward import (
    ACTIVATIONS,
    REDUCTIONS,
    MLPFunction,
    bce_with_logits,
    fused_mlp_loss,
    squared_error,
)

BACKWARDS = ("manual", "autograd")
# How the manual backward is computed: "readable" runs MLPFunction and the loss Functions, the
# derivation step by step; "fused" runs FusedMLPLossFunction, the same derivation rearranged
# into as few operations as possible. Autograd mode ignores it.
MANUAL_IMPLS = ("readable", "fused")
LOSSES = ("mse", "half_mse", "bce")
INIT_SCHEMES = ("uniform", "normal", "glorot_uniform")


def _per_layer(value, n_layers: int, name: str) -> list:
    """``value`` repeated for every layer, or checked to have one entry per layer."""
    if isinstance(value, (list, tuple)):
        if len(value) != n_layers:
            raise ValueError(f"{name}={list(value)} needs {n_layers} entries, one per layer")
        return list(value)
    return [value] * n_layers


def weight_names(n_hidden_layers: int) -> list[str]:
    """Names of the weight tensors, in layer order: w_hidden, b_hidden, w_out, b_out for one
    hidden layer; w_hidden1, b_hidden1, w_hidden2, ... for several."""
    names = []
    for i in range(n_hidden_layers):
        suffix = "" if n_hidden_layers == 1 else str(i + 1)
        names += [f"w_hidden{suffix}", f"b_hidden{suffix}"]
    return names + ["w_out", "b_out"]


class MLP(nn.Module):
    """Inputs -> hidden layers -> output; by default the 2-2-1 network with sigmoid everywhere.

    ``layers[l].weight`` is ``w_l`` (n_l, n_{l-1}) as ``nn.Linear`` stores it. ``backward=
    "manual"`` routes the forward through ``MLPFunction`` and the loss through the hand-derived
    loss functions; ``"autograd"`` uses plain torch operations. Losses: ``mse`` is (y_hat - y)^2,
    ``half_mse`` is 1/2 (y_hat - y)^2, ``bce`` is binary cross-entropy on the output taken as
    logits (so the output activation must be ``identity``); ``reduction`` averages (``mean``) or
    adds (``sum``) over every element. ``bias`` and ``freeze_bias`` take one value for every
    layer or a list with one per layer; a frozen bias keeps its initial value.

    ``population=K`` above 1 holds K independent networks as one: every weight gains a leading
    member dimension, ``layers[l].weight`` (K, n_l, n_{l-1}) and ``layers[l].bias`` (K, n_l),
    the output is (K, B, n_outputs) for a shared batch x (B, n_inputs), and the loss is the sum
    of the members' losses, so that each member's gradient is its own.

    ``manual_impl`` (see ``MANUAL_IMPLS``) picks how manual mode computes the gradients. The
    fused one differentiates the loss only, so it applies where the loss is taken
    (``forward_and_loss``, ``gradients``); ``forward`` alone always runs ``MLPFunction``.
    """

    # The Function the manual mode runs; a test may put a deliberately wrong one here.
    manual_function: type[torch.autograd.Function] = MLPFunction

    def __init__(
        self,
        n_inputs: int = 2,
        hidden: Sequence[int] = (2,),
        n_outputs: int = 1,
        activation: str | Sequence[str] = "sigmoid",
        output_activation: str = "sigmoid",
        bias: bool | Sequence[bool] = True,
        freeze_bias: bool | Sequence[bool] = False,
        backward: str = "manual",
        loss: str = "mse",
        reduction: str = "mean",
        population: int = 1,
        manual_impl: str = "readable",
    ) -> None:
        super().__init__()
        if isinstance(population, bool) or not isinstance(population, int) or population < 1:
            raise ValueError(f"population={population!r} must be an integer of at least 1")
        hidden = list(hidden)
        if not hidden or any(not isinstance(w, int) or w < 1 for w in hidden):
            raise ValueError(f"hidden={hidden} must list one or more widths, each at least 1")
        n_layers = len(hidden) + 1
        activations = _per_layer(activation, len(hidden), "activation") + [output_activation]
        for name in activations:
            if name not in ACTIVATIONS:
                raise ValueError(f"activation {name!r} is not one of {', '.join(ACTIVATIONS)}")
        for value, name, allowed in ((backward, "backward", BACKWARDS), (loss, "loss", LOSSES),
                                     (reduction, "reduction", REDUCTIONS),
                                     (manual_impl, "manual_impl", MANUAL_IMPLS)):
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not one of {', '.join(allowed)}")
        if population > 1 and backward == "manual" and manual_impl == "fused":
            # Limitation: the fused Function's products are written for one network.
            raise ValueError(f"population={population} runs the readable manual backward only; "
                             "manual_impl=fused takes one network")
        if loss == "bce" and output_activation != "identity":
            raise ValueError(f"loss=bce takes the output as logits; output_activation="
                             f"{output_activation!r} must be 'identity'")

        self.backward = backward
        self.manual_impl = manual_impl
        self.loss_name = loss
        self.reduction = reduction
        self.activations = tuple(activations)
        widths = [n_inputs, *hidden, n_outputs]
        biases = _per_layer(bias, n_layers, "bias")
        frozen = _per_layer(freeze_bias, n_layers, "freeze_bias")
        self.layers = nn.ModuleList(
            nn.Linear(n_in, n_out, bias=with_bias)
            for n_in, n_out, with_bias in zip(widths[:-1], widths[1:], biases)
        )
        self.population = population
        if population > 1:
            for layer in self.layers:
                # The member dimension: nn.Linear keeps the parameters, MLP does the products.
                layer.weight = nn.Parameter(torch.empty(population, *layer.weight.shape))
                if layer.bias is not None:
                    layer.bias = nn.Parameter(torch.empty(population, *layer.bias.shape))
        for layer, freeze in zip(self.layers, frozen):
            if freeze and layer.bias is not None:
                layer.bias.requires_grad_(False)

    def _params(self) -> list[Tensor | None]:
        return [t for layer in self.layers for t in (layer.weight, layer.bias)]

    def forward(self, x: Tensor, backward: str | None = None) -> Tensor:
        """``y_hat`` (B, n_outputs), or (K, B, n_outputs) for a population, for ``x``
        (B, n_inputs); ``backward`` overrides the module's mode."""
        if (backward or self.backward) == "manual":
            return self.manual_function.apply(x, self.activations, *self._params())[0]
        a = x
        for layer, name in zip(self.layers, self.activations):
            if self.population == 1:
                z = F.linear(a, layer.weight, layer.bias)  # (B, n_l)
            else:
                z = a @ layer.weight.mT  # (K, B, n_l)
                if layer.bias is not None:
                    z = z + layer.bias.unsqueeze(-2)
            a = ACTIVATIONS[name][0](z)
        return a

    def loss(self, y_hat: Tensor, y: Tensor, backward: str | None = None) -> Tensor:
        """The scalar loss of ``y_hat`` against ``y`` (see the class docstring)."""
        if (backward or self.backward) == "manual":
            if self.loss_name == "bce":
                return bce_with_logits(y_hat, y, self.reduction)
            return squared_error(y_hat, y, half=self.loss_name == "half_mse",
                                 reduction=self.reduction)
        # Autograd's reference: torch's own losses, on the targets repeated for every member.
        members = y_hat.shape[0] if y_hat.dim() == y.dim() + 1 else 1
        target = y.expand_as(y_hat) if members > 1 else y
        if self.loss_name == "bce":
            loss = F.binary_cross_entropy_with_logits(y_hat, target, reduction=self.reduction)
        else:
            loss = F.mse_loss(y_hat, target, reduction=self.reduction)
            if self.loss_name == "half_mse":
                loss = 0.5 * loss
        # A mean over all K members' elements, times K, is the sum of the members' means.
        return loss * members if self.reduction == "mean" and members > 1 else loss

    @torch.no_grad()
    def member_losses(self, y_hat: Tensor, y: Tensor) -> Tensor:
        """Each member's loss, (K,) (or (1,) for a single network); no gradient."""
        out = y_hat if y_hat.dim() == y.dim() + 1 else y_hat.unsqueeze(0)  # (K, B, O)
        target = y.expand_as(out)
        if self.loss_name == "bce":
            elements = F.binary_cross_entropy_with_logits(out, target, reduction="none")
        else:
            elements = (out - target) ** 2 * (0.5 if self.loss_name == "half_mse" else 1.0)
        per_member = elements.flatten(1)
        return per_member.mean(1) if self.reduction == "mean" else per_member.sum(1)

    def forward_and_loss(self, x: Tensor, y: Tensor,
                         backward: str | None = None) -> tuple[Tensor, Tensor]:
        """``(y_hat, loss)`` for a batch; in fused manual mode both come from one Function."""
        if (backward or self.backward) == "manual" and self.manual_impl == "fused":
            loss, y_hat = fused_mlp_loss(x, y, self.activations, self.loss_name, self.reduction,
                                         *self._params())
            return y_hat, loss
        y_hat = self(x, backward)
        return y_hat, self.loss(y_hat, y, backward)

    def probability(self, y_hat: Tensor) -> Tensor:
        """The output read as the probability of class 1 (sigmoid of the logits under bce)."""
        return torch.sigmoid(y_hat) if self.loss_name == "bce" else y_hat

    def gradients(self, x: Tensor, y: Tensor, backward: str) -> dict[str, Tensor]:
        """dL/dw for every trainable weight by the given backward, leaving ``.grad`` untouched."""
        named = {n: t for n, t in self.named_weights().items() if t is not None and t.requires_grad}
        with torch.enable_grad():
            _, loss = self.forward_and_loss(x, y, backward)
            grads = torch.autograd.grad(loss, list(named.values()))
        return dict(zip(named, grads))

    def named_weights(self) -> dict[str, Tensor | None]:
        """The tensors under their derivation names (see ``weight_names``); None for no bias."""
        return dict(zip(weight_names(len(self.layers) - 1), self._params()))

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
        maps names from ``named_weights`` to nested lists that replace the draw (for every
        member of a population). Member i of a population is drawn from ``seed + i``, exactly
        as a single network initialised with that seed.
        """
        if scheme not in INIT_SCHEMES:
            raise ValueError(f"init scheme={scheme!r} is not one of {', '.join(INIT_SCHEMES)}")
        for member in range(self.population):
            generator = torch.Generator().manual_seed(seed + member)
            for layer in self.layers:
                for tensor in (layer.weight, layer.bias):
                    if tensor is None:
                        continue
                    target = tensor[member] if self.population > 1 else tensor
                    draw = torch.empty(target.shape, dtype=torch.float64)
                    if scheme == "uniform":
                        draw.uniform_(-scale, scale, generator=generator)
                    elif scheme == "normal":
                        draw.normal_(0.0, scale, generator=generator)
                    elif tensor is layer.bias:
                        draw.zero_()
                    else:
                        fan_out, fan_in = target.shape
                        limit = scale * math.sqrt(6.0 / (fan_in + fan_out))
                        draw.uniform_(-limit, limit, generator=generator)
                    target.copy_(draw)
        self._set_weights(weights)

    def _set_weights(self, weights: dict | None) -> None:
        if weights is not None and not isinstance(weights, dict):
            raise ValueError(f"init weights={weights!r} must map names "
                             f"({', '.join(self.named_weights())}) to nested lists of numbers")
        current = self.named_weights()
        for name, value in (weights or {}).items():
            if name not in current:
                raise ValueError(
                    f"init weights: unknown name {name!r}; known names: {', '.join(current)}"
                )
            if current[name] is None:
                raise ValueError(f"init weights: {name!r} given but that layer has no bias")
            # One member's shape; a population takes the same values for every member.
            shape = tuple(current[name].shape)[1 if self.population > 1 else 0:]
            try:
                given = torch.as_tensor(value, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(f"init weights: {name}={value!r} is not a nested list of numbers "
                                 f"of shape {shape}") from None
            if tuple(given.shape) != shape:
                raise ValueError(f"init weights: {name} has shape {tuple(given.shape)}, the "
                                 f"network needs {shape}")
            if not torch.isfinite(given).all():
                raise ValueError(f"init weights: {name}={value!r} holds NaN or infinite values")
            current[name].copy_(given)
