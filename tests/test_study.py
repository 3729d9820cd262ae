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


def test_the_regime_preset_is_a_sweep_then_the_factorial_and_every_run_config_loads():
    from grpo_guard.config import load_config

    plan = PRESETS["regime"]
    sweep = [c for c in plan.conditions if c.name.startswith("sweep_")]
    cells = [c for c in plan.conditions if not c.name.startswith("sweep_")]
    assert sweep and cells
    for c in sweep:  # the sweep runs Flow-GRPO once per drift setting
        assert plan.arms_of(c) == ["flow_grpo"] and plan.seeds_of(c) == [0]
    # the {plain, ratio_norm} x {none, inv_dt} factorial plus mean-revised, 3 seeds, in every cell
    modes = set()
    for c in cells:
        assert len(plan.seeds_of(c)) >= 3
        for arm in plan.arms_of(c):
            cfg = load_config(arm, [*plan.world, *c.overrides])
            assert cfg.backbone.params["n"] in (128, 256)
            modes.add((cfg.loss.ratio_mode, cfg.loss.step_weight))
    assert {("plain", "none"), ("plain", "inv_dt"), ("ratio_norm", "none"), ("ratio_norm", "inv_dt"),
            ("mean_revised", "none")} <= modes
    # the factorial's effects: RatioNorm with the weight held, and the weight with RatioNorm held
    assert {("grpo_guard", "inv_dt_reweight"), ("grpo_guard", "ratio_norm")} <= set(plan.contrasts)
    assert all(a in plan.arms and r in plan.arms for a, r in plan.contrasts)
    for c in plan.conditions:
        lr = c.name.split("_lr")[1]
        assert load_config("flow_grpo", [*plan.world, *c.overrides]).train.lr == pytest.approx(float(lr))


@pytest.mark.slow
def test_conditions_with_their_own_arms_and_the_clip_vs_regime_figure(tmp_path):
    import numpy as np

    from grpo_guard.report.figures import REGIME_EDGES, regime_clip_curve
    from grpo_guard.report.runs import load_run
    from grpo_guard.study import REGIME_FIGURE, Condition, StudyPlan

    tiny = PRESETS["tiny"]
    plan = StudyPlan(name="t", world=tiny.world, arms=["flow_grpo", "grpo_guard"], seeds=[0], calibrate_epochs=2,
                     conditions=[Condition("multi", []),
                                 Condition("sweep", ["train.lr=1e-2"], arms=["flow_grpo"], seeds=[1])],
                     contrasts=[("flow_grpo", "grpo_guard"), ("ratio_norm", "flow_grpo")])
    run_study(plan, tmp_path, log=lambda _: None)
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name != "figures") == [
        "calibrate_flow_grpo", "flow_grpo_s1"]
    doc = json.loads((tmp_path / "study.json").read_text())
    sweep = next(c for c in doc["conditions"] if c["condition"] == "sweep")
    assert list(sweep["arms"]) == ["flow_grpo"] and sweep["seeds"] == [1]
    # per-step regime and clipping by advantage sign: the run's own per-step means over epochs
    per_step = sweep["arms"]["flow_grpo"]["per_step"]
    run = load_run(tmp_path / "sweep" / "flow_grpo_s1")
    for stat in ("bias_over_spread", "clip_high_pos", "clip_low_neg"):
        want = [v if math.isfinite(v) else None for v in run.step_profile(stat)[1].tolist()]
        assert len(per_step[stat]) == len(want) == 9
        assert all((a is None and b is None) or a == pytest.approx(b) for a, b in zip(per_step[stat], want))
    assert "| Flow-GRPO | clip hi A>0 | " in (tmp_path / "study.md").read_text()
    assert (tmp_path / REGIME_FIGURE).is_file()
    # a contrast runs where the condition has both arms, on the primary gold, paired by seed
    multi = next(c for c in doc["conditions"] if c["condition"] == "multi")
    (contrast,) = multi["contrasts"]
    assert (contrast["arm"], contrast["reference"], contrast["gold"]) == ("flow_grpo", "grpo_guard", "gold/attribute")
    vs_baseline = multi["arms"]["grpo_guard"]["golds"]["gold/attribute"]["matched"]  # the same pair, the other way
    assert contrast["matched"]["proxy_gain"] == pytest.approx(vs_baseline["proxy_gain"])
    assert contrast["matched"]["paired_diff"]["mean"] == pytest.approx(-vs_baseline["paired_diff"]["mean"])
    assert sweep["contrasts"] == []
    assert "| Flow-GRPO | GRPO-Guard | true attribute g (`gold/attribute`) |" in (tmp_path / "study.md").read_text()
    # the figure's binned means, recomputed by hand from the two Flow-GRPO runs' metrics.jsonl
    points = []
    for run in (tmp_path / "multi" / "flow_grpo_s0", tmp_path / "sweep" / "flow_grpo_s1"):
        for line in (run / "metrics.jsonl").read_text().splitlines():
            st = json.loads(line).get("step_stats")
            for k in range(len(st["bias_over_spread"]) if st else 0):
                x, hi, lo = st["bias_over_spread"][k], st["clip_high_pos"][k], st["clip_low_neg"][k]
                if all(v is not None and math.isfinite(v) for v in (x, hi, lo)):
                    points.append((x, hi, lo))
    assert points
    curve = regime_clip_curve([load_run(tmp_path / "multi" / "flow_grpo_s0"),
                               load_run(tmp_path / "sweep" / "flow_grpo_s1")], min_count=1)
    for b in range(len(REGIME_EDGES) - 1):
        lo_edge, hi_edge = REGIME_EDGES[b], REGIME_EDGES[b + 1]
        sel = [p for p in points if (b == 0 or p[0] >= lo_edge) and (b == len(REGIME_EDGES) - 2 or p[0] < hi_edge)]
        centre = math.sqrt(lo_edge * hi_edge)
        found = [i for i, c in enumerate(curve["centre"]) if c == pytest.approx(centre)]
        assert bool(sel) == bool(found)
        if sel:
            i = found[0]
            assert curve["count"][i] == len(sel)
            assert curve["clip_high_pos"][i] == pytest.approx(np.mean([p[1] for p in sel]))
            assert curve["clip_low_neg"][i] == pytest.approx(np.mean([p[2] for p in sel]))


def test_a_quiet_run_in_this_process_prints_progress_lines(tmp_path):
    from grpo_guard.parallel import RunJob, run_jobs

    logs = []
    job = RunJob("flow_grpo", (*PRESETS["tiny"].world, "train.epochs=6"), tmp_path / "run", label="tiny run")
    run_jobs([job], workers=1, log=logs.append, progress_every=0.2)
    lines = [m for m in logs if "progress (epochs): tiny run" in m]
    assert lines and lines[-1].endswith("/6")
    assert logs[-1].startswith("[run] tiny run done in")
