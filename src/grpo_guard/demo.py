"""The demo: Flow-GRPO and GRPO-Guard on the toy world with the same proxy and seeds, then a report.

``grpo-guard demo`` (the README's main job) makes or loads the base model, trains each method for
each seed into ``OUT/runs/<method>_s<seed>``, and writes ``OUT/report.html`` with its figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .parallel import RunJob, default_workers, run_jobs
from .report import build_report

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


def run_demo(settings: DemoSettings, log=print) -> Path:
    """Train every (method, seed) and build the report; returns the path of report.html."""
    out = Path(settings.out)
    jobs = [RunJob(m, tuple(_run_overrides(settings, seed)), out / "runs" / f"{m}_s{seed}", quiet=False)
            for m in settings.methods for seed in settings.seeds]
    t_all = time.perf_counter()
    run_jobs(jobs, workers=settings.workers or default_workers(len(jobs)), log=log, prefix="[demo]")
    report = build_report([job.run_dir for job in jobs], out)
    log(f"[demo] all done in {time.perf_counter() - t_all:.0f} s")
    return report
