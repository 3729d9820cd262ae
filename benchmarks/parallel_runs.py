"""Two runs side by side with one torch thread each against one run with two threads (the demo's
``--workers`` choice on a 2-core machine). Uses ``grpo-guard bench``'s measurement child.

    python benchmarks/parallel_runs.py [SETTING] [--epochs 8]

Prints the median epoch time and the wall time of: one 2-thread run alone, one 1-thread run alone,
two 1-thread runs at once. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from grpo_guard.bench.settings import _COMMON, SETTINGS


def _start(config: str, overrides: list[str], threads: int, name: str) -> subprocess.Popen:
    spec = {"name": name, "config": config, "threads": threads, "overrides": overrides}
    return subprocess.Popen([sys.executable, "-m", "grpo_guard.bench", "_one", json.dumps(spec)],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _result(p: subprocess.Popen) -> dict:
    out = p.communicate()[0]
    if p.returncode != 0:
        sys.exit(f"a measurement failed (exit code {p.returncode})")
    return json.loads(out.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("setting", nargs="?", default="toy-sd3-32px",
                    choices=[n for n, (_, ov) in SETTINGS.items() if "{tiny_sd3}" not in " ".join(ov)])
    ap.add_argument("--epochs", type=int, default=8)
    a = ap.parse_args()
    config, ov = SETTINGS[a.setting]
    overrides = [*ov, *_COMMON, f"train.epochs={a.epochs}"]
    for label, threads, n in (("one run, 2 threads", 2, 1), ("one run, 1 thread", 1, 1), ("two runs, 1 thread each", 1, 2)):
        t0 = time.perf_counter()
        results = [_result(p) for p in [_start(config, overrides, threads, f"{label}-{i}") for i in range(n)]]
        epochs = ", ".join(f"{r['epoch_s']:.3f}" for r in results)
        print(f"{label}: epoch {epochs} s (median after warm-up); wall {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
