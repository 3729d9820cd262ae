"""Where an epoch's time goes: cProfile over a few training epochs of one ``grpo-guard bench`` setting.

    python benchmarks/profile_epoch.py toy-sd3-32px [--epochs 4] [--top 30] [--out DIR]

Prints the functions with the largest cumulative and own time (the first epoch, warm-up, included).
"""

from __future__ import annotations

import cProfile
import pstats
import tempfile
from pathlib import Path

from _common import setting_config, setting_parser
from grpo_guard.train.loop import train


def main() -> None:
    ap = setting_parser(epochs=4)
    ap.add_argument("--top", type=int, default=30)
    a = ap.parse_args()
    cfg = setting_config(ap, a)
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
