"""The population part of backprop-bench, in smoke sizes: structure and sane values only."""

import math

from backprop_lab.bench_population import measure_population, population_rows


def test_population_scaling_rows_cover_every_size_and_mode_with_positive_rates():
    figures = measure_population((1, 3), min_run_time=0.01)
    assert sorted((f.members, f.mode) for f in figures) == [
        (1, "autograd"), (1, "manual"), (3, "autograd"), (3, "manual")]
    assert all(math.isfinite(f.step_s) and f.step_s > 0 for f in figures)
    rows = population_rows(figures)
    assert [row[:2] for row in rows][:2] == [["1", "autograd"], ["1", "manual"]]
    assert all(row[4] == "1.0x" for row in rows if row[0] == "1")

