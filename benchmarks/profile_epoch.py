"""Where an epoch's time goes: cProfile over a few training epochs of one ``grpo-guard bench`` setting.

    python benchmarks/profile_epoch.py toy-sd3-32px [--epochs 4] [--top 30] [--out DIR]

Prints the functions with the largest cumulative and own time (the first epoch, warm-up, included).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
from pathlib import Path

import torch

from grpo_guard.bench import SETTINGS, setting_spec
from grpo_guard.config import load_config
from grpo_guard.train.loop import train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("setting", choices=list(SETTINGS))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("runs/bench"), help="where bench keeps its tiny SD3 pipeline")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    a = ap.parse_args()
    torch.set_num_threads(2)
    spec = setting_spec(a.setting, a.out, a.epochs, ["log.checkpoint_every=0", *a.set])
    cfg = load_config(spec["config"], spec["overrides"])
    prof = cProfile.Profile()
    with tempfile.TemporaryDirectory() as d:
        prof.enable()
        train(cfg, Path(d) / "run", log=lambda *_: None)
        prof.disable()
    st = pstats.Stats(prof)
    st.sort_stats("cumulative").print_stats(a.top)
    st.sort_stats("tottime").print_stats(a.top)


if __name__ == "__main__":
    main()
