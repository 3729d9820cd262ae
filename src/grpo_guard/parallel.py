"""Train several independent runs, one after the other or side by side in worker processes.

Used by ``grpo-guard demo`` and ``grpo-guard study``. Each job is a config name plus overrides and a
run directory; a finished run is skipped, an interrupted one resumes from its newest checkpoint, and
a run directory left without a checkpoint is started again. With ``workers`` > 1 every run trains in
its own (spawned) process with ``threads`` torch threads: on a 2-core machine two 1-thread runs side by
side gave 15-23% more throughput than one 2-thread run (docs/benchmarks.md), whereas two 2-thread
processes slow each other down many times over.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from . import stopping
from .backbones import BackboneContext, build_backbone
from .config import load_config
from .rewards import RewardContext, build_evaluator, build_reward
from .train.loop import train
from .train.runlog import MetricsLog

__all__ = ["RunJob", "run_jobs", "default_workers", "is_complete", "build_world_cache", "train_job"]


@dataclass(frozen=True)
class RunJob:
    """One training run: ``load_config(config, overrides)`` trained into ``run_dir``."""

    config: str
    overrides: tuple[str, ...]
    run_dir: Path
    label: str = ""
    quiet: bool = True  # no progress bar and no log lines from the run itself

    @property
    def name(self) -> str:
        return self.label or self.run_dir.name


def _epochs_done(run_dir: Path) -> int:
    """Distinct epochs in ``run_dir``'s metrics (0 without a metrics file; torn lines ignored)."""
    rows = MetricsLog(run_dir / "metrics.jsonl").rows()
    return len({r["epoch"] for r in rows if isinstance(r, dict) and isinstance(r.get("epoch"), int)})


def is_complete(run_dir: Path, epochs: int) -> bool:
    """``run_dir``'s metrics hold all ``epochs`` epochs of the run."""
    return _epochs_done(run_dir) >= epochs


def default_workers(num_jobs: int) -> int:
    """One worker per job, up to the number of cores."""
    return max(1, min(os.cpu_count() or 1, num_jobs))


def train_job(job: RunJob, threads: int | None = None, log: Callable[[str], None] = print, *,
              progress_bar: bool = True) -> float:
    """Train ``job`` (resume when it has a checkpoint; start again when its directory holds none);
    returns the seconds it took. ``progress_bar`` False turns the run's bar off (worker processes)."""
    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(job.config, list(job.overrides))
    if job.quiet or not progress_bar:
        cfg.log.progress = False
    t0 = time.perf_counter()
    resume = (job.run_dir / "metrics.jsonl").is_file() and (job.run_dir / "checkpoints").is_dir()
    if job.run_dir.exists() and not resume:
        shutil.rmtree(job.run_dir)
    train(cfg, job.run_dir, resume=resume, log=(lambda *_: None) if job.quiet else log)
    return time.perf_counter() - t0


def build_world_cache(cfg, name: str, log: Callable[[str], None] = print) -> None:
    """Build the base model, rewards and evaluator of ``cfg`` (a :class:`RunConfig`) once in this process
    (pretraining them into the cache when they are not there), so that parallel runs load them instead
    of each building them."""
    cache, dev = Path(cfg.cache_dir).expanduser(), torch.device("cpu")
    t0 = time.perf_counter()
    bb = build_backbone(cfg.backbone.name, cfg.backbone.params,
                        BackboneContext(cache, dev, cfg.seed, verbose=False, log=log))
    rctx = RewardContext(cache, dev, cfg.seed, getattr(bb, "image_size", None), verbose=False, log=log)
    for spec in cfg.rewards:
        build_reward(spec.name, spec.params, rctx)
    if cfg.eval.evaluator:
        build_evaluator(cfg.eval.evaluator, cfg.eval.evaluator_params, rctx)
    seconds = time.perf_counter() - t0
    if seconds >= 1:  # worth a line (an analytic world, or one loaded from the cache at once, is not)
        log(f"base model and reward models for {name} ready ({seconds:.0f} s)")


def _world_key(cfg) -> str:
    """What decides which cached models a run builds."""
    return repr((cfg.cache_dir, cfg.seed, cfg.backbone, cfg.rewards, cfg.eval.evaluator, cfg.eval.evaluator_params))


def _init_worker() -> None:
    """A worker ignores SIGINT: Ctrl-C in a terminal reaches the whole process group, and the parent passes
    the stop on (as SIGTERM) itself, so that each worker sees one signal, not two (the second would make
    it exit without its checkpoint). Its SIGTERM handler lasts as long as the process, so that the runs
    queued to it after a stop do not start."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stopping.install_for_process((signal.SIGTERM,))


def _worker(job: RunJob, threads: int) -> float:
    stopping.raise_if_requested()  # a run queued to this worker before the stop reached it
    return train_job(job, threads, log=lambda msg: print(f"[{job.name}] {msg}", file=sys.stderr, flush=True),
                     progress_bar=False)


def _pool_pids(pool) -> list[int]:
    return [p.pid for p in list((getattr(pool, "_processes", None) or {}).values())]


def _stop_pool(futures: dict, pending: set, log, prefix: str) -> None:
    """After a stop signal (already passed on to the workers): cancel the runs not started, wait for the
    running ones to checkpoint and exit, then raise :class:`~grpo_guard.stopping.StopRequested`."""
    for f in pending:
        f.cancel()
    running = [f for f in pending if not f.cancelled()]
    log(f"{prefix} stopping: {len(running)} run(s) in flight checkpoint and stop")
    wait(running)
    signum = stopping.stop_signal() or signal.SIGTERM
    raise stopping.StopRequested(signum, f"training {len(futures)} runs (the runs in flight checkpointed)")


def _progress_line(prefix: str, jobs: list[tuple[RunJob, int]], all_running: bool = False) -> str:
    """One progress line for ``(job, epochs)`` pairs: the epochs logged by each run that has started (every
    one with ``all_running``), then how many are waiting."""
    started = [(j, e) for j, e in jobs if all_running or (j.run_dir / "metrics.jsonl").is_file()]
    waiting = len(jobs) - len(started)
    return (f"{prefix} progress (epochs): " + ", ".join(f"{j.name} {_epochs_done(j.run_dir)}/{e}" for j, e in started)
            + (f"{'; ' if started else ''}{waiting} run(s) waiting" if waiting else ""))


@contextmanager
def _progress_lines(job: RunJob, epochs: int, log: Callable[[str], None], prefix: str, every: float) -> Iterator[None]:
    """While the block trains ``job`` in this process: a progress line every ``every`` seconds from a
    background thread (epochs logged so far), for a quiet run, which prints nothing itself."""
    if not job.quiet:
        yield
        return
    done = threading.Event()

    def report() -> None:
        while not done.wait(every):
            log(_progress_line(prefix, [(job, epochs)], all_running=True))

    thread = threading.Thread(target=report, name="progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def run_jobs(jobs: Sequence[RunJob], *, workers: int = 1, log: Callable[[str], None] = print,
             prefix: str = "[run]", progress_every: float = 20.0) -> dict[Path, float | None]:
    """Train every job not finished yet; returns ``{run_dir: seconds}`` (None for runs already done).
    ``workers`` 1 trains in this process; more start that many spawned worker processes, each with
    ``cores // workers`` torch threads, and log a progress line every ``progress_every`` seconds. The
    first failing run's exception is raised once the runs in flight have stopped. A stop signal
(:mod:`grpo_guard.stopping`) is passed on to the workers; the runs not started are cancelled, the
running ones checkpoint and stop, and then :class:`~grpo_guard.stopping.StopRequested` is raised."""

    seconds: dict[Path, float | None] = {}
    todo, configs = [], {}
    for job in jobs:
        cfg = load_config(job.config, list(job.overrides))  # bad overrides fail here, before any run starts
        if is_complete(job.run_dir, cfg.train.epochs):
            log(f"{prefix} {job.name}: done already")
            seconds[job.run_dir] = None
        else:
            todo.append((job, cfg.train.epochs))
            configs[job.run_dir] = cfg
    workers = max(1, min(workers, len(todo)))
    if workers == 1:
        for job, epochs in todo:
            log(f"{prefix} training {job.name} -> {job.run_dir}")
            with stopping.phase(f"training {job.name}"), _progress_lines(job, epochs, log, prefix, progress_every):
                seconds[job.run_dir] = train_job(job, None, log)
            log(f"{prefix} {job.name} done in {seconds[job.run_dir]:.0f} s")
        return seconds


    worlds = {}
    for job, _ in todo:  # each distinct world is built once here, not by two workers at the same time
        worlds.setdefault(_world_key(configs[job.run_dir]), job)
    for job in worlds.values():
        with stopping.phase("building the base model and the reward models"):
            build_world_cache(configs[job.run_dir], job.name, log=lambda msg: log(f"{prefix} {msg}"))
    threads = max(1, (os.cpu_count() or 1) // workers)
    log(f"{prefix} training {len(todo)} runs, {workers} at a time ({threads} torch thread(s) each)")
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker) as pool, \
            stopping.register_children(lambda: _pool_pids(pool)), stopping.deferred():
        futures = {pool.submit(_worker, job, threads): (job, epochs) for job, epochs in todo}
        pending = set(futures)
        last_progress = time.monotonic()
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)  # a stop is polled twice a second
            if stopping.requested():
                _stop_pool(futures, pending, log, prefix)
            for f in done:
                job, _ = futures[f]
                if f.exception() is not None:
                    for g in pending:
                        g.cancel()
                    raise f.exception()
                seconds[job.run_dir] = f.result()
                log(f"{prefix} {job.name} done in {seconds[job.run_dir]:.0f} s")
            if pending and time.monotonic() - last_progress >= progress_every:
                last_progress = time.monotonic()
                left = sorted((futures[f] for f in pending), key=lambda je: str(je[0].run_dir))
                log(_progress_line(prefix, left))
    return seconds
