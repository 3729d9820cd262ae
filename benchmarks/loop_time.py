"""Where the training loop's own time goes, measured in place: per-epoch milliseconds of the network and
of the loop's named parts during a real ``train()`` of one ``grpo-guard bench`` setting.

    python benchmarks/loop_time.py toy-mlp-8px [--epochs 40] [--set KEY=VALUE ...]

The backbone's ``forward`` / ``decode`` / ``encode_prompts`` and ``torch.autograd.backward`` (the bench's
in-situ network clock) and the functions listed in ``PARTS`` are wrapped with a ``perf_counter`` timer
(about 1 us per call). It prints the median over the epochs after the first of each timer, in ms per
epoch and in % of the network's time: for a part, its own time, without the network calls made inside it
(the rollout's velocity calls, the training forward); parts nested in another part indented under it
(and included in its time); and what no timer covers ("loop, untimed"). A profiler that samples
(py-spy) shares the 2 cores with the run and delays the threads of the operations it interrupts; these
timers do not.
"""

from __future__ import annotations

import collections
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import setting_config, setting_parser
from grpo_guard.backbones import base
from grpo_guard.bench import after_each_row
from grpo_guard.train import context, epoch, loop, rollout, runlog, update

#: (label, module, attribute, parent label or None): the parts timed, where the loop looks them up
PARTS = [
    ("per-sample noise", epoch, "per_sample_noise", None),
    ("mode switches (train / eval)", base.Backbone, "train", None),
    ("rollout()", epoch, "rollout", None),
    ("sde_step", rollout, "sde_step", "rollout()"),
    ("log-probs", rollout, "gaussian_log_prob", "rollout()"),
    ("checks", rollout, "check_finite", "rollout()"),
    ("advantages", epoch, "group_advantages", None),
    ("update_policy()", epoch, "update_policy", None),
    ("entry loss (gathers, SDE step, loss)", update, "_entry_loss", "update_policy()"),
    ("policy_loss", update, "policy_loss", "update_policy()"),
    ("sde_step", update, "sde_step", "update_policy()"),
    ("gradient clip", update, "clip_grad_norm_", "update_policy()"),
    ("per-step ratio diagnostics", epoch, "per_step_ratio_stats", None),
    ("metrics row written", runlog.MetricsLog, "append", None),
]
NETWORK = ["network: rollout calls and decode (no grad)", "network: training forward and prompt encoding",
           "network: backward"]


def main() -> None:
    ap = setting_parser(epochs=40)
    a = ap.parse_args()
    cfg = setting_config(ap, a, min_epochs=2)

    acc: collections.Counter = collections.Counter()
    per_epoch: list[dict] = []
    network_total = [0.0]  # network seconds so far: a part's own time excludes the network calls made inside it

    def timed(label, fn):
        def wrapper(*args, **kwargs):
            t0, n0 = time.perf_counter(), network_total[0]
            try:
                return fn(*args, **kwargs)
            finally:
                acc[label] += time.perf_counter() - t0 - (network_total[0] - n0)
        return wrapper

    real_backward = torch.autograd.backward

    def network(fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                kind = 2 if fn is real_backward else (1 if torch.is_grad_enabled() else 0)
                elapsed = time.perf_counter() - t0
                acc[NETWORK[kind]] += elapsed
                network_total[0] += elapsed
        return wrapper

    labels = {}
    for label, owner, attr, parent in PARTS:
        key = f"{parent} / {label}" if parent else label
        labels[key] = parent
        setattr(owner, attr, timed(key, getattr(owner, attr)))
    reward_keys = []
    real_build_reward, real_build_backbone = context.build_reward, context.build_backbone

    def build_reward(name, *args, **kwargs):
        reward_keys.append(f"reward {name}")
        return timed(f"reward {name}", real_build_reward(name, *args, **kwargs))

    def build_backbone(*args, **kwargs):
        bb = real_build_backbone(*args, **kwargs)
        bb.forward, bb.decode, bb.encode_prompts = network(bb.forward), network(bb.decode), network(bb.encode_prompts)
        return bb

    context.build_reward, context.build_backbone = build_reward, build_backbone
    torch.autograd.backward = network(real_backward)

    def row_written(row):
        per_epoch.append({**acc, "epoch": row["epoch_seconds"]})
        acc.clear()

    after_each_row(row_written)
    with tempfile.TemporaryDirectory() as d:
        loop.train(cfg, Path(d) / "run", log=lambda *_: None)

    steady = per_epoch[1:]
    top = [k for k, parent in labels.items() if parent is None] + reward_keys
    for r in steady:
        r["network"] = sum(r.get(k, 0.0) for k in NETWORK)
        r["loop, untimed"] = r["epoch"] - r["network"] - sum(r.get(k, 0.0) for k in top)

    def med(key):
        return float(np.median([r.get(key, 0.0) for r in steady])) * 1e3

    net = med("network")
    print(f"{a.setting}: medians of {len(steady)} epochs after the first, ms per epoch (% of the network's time)")
    print(f"  epoch                                          {med('epoch'):8.2f}   in-situ overhead "
          f"{float(np.median([r['epoch'] / r['network'] for r in steady])):.3f}")
    print(f"  network                                        {net:8.2f}")
    for k in NETWORK:
        print(f"    {k:44s} {med(k):8.2f}")
    rows = [(k, None) for k in reward_keys] + list(labels.items()) + [("loop, untimed", None)]
    for key, parent in rows:
        if parent is None:
            print(f"  {key:46s} {med(key):8.2f}  ({100 * med(key) / net:4.1f}%)")
            for child, p in labels.items():
                if p == key:
                    print(f"    {child[len(key) + 3:]:44s} {med(child):8.2f}  ({100 * med(child) / net:4.1f}%)")


if __name__ == "__main__":
    main()
