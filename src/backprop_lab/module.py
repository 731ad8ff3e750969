"""LightningModule that trains ``MLP``: loss, accuracy, optimizer and logging."""

import time
from collections.abc import Sequence

import lightning as L
import torch
from torch import Tensor
from torchmetrics.classification import BinaryAccuracy

from backprop_lab.network import MLP
from backprop_lab.optimizers import build_optimizer


class BackpropModule(L.LightningModule):
    """Trains the perceptron with autograd or the hand-derived backward.

    Every argument is a plain value, so the checkpoint restores with
    ``BackpropModule.load_from_checkpoint(path)`` in any Python process. The network's
    arguments are ``MLP``'s; ``init`` holds those of ``MLP.initialize`` (seed, scheme, scale,
    weights); ``optimizer`` holds ``name`` ("sgd" or "adam") and that optimizer's settings.
    With one output, accuracy counts outputs (probabilities, under bce) above 0.5 as class 1;
    with several outputs (regression) only the loss is logged.

    With ``population=K`` above 1 the module trains K independent networks at once (see
    ``MLP``): ``{stage}/loss`` and ``{stage}/acc`` are the members' means, ``train/loss_max``
    the worst member's loss, and ``member_loss_sum`` / ``member_acc_sum`` / ``member_rows``
    accumulate each member's figures over the current training epoch for
    ``backprop_lab.callbacks.PopulationTracker``.
    """

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
        init: dict | None = None,
        optimizer: dict | None = None,
        population: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = MLP(n_inputs, hidden, n_outputs, activation=activation,
                       output_activation=output_activation, bias=bias, freeze_bias=freeze_bias,
                       backward=backward, loss=loss, reduction=reduction,
                       population=population)
        self.net.initialize(**(init or {}))
        self.optimizer_settings = dict(optimizer or {"name": "sgd", "lr": 0.1})
        self.classifies = n_outputs == 1
        # validate_args off: a regression target outside {0, 1} must not stop training.
        self.train_acc = BinaryAccuracy(validate_args=False)
        self.val_acc = BinaryAccuracy(validate_args=False)
        self.test_acc = BinaryAccuracy(validate_args=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """The batch in the parameters' dtype: rows given in float64 keep their exact values
        under ``64-true`` and become float32 otherwise."""
        return tuple(t.to(self.dtype) if t.is_floating_point() else t for t in batch)

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        start = time.perf_counter()
        y_hat = self.net(x)
        loss = self.net.loss(y_hat, y)
        if stage == "train":
            if loss.is_cuda:
                torch.cuda.synchronize(loss.device)
            # Read by the TrainingHistory callback: the network's share of the step.
            self.last_forward_seconds = time.perf_counter() - start
        if self.net.population > 1:
            self._log_population(x, y, y_hat, stage)
            return loss

        batch_size = x.shape[0]
        # sync_dist averages over DDP processes; on one process it costs nothing.
        self.log(f"{stage}/loss", loss.detach(), on_step=False, on_epoch=True,
                 batch_size=batch_size, sync_dist=True)
        if self.classifies:
            accuracy = getattr(self, f"{stage}_acc")
            accuracy(self.net.probability(y_hat.detach()), y)
            self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True,
                     batch_size=batch_size)
        return loss

    def _log_population(self, x: Tensor, y: Tensor, y_hat: Tensor, stage: str) -> None:
        """Members' mean loss and accuracy; per-member sums for the epoch (training only)."""
        losses = self.net.member_losses(y_hat.detach(), y)  # (K,)
        batch_size = x.shape[0]
        self.log(f"{stage}/loss", losses.mean(), on_step=False, on_epoch=True,
                 batch_size=batch_size, sync_dist=True)
        accuracy = None
        if self.classifies:
            correct = (self.net.probability(y_hat.detach()) > 0.5) == (y > 0.5)  # (K, B, 1)
            accuracy = correct.flatten(1).float().mean(1)  # (K,)
            self.log(f"{stage}/acc", accuracy.mean(), on_step=False, on_epoch=True,
                     batch_size=batch_size, sync_dist=True)
        if stage != "train":
            return
        # The target-loss stop watches the worst member: the run ends once all reached it.
        self.log("train/loss_max", losses.max(), on_step=False, on_epoch=True,
                 batch_size=batch_size, sync_dist=True)
        self.member_loss_sum = self.member_loss_sum + losses * batch_size
        if accuracy is not None:
            self.member_acc_sum = self.member_acc_sum + accuracy * batch_size
        self.member_rows += batch_size

    def on_train_epoch_start(self) -> None:
        self.member_loss_sum, self.member_acc_sum, self.member_rows = 0.0, 0.0, 0

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trainable = [p for p in self.parameters() if p.requires_grad]
        return build_optimizer(trainable, **self.optimizer_settings)
