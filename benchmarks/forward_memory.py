"""The training forward's memory bound alone: ``grpo-guard bench``'s ``train.max_forward_mb`` sweep on
toy-sd3-32px (MiB of saved activations per row as measured by the loop, the rows per call that each
budget allows, update seconds, peak RSS), without the rest of the bench.

    python benchmarks/forward_memory.py [--mb 16 64 256] [--epochs 6] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from grpo_guard.bench import FORWARD_MB, forward_memory_sweep, make_spec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, nargs="+", default=list(FORWARD_MB))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    a = ap.parse_args()

    def spec(name, config, overrides):
        return make_spec(name, config, overrides, tiny=Path("unused"), prompts=Path("unused"), epochs=a.epochs,
                         user_overrides=a.set)

    for p in forward_memory_sweep(spec, a.mb):
        print(f"max_forward_mb {p['max_forward_mb']:g}: {p['mb_per_row']:.3g} MiB per row -> {p['rows']} rows "
              f"per call; epoch {p['epoch_s']:.2f} s, update {p['update_s']:.2f} s, peak RSS {p['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
