"""Pictures of runs, for people: loss curves, what the network computes, gradient differences.

Every function draws one PNG of a fixed pixel size (stated in its docstring) and returns
its path. Figures are built on matplotlib's Agg canvas directly, without pyplot, so drawing
never opens a window nor changes the backend of the calling process. torch is imported only
by the pictures that run the network, so a report without them starts quickly. The maps of
the input plane follow TensorFlow Playground: orange for output 0, blue for output 1.
"""

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

log = logging.getLogger(__name__)

DPI = 100
WIDE_INCHES = (8.0, 5.0)  # loss curves, gradient difference, convergence: 800 x 500 px
MAP_INCHES = (6.0, 5.0)  # decision boundary: 600 x 500 px
TILE_INCHES = (3.0, 3.2)  # one hidden unit: 300 x 320 px per unit

ORANGE, BLUE = "#f59322", "#0877bd"
PLANE_CMAP = LinearSegmentedColormap.from_list("playground", [ORANGE, "#f7f7f7", BLUE])
MARGIN = 0.5  # of the input plane drawn around the data, in input units
GRID_POINTS = 121  # per axis of the input plane
LINE_STYLES = ("-", "--", ":", "-.")


def _figure(inches: tuple[float, float]) -> Figure:
    fig = Figure(figsize=inches, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    # No bbox_inches="tight": it would change the pixel size promised in the docstrings.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    log.info("wrote %s", path)
    return path


def _network(weights: Mapping, model: Mapping | None = None):
    """An MLP holding ``weights`` (as in metrics.json), its shape read from them.

    ``model`` holds the network's other settings as the run's hyper-parameters do (activation,
    output_activation, loss); without it the network is sigmoid throughout.
    """
    # Imported here: torch takes seconds to import and the report's pictures do not need it.
    from backprop_lab.network import MLP, weight_names

    n_hidden_layers = sum(1 for name in weights if name.startswith("w_hidden"))
    names = weight_names(n_hidden_layers)
    matrices = [weights[name] for name in names[0::2]]
    settings = {k: v for k, v in (model or {}).items()
                if k in ("activation", "output_activation", "loss")}
    net = MLP(
        n_inputs=len(matrices[0][0]), hidden=[len(m) for m in matrices[:-1]],
        n_outputs=len(matrices[-1]), bias=[weights.get(b) is not None for b in names[1::2]],
        backward="autograd", **settings,
    )
    # metrics.json writes non-finite numbers as strings ("nan"); numpy reads them back.
    net.initialize(weights={
        k: np.asarray(v, dtype=float).tolist() for k, v in weights.items() if v is not None
    })
    return net.eval()


def _plane(x: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Grid coordinates, each (G, G), over the data's box plus MARGIN; [0, 1]^2 without data."""
    if x is None or len(x) == 0:
        low, high = np.zeros(2), np.ones(2)
    else:
        low, high = x.min(axis=0), x.max(axis=0)
    low, high = low - MARGIN, high + MARGIN
    return np.meshgrid(
        np.linspace(low[0], high[0], GRID_POINTS), np.linspace(low[1], high[1], GRID_POINTS)
    )


def _grid_inputs(gx: np.ndarray, gy: np.ndarray):
    import torch

    points = np.stack([gx.ravel(), gy.ravel()], axis=1)  # (G*G, 2)
    return torch.tensor(points, dtype=torch.float32)


def _legend_below(fig: Figure, ax) -> None:
    """The legend under the axes, where it cannot hide a line however the data fall."""
    handles, labels = ax.get_legend_handles_labels()
    # As many columns as labels of this length fit across the figure at font size 9.
    ncols = max(1, min(len(labels), 100 // (max(map(len, labels)) + 8)))
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize=9,
               frameon=False)


def _readable_log_axis(ax) -> None:
    """Plain numbers on a log y axis spanning under a decade, where matplotlib's defaults
    print every minor tick in scientific notation."""
    low, high = ax.get_ylim()
    if high < 10 * low:
        plain = FuncFormatter(lambda value, _: f"{value:.4g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)


def _finish_log_plot(fig: Figure, ax, ylabel: str, title: str, drawn: bool,
                     empty_text: str) -> None:
    """Log-scale y against step, grid and a legend below; ``empty_text`` when nothing drawn."""
    ax.set_yscale("log")
    _readable_log_axis(ax)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    if drawn:
        _legend_below(fig, ax)
    else:
        ax.text(0.5, 0.5, empty_text, ha="center", va="center", transform=ax.transAxes)


def _scatter_data(ax, x: np.ndarray | None, y: np.ndarray | None, legend: bool) -> None:
    if x is None:
        return
    if y is None:
        ax.scatter(x[:, 0], x[:, 1], s=60, c="black", edgecolors="white", zorder=3)
        return
    labels = np.asarray(y).reshape(len(x), -1)[:, 0] >= 0.5
    for is_one, colour in ((False, ORANGE), (True, BLUE)):
        chosen = labels == is_one
        ax.scatter(
            x[chosen, 0], x[chosen, 1], s=80, c=colour, edgecolors="black", linewidths=1.2,
            zorder=3, label=f"class {int(is_one)}",
        )
    if legend:
        ax.legend(loc="upper right", fontsize=8, framealpha=0.9)


def loss_curves(
    curves: Mapping[str, Sequence[tuple[Sequence[float], Sequence[float]]]],
    path: str | os.PathLike,
    title: str = "",
) -> Path:
    """Training loss against step, one colour per label, log-scale y; 800 x 500 px (8 x 5 in).

    ``curves`` maps a label to a list of (steps, losses) series, one per run. A label with one
    series is drawn as a line; with several, each is drawn faintly and their median bold. The
    median is taken on the union of the steps; a series that ended earlier (for instance at
    the target loss) counts with its last loss. Non-finite and non-positive losses are left out.
    """
    fig = _figure(WIDE_INCHES)
    ax = fig.add_subplot()
    drawn = False
    for i, (label, series) in enumerate(curves.items()):
        # Line styles differ too: identical runs (manual vs autograd) must not hide each other.
        colour, style = f"C{i % 10}", LINE_STYLES[i % len(LINE_STYLES)]
        clean = []
        for steps, losses in series:
            steps, losses = np.asarray(steps, float), np.asarray(losses, float)
            keep = np.isfinite(losses) & (losses > 0)
            if keep.any():
                clean.append((steps[keep], losses[keep]))
        if not clean:
            continue
        drawn = True
        if len(clean) == 1:
            ax.plot(*clean[0], color=colour, linestyle=style, linewidth=2, label=label)
            continue
        for steps, losses in clean:
            ax.plot(steps, losses, color=colour, linewidth=0.8, alpha=0.25)
        grid = np.unique(np.concatenate([steps for steps, _ in clean]))
        # np.interp holds the last value past a series' end, which is the "counts with its
        # last loss" rule of the docstring.
        stacked = np.stack([np.interp(grid, steps, losses) for steps, losses in clean])
        ax.plot(
            grid, np.median(stacked, axis=0), color=colour, linestyle=style, linewidth=2.5,
            label=f"{label} (median of {len(clean)})",
        )
    _finish_log_plot(fig, ax, "training loss", title or "Training loss", drawn,
                     "no loss history")
    return _save(fig, path)


def decision_boundary(
    weights: Mapping,
    x: np.ndarray,
    y: np.ndarray,
    path: str | os.PathLike,
    title: str = "",
    model: Mapping | None = None,
) -> Path:
    """The network's output y_hat over the input plane; 600 x 500 px (6 x 5 in).

    ``weights`` is metrics.json's dict (w_hidden, b_hidden, w_out, b_out; biases may be None);
    ``x`` is (N, 2) and ``y`` (N, 1). The map covers the data plus MARGIN on every side, with
    the y_hat = 0.5 contour in black and the points coloured by class. With several outputs
    only the first is drawn; under the bce loss y_hat is the probability sigmoid(logit).
    ``model`` is as for ``_network``.
    """
    import torch

    x = np.asarray(x, dtype=float)
    net = _network(weights, model)
    gx, gy = _plane(x)
    with torch.no_grad():
        y_hat = net.probability(net(_grid_inputs(gx, gy)))[:, 0]
        y_hat = y_hat.reshape(gx.shape).numpy()  # (G, G)

    fig = _figure(MAP_INCHES)
    ax = fig.add_subplot()
    filled = ax.contourf(gx, gy, y_hat, levels=np.linspace(0, 1, 21), cmap=PLANE_CMAP)
    if not np.isfinite(y_hat).any():
        ax.text(0.5, 0.5, "y_hat is not finite (diverged weights?)", ha="center",
                va="center", transform=ax.transAxes)
    elif np.nanmin(y_hat) < 0.5 < np.nanmax(y_hat):
        ax.contour(gx, gy, y_hat, levels=[0.5], colors="black", linewidths=1.5)
    _scatter_data(ax, x, y, legend=True)
    fig.colorbar(filled, ax=ax, label="y_hat", ticks=np.linspace(0, 1, 6))
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.set_aspect("equal")
    ax.set_title(title or "Decision boundary (black: y_hat = 0.5)")
    return _save(fig, path)


def _signed(value: float, name: str) -> str:
    return f"{'-' if value < 0 else '+'} {abs(value):.2f}{name}"


def hidden_activations(
    weights: Mapping,
    path: str | os.PathLike,
    x: np.ndarray | None = None,
    y: np.ndarray | None = None,
    model: Mapping | None = None,
) -> Path:
    """One tile per unit of the first hidden layer: its activation h_j over the input plane.

    Each tile is 300 x 320 px (3 x 3.2 in), side by side, so the picture is 300 * H px wide and
    320 px high for H hidden units. A tile's title gives the unit's pre-activation and the
    weight that carries it to the (first) output. Colours run from orange (h = 0) to blue
    (h = 1) on every tile; the data points are drawn when ``x`` (N, 2) is given, by class
    when ``y`` is given too.
    """
    import torch

    from backprop_lab.manual_backward import ACTIVATIONS

    x = None if x is None else np.asarray(x, dtype=float)
    net = _network(weights, model)
    first, second = net.layers[0], net.layers[1]
    activation = net.activations[0]
    gx, gy = _plane(x)
    with torch.no_grad():
        h = ACTIVATIONS[activation][0](first(_grid_inputs(gx, gy))).numpy()  # (G*G, H)
    w_hidden = first.weight.detach().numpy()  # (H, I)
    b_hidden = None if first.bias is None else first.bias.detach().numpy()
    w_next = second.weight.detach().numpy()  # (n_2, H)
    n_hidden = h.shape[1]
    symbol = {"sigmoid": "σ", "tanh": "tanh", "relu": "relu", "identity": ""}[activation]
    low, high = (0.0, 1.0) if activation == "sigmoid" else (float(h.min()), float(h.max()))
    if high <= low:
        high = low + 1.0

    fig = _figure((TILE_INCHES[0] * n_hidden, TILE_INCHES[1]))
    axes = fig.subplots(1, n_hidden, squeeze=False)[0]
    for j, ax in enumerate(axes):
        ax.contourf(
            gx, gy, h[:, j].reshape(gx.shape), levels=np.linspace(low, high, 21),
            cmap=PLANE_CMAP,
        )
        _scatter_data(ax, x, y, legend=False)
        terms = " ".join(_signed(w, f" x{i + 1}") for i, w in enumerate(w_hidden[j]))
        if b_hidden is not None:
            terms += " " + _signed(float(b_hidden[j]), "")
        ax.set_title(
            f"h{j + 1} = {symbol}({terms.lstrip('+ ')})\nweight to next layer: "
            f"{w_next[0, j]:.2f}",
            fontsize=8,
        )
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
        ax.set_xlabel("x1", fontsize=8)
        if j == 0:
            ax.set_ylabel("x2", fontsize=8)
    return _save(fig, path)


def gradient_difference(
    rows: Sequence[Mapping],
    path: str | os.PathLike,
    tolerance: float | None = None,
) -> Path:
    """Largest |manual - autograd| gradient entry per parameter against step; 800 x 500 px.

    ``rows`` are parity.csv rows as dicts (step, param, max_abs, max_rel; strings or numbers).
    Rows of several runs may be passed together: each (param, step) then shows the largest
    difference among them. The y axis is logarithmic; exact zeros are drawn, as hollow
    markers, at a floor a decade below the smallest nonzero difference (1e-16 if all are
    zero). ``tolerance``, when given, is drawn as a dashed line.
    """
    worst: dict[str, dict[int, float]] = {}
    for row in rows:
        by_step = worst.setdefault(str(row["param"]), {})
        step, value = int(row["step"]), float(row["max_abs"])
        by_step[step] = max(value, by_step.get(step, -math.inf))

    values = np.array([v for by_step in worst.values() for v in by_step.values()], float)
    positive = values[np.isfinite(values) & (values > 0)]
    floor = positive.min() / 10 if positive.size else 1e-16

    fig = _figure(WIDE_INCHES)
    ax = fig.add_subplot()
    for i, (param, by_step) in enumerate(sorted(worst.items())):
        steps = np.array(sorted(by_step))
        diffs = np.array([by_step[s] for s in steps])
        zero = diffs <= 0
        colour = f"C{i % 10}"
        ax.plot(steps, np.where(zero, floor, diffs), color=colour, linewidth=1.2, label=param)
        ax.scatter(steps[~zero], diffs[~zero], s=12, color=colour, zorder=3)
        ax.scatter(steps[zero], np.full(zero.sum(), floor), s=30, facecolors="white",
                   edgecolors=colour, zorder=3)
    if tolerance is not None:
        ax.axhline(tolerance, color="black", linestyle="--", linewidth=1,
                   label=f"tolerance {tolerance:g}")
    _finish_log_plot(fig, ax, "max |manual - autograd| of the gradient",
                     f"Manual backward against autograd (exact zeros drawn at {floor:.0e})",
                     bool(worst), "no parity checks")
    return _save(fig, path)


def convergence_histogram(
    values_by_label: Mapping[str, Sequence[int | None]],
    path: str | os.PathLike,
    title: str = "",
) -> Path:
    """Overlaid histograms of epochs to reach the target loss, one per label; 800 x 500 px.

    ``values_by_label`` maps a label to one value per run: the epochs it took, or None for a
    run that never reached the target. The legend counts how many of each label reached it.
    All labels share the same bins.
    """
    reached = {
        label: [int(v) for v in values if v is not None]
        for label, values in values_by_label.items()
    }
    every = [v for values in reached.values() for v in values]

    fig = _figure(WIDE_INCHES)
    ax = fig.add_subplot()
    if every:
        low, high = min(every), max(every)
        bins = np.histogram_bin_edges(every, bins=min(20, max(1, high - low + 1)),
                                      range=(low - 0.5, high + 0.5))
        for i, (label, values) in enumerate(reached.items()):
            total = len(values_by_label[label])
            ax.hist(values, bins=bins, color=f"C{i % 10}", alpha=0.5, edgecolor="black",
                    linewidth=0.6, label=f"{label} ({len(values)}/{total} reached)")
        ax.margins(y=0.1)
        _legend_below(fig, ax)
    else:
        ax.text(0.5, 0.5, "no run reached the target loss", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("epochs to reach the target loss")
    ax.set_ylabel("runs")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title(title or "Epochs to reach the target loss")
    return _save(fig, path)
