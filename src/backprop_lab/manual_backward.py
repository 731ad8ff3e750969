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
from torch.nn import functional as F

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
    outputs gain the member dimension. Returns ``y_hat`` (B, n_L), then the hidden
    activations a_1 .. a_{L-1}, which are returned only so that the backward can keep them
    without a second forward.
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
    """``y_hat`` of the perceptron with weights ``w_1, b_1, ..., w_L, b_L``, differentiated by
    the manual backward."""
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


# The fused path below works on buffers it allocated itself, so it can apply each activation
# in place, and fold each derivative into the incoming delta in place as well: given
# delta = dL/da and the output a = f(z), these return dL/dz = delta * f'(z), reusing delta.
def _sigmoid_delta_(delta: Tensor, a: Tensor) -> Tensor:
    delta.mul_(a)  # delta a
    return delta.addcmul_(delta, a, value=-1)  # delta a - delta a a = delta a (1 - a)


def _tanh_delta_(delta: Tensor, a: Tensor) -> Tensor:
    return delta.addcmul_(delta, a * a, value=-1)  # delta (1 - a^2)


def _relu_delta_(delta: Tensor, a: Tensor) -> Tensor:
    return delta.masked_fill_(a <= 0, 0)  # a = relu(z) is 0 exactly where z <= 0


FUSED_ACTIVATIONS = {
    "sigmoid": (torch.sigmoid_, _sigmoid_delta_),
    "tanh": (torch.tanh_, _tanh_delta_),
    "relu": (torch.relu_, _relu_delta_),
    "identity": (None, None),
}


# Below this many inputs per unit, and from this many rows, a layer of two or more units is
# computed as a sum of broadcast products rather than one matrix product: on the CPU a GEMM of
# shape (B, 2) @ (2, 2) runs far below memory speed, and two multiply-adds over (B, 2) took
# about half its time at a million rows (backprop-bench). A layer of one unit stays a GEMM,
# which is then a fast matrix-vector product; small batches keep the single call, whose
# Python overhead is lower.
BROADCAST_MAX_FAN_IN = 4
BROADCAST_MIN_ROWS = 8192


def _linear(a: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """z = a @ w.T + b, (B, n_out), in whichever form is faster for these shapes."""
    fan_in = a.shape[1]
    if fan_in > BROADCAST_MAX_FAN_IN or a.shape[0] < BROADCAST_MIN_ROWS or w.shape[0] == 1:
        return F.linear(a, w, b)  # one addmm
    w_t = w.T  # (n_in, n_out): row j holds the weights from input j
    if b is None:
        z = a[:, :1] * w_t[0]  # (B, n_out)
    else:
        z = torch.addcmul(b, a[:, :1], w_t[0])
    for j in range(1, fan_in):
        z.addcmul_(a[:, j:j + 1], w_t[j])
    return z


def _fused_pass(x, y, activations, loss, reduction, needs, params):
    """Loss, y_hat and the unscaled gradients (see ``FusedMLPLossFunction``), in x's dtype.

    ``needs`` holds one flag per tensor of (x, w_1, b_1, ...), or is None for no gradients.
    The gradients are those of the loss divided by ``_loss_factor``: the factor 2 of the
    square and the 1/N of the mean are applied by the backward to the few small results
    rather than here to every row.
    """
    weights, biases = params[0::2], params[1::2]

    # Forward: z_l = a_{l-1} @ w_l.T + b_l, then a_l = f_l(z_l) in place.
    outputs = [x]  # a_0 .. a_L
    for w, b, name in zip(weights, biases, activations):
        z = _linear(outputs[-1], w, b)  # (B, n_l)
        activate_ = FUSED_ACTIVATIONS[name][0]
        outputs.append(z if activate_ is None else activate_(z))
    y_hat = outputs[-1]  # (B, n_L)

    # The loss in float32 under autocast, as the loss Functions compute it.
    y_hat_loss, y = _loss_inputs_float32(y_hat, y)
    if loss == "bce":
        z = y_hat_loss
        elements = z.clamp(min=0) - z * y + torch.log1p(torch.exp(-z.abs()))
        value = _reduce(elements, reduction, 1)
        # dL/dz = sigmoid(z) - y per element: the sigmoid's derivative cancels the log's.
        delta = torch.sigmoid(z).sub_(y) if needs is not None else None
    else:
        error = y_hat_loss - y  # (B, n_L)
        flat = error.view(-1)
        scale = 0.5 if loss == "half_mse" else 1.0
        if reduction == "mean":
            scale /= error.numel()
        value = torch.dot(flat, flat) * scale
        delta = error  # dL/dy_hat is 2 scale (y_hat - y)
    if needs is None:
        return value, y_hat, None

    # Backward, done now: the output delta, then down through the layers.
    if delta.dtype != y_hat.dtype:
        delta = delta.to(y_hat.dtype)
    derivative_ = FUSED_ACTIVATIONS[activations[-1]][1]
    if derivative_ is not None:
        delta = derivative_(delta, y_hat)  # (B, n_L)
    need_x, need_params = needs[0], needs[1:]
    n_layers = len(activations)
    grads: list[Tensor | None] = [None] * (1 + 2 * n_layers)  # x, w_1, b_1, ...
    for layer in reversed(range(n_layers)):
        a_prev = outputs[layer]  # (B, n_{l-1})
        if need_params[2 * layer]:
            grads[1 + 2 * layer] = delta.T @ a_prev  # (n_l, n_{l-1})
        if need_params[2 * layer + 1]:
            grads[2 + 2 * layer] = delta.sum(dim=0)  # (n_l,)
        if layer == 0:
            if need_x:
                grads[0] = delta @ weights[0]  # (B, n_0)
            break
        if not (need_x or any(need_params[:2 * layer])):
            break  # nothing below this layer wants a gradient
        delta = delta @ weights[layer]  # (B, n_{l-1})
        derivative_ = FUSED_ACTIVATIONS[activations[layer - 1]][1]
        if derivative_ is not None:
            delta = derivative_(delta, a_prev)
    return value, y_hat, grads


def _loss_factor(loss: str, reduction: str, n_elements: int) -> float:
    """dL/dy_hat over the error term ``_fused_pass`` keeps: 2 for mse, 1/N under "mean"."""
    factor = 2.0 if loss == "mse" else 1.0
    return factor / n_elements if reduction == "mean" else factor


class FusedMLPLossFunction(torch.autograd.Function):
    """Network and loss in one Function whose forward also derives every gradient.

    The derivation of ``MLPFunction`` followed by the loss Functions, rearranged for speed:
    the loss is a scalar, so dL/dw is known as soon as the forward has run, and the backward
    only multiplies it by ``grad_loss``. Each layer is one ``addmm`` (or, for up to four
    inputs, several units and many rows, a few broadcast multiply-adds), the activations and
    the deltas are applied in place on buffers this Function allocated, and only the
    gradients are kept, so nothing of batch size outlives the call but ``y_hat``.

    Call as ``FusedMLPLossFunction.apply(x, y, activations, loss, reduction, want_grads,
    w_1, b_1, ..., w_L, b_L)``: the arguments of ``MLPFunction`` plus ``y`` (B, n_L),
    ``loss`` ("mse", "half_mse", or "bce" on logits) and ``reduction`` ("mean" or "sum").
    ``want_grads`` False skips the gradients (pass ``torch.is_grad_enabled()``). Returns
    ``(loss, y_hat)``; ``y_hat`` is not differentiable. Autocast is followed as in
    ``MLPFunction`` and the loss Functions.
    """

    @staticmethod
    def forward(ctx, x, y, activations, loss, reduction, want_grads, *params):
        if y.shape != (x.shape[0], params[-2].shape[0]):
            # Broadcasting (B, 1) against (B,) would silently average a (B, B) table.
            raise ValueError(f"y_hat has shape {(x.shape[0], params[-2].shape[0])} but y has "
                             f"{tuple(y.shape)}")
        input_dtypes = [None if t is None else t.dtype for t in (x, *params)]
        # needs_input_grad is (x, y, activations, loss, reduction, want_grads, *params).
        needs = None
        if want_grads:
            needs = (ctx.needs_input_grad[0], *ctx.needs_input_grad[6:])

        dtype = _autocast_dtype(x)
        if dtype is None:
            value, y_hat, grads = _fused_pass(x, y, activations, loss, reduction, needs, params)
        else:
            # As MLPFunction: every layer in the autocast dtype, the loss in float32.
            x = _cast_as_autocast(x, dtype)
            params = tuple(_cast_as_autocast(p, dtype) for p in params)
            with torch.autocast(x.device.type, enabled=False):
                value, y_hat, grads = _fused_pass(x, y, activations, loss, reduction, needs,
                                                  params)

        # Limitation: y_hat is not differentiable; this Function derives the loss's gradients
        # only, so an objective built on y_hat itself needs MLPFunction.
        ctx.mark_non_differentiable(y_hat)
        ctx.factor = _loss_factor(loss, reduction, y_hat.numel())
        ctx.has_grad = None
        if grads is not None:
            grads = [g if g is None or g.dtype == d else g.to(d)
                     for g, d in zip(grads, input_dtypes)]
            ctx.has_grad = [g is not None for g in grads]
            ctx.save_for_backward(*(g for g in grads if g is not None))
        return value, y_hat

    @staticmethod
    def backward(ctx, grad_loss, _grad_y_hat):
        if ctx.has_grad is None:
            raise RuntimeError("FusedMLPLossFunction ran with want_grads=False, so it kept no "
                               "gradients; call it with grad mode on to differentiate it")
        scale = grad_loss * ctx.factor
        saved = iter(ctx.saved_tensors)
        grads = [next(saved) * scale if has else None for has in ctx.has_grad]
        return grads[0], None, None, None, None, None, *grads[1:]


def fused_mlp_loss(x: Tensor, y: Tensor, activations: tuple[str, ...], loss: str,
                   reduction: str, *params: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(loss, y_hat)`` by ``FusedMLPLossFunction``; gradients only when grad mode is on."""
    return FusedMLPLossFunction.apply(x, y, tuple(activations), loss, reduction,
                                      torch.is_grad_enabled(), *params)
