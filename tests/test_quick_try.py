"""The README's quick try learns: its command raises the proxy in every seed, for GRPO-Guard and Flow-GRPO, by
more than the seeds differ from each other."""

import json

import pytest

from grpo_guard.cli import main


@pytest.mark.slow
@pytest.mark.parametrize("config", ["quick_grpo_guard", "quick_flow_grpo"])
def test_the_quick_try_raises_the_proxy_in_every_seed(tmp_path, config, capsys):
    firsts, lasts = [], []
    for seed in (0, 1, 2):
        run = tmp_path / f"seed{seed}"
        # the README's command, with a seed and a cache of the test's own
        assert main(["train", "--config", config, "--output-dir", str(run), "--set", f"seed={seed}",
                     "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "log.progress=false"]) == 0
        proxy = [json.loads(line)["proxy_reward_mean"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        third = len(proxy) // 3
        firsts.append(sum(proxy[:third]) / third)
        lasts.append(sum(proxy[-third:]) / third)
        assert (run / "summary.json").is_file()
    spread = max(max(firsts) - min(firsts), max(lasts) - min(lasts))
    gains = [b - a for a, b in zip(firsts, lasts)]
    assert all(g > spread for g in gains), (gains, spread)
    assert "draw it: grpo-guard report" in capsys.readouterr().err  # the summary, at the end of each run
