"""Where the rows come from: generated 2-D sets, a CSV file, scikit-learn's breast cancer table.

Each source returns ``(x, y)``: float64 numpy arrays of shape (N, features) and (N, targets),
checked here so that a bad file or setting fails in one line that names the file and column,
before any training. Splitting, standardising and serving are ``backprop_lab.data``'s job.
"""

import csv
import difflib
import math
from numbers import Integral, Real
from pathlib import Path

import numpy as np

# Two fixed blob centres, so that ``noise`` alone sets how much the classes overlap.
BLOB_CENTRES = ((-2.0, -2.0), (2.0, 2.0))


def _closest(name: str, options) -> str:
    """" (did you mean 'x'?)" for the option nearest to ``name``, or "" when none is close."""
    match = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def check_samples_and_noise(samples, noise) -> None:
    """ValueError unless ``samples`` is an integer above 0 and ``noise`` a finite number >= 0."""
    if isinstance(samples, bool) or not isinstance(samples, Integral) or samples <= 0:
        raise ValueError(f"samples={samples!r} is not allowed; it must be an integer above 0")
    if isinstance(noise, bool) or not isinstance(noise, Real) or not math.isfinite(noise) \
            or noise < 0:
        raise ValueError(f"noise={noise!r} is not allowed; it must be a finite number >= 0")


def _column(labels: np.ndarray) -> np.ndarray:
    return labels.astype(np.float64).reshape(-1, 1)  # (N, 1)


def two_moons(samples: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's two interleaving half circles; class 1 is the lower moon."""
    from sklearn.datasets import make_moons

    check_samples_and_noise(samples, noise)
    x, labels = make_moons(n_samples=samples, noise=noise, random_state=seed)
    return x, _column(labels)


def two_circles(samples: int, noise: float, factor: float,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's two concentric circles; class 1 is the inner one, ``factor`` its radius."""
    from sklearn.datasets import make_circles

    check_samples_and_noise(samples, noise)
    if isinstance(factor, bool) or not isinstance(factor, Real) or not 0 < factor < 1:
        raise ValueError(f"factor={factor!r} is not allowed; it must be a number between 0 and "
                         "1 (the inner circle's radius, the outer one's being 1)")
    x, labels = make_circles(n_samples=samples, noise=noise, factor=factor, random_state=seed)
    return x, _column(labels)


def two_blobs(samples: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's Gaussian blobs around BLOB_CENTRES; ``noise`` is each blob's std."""
    from sklearn.datasets import make_blobs

    check_samples_and_noise(samples, noise)
    x, labels = make_blobs(n_samples=samples, centers=np.array(BLOB_CENTRES),
                           cluster_std=noise, random_state=seed)
    return x, _column(labels)


def two_spirals(samples: int, noise: float, turns: float,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved spiral arms of radius up to 1, the second the first turned by half a turn.

    ``noise`` is the standard deviation of Gaussian jitter added to both coordinates.
    """
    check_samples_and_noise(samples, noise)
    if isinstance(turns, bool) or not isinstance(turns, Real) or not 0 < turns <= 10:
        raise ValueError(f"turns={turns!r} is not allowed; it must be a number above 0 and "
                         "at most 10")
    rng = np.random.default_rng(seed)
    labels = np.arange(samples) % 2  # (N,) alternating, so both arms get half the points
    # The square root spreads points evenly along the arm: its length grows with the radius.
    radius = np.sqrt(rng.uniform(0.0, 1.0, samples))  # (N,)
    angle = radius * turns * 2 * math.pi + math.pi * labels  # (N,)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)  # (N, 2)
    x += noise * rng.standard_normal(x.shape)
    return x, _column(labels)


def _as_names(value, key: str) -> list[str]:
    """A column name or a list of them as a list of strings."""
    names = [value] if isinstance(value, str) else list(value)
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ValueError(f"{key}={value!r} is not allowed; give a column name or a list of them")
    return names


def _pick(names: list[str], available: list[str], where: str, what: str) -> list[int]:
    """Indices of ``names`` in ``available``; ValueError naming the first unknown one."""
    for name in names:
        if name not in available:
            raise ValueError(f"{where} has no {what} {name!r}{_closest(name, available)}; "
                             f"its {what}s are: {', '.join(available)}")
    return [available.index(name) for name in names]


def resolve_path(path) -> Path:
    """``path`` as an absolute path; a relative one starts from the current directory.

    Hydra does not change the working directory in this project (``hydra.job.chdir`` stays
    false), so the current directory at construction is the one the command was started from.
    """
    if not isinstance(path, (str, Path)) or not str(path):
        raise ValueError(f"path={path!r} is not allowed; give the path of a CSV file")
    return (Path.cwd() / Path(path).expanduser()).absolute()


def _read_rows(path) -> tuple[Path, list[str], list[list[str]], list[int]]:
    """The file, its header and its data rows with their line numbers; blank lines skipped."""
    file = resolve_path(path)
    if not file.exists():
        relative = "" if Path(path).expanduser().is_absolute() else \
            f" ({str(path)!r} is read from the current directory, {Path.cwd()})"
        raise ValueError(f"CSV file {file} does not exist{relative}")
    if not file.is_file():
        raise ValueError(f"CSV file {file} is not a file")
    try:
        with file.open(newline="", encoding="utf-8-sig") as handle:
            # Limitation: the whole file is read into memory; this project's tables are small.
            reader = csv.reader(handle)
            rows, lines = [], []
            for row in reader:
                if any(cell.strip() for cell in row):  # blank lines carry no row
                    rows.append(row)
                    lines.append(reader.line_num)
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"CSV file {file} cannot be read as UTF-8 CSV text: {err}") from None
    if not rows:
        raise ValueError(f"CSV file {file} is empty; it needs a header row and data rows")
    header = [name.strip() for name in rows[0]]
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise ValueError(f"CSV file {file} has more than one column named "
                         f"{', '.join(map(repr, duplicated))}")
    if len(rows) == 1:
        raise ValueError(f"CSV file {file} has a header but no data rows")
    return file, header, rows[1:], lines[1:]


def read_csv(path, features, target) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Inputs, targets and their column names from a CSV file with a header row.

    ``target`` is a column name, a list of them, or None for the last column; ``features`` is
    a column name, a list of them, or None for every column that is not a target. Every chosen
    cell must be a finite number. Errors count rows from 1 after the header, and give the
    file's own line number too.
    """
    file, header, rows, lines = _read_rows(path)
    targets = [header[-1]] if target is None else _as_names(target, "target")
    target_index = _pick(targets, header, f"CSV file {file}", "column")
    if features is None:
        names = [name for name in header if name not in targets]
    else:
        names = _as_names(features, "features")
    feature_index = _pick(names, header, f"CSV file {file}", "column")
    both = sorted(set(names) & set(targets))
    if both:
        raise ValueError(f"CSV file {file}: column {both[0]!r} is both a feature and a target")
    if not names:
        raise ValueError(f"CSV file {file} has no column left for features besides the "
                         f"target(s) {', '.join(targets)}")

    table = _numbers(file, header, rows, lines, feature_index + target_index)
    return table[:, feature_index], table[:, target_index], names, targets


def read_points(path, names: list[str]) -> tuple[np.ndarray, list[str]]:
    """The columns ``names`` of a CSV file with a header row, as (N, len(names)) numbers.

    For feeding new points to a trained network: its input columns must all be there (other
    columns are ignored). A file that names none of them but has exactly ``len(names)``
    columns is taken column for column. Returns the numbers and the header names used.
    """
    file, header, rows, lines = _read_rows(path)
    if not any(name in header for name in names) and len(header) == len(names):
        names = header  # no input named at all: the columns in order
    missing = [name for name in names if name not in header]
    if missing:
        raise ValueError(
            f"CSV file {file} has no column {missing[0]!r}{_closest(missing[0], header)}; the "
            f"network takes {len(names)} inputs ({', '.join(names)}) and the file has "
            f"{len(header)} columns ({', '.join(header)})")
    index = [header.index(name) for name in names]
    return _numbers(file, header, rows, lines, index)[:, index], names


def _numbers(file: Path, header: list[str], rows: list[list[str]], lines: list[int],
             wanted: list[int]) -> np.ndarray:
    """The table (N, columns) with the ``wanted`` columns parsed; each cell a finite number."""
    table = np.zeros((len(rows), len(header)))  # (N, columns)
    for number, (row, line) in enumerate(zip(rows, lines), start=1):
        if len(row) != len(header):
            raise ValueError(f"CSV file {file}: row {number} (line {line}) has {len(row)} "
                             f"cells, the header has {len(header)}")
        for i in wanted:
            where = f"CSV file {file}: column {header[i]!r}, row {number} (line {line})"
            table[number - 1, i] = _number(row[i], where)
    return table


def _number(cell: str, where: str) -> float:
    """The cell as a finite float; ValueError saying ``where`` it is otherwise."""
    try:
        value = float(cell)
    except ValueError:
        shown = "is empty" if not cell.strip() else f"holds {cell!r}, which is not a number"
        raise ValueError(f"{where} {shown}") from None
    if math.isnan(value):
        raise ValueError(f"{where} is NaN")
    if math.isinf(value):
        raise ValueError(f"{where} is infinite ({cell.strip()})")
    return value


def breast_cancer(features) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's Wisconsin breast cancer table (569 rows, bundled, no download).

    ``features`` is a list of scikit-learn's feature names, or None for all 30. The target is
    1 for benign and 0 for malignant, as scikit-learn codes it.
    """
    from sklearn.datasets import load_breast_cancer

    table = load_breast_cancer()
    available = [str(name) for name in table.feature_names]
    names = available if features is None else _as_names(features, "features")
    index = _pick(names, available, "breast_cancer", "feature")
    return table.data[:, index], _column(table.target), names
