"""Backpropagation derived by hand for a two-layer sigmoid network and its squared-error loss.

Both functions are ``torch.autograd.Function``s whose ``backward`` applies the chain rule
written out step by step; no autograd runs inside them. They depend on torch alone, so they can
be used outside Lightning.

Notation (batch of B rows, I inputs, H hidden units, O outputs)::

    z_hidden = x @ w_hidden.T + b_hidden      h = sigmoid(z_hidden)
    z_out    = h @ w_out.T + b_out            y_hat = sigmoid(z_out)

For the 2-2-1 network, ``w_hidden = [[w1, w2], [w3, w4]]`` and ``w_out = [[w5, w6]]``.

Under ``torch.autocast`` both compute in the dtypes autocast gives the same operations through
autograd: the network in the autocast dtype (bfloat16 for Lightning's ``bf16-mixed``), as two
``F.linear`` layers would, and the loss in float32, as ``F.mse_loss`` is. Each gradient comes
back in its input's own dtype, so float32 weights get float32 ``.grad``.
"""

from contextlib import nullcontext

import torch
from torch import Tensor


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


def _in_input_dtypes(grads: tuple, dtypes: tuple) -> tuple:
    """Each gradient in the dtype of the input it belongs to; None stays None."""
    return tuple(None if g is None else g.to(dtype) for g, dtype in zip(grads, dtypes))


class SigmoidMLPFunction(torch.autograd.Function):
    """Forward of the two-layer sigmoid network; backward by the chain rule.

    Inputs are ``x`` (B, I), ``w_hidden`` (H, I), ``b_hidden`` (H,) or None, ``w_out`` (O, H),
    ``b_out`` (O,) or None. Returns ``y_hat`` (B, O), in the autocast dtype under autocast.
    """

    @staticmethod
    def forward(x, w_hidden, b_hidden, w_out, b_out):
        dtype = _autocast_dtype(x)
        if dtype is not None:
            # F.linear under autocast casts all its inputs, bias included. Casting here and
            # switching autocast off below keeps bf16 (x @ w) + float32 b from going float32.
            x, w_hidden, b_hidden, w_out, b_out = (
                _cast_as_autocast(t, dtype) for t in (x, w_hidden, b_hidden, w_out, b_out)
            )

        with _autocast_off(x):
            z_hidden = x @ w_hidden.T  # (B, H)
            if b_hidden is not None:
                z_hidden = z_hidden + b_hidden
            h = torch.sigmoid(z_hidden)

            z_out = h @ w_out.T  # (B, O)
            if b_out is not None:
                z_out = z_out + b_out
            y_hat = torch.sigmoid(z_out)
        return y_hat, h

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w_hidden, _, w_out, _ = inputs
        y_hat, h = output
        ctx.save_for_backward(x, w_hidden, w_out, h, y_hat)
        ctx.input_dtypes = tuple(None if t is None else t.dtype for t in inputs)
        # The hidden activations are returned only so that they can be saved without a second
        # forward; they are an internal detail, not a differentiable output.
        ctx.mark_non_differentiable(h)

    @staticmethod
    def backward(ctx, grad_y_hat, _grad_h):
        x, w_hidden, w_out, h, y_hat = ctx.saved_tensors
        need_x, need_w_hidden, need_b_hidden, need_w_out, need_b_out = ctx.needs_input_grad
        grad_x = grad_w_hidden = grad_b_hidden = grad_w_out = grad_b_out = None

        # The chain rule runs in the dtype the forward ran in (h's), with autocast off: on the
        # CPU backward() runs in its caller's autocast state, which would otherwise leak in.
        x, w_hidden, w_out = x.to(h.dtype), w_hidden.to(h.dtype), w_out.to(h.dtype)
        with _autocast_off(h):
            # Output delta: dL/dz_out = dL/dy_hat * sigmoid'(z_out), and
            # sigmoid' = y_hat (1 - y_hat).
            delta_out = grad_y_hat.to(h.dtype) * y_hat * (1 - y_hat)  # (B, O)

            # z_out = h @ w_out.T + b_out, so dL/dw_out = delta_out.T @ h, summed over the batch.
            if need_w_out:
                grad_w_out = delta_out.T @ h  # (O, H)
            if need_b_out:
                grad_b_out = delta_out.sum(dim=0)  # (O,)

            # Hidden delta: the output delta sent back through w_out, times sigmoid'(z_hidden).
            if need_x or need_w_hidden or need_b_hidden:
                delta_hidden = (delta_out @ w_out) * h * (1 - h)  # (B, H)
                if need_w_hidden:
                    grad_w_hidden = delta_hidden.T @ x  # (H, I)
                if need_b_hidden:
                    grad_b_hidden = delta_hidden.sum(dim=0)  # (H,)
                if need_x:
                    grad_x = delta_hidden @ w_hidden  # (B, I)

        grads = (grad_x, grad_w_hidden, grad_b_hidden, grad_w_out, grad_b_out)
        return _in_input_dtypes(grads, ctx.input_dtypes)


class SquaredErrorFunction(torch.autograd.Function):
    """Squared-error loss averaged over every element, with its gradient derived by hand.

    ``half=False`` is ``mse``: mean of (y_hat - y)^2, as Keras' ``MeanSquaredError``.
    ``half=True`` is ``half_mse``: mean of 1/2 (y_hat - y)^2, the textbook form whose gradient
    for one sample is exactly (y_hat - y). The two gradients differ by a factor of 2. Under
    autocast the loss is float32, as ``F.mse_loss``'s is.
    """

    @staticmethod
    def forward(y_hat, y, half):
        if y_hat.shape != y.shape:
            # Broadcasting (B, 1) against (B,) would silently average a (B, B) table.
            raise ValueError(f"y_hat has shape {tuple(y_hat.shape)} but y has {tuple(y.shape)}")
        if _autocast_dtype(y_hat) is not None:
            # Autocast runs mse_loss in float32: squared gaps between bf16 outputs near their
            # targets keep few significant digits.
            y_hat, y = _cast_as_autocast(y_hat, torch.float32), _cast_as_autocast(y, torch.float32)

        with _autocast_off(y_hat):
            error = y_hat - y
            scale = 0.5 if half else 1.0
            return scale * (error * error).mean()

    @staticmethod
    def setup_context(ctx, inputs, output):
        y_hat, y, half = inputs
        ctx.save_for_backward(y_hat, y)
        ctx.half = half
        ctx.input_dtypes = (y_hat.dtype, y.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        y_hat, y = ctx.saved_tensors
        need_y_hat, need_y, _ = ctx.needs_input_grad

        # In the loss's dtype (grad_loss's), as the forward computed; float32 under autocast.
        y_hat, y = y_hat.to(grad_loss.dtype), y.to(grad_loss.dtype)

        # d/dy_hat of scale * mean(e^2) is scale * 2 e / N, with N the number of elements.
        factor = (1.0 if ctx.half else 2.0) / y_hat.numel()
        grad_error = grad_loss * factor * (y_hat - y)  # (B, O)

        grad_y_hat = grad_error if need_y_hat else None
        grad_y = -grad_error if need_y else None
        return *_in_input_dtypes((grad_y_hat, grad_y), ctx.input_dtypes), None


def sigmoid_mlp(
    x: Tensor, w_hidden: Tensor, b_hidden: Tensor | None, w_out: Tensor, b_out: Tensor | None
) -> Tensor:
    """``y_hat`` (B, O) of the two-layer sigmoid network, differentiated by the manual backward."""
    y_hat, _ = SigmoidMLPFunction.apply(x, w_hidden, b_hidden, w_out, b_out)
    return y_hat


def squared_error(y_hat: Tensor, y: Tensor, half: bool = False) -> Tensor:
    """Scalar squared-error loss (see ``SquaredErrorFunction``), differentiated by hand."""
    return SquaredErrorFunction.apply(y_hat, y, half)
