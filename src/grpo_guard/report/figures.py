"""Report figures (matplotlib, Agg canvas: no display and no global pyplot state).

Every ``fig_*`` function takes the methods (see :mod:`grpo_guard.report.runs`) and an output path,
writes one PNG atomically (temporary file, then rename) and returns the path. Curves are the mean
over a method's seeds with a min-max band across seeds. A panel is drawn only where its data exist and
mean something: :func:`make_figures` leaves out a figure whose data no run logged (e.g. the per-step ratio
statistics of on-policy runs, the image statistics of a world whose samples are not pictures), and the
gold panels follow the runs' gold declaration (:mod:`grpo_guard.golds`): each gold once, normalised where
that is meaningful, else raw next to the base model's value.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from .runs import GOLD_KEY, Method, Run, as_number, gain_points, gold_at_proxy, matched_gain, method_golds

# matplotlib wheels without the STIX / Computer Modern fonts warn once per process per family when a label
# has mathtext; the fallback (DejaVu) renders it, so the warnings would only bury the command's own output
logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)

__all__ = [
    "fig_training_curves", "fig_gold_vs_proxy", "fig_ratio_per_step", "fig_ratio_heatmap",
    "fig_clip_per_step", "fig_grad_norm_per_step", "fig_regime", "fig_clip_vs_regime", "regime_clip_points",
    "regime_clip_curve", "fig_image_strip", "make_figures",
    "method_colors", "FIGURES",
]

DPI = 110
IMAGE_DPI = 150  # image strips: finer, so the samples stay legible
_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf"]


# ---- helpers -----------------------------------------------------------------------------------------

def method_colors(methods: list[Method]) -> dict[str, str]:
    """A fixed colour per method label (the same in every figure)."""
    return {m.label: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(methods)}


def new_figure(width: float, height: float) -> Figure:
    """A Figure on an Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _int_x(ax, label: str) -> None:
    """Label the x axis and use integer ticks (epochs, step indices)."""
    ax.set_xlabel(label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def figure_note(ax, text: str) -> None:
    """Write a 'nothing to plot' note in an axes."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.4",
            wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _stack(xs: list[np.ndarray], ys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Align per-seed series on the union of their x values: ``(x, Y)`` with ``Y[seed, i]`` (NaN gaps)."""
    grid = np.unique(np.concatenate(xs)) if xs and any(x.size for x in xs) else np.array([])
    out = np.full((len(xs), grid.size), np.nan)
    for i, (x, y) in enumerate(zip(xs, ys)):
        idx = np.searchsorted(grid, x)
        out[i, idx] = y
    return grid, out


def _seed_stats(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max over seeds (rows), ignoring NaN; NaN where no seed has a value."""
    ok = np.isfinite(y)
    n = ok.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.where(ok, y, 0).sum(0) / np.maximum(n, 1), np.nan)
    lo = np.where(n > 0, np.where(ok, y, np.inf).min(0), np.nan)
    hi = np.where(n > 0, np.where(ok, y, -np.inf).max(0), np.nan)
    return mean, lo, hi


def _band(ax, x: np.ndarray, y: np.ndarray, color: str, label: str, marker: str | None = None) -> bool:
    """Plot the seed mean with a min-max band; returns False when there is nothing finite to plot."""
    if y.size == 0:
        return False
    mean, lo, hi = _seed_stats(y)
    ok = np.isfinite(mean)
    if not ok.any():
        return False
    ax.plot(x[ok], mean[ok], color=color, label=label, lw=1.8, marker=marker, ms=3)
    if y.shape[0] > 1:
        ax.fill_between(x[ok], lo[ok], hi[ok], color=color, alpha=0.18, lw=0)
    return True


def _series_stack(method: Method, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Epoch-aligned ``(epochs, Y)`` of a scalar metric over a method's seeds."""
    xs, ys = zip(*(r.finite_series(key) for r in method.runs))
    return _stack(list(xs), list(ys))


def _profile_stack(method: Method, stat: str, fn: Callable[[np.ndarray], np.ndarray] | None = None):
    """Step-aligned ``(steps, Y)``: each seed's per-step statistic averaged over its epochs."""
    xs, ys = [], []
    for r in method.runs:
        steps, prof = r.step_profile(stat)
        if fn is not None:
            prof = fn(prof)
        xs.append(steps.astype(float))
        ys.append(prof)
    return _stack(xs, ys)


def _clip_eps(run: Run) -> tuple[float, float]:
    """(lower, upper) clip range of a run's config; NaN when unreadable."""
    c = run.loss.get("clip_range")
    try:
        if isinstance(c, (list, tuple)) and len(c) == 2:
            return float(c[0]), float(c[1])
        return float(c), float(c)
    except (TypeError, ValueError):
        return float("nan"), float("nan")


def _positive_log(ax, ys: list[np.ndarray]) -> None:
    """Use a log y axis when every finite plotted value is positive."""
    vals = np.concatenate([y[np.isfinite(y)].ravel() for y in ys]) if ys else np.array([])
    if vals.size and (vals > 0).all():
        ax.set_yscale("log")


# ---- (1) training curves -----------------------------------------------------------------------------

def _has_series(methods: list[Method], key: str) -> bool:
    """True when some run logged a finite ``key`` at some epoch."""
    return any(r.finite_series(key)[1].size for m in methods for r in m.runs)


def _base_value(methods: list[Method], key: str) -> float:
    """The mean over runs of the base model's ``key`` (``base_eval.json``); NaN when no run has it."""
    vals = [as_number(r.base_row.get(key)) for m in methods for r in m.runs if r.base_row]
    vals = [v for v in vals if math.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _panels_vs_epoch(methods: list[Method], panels: list[tuple[str, str]], path: str | Path,
                     ref_line: Callable[[str], float] = lambda key: float("nan")) -> Path:
    """One panel per ``(metric key, title)`` that some run logged: each method's seed mean (line) and
    min-max (band) against epoch; a dashed line at ``ref_line(key)`` when finite (1 for a normalised gold,
    the base model's value for a raw one); dotted verticals at the monitor's flags on the normalised gold
    average."""
    panels = [(k, t) for k, t in panels if _has_series(methods, k)]
    colors = method_colors(methods)
    ncols = min(3, max(len(panels), 1))
    nrows = max(math.ceil(len(panels) / ncols), 1)
    fig = new_figure(4.3 * ncols, 3.1 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (key, title) in zip(axes, panels):
        for m in methods:
            x, y = _series_stack(m, key)
            _band(ax, x, y, colors[m.label], f"{m.label} (n={len(m.runs)})", marker="o" if x.size < 30 else None)
            if key == GOLD_KEY:
                for r in m.runs:
                    he = r.hacking_epoch()
                    if he is not None:
                        ax.axvline(he, color=colors[m.label], ls=":", lw=1.2)
        ax.set_title(title, fontsize=10)
        ref = ref_line(key)
        if math.isfinite(ref):
            ax.axhline(ref, color="0.5", lw=0.8, ls="--")
        _int_x(ax, "epoch")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    handles, labels = [], []
    for ax in axes[: len(panels)]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=9)
    return save_figure(fig, path)


def gold_title(metric, key: str, higher: bool, base_line: bool = True) -> str:
    """A gold panel's title: its label and direction (an arrow), and its reading (base = 1, or raw; with
    ``base_line``, the panel draws the base model's value dashed)."""
    reading = ("base = 1" if key != metric.key or metric.normalised
               else "raw; dashed: base model" if base_line else "raw")
    arrow = "\u2191" if higher else "\u2193"
    return f"{metric.label} {arrow}\n({reading})"


def fig_training_curves(methods: list[Method], path: str | Path) -> Path:
    """Proxy reward (training and evaluation) and every declared gold vs epoch, per method: normalised
    golds with a dashed line at 1 (the base model), raw ones with a dashed line at the base model's value.
    Dotted vertical lines: the epoch the monitor flagged over-optimization (per run)."""
    golds = method_golds(methods)
    panels = [("proxy_reward_mean", "proxy reward (training batch)"),
              ("eval/proxy_reward_mean", "proxy reward (evaluation set)")]
    panels += [(key, gold_title(metric, key, metric.better(key))) for metric, key in golds]
    normalised = {key for metric, key in golds if key != metric.key or metric.normalised}
    return _panels_vs_epoch(methods, panels, path,
                            ref_line=lambda key: 1.0 if key in normalised else (
                                _base_value(methods, key) if key not in ("proxy_reward_mean", "eval/proxy_reward_mean")
                                else float("nan")))


#: the evaluation images' statistics (grpo_guard/image_stats.py) and their panel titles
IMAGE_STAT_PANELS = [("imgstat/brightness", "brightness (mean luma)"),
                     ("imgstat/dark_fraction", "dark fraction (luma < 0.1)"),
                     ("imgstat/saturation", "saturation (HSV)"),
                     ("imgstat/colour_entropy", "colour entropy (bits)"),
                     ("imgstat/edge_density", "edge density"),
                     ("imgstat/group_diversity", "diversity within a prompt")]


def fig_image_stats(methods: list[Method], path: str | Path) -> Path:
    """Statistics of the fixed evaluation set's images vs epoch: drift here (darker, flatter, saturated,
    collapsed samples) often shows reward hacking before a gold metric does."""
    return _panels_vs_epoch(methods, IMAGE_STAT_PANELS, path)


# ---- (2) gold vs proxy ---------------------------------------------------------------------------------

def fig_gold_vs_proxy(methods: list[Method], path: str | Path, max_panels: int = 6) -> Path:
    """The over-optimization curve, one panel per declared gold (the primary first): gold against the
    evaluation proxy's GAIN over each run's start (the base model's evaluation). Thin lines: each run in
    epoch order (circle: start, square: last evaluation); thick line: the method's gold when its runs first
    reached each gain (seed mean); dashed vertical: the largest gain every run reached, where the summary
    compares methods (:func:`~grpo_guard.report.runs.matched_gold`)."""
    colors = method_colors(methods)
    golds = [(metric, key) for metric, key in method_golds(methods)
             if any(gain_points(r, key)[0].size for m in methods for r in m.runs)][:max_panels]
    ncols = min(3, max(len(golds), 1))
    nrows = max(math.ceil(len(golds) / ncols), 1)
    fig = new_figure(5.0 * ncols, 3.9 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (metric, key) in zip(axes, golds):
        for m in methods:
            c = colors[m.label]
            for r in m.runs:
                x, y = gain_points(r, key)
                if not x.size:
                    continue
                ax.plot(x, y, color=c, lw=0.8, alpha=0.45)
                ax.plot(x[:1], y[:1], "o", color=c, ms=5, alpha=0.7)
                ax.plot(x[-1:], y[-1:], "s", color=c, ms=5, alpha=0.7)
            reach = matched_gain(m.runs, key)
            if reach is not None:
                levels = np.linspace(0.0, reach, 40)
                vals = []
                for lv in levels:
                    v = [gold_at_proxy(*gain_points(r, key), lv) for r in m.runs]
                    v = [a for a in v if math.isfinite(a)]
                    vals.append(np.mean(v) if v else np.nan)
                ax.plot(levels, vals, color=c, lw=2.4, label=f"{m.label} (n={len(m.runs)})")
        common = matched_gain([r for m in methods for r in m.runs], key)
        if common is not None and len(methods) > 1:
            ax.axvline(common, color="0.4", lw=0.9, ls="--", label="gain every run reached")
        ax.set_xlabel("proxy gain over the run's start (evaluation set)")
        ax.set_title(gold_title(metric, key, metric.better(key), base_line=False), fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    for ax in axes[len(golds):]:
        ax.set_visible(False)
    return save_figure(fig, path)


# ---- (3) ratio per step --------------------------------------------------------------------------------

def fig_ratio_per_step(methods: list[Method], path: str | Path) -> Path:
    """Per denoising step, averaged over the off-policy epochs: the raw ratio's mean - 1 and std (top),
    and those of the ratio actually used by the loss (after RatioNorm when on; bottom). Dashed lines in
    the std panels: each method's clip range eps."""
    colors = method_colors(methods)
    panels = [("raw_ratio_mean", True, "raw ratio: mean - 1"), ("raw_ratio_std", False, "raw ratio: std"),
              ("ratio_mean", True, "ratio used by the loss: mean - 1"), ("ratio_std", False, "ratio used: std")]
    fig = new_figure(10.5, 7.0)
    axes = fig.subplots(2, 2).ravel()
    for ax, (stat, centred, title) in zip(axes, panels):
        plotted = []
        for m in methods:
            x, y = _profile_stack(m, stat, (lambda p: p - 1.0) if centred else None)
            if _band(ax, x, y, colors[m.label], m.label, marker="o"):
                plotted.append(y)
                if not centred:
                    eps = np.nanmax([max(_clip_eps(r)) for r in m.runs] + [np.nan]) if m.runs else np.nan
                    if math.isfinite(eps) and eps > 0:
                        ax.axhline(eps, color=colors[m.label], ls="--", lw=0.9)
        ax.set_title(title, fontsize=10)
        if not plotted:
            figure_note(ax, f"no step_stats/{stat} logged (needs updates_per_epoch > 1)")
            continue
        if centred:
            ax.axhline(0.0, color="0.5", lw=0.8)
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        else:
            _positive_log(ax, plotted)
        _int_x(ax, "denoising step (schedule index)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def fig_ratio_heatmap(methods: list[Method], path: str | Path, stat: str = "raw_ratio_mean") -> Path:
    """Heatmap (step x epoch) of ``stat`` - 1 for the first seed of each method (blue: below 1)."""
    n = max(len(methods), 1)
    fig = new_figure(min(4.6 * n, 16), 3.6)
    axes = np.atleast_1d(fig.subplots(1, n, squeeze=False).ravel())
    if not methods:
        figure_note(axes[0], "no runs")
    for ax, m in zip(axes, methods):
        steps, epochs, mat = m.first.step_matrix(stat)
        ax.set_title(f"{m.label} (seed {m.first.seed})", fontsize=10)
        if mat.size == 0 or not np.isfinite(mat).any():
            figure_note(ax, f"no step_stats/{stat} logged")
            continue
        d = (mat - 1.0).T  # rows = steps, cols = epochs
        lim = float(np.nanmax(np.abs(d))) or 1e-12
        im = ax.imshow(np.ma.masked_invalid(d), aspect="auto", origin="lower", cmap="RdBu_r", vmin=-lim,
                       vmax=lim, interpolation="nearest",
                       extent=(epochs.min() - 0.5, epochs.max() + 0.5, steps.min() - 0.5, steps.max() + 0.5))
        _int_x(ax, "epoch")
        ax.set_ylabel("denoising step")
        cb = fig.colorbar(im, ax=ax, shrink=0.9)
        cb.formatter.set_powerlimits((-2, 2))
        cb.update_ticks()
        cb.set_label(f"{stat.replace('_mean', '')} mean - 1", fontsize=8)
    return save_figure(fig, path)


# ---- (4) clip fractions ----------------------------------------------------------------------------------

def fig_clip_per_step(methods: list[Method], path: str | Path) -> Path:
    """Per step, averaged over off-policy epochs: P(r > 1 + eps | A > 0), the clip that restrains
    over-confident positive updates, and P(r < 1 - eps | A < 0)."""
    colors = method_colors(methods)
    panels = [("clip_high_pos", "upper clip, positive advantage: P(r > 1+eps | A > 0)"),
              ("clip_low_neg", "lower clip, negative advantage: P(r < 1-eps | A < 0)")]
    fig = new_figure(10.5, 3.8)
    axes = fig.subplots(1, 2).ravel()
    for ax, (stat, title) in zip(axes, panels):
        drew = False
        for m in methods:
            x, y = _profile_stack(m, stat)
            drew |= _band(ax, x, y, colors[m.label], m.label, marker="o")
        ax.set_title(title, fontsize=10)
        if not drew:
            figure_note(ax, f"no step_stats/{stat} logged")
            continue
        ax.set_ylim(-0.03, 1.03)
        _int_x(ax, "denoising step (schedule index)")
        ax.set_ylabel("fraction of samples")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


# ---- (5) gradient norm per step --------------------------------------------------------------------------

def profile_spread(values: np.ndarray) -> float:
    """max / min of the finite positive entries (NaN if there are none)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return float(v.max() / v.min()) if v.size else float("nan")


def fig_grad_norm_per_step(methods: list[Method], path: str | Path) -> Path:
    """Per-step gradient norm (mean over the measured epochs, then over seeds), log scale; the legend
    gives the spread (max/min over steps) of the mean profile."""
    colors = method_colors(methods)
    fig = new_figure(6.8, 4.4)
    ax = fig.subplots()
    drew = False
    for m in methods:
        x, y = _profile_stack(m, "grad_norm_step")
        mean = _seed_stats(y)[0] if y.size else y
        s = profile_spread(mean) if y.size else float("nan")
        lab = f"{m.label} (spread {s:.1f}x)" if math.isfinite(s) else m.label
        drew |= _band(ax, x, y, colors[m.label], lab, marker="o")
    ax.set_title("per-step gradient norm", fontsize=10)
    if not drew:
        figure_note(ax, "no grad_norm_step logged (train.grad_norm_every = 0?)")
        return save_figure(fig, path)
    _positive_log(ax, [np.asarray(ln.get_ydata(), dtype=float) for ln in ax.get_lines()])
    _int_x(ax, "denoising step (schedule index)")
    ax.set_ylabel("gradient norm")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


# ---- (6) regime ------------------------------------------------------------------------------------------

def fig_regime(methods: list[Method], path: str | Path) -> Path:
    """The regime per step: bias_over_spread (the ratio's quadratic bias over the spread of log r: above 1
    the left shift dominates) and drift_u (the policy's mean shift per dimension in noise-std units)."""
    colors = method_colors(methods)
    panels = [("bias_over_spread", "bias / spread of log r"), ("drift_u", "drift u = |dmu| / s per dimension")]
    fig = new_figure(10.5, 3.8)
    axes = fig.subplots(1, 2).ravel()
    for ax, (stat, title) in zip(axes, panels):
        plotted = []
        for m in methods:
            x, y = _profile_stack(m, stat)
            if _band(ax, x, y, colors[m.label], m.label, marker="o"):
                plotted.append(y)
        ax.set_title(title, fontsize=10)
        if not plotted:
            figure_note(ax, f"no step_stats/{stat} logged")
            continue
        _positive_log(ax, plotted)
        if stat == "bias_over_spread":
            ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
        _int_x(ax, "denoising step (schedule index)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    return save_figure(fig, path)


#: bias/spread bin edges of :func:`regime_clip_curve` (log-spaced; the left shift decides the clipping above ~1)
REGIME_EDGES = np.logspace(-3, 1, 13)


def regime_clip_points(runs: list[Run]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (epoch, trained step) of ``runs`` with all three statistics finite: ``(bias_over_spread,
    clip_high_pos, clip_low_neg)``, each (P,): the fraction of positive-advantage samples clipped above
    and of negative-advantage samples clipped below, against the regime of that step's ratio."""
    xs, his, los = [], [], []
    for run in runs:
        _, _, x = run.step_matrix("bias_over_spread")
        _, _, hi = run.step_matrix("clip_high_pos")
        _, _, lo = run.step_matrix("clip_low_neg")
        if x.size and x.shape == hi.shape == lo.shape:
            xs.append(x.ravel()), his.append(hi.ravel()), los.append(lo.ravel())
    if not xs:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    x, hi, lo = np.concatenate(xs), np.concatenate(his), np.concatenate(los)
    keep = np.isfinite(x) & np.isfinite(hi) & np.isfinite(lo)
    return x[keep], hi[keep], lo[keep]


def regime_clip_curve(runs: list[Run], edges: np.ndarray = REGIME_EDGES, min_count: int = 5) -> dict[str, np.ndarray]:
    """:func:`regime_clip_points` binned by bias/spread (``edges``; values below the first edge go to the
    first bin): per bin with at least ``min_count`` points, ``centre`` (geometric), ``clip_high_pos`` and
    ``clip_low_neg`` (means) and ``count``."""
    x, hi, lo = regime_clip_points(runs)
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    out: dict[str, list] = {"centre": [], "clip_high_pos": [], "clip_low_neg": [], "count": []}
    for b in range(len(edges) - 1):
        sel = idx == b
        if sel.sum() >= min_count:
            out["centre"].append(math.sqrt(edges[b] * edges[b + 1]))
            out["clip_high_pos"].append(float(hi[sel].mean()))
            out["clip_low_neg"].append(float(lo[sel].mean()))
            out["count"].append(int(sel.sum()))
    return {k: np.asarray(v) for k, v in out.items()}


def fig_clip_vs_regime(arms: dict[str, list[Run]], path: str | Path) -> Path:
    """The paper's Fig. 12 mechanism, checked: for each arm (label -> its runs), the fraction of A > 0
    samples clipped above (left) and of A < 0 samples clipped below (right) against bias/spread of the
    step's log-ratio; faint points are (epoch, step) values, lines their means per bias/spread bin. Where
    the left shift decides the clipping (bias/spread >~ 1), a plain ratio clips A > 0 samples above less
    and less while A < 0 ones are clipped below."""
    fig = new_figure(10.5, 4.0)
    axes = fig.subplots(1, 2, sharey=True).ravel()
    panels = [("clip_high_pos", "A > 0 clipped above (ratio > 1 + eps)"), ("clip_low_neg",
                                                                           "A < 0 clipped below (ratio < 1 - eps)")]
    any_points = False
    for i, (label, runs) in enumerate(arms.items()):
        color = _PALETTE[i % len(_PALETTE)]
        x, hi, lo = regime_clip_points(runs)
        if not x.size:
            continue
        any_points = True
        curve = regime_clip_curve(runs)
        for ax, (key, _), y in zip(axes, panels, (hi, lo)):
            ax.scatter(np.maximum(x, REGIME_EDGES[0]), y, s=3, alpha=0.08, color=color, linewidths=0)
            if curve["centre"].size:
                ax.plot(curve["centre"], curve[key], "o-", color=color, lw=1.6, ms=4, label=label)
    for ax, (_, title) in zip(axes, panels):
        ax.set_title(title, fontsize=10)
        if not any_points:
            figure_note(ax, "no per-step clip statistics logged (on-policy runs only?)")
            continue
        ax.set_xscale("log")
        ax.set_xlim(REGIME_EDGES[0] * 0.8, REGIME_EDGES[-1])
        ax.axvline(1.0, color="0.5", lw=0.8, ls="--")
        ax.set_xlabel("bias / spread of the step's log-ratio")
        ax.grid(alpha=0.3, which="both")
    if any_points:
        axes[0].set_ylabel("fraction of the sign's samples")
        axes[0].legend(fontsize=8)
    return save_figure(fig, path)


# ---- (7) image grids over training -------------------------------------------------------------------------

def pick_images(run: Run, count: int = 5) -> list[tuple[int, Path]]:
    """Up to ``count`` of a run's image grids, evenly spaced over training (first and last included)."""
    imgs = run.images
    if len(imgs) <= count:
        return list(imgs)
    idx = sorted({round(i) for i in np.linspace(0, len(imgs) - 1, count)})
    return [imgs[i] for i in idx]


def _load_thumbnail(path: Path, max_side: int = 720) -> np.ndarray:
    """An image file as a uint8 array, downscaled so its longer side is at most ``max_side`` pixels."""
    with Image.open(path) as im:
        im = im.convert("L" if im.mode in ("L", "I", "I;16", "1") else "RGB")
        im.thumbnail((max_side, max_side), Image.Resampling.BOX)
        return np.asarray(im)


def fig_image_strip(method: Method, path: str | Path, count: int = 5) -> Path:
    """A strip of the first seed's evaluation image grids (rows = prompts) at a few epochs. File
    ``epoch_NNNN.png`` was saved after NNNN epochs, i.e. at metrics epoch NNNN - 1 (``epoch_0000.png``: the base
    model)."""
    run = method.first
    picks = pick_images(run, count)
    n = max(len(picks), 1)
    fig = new_figure(min(3.2 * n, 17), 3.9)
    axes = fig.subplots(1, n, squeeze=False).ravel()
    fig.suptitle(f"{method.label}: seed {run.seed} ({run.name})", fontsize=10)
    if not picks:
        figure_note(axes[0], "no image grids saved (log.image_every = 0?)")
        return save_figure(fig, path)
    for ax, (num, f) in zip(axes, picks):
        try:
            img = _load_thumbnail(f)
        except Exception as e:  # a corrupt PNG must not stop the report
            figure_note(ax, f"{f.name}: unreadable ({type(e).__name__})")
            continue
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="antialiased")
        ax.set_title("base model" if num == 0 else f"epoch {num - 1}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return save_figure(fig, path, dpi=IMAGE_DPI)


def fig_grid_comparison(methods: list[Method], path: str | Path) -> Path:
    """The base model's evaluation grid next to each method's last one, side by side: the first seed of each
    method, so that runs with the same seed show the same prompts and noise (the base grid is the first
    method's ``epoch_0000.png``)."""
    base = next((f for m in methods for num, f in m.first.images if num == 0), None)
    panels = ([("base model", base)] if base is not None else []) + [
        (f"{m.label}, epoch {m.first.images[-1][0] - 1} (seed {m.first.seed})", m.first.images[-1][1])
        for m in methods if m.first.images and m.first.images[-1][0] > 0]
    n = max(len(panels), 1)
    fig = new_figure(min(3.6 * n, 17), 6.5)
    axes = fig.subplots(1, n, squeeze=False).ravel()
    for ax, (title, f) in zip(axes, panels):
        try:
            img = _load_thumbnail(f)
        except Exception as e:  # a corrupt PNG must not stop the report
            figure_note(ax, f"{f.name}: unreadable ({type(e).__name__})")
            continue
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="antialiased")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return save_figure(fig, path, dpi=IMAGE_DPI)


def _has_base_grid(methods: list[Method]) -> bool:
    return any(num == 0 for m in methods for num, _ in m.first.images)


# ---- all -------------------------------------------------------------------------------------------------

def _has_step_stat(methods: list[Method], stat: str) -> bool:
    """True when some run logged a finite per-step ``stat`` (a ``step_stats`` key, or ``grad_norm_step``)."""
    return any(np.isfinite(r.step_matrix(stat)[2]).any() for m in methods for r in m.runs)


def _has_gold_points(methods: list[Method]) -> bool:
    return any(gain_points(r, key)[0].size for _, key in method_golds(methods) for m in methods for r in m.runs)


def _samples_are_images(methods: list[Method]) -> bool:
    return all(r.golds.samples_are_images for m in methods for r in m.runs)


#: name -> (figure function, title, whether the runs have its data)
FIGURES: dict[str, tuple[Callable, str, Callable[[list[Method]], bool]]] = {
    "training_curves": (fig_training_curves, "Proxy reward and gold metrics vs epoch", lambda ms: True),
    "image_stats": (fig_image_stats, "Image statistics of the evaluation set vs epoch",
                    lambda ms: _samples_are_images(ms) and any(_has_series(ms, k) for k, _ in IMAGE_STAT_PANELS)),
    "gold_vs_proxy": (fig_gold_vs_proxy, "Gold vs proxy gain (over-optimization curve)", _has_gold_points),
    "ratio_per_step": (fig_ratio_per_step, "Importance ratio per step",
                       lambda ms: _has_step_stat(ms, "raw_ratio_mean")),
    "ratio_heatmap": (fig_ratio_heatmap, "Raw ratio mean - 1, step x epoch",
                      lambda ms: _has_step_stat(ms, "raw_ratio_mean")),
    "clip_per_step": (fig_clip_per_step, "Clip fractions per step", lambda ms: _has_step_stat(ms, "clip_high_pos")),
    "grad_norm_per_step": (fig_grad_norm_per_step, "Gradient norm per step",
                           lambda ms: _has_step_stat(ms, "grad_norm_step")),
    "regime": (fig_regime, "Regime per step: bias over spread and drift",
               lambda ms: _has_step_stat(ms, "bias_over_spread")),
    "grid_comparison": (fig_grid_comparison, "The base model and each method at the end, same prompts and noise",
                        _has_base_grid),
}


def make_figures(methods: list[Method], fig_dir: str | Path) -> dict[str, Path]:
    """Write the figures of :data:`FIGURES` whose data the runs have into ``fig_dir``, plus
    ``images_<method>.png`` for each method whose first run saved image grids. Returns name -> path."""
    fig_dir = Path(fig_dir)
    out = {name: fn(methods, fig_dir / f"{name}.png") for name, (fn, _, available) in FIGURES.items()
           if available(methods)}
    used: set[str] = set()
    for i, m in enumerate(methods):
        if not m.first.images:
            continue
        slug = m.slug if m.slug not in used else f"{m.slug}_{i}"
        used.add(slug)
        out[f"images:{m.label}"] = fig_image_strip(m, fig_dir / f"images_{slug}.png")
    return out
