"""``backprop-report``: tables and pictures for many runs, read from their run directories.

Reads what ``backprop-train`` leaves behind (metrics.json, .hydra/overrides.yaml,
history.csv or csv/metrics.csv, parity.csv, a multirun's multirun.yaml) and writes report.md,
summary.csv and the pictures report.md shows. Needs neither Lightning nor a Hydra app; Hydra's
override parser is imported only to expand a multirun's sweep definition.
"""

import argparse
import csv
import functools
import itertools
import logging
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from backprop_lab import plots
from backprop_lab.metrics_file import METRICS_FILE, read_metrics

log = logging.getLogger(__name__)

PROG = "backprop-report"
REPLICATE_KEY = "seed"
# Keys that say where outputs go or how Hydra runs, not what is trained.
IGNORED_KEY_PREFIXES = ("paths.", "hydra.", "hydra/")
# The quantities summarised per row of summary.csv, in column order: the column prefix, the
# metrics.json key it comes from, and its heading in report.md.
STATISTICS = (
    ("train_loss", "train_loss", "train loss"),
    ("test_loss", "test_loss", "test loss"),
    ("train_acc", "train_acc", "train acc"),
    ("test_acc", "test_acc", "test acc"),
    ("epochs_to_target", "epochs_to_target", "epochs to target"),
    ("step_ms", "step_ms_mean", "step ms"),
)
MAX_DEPTH = 4  # how far below a DIR run directories are looked for


class ReportError(Exception):
    """Input the report cannot be made from; the message is the one line the user sees."""


@dataclass
class Run:
    """One run directory, or one job of a sweep definition that has no directory yet."""

    name: str  # for people: the multirun job as <multirun>/<n>, else the directory
    path: Path | None
    overrides: list[str]
    metrics: dict | None = None
    member: int | None = None  # the member of a population run (model.population > 1)

    @property
    def state(self) -> str:
        """Status from metrics.json, or why there is none."""
        if self.path is None:
            return "not started (no directory)"
        if self.metrics is None:
            return "running or killed (no metrics.json)"
        return str(self.metrics.get("status", "unknown"))


@dataclass
class Sweep:
    """A multirun directory: its jobs found on disk and what its sweep definition expects."""

    path: Path
    expected: list[list[str]] | None  # overrides of job 0..N-1; None when not expandable
    note: str = ""
    runs: list[Run] = field(default_factory=list)


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """The overrides of every job, in job-number order, as Hydra's basic sweeper makes them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if override.is_sweep_override():
            choices[key] = [f"{key}={v}" for v in override.sweep_string_iterator()]
        else:
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*choices.values())]


def _read_yaml(path: Path):
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def _sweep_definition(multirun_dir: Path) -> tuple[list[list[str]] | None, str]:
    """(the expected jobs' overrides, a note when they cannot be known) from multirun.yaml."""
    hydra_cfg = (_read_yaml(multirun_dir / "multirun.yaml") or {}).get("hydra") or {}
    sweeper = hydra_cfg.get("sweeper") or {}
    if "BasicSweeper" not in str(sweeper.get("_target_", "BasicSweeper")):
        return None, f"sweeper {sweeper['_target_']} is not Hydra's basic sweeper"
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    task = list((hydra_cfg.get("overrides") or {}).get("task") or [])
    try:
        return expand_sweep(params + task), ""
    except Exception as err:  # the parser's own errors name the bad override
        return None, f"could not expand the sweep definition: {err}"


def _read_run(path: Path, name: str) -> Run:
    overrides = _read_yaml(path / ".hydra" / "overrides.yaml") or []
    metrics = read_metrics(path) if (path / METRICS_FILE).is_file() else None
    return Run(name=name, path=path, overrides=[str(o) for o in overrides], metrics=metrics)


def _is_run_dir(path: Path) -> bool:
    return (path / METRICS_FILE).is_file() or (path / ".hydra" / "overrides.yaml").is_file()


def _read_multirun(path: Path) -> Sweep:
    expected, note = _sweep_definition(path)
    sweep = Sweep(path=path, expected=expected, note=note)
    numbered = sorted(
        (int(p.name), p) for p in path.iterdir() if p.is_dir() and p.name.isdigit()
    )
    found = {n: _read_run(p, f"{path.name}/{n}") for n, p in numbered}
    count = max([len(expected or [])] + [n + 1 for n in found])
    for n in range(count):
        if n in found:
            sweep.runs.append(found[n])
        elif expected is not None and n < len(expected):
            sweep.runs.append(Run(name=f"{path.name}/{n}", path=None, overrides=expected[n]))
    return sweep


def collect(dirs: list[Path]) -> tuple[list[Run], list[Sweep]]:
    """Every run under ``dirs`` (multirun, run, or parent directories) and every multirun.

    Jobs of a sweep definition without a directory are included as runs with ``path`` None.
    Raises ReportError for a missing directory or one holding no run directory.
    """
    runs: list[Run] = []
    sweeps: list[Sweep] = []

    def visit(path: Path, depth: int) -> None:
        if (path / "multirun.yaml").is_file():
            sweeps.append(_read_multirun(path))
            runs.extend(sweeps[-1].runs)
        elif _is_run_dir(path):
            runs.append(_read_run(path, path.name))
        elif depth < MAX_DEPTH:
            for child in sorted(p for p in path.iterdir() if p.is_dir()):
                visit(child, depth + 1)

    for directory in dirs:
        if not directory.is_dir():
            raise ReportError(f"{directory} is not a directory")
        before = sum(run.path is not None for run in runs)
        visit(directory, 0)
        if sum(run.path is not None for run in runs) == before:
            raise ReportError(f"{directory} holds no run directory (none with metrics.json or "
                              ".hydra/overrides.yaml)")
    return runs, sweeps


def expand_populations(runs: list[Run]) -> list[Run]:
    """``runs`` with every population run replaced by one run per member.

    A member counts as a replicate like a seed: its training loss and accuracy, its epochs to
    the target and the run's step time come from the run's metrics.json, its loss curve from
    member_losses.npz. Limitation: members have no validation or test figures of their own.
    """
    expanded = []
    for run in runs:
        members = (run.metrics or {}).get("members")
        if not members:
            expanded.append(run)
            continue
        for row in members:
            metrics = {key: run.metrics.get(key) for key in ("status", "stop_reason",
                                                             "step_ms_mean", "backward")}
            metrics.update(train_loss=row["train_loss"], train_acc=row["train_acc"],
                           epochs_to_target=row["epochs_to_target"], seed=row["init_seed"])
            expanded.append(Run(name=f"{run.name}#{row['member']}", path=run.path,
                                overrides=run.overrides, metrics=metrics, member=row["member"]))
    return expanded


@functools.lru_cache(maxsize=8)
def _member_curves(path: Path):
    import numpy as np

    with np.load(path) as saved:
        return saved["epoch"].tolist(), saved["loss"]


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key, value


def _is_ignored(key: str) -> bool:
    return key.lstrip("+~") == REPLICATE_KEY or key.lstrip("+~").startswith(IGNORED_KEY_PREFIXES)


def _plain(value) -> str:
    """A config value written as it would be on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _default_value(run: Run, key: str) -> str:
    """The value ``key`` had in a run that did not override it: from its composed config."""
    if run.path is not None:
        node = _read_yaml(run.path / ".hydra" / "config.yaml")
        for part in key.lstrip("+~").split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None and not isinstance(node, (dict, list)):
            return _plain(node)
        hydra_cfg = _read_yaml(run.path / ".hydra" / "hydra.yaml") or {}
        choices = ((hydra_cfg.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
        if key in choices:
            return _plain(choices[key])
    return "(default)"


def row_keys(runs: list[Run], sweeps: list[Sweep]) -> list[str]:
    """Keys that tell rows apart: swept in a sweep definition, or differing between runs.

    The replicate key (seed) and keys about output paths or Hydra itself are never row keys.
    Keys keep the order in which they first appear.
    """
    keys: list[str] = []
    for sweep in sweeps:
        for values in zip(*(sweep.expected or [])):
            key = _split(values[0])[0]
            if len(set(values)) > 1 and key not in keys:
                keys.append(key)
    values_by_key: dict[str, set] = {}
    for run in runs:
        for key, value in map(_split, run.overrides):
            values_by_key.setdefault(key, set()).add(value)
    for key, values in values_by_key.items():
        given_by_all = all(key in dict(map(_split, run.overrides)) for run in runs)
        if (len(values) > 1 or not given_by_all) and key not in keys:
            keys.append(key)
    return [key for key in keys if not _is_ignored(key)]


def combination(run: Run, keys: list[str]) -> tuple[str, ...]:
    """The run's value of each row key."""
    given = dict(map(_split, run.overrides))
    return tuple(given[key] if key in given else _default_value(run, key) for key in keys)


def _label(keys: list[str], combo: tuple[str, ...]) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(keys, combo)) or "all runs"


def epochs_to_target(metrics: dict) -> int | None:
    """Epochs the run took to reach its target loss, None if it did not.

    Runs written before metrics.json had ``epochs_to_target`` count as having reached it when
    their stop reason says so.
    """
    if "epochs_to_target" in metrics:
        return metrics["epochs_to_target"]
    if metrics.get("stop_reason") == "reached target loss":
        return metrics.get("epochs")
    return None


def _number(value) -> float | None:
    """A finite float, or None for missing, null or non-finite values (e.g. "nan")."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _value(metrics: dict, name: str) -> float | None:
    if name == "epochs_to_target":
        return _number(epochs_to_target(metrics))
    return _number(metrics.get(name))


def summarize(runs: list[Run], keys: list[str]) -> list[dict]:
    """One dict per combination of ``keys``: counts, and mean/std/min/max of each statistic.

    Statistics are taken over completed runs only (a diverged run's losses are not finite); the
    std is the sample standard deviation, empty for a single value. ``n_runs`` counts the runs
    with metrics.json, ``n_missing`` the jobs without (not started, running or killed).
    """
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(combination(run, keys), []).append(run)

    rows = []
    for combo, members in groups.items():
        finished = [run.metrics for run in members if run.metrics is not None]
        completed = [m for m in finished if m.get("status") == "completed"]
        row: dict = dict(zip(keys, combo))
        row.update(
            n_runs=len(finished), n_completed=len(completed),
            n_missing=len(members) - len(finished),
            n_reached_target=sum(epochs_to_target(m) is not None for m in completed),
        )
        for name, key, _ in STATISTICS:
            values = [v for v in (_value(m, key) for m in completed) if v is not None]
            row[f"{name}_mean"] = statistics.fmean(values) if values else None
            row[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else None
            row[f"{name}_min"] = min(values) if values else None
            row[f"{name}_max"] = max(values) if values else None
        rows.append(row)
    return rows


def write_summary_csv(rows: list[dict], keys: list[str], path: Path) -> Path:
    """summary.csv: floats at full precision (repr), empty cells for values that do not exist."""
    columns = keys + ["n_runs", "n_completed", "n_missing", "n_reached_target"] + [
        f"{name}_{stat}" for name, _, _ in STATISTICS for stat in ("mean", "std", "min", "max")
    ]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row[c] is None else repr(row[c]) if isinstance(
                row[c], float) else row[c] for c in columns})
    return path


def loss_history(run: Run) -> tuple[list[int], list[float]] | None:
    """(steps, training losses) from history.csv, else from csv/metrics.csv's train/loss;
    a population member's from member_losses.npz (one step per epoch)."""
    if run.path is None:
        return None
    if run.member is not None:
        path = run.path / "member_losses.npz"
        if not path.is_file():
            return None
        epochs, losses = _member_curves(path)
        return epochs, losses[:, run.member].tolist()
    for name, step_column, loss_column in (
        ("history.csv", "step", "loss"), ("csv/metrics.csv", "step", "train/loss"),
    ):
        path = run.path / name
        if not path.is_file():
            continue
        with path.open(newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r.get(loss_column) not in (None, "")]
        return [int(float(r[step_column])) for r in rows], [float(r[loss_column]) for r in rows]
    return None


def parity_rows(run: Run) -> list[dict]:
    """The rows of the run's parity.csv, or none."""
    path = None if run.path is None else run.path / "parity.csv"
    if path is None or not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "all"


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4g}"


def _cell(row: dict, name: str) -> str:
    mean = row[f"{name}_mean"]
    if mean is None:
        return "-"
    if row[f"{name}_std"] is None:  # a single value
        return _fmt(mean)
    return (f"{_fmt(mean)} ± {_fmt(row[f'{name}_std'])} "
            f"({_fmt(row[f'{name}_min'])}–{_fmt(row[f'{name}_max'])})")


def _failure_reason(metrics: dict) -> str:
    failure = (metrics.get("parity") or {}).get("failure")
    if failure:
        return (f"parity: {failure.get('param')} at step {failure.get('step')}, max abs "
                f"{_fmt(_number(failure.get('max_abs')))}, max rel "
                f"{_fmt(_number(failure.get('max_rel')))}")
    return str(metrics.get("reason") or metrics.get("stop_reason") or "")


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _shown_overrides(run: Run) -> str:
    """The run's overrides without output paths, as one markdown code span."""
    shown = [o for o in run.overrides if not _split(o)[0].lstrip("+~").startswith(
        IGNORED_KEY_PREFIXES)]
    return "`" + _md_escape(" ".join(shown)) + "`" if shown else ""


def write_report(dirs: list[Path], out: Path) -> Path:
    """Read the runs under ``dirs`` and write report.md, summary.csv and pictures into ``out``.

    Raises ReportError, before writing anything, when ``dirs`` hold no runs.
    """
    runs, sweeps = collect(dirs)
    keys = row_keys(runs, sweeps)
    runs = expand_populations(runs)
    rows = summarize(runs, keys)
    out.mkdir(parents=True, exist_ok=True)
    write_summary_csv(rows, keys, out / "summary.csv")

    by_label: dict[str, list[Run]] = {}
    for run in runs:
        by_label.setdefault(_label(keys, combination(run, keys)), []).append(run)

    found = list(dict.fromkeys(run.path for run in runs if run.path is not None))
    missing = [run for run in runs if run.metrics is None]
    lines = [
        "# Training report", "",
        f"Read {', '.join(f'`{d}`' for d in dirs)}: {len(found)} run directories, "
        f"{sum(run.metrics is not None and run.member in (None, 0) for run in runs)} with "
        "metrics.json, "
        f"{len(missing)} jobs missing.",
        f"Rows differ in {', '.join(f'`{k}`' for k in keys) or 'nothing'}; "
        f"`{REPLICATE_KEY}` and output paths are not row keys.",
    ]
    n_members = sum(run.member is not None for run in runs)
    if n_members:
        lines.append(f"{n_members} of the runs counted below are members of populations "
                     "(`model.population`), each a replicate like a seed.")
    lines += [f"Sweep `{s.path}`: {s.note}." for s in sweeps if s.note]

    headings = [heading for _, _, heading in STATISTICS]
    header = keys + ["runs", "completed", "reached target"] + headings
    lines += [
        "", "## Summary", "",
        "Mean ± sample std (min–max) over completed runs; full precision in "
        "[summary.csv](summary.csv).", "",
        "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [f"`{row[k]}`" for k in keys] + [
            str(row["n_runs"]), str(row["n_completed"]), str(row["n_reached_target"])
        ] + [_cell(row, name) for name, _, _ in STATISTICS]
        lines.append("| " + " | ".join(cells) + " |")

    histories = {
        label: [h for h in map(loss_history, members) if h is not None]
        for label, members in by_label.items()
    }
    lines += ["", "## Training loss", ""]
    if any(histories.values()):
        plots.loss_curves(histories, out / "loss_curves.png",
                          title="Training loss of every run "
                                f"({sum(map(len, histories.values()))} runs)")
        lines.append("![training loss of every run](loss_curves.png)")
    else:
        lines.append("No run has a loss history (history.csv or csv/metrics.csv).")

    to_target = {
        label: [epochs_to_target(run.metrics) for run in members
                if run.metrics is not None and run.metrics.get("status") == "completed"]
        for label, members in by_label.items()
    }
    lines += ["", "## Epochs to reach the target loss", ""]
    if any(value is not None for values in to_target.values() for value in values):
        plots.convergence_histogram(to_target, out / "convergence.png")
        lines.append("![epochs to reach the target loss](convergence.png)")
    else:
        lines.append("No completed run reached the target loss.")

    parity = {label: [r for run in members if run.member in (None, 0) for r in parity_rows(run)]
              for label, members in by_label.items()}
    if any(parity.values()):
        lines += ["", "## Gradients: manual backward against autograd"]
        for label, rows_of_label in parity.items():
            if not rows_of_label:
                continue
            tolerances = [
                _number((run.metrics.get("parity") or {}).get("tolerance"))
                for run in by_label[label] if run.metrics is not None
            ]
            tolerance = min((t for t in tolerances if t is not None), default=None)
            name = f"gradient_difference_{_slug(label)}.png"
            plots.gradient_difference(rows_of_label, out / name, tolerance=tolerance)
            lines += ["", f"{label}:", "", f"![gradient difference, {label}]({name})"]

    unfinished = [run for run in runs
                  if run.metrics is not None and run.metrics.get("status") != "completed"]
    lines += ["", "## Runs that did not complete", ""]
    if unfinished:
        lines += ["| run | overrides | status | reason |", "|---|---|---|---|"]
        lines += [
            f"| {_md_escape(run.name)} | {_shown_overrides(run)} | {run.state} | "
            f"{_md_escape(_failure_reason(run.metrics))} |"
            for run in unfinished
        ]
    else:
        lines.append("None.")

    lines += ["", "## Missing jobs", ""]
    if missing:
        lines += ["| job | overrides | state |", "|---|---|---|"]
        lines += [f"| {_md_escape(run.name)} | {_shown_overrides(run)} | {run.state} |"
                  for run in missing]
    else:
        lines.append("None: every job found has metrics.json.")

    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    log.info("wrote %s and summary.csv for %d runs in %d rows", path, len(found), len(rows))
    return path


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 for unusable input)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Summarise training runs: report.md, summary.csv and pictures.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR",
                        help="a multirun directory, a run directory, or a directory holding them")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write (default: the DIR when one is given, else ./report)")
    args = parser.parse_args(argv)
    out = args.out or (args.dirs[0] if len(args.dirs) == 1 else Path("report"))
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        print(f"{PROG}: error: --out {out}: {existing} is a file, not a directory",
              file=sys.stderr)
        return 2

    try:
        path = write_report(args.dirs, out)
    except ReportError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
