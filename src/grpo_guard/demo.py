"""The demo: Flow-GRPO and GRPO-Guard in two worlds with the same proxy and seeds, then reports and a
one-screen summary per world.

``grpo-guard demo`` (the README's main job):

1. the digits world: makes or loads the base model, trains each method for each seed into
   ``OUT/runs/<method>_s<seed>``;
2. the multi-route spectral world (where the docs find GRPO-Guard's gain on the true attribute): each
   method's clip range calibrated on its own ratio as in ``grpo-guard study``, then each method for each
   seed into ``OUT/spectral/runs/<method>_s<seed>`` (tens of seconds);
3. prints each world's summary (:mod:`grpo_guard.report.world_summary`), writes it to
   ``OUT/summary.txt`` and at the top of ``OUT/report.html`` (digits) and ``OUT/spectral/report.html``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .parallel import RunJob, default_workers, run_jobs
from .report import build_report, load_runs
from .report.world_summary import format_world_summary, summarise_world
from .study import ARMS, PRESETS, SPECTRAL_WORLD, calibration_job, read_clip

__all__ = ["DemoSettings", "run_demo"]

#: the world of the full demo and of the quick (CI) demo, as config overrides. The full demo uses the
#: diffusers SD3 transformer on a 16-channel latent of 32 x 32 digits (D = 1024) so that two methods x
#: two seeds fit in about ten minutes on two CPU cores; the study world (64 x 64, D = 4096) is the
#: configs' default.
FULL_WORLD: list[str] = [
    "backbone.params={net: sd3, resolution: 32, layout: latent16, pretrain_steps: 1000, generator: {batch_size: 64}}",
    "sample.prompts_per_epoch=4", "sample.group_size=8", "train.epochs=50", "train.lr=1e-3",
    "train.inner_epochs=2", "eval.every=5", "eval.samples_per_prompt=8", "log.image_every=10",
    "train.grad_norm_every=5",
]
QUICK_WORLD = [
    "backbone.params={net: mlp, resolution: 8, layout: pixels, pretrain_steps: 300}",
    "sample.prompts_per_epoch=4", "sample.group_size=4", "eval.samples_per_prompt=4", "log.image_every=2",
    "eval.every=1",
]


@dataclass
class DemoSettings:
    out: Path
    methods: tuple[str, ...] = ("flow_grpo", "grpo_guard")
    seeds: tuple[int, ...] = (0, 1)
    epochs: int | None = None
    quick: bool = False
    overrides: list[str] = field(default_factory=list)
    #: runs trained at once, each in its own process with cores // workers torch threads (None: one per
    #: run up to the number of cores). On 2 cores two 1-thread runs side by side gave 15-23% more
    #: throughput than one 2-thread run (docs/benchmarks.md).
    workers: int | None = None


def _run_overrides(settings: DemoSettings, seed: int) -> list[str]:
    world = QUICK_WORLD if settings.quick else FULL_WORLD
    epochs = settings.epochs or (4 if settings.quick else None)
    return [*world, f"seed={seed}", *([f"train.epochs={epochs}"] if epochs else []), *settings.overrides]


#: the spectral world of the demo: the study's (D = 4096, two-route proxy), and the tests' tiny one for --quick
SPECTRAL_DEMO_WORLD = SPECTRAL_WORLD
SPECTRAL_QUICK_WORLD = PRESETS["tiny"].world
CALIBRATION_EPOCHS = 4


def _spectral_jobs(settings: DemoSettings, out: Path, log) -> list[RunJob]:
    """The spectral comparison's runs, each method's clip calibrated first (skipped when done already)."""
    world = [*(SPECTRAL_QUICK_WORLD if settings.quick else SPECTRAL_DEMO_WORLD), *settings.overrides]
    epochs = 2 if settings.quick else CALIBRATION_EPOCHS
    workers = settings.workers or default_workers(len(settings.methods))
    run_jobs([calibration_job(m, world, out / f"calibrate_{m}", epochs) for m in settings.methods], workers=workers,
             log=log, prefix="[demo spectral]")
    jobs = []
    for m in settings.methods:
        clip = read_clip(m, world, out / f"calibrate_{m}", epochs, log=log)
        over = [*world, *([f"loss.clip_range={clip:.6g}"] if clip else [])]
        jobs += [RunJob(m, (*over, f"seed={seed}"), out / "runs" / f"{m}_s{seed}", label=f"{m} seed {seed}")
                 for seed in settings.seeds]
    return jobs


def run_demo(settings: DemoSettings, log=print) -> Path:
    """Train every (world, method, seed), build the reports and print the summaries; returns the path of the
    digits world's report.html."""
    out = Path(settings.out)
    jobs = [RunJob(m, tuple(_run_overrides(settings, seed)), out / "runs" / f"{m}_s{seed}", quiet=False)
            for m in settings.methods for seed in settings.seeds]
    t_all = time.perf_counter()
    run_jobs(jobs, workers=settings.workers or default_workers(len(jobs)), log=log, prefix="[demo]")
    spectral_out = out / "spectral"
    spectral = _spectral_jobs(settings, spectral_out, log)
    run_jobs(spectral, workers=settings.workers or default_workers(len(spectral)), log=log, prefix="[demo spectral]")
    labels = {str(j.run_dir): ARMS.get(j.config, j.config) for j in spectral}
    worlds = [("digits world (classifier proxy)", [j.run_dir for j in jobs], None),
              ("spectral world (two-route proxy)", [j.run_dir for j in spectral], labels)]
    summary = "\n\n".join("\n".join(format_world_summary(summarise_world(load_runs(runs, labels=lab)), name))
                           for name, runs, lab in worlds)
    (out / "summary.txt").write_text(summary + "\n")
    build_report([j.run_dir for j in spectral], spectral_out, labels=labels, preface=summary,
                 title="GRPO-Guard demo: the spectral world (two-route proxy)")
    report = build_report([job.run_dir for job in jobs], out, preface=summary + "\n\n(the spectral world's report: "
                          "spectral/report.html)", title="GRPO-Guard demo: the digits world (classifier proxy)")
    log(f"[demo] all done in {time.perf_counter() - t_all:.0f} s")
    print(summary, flush=True)
    return report
