"""The data modules: every option of conf/data/, splits, standardisation, batches, bad inputs."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from backprop_lab.data import (
    BreastCancerDataModule, CSVDataModule, MoonsDataModule, RowsDataModule, SpiralDataModule,
    XORDataModule,
)
from backprop_lab.hydra_errors import preflight
from backprop_lab.run import validate
from backprop_lab.train import CONFIG_MODULE, CONFIG_NAME

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
DATA_OPTIONS = sorted(path.stem for path in (CONF_DIR / "data").glob("*.yaml"))
# Small sizes keep every test fast; the shapes they imply are checked below.
SMALL = ("data.samples=40",)
GENERATED = ("moons", "circles", "blobs", "spiral")


def write_csv(folder: Path, text: str, name: str = "table.csv") -> Path:
    path = folder / name
    path.write_text(text)
    return path


POINTS_CSV = "x1,x2,label\n" + "".join(
    f"{i * 0.5},{(i * 7) % 5},{i % 2}\n" for i in range(20)
)


def test_config_group_offers_every_data_option():
    assert DATA_OPTIONS == ["blobs", "breast_cancer", "circles", "csv", "moons", "rows", "spiral",
                            "xor"]
    for option in DATA_OPTIONS:
        first = (CONF_DIR / "data" / f"{option}.yaml").read_text().splitlines()[0]
        assert first.startswith("# "), option


@pytest.mark.parametrize("option", DATA_OPTIONS)
def test_every_data_option_builds_and_serves_batches_of_the_right_shape(option, make_cfg,
                                                                       tmp_path):
    overrides = {
        "csv": (f"data.path={write_csv(tmp_path, POINTS_CSV)}",),
        "rows": ("data.x=[[0,0],[0,1],[1,0]]", "data.y=[[0],[1],[1]]"),
        **{name: SMALL for name in GENERATED},
    }.get(option, ())
    cfg = make_cfg(f"data={option}", *overrides)
    datamodule = instantiate(cfg.data)
    rows = {"xor": (4, 4, 4), "rows": (3, 3, 3), "breast_cancer": (341, 114, 114), "csv": (12, 4, 4)}.get(
        option, (24, 8, 8))

    assert (datamodule.n_features, datamodule.n_targets, datamodule.binary_targets) == (2, 1, True)
    x, y = datamodule.train_arrays()
    assert x.shape == (rows[0], 2) and y.shape == (rows[0], 1)
    assert x.dtype == y.dtype == np.float32
    assert set(np.unique(y)) <= {0.0, 1.0}
    loaders = (datamodule.train_dataloader(), datamodule.val_dataloader(),
               datamodule.test_dataloader())
    for loader, n_rows in zip(loaders, rows):
        (x_batch, y_batch), = list(loader)  # full batch: one batch per split
        assert x_batch.shape == (n_rows, 2) and y_batch.shape == (n_rows, 1)
        # Given rows stay float64 until the module casts them to its parameters' dtype.
        assert x_batch.dtype == (torch.float64 if option == "rows" else torch.float32)


def test_xor_serves_the_same_four_rows_unscaled_in_every_stage():
    datamodule = XORDataModule()
    x, y = datamodule.train_arrays()
    assert x.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]] and y.ravel().tolist() == [0, 1, 1, 0]
    for loader in (datamodule.train_dataloader(), datamodule.val_dataloader(),
                   datamodule.test_dataloader()):
        (x_batch, y_batch), = list(loader)
        assert x_batch.tolist() == x.tolist() and y_batch.tolist() == y.tolist()


def test_given_rows_keep_their_exact_values_for_float64_training():
    datamodule = RowsDataModule([[0.05, 0.1]], [[0.01, 0.99]])
    (x_batch, y_batch), = list(datamodule.train_dataloader())
    assert x_batch.dtype == torch.float64 and x_batch.tolist() == [[0.05, 0.1]]
    assert (datamodule.n_features, datamodule.n_targets) == (2, 2)
    assert not datamodule.binary_targets


@pytest.mark.parametrize("x, y, expected", [
    ([[0.1, 0.2]], [[1.0], [0.0]], "data.x has 1 rows but data.y has 2"),
    ([[0.1, 0.2], [0.3]], [[1.0], [0.0]], "all of one length"),
    ([[0.1, float("nan")]], [[1.0]], "holds NaN or infinite values"),
    ([["a", 0.2]], [[1.0]], "give a list of rows of numbers"),
    ([], [], "give a list of rows of numbers"),
])
def test_bad_given_rows_are_refused_naming_the_problem(x, y, expected):
    with pytest.raises(ValueError, match=re.escape(expected)):
        RowsDataModule(x, y)


def test_standardisation_is_fitted_on_the_training_split_only():
    raw = MoonsDataModule(samples=60, standardize=False, seed=2)
    scaled = MoonsDataModule(samples=60, standardize=True, seed=2)
    x_raw = raw.train_set.tensors[0].double()  # (36, 2)
    mean, std = x_raw.mean(0), x_raw.std(0, unbiased=False)

    x_train = scaled.train_set.tensors[0].double()
    assert x_train.mean(0).abs().max() < 1e-6
    assert (x_train.std(0, unbiased=False) - 1).abs().max() < 1e-6
    for raw_set, scaled_set in ((raw.val_set, scaled.val_set), (raw.test_set, scaled.test_set)):
        expected = (raw_set.tensors[0].double() - mean) / std
        assert torch.allclose(scaled_set.tensors[0].double(), expected, atol=1e-5)
        assert scaled_set.tensors[0].mean(0).abs().max() > 1e-3  # not fitted on itself
    assert torch.equal(raw.train_set.tensors[1], scaled.train_set.tensors[1])


def test_same_seed_gives_identical_rows_and_batch_order():
    def batches(seed):
        datamodule = MoonsDataModule(samples=80, batch_size=8, seed=seed)
        loader = datamodule.train_dataloader()
        epochs = []
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)  # as Lightning does before every epoch
            epochs += [x for x, _ in loader]
        return datamodule, epochs

    (first, order), (again, order_again), (other, order_other) = (
        batches(5), batches(5), batches(6))
    assert all(torch.equal(a, b) for a, b in zip(order, order_again))
    assert np.array_equal(first.train_arrays()[0], again.train_arrays()[0])
    assert not np.array_equal(first.train_arrays()[0], other.train_arrays()[0])
    assert not all(torch.equal(a, b) for a, b in zip(order, order_other))
    # Mini-batches shuffle: each epoch covers the training split once, in a new order.
    epoch_1, epoch_2 = torch.cat(order[:6]), torch.cat(order[6:])
    assert len(order) == 12 and order[0].shape == (8, 2)
    assert torch.equal(epoch_1.sort(0).values, first.train_set.tensors[0].sort(0).values)
    assert not torch.equal(epoch_1, epoch_2)


def test_spiral_arms_are_half_a_turn_apart_and_reach_radius_one():
    datamodule = SpiralDataModule(samples=100, noise=0.0, turns=1.0, standardize=False)
    x, y = (np.concatenate(arrays) for arrays in zip(
        *(s.tensors for s in (datamodule.train_set, datamodule.val_set, datamodule.test_set))))
    radius = np.hypot(x[:, 0], x[:, 1])
    angle = np.arctan2(x[:, 1], x[:, 0])
    expected = radius * 2 * math.pi + math.pi * y[:, 0]
    gap = np.angle(np.exp(1j * (angle - expected)))  # wrapped to (-pi, pi]
    assert np.abs(gap).max() < 1e-4
    assert radius.max() <= 1 + 1e-6 and y.mean() == 0.5


def test_csv_relative_path_is_read_from_the_directory_the_command_starts_in(tmp_path,
                                                                            monkeypatch):
    (tmp_path / "sub").mkdir()
    write_csv(tmp_path / "sub", POINTS_CSV, "points.csv")
    monkeypatch.chdir(tmp_path)
    datamodule = CSVDataModule("sub/points.csv", target="label", standardize=False)
    assert datamodule.path == tmp_path / "sub" / "points.csv"
    x, y = datamodule.train_arrays()
    assert datamodule.feature_names == ["x1", "x2"] and x.shape == (12, 2)
    rows = {tuple(row) for row in np.loadtxt(datamodule.path, delimiter=",", skiprows=1)}
    assert all((*a, b) in rows for a, b in zip(x.tolist(), y[:, 0].tolist()))


def test_csv_chooses_features_and_several_targets_by_name(tmp_path):
    path = write_csv(tmp_path, "a,b,c,d\n" + "".join(f"{i},{i + 1},{i % 3},{i % 2}\n"
                                                      for i in range(10)))
    datamodule = CSVDataModule(str(path), target=["c", "d"], features=["b"])
    assert (datamodule.n_features, datamodule.n_targets) == (1, 2)
    assert datamodule.binary_targets is False  # column c holds 2
    (x, y), = list(datamodule.train_dataloader())
    assert x.shape == (6, 1) and y.shape == (6, 2)
    assert CSVDataModule(str(path)).feature_names == ["a", "b", "c"]  # target: last column


def test_breast_cancer_takes_the_named_features_or_all_thirty():
    two = BreastCancerDataModule(features=["worst area"], standardize=False)
    assert two.n_features == 1 and two.binary_targets
    assert two.train_arrays()[0].max() == pytest.approx(4254.0)  # the largest worst area
    assert BreastCancerDataModule(features=None).n_features == 30


def test_mini_batch_size_bounds_every_batch():
    loader = MoonsDataModule(samples=50, batch_size=7).train_dataloader()
    sizes = [len(x) for x, _ in loader]
    assert sizes == [7, 7, 7, 7, 2]


@pytest.mark.parametrize("text, expected", [
    ("", "is empty"),
    ("x1,x2,label\n", "has a header but no data rows"),
    ("x1,x2,lable\n1,2,0\n", "has no column 'label' (did you mean 'lable'?); its columns are: "
                             "x1, x2, lable"),
    ("x1,x2,label\n1,2,0\n3,abc,1\n", "column 'x2', row 2 (line 3) holds 'abc', which is not "
                                     "a number"),
    ("x1,x2,label\n1,2,0\n3,,1\n", "column 'x2', row 2 (line 3) is empty"),
    ("x1,x2,label\n1,2,0\nnan,4,1\n", "column 'x1', row 2 (line 3) is NaN"),
    ("x1,x2,label\n1,2,0\n3,4,1\n5,-inf,0\n", "column 'x2', row 3 (line 4) is infinite"),
    ("x1,x2,label\n\n1,2,0\n3,x,1\n", "column 'x2', row 2 (line 4) holds 'x'"),
    ("x1,x2,label\n1,2,0\n3,4\n", "row 2 (line 3) has 2 cells, the header has 3"),
])
def test_bad_csv_is_refused_naming_file_column_and_row(tmp_path, text, expected):
    path = write_csv(tmp_path, text)
    with pytest.raises(ValueError) as error:
        CSVDataModule(str(path), target="label")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"CSV file {path}") and expected in message


def test_misspelt_feature_column_is_named_with_a_suggestion(tmp_path):
    path = write_csv(tmp_path, POINTS_CSV)
    with pytest.raises(ValueError, match=r"has no column 'x_2' \(did you mean 'x2'\?\); its "
                                         r"columns are: x1, x2, label$"):
        CSVDataModule(str(path), target="label", features=["x1", "x_2"])


def test_missing_csv_file_is_named():
    with pytest.raises(ValueError, match="CSV file /no/such/table.csv does not exist"):
        CSVDataModule("/no/such/table.csv")


@pytest.mark.parametrize("settings, expected", [
    ({"val_fraction": 0.0}, "val_fraction=0.0 is not allowed; it must be a number above 0"),
    ({"test_fraction": 1.5}, "test_fraction=1.5 is not allowed"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, "add up to 1 or more, leaving no rows for "
                                                  "training"),
    ({"samples": 10, "val_fraction": 0.01}, "no rows left for the val split: 10 rows"),
    ({"samples": 0}, "samples=0 is not allowed; it must be an integer above 0"),
    ({"noise": -0.1}, "noise=-0.1 is not allowed; it must be a finite number >= 0"),
    ({"batch_size": 0}, "batch_size=0 is not allowed"),
])
def test_bad_split_or_generator_setting_is_refused_in_one_line(settings, expected):
    with pytest.raises(ValueError) as error:
        MoonsDataModule(**settings)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_unknown_breast_cancer_feature_lists_the_valid_ones():
    with pytest.raises(ValueError) as error:
        BreastCancerDataModule(features=["mean radius", "mean radus"])
    message = str(error.value)
    assert message.startswith("breast_cancer has no feature 'mean radus' "
                              "(did you mean 'mean radius'?); its features are: mean radius, ")
    assert message.endswith("worst fractal dimension") and message.count(", ") == 29


def test_backprop_train_refuses_a_missing_csv_in_one_line_before_training(tmp_path, capsys):
    args = ["data=csv", "data.path=nope.csv", f"paths.log_dir={tmp_path / 'logs'}"]
    with pytest.raises(SystemExit) as exit_info:
        preflight(args, CONFIG_MODULE, CONFIG_NAME, validate, prog="backprop-train")
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"backprop-train: error: CSV file {Path.cwd() / 'nope.csv'} "
                               "does not exist ('nope.csv' is read from the current directory")
    assert not (tmp_path / "logs").exists()
