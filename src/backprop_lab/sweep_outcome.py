"""A Hydra callback that ends a multirun with a non-zero exit when any of its jobs failed."""

import json
import logging
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from backprop_lab.metrics_file import METRICS_FILE

log = logging.getLogger(__name__)


def failed_jobs(sweep_dir: Path) -> list[tuple[Path, str]]:
    """(job directory, reason) of every job under ``sweep_dir`` whose metrics.json says failed."""
    failures = []
    for metrics_file in sorted(sweep_dir.glob(f"*/{METRICS_FILE}")):
        try:
            metrics = json.loads(metrics_file.read_text())
        except (OSError, ValueError) as err:
            failures.append((metrics_file.parent, f"unreadable {METRICS_FILE}: {err}"))
            continue
        if metrics.get("status") == "failed":
            failures.append((metrics_file.parent, str(metrics.get("reason", "no reason given"))))
    return failures


class SweepOutcome(Callback):
    """After the last job of a sweep: one line per failed job, then exit status 1 if any failed.

    Jobs catch their own errors (so that one failure does not end the sweep) and record them in
    their metrics.json; this is where the sweep as a whole reports them.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()]
        failures = failed_jobs(sweep_dir)
        if not failures:
            log.info("all %d jobs of %s finished", len(jobs), sweep_dir)
            return
        for job_dir, reason in failures:
            print(f"backprop-train: job {job_dir} failed: {reason}", file=sys.stderr)
        print(f"backprop-train: {len(failures)} of {len(jobs)} jobs failed", file=sys.stderr)
        sys.exit(1)
