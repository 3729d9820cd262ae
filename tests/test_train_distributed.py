"""A 2-process CPU launch gives the same per-epoch metrics as one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ARGS = ["--config", "flow_grpo", "--set", "backbone.name=tiny_backbone:make_tiny_backbone", "--set", "backbone.params={}",
        "--set", "rewards=[{name: ink}]", "--set", "eval.evaluator=null", "--set", "eval.samples_per_prompt=2",
        "--set", "eval.every=1", "--set", "sample.prompts_per_epoch=4", "--set", "sample.group_size=4",
        "--set", "train.epochs=3", "--set", "log.progress=false", "--set", "train.lr=3e-3",
        "--set", "loss.clip_range=1e-3"]


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_process_cpu_launch_matches_one_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1"}
    args = ARGS + ["--set", f"cache_dir={tmp_path / 'cache'}"]
    one = subprocess.run([sys.executable, "-m", "grpo_guard", "train", *args, "--output-dir", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = Path(sys.executable).with_name("torchrun")
    two = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29517", "-m", "grpo_guard",
                          "train", *args, "--output-dir", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("run finished") == 1  # printed by rank 0 only
    a, b = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [0, 1, 2]
    for ra, rb in zip(a, b):
        for key in ("proxy_reward_mean", "proxy_reward_std", "eval/proxy_reward_mean", "grad_norm", "clip_frac",
                    "approx_kl", "ratio_mean"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-7), key
        assert rb["loss"] == pytest.approx(ra["loss"], abs=1e-7)
        for key in ("raw_ratio_mean", "clip_high_pos", "clip_low_neg", "bias_mean"):
            assert rb["step_stats"][key] == pytest.approx(ra["step_stats"][key], rel=1e-5, abs=1e-9), key
