"""Pretrain a toy generator and measure it: sample accuracy by CFG scale, route survival, and the cost
of a training forward and backward. The figures of docs/toy_generator.md come from it.

    python benchmarks/toy_generator.py --net sd3 --resolution 64 --layout latent16 --steps 700 \
        --batch-size 32 --cache-dir /tmp/tg/cache
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict

import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from torch import Tensor

from grpo_guard.backbones.toy import ToyBackbone
from grpo_guard.core.schedule import flow_sigmas
from grpo_guard.world.data import NUM_CLASSES, make_splits, prompt_for_label
from grpo_guard.world.generator import NET_TYPES, GeneratorConfig, checkerboard, euler_sample, pretrain, route_survival
from grpo_guard.world.latents import LAYOUTS, images_to_latents


def reference_classifier(split_seed: int):
    """LogisticRegression on 8x8 digits of the non-base splits; returns predict(images (B,1,R,R) in [-1,1])."""

    sp = make_splits(8, seed=split_seed)
    x = torch.cat([sp.proxy.images, sp.gold.images, sp.heldout.images]).flatten(1).numpy()
    y = torch.cat([sp.proxy.labels, sp.gold.labels, sp.heldout.labels]).numpy()
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(x, y)

    def predict(images: Tensor) -> Tensor:
        small = F.adaptive_avg_pool2d(images.clamp(-1, 1), 8)
        return torch.from_numpy(clf.predict(small.flatten(1).numpy()))

    return predict


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="pretrain a toy generator and measure it")
    ap.add_argument("--net", default="mlp", choices=NET_TYPES)
    ap.add_argument("--resolution", type=int, default=8)
    ap.add_argument("--layout", default="pixels", choices=LAYOUTS)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--data-noise", type=float, default=0.0)
    ap.add_argument("--conv-channels", default="16,32,64")
    ap.add_argument("--sd3-layers", type=int, default=4)
    ap.add_argument("--sd3-patch-size", type=int, default=2)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--cost", action="store_true", help="also time a CFG fwd+bwd at batch 96 (LoRA r8 and full)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = GeneratorConfig(net=a.net, resolution=a.resolution, layout=a.layout, steps=a.steps,
                          batch_size=a.batch_size, lr=a.lr, data_noise=a.data_noise,
                          conv_channels=tuple(int(c) for c in a.conv_channels.split(",")), sd3_layers=a.sd3_layers,
                          sd3_patch_size=a.sd3_patch_size)
    state, rep = pretrain(cfg, a.cache_dir, log=lambda s: print(s, file=sys.stderr, flush=True))
    out: dict = {"config": asdict(cfg), "pretrain_seconds": round(rep.seconds, 1), "final_loss": rep.final_loss,
                 "net_params": rep.net_params, "from_cache": rep.from_cache}
    bb = ToyBackbone(state)
    sig = flow_sigmas(10, 3.0)
    labels = torch.arange(a.samples) % NUM_CLASSES
    cond = bb.encode_prompts([prompt_for_label(int(i)) for i in labels])
    noise = torch.randn((a.samples, *bb.latent_shape), generator=torch.Generator().manual_seed(123))
    predict = reference_classifier(cfg.split_seed)
    t0 = time.perf_counter()
    for w in (1.0, 2.0, 3.0, 4.5):
        with torch.no_grad():
            x = euler_sample(lambda z, s: bb(z, s, cond, w), noise, sig)
        img = bb.decode(x) * 2 - 1
        out[f"acc_cfg{w}"] = float((predict(img) == labels).float().mean())
    out["sample_seconds_4x"] = round(time.perf_counter() - t0, 1)
    n = min(40, a.samples)
    sub = cond.index(slice(0, n))
    vfn = lambda z, s: bb(z, s, sub, a.cfg)  # noqa: E731
    hf = images_to_latents(0.1 * checkerboard(cfg.resolution), cfg.layout)
    lf = images_to_latents(0.1 * torch.ones(1, 1, cfg.resolution, cfg.resolution), cfg.layout)
    ks = list(range(9))
    out["survival_hf"] = [round(v, 3) for v in route_survival(vfn, noise[:n], sig, hf, ks)]
    out["survival_lf"] = [round(v, 3) for v in route_survival(vfn, noise[:n], sig, lf, ks)]
    if a.cost:
        for mode in ("lora", "full"):
            b = ToyBackbone(state, lora_rank=8 if mode == "lora" else None)
            c96 = b.encode_prompts([prompt_for_label(i % 10) for i in range(96)])
            z = torch.randn(96, *b.latent_shape)
            s = torch.rand(96)
            times = []
            for _ in range(4):
                t1 = time.perf_counter()
                b(z, s, c96, 3.0).square().mean().backward()
                times.append(time.perf_counter() - t1)
            out[f"fwd_bwd_b96_{mode}_s"] = round(min(times[1:]), 4)
            out[f"trainable_{mode}"] = sum(p.numel() for p in b.trainable_parameters())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
