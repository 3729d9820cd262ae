"""Tests of the report (grpo_guard.report): run loading and grouping, matched-proxy interpolation,
figures and the HTML page, on runs trained on the tiny backbone and on hand-made metrics streams."""

import json
import math
import re

import pytest
import torch
import yaml

from grpo_guard.config import config_to_dict, load_config
from grpo_guard.report import build_report, gold_at_proxy, load_runs, matched_gold, method_label
from grpo_guard.report.figures import FIGURES
from grpo_guard.report.html import primary_gold, summarize_method
from grpo_guard.train.loop import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GUARD = ["loss.ratio_mode=ratio_norm", "loss.step_weight=inv_dt", "loss.clip_range=2e-5"]


def tiny_cfg(cache, *extra):
    return load_config(None, [
        "backbone.name=tiny_backbone:make_tiny_backbone", "rewards=[{name: ink}]", f"cache_dir={cache}",
        "eval.evaluator=toy_gold", "eval.samples_per_prompt=2", "eval.every=1", "sample.prompts_per_epoch=4",
        "sample.group_size=4", "sample.guidance_scale=2.0", "train.epochs=3", "train.lr=3e-3",
        "log.progress=false", "log.checkpoint_every=0", "log.image_every=1", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two methods (Flow-GRPO, GRPO-Guard) x two seeds, 3 epochs each, and their report."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is as fast and does not fight other processes
    root = tmp_path_factory.mktemp("report_runs")
    cache = root / "cache"
    try:
        runs = {}
        for name, extra in (("flow", []), ("guard", GUARD)):
            for seed in (0, 1):
                runs[f"{name}_s{seed}"] = train(tiny_cfg(cache, f"seed={seed}", *extra), root / f"{name}_s{seed}",
                                                log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    report = build_report([str(p) for p in runs.values()], root / "report")
    return runs, report


# ---- hand-made run directories ----------------------------------------------------------------------

def write_run(path, rows, seed=0, loss=None, lines=None, base=None, **cfg):
    """A run directory with a partial config and the given metrics rows (or raw ``lines``), and ``base`` as
    its base model's evaluation (``base_eval.json``) when given."""
    path.mkdir(parents=True)
    if base is not None:
        (path / "base_eval.json").write_text(json.dumps(base))
    config = {"seed": seed, "loss": {"ratio_mode": "plain", "step_weight": "none", **(loss or {})}, **cfg}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    text = "\n".join(lines if lines is not None else [json.dumps(r) for r in rows])
    (path / "metrics.jsonl").write_text(text + "\n")
    return path


def stream(proxies, golds, **extra):
    """Metrics rows with the given evaluation proxy and normalised gold per epoch."""
    return [{"epoch": i, "proxy_reward_mean": p, "eval/proxy_reward_mean": p, "gold_normalized_avg": g, **extra}
            for i, (p, g) in enumerate(zip(proxies, golds))]


# ---- reports from trained runs ----------------------------------------------------------------------

def test_report_and_every_figure_are_written(trained):
    runs, report = trained
    assert report.name == "report.html" and report.is_file()
    page = report.read_text()
    figs = sorted((report.parent / "figures").glob("*.png"))
    names = {f.stem for f in figs}
    assert set(FIGURES) | {"images_flow_grpo", "images_grpo_guard"} <= names
    for f in figs:
        data = f.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000, f
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(srcs) == sorted(f"figures/{f.name}" for f in figs)  # relative links, all figures shown
    assert "<script" not in page
    assert not list(report.parent.glob(".*.tmp")) and not list((report.parent / "figures").glob(".*"))
    # every evaluation logged the image statistics the image_stats figure plots
    rows = [json.loads(x) for x in (next(iter(runs.values())) / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r for r in rows if "eval/proxy_reward_mean" in r]
    assert evaluated and all(0 <= r["imgstat/dark_fraction"] <= 1 and r["imgstat/colour_entropy"] >= 0
                             and r["imgstat/group_diversity"] >= 0 for r in evaluated)


def test_trained_runs_are_grouped_by_method(trained):
    runs, report = trained
    methods = load_runs(list(runs.values()))
    assert [(m.label, m.seeds) for m in methods] == [("Flow-GRPO", [0, 1]), ("GRPO-Guard", [0, 1])]
    page = report.read_text()
    assert page.count("<tr><td class=\"l\"><span class=\"swatch\"") == 2  # one summary row per method
    for m in methods:
        s = summarize_method(m, primary_gold(methods))
        assert s.epochs == [3, 3] and s.primary == "gold_normalized_avg"
        assert s.gold_start == [1.0, 1.0]  # the base model's evaluation
        assert all(math.isfinite(v) for v in s.proxy_final + s.grad_norm_spread + s.clip_high_pos + s.gold_final)
        assert all(math.isfinite(v) for v in s.ratio_offset_last_step)
    # log.image_every=1: the base model's grid, then one per epoch
    assert [num for num, _ in methods[0].first.images] == [0, 1, 2, 3]


def test_labels_and_report_title_override(trained, tmp_path):
    runs, _ = trained
    specs = [f"Baseline={runs['flow_s0']}", f"Baseline={runs['flow_s1']}", str(runs["guard_s0"])]
    out = build_report(specs, tmp_path / "rep", title="My <report>")
    page = out.read_text()
    assert "<title>My &lt;report&gt;</title>" in page
    assert [(m.label, len(m.runs)) for m in load_runs(specs)] == [("Baseline", 2), ("GRPO-Guard", 1)]
    assert (tmp_path / "rep" / "figures" / "images_baseline.png").is_file()


# ---- labels and grouping ----------------------------------------------------------------------------

@pytest.mark.parametrize("name,label", [
    ("flow_grpo", "Flow-GRPO"), ("flow_grpo_kl", "Flow-GRPO + KL"), ("mean_revised", "mean-revised"),
    ("ratio_norm", "RatioNorm"), ("grpo_guard", "GRPO-Guard"), ("temp_reweight", "TempFlow reweight"),
])
def test_builtin_configs_get_the_paper_names(name, label):
    assert method_label(config_to_dict(load_config(name))) == label


def test_unnamed_combination_gets_a_generic_label():
    cfg = {"loss": {"ratio_mode": "mean_revised", "step_weight": "inv_dt", "kl_coef": 0.01}}
    assert method_label(cfg) == "mean_revised ratio, inv_dt step weight + KL"


def test_runs_differing_beyond_the_seed_are_separate_methods(tmp_path):
    rows = stream([0.1, 0.2], [1.0, 1.1])
    a0 = write_run(tmp_path / "a0", rows, seed=0, train={"lr": 1e-3}, cache_dir="/x", log={"image_every": 5})
    a1 = write_run(tmp_path / "a1", rows, seed=1, train={"lr": 1e-3}, cache_dir="/y")
    b0 = write_run(tmp_path / "b0", rows, seed=0, train={"lr": 3e-3})
    methods = load_runs([a1, b0, a0])
    assert [(m.label, [r.path.name for r in m.runs]) for m in methods] == [
        ("Flow-GRPO [train.lr=0.001]", ["a0", "a1"]), ("Flow-GRPO [train.lr=0.003]", ["b0"])]
    over = load_runs([a0, b0], labels={str(a0): "X", str(b0): "X"})
    assert [(m.label, len(m.runs)) for m in over] == [("X", 2)]


# ---- matched proxy ------------------------------------------------------------------------------------

def test_gold_at_proxy_interpolates_at_the_first_crossing():
    proxy, gold = [0.1, 0.3, 0.5], [1.0, 1.2, 0.8]
    assert gold_at_proxy(proxy, gold, 0.2) == pytest.approx(1.1)
    assert gold_at_proxy(proxy, gold, 0.4) == pytest.approx(1.0)
    assert gold_at_proxy(proxy, gold, 0.5) == pytest.approx(0.8)
    assert gold_at_proxy(proxy, gold, 0.05) == pytest.approx(1.0)  # at or below the start: the start
    assert math.isnan(gold_at_proxy(proxy, gold, 0.6))  # never reached
    # not monotone: the first time 0.4 is reached is between epochs 0 and 1, not around the dip
    assert gold_at_proxy([0.1, 0.5, 0.3, 0.6], [1.0, 0.6, 2.0, 3.0], 0.4) == pytest.approx(0.7)
    assert gold_at_proxy([0.1, None, 0.5], [1.0, 5.0, 0.6], 0.3) == pytest.approx(0.8)  # nulls are skipped
    with pytest.raises(ValueError, match="same length"):
        gold_at_proxy([0.1, 0.2], [1.0], 0.1)


def test_methods_are_compared_at_matched_proxy_gain_paired_by_seed(tmp_path):
    # gains over each run's start (its base evaluation): A0 0.2, 0.4, 0.6; A1 0.2, 0.4, 0.8; B0 0.2, 0.3;
    # B1 0.1, 0.5. The largest gain every run reached: 0.3 (B0's peak).
    base = {"eval/proxy_reward_mean": 0.1, "gold_normalized_avg": 1.0}
    a0 = write_run(tmp_path / "a0", stream([0.3, 0.5, 0.7], [1.2, 0.8, 0.6]), seed=0, base=base)
    a1 = write_run(tmp_path / "a1", stream([0.3, 0.5, 0.9], [1.0, 1.0, 0.2]), seed=1, base=base)
    guard = {"ratio_mode": "ratio_norm", "step_weight": "inv_dt"}
    b1 = write_run(tmp_path / "b1", stream([0.2, 0.6], [1.1, 1.3]), seed=1, loss=guard,
                   base={**base, "eval/proxy_reward_mean": 0.1})
    b0 = write_run(tmp_path / "b0", stream([0.3, 0.4], [1.0, 1.4]), seed=0, loss=guard, base=base)
    flow, grpo_guard = load_runs([a0, a1, b1, b0])
    res = matched_gold(grpo_guard.runs, flow.runs, "gold_normalized_avg")
    assert res["proxy_gain"] == pytest.approx(0.3)
    assert res["seeds"] == [0, 1]  # paired by seed, not by the order the runs were given in
    # first crossing of gain 0.3, interpolated: A0 1.2 -> 0.8 at 0.2 -> 0.4: 1.0; A1 1.0; B0 1.4; B1 1.1 -> 1.3
    # between 0.1 and 0.5: 1.2
    assert res["baseline_per_seed"] == pytest.approx([1.0, 1.0])
    assert res["arm_per_seed"] == pytest.approx([1.4, 1.2])
    assert res["paired_per_seed"] == pytest.approx([0.4, 0.2])
    assert (res["paired_diff"]["mean"], res["paired_diff"]["sd"]) == pytest.approx((0.3, 0.1))
    page = build_report([a0, a1, b1, b0], tmp_path / "rep").read_text()
    assert "+0.300 ± 0.100 (+30.0%)" in page and "2/2" in page  # the headline: Δ paired, better in both seeds
    summary = summarize_method(grpo_guard, primary_gold([flow, grpo_guard]))
    assert summary.gold_start == [1.0, 1.0] and summary.gold_final == [1.4, 1.3] and summary.gold_best == [1.4, 1.3]


def test_runs_without_gold_are_named_and_a_missing_common_gain_is_reported(tmp_path):
    base = {"eval/proxy_reward_mean": 0.1, "gold_normalized_avg": 1.0}
    a = write_run(tmp_path / "a", stream([0.3], [1.2]), base=base)
    b = write_run(tmp_path / "b", stream([0.05], [0.9]), loss={"ratio_mode": "ratio_norm"}, base=base)  # no gain
    assert matched_gold(*[m.runs for m in load_runs([b, a])], "gold_normalized_avg") is None
    page = build_report([a, b], tmp_path / "rep").read_text()
    assert "no proxy gain that every run reached" in page
    nogold = write_run(tmp_path / "c", [{"epoch": 0, "proxy_reward_mean": 0.9}], seed=2)
    page = build_report([nogold], tmp_path / "rep2").read_text()
    assert "no gold logged" in page and "No gold metric was logged" in page
    assert not (tmp_path / "rep2" / "figures" / "gold_vs_proxy.png").exists()  # nothing to draw: no figure


# ---- robustness ----------------------------------------------------------------------------------------

def test_nulls_missing_keys_skipped_epochs_and_torn_lines(tmp_path):
    good = {"clip_high_pos": [0.1, None], "clip_low_neg": [0.2, 0.3], "raw_ratio_mean": [0.999, None],
            "raw_ratio_std": [None, 0.01], "ratio_mean": [1.0, 1.0], "ratio_std": [0.001, 0.002],
            "bias_over_spread": [0.5, None], "drift_u": [0.01, 0.02]}
    rows = [
        {"epoch": 0, "proxy_reward_mean": 0.1, "gold_normalized_avg": None, "grad_norm_step": [None, 1.0],
         "trained_steps": [0, 1], "step_stats": good, "monitor/hacking": False, "monitor/hacking_epoch": None},
        {"epoch": 1, "skipped": True, "skipped_batches": 1},
        {"epoch": 2, "proxy_reward_mean": None, "eval/proxy_reward_mean": 0.3, "gold_normalized_avg": 0.9,
         "gold_norm/frechet": None, "grad_norm_spread": None, "step_stats": {"raw_ratio_mean": "bad"},
         "grad_norm_step": "oops", "trained_steps": [0, 1], "wall_seconds": None},
        {"epoch": 3, "proxy_reward_mean": 0.4, "gold_normalized_avg": 0.8, "monitor/hacking": True,
         "monitor/hacking_epoch": 3, "trained_steps": [0, 1, 2], "step_stats": {"clip_high_pos": [0.0, 0.0, 0.0]}},
    ]
    lines = [json.dumps(r) for r in rows] + ["[1, 2]", '{"epoch": 4, "proxy_rew']
    run = write_run(tmp_path / "odd", rows, lines=lines)
    (run / "images").mkdir()
    (run / "images" / "epoch_0001.png").write_bytes(b"not a png")  # a corrupt grid must not stop it
    (run / "best").mkdir()
    (run / "best" / "info.json").write_text("{torn")
    bare = write_run(tmp_path / "bare", [{"epoch": 0, "skipped": True}], seed=3)  # nothing but a skipped epoch
    out = build_report([run, bare], tmp_path / "rep")
    page = out.read_text()
    for f in (tmp_path / "rep" / "figures").glob("*.png"):
        assert f.read_bytes()[:8] == PNG_MAGIC, f
    assert "1 skipped epoch(s)" in page and "2 unreadable metrics line(s)" in page
    (m,) = load_runs([run])
    s = summarize_method(m, primary_gold([m]))
    assert s.hacking_epochs == [3] and s.gold_final == [0.9] and s.epochs == [4]  # the last evaluated epoch
    assert s.proxy_final == [0.3] and math.isnan(s.wall_seconds[0]) and math.isnan(s.grad_norm_spread[0])
    assert s.ratio_offset_last_step[0] == pytest.approx(-0.001)  # the last step with a finite value


@pytest.mark.parametrize("make", ["missing", "file", "no_config", "no_metrics", "empty_metrics"])
def test_a_directory_that_is_not_a_run_is_named(tmp_path, make):
    bad = tmp_path / "not_a_run"
    if make == "file":
        bad.write_text("x")
    elif make != "missing":
        bad.mkdir()
        if make != "no_config":
            (bad / "config.yaml").write_text("seed: 0\n")
        if make != "no_metrics":
            (bad / "metrics.jsonl").write_text("" if make == "empty_metrics" else "{\"epoch\": 0}\n")
    good = write_run(tmp_path / "good", stream([0.1], [1.0]))
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        build_report([good, bad], tmp_path / "rep")


def test_the_baseline_can_be_chosen_and_an_unknown_one_is_refused(tmp_path, capsys):
    from grpo_guard.cli import main

    base = {"eval/proxy_reward_mean": 0.1, "gold_normalized_avg": 1.0}
    a = write_run(tmp_path / "a", stream([0.3], [1.2]), base=base)
    b = write_run(tmp_path / "b", stream([0.4], [0.9]), loss={"ratio_mode": "ratio_norm"}, base=base)
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "rep"), "--baseline", "RatioNorm"]) == 0
    page = (tmp_path / "rep" / "report.html").read_text()
    # matched gain 0.2 (a's peak): Flow-GRPO 1.2, RatioNorm 1.0 + (0.2 / 0.3) x (0.9 - 1.0) = 0.933
    assert "compared with RatioNorm" in page and "+0.267 (+28.6%)" in page
    assert main(["report", str(a), "--out", str(tmp_path / "rep2"), "--baseline", "Nope"]) == 2
    assert "no method is labelled 'Nope'" in capsys.readouterr().err
    assert not (tmp_path / "rep2").exists()
