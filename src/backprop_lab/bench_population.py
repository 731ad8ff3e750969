"""The population part of ``backprop-bench``: member-steps per second, and a many-seed study.

* Scaling: one training step (forward, backward, SGD update) of a population of K 2-2-1
  networks on XOR, per backward mode, as member-steps per second (K / step time).
* The study end to end: ``backprop-train -m experiment=xor model.backward=manual,autograd
  model.population=K plots=false`` and ``backprop-report`` on its sweep, as a user runs them,
  timed from the command line (process start-up included).
"""

import logging
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

POPULATIONS = (1, 10, 100, 1000)
SMOKE_POPULATIONS = (1, 4)
STUDY_POPULATION = 1000
SCALING_MODES = ("autograd", "manual")
SCALING_COLUMNS = ("members", "mode", "step us", "member-steps/s", "vs 1 member")
STUDY_COLUMNS = ("study", "wall s", "members converged (manual / autograd)")
SCALING_TEXT = ("Fastest of the rounds' medians of one step (zero_grad, forward, backward, SGD "
                "update) of K independent 2-2-1 networks on XOR's 4 rows, a plain PyTorch loop. "
                "vs 1 member: member-steps per second over those of a single network.")
STUDY_TEXT = ("backprop-train -m experiment=xor model.backward=manual,autograd "
              "model.population=K plots=false, then backprop-report on its sweep, timed as two "
              "commands from process start to end.")


@dataclass
class PopulationFigures:
    members: int
    mode: str
    step_s: float

    @property
    def member_steps_per_s(self) -> float:
        return self.members / self.step_s


def _population_step(members: int, mode: str):
    """A closure doing one SGD training step of ``members`` XOR networks in ``mode``."""
    import torch

    from backprop_lab.data import XOR_INPUTS, XOR_TARGETS
    from backprop_lab.network import MLP
    from backprop_lab.optimizers import build_optimizer

    net = MLP(backward=mode, population=members)
    net.initialize(seed=0)
    optimizer = build_optimizer(net.parameters(), "sgd", lr=1.0, momentum=0.9)
    x, y = torch.tensor(XOR_INPUTS), torch.tensor(XOR_TARGETS)  # (4, 2), (4, 1)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        net.loss(net(x), y).backward()
        optimizer.step()

    return step


def measure_population(populations, min_run_time: float,
                       rounds: int = 1) -> list[PopulationFigures]:
    """Fastest of ``rounds`` median step times for each population size and mode."""
    from backprop_lab.bench import _median_seconds

    best: dict[tuple[int, str], float] = {}
    for _ in range(rounds):
        for members in populations:
            for mode in SCALING_MODES:
                seconds = _median_seconds(_population_step(members, mode), min_run_time)
                key = (members, mode)
                best[key] = min(seconds, best.get(key, seconds))
    figures = [PopulationFigures(k, mode, s) for (k, mode), s in best.items()]
    for f in figures:
        log.info("population %d, %s: %.1f us per step, %.0f member-steps/s", f.members,
                 f.mode, 1e6 * f.step_s, f.member_steps_per_s)
    return figures


def population_rows(figures: list[PopulationFigures]) -> list[list[str]]:
    """Rows of the scaling table; "vs 1 member" is member-steps/s over a single network's."""
    single = {f.mode: f for f in figures if f.members == 1}
    rows = []
    for f in figures:
        reference = single.get(f.mode)
        gain = "-" if reference is None else \
            f"{f.member_steps_per_s / reference.member_steps_per_s:,.1f}x"
        rows.append([f"{f.members:,}", f.mode, f"{1e6 * f.step_s:,.1f}",
                     f"{f.member_steps_per_s:,.0f}", gain])
    return rows


def _converged(sweep: Path) -> list[str]:
    from backprop_lab.metrics_file import read_metrics

    shares = []
    for job in ("0", "1"):
        metrics = read_metrics(sweep / job)
        shares.append(f"{metrics.get('fraction_converged', 0):.1%}")
    return shares


def time_study(members: int, extra: tuple[str, ...] = ()) -> list[str]:
    """Run the many-seed study as a user would and time it; one row of the study table."""
    with tempfile.TemporaryDirectory() as folder:
        sweep = Path(folder) / "sweep"
        train = [sys.executable, "-m", "backprop_lab.train", "-m", "experiment=xor",
                 "model.backward=manual,autograd", f"model.population={members}",
                 "plots=false", f"paths.log_dir={folder}", f"hydra.sweep.dir={sweep}", *extra]
        report = [sys.executable, "-m", "backprop_lab.report", str(sweep)]
        start = time.perf_counter()
        for command in (train, report):
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        manual, autograd = _converged(sweep)
    name = f"{members:,} XOR seeds x 2 modes, trained and reported"
    log.info("%s: %.1f s", name, wall)
    return [name, f"{wall:.1f}", f"{manual} / {autograd}"]
