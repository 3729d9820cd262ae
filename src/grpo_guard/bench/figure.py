"""The figure of a ``grpo-guard bench`` run: the table's figures against their targets, drawn.

:func:`fig_bench` takes the results that :func:`grpo_guard.bench.run_bench` returns (and writes to
``bench.json``) and writes one PNG of six panels:

1. the in-situ overhead of each setting (epoch time / the network's time in the same epochs), with the
   1.10 target;
2. our epoch time over the reference-style loop's, paired: each setting's per-epoch ratios (dots) and
   their median (bar), with the 0.7 target;
3. the SDE window: the per-epoch ratios of the window run's update time to the all-steps run's (the two
   runs in turns), their median, the trained-step ratio and the target (1.15 x that ratio);
4. and 5. epoch time and peak memory against group size, sampling steps and resolution, each axis
   relative to its smallest value, on log-log axes with the fitted exponents, and a linear slope for
   reference;
6. resident memory over the memory run's epochs.

A panel whose measurement the run did not make (``--quick`` and ``--settings`` make no scaling and no SDE
window, ``--settings`` no memory run) says so.
``python -m grpo_guard.bench.figure OUT/bench.json [PNG]`` redraws it from a saved ``bench.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from matplotlib.ticker import FormatStrFormatter

from ..report.figures import figure_note, new_figure, save_figure
from .settings import OVERHEAD_TARGET, REFERENCE_TARGET, WINDOW_TOLERANCE

__all__ = ["fig_bench"]

_AXIS_LABELS = {"group_size": "group size", "num_steps": "sampling steps", "resolution": "resolution"}
_BAR, _DOT, _TARGET = "#1f77b4", "#0b3c5d", "#d62728"


def _short(name: str) -> str:
    return name.replace("-", "\n", 1)


def _overhead_panel(ax, settings: list[dict]) -> None:
    names = [_short(r["name"]) for r in settings]
    vals = [r["insitu_overhead"] for r in settings]
    ax.bar(names, vals, color=_BAR)
    for i, v in enumerate(vals):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.axhline(OVERHEAD_TARGET, color=_TARGET, ls="--", lw=1, label=f"target {OVERHEAD_TARGET:.2f}")
    ax.set_ylim(1.0, max([OVERHEAD_TARGET, *vals]) * 1.04)
    ax.set_ylabel("epoch / network time (in situ)")
    ax.set_title("overhead beyond the model's own calls", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.tick_params(axis="x", labelsize=8)


def _reference_panel(ax, settings: list[dict]) -> None:
    measured = [r for r in settings if "ours_over_reference" in r]
    if not measured:
        figure_note(ax, "no paired reference-loop run")
        return
    for i, r in enumerate(measured):
        ax.bar(i, r["ours_over_reference"], color=_BAR, alpha=0.55)
        pairs = r.get("ours_over_reference_pairs", [])
        ax.plot([i] * len(pairs), pairs, "o", color=_DOT, ms=3)
        ax.text(i, 0.03, f"{r['ours_over_reference']:.2f}", ha="center", va="bottom", fontsize=9, color="white",
                fontweight="bold")
    ax.axhline(REFERENCE_TARGET, color=_TARGET, ls="--", lw=1, label=f"target {REFERENCE_TARGET}")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(measured)), [_short(r["name"]) for r in measured], fontsize=8)
    ax.set_ylabel("our epoch / reference-style epoch")
    ax.set_title("against a Flow-GRPO-style loop (paired epochs)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")


def _window_panel(ax, window: dict | None) -> None:
    if not window:
        figure_note(ax, "SDE window not measured (--quick or --settings)")
        return
    ratios = window.get("update_ratio_epochs") or [window["update_ratio"]]
    epochs = np.arange(2, len(ratios) + 2)  # epoch 1 (warm-up) is dropped
    ax.plot(epochs, ratios, "o-", color=_DOT, ms=3, lw=0.8, label="per epoch (the runs in turns)")
    ax.axhline(window["update_ratio"], color=_BAR, lw=1.5, label=f"median x{window['update_ratio']:.2f}")
    ax.axhline(window["steps_ratio"], color="grey", ls=":", lw=1, label=f"trained steps x{window['steps_ratio']:.2f}")
    ax.axhline(WINDOW_TOLERANCE * window["steps_ratio"], color=_TARGET, ls="--", lw=1,
               label=f"target x{WINDOW_TOLERANCE * window['steps_ratio']:.2f}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("window update time / all-steps update time")
    ax.set_title("SDE window: update time in proportion", fontsize=10)
    ax.legend(fontsize=7, loc="best", framealpha=0.8)


def _scaling_panel(ax, scaling: dict, key: str, exponent: str, ylabel: str, title: str) -> None:
    if not scaling:
        figure_note(ax, "scaling not measured (--quick or --settings)")
        return
    lo = np.inf
    for axis, sc in scaling.items():
        x = np.array([p["value"] for p in sc["points"]], dtype=float)
        y = np.array([p[key] for p in sc["points"]], dtype=float)
        ax.plot(x / x[0], y, "o-", label=f"{_AXIS_LABELS.get(axis, axis)} ({sc[exponent]:.2f})")
        lo = min(lo, float(y[0]))
    rel = np.array([1.0, 4.0])
    ax.plot(rel, lo * rel, color="grey", ls=":", lw=1, label="linear (1.00)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks([1, 2, 4], ["x1", "x2", "x4"])
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_xlabel("value / smallest value (toy-sd3-32px)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, title="axis (fitted exponent)", title_fontsize=7)


def _memory_panel(ax, memory: dict | None) -> None:
    if not memory or not memory.get("rss_curve_mb"):
        figure_note(ax, "memory run not measured")
        return
    epochs, mb = zip(*memory["rss_curve_mb"])
    ax.plot(epochs, mb, "o-", color=_DOT, ms=3)
    ax.set_ylim(0, max(mb) * 1.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel("resident memory (MB)")
    ax.set_title(f"resident memory over {epochs[-1]} epochs (toy-mlp-8px)", fontsize=10)


def fig_bench(res: dict, path: str | Path) -> Path:
    """Write the six panels of a bench run's results ``res`` (the ``bench.json`` dict) to ``path`` (PNG)."""
    fig = new_figure(15, 8.5)
    axes = fig.subplots(2, 3)
    settings = res.get("settings", [])
    _overhead_panel(axes[0, 0], settings)
    _reference_panel(axes[0, 1], settings)
    _window_panel(axes[0, 2], res.get("sde_window"))
    scaling = res.get("scaling") or {}
    _scaling_panel(axes[1, 0], scaling, "epoch_s", "time_exponent", "epoch seconds", "epoch time scaling")
    _scaling_panel(axes[1, 1], scaling, "peak_rss_mb", "memory_exponent", "peak RSS (MB)", "peak memory scaling")
    _memory_panel(axes[1, 2], res.get("memory"))
    machine = res.get("machine", {})
    longer = ", ".join(f"{r['name']}: {r['epochs']}" for r in settings if r.get("epochs", res.get("epochs"))
                       != res.get("epochs"))
    fig.suptitle(f"grpo-guard bench, {res.get('date', '')}: {machine.get('cores', '?')} cores, "
                 f"{machine.get('device', 'cpu')}, torch {machine.get('torch', '?')}, {res.get('epochs', '?')} "
                 "epochs per measurement"
                 + (f" ({longer})" if longer else ""), fontsize=11)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not 1 <= len(argv) <= 2:
        print("usage: python -m grpo_guard.bench.figure OUT/bench.json [PNG]", file=sys.stderr)
        return 2
    src = Path(argv[0])
    try:
        res = json.loads(src.read_text())
    except (OSError, ValueError) as e:
        print(f"{src}: cannot read a bench result ({e})", file=sys.stderr)
        return 2
    print(f"wrote {fig_bench(res, argv[1] if len(argv) == 2 else src.with_name('bench.png'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
