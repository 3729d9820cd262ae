"""The reproduction study: arms x conditions x seeds, each arm's clip calibrated on its own ratio.

``grpo-guard study --preset NAME --out DIR`` runs, for every condition (a proxy reward, or a cell of
the evidence map) and every arm (a built-in method config):

1. a short calibration run with clipping off; the arm's clip range is set to the median over the
   trained steps of its own (transformed) ratio's standard deviation (pilot 1: the paper's 2e-6
   clips nearly every off-policy sample in a small world, so a fixed width is not comparable across
   arms or worlds);
2. one training run per seed with that clip range, into ``DIR/<condition>/<arm>_s<seed>``;
3. a summary per arm (``DIR/study.json`` and ``DIR/study.md``): proxy reached, every gold at matched
   proxy against the baseline arm and at the end, the monitor's hacking epoch, the raw ratio's
   left shift per step, clip fractions by advantage sign, the gradient-norm spread across steps,
   the regime (bias / spread at the last trained step) and the wall time; and one ``report.html``
   per condition.

Finished runs are skipped and interrupted ones resumed, so the command can be re-run after a stop.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .parallel import RunJob, run_jobs
from .report import build_report
from .report.runs import (Method, eval_points, format_paired_diff, format_stat, load_run, matched_gold, method_golds,
                          read_metrics, seed_stats)
from .train.summary import format_summary_line, summarise_run

__all__ = ["ARMS", "Condition", "StudyPlan", "PRESETS", "run_study", "calibrate_clip", "calibration_job", "read_clip",
           "summarize_condition", "format_study_markdown", "SPECTRAL_WORLD", "DIGITS_WORLD"]

#: arm (a built-in config) -> display label
ARMS: dict[str, str] = {
    "flow_grpo": "Flow-GRPO",
    "flow_grpo_kl": "Flow-GRPO + KL",
    "mean_revised": "mean-revised",
    "ratio_norm": "RatioNorm only",
    "grpo_guard": "GRPO-Guard",
    "temp_reweight": "TempFlow-style",
}


@dataclass
class Condition:
    """One condition of a study: its overrides. The golds compared at matched proxy are the ones the runs
    declare (``golds.json``, :mod:`grpo_guard.golds`)."""

    name: str
    overrides: list[str]
    note: str = ""


@dataclass
class StudyPlan:
    name: str
    world: list[str]
    conditions: list[Condition]
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    baseline: str = "flow_grpo"
    calibrate_epochs: int = 4


# ---- presets ----------------------------------------------------------------------------------------

#: the digits world of the demo (diffusers SD3 transformer, 32 px, latent 16 x 8 x 8: D = 1024)
DIGITS_WORLD = [
    "backbone.params={net: sd3, resolution: 32, layout: latent16, pretrain_steps: 1000, generator: {batch_size: 64}}",
    "sample.prompts_per_epoch=4", "sample.group_size=8", "train.epochs=50", "train.lr=1e-3",
    "train.inner_epochs=2", "eval.every=5", "eval.samples_per_prompt=8", "log.image_every=25",
    "train.grad_norm_every=5", "log.checkpoint_every=25",
]

#: the spectral world (analytic base; pilot 2's settings: P 10 x G 12, 8 updates per batch)
SPECTRAL_WORLD = [
    "backbone={name: spectral, params: {n: 64, hf_authority: 3.0}}", "sample.guidance_scale=1",
    "sample.prompts_per_epoch=10", "sample.group_size=12", "sample.batch_size=120",
    "train.epochs=50", "train.lr=1e-4", "train.updates_per_epoch=4", "train.inner_epochs=2", "train.adv_std=group",
    "rewards=[{name: spectral_proxy, role: proxy}, {name: spectral_attribute, role: gold},"
    " {name: spectral_exploit, role: gold}]",
    "eval.evaluator=spectral_gold", "eval.every=5", "eval.samples_per_prompt=50", "log.image_every=0",
    "train.grad_norm_every=5", "log.checkpoint_every=25", "monitor.enabled=false",
]


def _spectral_cell(route: str, n: int, updates: str) -> Condition:
    ov = [f"backbone.params.n={n}"]
    if route == "single":
        ov.append("rewards=[{name: spectral_proxy, role: proxy, params: {exploit_weight: 0.0}},"
                  " {name: spectral_attribute, role: gold}, {name: spectral_exploit, role: gold}]")
    if updates == "few":
        ov += ["train.updates_per_epoch=1", "train.inner_epochs=1"]
    return Condition(f"{route}-route_D{n * n}_{updates}-updates", ov,
                     note=f"{route}-route proxy, D = {n * n}, {'1' if updates == 'few' else '8'} update(s) per batch")


PRESETS: dict[str, StudyPlan] = {
    "digits": StudyPlan(
        name="digits", world=DIGITS_WORLD,
        conditions=[
            Condition("classifier", ["rewards=[{name: toy_classifier, role: proxy}, {name: toy_hidden_aesthetic, "
                                     "role: gold}]"], note="classifier proxy (GenEval/OCR analogue)"),
            Condition("aesthetic", ["rewards=[{name: toy_aesthetic, role: proxy}, {name: toy_hidden_aesthetic, "
                                    "role: gold}]"],
                      note="aesthetic proxy (PickScore analogue); true attribute: hidden aesthetic"),
        ]),
    "spectral": StudyPlan(
        name="spectral", world=SPECTRAL_WORLD,
        conditions=[_spectral_cell("multi", 64, "many")]),
    "map": StudyPlan(
        name="map", world=SPECTRAL_WORLD, arms=["flow_grpo", "grpo_guard"],
        conditions=[_spectral_cell(r, n, u) for r in ("multi", "single") for n in (16, 64)
                    for u in ("many", "few")]),
    # tiny: for tests (seconds per run)
    "tiny": StudyPlan(
        name="tiny", world=[*SPECTRAL_WORLD, "backbone.params.n=8", "train.epochs=4", "eval.every=1", "train.lr=3e-3",
                            "sample.prompts_per_epoch=2", "sample.group_size=4", "sample.batch_size=8",
                            "eval.samples_per_prompt=4", "train.grad_norm_every=1", "log.checkpoint_every=0"],
        conditions=[Condition("multi", [])], arms=["flow_grpo", "grpo_guard"], seeds=[0, 1],
        calibrate_epochs=2),
}


# ---- calibration --------------------------------------------------------------------------------

def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return read_metrics(path)[0] if path.is_file() else []


def clip_from_rows(rows: list[dict]) -> float | None:
    """The calibrated clip range: median over trained steps of the mean (over epochs) of the std of the
    ratio the arm clips (``step_stats.ratio_std``). None when there is no spread (all updates were
    on-policy, so clipping never acts)."""
    per_epoch = [r["step_stats"]["ratio_std"] for r in rows if isinstance(r.get("step_stats"), dict)]
    if not per_epoch:
        return None
    m = np.array(per_epoch, dtype=float)
    with np.errstate(all="ignore"):
        prof = np.nanmean(np.where(np.isfinite(m), m, np.nan), axis=0)
    prof = prof[np.isfinite(prof) & (prof > 0)]
    return float(np.median(prof)) if prof.size else None


def calibration_job(arm: str, overrides: list[str], out: Path, epochs: int) -> RunJob:
    """The calibration run of ``arm``: ``epochs`` epochs with clipping off, no evaluation, into ``out``."""
    return RunJob(arm, (*overrides, f"train.epochs={epochs}", "loss.clip_range=1e9", "eval.every=0",
                        "log.image_every=0", "log.checkpoint_every=0", "train.grad_norm_every=0",
                        "monitor.enabled=false"), out, label=f"calibrate {arm}")


def calibrate_clip(arm: str, overrides: list[str], out: Path, epochs: int, log=print) -> float | None:
    """Run ``arm``'s :func:`calibration_job` (when not finished already) and return :func:`clip_from_rows`
    of its metrics."""
    run_jobs([calibration_job(arm, overrides, out, epochs)], log=log, prefix="[study]")
    return read_clip(arm, overrides, out, epochs, log)


def read_clip(arm: str, overrides: list[str], out: Path, epochs: int, log=print) -> float | None:
    """The calibrated clip of a finished calibration run. A calibration whose metrics do not hold all its
    epochs (a truncated or partial file: the run cannot redo the epochs its checkpoint covers) is not
    trusted: it is removed and run again, with a one-line notice."""
    done = {r.get("epoch") for r in _rows(out) if isinstance(r.get("epoch"), int)}
    if len(done) < epochs:
        log(f"[study] {arm}: calibration {out} is incomplete ({len(done)} of {epochs} epochs logged): running it again")
        shutil.rmtree(out, ignore_errors=True)
        run_jobs([calibration_job(arm, overrides, out, epochs)], log=log, prefix="[study]")
    eps = clip_from_rows(_rows(out))
    log(f"[study] {arm}: calibrated clip range {eps if eps is None else f'{eps:.3g}'} ({out})")
    return eps


# ---- running ------------------------------------------------------------------------------------

def run_study(plan: StudyPlan, out: Path, *, extra: list[str] | None = None, workers: int = 1, log=print) -> Path:
    """Run the whole plan into ``out`` and write ``study.json``, ``study.md`` and a report per condition.
    ``workers`` > 1 trains that many runs side by side (:mod:`grpo_guard.parallel`). Returns the path of
    ``study.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    extra = list(extra or [])
    (out / "plan.json").write_text(json.dumps({**asdict(plan), "extra": extra}, indent=1))
    t_all = time.perf_counter()
    results = []
    for cond in plan.conditions:
        cdir = out / cond.name
        overrides = [*plan.world, *cond.overrides, *extra]
        run_jobs([calibration_job(arm, overrides, cdir / f"calibrate_{arm}", plan.calibrate_epochs)
                  for arm in plan.arms], workers=workers, log=log, prefix=f"[study] {cond.name}")
        clips = {arm: read_clip(arm, overrides, cdir / f"calibrate_{arm}", plan.calibrate_epochs, log)
                 for arm in plan.arms}
        jobs, labels = [], {}
        for arm in plan.arms:
            clip = [f"loss.clip_range={clips[arm]:.6g}"] if clips[arm] else []
            for seed in plan.seeds:
                run = cdir / f"{arm}_s{seed}"
                jobs.append(RunJob(arm, (*overrides, *clip, f"seed={seed}"), run, label=f"{arm} seed {seed}"))
                labels[str(run)] = ARMS.get(arm, arm)
        run_jobs(jobs, workers=workers, log=log, prefix=f"[study] {cond.name}")
        run_dirs = [job.run_dir for job in jobs]
        for run in run_dirs:  # each run's summary.json, written by the run, in one line
            log(f"[study] {cond.name}: {format_summary_line(summarise_run(run))}")
        build_report(run_dirs, cdir, title=f"Study {plan.name}: {cond.note or cond.name}", labels=labels,
                     baseline=ARMS.get(plan.baseline, plan.baseline))
        results.append(summarize_condition(plan, cond, cdir, clips))
    doc = {"plan": plan.name, "extra": extra, "conditions": results, "seconds": time.perf_counter() - t_all}
    (out / "study.json").write_text(json.dumps(doc, indent=1, default=_json_default))
    md = out / "study.md"
    md.write_text(format_study_markdown(doc))
    log(f"[study] wrote {md}")
    return md


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(type(o))


# ---- summary ------------------------------------------------------------------------------------

def summarize_condition(plan: StudyPlan, cond: Condition, cdir: Path, clips: dict) -> dict:
    """Per-arm numbers of one condition (see the module docstring). The golds are the ones the runs declare
    (the primary first, each read normalised where that is meaningful, else raw); each is compared with
    the baseline arm at matched proxy gain by :func:`~grpo_guard.report.runs.matched_gold`, the function
    the report uses, so study.md and report.html show the same figures."""
    runs = {arm: [load_run(cdir / f"{arm}_s{s}") for s in plan.seeds] for arm in plan.arms}
    base_runs = runs.get(plan.baseline, [])
    golds = method_golds([Method(ARMS.get(arm, arm), rs) for arm, rs in runs.items()])
    arms_out = {}
    for arm, rs in runs.items():
        entry: dict = {"label": ARMS.get(arm, arm), "clip_range": clips.get(arm)}
        proxies = [eval_points(r, "eval/proxy_reward_mean")[0] for r in rs]
        entry["proxy_start"] = seed_stats([p[0] for p in proxies if p.size])
        entry["proxy_final"] = seed_stats([p[-1] for p in proxies if p.size])
        entry["proxy_peak"] = seed_stats([p.max() for p in proxies if p.size])
        entry["hacking_epochs"] = [r.hacking_epoch() for r in rs]
        entry["wall_seconds"] = seed_stats([r.last("wall_seconds") for r in rs])
        entry["grad_norm_spread"] = seed_stats([r.mean_grad_norm_spread() for r in rs])
        entry["clip_high_pos"] = seed_stats([r.mean_clip_high_pos() for r in rs])
        entry["clip_low_neg"] = seed_stats([r.mean_step_stat("clip_low_neg") for r in rs])
        prof = [r.step_profile("raw_ratio_mean")[1] for r in rs]
        entry["raw_ratio_mean_minus_1_per_step"] = (np.nanmean(np.stack(prof), axis=0) - 1).tolist() if prof else []
        entry["frac_steps_raw_ratio_below_1"] = seed_stats([float(np.mean(p[np.isfinite(p)] < 1)) for p in prof
                                                            if np.isfinite(p).any()])
        entry["bias_over_spread_last_step"] = seed_stats([r.last_step_stat("bias_over_spread") for r in rs])
        entry_golds = {}
        for metric, key in golds:
            values = [eval_points(r, key)[1] for r in rs]
            g: dict = {"label": metric.label, "higher_is_better": metric.better(key), "primary": metric.primary,
                       "start": seed_stats([v[0] for v in values if v.size]),
                       "final": seed_stats([v[-1] for v in values if v.size])}
            if arm != plan.baseline and base_runs:
                g["matched"] = matched_gold(rs, base_runs, key)
            entry_golds[key] = g
        entry["golds"] = entry_golds
        arms_out[arm] = entry
    return {"condition": cond.name, "note": cond.note, "baseline": plan.baseline, "seeds": plan.seeds,
            "arms": arms_out}


def _f(s: dict, spec: str = ".3f") -> str:
    return format_stat(s, spec)


def format_study_markdown(doc: dict) -> str:
    """The summary tables of a study (one section per condition)."""
    lines = [f"# Study `{doc['plan']}`", "", f"Total time {doc['seconds'] / 60:.1f} min. Values are mean ± sd over "
             "seeds. Gold at matched proxy: at the largest evaluation-proxy GAIN over the run's own start (the base "
             "model's evaluation) that every seed of the arm and of the baseline reached (first crossing, "
             "interpolated); Δ is arm − baseline, paired by seed (same evaluation noise and start).", ""]
    for c in doc["conditions"]:
        lines += [f"## {c['condition']}" + (f": {c['note']}" if c["note"] else ""), ""]
        lines += ["| arm | clip | proxy start → final (peak) | hacking epoch | raw r̄<1 steps | r̄−1 last step "
                  "| clip hi A>0 | clip lo A<0 | bias/spread last | grad spread | wall s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for a in c["arms"].values():
            hack = ",".join("-" if h is None else str(h) for h in a["hacking_epochs"])
            r1 = a["raw_ratio_mean_minus_1_per_step"]
            r1_last = next((v for v in reversed(r1) if v is not None and math.isfinite(v)), float("nan"))
            clip = "n/a" if a["clip_range"] is None else f"{a['clip_range']:.2g}"
            lines.append(f"| {a['label']} | {clip} | {_f(a['proxy_start'], '.2f')} → {_f(a['proxy_final'], '.2f')} "
                         f"({_f(a['proxy_peak'], '.2f')}) | {hack} | {_f(a['frac_steps_raw_ratio_below_1'], '.2f')} "
                         f"| {r1_last:.1e} | {_f(a['clip_high_pos'], '.3f')} | {_f(a['clip_low_neg'], '.3f')} "
                         f"| {_f(a['bias_over_spread_last_step'], '.2f')} | {_f(a['grad_norm_spread'], '.1f')} "
                         f"| {_f(a['wall_seconds'], '.1f')} |")
        lines += ["", "Golds (↑ higher is better, ↓ lower; the primary gold in bold; `gold_norm/*` and "
                  "`gold_normalized_avg` relative to the base model, the others raw): start → final, and at matched "
                  "proxy (arm vs baseline).", "",
                  "| arm | gold | start → final | matched proxy gain | arm | baseline | Δ (paired) |",
                  "|---|---|---|---|---|---|---|"]
        for a in c["arms"].values():
            for key, g in a["golds"].items():
                arrow = "↑" if g["higher_is_better"] else "↓"
                m = g.get("matched")
                if m:
                    mcols = f"{m['proxy_gain']:.3f} | {_f(m['arm'])} | {_f(m['baseline'])} | {format_paired_diff(m)}"
                else:
                    mcols = "– | – | – | –"
                name = f"{'**' if g.get('primary') else ''}{g.get('label', key)}{'**' if g.get('primary') else ''}"
                lines.append(f"| {a['label']} | {name} {arrow} (`{key}`) | {_f(g['start'])} → {_f(g['final'])} "
                             f"| {mcols} |")
        lines.append("")
    return "\n".join(lines) + "\n"
