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
        manual_impl: str = "readable",
        init: dict | None = None,
        optimizer: dict | None = None,
        population: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = MLP(n_inputs, hidden, n_outputs, activation=activation,
                       output_activation=output_activation, bias=bias, freeze_bias=freeze_bias,
                       backward=backward, loss=loss, reduction=reduction,
                       manual_impl=manual_impl, population=population)
        self.net.initialize(**(init or {}))
        self.optimizer_settings = dict(optimizer or {"name": "sgd", "lr": 0.1})
        self.classifies = n_outputs == 1
        # validate_args off: a regression target outside {0, 1} must not stop training.
        self.train_acc = BinaryAccuracy(validate_args=False)
        self.val_acc = BinaryAccuracy(validate_args=False)
        self.test_acc = BinaryAccuracy(validate_args=False)
        self._epoch_loss: Tensor | None = None
        self._epoch_rows = 0
        self.member_loss_sum: Tensor | float = 0.0
        self.member_acc_sum: Tensor | float = 0.0

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """The batch in the parameters' dtype: rows given in float64 keep their exact values
        under ``64-true`` and become float32 otherwise."""
        return tuple(t.to(self.dtype) if t.is_floating_point() else t for t in batch)

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        start = time.perf_counter()
        y_hat, loss = self.net.forward_and_loss(x, y)
        batch_size = x.shape[0]
        if stage == "train":
            if loss.is_cuda:
                torch.cuda.synchronize(loss.device)
            # Read by the TrainingHistory callback: the network's share of the step.
            self.last_forward_seconds = time.perf_counter() - start
            self._add_to_epoch(loss, y_hat, y, batch_size)
            return loss
        if self.net.population > 1:
            losses, accuracy = self._member_figures(y_hat, y)
            self.log(f"{stage}/loss", losses.mean(), on_step=False, on_epoch=True,
                     batch_size=batch_size, sync_dist=True)
            if accuracy is not None:
                self.log(f"{stage}/acc", accuracy.mean(), on_step=False, on_epoch=True,
                         batch_size=batch_size, sync_dist=True)
            return loss

        # sync_dist averages over DDP processes; on one process it costs nothing.
        self.log(f"{stage}/loss", loss.detach(), on_step=False, on_epoch=True,
                 batch_size=batch_size, sync_dist=True)
        if self.classifies:
            accuracy = getattr(self, f"{stage}_acc")
            accuracy(self.net.probability(y_hat.detach()), y)
            self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True,
                     batch_size=batch_size)
        return loss

    def _add_to_epoch(self, loss: Tensor, y_hat: Tensor, y: Tensor, batch_size: int) -> None:
        """Add a training step to the epoch's loss and accuracy, which are logged at its end.

        Calling ``self.log`` on every step costs more than the whole step on XOR; summing here
        as ``self.log`` would (loss times batch size) gives the same epoch means.
        """
        self._epoch_rows += batch_size
        if self.net.population > 1:
            losses, accuracy = self._member_figures(y_hat, y)
            self.member_loss_sum = self.member_loss_sum + losses * batch_size
            if accuracy is not None:
                self.member_acc_sum = self.member_acc_sum + accuracy * batch_size
            return
        weighted = loss.detach() * batch_size
        self._epoch_loss = weighted if self._epoch_loss is None else self._epoch_loss + weighted
        if self.classifies:
            self.train_acc.update(self.net.probability(y_hat.detach()), y)

    def _member_figures(self, y_hat: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None]:
        """Each member's loss and (for a classifier) accuracy on the batch, (K,) each."""
        losses = self.net.member_losses(y_hat.detach(), y)
        if not self.classifies:
            return losses, None
        correct = (self.net.probability(y_hat.detach()) > 0.5) == (y > 0.5)  # (K, B, 1)
        return losses, correct.flatten(1).float().mean(1)

    @property
    def member_rows(self) -> int:
        """Rows of the current training epoch so far (read by PopulationTracker)."""
        return self._epoch_rows

    def on_train_epoch_start(self) -> None:
        self._epoch_loss, self._epoch_rows = None, 0
        self.member_loss_sum, self.member_acc_sum = 0.0, 0.0

    def on_train_epoch_end(self) -> None:
        if not self._epoch_rows:
            return
        if self.net.population > 1:
            losses = self.member_loss_sum / self._epoch_rows  # (K,)
            self.log("train/loss", losses.mean(), on_step=False, on_epoch=True, batch_size=1,
                     sync_dist=True)
            # The target-loss stop watches the worst member: the run ends once all reached it.
            self.log("train/loss_max", losses.max(), on_step=False, on_epoch=True,
                     batch_size=1, sync_dist=True)
            if self.classifies:
                self.log("train/acc", (self.member_acc_sum / self._epoch_rows).mean(),
                         on_step=False, on_epoch=True, batch_size=1, sync_dist=True)
            return
        # Lightning calls this before EarlyStopping and ModelCheckpoint look at train/loss.
        # batch_size=1: the value is already the epoch's mean, weighted by batch size. Under DDP,
        # sync_dist then averages the processes' means, which hold equally many rows.
        self.log("train/loss", self._epoch_loss / self._epoch_rows, on_step=False,
                 on_epoch=True, batch_size=1, sync_dist=True)
        if self.classifies:
            # compute() combines every DDP process's counts itself.
            self.log("train/acc", self.train_acc.compute(), on_step=False, on_epoch=True,
                     batch_size=1)
            self.train_acc.reset()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trainable = [p for p in self.parameters() if p.requires_grad]
        return build_optimizer(trainable, **self.optimizer_settings)
