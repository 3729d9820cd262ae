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
   left shift per step, clip fractions by advantage sign (mean and per step), the gradient-norm
   spread across steps, the regime (bias / spread, per step) and the wall time; the plan's
   ``contrasts`` (pairs of arms compared at matched proxy on the primary gold); one ``report.html``
   per condition; and ``DIR/clip_vs_regime.png``, clip fractions by advantage sign against
   bias / spread for every arm over the whole study.

A condition may run its own arms and seeds (a sweep cell that runs the baseline once). The runs of
all conditions are trained together (all calibrations, then all runs), so ``--workers`` stay busy.

Finished runs are skipped and interrupted ones resumed, so the command can be re-run after a stop.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .config import config_file_overrides
from .parallel import RunJob, run_jobs
from .report import build_report
from .report.figures import fig_clip_vs_regime
from .report.runs import (Method, eval_points, format_paired_diff, format_stat, load_run, matched_gold, method_golds,
                          read_metrics, seed_stats)
from .train.summary import format_summary_line, summarise_run

__all__ = ["ARMS", "DEFAULT_ARMS", "Condition", "StudyPlan", "PRESETS", "run_study", "calibrate_clip",
           "calibration_job", "read_clip", "summarize_condition", "format_study_markdown", "SPECTRAL_WORLD",
           "DIGITS_WORLD", "TEXT_WORLD", "REGIME_FIGURE"]

#: the study's figure of clip fractions by advantage sign against bias/spread, every run of every arm
REGIME_FIGURE = "clip_vs_regime.png"

#: arm (a built-in config) -> display label
ARMS: dict[str, str] = {
    "flow_grpo": "Flow-GRPO",
    "flow_grpo_kl": "Flow-GRPO + KL",
    "mean_revised": "mean-revised",
    "ratio_norm": "RatioNorm only",
    "inv_dt_reweight": "1/|dt| only",
    "grpo_guard": "GRPO-Guard",
    "temp_reweight": "TempFlow-style",
}

#: the arms a plan runs unless it names its own
DEFAULT_ARMS = ["flow_grpo", "flow_grpo_kl", "mean_revised", "ratio_norm", "grpo_guard", "temp_reweight"]


@dataclass
class Condition:
    """One condition of a study: its overrides, and optionally its own arms and seeds (a sweep cell that
    runs only the baseline once, say; otherwise the plan's). The golds compared at matched proxy are the
    ones the runs declare (``golds.json``, :mod:`grpo_guard.golds`)."""

    name: str
    overrides: list[str]
    note: str = ""
    arms: list[str] | None = None
    seeds: list[int] | None = None


@dataclass
class StudyPlan:
    name: str
    world: list[str]
    conditions: list[Condition]
    arms: list[str] = field(default_factory=lambda: list(DEFAULT_ARMS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    baseline: str = "flow_grpo"
    calibrate_epochs: int = 4
    #: extra pairwise comparisons at matched proxy, ``(arm, reference)``: the effect of one factor with the
    #: other held (each run only where the condition has both arms)
    contrasts: list[tuple[str, str]] = field(default_factory=list)

    def arms_of(self, cond: Condition) -> list[str]:
        """The arms ``cond`` runs: its own, else the plan's."""
        return list(cond.arms) if cond.arms is not None else list(self.arms)

    def seeds_of(self, cond: Condition) -> list[int]:
        """The seeds ``cond`` runs: its own, else the plan's."""
        return list(cond.seeds) if cond.seeds is not None else list(self.seeds)


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


#: the text world (docs/text_world.md): the real OCR engine as the proxy, golds it does not see
TEXT_WORLD = config_file_overrides("_text_world")


def _spectral_cell(route: str, n: int, updates: str) -> Condition:
    ov = [f"backbone.params.n={n}"]
    if route == "single":
        ov.append("rewards=[{name: spectral_proxy, role: proxy, params: {exploit_weight: 0.0}},"
                  " {name: spectral_attribute, role: gold}, {name: spectral_exploit, role: gold}]")
    if updates == "few":
        ov += ["train.updates_per_epoch=1", "train.inner_epochs=1"]
    return Condition(f"{route}-route_D{n * n}_{updates}-updates", ov,
                     note=f"{route}-route proxy, D = {n * n}, {'1' if updates == 'few' else '8'} update(s) per batch")


#: the regime study's arms: the {plain, ratio_norm} x {none, inv_dt} factorial plus mean-revised
REGIME_ARMS = ["flow_grpo", "inv_dt_reweight", "ratio_norm", "grpo_guard", "mean_revised"]
#: the regime sweep: Flow-GRPO's drift per batch (the learning rate at 8 updates per batch) per D
REGIME_SWEEP = {128: ["3e-3", "1e-2", "3e-2"], 256: ["3e-3", "1e-2", "3e-2", "1e-1"]}
#: the learning rate of each D's factorial: the sweep's stable setting with bias/spread >= 1 at the late steps
REGIME_LR = {128: "3e-2", 256: "1e-1"}

#: the factorial's effects, each at matched proxy against the arm that differs in that factor alone
REGIME_CONTRASTS = [("grpo_guard", "inv_dt_reweight"),  # RatioNorm, with the 1/|dt| weight held
                    ("ratio_norm", "flow_grpo"),  # RatioNorm, without the weight
                    ("grpo_guard", "ratio_norm"),  # the 1/|dt| weight, with RatioNorm held
                    ("inv_dt_reweight", "flow_grpo"),  # the 1/|dt| weight on the plain ratio
                    ("mean_revised", "flow_grpo")]  # the bias removed without the step-std scaling


def _regime_cells() -> list[Condition]:
    cells = [Condition(f"sweep_D{n * n}_lr{lr}", [f"backbone.params.n={n}", f"train.lr={lr}"], arms=["flow_grpo"],
                       seeds=[0], note=f"regime sweep: Flow-GRPO, D = {n * n}, lr {lr}, 8 updates per batch")
             for n, lrs in REGIME_SWEEP.items() for lr in lrs]
    for route in ("multi", "single"):
        for n, lr in REGIME_LR.items():
            cell = _spectral_cell(route, n, "many")
            # at D = 65,536 an evaluation of 10 x 50 samples costs over 2 epochs: 10 x 20 there
            evals = ["eval.samples_per_prompt=20"] if n >= 256 else []
            cells.append(Condition(f"{route}-route_D{n * n}_lr{lr}", [*cell.overrides, f"train.lr={lr}", *evals],
                                   note=f"{cell.note}, lr {lr}" + (", evaluation on 10 x 20 samples" if evals else "")))
    return cells


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
    "regime": StudyPlan(name="regime", world=SPECTRAL_WORLD, arms=REGIME_ARMS, conditions=_regime_cells(),
                        contrasts=REGIME_CONTRASTS),
    "text": StudyPlan(
        name="text", world=TEXT_WORLD, arms=["flow_grpo", "grpo_guard"],
        conditions=[Condition("ocr", [], note="OCR proxy (PP-OCRv4 recognition through RapidOCR)")]),
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


def calibration_job(arm: str, overrides: list[str], out: Path, epochs: int, label: str = "") -> RunJob:
    """The calibration run of ``arm``: ``epochs`` epochs with clipping off, no evaluation, into ``out``."""
    return RunJob(arm, (*overrides, f"train.epochs={epochs}", "loss.clip_range=1e9", "eval.every=0",
                        "log.image_every=0", "log.checkpoint_every=0", "train.grad_norm_every=0",
                        "monitor.enabled=false"), out, label=label or f"calibrate {arm}")


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
    """Run the whole plan into ``out`` and write ``study.json``, ``study.md``, a report per condition and
    the study's regime figure (:func:`~grpo_guard.report.figures.fig_clip_vs_regime`). ``workers`` > 1
    trains that many runs side by side (:mod:`grpo_guard.parallel`), across conditions: first every
    calibration, then every training run. Returns the path of ``study.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    extra = list(extra or [])
    (out / "plan.json").write_text(json.dumps({**asdict(plan), "extra": extra}, indent=1))
    t_all = time.perf_counter()
    overrides = {cond.name: [*plan.world, *cond.overrides, *extra] for cond in plan.conditions}
    run_jobs([calibration_job(arm, overrides[cond.name], out / cond.name / f"calibrate_{arm}", plan.calibrate_epochs,
                              label=f"{cond.name}: calibrate {arm}")
              for cond in plan.conditions for arm in plan.arms_of(cond)],
             workers=workers, log=log, prefix="[study]")
    clips = {cond.name: {arm: read_clip(arm, overrides[cond.name], out / cond.name / f"calibrate_{arm}",
                                        plan.calibrate_epochs, log)
                         for arm in plan.arms_of(cond)} for cond in plan.conditions}
    jobs: dict[str, list[RunJob]] = {}
    labels: dict[str, str] = {}
    for cond in plan.conditions:
        jobs[cond.name] = []
        for arm in plan.arms_of(cond):
            clip = [f"loss.clip_range={clips[cond.name][arm]:.6g}"] if clips[cond.name][arm] else []
            for seed in plan.seeds_of(cond):
                run = out / cond.name / f"{arm}_s{seed}"
                jobs[cond.name].append(RunJob(arm, (*overrides[cond.name], *clip, f"seed={seed}"), run,
                                              label=f"{cond.name}: {arm} seed {seed}"))
                labels[str(run)] = ARMS.get(arm, arm)
    run_jobs([job for cond_jobs in jobs.values() for job in cond_jobs], workers=workers, log=log, prefix="[study]")
    results = []
    for cond in plan.conditions:
        cdir = out / cond.name
        run_dirs = [job.run_dir for job in jobs[cond.name]]
        for run in run_dirs:  # each run's summary.json, written by the run, in one line
            log(f"[study] {cond.name}: {format_summary_line(summarise_run(run))}")
        build_report(run_dirs, cdir, title=f"Study {plan.name}: {cond.note or cond.name}", labels=labels,
                     baseline=ARMS.get(plan.baseline, plan.baseline))
        results.append(summarize_condition(plan, cond, cdir, clips[cond.name]))
    fig_clip_vs_regime({ARMS.get(arm, arm): [load_run(job.run_dir) for cond_jobs in jobs.values() for job in cond_jobs
                                             if job.config == arm]
                        for arm in dict.fromkeys(a for c in plan.conditions for a in plan.arms_of(c))},
                       out / REGIME_FIGURE)
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
    runs = {arm: [load_run(cdir / f"{arm}_s{s}") for s in plan.seeds_of(cond)] for arm in plan.arms_of(cond)}
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
        entry["per_step"] = {stat: _seed_mean_profile(rs, stat) for stat in PER_STEP_STATS}
        prof = [r.step_profile("raw_ratio_mean")[1] for r in rs]
        entry["raw_ratio_mean_minus_1_per_step"] = [None if v is None else v - 1
                                                    for v in _seed_mean_profile(rs, "raw_ratio_mean")]
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
    primary = next(((metric, key) for metric, key in golds if metric.primary), golds[0] if golds else None)
    contrasts = []
    for arm, ref in plan.contrasts:
        if primary and runs.get(arm) and runs.get(ref):
            contrasts.append({"arm": arm, "reference": ref, "gold": primary[1], "label": primary[0].label,
                              "matched": matched_gold(runs[arm], runs[ref], primary[1])})
    return {"condition": cond.name, "note": cond.note, "baseline": plan.baseline, "seeds": plan.seeds_of(cond),
            "arms": arms_out, "contrasts": contrasts}


#: the per-step statistics study.json and study.md give per arm (mean over epochs, then over seeds)
PER_STEP_STATS = {"bias_over_spread": "bias/spread", "clip_high_pos": "clip hi A>0", "clip_low_neg": "clip lo A<0"}


def _seed_mean_profile(runs: list, stat: str) -> list[float | None]:
    """The mean over ``runs`` of each run's per-step mean over epochs of ``stat`` (None where no run has a
    value; runs whose step grids differ from the first are left out)."""
    profiles = [r.step_profile(stat)[1] for r in runs]
    profiles = [p for p in profiles if p.size and p.shape == profiles[0].shape]
    if not profiles:
        return []
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no run had the step
        mean = np.nanmean(np.stack(profiles), axis=0)
    return [float(v) if math.isfinite(v) else None for v in mean]


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
        steps = max((len(v) for a in c["arms"].values() for v in a.get("per_step", {}).values()), default=0)
        if steps:
            lines += ["", "Per step (schedule index; mean over epochs, then seeds): the regime of the ratio and the "
                      "clipping by advantage sign.", "",
                      "| arm | statistic | " + " | ".join(str(k) for k in range(steps)) + " |",
                      "|---|---|" + "---|" * steps]
            for a in c["arms"].values():
                for stat, label in PER_STEP_STATS.items():
                    vals = a.get("per_step", {}).get(stat, [])
                    if any(v is not None for v in vals):
                        cells = ["–" if v is None else f"{v:.2f}" for v in vals] + ["–"] * (steps - len(vals))
                        lines.append(f"| {a['label']} | {label} | " + " | ".join(cells) + " |")
        if c.get("contrasts"):
            lines += ["", "Contrasts: one factor changed, the other held; the primary gold at the largest proxy gain "
                      "both arms reached, paired by seed.", "",
                      "| arm | against | gold | matched proxy gain | arm | reference | Δ (paired) |",
                      "|---|---|---|---|---|---|---|"]
            for k in c["contrasts"]:
                m, label = k["matched"], lambda a: ARMS.get(a, a)
                cols = (f"{m['proxy_gain']:.3f} | {_f(m['arm'])} | {_f(m['baseline'])} | {format_paired_diff(m)}"
                        if m else "– | – | – | – (no common gain)")
                lines.append(f"| {label(k['arm'])} | {label(k['reference'])} | {k['label']} (`{k['gold']}`) | {cols} |")
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
