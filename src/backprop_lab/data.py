"""Data modules: the XOR truth table."""

import math

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

XOR_INPUTS = ((0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0))
XOR_TARGETS = ((0.0,), (1.0,), (1.0,), (0.0,))


class XORDataModule(L.LightningDataModule):
    """The 4-row XOR truth table as tensors, served whole as one batch.

    XOR has no held-out points, so training, validation and test all see the same four rows;
    validation and test then measure the trained function, not generalisation.
    """

    n_features = 2
    n_targets = 1

    def __init__(self, batch_size: int | None = None) -> None:
        super().__init__()
        self.batch_size = batch_size
        x = torch.tensor(XOR_INPUTS)  # (4, 2)
        y = torch.tensor(XOR_TARGETS)  # (4, 1)
        self.dataset = TensorDataset(x, y)

    def _loader(self) -> DataLoader:
        # Full batch means the whole table per step; under DDP each process takes its share.
        world_size = self.trainer.world_size if self.trainer is not None else 1
        batch_size = self.batch_size or math.ceil(len(self.dataset) / world_size)
        return DataLoader(self.dataset, batch_size=batch_size, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()
