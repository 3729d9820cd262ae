"""Flow-GRPO-Fast's random SDE window against the full trajectory on the toy SD3 world: the training wall time
to the same proxy gain, paired by seed.

    python benchmarks/fast_window.py [--seeds 3] [--epochs 30] [--out runs/fast_window]

For each seed, in this process, one after the other: the full recipe (``grpo_guard``: 9 of the 10 steps
trained) for ``--epochs`` epochs and the Fast recipe (``grpo_guard_fast``: a random window of 2 SDE steps
within the first 5, the rest ODE) for twice as many, both evaluating the proxy every 3 epochs on the same
fixed prompts and noise (8 samples per prompt) with the same sampler, the full SDE grid (the evaluation's
default), so that their proxies compare; the per-step gradient-norm probe is off (a diagnostic whose cost
grows with the trained steps). The target is 80% of the full run's proxy gain (the mean of its last two evaluations minus the base
model's); a run's time to it is the sum of its epochs' training seconds (epoch time minus evaluation time)
up to the first evaluation at or above the target. Prints one line per seed and the ratios; writes
OUT/fast_window.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from grpo_guard.config import load_config
from grpo_guard.train.loop import train

EVERY = 3
COMMON = [f"eval.every={EVERY}", "eval.samples_per_prompt=8", "train.grad_norm_every=0", "log.progress=false",
          "log.image_every=0", "log.checkpoint_every=1000"]


def rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def time_to(rs: list[dict], base: float, target: float) -> float | None:
    """Training seconds up to the first evaluation whose proxy gain reaches ``target``; None if none does."""
    spent = 0.0
    for r in rs:
        spent += r["epoch_seconds"] - r.get("eval_seconds", 0.0)
        if "eval/proxy_reward_mean" in r and r["eval/proxy_reward_mean"] - base >= target:
            return spent
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("runs/fast_window"))
    a = ap.parse_args()
    results = []
    for seed in range(a.seeds):
        runs = {}
        for name, epochs in (("grpo_guard", a.epochs), ("grpo_guard_fast", 2 * a.epochs)):
            out = a.out / f"{name}_seed{seed}"
            if not (out / "metrics.jsonl").is_file():
                train(load_config(name, [*COMMON, f"seed={seed}", f"train.epochs={epochs}"]), out, log=lambda *_: None)
            runs[name] = out
        base = json.loads((runs["grpo_guard"] / "base_eval.json").read_text())["eval/proxy_reward_mean"]
        full = rows(runs["grpo_guard"])
        evals = [r["eval/proxy_reward_mean"] for r in full if "eval/proxy_reward_mean" in r]
        target = 0.8 * (statistics.mean(evals[-2:]) - base)
        t_full, t_fast = time_to(full, base, target), time_to(rows(runs["grpo_guard_fast"]), base, target)
        ratio = t_fast / t_full if t_full and t_fast else None
        results.append({"seed": seed, "base_proxy": base, "target_gain": target, "full_seconds": t_full,
                        "fast_seconds": t_fast, "ratio": ratio})
        print(f"seed {seed}: target gain {target:+.3f}; full {t_full} s, fast {t_fast} s, fast / full "
              f"{'n/a' if ratio is None else f'{ratio:.2f}'}", flush=True)
    ratios = [r["ratio"] for r in results if r["ratio"] is not None]
    summary = {"runs": results, "median_ratio": statistics.median(ratios) if ratios else None,
               "reached": f"{len(ratios)} of {len(results)}"}
    (a.out / "fast_window.json").write_text(json.dumps(summary, indent=1))
    print(f"fast / full time to 80% of the full run's proxy gain: median {summary['median_ratio']}, "
          f"reached in {summary['reached']} seeds")


if __name__ == "__main__":
    main()
