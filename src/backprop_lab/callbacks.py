"""Lightning callbacks of backprop-lab."""

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class FinalModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also writes ``last.ckpt`` when training ends.

    Saving every epoch would cost more than the training step itself on a network this small,
    so periodic saves are spaced out; this keeps the final weights on disk whatever the epoch
    at which training stopped.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.dirpath is None or trainer.sanity_checking or trainer.fast_dev_run:
            return
        trainer.save_checkpoint(str(Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}.ckpt"),
                                weights_only=False)
