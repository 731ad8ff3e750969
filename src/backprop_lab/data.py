"""Data modules: XOR's truth table, and tables of rows split into train/val/test and served.

Every data module knows its shape as soon as it is constructed, because the run checks the
model against the data before training: ``n_features``, ``n_targets``, ``binary_targets``
(every target is 0 or 1) and ``train_arrays()``, the training rows as the model sees them.
The rows themselves come from ``backprop_lab.data_sources``.
"""

import math
from collections.abc import Sequence
from numbers import Integral, Real

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from backprop_lab import data_sources

XOR_INPUTS = ((0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0))
XOR_TARGETS = ((0.0,), (1.0,), (1.0,), (0.0,))

# numpy takes 32-bit seeds only.
MAX_SEED = 2**32 - 1


def _check_batch_size(batch_size) -> None:
    if batch_size is None:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not allowed; it must be an integer "
                         ">= 1, or null for the full batch")


def input_state(datamodule, feature_names: list[str], target_names: list[str], mean,
                std) -> dict:
    """What a checkpoint keeps of the data (see ``state_dict``): column names, scaling, and
    the data's config when the run set ``data_config`` (``backprop_lab.run.build_data`` does).

    A trained network takes its inputs standardised with ``mean`` and ``std``; whoever feeds
    it new points (``backprop-eval predict=...``) scales them the same way, and
    ``backprop-eval`` without ``data=`` rebuilds the run's own data from the config.
    """
    return {"feature_names": list(feature_names), "target_names": list(target_names),
            "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "data_config": getattr(datamodule, "data_config", None)}


class FullBatch:
    """An iterable that yields its tensors as one batch per pass: a DataLoader's job, done once.

    A DataLoader would fetch and stack the rows one by one on every step, which on XOR costs
    about as much as the training step itself. (A plain list would not do: Lightning reads a
    list as several data loaders.)
    """

    def __init__(self, *tensors: torch.Tensor) -> None:
        self.tensors = tensors

    def __iter__(self):
        yield self.tensors

    def __len__(self) -> int:
        return 1


def _full_batch_loader(dataset: TensorDataset, trainer) -> DataLoader | FullBatch:
    """Every row in one batch per step; under DDP each process takes its share.

    On one process that is the dataset's own tensors (``FullBatch``). Under DDP it is a
    DataLoader, for the DistributedSampler that Lightning gives it.
    """
    world_size = trainer.world_size if trainer is not None else 1
    if world_size == 1:
        return FullBatch(*dataset.tensors)
    return DataLoader(dataset, batch_size=math.ceil(len(dataset) / world_size), shuffle=False)


class RowsDataModule(L.LightningDataModule):
    """A few rows given outright, served whole (or in ``batch_size`` batches, in order).

    Nothing is held out: training, validation and test all see the same rows, so validation
    and test measure the trained function, not generalisation. This is the data of a worked
    example such as a single training sample; inputs are used as given, unscaled.
    """

    # float64, so that a worked example's inputs stay exact under trainer.precision=64-true;
    # the module casts each batch to its parameters' dtype.
    dtype = torch.float64

    def __init__(self, x, y, batch_size: int | None = None) -> None:
        super().__init__()
        _check_batch_size(batch_size)
        self.batch_size = batch_size
        x, y = _rows_tensor(x, "x", self.dtype), _rows_tensor(y, "y", self.dtype)  # (N, C)
        if len(x) != len(y):
            raise ValueError(f"data.x has {len(x)} rows but data.y has {len(y)}; give one "
                             "target row per input row")
        self.n_features, self.n_targets = x.shape[1], y.shape[1]
        self.binary_targets = bool(((y == 0) | (y == 1)).all())
        self.dataset = TensorDataset(x, y)

    def state_dict(self) -> dict:
        """Saved by Lightning into every checkpoint: the inputs are used unscaled."""
        targets = ["y"] if self.n_targets == 1 else [f"y{i + 1}" for i in range(self.n_targets)]
        return input_state(self, [f"x{i + 1}" for i in range(self.n_features)], targets,
                           [0.0] * self.n_features, [1.0] * self.n_features)

    def load_state_dict(self, state_dict: dict) -> None:
        """Nothing to restore: the rows come from the config."""

    def target_range(self) -> tuple[float, float]:
        """The smallest and the largest target value."""
        y = self.dataset.tensors[1]
        return float(y.min()), float(y.max())

    def train_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The rows as float32 arrays, (N, n_features) and (N, n_targets)."""
        return tuple(t.numpy().astype(np.float32) for t in self.dataset.tensors)

    def _loader(self) -> DataLoader | FullBatch:
        if self.batch_size is None:
            return _full_batch_loader(self.dataset, self.trainer)
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False)

    def train_dataloader(self) -> DataLoader | FullBatch:
        return self._loader()

    def val_dataloader(self) -> DataLoader | FullBatch:
        return self._loader()

    def test_dataloader(self) -> DataLoader | FullBatch:
        return self._loader()


def _rows_tensor(rows, name: str, dtype: torch.dtype) -> torch.Tensor:
    """``rows`` (a list of equally long lists of finite numbers) as an (N, C) tensor."""
    def is_list(value) -> bool:
        return isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0

    shape_ok = is_list(rows) and all(is_list(row) and len(row) == len(rows[0]) for row in rows)
    if not shape_ok or not all(isinstance(v, Real) and not isinstance(v, bool)
                               for row in rows for v in row):
        raise ValueError(f"data.{name}={rows!r} is not allowed; give a list of rows of "
                         "numbers, all of one length, e.g. [[0.05, 0.1]]")
    if not all(math.isfinite(v) for row in rows for v in row):
        raise ValueError(f"data.{name}={rows!r} holds NaN or infinite values")
    return torch.tensor([[float(v) for v in row] for row in rows], dtype=dtype)


class XORDataModule(RowsDataModule):
    """The 4-row XOR truth table as tensors, served whole as one batch."""

    dtype = torch.float32  # 0 and 1 are exact in any dtype

    def __init__(self, batch_size: int | None = None) -> None:
        super().__init__(XOR_INPUTS, XOR_TARGETS, batch_size=batch_size)


def split_rows(n_rows: int, val_fraction: float, test_fraction: float,
               seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of the train, val and test splits: a seeded shuffle, then three slices.

    val and test get ``round(n_rows * fraction)`` rows each, train the rest; every split must
    get at least one row.
    """
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(fraction, bool) or not isinstance(fraction, Real) \
                or not 0 < fraction < 1:
            raise ValueError(f"{name}={fraction!r} is not allowed; it must be a number above 0 "
                             "and below 1")
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} add up "
                         "to 1 or more, leaving no rows for training; keep their sum below 1")
    n_val, n_test = round(n_rows * val_fraction), round(n_rows * test_fraction)
    counts = {"train": n_rows - n_val - n_test, "val": n_val, "test": n_test}
    for name, count in counts.items():
        if count < 1:
            raise ValueError(f"no rows left for the {name} split: {n_rows} rows with "
                             f"val_fraction={val_fraction} and test_fraction={test_fraction} "
                             f"give it {count}; use more rows or other fractions")
    order = np.random.default_rng(seed).permutation(n_rows)
    return order[:counts["train"]], order[counts["train"]:-n_test], order[-n_test:]


class TableDataModule(L.LightningDataModule):
    """Rows of inputs and targets, split once into train/val/test and served to Lightning.

    Inputs are standardised (when ``standardize``) with the training split's mean and standard
    deviation, so val and test are scaled as the model will see new data, not exactly to 0/1.
    ``batch_size=None`` serves each split as one batch; an integer serves shuffled training
    mini-batches whose order depends on ``seed`` alone (val and test stay in order).
    ``seed`` also fixes the split. Subclasses produce the rows and call ``__init__``.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, *, val_fraction: float,
                 test_fraction: float, standardize: bool, batch_size: int | None,
                 seed: int, feature_names: list[str] | None = None,
                 target_names: list[str] | None = None) -> None:
        super().__init__()
        _check_batch_size(batch_size)
        if not isinstance(standardize, bool):
            raise ValueError(f"standardize={standardize!r} is not allowed; use true or false")
        self.batch_size = batch_size
        self.seed = seed
        self.n_features = x.shape[1]
        self.n_targets = y.shape[1]
        self.binary_targets = bool(np.isin(y, (0.0, 1.0)).all())
        self.feature_names = feature_names or [f"x{i + 1}" for i in range(self.n_features)]
        self.target_names = target_names or (
            ["y"] if self.n_targets == 1 else [f"y{i + 1}" for i in range(self.n_targets)])

        train, val, test = split_rows(len(x), val_fraction, test_fraction, seed)
        self.mean = np.zeros(self.n_features)
        self.std = np.ones(self.n_features)
        if standardize:
            self.mean = x[train].mean(axis=0)
            # A constant column is only centred: dividing by its zero spread would give NaN.
            spread = x[train].std(axis=0)
            self.std = np.where(spread > 0, spread, 1.0)
        x = (x - self.mean) / self.std  # (N, n_features)

        def tensors(rows: np.ndarray) -> TensorDataset:
            return TensorDataset(torch.tensor(x[rows], dtype=torch.float32),
                                 torch.tensor(y[rows], dtype=torch.float32))

        self.train_set, self.val_set, self.test_set = tensors(train), tensors(val), tensors(test)

    def state_dict(self) -> dict:
        """Saved by Lightning into every checkpoint: column names and the inputs' scaling."""
        return input_state(self, self.feature_names, self.target_names, self.mean, self.std)

    def load_state_dict(self, state_dict: dict) -> None:
        """Nothing to restore: the rows, the split and the scaling are rebuilt from the config."""

    def target_range(self) -> tuple[float, float]:
        """The smallest and the largest target value over all three splits."""
        y = torch.cat([part.tensors[1] for part in (self.train_set, self.val_set, self.test_set)])
        return float(y.min()), float(y.max())

    def train_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The training split as the model sees it: float32 (N, n_features) and (N, n_targets)."""
        return tuple(t.numpy().copy() for t in self.train_set.tensors)

    def _loader(self, dataset: TensorDataset, shuffle: bool) -> DataLoader | FullBatch:
        if self.batch_size is None:
            return _full_batch_loader(dataset, self.trainer)
        world_size = self.trainer.world_size if self.trainer is not None else 1
        if shuffle and world_size == 1:
            # Lightning calls set_epoch on this sampler before every epoch, and its order
            # depends on seed + epoch alone: a run resumed at epoch k sees the batches an
            # uninterrupted run sees there. One replica: the whole split, reshuffled.
            sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True,
                                         seed=self.seed)
            return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler)
        # Under DDP, Lightning swaps in its own DistributedSampler, shuffled from the global
        # seed and the epoch in the same way.
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle)

    def train_dataloader(self) -> DataLoader | FullBatch:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | FullBatch:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader | FullBatch:
        return self._loader(self.test_set, shuffle=False)


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, Integral) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed={seed!r} is not allowed; it must be an integer between 0 and "
                         f"{MAX_SEED}")


class MoonsDataModule(TableDataModule):
    """scikit-learn's two moons: 2 inputs, 1 binary target."""

    def __init__(self, samples: int = 300, noise: float = 0.1, val_fraction: float = 0.2,
                 test_fraction: float = 0.2, standardize: bool = True,
                 batch_size: int | None = None, seed: int = 0) -> None:
        _check_seed(seed)
        x, y = data_sources.two_moons(samples, noise, seed)
        super().__init__(x, y, val_fraction=val_fraction, test_fraction=test_fraction,
                         standardize=standardize, batch_size=batch_size, seed=seed)


class CirclesDataModule(TableDataModule):
    """scikit-learn's two concentric circles: 2 inputs, 1 binary target (1 = inner circle)."""

    def __init__(self, samples: int = 300, noise: float = 0.05, factor: float = 0.5,
                 val_fraction: float = 0.2, test_fraction: float = 0.2,
                 standardize: bool = True, batch_size: int | None = None,
                 seed: int = 0) -> None:
        _check_seed(seed)
        x, y = data_sources.two_circles(samples, noise, factor, seed)
        super().__init__(x, y, val_fraction=val_fraction, test_fraction=test_fraction,
                         standardize=standardize, batch_size=batch_size, seed=seed)


class BlobsDataModule(TableDataModule):
    """Two Gaussian blobs from scikit-learn: 2 inputs, 1 binary target (the blob)."""

    def __init__(self, samples: int = 300, noise: float = 1.0, val_fraction: float = 0.2,
                 test_fraction: float = 0.2, standardize: bool = True,
                 batch_size: int | None = None, seed: int = 0) -> None:
        _check_seed(seed)
        x, y = data_sources.two_blobs(samples, noise, seed)
        super().__init__(x, y, val_fraction=val_fraction, test_fraction=test_fraction,
                         standardize=standardize, batch_size=batch_size, seed=seed)


class SpiralDataModule(TableDataModule):
    """Two interleaved spirals: 2 inputs, 1 binary target (the arm)."""

    def __init__(self, samples: int = 300, noise: float = 0.05, turns: float = 1.0,
                 val_fraction: float = 0.2, test_fraction: float = 0.2,
                 standardize: bool = True, batch_size: int | None = None,
                 seed: int = 0) -> None:
        _check_seed(seed)
        x, y = data_sources.two_spirals(samples, noise, turns, seed)
        super().__init__(x, y, val_fraction=val_fraction, test_fraction=test_fraction,
                         standardize=standardize, batch_size=batch_size, seed=seed)


class CSVDataModule(TableDataModule):
    """Columns of a CSV file with a header row: the chosen features as inputs, target(s) out.

    A relative ``path`` starts from the directory the command was started from (see
    ``data_sources.resolve_path``). ``target=None`` takes the last column, ``features=None``
    every column but the targets.
    """

    def __init__(self, path: str, target: str | list[str] | None = None,
                 features: str | list[str] | None = None, val_fraction: float = 0.2,
                 test_fraction: float = 0.2, standardize: bool = True,
                 batch_size: int | None = None, seed: int = 0) -> None:
        _check_seed(seed)
        self.path = data_sources.resolve_path(path)
        x, y, names, self.target_names = data_sources.read_csv(path, features, target)
        super().__init__(x, y, val_fraction=val_fraction, test_fraction=test_fraction,
                         standardize=standardize, batch_size=batch_size, seed=seed,
                         feature_names=names, target_names=self.target_names)


    def state_dict(self) -> dict:
        """As the table's, with the file's absolute path, valid from any directory."""
        state = super().state_dict()
        if state["data_config"] is not None:
            state["data_config"] = {**state["data_config"], "path": str(self.path)}
        return state


class BreastCancerDataModule(TableDataModule):
    """scikit-learn's breast cancer table: the chosen features, 1 binary target (1 = benign)."""

    def __init__(self, features: list[str] | None = ("mean radius", "mean texture"),
                 val_fraction: float = 0.2, test_fraction: float = 0.2,
                 standardize: bool = True, batch_size: int | None = None,
                 seed: int = 0) -> None:
        _check_seed(seed)
        x, y, names = data_sources.breast_cancer(features)
        super().__init__(x, y, val_fraction=val_fraction, test_fraction=test_fraction,
                         standardize=standardize, batch_size=batch_size, seed=seed,
                         feature_names=names, target_names=["benign"])
