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
from ..golds import GoldMetric
from .runs import (GOLD_KEY, Method, Run, eval_points, format_paired_diff, format_stat, load_runs, matched_gold,
                   method_golds, seeds_better)

__all__ = ["build_report", "MethodSummary", "summarize_method", "render_html", "baseline_method", "primary_gold",
           "matched_comparisons"]

_CAPTIONS = {
    "grid_comparison": "Evaluation-set grids (rows = prompts; up to 8 samples each): the base model's, then each "
                       "method's last one, from the first seed of each method, so the same prompts and initial noise.",
    "training_curves": "Mean over seeds (line) and min-max over seeds (band) against epoch. Top: the proxy "
                       "reward the policy is trained on (training batch and fixed evaluation set). Then each gold "
                       "metric, once: relative to the base model (dashed line at 1, higher is better) where that "
                       "is meaningful, else raw with the base model's value dashed. Dotted vertical lines on the "
                       "normalised average: epochs where the over-optimization monitor flagged a run. Implicit "
                       "over-optimization shows as proxy rising while gold falls.",
    "image_stats": "Statistics of the fixed evaluation set's images (same prompts and noise at every "
                   "evaluation), seed mean and min-max: mean luma, fraction of dark pixels, HSV saturation, "
                   "colour-histogram entropy, fraction of edge pixels, and the RMS distance between samples "
                   "of the same prompt. Reward hacking often moves these (darker, flatter, saturated or "
                   "collapsed images) while the proxy rises.",
    "gold_vs_proxy": "Each gold against the evaluation proxy's gain over the run's start (the base model's "
                     "evaluation). Thin lines: single runs in epoch order (circle: start, square: last "
                     "evaluation). Thick: the method's gold when its runs first reached each gain (seed mean). "
                     "Dashed vertical: the largest gain every run reached; methods are compared there, never at "
                     "matched epoch.",
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
pre.summary { background: #f6f8fa; border: 1px solid #ddd; padding: .8em; font-size: .85em; white-space: pre-wrap; }
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
    """``mean ± sd`` over seeds (just the value for one seed; the sd to 2 significant digits under a ``g``
    spec); an em dash when none is finite."""
    v = _finite(values)
    if not v:
        return "\u2014"
    if len(v) == 1:
        return _fmt(v[0], spec)
    return f"{_fmt(float(np.mean(v)), spec)} \u00b1 {_fmt(float(np.std(v)), '.2g' if spec.endswith('g') else spec)}"


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

def primary_gold(methods: list[Method]) -> tuple[GoldMetric, str] | None:
    """The primary gold and the key it is read from (None when no run logged a gold)."""
    golds = method_golds(methods)
    return next(((m, k) for m, k in golds if m.primary), golds[0] if golds else None)


def baseline_method(methods: list[Method], baseline: str | None = None) -> Method:
    """The method the others are compared with: the one labelled ``baseline``, else Flow-GRPO when
    present, else the first. Raises ValueError for a ``baseline`` label that no method has."""
    by_label = {m.label: m for m in methods}
    if baseline is not None:
        if baseline not in by_label:
            raise ValueError(f"baseline: no method is labelled {baseline!r} (methods: {', '.join(by_label)})")
        return by_label[baseline]
    return by_label.get("Flow-GRPO", methods[0])


@dataclass
class MethodSummary:
    """The numbers of one row of the summary table (each list: one value per seed). ``primary``: the
    primary gold's reading key; ``gold_start`` / ``gold_final`` / ``gold_best``: its value at the run's
    start (the base model), last evaluation and best evaluation (in its direction)."""

    label: str
    seeds: list
    epochs: list[int]
    primary: str | None
    proxy_start: list[float]
    proxy_final: list[float]
    gold_start: list[float]
    gold_final: list[float]
    gold_best: list[float]
    hacking_epochs: list[int | None]
    ratio_offset_last_step: list[float]
    clip_high_pos: list[float]
    clip_low_neg: list[float]
    bias_over_spread: list[float]
    grad_norm_spread: list[float]
    wall_seconds: list[float]


def summarize_method(method: Method, primary: tuple[GoldMetric, str] | None = None) -> MethodSummary:
    """Per-seed numbers of a method (``primary``: the gold and reading key of :func:`primary_gold`)."""
    runs = method.runs
    key = primary[1] if primary else None
    higher = primary[0].better(key) if primary else True

    def gold(run: Run, which: str) -> float:
        _, y = eval_points(run, key) if key else (None, np.array([]))
        if not y.size:
            return float("nan")
        return float({"start": y[0], "final": y[-1], "best": y.max() if higher else y.min()}[which])

    def proxy(run: Run, which: int) -> float:
        x, _ = eval_points(run, "eval/proxy_reward_mean")
        return float(x[which]) if x.size else float("nan")

    return MethodSummary(
        label=method.label, seeds=method.seeds, epochs=[r.num_epochs for r in runs], primary=key,
        proxy_start=[proxy(r, 0) for r in runs], proxy_final=[proxy(r, -1) for r in runs],
        gold_start=[gold(r, "start") for r in runs], gold_final=[gold(r, "final") for r in runs],
        gold_best=[gold(r, "best") for r in runs], hacking_epochs=[r.hacking_epoch() for r in runs],
        ratio_offset_last_step=[r.last_step_raw_ratio_offset() for r in runs],
        clip_high_pos=[r.mean_clip_high_pos() for r in runs],
        clip_low_neg=[r.mean_step_stat("clip_low_neg") for r in runs],
        bias_over_spread=[r.last_step_stat("bias_over_spread") for r in runs],
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


def _gold_name(metric: GoldMetric, key: str) -> str:
    """``label ↑`` with the reading: ``(base = 1)`` for a normalised one."""
    arrow = "\u2191" if metric.better(key) else "\u2193"
    return f"{metric.label} {arrow}" + (" (base = 1)" if key != metric.key or metric.normalised else "")


def _summary_table(methods: list[Method], summaries: list[MethodSummary], primary, colors: dict[str, str]) -> str:
    """The per-method summary table (HTML)."""
    gname = html.escape(_gold_name(*primary)) if primary else "gold"
    head = ["Method", "Seeds", "Epochs", "Eval proxy start \u2192 final", f"{gname}: start \u2192 final",
            f"{gname}: best", "Hacking epoch (monitor)", "Raw ratio \u2212 1, last step",
            "P(r &gt; 1+\u03b5 | A &gt; 0)", "P(r &lt; 1\u2212\u03b5 | A &lt; 0)", "Bias / spread, last step",
            "Grad-norm spread", "Wall time"]
    rows = []
    for m, s in zip(methods, summaries):
        seeds = ", ".join("?" if x is None else str(x) for x in s.seeds)
        cells = [
            f'<td class="l"><span class="swatch" style="background:{colors[m.label]}"></span>'
            f"{html.escape(m.label)}</td>",
            f'<td class="l">{html.escape(seeds)}</td>', f"<td>{_epochs_cell(s.epochs)}</td>",
            f"<td>{_agg(s.proxy_start, '.4g')} \u2192 {_agg(s.proxy_final, '.4g')}</td>",
            f"<td>{_agg(s.gold_start, '.4g')} \u2192 {_agg(s.gold_final, '.4g')}</td>",
            f"<td>{_agg(s.gold_best, '.4g')}</td>",
            f'<td class="l">{_hacking_cell(s.hacking_epochs, m.runs)}</td>',
            f"<td>{_agg(s.ratio_offset_last_step, '.2e')}</td>", f"<td>{_agg(s.clip_high_pos, '.3f')}</td>",
            f"<td>{_agg(s.clip_low_neg, '.3f')}</td>", f"<td>{_agg(s.bias_over_spread, '.2f')}</td>",
            f"<td>{_agg(s.grad_norm_spread, '.1f')}{'x' if _finite(s.grad_norm_spread) else ''}</td>",
            f"<td>{_duration(_mean(s.wall_seconds))}</td>",
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    th = "".join(f'<th class="l">{h}</th>' if i < 2 else f"<th>{h}</th>" for i, h in enumerate(head))
    return f"<table>\n<tr>{th}</tr>\n" + "\n".join(rows) + "\n</table>"


def matched_comparisons(methods: list[Method], baseline: Method) -> list[tuple[GoldMetric, str, Method, dict | None]]:
    """``(gold, reading key, method, matched_gold result)`` for every declared gold (the primary first)
    and every method but the baseline: the numbers of the report's matched-proxy tables."""
    out = []
    for metric, key in method_golds(methods):
        for m in methods:
            if m is not baseline:
                out.append((metric, key, m, matched_gold(m.runs, baseline.runs, key)))
    return out


def _better_count(metric: GoldMetric, key: str, res: dict) -> str:
    """``k/n`` seeds where the method beats the baseline in the gold's direction."""
    k, n = seeds_better(res, metric.better(key))
    return f"{k}/{n}"


def _headline(methods: list[Method], baseline: Method, primary, comparisons) -> str:
    """The first screen: each method against the baseline on the primary gold at matched proxy (HTML)."""
    if primary is None:
        return '<p class="note">No gold metric was logged (no evaluator and no gold reward, or eval.every = 0).</p>'
    metric, key = primary
    base_note = ""
    if key == metric.key and not metric.normalised:
        b = _mean([r.base_row.get(key) for m in methods for r in m.runs if r.base_row])
        base_note = (f" It is read raw (a value relative to the base model would mean nothing here); the base "
                     f"model's value is {_fmt(b, '.4g')}.")
    intro = (f"<p>Primary gold: <b>{html.escape(_gold_name(metric, key))}</b>, compared at matched proxy gain: "
             "the largest gain of the evaluation proxy over the run's start (the base model's evaluation) that "
             f"every seed of the method and of {html.escape(baseline.label)} reached, paired by seed.{base_note}</p>")
    rows = []
    for gm, k, m, res in comparisons:
        if gm is not metric:
            continue
        if res is None:
            rows.append(f'<tr><td class="l">{html.escape(m.label)}</td><td colspan="5" class="l note">no proxy gain '
                        "that every run reached</td></tr>")
            continue
        rows.append(f'<tr><td class="l">{html.escape(m.label)}</td><td>{res["proxy_gain"]:.3f}</td>'
                    f"<td>{format_stat(res['arm'])}</td><td>{format_stat(res['baseline'])}</td>"
                    f"<td><b>{html.escape(format_paired_diff(res))}</b></td><td>{_better_count(gm, k, res)}</td></tr>")
    if not rows:
        return intro + '<p class="note">Only one method: nothing to compare with.</p>'
    th = ("<tr><th class=\"l\">Method</th><th>Matched proxy gain</th><th>Method</th>"
          f"<th>{html.escape(baseline.label)}</th><th>\u0394 (paired)</th><th>Better in seeds</th></tr>")
    return intro + f"<table>\n{th}\n" + "\n".join(rows) + "\n</table>"


def _matched_table(baseline: Method, comparisons) -> str:
    """Every declared gold of every method against the baseline at matched proxy gain (HTML)."""
    if not comparisons:
        return '<p class="note">No matched-proxy comparison: only one method, or no gold logged.</p>'
    th = ("<tr><th class=\"l\">Gold</th><th class=\"l\">Method</th><th>Matched proxy gain</th><th>Method</th>"
          f"<th>{html.escape(baseline.label)}</th><th>\u0394 (paired)</th><th>Better in seeds</th></tr>")
    rows = []
    for metric, key, m, res in comparisons:
        name = f'<td class="l">{html.escape(_gold_name(metric, key))}</td><td class="l">{html.escape(m.label)}</td>'
        if res is None:
            rows.append(f'<tr>{name}<td colspan="5" class="l note">no proxy gain that every run reached</td></tr>')
            continue
        per = ", ".join(_fmt(v) for v in res["arm_per_seed"])
        rows.append(f'<tr>{name}<td>{res["proxy_gain"]:.3f}</td><td title="per seed: {per}">{format_stat(res["arm"])}'
                    f"</td><td>{format_stat(res['baseline'])}</td><td>{html.escape(format_paired_diff(res))}</td>"
                    f"<td>{_better_count(metric, key, res)}</td></tr>")
    return ("<p>Each gold when the runs first reached the matched proxy gain (linear interpolation between "
            "evaluations), mean \u00b1 sd over seeds; \u0394 is method \u2212 baseline paired by seed, with the "
            "change relative to the baseline.</p>\n" + f"<table>\n{th}\n" + "\n".join(rows) + "\n</table>")


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
            if not any(r.finite_series(key)[1].size for _, key in method_golds([m])):
                notes.append(f"{r.path}: no gold logged (no evaluator and no gold reward, or eval.every = 0).")
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


def render_html(methods: list[Method], figures: dict[str, Path], out_dir: Path, title: str,
                baseline: str | None = None, preface: str | None = None) -> str:
    """The report page as a string (figure links relative to ``out_dir``); ``baseline``: the label of the
    method the others are compared with (:func:`baseline_method`); ``preface``: plain text shown first (the
    demo's one-screen summaries)."""
    colors = method_colors(methods)
    base = baseline_method(methods, baseline)
    primary = primary_gold(methods)
    comparisons = matched_comparisons(methods, base)
    summaries = [summarize_method(m, primary) for m in methods]
    rel = {k: Path(os.path.relpath(p, out_dir)).as_posix() for k, p in figures.items()}
    n_runs = sum(len(m.runs) for m in methods)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *([f'<pre class="summary">{html.escape(preface)}</pre>'] if preface else []),
        f"<p>{n_runs} run(s) in {len(methods)} method(s), compared with {html.escape(base.label)} at matched "
        "proxy gain, never at matched epoch. Epochs are numbered as in <code>metrics.jsonl</code> (from 0).</p>",
        "<h2>Headline</h2>", _headline(methods, base, primary, comparisons),
        "<h2>Summary</h2>", _summary_table(methods, summaries, primary, colors),
        '<p class="muted">Mean \u00b1 sd over seeds. Eval proxy and the primary gold: at the run\'s start (the base '
        "model's evaluation) and at its last evaluation; best: its best evaluation in its direction. Hacking "
        "epoch: the over-optimization monitor's flag. Raw ratio \u2212 1 at the last trained step, the clip "
        "fractions by advantage sign (mean over steps) and bias / spread at the last trained step are averaged "
        "over off-policy epochs. Grad-norm spread: max/min over steps of the per-step gradient norm, mean over "
        "epochs. Wall time: seed mean.</p>",
        "<h2>Golds at matched proxy</h2>", _matched_table(base, comparisons),
    ]
    for name, (_, fig_title, _) in FIGURES.items():
        if name in rel:
            parts.append(f"<h2>{html.escape(fig_title)}</h2>")
            parts.append(_figure_html(rel[name], fig_title, _CAPTIONS.get(name, "")))
    strips = [m for m in methods if f"images:{m.label}" in rel]
    if strips:
        parts.append("<h2>Images over training</h2>")
        parts.append('<p class="muted">Evaluation-set image grids (rows = prompts, fixed noise) of the first seed '
                     "of each method, at a few epochs.</p>")
        for m in strips:
            parts.append(_figure_html(rel[f"images:{m.label}"], m.label, f"seed {m.first.seed}, {m.first.path}"))
    notes = _notes(methods)
    if notes:
        parts.append("<h2>Data notes</h2><ul>" + "".join(f'<li class="note">{html.escape(n)}</li>' for n in notes)
                     + "</ul>")
    parts.append("<h2>Runs</h2>")
    parts.append(_runs_table(methods))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def build_report(run_dirs, out_dir, title: str | None = None, *, labels: dict | None = None,
                 baseline: str | None = None, preface: str | None = None) -> Path:
    """Build ``out_dir/report.html`` and ``out_dir/figures/*.png`` from run directories.

    ``run_dirs``: run directories made by ``grpo-guard train``, each optionally as ``LABEL=RUN_DIR`` to name
    its method; runs whose configs differ only in ``seed`` are one method. ``labels`` optionally maps run
    directories to method labels; ``baseline`` names the method the others are compared with (default:
    Flow-GRPO when present, else the first); ``preface`` is plain text shown at the top. Raises ValueError
    naming any directory that is not a run. Returns the path of ``report.html``."""
    methods = load_runs(run_dirs, labels=labels)
    baseline_method(methods, baseline)  # an unknown baseline label fails before anything is written
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: output path exists and is not a directory")
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    figures = make_figures(methods, fig_dir)
    if title is None:
        title = "GRPO-Guard report: " + ", ".join(m.label for m in methods)
    page = render_html(methods, figures, out_dir, title, baseline, preface)
    path = out_dir / "report.html"
    tmp = out_dir / ".report.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path
