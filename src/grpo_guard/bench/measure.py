"""The measurements of ``grpo-guard bench``: speed and memory of the training loop against the model's own compute (the
floor) and against a reference-style loop, plus scaling, the training-forward row and memory bounds,
memory over many epochs and the SDE window.

Every measurement runs in its own subprocess (a clean peak-RSS figure) and prints one JSON line; the
parent collects them into ``OUT/bench.json``, prints a table and draws ``OUT/bench.png``. Definitions:

* epoch time: ``epoch_seconds`` of real ``train()`` epochs (evaluation, grad-norm probe and image
  grids off; one checkpoint at the end), the median over the epochs after the first (warm-up); the
  settings in ``EPOCH_FACTOR`` run that many times the epochs;
* floor (isolated): the same number of network calls on the same shapes, timed alone (median of 5):
  the prompt encoding, the rollout's forward calls (no gradient) and the VAE/decoder, plus the
  update's forward + backward calls with the loop's own grouping of steps and samples per call
  (``train.max_forward_rows`` and ``train.max_forward_mb``); overhead = epoch time / floor;
* network time (in situ): the seconds spent inside the backbone's ``encode_prompts``, ``forward``
  and ``decode`` and in ``torch.autograd.backward`` during those same real epochs (median); in-situ
  overhead = epoch time / network time. The isolated floor (identical calls repeated alone) and the
  network time inside real epochs differ by up to 40% either way on a small CPU; the in-situ figure
  is the one that says what the loop adds, and the targets are judged on it;
* reference-style loop: Flow-GRPO's structure, written here on the same functions: the rollout, then
  per minibatch ONE network call per trained step (the minibatch's CFG rows concatenated, as Flow-GRPO
  does for SD3), the loss and a backward per step, a reference forward per step when the KL is on, one
  optimizer step per minibatch; no diagnostics. Its losses equal ours to float tolerance (checked and
  reported). It is measured PAIRED with ours, in a child of its own: after each of our epochs, one
  reference epoch on its own copy of the model (the network clock paused), so that both see the same
  machine load; ours / reference is the median of the per-epoch ratios (after the first pair). On a
  shared 2-core machine, timings of separate runs drifted by up to 40% between consecutive runs, which
  an unpaired ratio of two medians inherits. The table's other figures come from a child without the
  reference, so its peak RSS is ours alone;
* device: the runs train where ``train()`` trains (CUDA when torch sees one, else the CPU), and the floor
  and the reference-style loop run there too. On CUDA every clock waits for the device before it is
  read (``torch.cuda.synchronize``), so the network clock also stops the loop's work from overlapping
  the network's kernels: the in-situ overhead read there is an upper bound. Peak CUDA memory is reported
  beside the peak RSS, and the memory run also records the memory allocated on the device;
* SDE window: the update time of the toy SD3 world with ``sample.sde_window=[0, 5]`` (4 trained steps)
  over that with all 9: two children run in turns, one epoch each (``WINDOW_EPOCHS`` each), the median of
  the per-epoch ratios after the first epoch. Children run one after the other drifted apart by up to 25%.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..backbones import BackboneContext, build_backbone
from ..config import load_config
from ..core import group_advantages
from ..prompts import draw_epoch_indices, load_prompt_set
from ..rewards import RewardContext, build_reward, weighted_sum
from ..seeding import derive_generator
from ..train import context, runlog
from ..train.forward_memory import rows_for_budget
from ..train.loop import train
from ..train.rollout import per_sample_noise, rollout
from ..train.runlog import atomic_write_text
from ..train.schedule import StepSchedule
from ..train.update import build_optimizer, forward_chunks, gather_step_batch, row_bound, step_batch_loss
from .figure import fig_bench
from .settings import (EPOCH_FACTOR, LOSS_TOLERANCE, MEMORY_WARMUP_EPOCHS, PROMPTS, SETTINGS, BenchError,
                       make_spec, prepare_out, targets)

__all__ = ["run_bench", "wrap_network", "after_each_row", "bench_device", "forward_memory_sweep", "window_ratio",
           "FORWARD_MB", "CHILDREN"]







# ---- the child: one measurement --------------------------------------------------------------------

def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_device():
    """The device the measured runs train on, by ``train()``'s own rule: CUDA when torch sees one, else the
    CPU. The floor and the reference-style loop run there too, and the clocks wait for it (:func:`_sync`)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device) -> None:
    """Wait for the work queued on ``device`` (CUDA runs asynchronously: a clock read without this would
    time the kernel launches, not the kernels); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gpu_mb(device) -> float | None:
    """Peak CUDA memory allocated by this process (MB), None on the CPU."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def _autocast(device, mixed_precision: str):
    """The autocast ``train()`` runs its rollout and training forward under (accelerate's, for
    ``train.mixed_precision``): bf16 / fp16 on ``device``, nothing for "no"."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _timeit(fn, *, device, repeat: int = 5) -> float:
    """Median seconds of ``repeat`` calls of ``fn`` (the work queued on ``device`` included)."""
    times = []
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


class _NetworkClock:
    """Seconds spent in the network during real training: wraps the backbone that ``train()`` builds
    (``forward``, ``decode``) and ``torch.autograd.backward``; ``per_epoch`` holds one total per
    metrics row (the clock restarts at each row)."""

    def __init__(self, device):
        self.device = device  # on CUDA each timed call waits for the queued work before and after it
        self.total, self.per_epoch = 0.0, []
        self.paused = False
        self.after_row = None  # called with each metrics row, clock paused (the paired reference epoch)

    def _timed(self, fn):
        def wrapper(*a, **k):
            _sync(self.device)
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                if not self.paused:
                    _sync(self.device)
                    self.total += time.perf_counter() - t0
        return wrapper

    def install(self) -> None:
        def append(row):
            self.per_epoch.append(self.total)
            if self.after_row is not None:
                self.paused = True
                try:
                    self.after_row(row)
                finally:
                    self.paused = False
            self.total = 0.0

        wrap_network(self._timed, after_append=append)


def wrap_network(wrap, after_append=None) -> None:
    """Wrap, in this process, the network calls of every backbone that ``train()`` builds (``forward``,
    ``decode``, ``encode_prompts``) and ``torch.autograd.backward`` with ``wrap`` (a decorator); call
    ``after_append(row)`` after each metrics row is written. The bench's network clock and
    ``benchmarks/loop_ops.py`` draw the network's boundary with it."""
    real_build = context.build_backbone

    def build(*a, **k):
        bb = real_build(*a, **k)
        bb.forward, bb.decode, bb.encode_prompts = wrap(bb.forward), wrap(bb.decode), wrap(bb.encode_prompts)
        return bb

    context.build_backbone = build
    torch.autograd.backward = wrap(torch.autograd.backward)
    if after_append is not None:
        after_each_row(after_append)


def after_each_row(callback) -> None:
    """Call ``callback(row)`` in this process after each metrics row that ``train()`` writes."""
    real_append = runlog.MetricsLog.append

    def append(log_self, row):
        real_append(log_self, row)
        callback(row)

    runlog.MetricsLog.append = append


def _child_run(setting_json: str):
    """A measurement child's ``(spec, config)``, with torch's threads set as the spec says."""
    spec = json.loads(setting_json)
    torch.set_num_threads(spec.get("threads", 2))
    return spec, load_config(spec["config"], spec["overrides"])


def _floor(cfg, mb_per_row: float | None, device) -> dict:
    """Seconds of the model's own calls for one epoch of ``cfg`` on ``device`` (see the module docstring),
    the training calls grouped as the loop groups them (``mb_per_row``: the run's measured activations per
    row, for ``train.max_forward_mb``)."""
    s, t = cfg.sample, cfg.train
    bb = build_backbone(cfg.backbone.name, cfg.backbone.params,
                        BackboneContext(Path(cfg.cache_dir).expanduser(), device, cfg.seed, False)).to(device)
    b = s.prompts_per_epoch * s.group_size
    # prompts_per_epoch distinct prompts, each repeated group_size times, as in an epoch
    prompts = [f"a handwritten {i // s.group_size % 10}" if cfg.prompts.source == "digits" else
               f"{PROMPTS[i // s.group_size % len(PROMPTS)]} ({i // s.group_size})" for i in range(b)]
    cond = bb.encode_prompts(prompts)
    x = torch.randn(b, *bb.latent_shape, device=device)
    sig = torch.full((b,), 0.5, device=device)
    k_steps, t_steps = s.num_steps, len(cfg.trained_step_indices())

    def rollout_calls():
        bb.eval()
        with torch.no_grad():
            bb.encode_unique_prompts(prompts)
            with _autocast(device, t.mixed_precision):  # as train(): the rollout's calls, not the encoders and VAE
                for _ in range(k_steps):
                    for i in range(0, b, s.batch_size):
                        bb(x[i:i + s.batch_size], sig[i:i + s.batch_size], cond.index(slice(i, i + s.batch_size)),
                           s.guidance_scale)
            bb.decode(x)

    cfg_copies = 1 if s.guidance_scale == 1 else 2
    n = b // t.updates_per_epoch
    idx = torch.arange(n)
    xu = torch.randn(n * t_steps, *bb.latent_shape, device=device)
    sigu = torch.full((n * t_steps,), 0.5, device=device)
    condu = cond.index(torch.arange(n * t_steps) % b)

    bound = row_bound(t.max_forward_rows, t.max_forward_mb, mb_per_row * 2**20 if mb_per_row else None)

    def update_calls():
        bb.train()
        for _ in range(t.updates_per_epoch * t.inner_epochs):
            for sub, js in forward_chunks(idx, t_steps, cfg_copies, bound):
                rows = sub.numel() * len(js)
                with _autocast(device, t.mixed_precision):
                    v = bb(xu[:rows], sigu[:rows], condu.index(slice(0, rows)), s.guidance_scale)
                v.float().square().mean().backward()
            bb.zero_grad(set_to_none=True)

    rollout_calls()
    update_calls()  # warm-up
    return {"rollout_floor_s": _timeit(rollout_calls, device=device),
            "update_floor_s": _timeit(update_calls, device=device)}


class _ReferenceLoop:
    """The reference-style loop (module docstring) on its own backbone, optimizer and reward models,
    built from ``cfg`` exactly as ``train()`` builds ours (same seed, so the same initial weights) on
    ``device``; :meth:`epoch` runs one epoch and returns ``(seconds, mean loss)``."""

    def __init__(self, cfg, device):
        self.cfg, self.device = cfg, device
        torch.manual_seed(cfg.seed)
        cache = Path(cfg.cache_dir).expanduser()
        self.bb = build_backbone(cfg.backbone.name, cfg.backbone.params,
                                 BackboneContext(cache, device, cfg.seed, False)).to(device)
        rctx = RewardContext(cache, device, cfg.seed, getattr(self.bb, "image_size", None), verbose=False)
        self.rewards = {r.name: build_reward(r.name, r.params, rctx) for r in cfg.rewards}
        self.proxy_w = {r.name: r.weight for r in cfg.rewards if r.role == "proxy"}
        self.params = self.bb.trainable_parameters()
        self.opt = build_optimizer(self.params, cfg.train)
        self.all_prompts = load_prompt_set(cfg.prompts.source, cfg.prompts.path)
        s = cfg.sample
        self.schedule = StepSchedule(self.bb.sigmas(s.num_steps, s.shift).to(device), cfg.trained_step_indices(),
                                     list(range(s.num_steps)), s.noise_level, s.sde_type)

    def epoch(self, epoch: int) -> tuple[float, float]:
        cfg, bb, schedule, device = self.cfg, self.bb, self.schedule, self.device
        s, t, lo = cfg.sample, cfg.train, cfg.loss
        b = s.prompts_per_epoch * s.group_size
        _sync(device)
        t0 = time.perf_counter()
        ep_prompts = draw_epoch_indices(len(self.all_prompts), s.prompts_per_epoch, cfg.seed, epoch)
        perm = torch.randperm(b, generator=derive_generator(cfg.seed, "minibatch", epoch))
        prompts, metadata = self.all_prompts.take([ep_prompts[int(i) // s.group_size] for i in perm])
        bb.eval()
        cond = bb.encode_prompts(prompts)
        noise = per_sample_noise(cfg.seed, "rollout", epoch, perm.tolist(), s.num_steps + 1, bb.latent_shape)
        velocity = lambda x, sg, c: bb(x, sg, c, s.guidance_scale)  # noqa: E731

        def reference(x, sg, c):
            with bb.reference():
                return bb(x, sg, c, s.guidance_scale)

        with _autocast(device, t.mixed_precision):
            traj = rollout(velocity, cond, noise, schedule, reduction=lo.reduction, batch_size=s.batch_size,
                           device=device)
        images = bb.decode(traj.final).float().cpu()
        vals = {k: self.rewards[k](images, prompts, metadata).float() for k in self.proxy_w}
        adv = group_advantages(weighted_sum(vals, self.proxy_w), perm // s.group_size, std_mode=t.adv_std,
                               eps=t.adv_eps, clip_max=t.adv_clip_max).advantages.to(device)
        bb.train()
        n_steps = len(schedule.trained_steps)
        ep_loss, count = 0.0, 0
        for _ in range(t.inner_epochs):
            for idx in torch.arange(b, device=device).chunk(t.updates_per_epoch):
                losses = []  # read once per minibatch, as Flow-GRPO logs its per-step statistics
                for j in range(n_steps):  # one call and one backward per trained step, as Flow-GRPO's loop
                    with _autocast(device, t.mixed_precision):  # as ours: the forward and the loss
                        step = gather_step_batch(traj, idx, [j], cond, adv, schedule)
                        loss, _ = step_batch_loss(velocity, step, schedule, lo, reference)
                    (loss / n_steps).backward()
                    losses.append(loss.detach())
                ep_loss += float(torch.stack(losses).double().sum())
                count += len(losses)
                torch.nn.utils.clip_grad_norm_(self.params, t.max_grad_norm)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, ep_loss / count




def _loss_agreement(ours: list[float], ref: list[float], mixed_precision: str) -> dict:
    """How the two loops' per-epoch losses are compared. In float32 every epoch, to ``LOSS_TOLERANCE``.
    Under bf16 / fp16 autocast only epoch 0, to 1% of its loss: the two loops start from the same weights,
    but half-precision rounding differs between a batched call and per-step calls, and the two trainings
    drift apart from the first update on (on the MLP world under bf16, epoch 0 agreed to 5e-5 of the loss,
    later epochs differed by as much as the losses themselves)."""
    diffs = [abs(a - b) for a, b in zip(ours, ref)]
    if mixed_precision == "no":
        return {"max_loss_diff": float(max(diffs)), "loss_epochs_compared": len(diffs),
                "loss_tolerance": LOSS_TOLERANCE}
    return {"max_loss_diff": float(diffs[0]), "loss_epochs_compared": 1,
            "loss_tolerance": max(0.01 * abs(ours[0]), LOSS_TOLERANCE)}


def _child(setting_json: str) -> dict:
    spec, cfg = _child_run(setting_json)
    out: dict = {"name": spec["name"]}
    device = bench_device()
    clock = _NetworkClock(device)
    clock.install()
    ref_epochs: list[tuple[float, float]] = []
    if spec.get("reference"):  # paired: one reference epoch after each of ours, under the same machine load
        ref = _ReferenceLoop(cfg, device)
        clock.after_row = lambda row: ref_epochs.append(ref.epoch(row["epoch"]))
    with tempfile.TemporaryDirectory() as d:
        cfg.log.checkpoint_every = 0
        train(cfg, Path(d) / "run", log=lambda *_: None)
        rows = [json.loads(x) for x in (Path(d) / "run" / "metrics.jsonl").read_text().splitlines()]
    for row, net in zip(rows, clock.per_epoch):
        row["network_seconds"] = net
    steady = rows[1:] if len(rows) > 1 else rows
    median = lambda k: float(np.median([r[k] for r in steady]))  # noqa: E731
    out.update({"epochs": len(rows), "epoch_s": median("epoch_seconds"), "rollout_s": median("rollout_seconds"),
                "reward_s": median("reward_seconds"), "update_s": median("update_seconds"),
                "network_s": median("network_seconds"),
                "insitu_overhead": float(np.median([r["epoch_seconds"] / r["network_seconds"] for r in steady])),
                "epoch_s_all": [r["epoch_seconds"] for r in rows],
                "losses": [r.get("loss") for r in rows], "peak_rss_mb": _peak_rss_mb(),
                "peak_gpu_mb": _peak_gpu_mb(device), "device": device.type,
                "mixed_precision": cfg.train.mixed_precision,
                "forward_mb_per_row": rows[0].get("forward_mb_per_row"),
                "rss_curve_mb": None})
    s = cfg.sample
    b = s.prompts_per_epoch * s.group_size
    t_steps = len(cfg.trained_step_indices())
    out["images_per_s"] = b / out["rollout_s"]
    out["denoise_steps_per_s"] = b * s.num_steps / out["rollout_s"]
    out["trained_steps_per_s"] = b * t_steps * cfg.train.inner_epochs / out["update_s"]
    if spec.get("floor"):
        out.update(_floor(cfg, out["forward_mb_per_row"], device))
        out["overhead"] = out["epoch_s"] / (out["rollout_floor_s"] + out["update_floor_s"])
    if spec.get("reference"):
        pairs = [r["epoch_seconds"] / sec for r, (sec, _) in zip(rows, ref_epochs)]
        pairs = pairs[1:] or pairs  # the first pair is warm-up unless it is the only one
        out.update({"ref_epoch_s": float(np.median([sec for sec, _ in ref_epochs[1:] or ref_epochs])),
                    "ref_losses": [loss for _, loss in ref_epochs],
                    "ours_over_reference": float(np.median(pairs)), "ours_over_reference_pairs": pairs,
                    **_loss_agreement(out["losses"], [loss for _, loss in ref_epochs], cfg.train.mixed_precision)})
    return out



#: epochs of each configuration in the SDE-window measurement (the two runs take turns epoch by epoch)
WINDOW_EPOCHS = 16


def _turn_child(setting_json: str) -> dict:
    """One real ``train()`` run that works only in turns given by the parent (:func:`_run_in_turns`): it
    waits for a line on stdin before its set-up and after each metrics row, and prints each row's timings
    as a JSON line (``{"row": ...}``) when the row is written."""
    spec, cfg = _child_run(setting_json)
    cfg.log.checkpoint_every = 0

    def report_and_wait(row):
        timings = {k: row[k] for k in ("epoch", "epoch_seconds", "rollout_seconds", "update_seconds")}
        print(json.dumps({"row": {**timings, "written_at": time.time()}}), flush=True)
        sys.stdin.readline()

    after_each_row(report_and_wait)
    sys.stdin.readline()
    with tempfile.TemporaryDirectory() as d:
        train(cfg, Path(d) / "run", log=lambda *_: None)
    return {"name": spec["name"], "peak_rss_mb": _peak_rss_mb()}


def _next_json_line(stream) -> dict | None:
    """The next line of ``stream`` that is a JSON object (other output is skipped); None at its end."""
    for line in stream:
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(msg, dict):
            return msg
    return None


def _run_in_turns(specs: list[dict]) -> list[list[dict]]:
    """Real ``train()`` runs of ``specs``, each in its own process, one epoch at a time in turn (epoch k of
    each run, then epoch k + 1 of each, ...; set-up and the final checkpoint in turns too), so that epoch
    k of every run meets the same machine load and ratios between the runs epoch by epoch carry none of
    the drift between consecutive processes. A waiting process blocks on a pipe and takes no CPU. Returns
    each run's metrics rows (``epoch``, ``epoch_seconds``, ``rollout_seconds``, ``update_seconds``, and
    ``written_at``: the Unix time the row was written)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    rows: list[list[dict]] = [[] for _ in specs]
    with tempfile.TemporaryDirectory() as d:
        errs = [open(Path(d) / f"stderr{i}", "w+") for i in range(len(specs))]
        procs = [subprocess.Popen([sys.executable, "-m", "grpo_guard.bench", "_turn", json.dumps(sp)], text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env)
                 for sp, err in zip(specs, errs)]
        try:
            live = list(range(len(specs)))
            while live:
                for i in list(live):
                    p = procs[i]
                    try:
                        p.stdin.write("go\n")
                        p.stdin.flush()
                    except BrokenPipeError:  # it has exited: its output and exit code tell how
                        pass
                    msg = _next_json_line(p.stdout)
                    if msg is not None and "row" in msg:
                        rows[i].append(msg["row"])
                        continue
                    live.remove(i)
                    if p.wait() != 0 or msg is None:
                        errs[i].seek(0)
                        raise _child_failed(specs[i], errs[i].read(), p.returncode)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
            for e in errs:
                e.close()
    return rows


def window_ratio(update_s: list[list[float]]) -> dict:
    """The SDE-window figures from the runs' per-epoch update seconds ``[all steps, window]``:
    the median of the per-epoch ratios window / all steps after the first epoch (warm-up), each run's median
    update seconds over the same epochs, and the ratios themselves."""
    full, half = (u[1:] or u for u in update_s)
    ratios = [h / f for f, h in zip(full, half)]
    return {"full_update_s": float(np.median(full)), "half_update_s": float(np.median(half)),
            "update_ratio": float(np.median(ratios)), "update_ratio_epochs": ratios}


def _memory_child(setting_json: str) -> dict:
    """RSS (and, on CUDA, the memory allocated on the device) at epoch 0, after the warm-up and every 20
    epochs over a long run (memory must stay flat)."""
    spec, cfg = _child_run(setting_json)
    device = bench_device()
    curve, gpu_curve = [], []

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def sample(row):
        if row.get("epoch", 0) % 20 == 0 or row.get("epoch") == MEMORY_WARMUP_EPOCHS:
            curve.append((row["epoch"], rss_mb()))
            if device.type == "cuda":
                gpu_curve.append((row["epoch"], torch.cuda.memory_allocated(device) / 2**20))

    after_each_row(sample)
    with tempfile.TemporaryDirectory() as d:
        train(cfg, Path(d) / "run", log=lambda *_: None)
    return {"name": spec["name"], "rss_curve_mb": curve, "peak_rss_mb": _peak_rss_mb(),
            "gpu_curve_mb": gpu_curve or None, "peak_gpu_mb": _peak_gpu_mb(device)}


# ---- the parent ------------------------------------------------------------------------------------

def _run_child(spec: dict, kind: str = "one") -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "grpo_guard.bench", f"_{kind}", json.dumps(spec)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise _child_failed(spec, r.stderr, r.returncode)
    return json.loads(r.stdout.strip().splitlines()[-1])


def _child_failed(spec: dict, stderr: str, returncode: int) -> BenchError:
    """The error of a failed measurement child: its setting and its last line on stderr."""
    lines = stderr.strip().splitlines()
    return BenchError(f"bench: {spec['name']} failed: {lines[-1] if lines else f'exit code {returncode}'}")


def _with_epochs(spec: dict, epochs: int) -> dict:
    """``spec`` with ``train.epochs`` set to ``epochs`` (whatever the user's overrides said)."""
    return {**spec, "overrides": [o for o in spec["overrides"] if not o.startswith("train.epochs")]
            + [f"train.epochs={epochs}"]}








def _fit_exponent(xs, ys) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def run_bench(out: Path, *, epochs: int = 6, quick: bool = False, overrides: list[str] | None = None,
              settings: list[str] | None = None, log=print) -> dict:
    """All measurements (see the module docstring) into ``out/bench.json``, drawn in ``out/bench.png``
    (:func:`grpo_guard.bench.figure.fig_bench`); returns the results.
    ``overrides`` (``KEY=VALUE`` config overrides) apply to every measured run, after the settings'.
    ``quick``: toy-mlp-8px and a 40-epoch memory run only. ``settings``: only these settings' main
    measurements (floor, in situ, paired reference), none of the sweeps, the SDE window or the memory run
    (for a short time on a GPU); unknown names raise ``ValueError``."""
    out = Path(out)
    unknown = sorted(set(settings or []) - set(SETTINGS))
    if unknown:
        raise ValueError(f"settings: unknown {', '.join(unknown)} (known: {', '.join(SETTINGS)})")
    names = list(settings) if settings else ["toy-mlp-8px"] if quick else list(SETTINGS)
    extras = not quick and not settings  # the sweeps and the SDE window, on settings of their own
    tiny, prompts = prepare_out(out, names)

    def spec(name, config, setting_overrides, **kw):
        return make_spec(name, config, setting_overrides, tiny=tiny, prompts=prompts, epochs=epochs,
                         user_overrides=overrides or [], **kw)

    res: dict = {"machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]}, "epochs": epochs,
                 "date": time.strftime("%Y-%m-%d"), "settings": [], "scaling": {}, "forward_rows": None,
                 "forward_mb": None,
                 "memory": None, "sde_window": None}

    device = bench_device()
    res["machine"].update({"torch": torch.__version__, "device": device.type if device.type != "cuda"
                           else torch.cuda.get_device_name(device)})
    for name in names:
        config, ov = SETTINGS[name]
        n_epochs = epochs * EPOCH_FACTOR.get(name, 1)
        log(f"[bench] {name} ({n_epochs} epochs)")
        r = _run_child(_with_epochs(spec(name, config, ov, floor=True), n_epochs))
        log(f"[bench] {name}: paired with the reference-style loop")
        paired = _run_child(_with_epochs(spec(name, config, ov, reference=True), n_epochs))
        r.update({k: paired[k] for k in ("ref_epoch_s", "ref_losses", "ours_over_reference",
                                          "ours_over_reference_pairs", "max_loss_diff", "loss_epochs_compared",
                                          "loss_tolerance")})
        r["paired_epoch_s"] = float(np.median(paired["epoch_s_all"][1:]))
        res["settings"].append(r)
    if extras:
        base_cfg, base_ov = SETTINGS["toy-sd3-32px"]
        axes = {"group_size": ("sample.group_size", [4, 8, 16]), "num_steps": ("sample.num_steps", [5, 10, 20]),
                "resolution": (None, [16, 32, 64])}
        for axis, (key, values) in axes.items():
            pts = []
            for v in values:
                log(f"[bench] scaling {axis}={v}")
                if axis == "resolution":  # a short pretraining: the weights do not change the timing
                    ov = [f"backbone.params={{net: sd3, resolution: {v}, layout: latent16, pretrain_steps: 100, "
                          "generator: {batch_size: 64}}", *base_ov[1:]]
                else:
                    ov = [*base_ov, f"{key}={v}"]
                r = _run_child(spec(f"scaling-{axis}-{v}", base_cfg, ov))
                pts.append({"value": v, "epoch_s": r["epoch_s"], "peak_rss_mb": r["peak_rss_mb"]})
            xs = [p["value"] for p in pts]
            res["scaling"][axis] = {"points": pts, "time_exponent": _fit_exponent(xs, [p["epoch_s"] for p in pts]),
                                    "memory_exponent": _fit_exponent(xs, [p["peak_rss_mb"] for p in pts])}
        res["forward_rows"] = []
        for name in ("toy-sd3-32px", "sd3-tiny-64px"):
            config, ov = SETTINGS[name]
            for rows in (0, 128, 512):
                log(f"[bench] {name} train.max_forward_rows={rows}")
                ov_rows = [o for o in ov if not o.startswith("train.max_forward")]
                r = _run_child(spec(f"{name}-rows-{rows}", config, [*ov_rows, f"train.max_forward_rows={rows}",
                                                                   "train.max_forward_mb=0"]))
                res["forward_rows"].append({"setting": name, "max_forward_rows": rows, "epoch_s": r["epoch_s"],
                                            "update_s": r["update_s"], "peak_rss_mb": r["peak_rss_mb"]})
        res["forward_mb"] = forward_memory_sweep(spec, log=log)
        log("[bench] SDE window")
        variants = (("window-full", []), ("window-half", ["sample.sde_window=[0, 5]"]))
        full, half = _run_in_turns([_with_epochs(spec(name, base_cfg, [*base_ov, *extra]), WINDOW_EPOCHS)
                                    for name, extra in variants])
        res["sde_window"] = {**window_ratio([[r["update_seconds"] for r in full], [r["update_seconds"] for r in half]]),
                             "trained_steps": [9, 4], "steps_ratio": 4 / 9, "epochs": WINDOW_EPOCHS}
    if not settings:
        mem_epochs = 40 if quick else 200
        log(f"[bench] memory over {mem_epochs} epochs")
        mem_cfg, mem_ov = SETTINGS["toy-mlp-8px"]
        res["memory"] = _run_child(_with_epochs(spec(f"memory-{mem_epochs}", mem_cfg, mem_ov), mem_epochs),
                                   kind="memory")
    res["targets"] = [{"target": t, "measured": fig, "met": ok} for t, fig, ok in targets(res)]
    atomic_write_text(out / "bench.json", json.dumps(res, indent=1))
    fig_bench(res, out / "bench.png")  # after the JSON: a failing figure loses no measurement
    return res


#: train.max_forward_mb values of the memory-bound sweep (toy-sd3-32px: 32 rows per trained step)
FORWARD_MB = (16, 64, 256)


def forward_memory_sweep(spec, budgets=FORWARD_MB, log=print) -> list[dict]:
    """toy-sd3-32px with ``train.max_forward_mb`` at each budget (no row bound): the measured MiB of saved
    activations per row, the rows per call it allows, update seconds and peak RSS. ``spec(name, config,
    overrides)`` makes a measurement's spec (as in :func:`run_bench`)."""
    config, ov = SETTINGS["toy-sd3-32px"]
    ov = [o for o in ov if not o.startswith("train.max_forward")]
    out = []
    for mb in budgets:
        log(f"[bench] toy-sd3-32px train.max_forward_mb={mb}")
        r = _run_child(spec(f"toy-sd3-32px-mb-{mb}", config, [*ov, "train.max_forward_rows=0",
                                                             f"train.max_forward_mb={mb}"]))
        per_row = r["forward_mb_per_row"]
        out.append({"max_forward_mb": mb, "mb_per_row": per_row, "rows": rows_for_budget(mb, per_row * 2**20),
                    "epoch_s": r["epoch_s"], "update_s": r["update_s"], "peak_rss_mb": r["peak_rss_mb"]})
    return out


#: the measurement children ``python -m grpo_guard.bench KIND SPEC_JSON`` runs (each prints one JSON line)
CHILDREN = {"_one": _child, "_memory": _memory_child, "_turn": _turn_child}
