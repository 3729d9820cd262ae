"""In-situ overhead of one ``grpo-guard bench`` setting over more epochs than the full bench runs.

    python benchmarks/insitu_overhead.py toy-mlp-8px [--epochs 40] [--paired]
                                                     [--set KEY=VALUE ...]

Runs the bench's own measurement child (a real ``train()`` with the network clock installed) for one
setting and prints the medians: epoch, rollout, reward, update and network seconds and the in-situ
overhead (epoch / network); with ``--paired``, also ours / the reference-style loop, measured as the
bench does (one reference epoch after each of ours). The tiny-SD3 settings keep their pipeline in
``--out`` (made there on first use).
"""

from __future__ import annotations

from _common import setting_parser
from grpo_guard.bench import setting_spec
from grpo_guard.bench.measure import _run_child


def main() -> None:
    ap = setting_parser(epochs=40)
    ap.add_argument("--paired", action="store_true", help="also run the reference-style loop, paired")
    a = ap.parse_args()
    r = _run_child(setting_spec(a.setting, a.out, a.epochs, a.set, reference=a.paired))
    print(f"{a.setting}, {r['epochs']} epochs (medians after the first): "
          + ", ".join(f"{k} {r[k]:.4f}" for k in ("epoch_s", "rollout_s", "reward_s", "update_s", "network_s"))
          + f"; in-situ overhead {r['insitu_overhead']:.3f}")
    if a.paired:
        pairs = r["ours_over_reference_pairs"]
        print(f"ours / reference {r['ours_over_reference']:.3f} (median of {len(pairs)} pairs, range "
              f"{min(pairs):.3f}-{max(pairs):.3f}), reference epoch {r['ref_epoch_s']:.4f} s, "
              f"max loss diff {r['max_loss_diff']:.1e}")


if __name__ == "__main__":
    main()
