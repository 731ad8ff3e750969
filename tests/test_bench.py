"""``backprop-bench --smoke``: the whole command on tiny sizes; its tables, never its timings."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

from backprop_lab import bench

SCRIPT = Path(sys.executable).with_name("backprop-bench")


def tables(markdown: str) -> list[list[list[str]]]:
    """Each markdown table of ``markdown`` as rows of cells, header row first."""
    found, current = [], None
    for line in markdown.splitlines():
        if line.startswith("|"):
            if current is None:
                current = []
                found.append(current)
            if not line.startswith("|---"):
                current.append([cell.strip() for cell in line.strip("|").split("|")])
        else:
            current = None
    return found


def number(cell: str) -> float:
    return float(cell.replace(",", "").removesuffix("x"))


@pytest.fixture(scope="module")
def smoke_table(tmp_path_factory):
    out = tmp_path_factory.mktemp("throughput")
    assert bench.main(["--smoke", "--out", str(out)]) == 0
    return (out / "throughput.md").read_text()


def test_smoke_run_writes_every_table_with_every_mode_and_size(smoke_table):
    steps, loops, populations, study = tables(smoke_table)
    assert steps[0] == list(bench.STEP_COLUMNS)
    assert [(row[0], row[1]) for row in steps[1:]] == [
        (f"{batch:,}", mode) for batch in bench.SMOKE_BATCH_SIZES for mode in bench.MODES]
    assert loops[0] == list(bench.LOOP_COLUMNS)
    assert [row[0] for row in loops[1:]] == list(bench.MODES)
    assert [(row[0], row[1]) for row in populations[1:]] == [
        (f"{k}", mode) for k in (1, 4) for mode in ("autograd", "manual")]
    assert study[1][0].startswith("3 XOR seeds x 2 modes") and number(study[1][1]) > 0
    # Five epochs are far too few for XOR's target loss: no member can have converged.
    assert study[1][2] == "0.0% / 0.0%"
    assert "Command: `backprop-bench --smoke --out " in smoke_table
    assert "cores, torch 2." in smoke_table


def test_smoke_run_values_are_finite_and_positive(smoke_table):
    steps, loops, populations, _ = tables(smoke_table)
    # Step rows start with batch and mode, loop rows with the mode; numbers follow.
    numeric = [row[2:] for row in steps[1:] + populations[1:]] + [row[1:] for row in loops[1:]]
    for cells in numeric:
        values = [number(cell) for cell in cells]
        assert all(math.isfinite(v) and v > 0 for v in values), cells
    autograd_rows = [row for row in steps[1:] if row[1] == "autograd"]
    # Ratios against autograd are 1 on autograd's own rows, whatever the timings.
    assert {row[6] for row in autograd_rows} == {row[7] for row in autograd_rows} == {"1.00x"}


def test_samples_per_second_is_the_batch_over_the_step_time(smoke_table):
    steps = tables(smoke_table)[0]
    for row in steps[1:]:
        batch, step_us, samples = number(row[0]), number(row[3]), number(row[4])
        assert samples == pytest.approx(batch / (step_us * 1e-6), rel=1e-2, abs=1)


def test_peak_memory_counts_the_batch_of_a_larger_step():
    small = bench.measure_mode(4, "autograd", min_run_time=0.001).peak_bytes
    large = bench.measure_mode(4096, "autograd", min_run_time=0.001).peak_bytes
    # x (B, 2) alone takes 4096 * 2 * 4 bytes of float32.
    assert large - small >= 4096 * 2 * 4


def test_command_line_rejects_a_batch_size_below_one():
    out = subprocess.run([str(SCRIPT), "--smoke", "--batch-sizes", "0"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert "batch sizes and populations must be at least 1" in out.stderr
