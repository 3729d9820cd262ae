"""Does the SDE window cut the update in proportion to the trained steps? The network's share and the
loop's share, measured apart, on the bench's toy-sd3-32px world.

    python benchmarks/sde_window.py [--pairs 3] [--epochs 6]

1. Isolated: one training forward + backward of a minibatch (16 samples, CFG: 2 rows each) at 9 trained
   steps (288 rows) and at 4 (128 rows), alternating, 6 times each; the median seconds and their ratio.
2. In situ: ``--pairs`` pairs of real ``train()`` runs in this process, all steps then
   ``sample.sde_window=[0, 5]``; per pair, the median update seconds per epoch (after the first), the
   seconds of the training calls (forward with gradient and backward) inside them, and what is left,
   the loop's own update time. The machine's speed drifts between runs; the per-call ratio and the
   loop's share say what the window changes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from grpo_guard.backbones import BackboneContext, build_backbone
from grpo_guard.bench import SETTINGS, setting_spec, wrap_network
from grpo_guard.config import load_config
from grpo_guard.train.loop import train

WINDOW = "sample.sde_window=[0, 5]"


def isolated(repeat: int = 6) -> dict[int, float]:
    cfg = load_config("grpo_guard", SETTINGS["toy-sd3-32px"][1])
    bb = build_backbone(cfg.backbone.name, cfg.backbone.params,
                        BackboneContext(Path(cfg.cache_dir).expanduser(), torch.device("cpu"), cfg.seed, False))
    cond = bb.encode_prompts([f"a handwritten {i % 10}" for i in range(16)])
    bb.train()

    def call(steps: int) -> float:
        rows = 16 * steps
        x, sig = torch.randn(rows, *bb.latent_shape), torch.full((rows,), 0.5)
        t0 = time.perf_counter()
        bb(x, sig, cond.index(torch.arange(rows) % 16), cfg.sample.guidance_scale).square().mean().backward()
        bb.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    call(9), call(4)  # warm-up
    times: dict[int, list[float]] = {9: [], 4: []}
    for _ in range(repeat):
        for steps in times:
            times[steps].append(call(steps))
    return {steps: statistics.median(v) for steps, v in times.items()}


def in_situ(extra: list[str], epochs: int, calls: list) -> tuple[float, float]:
    """(median update seconds, median seconds of training calls) per epoch after the first."""
    calls.clear()
    spec = setting_spec("toy-sd3-32px", Path("runs/bench"), epochs, ["log.checkpoint_every=0", *extra])
    cfg = load_config(spec["config"], spec["overrides"])
    with tempfile.TemporaryDirectory() as d:
        train(cfg, Path(d) / "run", log=lambda *_: None)
        rows = [json.loads(line) for line in open(Path(d) / "run" / "metrics.jsonl")]
    per_epoch = [sum(t for e, t in calls if e == i) for i in range(1, len(rows))]
    return statistics.median(r["update_seconds"] for r in rows[1:]), statistics.median(per_epoch)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=6)
    a = ap.parse_args()
    torch.set_num_threads(2)
    iso = isolated()
    print(f"isolated training call: 9 steps {iso[9]:.3f} s, 4 steps {iso[4]:.3f} s, ratio {iso[4] / iso[9]:.3f} "
          f"(steps ratio {4 / 9:.3f})")
    calls: list[tuple[int, float]] = []  # (epoch, seconds) of every training forward and backward
    epoch = [0]

    def wrap(fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            if torch.is_grad_enabled() and getattr(fn, "__name__", "") in ("forward", "backward"):
                calls.append((epoch[0], time.perf_counter() - t0))
            return out
        return timed

    def next_epoch(row):
        epoch[0] = row["epoch"] + 1

    wrap_network(wrap, after_append=next_epoch)
    for _ in range(a.pairs):
        res = {}
        for name, extra in (("all steps", []), ("window", [WINDOW])):
            epoch[0] = 0
            res[name] = in_situ(extra, a.epochs, calls)
        (fu, fc), (hu, hc) = res["all steps"], res["window"]
        print(f"update s: all steps {fu:.3f}, window {hu:.3f}, ratio {hu / fu:.3f}; training calls {fc:.3f} / "
              f"{hc:.3f}, ratio {hc / fc:.3f}; the loop's own update time {1e3 * (fu - fc):.0f} / "
              f"{1e3 * (hu - hc):.0f} ms", flush=True)


if __name__ == "__main__":
    main()
