"""The study runner on the tiny spectral preset: calibration, runs, resumability, summary and reports."""

import html
import json
import math
import re

import pytest
import torch
import yaml

from grpo_guard.cli import main
from grpo_guard.report.runs import format_paired_diff, format_stat
from grpo_guard.study import PRESETS, clip_from_rows, format_study_markdown, run_study

torch.set_num_threads(1)


def test_clip_from_rows():
    rows = [{"step_stats": {"ratio_std": [0.0, 2e-4, 4e-4, float("nan")]}},
            {"step_stats": {"ratio_std": [0.0, 4e-4, 6e-4, 1e-3]}}, {"epoch": 3}]
    assert clip_from_rows(rows) == pytest.approx(5e-4)  # median of the positive per-step means 3e-4, 5e-4, 1e-3
    assert clip_from_rows([{"step_stats": {"ratio_std": [0.0, 0.0]}}]) is None  # only on-policy updates
    assert clip_from_rows([]) is None


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path):
    plan = PRESETS["tiny"]
    logs = []
    md = run_study(plan, tmp_path, log=logs.append)
    doc = json.loads((tmp_path / "study.json").read_text())
    (cond,) = doc["conditions"]
    arms = cond["arms"]
    assert set(arms) == {"flow_grpo", "grpo_guard"}
    clips = {a: arms[a]["clip_range"] for a in arms}
    assert all(c is not None and c > 0 for c in clips.values())
    assert clips["flow_grpo"] != clips["grpo_guard"]  # calibrated on each arm's own ratio
    for a in arms.values():
        assert a["proxy_final"]["n"] == 2 and math.isfinite(a["proxy_final"]["mean"])
        assert a["grad_norm_spread"]["n"] == 2 and a["grad_norm_spread"]["mean"] >= 1
        assert len(a["raw_ratio_mean_minus_1_per_step"]) == 9
    # the base model's evaluation (base_eval.json) is the common, paired start of both arms
    assert arms["grpo_guard"]["proxy_start"]["mean"] == pytest.approx(arms["flow_grpo"]["proxy_start"]["mean"])
    golds = arms["grpo_guard"]["golds"]
    # the golds the runs declare: the true attribute first (the primary), each once, read raw
    assert list(golds) == ["gold/attribute", "gold/exploit", "gold/drift_lf", "gold/drift_hf"]
    assert golds["gold/attribute"]["primary"] and not golds["gold/exploit"]["higher_is_better"]
    m = golds["gold/attribute"]["matched"]
    assert len(m["arm_per_seed"]) == 2 and m["proxy_gain"] > 0 and m["paired_diff"]["n"] == 2
    assert "matched" not in arms["flow_grpo"]["golds"]["gold/attribute"]  # the baseline itself
    text = md.read_text()
    assert "GRPO-Guard" in text and "Flow-GRPO" in text and text == format_study_markdown(doc)
    # the report's first screen shows the same matched-proxy figures as study.md, for every gold
    page = (tmp_path / "multi" / "report.html").read_text()
    headline = page[page.index("<h2>Headline</h2>"):page.index("<h2>Summary</h2>")]
    assert "true attribute g" in headline and format_paired_diff(m) in headline
    for key, g in golds.items():
        row = f"| {format_stat(g['matched']['arm'])} | {format_stat(g['matched']['baseline'])} | " \
              f"{format_paired_diff(g['matched'])} |"
        assert row in text, key
        assert (f"<td>{g['matched']['proxy_gain']:.3f}</td><td title=\"per seed: "
                in page) and html.escape(format_paired_diff(g["matched"])) in page, key
    for src in re.findall(r'<img src="([^"]+)"', page):
        assert (tmp_path / "multi" / src).is_file()
    # each run used its arm's calibrated clip range
    cfg = yaml.safe_load((tmp_path / "multi" / "grpo_guard_s1" / "config.yaml").read_text())
    assert cfg["loss"]["clip_range"] == pytest.approx(clips["grpo_guard"], rel=1e-5)
    # re-running skips everything finished: 2 calibrations and 4 runs
    logs.clear()
    run_study(plan, tmp_path, log=logs.append)
    assert sum("done already" in m for m in logs) == 6
    # two runs at a time in worker processes (one torch thread each, as here) give the same runs
    run_study(plan, tmp_path / "parallel", workers=2, log=logs.append)
    assert any("2 at a time" in m for m in logs)
    for run in ("calibrate_flow_grpo", "flow_grpo_s0", "grpo_guard_s1"):
        a = [json.loads(x) for x in (tmp_path / "multi" / run / "metrics.jsonl").read_text().splitlines()]
        b = [json.loads(x) for x in (tmp_path / "parallel" / "multi" / run / "metrics.jsonl").read_text().splitlines()]
        assert [r["proxy_reward_mean"] for r in a] == pytest.approx([r["proxy_reward_mean"] for r in b], rel=1e-6)
        assert [r.get("loss") for r in a] == pytest.approx([r.get("loss") for r in b], rel=1e-5, abs=1e-9)


def test_study_cli_rejects_bad_input(tmp_path, capsys):
    assert main(["study", "--preset", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "preset" in capsys.readouterr().err
    assert main(["study", "--preset", "tiny", "--out", str(tmp_path / "y"), "--arms", "flow_grpo,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
