"""Epoch and evaluation time of the spectral world at a grid side N (D = N^2), with the study's settings
(10 prompts x 12 samples, 10 SDE steps, 8 updates per batch, evaluation on 10 x 50 samples).

    python benchmarks/spectral_epoch.py [--n 256] [--epochs 6] [--threads 1]

Trains one Flow-GRPO run in a subprocess (evaluating the base model, then once more at the last epoch)
and prints the median over the epochs after the first of the rollout, reward, update and epoch times,
and the evaluation's time. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from grpo_guard.study import SPECTRAL_WORLD


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256, help="grid side (D = n^2)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the run")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        sets = [*SPECTRAL_WORLD, f"backbone.params.n={a.n}", f"train.epochs={a.epochs}", f"eval.every={a.epochs}",
                "log.checkpoint_every=0", "log.progress=false", "train.grad_norm_every=0"]
        cmd = [sys.executable, "-m", "grpo_guard", "train", "--config", "flow_grpo", "--output-dir", str(run)]
        for s in sets:
            cmd += ["--set", s]
        env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"the run failed (exit code {done.returncode}):\n{done.stderr[-2000:]}")
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    timed = rows[1:]
    print(f"spectral world, D = {a.n * a.n}, {a.threads} thread(s), {len(timed)} epochs after the first:")
    for key in ("rollout_seconds", "reward_seconds", "update_seconds"):
        print(f"  {key[:-8]:8s} {statistics.median(r[key] for r in timed):7.3f} s")
    print(f"  epoch    {statistics.median(r['epoch_seconds'] - r.get('eval_seconds', 0.0) for r in timed):7.3f} s "
          f"(without evaluation)")
    print(f"  evaluation (500 samples) {rows[-1]['eval_seconds']:.2f} s")


if __name__ == "__main__":
    main()
