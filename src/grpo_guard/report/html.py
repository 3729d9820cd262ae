"""The HTML report: a summary table per method, gold at matched proxy, the figures and the run list.

``build_report(run_dirs, out_dir)`` writes ``out_dir/report.html`` and ``out_dir/figures/*.png``. The
page is self-contained (inline CSS, relative image links, no JavaScript), so the folder can be moved
or archived as a whole.
"""

from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .figures import FIGURES, make_figures, method_colors
from .runs import GOLD_KEY, MatchedProxy, Method, Run, load_runs, matched_proxy

__all__ = ["build_report", "MethodSummary", "summarize_method", "render_html"]

_CAPTIONS = {
    "training_curves": "Mean over seeds (line) and min-max over seeds (band) against epoch. Top: the proxy "
                       "reward the policy is trained on (training batch and fixed evaluation set). Then the "
                       "normalised gold metrics (base model = 1, higher is better). Dotted vertical lines on "
                       "the average: epochs where the over-optimization monitor flagged a run. Implicit "
                       "over-optimization shows as proxy rising while gold falls.",
    "image_stats": "Statistics of the fixed evaluation set's images (same prompts and noise at every "
                   "evaluation), seed mean and min-max: mean luma, fraction of dark pixels, HSV saturation, "
                   "colour-histogram entropy, fraction of edge pixels, and the RMS distance between samples "
                   "of the same prompt. Reward hacking often moves these (darker, flatter, saturated or "
                   "collapsed images) while the proxy rises.",
    "gold_vs_proxy": "Normalised gold against evaluation proxy. Thin lines: single runs in epoch order "
                     "(circle: first evaluation, square: last). Thick: the method's gold when its runs first "
                     "reached each proxy level (seed mean). Methods are compared at matched proxy (grey band: "
                     "the range every run reached), never at matched epoch.",
    "ratio_per_step": "Per denoising step, averaged over the off-policy epochs (minibatches after the first "
                      "update of an epoch) and then over seeds. Raw ratio (top): a mean below 1 is the "
                      "left shift from the quadratic bias term. Bottom: the ratio the loss clips (after "
                      "RatioNorm when on). Dashed lines in the std panels: each method's clip range eps.",
    "ratio_heatmap": "Raw ratio mean - 1 for each step and epoch (first seed of each method). Blue: below 1.",
    "clip_per_step": "Per-step clip fractions. Left: P(r > 1 + eps | A > 0), the clip that should stop "
                     "over-confident positive updates (about 0 for Flow-GRPO in the paper). Right: "
                     "P(r < 1 - eps | A < 0).",
    "grad_norm_per_step": "Per-step gradient norm (mean over the measured epochs, then over seeds; log "
                          "scale). Legend: spread (max/min over steps) of the mean profile; the paper reports "
                          "about 20x for Flow-GRPO and 2.5x for GRPO-Guard.",
    "regime": "Left: the ratio's quadratic bias over the spread of log r (above 1: the left shift dominates "
              "the noise). Right: the policy's mean shift per dimension in noise-std units.",
}

_CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .88em; }
th, td { border: 1px solid #ccc; padding: .3em .55em; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .88em; color: #555; max-width: 1000px; }
.note { color: #8a5a00; } .muted { color: #777; font-size: .88em; } code { font-size: .95em; }
.swatch { display: inline-block; width: .8em; height: .8em; margin-right: .35em; border-radius: 2px; }
"""


# ---- numbers ---------------------------------------------------------------------------------------------

def _finite(values) -> list[float]:
    """The finite floats among ``values``."""
    out = []
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(v))
    return out


def _mean(values) -> float:
    """Mean of the finite values (NaN if none)."""
    v = _finite(values)
    return float(np.mean(v)) if v else float("nan")


def _fmt(v: float, spec: str = ".3f") -> str:
    """Format a number; an em dash for NaN/None."""
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "\u2014"
    return format(v, spec)


def _agg(values, spec: str = ".3f") -> str:
    """``mean ± sd`` over seeds (just the value for one seed); an em dash when none is finite."""
    v = _finite(values)
    if not v:
        return "\u2014"
    if len(v) == 1:
        return _fmt(v[0], spec)
    return f"{_fmt(float(np.mean(v)), spec)} \u00b1 {_fmt(float(np.std(v)), spec)}"


def _duration(seconds: float) -> str:
    """``1h 02m``, ``3m 07s`` or ``12.3s``."""
    if not math.isfinite(seconds):
        return "\u2014"
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h {int(seconds % 3600 // 60):02d}m"
    if seconds >= 60:
        return f"{int(seconds // 60)}m {int(seconds % 60):02d}s"
    return f"{seconds:.1f}s"


# ---- summary -----------------------------------------------------------------------------------------------

@dataclass
class MethodSummary:
    """The numbers of one row of the summary table (each list: one value per seed)."""

    label: str
    seeds: list
    epochs: list[int]
    final_proxy: list[float]
    best_gold: list[float]
    final_gold: list[float]
    hacking_epochs: list[int | None]
    gold_matched: float
    ratio_offset_last_step: list[float]
    clip_high_pos: list[float]
    grad_norm_spread: list[float]
    wall_seconds: list[float]


def summarize_method(method: Method, matched: MatchedProxy | None = None) -> MethodSummary:
    """Per-seed numbers of a method; ``gold_matched`` is its seed-mean gold at the top matched level."""
    runs = method.runs
    gm = float("nan")
    if matched is not None and matched.ok and method.label in matched.gold:
        gm = matched.gold[method.label][-1]
    return MethodSummary(
        label=method.label, seeds=method.seeds, epochs=[r.num_epochs for r in runs],
        final_proxy=[r.last("proxy_reward_mean") for r in runs],
        best_gold=[r.best_gold() for r in runs],
        final_gold=[r.last(GOLD_KEY) for r in runs],
        hacking_epochs=[r.hacking_epoch() for r in runs], gold_matched=gm,
        ratio_offset_last_step=[r.last_step_raw_ratio_offset() for r in runs],
        clip_high_pos=[r.mean_clip_high_pos() for r in runs],
        grad_norm_spread=[r.mean_grad_norm_spread() for r in runs],
        wall_seconds=[r.last("wall_seconds") for r in runs],
    )


def _hacking_cell(run_values: list[int | None], runs: list[Run]) -> str:
    """``epoch`` per seed ("none" when not flagged; "n/a" when the monitor did not log)."""
    parts = []
    for ep, r in zip(run_values, runs):
        if ep is not None:
            parts.append(str(ep))
        elif r.last_raw("monitor/hacking") is None:
            parts.append("n/a")
        else:
            parts.append("none")
    flagged = sum(e is not None for e in run_values)
    return f"{', '.join(parts)} ({flagged}/{len(runs)} flagged)"


def _epochs_cell(epochs: list[int]) -> str:
    """``8`` or ``6-8`` when the seeds ran for different lengths."""
    if not epochs:
        return "\u2014"
    lo, hi = min(epochs), max(epochs)
    return str(lo) if lo == hi else f"{lo}\u2013{hi}"


def _summary_table(methods: list[Method], summaries: list[MethodSummary], matched: MatchedProxy,
                   colors: dict[str, str]) -> str:
    """The per-method summary table (HTML)."""
    lvl = f" (proxy {matched.levels[-1]:.4g})" if matched.ok else ""
    head = ["Method", "Seeds", "Epochs", "Final proxy", "Best norm. gold", "Final norm. gold",
            "Hacking epoch (monitor)", f"Gold at matched proxy{lvl}", "Raw ratio \u2212 1, last step",
            "P(r &gt; 1+\u03b5 | A &gt; 0)", "Grad-norm spread", "Wall time"]
    rows = []
    for m, s in zip(methods, summaries):
        seeds = ", ".join("?" if x is None else str(x) for x in s.seeds)
        cells = [
            f'<td class="l"><span class="swatch" style="background:{colors[m.label]}"></span>'
            f"{html.escape(m.label)}</td>",
            f'<td class="l">{html.escape(seeds)}</td>', f"<td>{_epochs_cell(s.epochs)}</td>",
            f"<td>{_agg(s.final_proxy, '.4f')}</td>", f"<td>{_agg(s.best_gold)}</td>",
            f"<td>{_agg(s.final_gold)}</td>", f'<td class="l">{_hacking_cell(s.hacking_epochs, m.runs)}</td>',
            f"<td>{_fmt(s.gold_matched)}</td>", f"<td>{_agg(s.ratio_offset_last_step, '.2e')}</td>",
            f"<td>{_agg(s.clip_high_pos, '.3f')}</td>",
            f"<td>{_agg(s.grad_norm_spread, '.1f')}{'x' if _finite(s.grad_norm_spread) else ''}</td>",
            f"<td>{_duration(_mean(s.wall_seconds))}</td>",
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    th = "".join(f'<th class="l">{h}</th>' if i < 2 else f"<th>{h}</th>" for i, h in enumerate(head))
    return f"<table>\n<tr>{th}</tr>\n" + "\n".join(rows) + "\n</table>"


def _matched_table(methods: list[Method], matched: MatchedProxy) -> str:
    """Gold of every method at the common proxy levels (HTML)."""
    if not matched.ok:
        return ('<p class="note">No matched-proxy comparison: no run has an evaluation epoch with both '
                "proxy and normalised gold, or the runs' proxy ranges do not overlap.</p>")
    th = '<th class="l">Method</th>' + "".join(f"<th>proxy {lv:.4g}</th>" for lv in matched.levels)
    rows = []
    for m in methods:
        cells = []
        for mean, per in zip(matched.gold[m.label], matched.per_seed[m.label]):
            seeds = ", ".join(_fmt(v) for v in per)
            cells.append(f'<td title="per seed: {html.escape(seeds)}">{_fmt(mean)}'
                         + (f' <span class="muted">({seeds})</span>' if len(per) > 1 else "") + "</td>")
        rows.append(f'<tr><td class="l">{html.escape(m.label)}</td>{"".join(cells)}</tr>')
    return (f"<p>Normalised gold when each method's runs first reached the proxy level (linear interpolation "
            f"between evaluations; seed mean, per-seed values in brackets). Levels span the range every run "
            f"reached: {matched.lo:.4g} to {matched.hi:.4g} (runs without gold are left out).</p>\n"
            f"<table>\n<tr>{th}</tr>\n" + "\n".join(rows) + "\n</table>")


# ---- runs and notes -------------------------------------------------------------------------------------------

def _rewards_desc(run: Run) -> str:
    """``proxy: a (w=1), gold: b`` from the config's rewards list."""
    parts = []
    for r in run.config.get("rewards") or []:
        if not isinstance(r, dict):
            continue
        role, name = r.get("role", "proxy"), r.get("name", "?")
        parts.append(f"{role}: {name}" + (f" (w={r.get('weight')})" if role == "proxy" else ""))
    return "; ".join(parts) or "\u2014"


def _runs_table(methods: list[Method]) -> str:
    """One row per run: where it is and its method-defining settings (HTML)."""
    head = ["Method", "Run directory", "Seed", "Epochs", "Skipped", "ratio_mode", "step_weight", "clip_range",
            "kl_coef", "Rewards", "Best checkpoint"]
    rows = []
    for m in methods:
        for r in m.runs:
            lo = r.loss
            best = r.best_info or {}
            best_txt = (f"epoch {best.get('epoch')}, gold {_fmt(best.get(GOLD_KEY))}" if best else "\u2014")
            cells = [m.label, str(r.path), "?" if r.seed is None else str(r.seed), str(r.num_epochs),
                     str(r.num_skipped), str(lo.get("ratio_mode")), str(lo.get("step_weight")),
                     str(lo.get("clip_range")), str(lo.get("kl_coef")), _rewards_desc(r), best_txt]
            rows.append("<tr>" + "".join(f'<td class="l">{html.escape(c)}</td>' for c in cells) + "</tr>")
    th = "".join(f'<th class="l">{h}</th>' for h in head)
    return f"<table>\n<tr>{th}</tr>\n" + "\n".join(rows) + "\n</table>"


def _notes(methods: list[Method]) -> list[str]:
    """Data problems worth telling the reader about (plain text)."""
    notes = []
    for m in methods:
        for r in m.runs:
            if r.num_skipped:
                notes.append(f"{r.path}: {r.num_skipped} skipped epoch(s) (bad reward batches).")
            if r.bad_lines:
                notes.append(f"{r.path}: {r.bad_lines} unreadable metrics line(s) ignored (e.g. a torn last line).")
            if not r.finite_series(GOLD_KEY)[1].size:
                notes.append(f"{r.path}: no normalised gold logged (no evaluator, or eval.every = 0).")
            if not any(isinstance(x.get("step_stats"), dict) for x in r.epoch_rows):
                notes.append(f"{r.path}: no per-step ratio statistics (needs train.updates_per_epoch > 1).")
        epochs = {r.num_epochs for r in m.runs}
        if len(epochs) > 1:
            notes.append(f"{m.label}: seeds ran for different numbers of epochs ({sorted(epochs)}).")
    return notes


# ---- page ------------------------------------------------------------------------------------------------------

def _figure_html(rel: str, title: str, caption: str) -> str:
    """One ``<figure>`` with a relative image link."""
    return (f'<figure><img src="{html.escape(rel)}" alt="{html.escape(title)}">'
            f"<figcaption><b>{html.escape(title)}.</b> {html.escape(caption)}</figcaption></figure>")


def render_html(methods: list[Method], figures: dict[str, Path], out_dir: Path, title: str) -> str:
    """The report page as a string (figure links relative to ``out_dir``)."""
    colors = method_colors(methods)
    matched = matched_proxy(methods)
    summaries = [summarize_method(m, matched) for m in methods]
    rel = {k: Path(os.path.relpath(p, out_dir)).as_posix() for k, p in figures.items()}
    n_runs = sum(len(m.runs) for m in methods)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{n_runs} run(s) in {len(methods)} method(s). Normalised gold: each gold metric relative to the "
        "base model (1 = base, higher is better), averaged. Methods are compared at matched proxy reward, "
        "not at matched epoch. Epochs are numbered as in <code>metrics.jsonl</code> (from 0).</p>",
        "<h2>Summary</h2>", _summary_table(methods, summaries, matched, colors),
        '<p class="muted">Per-seed values are shown as mean \u00b1 sd over seeds. Final proxy: training-batch '
        "proxy at the last epoch. Hacking epoch: the over-optimization monitor's flag. Raw ratio \u2212 1 at the "
        "last trained step and P(r &gt; 1+\u03b5 | A &gt; 0) (mean over steps) are averaged over off-policy "
        "epochs. Grad-norm spread: max/min over steps of the per-step gradient norm, mean over epochs. "
        "Wall time: seed mean.</p>",
        "<h2>Gold at matched proxy</h2>", _matched_table(methods, matched),
    ]
    for name, (_, fig_title) in FIGURES.items():
        if name in rel:
            parts.append(f"<h2>{html.escape(fig_title)}</h2>")
            parts.append(_figure_html(rel[name], fig_title, _CAPTIONS.get(name, "")))
    parts.append("<h2>Images over training</h2>")
    parts.append('<p class="muted">Evaluation-set image grids (rows = prompts, fixed noise) of the first seed '
                 "of each method, at a few epochs.</p>")
    for m in methods:
        key = f"images:{m.label}"
        if key in rel:
            parts.append(_figure_html(rel[key], m.label, f"seed {m.first.seed}, {m.first.path}"))
    notes = _notes(methods)
    if notes:
        parts.append("<h2>Data notes</h2><ul>" + "".join(f'<li class="note">{html.escape(n)}</li>' for n in notes)
                     + "</ul>")
    parts.append("<h2>Runs</h2>")
    parts.append(_runs_table(methods))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def build_report(run_dirs, out_dir, title: str | None = None, *, labels: dict | None = None) -> Path:
    """Build ``out_dir/report.html`` and ``out_dir/figures/*.png`` from run directories.

    ``run_dirs``: run directories made by ``grpo-guard train``, each optionally as ``LABEL=RUN_DIR`` to name
    its method; runs whose configs differ only in ``seed`` are one method. ``labels`` optionally maps run
    directories to method labels. Raises ValueError naming any directory that is not a run. Returns the
    path of ``report.html``."""
    methods = load_runs(run_dirs, labels=labels)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: output path exists and is not a directory")
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    figures = make_figures(methods, fig_dir)
    if title is None:
        title = "GRPO-Guard report: " + ", ".join(m.label for m in methods)
    page = render_html(methods, figures, out_dir, title)
    path = out_dir / "report.html"
    tmp = out_dir / ".report.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path
