"""The demo: Flow-GRPO and GRPO-Guard on the toy world with the same proxy and seeds, then a report.

``grpo-guard demo`` (the README's main job) makes or loads the base model, trains each method for
each seed into ``OUT/runs/<method>_s<seed>``, and writes ``OUT/report.html`` with its figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

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


def _train_job(method: str, overrides: list[str], run: Path, threads: int | None, log=print) -> float:
    """Train one (method, seed) into ``run`` (resuming an interrupted run); returns its seconds."""
    import torch

    from .config import load_config
    from .train.loop import train

    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(method, overrides)
    t0 = time.perf_counter()
    resume = (run / "metrics.jsonl").is_file() and (run / "checkpoints").is_dir()
    train(cfg, run, resume=resume, log=log)
    return time.perf_counter() - t0


def _worker_job(method: str, overrides: list[str], run: Path, threads: int) -> float:
    """:func:`_train_job` in a worker process: its log lines are prefixed with the run's name."""
    import sys

    return _train_job(method, [*overrides, "log.progress=false"], run, threads,
                      log=lambda msg: print(f"[{run.name}] {msg}", file=sys.stderr, flush=True))


def prepare_world(method: str, overrides: list[str], log=print) -> None:
    """Build (pretrain or load from the cache) the base model, the rewards and the evaluator once, so
    that parallel runs find them cached instead of each building them."""
    import torch

    from .backbones import BackboneContext, build_backbone
    from .config import load_config
    from .rewards import RewardContext, build_evaluator, build_reward

    cfg = load_config(method, overrides)
    cache, dev = Path(cfg.cache_dir).expanduser(), torch.device("cpu")
    t0 = time.perf_counter()
    bb = build_backbone(cfg.backbone.name, cfg.backbone.params, BackboneContext(cache, dev, cfg.seed, verbose=True))
    rctx = RewardContext(cache, dev, cfg.seed, getattr(bb, "image_size", None), verbose=cfg.log.progress)
    for spec in cfg.rewards:
        build_reward(spec.name, spec.params, rctx)
    if cfg.eval.evaluator:
        build_evaluator(cfg.eval.evaluator, cfg.eval.evaluator_params, rctx)
    log(f"[demo] base model and reward models ready ({time.perf_counter() - t0:.0f} s)")


def _epochs_done(run: Path) -> int:
    try:
        return sum(1 for _ in (run / "metrics.jsonl").open())
    except OSError:
        return 0


def run_demo(settings: DemoSettings, log=print) -> Path:
    """Train every (method, seed) and build the report; returns the path of report.html."""
    import os

    from .report import build_report

    out = Path(settings.out)
    jobs = [(m, seed, out / "runs" / f"{m}_s{seed}") for m in settings.methods for seed in settings.seeds]
    cores = os.cpu_count() or 1
    workers = max(1, min(settings.workers or cores, len(jobs)))
    t_all = time.perf_counter()
    if workers == 1:
        for method, seed, run in jobs:
            log(f"[demo] training {method}, seed {seed} -> {run}")
            seconds = _train_job(method, _run_overrides(settings, seed), run, None, log)
            log(f"[demo] {method} seed {seed} done in {seconds:.0f} s")
    else:
        _run_parallel(settings, jobs, workers, max(1, cores // workers), log)
    report = build_report([run for _, _, run in jobs], out)
    log(f"[demo] all done in {time.perf_counter() - t_all:.0f} s")
    return report


def _run_parallel(settings: DemoSettings, jobs, workers: int, threads: int, log) -> None:
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    from .config import load_config

    method0, seed0, _ = jobs[0]
    prepare_world(method0, _run_overrides(settings, seed0), log)
    epochs = {run: load_config(m, _run_overrides(settings, s)).train.epochs for m, s, run in jobs}
    log(f"[demo] training {len(jobs)} runs, {workers} at a time ({threads} torch thread(s) each)")
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_worker_job, m, _run_overrides(settings, s), run, threads): run for m, s, run in jobs}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=20, return_when=FIRST_EXCEPTION)
            for f in done:
                if f.exception() is not None:
                    for g in pending:
                        g.cancel()
                    raise f.exception()
                log(f"[demo] {futures[f].name} done in {f.result():.0f} s")
            if pending:
                left = sorted((futures[f] for f in pending if not f.done()), key=str)
                log("[demo] progress (epochs): " + ", ".join(
                    f"{r.name} {_epochs_done(r)}/{epochs[r]}" if (r / "metrics.jsonl").is_file() else
                    f"{r.name} waiting" for r in left))
