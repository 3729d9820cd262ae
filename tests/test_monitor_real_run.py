"""The over-optimization monitor on a real hacking run: Flow-GRPO on the demo's toy world."""

import json

import pytest

from grpo_guard.config import load_config
from grpo_guard.demo import FULL_WORLD
from grpo_guard.train.loop import train


@pytest.mark.slow
def test_monitor_flags_a_real_hacking_run_and_keeps_the_best_gold_weights(tmp_path):
    # patience 1: the monitor fires at the first evaluation 10% below the best gold while the proxy still rises
    # (in this 50-epoch run the gold crosses that line at the last evaluation, epoch 49)
    cfg = load_config("flow_grpo", [*FULL_WORLD, "seed=0", f"cache_dir={tmp_path / 'cache'}", "monitor.patience=1",
                                    "log.progress=false", "train.grad_norm_every=0", "log.image_every=0"])
    run = train(cfg, tmp_path / "run", log=lambda *_: None)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("gold_normalized_avg") is not None]
    best = max(evals, key=lambda r: r["gold_normalized_avg"])
    last = rows[-1]
    # the proxy rose while the gold fell from its peak: implicit over-optimization
    assert last["eval/proxy_reward_mean"] > best["eval/proxy_reward_mean"]
    assert last["gold_normalized_avg"] < 0.9 * best["gold_normalized_avg"]
    # the monitor flagged it after the gold peak, and kept the best-gold weights
    assert last["monitor/hacking"] is True
    assert last["monitor/hacking_epoch"] > best["epoch"]
    assert last["monitor/best_gold_epoch"] == best["epoch"]
    info = json.loads((run / "best" / "info.json").read_text())
    assert info["epoch"] == best["epoch"] and (run / "best" / "trainable.safetensors").is_file()
