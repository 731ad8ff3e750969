"""The run's ``metrics.json``: written whole or not at all."""

import json
import math
import os
from pathlib import Path

METRICS_FILE = "metrics.json"


def _plain(value):
    """JSON-ready copy of ``value``: tensors become numbers, NaN and infinities become strings."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_metrics(run_dir: str | os.PathLike, metrics: dict) -> Path:
    """Write ``metrics`` to run_dir/metrics.json through a temporary file and an atomic rename."""
    path = Path(run_dir) / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{METRICS_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_plain(metrics), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def read_metrics(run_dir: str | os.PathLike) -> dict:
    """The metrics.json of one run directory."""
    return json.loads((Path(run_dir) / METRICS_FILE).read_text())
