"""Lightning callbacks of backprop-lab: final checkpoint, per-step history, gradient parity."""

import csv
import logging
import math
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

log = logging.getLogger(__name__)


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


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    """Write ``rows`` under ``header`` through a temporary file, so no reader sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    tmp.replace(path)


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TrainingHistory(Callback):
    """Records every training step's loss and forward and backward time.

    Forward time is the network's forward and loss (timed by the LightningModule), backward time
    is ``loss.backward()``; both in milliseconds. The rows go to ``path`` (history.csv) when
    training ends, the per-epoch means to the loggers as ``time/forward_ms`` and
    ``time/backward_ms``, and the means over all steps but the first (which pays for warm-up)
    to metrics.json.
    """

    HEADER = ("step", "epoch", "loss", "forward_ms", "backward_ms")

    def __init__(self, path: str | None = None) -> None:
        self.path = Path(path) if path else None
        self.rows: list[tuple] = []
        self._backward_start = 0.0
        self._backward_ms = math.nan
        self._epoch_first_row = 0
        self._epoch_batch_sizes: list[int] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_first_row, self._epoch_batch_sizes = len(self.rows), []

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        _sync(pl_module.device)
        self._backward_start = time.perf_counter()

    def on_after_backward(self, trainer, pl_module) -> None:
        _sync(pl_module.device)
        self._backward_ms = 1e3 * (time.perf_counter() - self._backward_start)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        forward_ms = 1e3 * getattr(pl_module, "last_forward_seconds", math.nan)
        self.rows.append((trainer.global_step - 1, trainer.current_epoch, float(loss),
                          forward_ms, self._backward_ms))
        self._epoch_batch_sizes.append(len(batch[0]))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The epoch's means weighted by batch size, as self.log on every step would give them,
        # logged once: a self.log call costs about as much as a training step on XOR.
        rows, sizes = self.rows[self._epoch_first_row:], self._epoch_batch_sizes
        if not sizes:
            return
        for name, column in (("time/forward_ms", 3), ("time/backward_ms", 4)):
            mean = sum(row[column] * size for row, size in zip(rows, sizes)) / sum(sizes)
            pl_module.log(name, mean, on_step=False, on_epoch=True, batch_size=1,
                          sync_dist=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.path is not None and trainer.is_global_zero:
            _write_csv(self.path, self.HEADER, self.rows)

    def metrics_summary(self) -> dict:
        """Mean forward, backward and step time in milliseconds, for metrics.json."""
        timed = self.rows[1:] or self.rows
        if not timed:
            return {"forward_ms_mean": None, "backward_ms_mean": None, "step_ms_mean": None}
        forward = sum(r[3] for r in timed) / len(timed)
        backward = sum(r[4] for r in timed) / len(timed)
        return {"forward_ms_mean": forward, "backward_ms_mean": backward,
                "step_ms_mean": forward + backward}


class StopOnDivergence(Callback):
    """Stops training at the first step whose loss is NaN or infinite.

    Checked after every step, so mini-batch training stops where the loss broke rather than at
    the end of the epoch. ``diverged_at`` holds (step, loss, last finite loss) once it fired.
    """

    def __init__(self) -> None:
        self.diverged_at: tuple[int, float, float | None] | None = None
        self._last_finite: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.diverged_at, self._last_finite = None, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Limitation: a population's loss is the sum over members, so one member that
        # diverges stops them all.
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        value = float(loss)
        if math.isfinite(value):
            self._last_finite = value
            return
        if self.diverged_at is None:
            self.diverged_at = (trainer.global_step - 1, value, self._last_finite)
            trainer.should_stop = True


def gradient_gap(manual: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """Largest |manual - reference| and that gap relative to the largest |reference| entry.

    Scaling by the tensor's largest entry rather than entry by entry keeps gradients that are
    nearly zero from turning float32 rounding into huge relative errors. Entries that are NaN
    or infinite in both count as agreeing; a NaN in one only makes the gap NaN.
    """
    same_non_finite = (~torch.isfinite(manual)) & (manual == reference)
    same_non_finite |= manual.isnan() & reference.isnan()
    diff = torch.where(same_non_finite, torch.zeros_like(manual), (manual - reference).abs())
    max_abs = float(diff.max()) if diff.numel() else 0.0
    finite_ref = reference[torch.isfinite(reference)]
    scale = float(finite_ref.abs().max()) if finite_ref.numel() else 0.0
    if max_abs == 0.0:
        return 0.0, 0.0
    return max_abs, (max_abs / scale if scale > 0 else math.inf)


class GradientParity(Callback):
    """Every ``every_n_steps`` steps, computes the gradients by hand and by autograd and compares.

    On the current batch and weights, before the step's update, both gradients of every
    trainable weight are computed; the largest absolute and relative gap of each is logged as
    ``parity/<name>_max_abs`` and ``parity/<name>_max_rel``. A gap above both ``atol`` and
    ``tolerance`` (relative), or a NaN gap, stops training with one log line naming the weight,
    the step and the gap; metrics.json then says ``parity_failed``. The absolute floor matters
    near a minimum: a gradient of 1e-8 built from terms near 0.1 carries float32 rounding of
    about 1e-8, which is a large relative gap and no sign of a wrong derivative. Rows go to
    ``path`` (parity.csv) when training ends.
    """

    HEADER = ("step", "param", "max_abs", "max_rel")

    def __init__(self, every_n_steps: int = 50, tolerance: float = 1e-4, atol: float = 1e-6,
                 path: str | None = None) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps} must be at least 1")
        if not (isinstance(tolerance, (int, float)) and tolerance > 0):
            raise ValueError(f"tolerance={tolerance!r} must be a number above 0")
        if not (isinstance(atol, (int, float)) and atol >= 0):
            raise ValueError(f"atol={atol!r} must be a number of at least 0")
        self.every_n_steps = every_n_steps
        self.tolerance = tolerance
        self.atol = atol
        self.path = Path(path) if path else None
        self.rows: list[tuple] = []
        self.failure: dict | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows, self.failure = [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every_n_steps or self.failure is not None:
            return
        x, y = batch
        net = pl_module.net
        manual = net.gradients(x, y, "manual")
        reference = net.gradients(x, y, "autograd")
        for name, grad in manual.items():
            max_abs, max_rel = gradient_gap(grad, reference[name])
            self.rows.append((step, name, max_abs, max_rel))
            pl_module.log(f"parity/{name}_max_abs", max_abs, on_step=True, on_epoch=False)
            pl_module.log(f"parity/{name}_max_rel", max_rel, on_step=True, on_epoch=False)
            if self.failure is None and not (max_abs <= self.atol or max_rel <= self.tolerance):
                self.failure = {"param": name, "step": step, "max_abs": max_abs,
                                "max_rel": max_rel}
                log.error(self.failure_message())
                trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.path is not None and trainer.is_global_zero:
            _write_csv(self.path, self.HEADER, self.rows)

    def failure_message(self) -> str:
        f = self.failure
        return (f"gradient parity failed at step {f['step']}: {f['param']} differs from autograd "
                f"by {f['max_abs']:.3g} ({f['max_rel']:.3g} relative, "
                f"tolerance {self.tolerance:.3g} relative and {self.atol:.3g} absolute)")

    def metrics_summary(self) -> dict:
        """Checks made and the largest gaps per weight, for metrics.json."""
        max_abs: dict[str, float] = {}
        max_rel: dict[str, float] = {}
        for _, name, gap_abs, gap_rel in self.rows:
            max_abs[name] = max(max_abs.get(name, 0.0), gap_abs)
            max_rel[name] = max(max_rel.get(name, 0.0), gap_rel)
        checks = len({row[0] for row in self.rows})
        return {"parity": {"checks": checks, "tolerance": self.tolerance, "atol": self.atol,
                           "max_abs": max_abs,
                           "max_rel": max_rel, "failure": self.failure}}


class PopulationTracker(Callback):
    """Follows each member of a population (``model.population`` > 1) epoch by epoch.

    A member reaches the target in the first epoch whose training loss, measured before that
    epoch's update as for a single run, is at or below ``target_loss``; its
    ``epochs_to_target`` counts that epoch, so it equals what a single run from the member's
    initial weights reports. Members go on training until the whole population stops. When
    training ends it writes ``members.csv`` (one row per member) and ``member_losses.npz``
    (every member's loss at up to ``max_curve_points`` epochs, for the pictures). Does
    nothing for a single network.
    """

    HEADER = ("member", "init_seed", "epochs_to_target", "train_loss", "train_acc")

    def __init__(self, target_loss: float | None = None, path: str | None = None,
                 max_curve_points: int = 500) -> None:
        self.target_loss = target_loss
        self.path = Path(path) if path else None
        self.max_curve_points = max_curve_points
        self.curves: list[torch.Tensor] = []
        self.epochs_to_target: torch.Tensor | None = None
        self.last_acc: torch.Tensor | None = None
        self.first_seed = 0

    @staticmethod
    def _population(pl_module) -> int:
        return getattr(getattr(pl_module, "net", None), "population", 1)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        population = self._population(pl_module)
        self.curves, self.last_acc = [], None
        self.epochs_to_target = torch.zeros(population, dtype=torch.long)  # 0: not yet
        self.first_seed = int((pl_module.hparams.get("init") or {}).get("seed", 0))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._population(pl_module) == 1 or not pl_module.member_rows:
            return
        losses = (pl_module.member_loss_sum / pl_module.member_rows).detach().cpu()  # (K,)
        self.curves.append(losses.float())
        if pl_module.classifies:
            self.last_acc = (pl_module.member_acc_sum / pl_module.member_rows).detach().cpu()
        if self.target_loss is not None:
            newly = (losses <= self.target_loss) & (self.epochs_to_target == 0)
            self.epochs_to_target[newly] = trainer.current_epoch + 1

    def _member_rows(self) -> list[tuple]:
        final = self.curves[-1].tolist()
        acc = self.last_acc.tolist() if self.last_acc is not None else [None] * len(final)
        return [(i, self.first_seed + i, int(e) or None, loss, a)
                for i, (e, loss, a) in enumerate(zip(self.epochs_to_target.tolist(), final, acc))]

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.curves or self.path is None or not trainer.is_global_zero:
            return
        import numpy as np

        _write_csv(self.path, self.HEADER, self._member_rows())
        stride = max(1, math.ceil(len(self.curves) / self.max_curve_points))
        epochs = list(range(0, len(self.curves), stride))
        tmp = self.path.with_name(".member_losses.tmp.npz")
        np.savez_compressed(tmp, epoch=np.array(epochs) + 1,
                            loss=torch.stack([self.curves[e] for e in epochs]).numpy())
        tmp.replace(self.path.with_name("member_losses.npz"))

    def metrics_summary(self) -> dict:
        """Per-member figures and the share of members that reached the target."""
        if not self.curves:
            return {}
        rows = [dict(zip(self.HEADER, row)) for row in self._member_rows()]
        reached = [row["epochs_to_target"] for row in rows if row["epochs_to_target"]]
        return {
            "population": len(rows),
            "members": rows,
            "fraction_converged": len(reached) / len(rows) if self.target_loss is not None
            else None,
            "members_epochs_to_target_mean": sum(reached) / len(reached) if reached else None,
        }
