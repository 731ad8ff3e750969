"""``backprop-bench``: the cost of one training step in each backward mode, side by side.

Everything is measured in one process, one case after another, with ``torch.utils.benchmark``
(the median of blocked runs, each call one real training step, so the weights move on); with
``--rounds`` the cases take turns and each keeps its fastest median:

* per batch size and mode (autograd, manual, manual-fused) on the 2-2-1 sigmoid network with
  mse: the forward (network and loss, as a training step runs it, so the fused mode's includes
  its gradients), the whole step (forward, backward, SGD update), samples per second, and the
  peak tensor memory of one step as torch's profiler records it;
* a Lightning training step on XOR against a plain PyTorch loop doing the same step, with the
  trainer bare and as ``backprop-train`` sets it up (its callbacks and CSV logger).

The tables go to the terminal (rich) and to ``DIR/throughput.md``; ``--smoke`` runs tiny
sizes for a few milliseconds each, so that the test suite runs the whole command.
"""

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from backprop_lab import bench_population

log = logging.getLogger(__name__)

# Mode name -> (MLP backward, MLP manual_impl).
MODES = {
    "autograd": ("autograd", "readable"),
    "manual": ("manual", "readable"),
    "manual-fused": ("manual", "fused"),
}
BATCH_SIZES = (4, 1024, 65536, 1048576)
SMOKE_BATCH_SIZES = (4, 64)
DEFAULT_OUT = Path("experiments") / "throughput"
TABLE_FILE = "throughput.md"
# The optimizer of conf/optimizer/sgd.yaml, which backprop-train uses by default.
SGD_SETTINGS = {"lr": 1.0, "momentum": 0.9}


@dataclass
class StepFigures:
    """One batch size in one mode: median times in seconds, peak memory in bytes."""

    batch: int
    mode: str
    forward_s: float
    step_s: float
    peak_bytes: int

    @property
    def samples_per_s(self) -> float:
        return self.batch / self.step_s


def xor_batch(batch: int, seed: int = 0):
    """``batch`` points of the unit square, (B, 2), with the XOR of their rounded coordinates."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 2, generator=generator)  # (B, 2)
    y = ((x[:, 0] > 0.5) ^ (x[:, 1] > 0.5)).to(x.dtype).unsqueeze(1)  # (B, 1)
    return x, y


def _network(mode: str, seed: int = 0):
    from backprop_lab.network import MLP

    backward, impl = MODES[mode]
    net = MLP(backward=backward, manual_impl=impl, loss="mse")
    net.initialize(seed=seed)
    return net


def _median_seconds(fn, min_run_time: float) -> float:
    """The median time of one call of ``fn``, from blocks of calls run for ``min_run_time``."""
    from torch.utils import benchmark

    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn})
    return timer.blocked_autorange(min_run_time=min_run_time).median


def peak_step_memory(step) -> int:
    """The most bytes of tensors alive at once during one call of ``step``, inputs included.

    Read from the memory timeline of torch's profiler, which sees every tensor the CPU
    allocator hands out (tracemalloc does not: torch allocates outside Python's allocator).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        # Limitation: torch marks export_memory_timeline deprecated in favour of CUDA-only
        # snapshots; it is the one public reader of CPU allocations, so it stays until torch
        # offers another.
        warnings.simplefilter("ignore", FutureWarning)
        path = Path(folder) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())  # one row of per-category bytes per event
    return int(max((sum(row) for row in sizes), default=0))


def measure_mode(batch: int, mode: str, min_run_time: float,
                 with_memory: bool = True) -> StepFigures:
    """Forward and whole-step time and peak memory (0 without ``with_memory``) of ``mode``."""
    import torch

    net = _network(mode)
    x, y = xor_batch(batch)
    optimizer = torch.optim.SGD(net.parameters(), **SGD_SETTINGS)

    def forward():
        return net.forward_and_loss(x, y)

    def step():
        optimizer.zero_grad(set_to_none=True)
        _, loss = net.forward_and_loss(x, y)
        loss.backward()
        optimizer.step()

    step()  # the first step allocates the momentum buffers
    forward_s = _median_seconds(forward, min_run_time)
    step_s = _median_seconds(step, min_run_time)
    return StepFigures(batch, mode, forward_s, step_s,
                       peak_step_memory(step) if with_memory else 0)


def measure_modes(batch_sizes, min_run_time: float, rounds: int = 1) -> list[StepFigures]:
    """Every mode at every batch size, the modes of one size measured back to back.

    With several ``rounds`` the modes take turns once per round and each keeps its fastest
    median: on a machine shared with other work, the least disturbed reading.
    """
    figures = []
    for batch in batch_sizes:
        best: dict[str, StepFigures] = {}
        for _ in range(rounds):
            for mode in MODES:
                f = measure_mode(batch, mode, min_run_time, with_memory=mode not in best)
                if mode in best:
                    kept = best[mode]
                    f = StepFigures(batch, mode, min(f.forward_s, kept.forward_s),
                                    min(f.step_s, kept.step_s), kept.peak_bytes)
                best[mode] = f
        for mode in MODES:
            f = best[mode]
            figures.append(f)
            log.info("batch %d, %s: step %.1f us, forward %.1f us, peak %.1f KiB", batch, mode,
                     1e6 * f.step_s, 1e6 * f.forward_s, f.peak_bytes / 1024)
    return figures


@dataclass
class LoopFigures:
    """One backward mode on XOR: median seconds per training step in each kind of loop."""

    mode: str
    plain_s: float
    lightning_bare_s: float
    lightning_run_s: float


def _plain_loop_step_seconds(mode: str, min_run_time: float) -> float:
    """A hand-written PyTorch loop's training step on XOR's four rows: what Lightning runs."""
    import torch

    from backprop_lab.data import XOR_INPUTS, XOR_TARGETS
    from backprop_lab.optimizers import build_optimizer

    net = _network(mode)
    optimizer = build_optimizer(net.parameters(), "sgd", **SGD_SETTINGS)
    x, y = torch.tensor(XOR_INPUTS), torch.tensor(XOR_TARGETS)

    def step():
        optimizer.zero_grad(set_to_none=True)
        _, loss = net.forward_and_loss(x, y)
        loss.backward()
        optimizer.step()

    step()
    return _median_seconds(step, min_run_time)


def _step_clock():
    """A Lightning callback that notes the time each training step starts."""
    from lightning.pytorch.callbacks import Callback

    class StepClock(Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.starts.append(time.perf_counter())

    return StepClock()


def _median_step_gap(starts: list[float], warm_up: int) -> float:
    """The median time from one step's start to the next's: the whole loop's cost of a step."""
    import statistics

    gaps = [b - a for a, b in zip(starts[warm_up:], starts[warm_up + 1:])]
    return statistics.median(gaps)


def _lightning_bare_step_seconds(mode: str, steps: int) -> float:
    """A Lightning step on XOR with no callbacks, logger, checkpoint or progress bar."""
    import lightning as L

    from backprop_lab.data import XORDataModule
    from backprop_lab.module import BackpropModule

    backward, impl = MODES[mode]
    model = BackpropModule(backward=backward, manual_impl=impl, init={"seed": 0},
                           optimizer={"name": "sgd", **SGD_SETTINGS})
    clock = _step_clock()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=steps, logger=False,
                        callbacks=[clock], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(model, datamodule=XORDataModule())
    return _median_step_gap(clock.starts, warm_up=min(10, steps // 4))


def _lightning_run_step_seconds(mode: str, steps: int) -> float:
    """A Lightning step on XOR as ``backprop-train`` sets it up: its callbacks and CSV logger."""
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    from backprop_lab.run import build

    backward, impl = MODES[mode]
    with tempfile.TemporaryDirectory() as folder:
        with initialize_config_module("backprop_lab.conf", version_base="1.3"):
            cfg = compose("train", overrides=[
                f"paths.output_dir={folder}", f"model.backward={backward}",
                f"model.manual_impl={impl}", f"trainer.max_epochs={steps}", "target_loss=null",
                "plots=false", "evaluate=false",
            ])
        datamodule, model = build(cfg)
        clock = _step_clock()
        callbacks = [instantiate(c) for c in cfg.callbacks.values()] + [clock]
        loggers = [instantiate(c) for c in cfg.logger.values()]
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
        trainer.fit(model, datamodule=datamodule)
    return _median_step_gap(clock.starts, warm_up=min(10, steps // 4))


def measure_loops(steps: int, min_run_time: float, rounds: int = 1) -> list[LoopFigures]:
    """Plain loop against Lightning (bare and as backprop-train runs it), per backward mode.

    As in ``measure_modes``, the modes take turns ``rounds`` times and keep their fastest.
    """
    import lightning  # noqa: F401  (imported first: it attaches log handlers on import)

    from backprop_lab.run import route_lightning_logs

    # The warnings and log lines backprop-train silences too; the tables are the output here.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\).*")
    route_lightning_logs()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    best: dict[str, LoopFigures] = {}
    for _ in range(rounds):
        for mode in MODES:
            f = LoopFigures(mode, _plain_loop_step_seconds(mode, min_run_time),
                            _lightning_bare_step_seconds(mode, steps),
                            _lightning_run_step_seconds(mode, steps))
            if mode in best:
                kept = best[mode]
                f = LoopFigures(mode, min(f.plain_s, kept.plain_s),
                                min(f.lightning_bare_s, kept.lightning_bare_s),
                                min(f.lightning_run_s, kept.lightning_run_s))
            best[mode] = f
    for f in best.values():
        log.info("XOR, %s: plain %.1f us, Lightning bare %.1f us, as run %.1f us", f.mode,
                 1e6 * f.plain_s, 1e6 * f.lightning_bare_s, 1e6 * f.lightning_run_s)
    return list(best.values())


def _us(seconds: float) -> str:
    return f"{1e6 * seconds:,.1f}"


def _ratio(value: float) -> str:
    return f"{value:.2f}x"


# "speed-up" is autograd's step time over this mode's; "memory" this mode's peak over autograd's.
STEP_COLUMNS = ("batch", "mode", "forward us", "step us", "samples/s", "peak KiB",
                "speed-up vs autograd", "memory vs autograd")
LOOP_COLUMNS = ("mode", "plain loop us", "Lightning bare us", "Lightning as run us",
                "bare / plain", "as run / plain")


def step_rows(figures: list[StepFigures]) -> list[list[str]]:
    """The batch-size table's rows; ratios are against autograd at the same batch size."""
    autograd = {f.batch: f for f in figures if f.mode == "autograd"}
    rows = []
    for f in figures:
        reference = autograd[f.batch]
        rows.append([f"{f.batch:,}", f.mode, _us(f.forward_s), _us(f.step_s),
                     f"{f.samples_per_s:,.0f}", f"{f.peak_bytes / 1024:,.2f}",
                     _ratio(reference.step_s / f.step_s),
                     _ratio(f.peak_bytes / reference.peak_bytes)
                     if reference.peak_bytes else "-"])
    return rows


def loop_rows(figures: list[LoopFigures]) -> list[list[str]]:
    """The Lightning table's rows; ratios are Lightning's step time over the plain loop's."""
    return [[f.mode, _us(f.plain_s), _us(f.lightning_bare_s), _us(f.lightning_run_s),
             _ratio(f.lightning_bare_s / f.plain_s), _ratio(f.lightning_run_s / f.plain_s)]
            for f in figures]


def machine() -> dict:
    """The CPU model (as lscpu names it), its cores, torch's threads and versions."""
    import torch

    model = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


def markdown_table(columns, rows) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_markdown(out: Path, command: str, info: dict, steps: list[list[str]],
                   loops: list[list[str]], extra: list[tuple] = ()) -> Path:
    """``out/throughput.md``: the command, the machine and the tables; ``extra`` holds more
    sections as (title, explanation, columns, rows)."""
    out.mkdir(parents=True, exist_ok=True)
    text = "\n\n".join([
        "# Training-step throughput",
        f"Command: `{command}`",
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} "
        f"({info['torch_threads']} threads), Python {info['python']}.",
        "## One step of the 2-2-1 sigmoid network with mse, by batch size",
        "Fastest of the rounds' medians. forward: network and loss (the fused mode's also "
        "derives the gradients); step: zero_grad, forward, backward and an SGD update (lr 1, "
        "momentum 0.9); peak: the "
        "most tensor memory alive during one step, inputs included. speed-up: autograd's "
        "step time over this mode's; memory: this mode's peak over autograd's.",
        markdown_table(STEP_COLUMNS, steps),
        "## A training step on XOR: Lightning against a plain PyTorch loop",
        "Fastest of the rounds' median time from one step's start to the next's. bare: a "
        "Trainer with no callbacks, logger or progress bar; as run: the callbacks and CSV "
        "logger of backprop-train.",
        markdown_table(LOOP_COLUMNS, loops),
        *[part for title, text, columns, rows in extra
          for part in (f"## {title}", text, markdown_table(columns, rows))],
    ]) + "\n"
    path = out / TABLE_FILE
    path.write_text(text)
    return path


def print_tables(steps: list[list[str]], loops: list[list[str]], extra: list[tuple] = ()
                 ) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    tables = [("one training step by batch size", STEP_COLUMNS, steps),
              ("Lightning vs a plain loop on XOR", LOOP_COLUMNS, loops),
              *[(title, columns, rows) for title, _, columns, rows in extra]]
    for title, columns, rows in tables:
        table = Table(title=title)
        for i, column in enumerate(columns):
            table.add_column(column, justify="left" if i < 2 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: measure, print the tables, write DIR/throughput.md."""
    parser = argparse.ArgumentParser(
        prog="backprop-bench",
        description="Time one training step per batch size in each backward mode (autograd, "
                    "manual, manual-fused), and Lightning against a plain loop on XOR.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help=f"where throughput.md goes (default: {DEFAULT_OUT})")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, metavar="B",
                        help="batch sizes to time (default: 4 1024 65536 1048576)")
    parser.add_argument("--min-run-time", type=float, default=None, metavar="SECONDS",
                        help="seconds each timing runs for (default: 0.5; --smoke: 0.01)")
    parser.add_argument("--steps", type=int, default=None,
                        help="Lightning steps per loop timing (default: 400; --smoke: 8)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="times each case is measured, keeping the fastest (default: 3; "
                             "--smoke: 1)")
    parser.add_argument("--populations", type=int, nargs="+", default=None, metavar="K",
                        help="population sizes to time (default: 1 10 100 1000; --smoke: 1 4)")
    parser.add_argument("--study-members", type=int, default=None, metavar="K",
                        help="seeds per mode in the timed XOR study, 0 to skip it (default: "
                             "1000; --smoke: 3, for 5 epochs)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes and short timings, to check that the command works")
    args = parser.parse_args(argv)
    batch_sizes = args.batch_sizes or (SMOKE_BATCH_SIZES if args.smoke else BATCH_SIZES)
    min_run_time = args.min_run_time or (0.01 if args.smoke else 0.5)
    steps = args.steps or (8 if args.smoke else 400)
    rounds = args.rounds or (1 if args.smoke else 3)
    populations = args.populations or (bench_population.SMOKE_POPULATIONS if args.smoke
                                       else bench_population.POPULATIONS)
    study_members = args.study_members if args.study_members is not None else (
        3 if args.smoke else bench_population.STUDY_POPULATION)
    if any(b < 1 for b in batch_sizes) or min_run_time <= 0 or steps < 4 or rounds < 1 \
            or any(k < 1 for k in populations) or study_members < 0:
        parser.error("batch sizes and populations must be at least 1, --min-run-time above 0, "
                     "--steps at least 4, --rounds at least 1 and --study-members at least 0")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    info = machine()
    steps_table = step_rows(measure_modes(batch_sizes, min_run_time, rounds))
    loops_table = loop_rows(measure_loops(steps, min_run_time, rounds))
    extra = [("Populations: K networks in one training step", bench_population.SCALING_TEXT,
              bench_population.SCALING_COLUMNS, bench_population.population_rows(
                  bench_population.measure_population(populations, min_run_time, rounds)))]
    if study_members:
        row = bench_population.time_study(
            study_members, ("trainer.max_epochs=5",) if args.smoke else ())
        extra.append(("The many-seed study, end to end", bench_population.STUDY_TEXT,
                      bench_population.STUDY_COLUMNS, [row]))
    command = " ".join(["backprop-bench", *(sys.argv[1:] if argv is None else argv)])
    print_tables(steps_table, loops_table, extra)
    path = write_markdown(args.out, command, info, steps_table, loops_table, extra)
    print(f"table: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
