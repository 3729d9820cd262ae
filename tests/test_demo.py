"""A shortened demo end to end: both methods trained on the toy world and the report with every figure."""

import pytest

from grpo_guard.cli import main

FIGURES = ("training_curves", "image_stats", "gold_vs_proxy", "ratio_per_step", "ratio_heatmap", "clip_per_step",
           "grad_norm_per_step", "regime", "images_flow_grpo", "images_grpo_guard")


@pytest.mark.slow
def test_quick_demo_writes_report_and_every_figure(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--set", f"cache_dir={tmp_path / 'cache'}",
                 "--set", "log.progress=false"]) == 0
    assert "report.html" in capsys.readouterr().out
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


@pytest.mark.slow
def test_sigterm_stops_a_parallel_demo_cleanly_and_resume_finishes_it(tmp_path):
    """SIGTERM to the demo's parent reaches its worker processes: each running run checkpoints and stops,
    the demo exits 143 with one line, and ``--resume`` finishes every run and the report."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "grpo_guard", "demo", "--quick", "--epochs", "60", "--workers", "2", "--out",
           str(out), "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "log.progress=false"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = out / "runs" / "flow_grpo_s0" / "metrics.jsonl"
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (first.is_file() and len(first.read_text().splitlines()) >= 2):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 143, err[-3000:]
    assert "--resume" in err and "Traceback" not in err
    for run in ("flow_grpo_s0", "flow_grpo_s1"):
        n = len((out / "runs" / run / "metrics.jsonl").read_text().splitlines())
        assert 1 <= n < 60 and (out / "runs" / run / "checkpoints").is_dir(), run
    assert not (out / "report.html").exists()
    r = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "report.html").is_file()
    for run in ("flow_grpo_s0", "flow_grpo_s1", "grpo_guard_s0", "grpo_guard_s1"):
        epochs = [json.loads(x)["epoch"] for x in (out / "runs" / run / "metrics.jsonl").read_text().splitlines()]
        assert epochs == list(range(60)), run
