"""Why the loop's small operations cost more inside training than in a micro-benchmark.

    python benchmarks/cold_cache.py [--setting toy-mlp-8px] [--repeat 300]

Times one rollout-shaped SDE step (:func:`grpo_guard.sde_step`, no gradient) of the setting's world
several ways: back to back (a warm loop), right after one of the backbone's own forward calls (what the
rollout does every step), and right after other work that touches memory or leaves the core: a copy of
32 MiB and of 2 MiB, 5 ms of pure Python, a 5 ms sleep. It prints the median microseconds of each.
On the project's 2-core machine the step took several times longer after a network call than back to
back; the copies show that evicting the caches alone reproduces it (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from grpo_guard.backbones import BackboneContext, build_backbone
from grpo_guard.bench import SETTINGS, setting_spec
from grpo_guard.config import load_config
from grpo_guard.core import SDECoefficients, sde_coefficients, sde_step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--setting", choices=list(SETTINGS), default="toy-mlp-8px")
    ap.add_argument("--repeat", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path("runs/bench"), help="where bench keeps its tiny SD3 pipeline")
    a = ap.parse_args()
    torch.set_num_threads(2)
    spec = setting_spec(a.setting, a.out, 2, [])
    cfg = load_config(spec["config"], spec["overrides"])
    s = cfg.sample
    bb = build_backbone(cfg.backbone.name, cfg.backbone.params,
                        BackboneContext(Path(cfg.cache_dir).expanduser(), torch.device("cpu"), cfg.seed, False)).eval()
    b = s.prompts_per_epoch * s.group_size
    cond = bb.encode_prompts([f"a handwritten {i % 10}" if cfg.prompts.source == "digits" else "a red cube"
                              for i in range(b)])
    x, eps = torch.randn(b, *bb.latent_shape), torch.randn(b, *bb.latent_shape)
    sigmas = bb.sigmas(s.num_steps, s.shift)
    table = sde_coefficients(sigmas[:-1], sigmas[1:], s.noise_level)
    coef = SDECoefficients(*(t[3] for t in table))
    sig = sigmas[3].expand(b)
    big, big_dst = torch.randn(8 * 2**20), torch.empty(8 * 2**20)  # 32 MiB
    small, small_dst = big[: 2**19], big_dst[: 2**19]  # 2 MiB

    def python_5ms():
        t_end = time.perf_counter() + 0.005
        while time.perf_counter() < t_end:
            pass

    with torch.no_grad():
        v = bb(x, sig, cond, s.guidance_scale)
        before = {
            "back to back (warm)": lambda: None,
            "after a network forward": lambda: bb(x, sig, cond, s.guidance_scale),
            "after a 32 MiB copy": lambda: big_dst.copy_(big),
            "after a 2 MiB copy": lambda: small_dst.copy_(small),
            "after 5 ms of Python": python_5ms,
            "after a 5 ms sleep": lambda: time.sleep(0.005),
        }
        print(f"{a.setting}: one SDE step of {b} samples x {tuple(bb.latent_shape)}, median of {a.repeat}")
        for name, fn in before.items():
            times = []
            for _ in range(a.repeat):
                fn()
                t0 = time.perf_counter()
                sde_step(v, x, sigmas[3], sigmas[4], s.noise_level, noise=eps, check_inputs=False, coefficients=coef)
                times.append(time.perf_counter() - t0)
            print(f"  {name:26s} {np.median(times) * 1e6:8.1f} us")


if __name__ == "__main__":
    main()
