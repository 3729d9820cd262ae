"""A shortened demo end to end: both methods trained on the toy world and the report with every figure."""

import html as html_module
import json

import numpy as np
import pytest

from grpo_guard.cli import main

FIGURES = ("training_curves", "image_stats", "gold_vs_proxy", "ratio_per_step", "ratio_heatmap", "clip_per_step",
           "grad_norm_per_step", "regime", "images_flow_grpo", "images_grpo_guard")


@pytest.mark.slow
def test_quick_demo_writes_report_and_every_figure(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--set", f"cache_dir={tmp_path / 'cache'}",
                 "--set", "log.progress=false"]) == 0
    printed = capsys.readouterr().out
    assert "report.html" in printed
    # both worlds' one-screen summaries: printed, in summary.txt and at the top of both reports
    summary = (out / "summary.txt").read_text().strip()
    assert summary in printed and summary.startswith("digits world") and "\nspectral world" in summary
    assert summary.count("=> GRPO-Guard") == 2
    for world, runs in (("digits", out / "runs"), ("spectral", out / "spectral" / "runs")):
        for method, label in (("flow_grpo", "Flow-GRPO"), ("grpo_guard", "GRPO-Guard")):
            starts, finals = [], []
            for seed in (0, 1):
                run = runs / f"{method}_s{seed}"
                starts.append(json.loads((run / "base_eval.json").read_text())["eval/proxy_reward_mean"])
                rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
                finals.append([r for r in rows if "eval/proxy_reward_mean" in r][-1]["eval/proxy_reward_mean"])
            line = next(x for x in summary.split(f"{world} world")[1].splitlines() if x.strip().startswith(label))
            assert f"eval proxy {np.mean(starts):.3g} ± {np.std(starts):.3g} -> {np.mean(finals):.3g}" in line, line
    assert (out / "spectral" / "report.html").is_file()
    assert html_module.escape(summary.splitlines()[0]) in (out / "spectral" / "report.html").read_text()
    html = (out / "report.html").read_text()
    assert "Flow-GRPO" in html and "GRPO-Guard" in html
    for name in FIGURES:
        png = out / "figures" / f"{name}.png"
        assert png.is_file() and png.stat().st_size > 1000, name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{name}.png" in html
    for method in ("flow_grpo", "grpo_guard"):
        for seed in (0, 1):
            assert (out / "runs" / f"{method}_s{seed}" / "metrics.jsonl").is_file()
    # a finished demo is not overwritten by accident
    assert main(["demo", "--quick", "--out", str(out)]) == 2


@pytest.mark.slow
def test_quick_demo_one_worker_matches_the_parallel_layout(tmp_path):
    """``--workers 1`` trains the runs one after the other in this process and writes the same files."""
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--workers", "1", "--seeds", "1", "--out", str(out), "--set",
                 f"cache_dir={tmp_path / 'cache'}", "--set", "log.progress=false"]) == 0
    assert (out / "report.html").is_file()
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["flow_grpo_s0", "grpo_guard_s0"]


def test_bad_workers_is_a_usage_error(tmp_path):
    assert main(["demo", "--quick", "--workers", "0", "--out", str(tmp_path / "d")]) == 2
    assert not (tmp_path / "d").exists()
