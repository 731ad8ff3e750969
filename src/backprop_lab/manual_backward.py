"""Backpropagation derived by hand for a multi-layer perceptron and its losses.

Every function here is a ``torch.autograd.Function`` whose ``backward`` applies the chain rule
written out step by step; no autograd runs inside them. They depend on torch alone, so they can
be used outside Lightning.

Notation (batch of B rows; layer l maps n_{l-1} units to n_l units, a_0 = x)::

    z_l = a_{l-1} @ w_l.T + b_l        a_l = f_l(z_l)        y_hat = a_L

For the textbook 2-2-1 sigmoid network, L = 2, ``w_1 = w_hidden = [[w1, w2], [w3, w4]]`` and
``w_2 = w_out = [[w5, w6]]``; the backward is then exactly

    delta_out    = dL/dy_hat * y_hat (1 - y_hat)           dL/dw_out    = delta_out.T @ h
    delta_hidden = (delta_out @ w_out) * h (1 - h)         dL/dw_hidden = delta_hidden.T @ x

A population of K independent networks puts a leading member dimension on every weight,
``w_l`` (K, n_l, n_{l-1}) and ``b_l`` (K, n_l), and on every activation, (K, B, n_l); the
inputs x (B, n_0) and targets y (B, n_L) are shared. The formulas above hold member by member,
as batched matrix products; a loss over members is the sum of each member's loss, so every
member's gradient is exactly that of a network trained alone.

Under ``torch.autocast`` the functions compute in the dtypes autocast gives the same operations
through autograd: the layers in the autocast dtype (bfloat16 for Lightning's ``bf16-mixed``), as
``F.linear`` would, and the losses in float32, as ``F.mse_loss`` is. Each gradient comes back in
its input's own dtype, so float32 weights get float32 ``.grad``.
"""

from contextlib import nullcontext

import torch
from torch import Tensor

# Each activation f with its derivative written in terms of its output a = f(z), which is all
# the backward keeps: sigmoid' = a (1 - a), tanh' = 1 - a^2, relu' = [a > 0], identity' = 1.
ACTIVATIONS = {
    "sigmoid": (torch.sigmoid, lambda a: a * (1 - a)),
    "tanh": (torch.tanh, lambda a: 1 - a * a),
    "relu": (torch.relu, lambda a: (a > 0).to(a.dtype)),
    "identity": (lambda z: z, None),
}
REDUCTIONS = ("mean", "sum")


def _autocast_dtype(tensor: Tensor) -> torch.dtype | None:
    """The dtype autocast runs matrix products in on ``tensor``'s device; None when it is off."""
    device_type = tensor.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _cast_as_autocast(tensor: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """``tensor`` in ``dtype`` if autocast would cast it (floating point but not float64)."""
    if tensor is None or not tensor.is_floating_point() or tensor.dtype == torch.float64:
        return tensor
    return tensor.to(dtype)


def _autocast_off(tensor: Tensor):
    """A context in which ops on ``tensor``'s device run in the dtypes they are given."""
    if _autocast_dtype(tensor) is None:
        return nullcontext()
    return torch.autocast(tensor.device.type, enabled=False)


def _in_input_dtypes(grads, dtypes) -> tuple:
    """Each gradient in the dtype of the input it belongs to; None stays None."""
    return tuple(None if g is None else g.to(dtype) for g, dtype in zip(grads, dtypes))


def _reduce(elements: Tensor, reduction: str, members: int) -> Tensor:
    # The mean of each member's elements, summed over members: the overall mean times K.
    return elements.mean() * members if reduction == "mean" else elements.sum()


def _members(y_hat: Tensor, y: Tensor) -> int:
    """How many networks' outputs ``y_hat`` holds against the shared targets ``y``."""
    if y_hat.shape == y.shape:
        return 1
    if y_hat.dim() == y.dim() + 1 and y_hat.shape[1:] == y.shape:
        return y_hat.shape[0]
    # Any other broadcast, (B, 1) against (B,) say, would silently average a (B, B) table.
    raise ValueError(f"y_hat has shape {tuple(y_hat.shape)} but y has {tuple(y.shape)}")


class MLPFunction(torch.autograd.Function):
    """Forward of a multi-layer perceptron; backward by the chain rule, layer by layer.

    Call as ``MLPFunction.apply(x, activations, w_1, b_1, ..., w_L, b_L)`` with ``x`` (B, n_0),
    ``w_l`` (n_l, n_{l-1}), ``b_l`` (n_l,) or None, and ``activations`` a tuple of L names from
    ``ACTIVATIONS``; for a population, ``w_l`` (K, n_l, n_{l-1}) and ``b_l`` (K, n_l), and the
    outputs gain the member dimension. Returns ``y_hat`` (B, n_L), then the hidden activations a_1 .. a_{L-1},
    which are returned only so that the backward can keep them without a second forward.
    """

    @staticmethod
    def forward(x, activations, *params):
        dtype = _autocast_dtype(x)
        if dtype is not None:
            # F.linear under autocast casts all its inputs, bias included. Casting here and
            # switching autocast off below keeps bf16 (a @ w) + float32 b from going float32.
            x = _cast_as_autocast(x, dtype)
            params = tuple(_cast_as_autocast(p, dtype) for p in params)

        a = x
        hidden = []
        with _autocast_off(x):
            for layer, name in enumerate(activations):
                w, b = params[2 * layer], params[2 * layer + 1]
                z = a @ w.mT  # (B, n_l), or (K, B, n_l) for a population
                if b is not None:
                    z = z + b.unsqueeze(-2)
                a = ACTIVATIONS[name][0](z)
                hidden.append(a)
        return (a, *hidden[:-1])

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, activations, *params = inputs
        weights = params[0::2]
        y_hat, *hidden = output
        ctx.save_for_backward(x, *weights, *hidden, y_hat)
        ctx.activations = activations
        ctx.input_dtypes = tuple(None if t is None else t.dtype for t in (x, *params))
        ctx.mark_non_differentiable(*hidden)

    @staticmethod
    def backward(ctx, grad_y_hat, *_grad_hidden):
        activations = ctx.activations
        n_layers = len(activations)
        x, *rest = ctx.saved_tensors
        weights, outputs = rest[:n_layers], rest[n_layers:]  # outputs: a_1 .. a_L = y_hat
        need_x, _, *need_params = ctx.needs_input_grad
        need_w, need_b = need_params[0::2], need_params[1::2]
        grad_x = None
        grad_w: list[Tensor | None] = [None] * n_layers
        grad_b: list[Tensor | None] = [None] * n_layers

        # The chain rule runs in the dtype the forward ran in (y_hat's), with autocast off: on
        # the CPU backward() runs in its caller's autocast state, which would otherwise leak in.
        dtype = outputs[-1].dtype
        x, weights = x.to(dtype), [w.to(dtype) for w in weights]
        with _autocast_off(outputs[-1]):
            # Output delta: dL/dz_L = dL/dy_hat * f_L'(z_L).
            delta = grad_y_hat.to(dtype)  # (B, n_L)
            derivative = ACTIVATIONS[activations[-1]][1]
            if derivative is not None:
                delta = delta * derivative(outputs[-1])

            for layer in reversed(range(n_layers)):
                a_prev = outputs[layer - 1] if layer > 0 else x  # (B, n_{l-1})
                # z_l = a_{l-1} @ w_l.T + b_l, so dL/dw_l = delta_l.T @ a_{l-1}, summed over
                # the batch, and dL/db_l = delta_l summed over the batch.
                if need_w[layer]:
                    grad_w[layer] = delta.mT @ a_prev  # (n_l, n_{l-1}), or (K, n_l, n_{l-1})
                if need_b[layer]:
                    grad_b[layer] = delta.sum(dim=-2)  # (n_l,), or (K, n_l)
                if layer == 0:
                    if need_x:
                        # x feeds every member, so its gradient sums theirs.
                        grad_x = (delta @ weights[0]).sum_to_size(x.shape)  # (B, n_0)
                    break
                if not (need_x or any(need_w[:layer]) or any(need_b[:layer])):
                    break  # nothing below this layer wants a gradient
                # Hidden delta: the delta sent back through w_l, times f_{l-1}'(z_{l-1}).
                delta = delta @ weights[layer]  # (B, n_{l-1})
                derivative = ACTIVATIONS[activations[layer - 1]][1]
                if derivative is not None:
                    delta = delta * derivative(a_prev)

        grads = [grad_x]
        for w_grad, b_grad in zip(grad_w, grad_b):
            grads += [w_grad, b_grad]
        grads = _in_input_dtypes(grads, ctx.input_dtypes)
        return grads[0], None, *grads[1:]


def _loss_inputs_float32(y_hat: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Under autocast, losses run in float32 (as mse_loss and BCE-with-logits do there)."""
    if _autocast_dtype(y_hat) is None:
        return y_hat, y
    return _cast_as_autocast(y_hat, torch.float32), _cast_as_autocast(y, torch.float32)


class SquaredErrorFunction(torch.autograd.Function):
    """Squared-error loss with its gradient derived by hand.

    ``half=False`` is ``mse``: (y_hat - y)^2, as Keras' ``MeanSquaredError``. ``half=True`` is
    ``half_mse``: 1/2 (y_hat - y)^2, the textbook form whose gradient for one sample is exactly
    (y_hat - y). The two gradients differ by a factor of 2. ``reduction`` "mean" averages over
    every element, "sum" adds them up. With a population, ``y_hat`` is (K, B, O) against ``y``
    (B, O) and the loss is the sum of the K members' losses.
    """

    @staticmethod
    def forward(y_hat, y, half, reduction):
        members = _members(y_hat, y)
        y_hat, y = _loss_inputs_float32(y_hat, y)
        with _autocast_off(y_hat):
            error = y_hat - y  # (B, O), or (K, B, O)
            scale = 0.5 if half else 1.0
            return scale * _reduce(error * error, reduction, members)

    @staticmethod
    def setup_context(ctx, inputs, output):
        y_hat, y, half, reduction = inputs
        ctx.save_for_backward(y_hat, y)
        ctx.half, ctx.reduction = half, reduction
        ctx.input_dtypes = (y_hat.dtype, y.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        y_hat, y = ctx.saved_tensors
        need_y_hat, need_y, _, _ = ctx.needs_input_grad

        # In the loss's dtype (grad_loss's), as the forward computed; float32 under autocast.
        y_hat, y = y_hat.to(grad_loss.dtype), y.to(grad_loss.dtype)

        # d/dy_hat of scale * e^2 is 2 scale e, divided under "mean" by the N elements of one
        # member's output (y's), since each member's loss is its own mean.
        factor = 1.0 if ctx.half else 2.0
        if ctx.reduction == "mean":
            factor /= y.numel()
        grad_error = grad_loss * factor * (y_hat - y)  # (B, O), or (K, B, O)

        grad_y_hat = grad_error if need_y_hat else None
        grad_y = -grad_error.sum_to_size(y.shape) if need_y else None
        return *_in_input_dtypes((grad_y_hat, grad_y), ctx.input_dtypes), None, None


class BCEWithLogitsFunction(torch.autograd.Function):
    """Binary cross-entropy on logits z, with its gradient derived by hand.

    L = -[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))], computed as
    max(z, 0) - z y + log(1 + exp(-|z|)) so that no exponential overflows. Its derivative is
    simply sigmoid(z) - y: the sigmoid's own derivative cancels against the logarithm's.
    """

    @staticmethod
    def forward(z, y, reduction):
        members = _members(z, y)
        z, y = _loss_inputs_float32(z, y)
        with _autocast_off(z):
            elements = z.clamp(min=0) - z * y + torch.log1p(torch.exp(-z.abs()))
            return _reduce(elements, reduction, members)

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, y, reduction = inputs
        ctx.save_for_backward(z, y)
        ctx.reduction = reduction
        ctx.input_dtypes = (z.dtype, y.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        z, y = ctx.saved_tensors
        need_z, need_y, _ = ctx.needs_input_grad
        z, y = z.to(grad_loss.dtype), y.to(grad_loss.dtype)

        factor = grad_loss / y.numel() if ctx.reduction == "mean" else grad_loss
        grad_z = factor * (torch.sigmoid(z) - y) if need_z else None  # (B, O), or (K, B, O)
        # dL/dy = -z, the logit itself.
        grad_y = (factor * -z).sum_to_size(y.shape) if need_y else None
        return *_in_input_dtypes((grad_z, grad_y), ctx.input_dtypes), None


def mlp(x: Tensor, activations: tuple[str, ...], *params: Tensor | None) -> Tensor:
    """``y_hat`` of the perceptron with weights ``w_1, b_1, ..., w_L, b_L``, by the manual backward."""
    return MLPFunction.apply(x, tuple(activations), *params)[0]


def sigmoid_mlp(
    x: Tensor, w_hidden: Tensor, b_hidden: Tensor | None, w_out: Tensor, b_out: Tensor | None
) -> Tensor:
    """``y_hat`` (B, O) of the two-layer sigmoid network, differentiated by the manual backward."""
    return mlp(x, ("sigmoid", "sigmoid"), w_hidden, b_hidden, w_out, b_out)


def squared_error(y_hat: Tensor, y: Tensor, half: bool = False, reduction: str = "mean") -> Tensor:
    """Scalar squared-error loss (see ``SquaredErrorFunction``), differentiated by hand."""
    return SquaredErrorFunction.apply(y_hat, y, half, reduction)


def bce_with_logits(z: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    """Scalar binary cross-entropy on logits (see ``BCEWithLogitsFunction``), by hand."""
    return BCEWithLogitsFunction.apply(z, y, reduction)
