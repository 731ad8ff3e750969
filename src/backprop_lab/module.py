"""LightningModule that trains ``SigmoidMLP``: loss, accuracy, optimizer and logging."""

import time

import lightning as L
import torch
from torch import Tensor
from torchmetrics.classification import BinaryAccuracy

from backprop_lab.network import LOSSES, SigmoidMLP
from backprop_lab.optimizers import build_optimizer

class BackpropModule(L.LightningModule):
    """Trains the two-layer sigmoid network with autograd or the hand-derived backward.

    Every argument is a plain value, so the checkpoint restores with
    ``BackpropModule.load_from_checkpoint(path)`` in any Python process. ``init`` holds the
    arguments of ``SigmoidMLP.initialize`` (seed, scheme, scale, weights); ``optimizer`` holds
    ``name`` ("sgd" or "adam") and that optimizer's settings. Loss ``mse`` is the mean of
    squares and ``half_mse`` the mean of half squares. Outputs above 0.5 count as class 1.
    """

    def __init__(
        self,
        n_inputs: int = 2,
        n_hidden: int = 2,
        n_outputs: int = 1,
        bias: bool = True,
        backward: str = "manual",
        loss: str = "mse",
        init: dict | None = None,
        optimizer: dict | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = SigmoidMLP(n_inputs, n_hidden, n_outputs, bias=bias, backward=backward)
        self.net.initialize(**(init or {}))
        self.loss_name = loss
        self.optimizer_settings = dict(optimizer or {"name": "sgd", "lr": 0.1})
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r} is not one of {', '.join(LOSSES)}")
        self.train_acc = BinaryAccuracy()
        self.val_acc = BinaryAccuracy()
        self.test_acc = BinaryAccuracy()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        start = time.perf_counter()
        y_hat = self.net(x)
        loss = self.net.loss(y_hat, y, self.loss_name)
        if stage == "train":
            if loss.is_cuda:
                torch.cuda.synchronize(loss.device)
            # Read by the TrainingHistory callback: the network's share of the step.
            self.last_forward_seconds = time.perf_counter() - start

        accuracy = getattr(self, f"{stage}_acc")
        accuracy(y_hat.detach(), y)
        batch_size = x.shape[0]
        # sync_dist averages over DDP processes; on one process it costs nothing.
        self.log(f"{stage}/loss", loss.detach(), on_step=False, on_epoch=True,
                 batch_size=batch_size, sync_dist=True)
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, batch_size=batch_size)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(self.parameters(), **self.optimizer_settings)
