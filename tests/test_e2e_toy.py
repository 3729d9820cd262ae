"""End to end on the toy world, through the CLI, as the README runs it (small-D variant for speed)."""

import json

import pytest

from grpo_guard.cli import main

FAST_WORLD = ["backbone.params={net: mlp, resolution: 8, layout: pixels, pretrain_steps: 300}",
              "sample.prompts_per_epoch=8", "sample.group_size=8", "eval.samples_per_prompt=8", "eval.every=2",
              "log.progress=false"]


@pytest.mark.slow
def test_grpo_guard_config_raises_the_proxy_on_the_toy_world(tmp_path):
    args = ["train", "--config", "grpo_guard", "--output-dir", str(tmp_path / "run"),
            "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "train.epochs=8", "--set", "train.lr=1e-3"]
    for item in FAST_WORLD:
        args += ["--set", item]
    assert main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and rows[0]["preflight_max_abs_log_ratio"] == 0.0
    first = sum(r["proxy_reward_mean"] for r in rows[:2]) / 2
    last = sum(r["proxy_reward_mean"] for r in rows[-2:]) / 2
    assert last > first, (first, last)
    evals = [r for r in rows if "gold_normalized_avg" in r]
    assert evals and all(r["gold_normalized_avg"] is not None for r in evals)
    assert (tmp_path / "run" / "images").is_dir() and any((tmp_path / "run" / "images").iterdir())
