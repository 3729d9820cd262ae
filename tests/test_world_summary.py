"""The one-screen world summary (grpo_guard.report.world_summary): its figures recomputed by hand from the
runs' metrics.jsonl and base_eval.json, and its closing sentence."""

import json
import math

import numpy as np
import pytest
import yaml

from grpo_guard.report import load_runs
from grpo_guard.report.world_summary import format_world_summary, summarise_world

GUARD = {"ratio_mode": "ratio_norm", "step_weight": "inv_dt"}


def write_run(path, seed, loss, base, evals, spreads):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "loss": {"ratio_mode": "plain",
                                                                             "step_weight": "none", **loss}}))
    (path / "base_eval.json").write_text(json.dumps({"eval/proxy_reward_mean": base, "gold_normalized_avg": 1.0}))
    rows = [{"epoch": i, "proxy_reward_mean": p, "eval/proxy_reward_mean": p, "gold_normalized_avg": g,
             "grad_norm_spread": s} for i, ((p, g), s) in enumerate(zip(evals, spreads))]
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def by_hand(path, level):
    """Gold at the first crossing of proxy gain ``level``, from the files (an independent transcription)."""
    base = json.loads((path / "base_eval.json").read_text())
    rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
    pts = [(base["eval/proxy_reward_mean"], 1.0)] + [(r["eval/proxy_reward_mean"], r["gold_normalized_avg"]) for r in rows]
    start = pts[0][0]
    for (p0, g0), (p1, g1) in zip(pts, pts[1:]):
        if p1 - start >= level:
            return g0 + (level - (p0 - start)) / (p1 - p0) * (g1 - g0)
    return pts[0][1]


@pytest.mark.parametrize("offsets,verdict", [
    ((0.10, 0.12), "keeps more"),   # GRPO-Guard above Flow-GRPO in both seeds
    ((-0.10, -0.12), "ends with less"),
    ((0.02, -0.02), "tied"),        # one seed each way
])
def test_the_summary_equals_the_metrics_by_hand(tmp_path, offsets, verdict):
    runs = []
    for seed, off in zip((0, 1), offsets):
        runs.append(write_run(tmp_path / f"f{seed}", seed, {}, 0.1, [(0.3, 0.95), (0.5, 0.9)], [20.0, 24.0]))
        runs.append(write_run(tmp_path / f"g{seed}", seed, GUARD, 0.1, [(0.3, 0.95 + off), (0.6, 0.9 + off)],
                              [1.5, 2.5]))
    methods = load_runs(runs)
    s = summarise_world(methods)
    flow, guard = s["methods"]["Flow-GRPO"], s["methods"]["GRPO-Guard"]
    assert flow["proxy_start"]["mean"] == pytest.approx(0.1) and flow["proxy_final"]["mean"] == pytest.approx(0.5)
    assert guard["proxy_final"]["mean"] == pytest.approx(0.6)
    assert flow["grad_norm_spread"]["mean"] == pytest.approx(22.0) and guard["grad_norm_spread"]["mean"] == 2.0
    (entry,) = s["comparisons"]["GRPO-Guard"]
    m = entry["matched"]
    assert m["proxy_gain"] == pytest.approx(0.4)  # Flow-GRPO's peak gain
    want = [by_hand(tmp_path / f"g{i}", m["proxy_gain"]) - by_hand(tmp_path / f"f{i}", m["proxy_gain"]) for i in (0, 1)]
    assert m["paired_per_seed"] == pytest.approx(want)
    assert m["paired_diff"]["mean"] == pytest.approx(np.mean(want))
    lines = format_world_summary(s, "a world")
    assert lines[0] == "a world: Flow-GRPO (2 seeds) vs GRPO-Guard (2 seeds)"
    assert any(f"{m['paired_diff']['mean']:+.3f}" in x for x in lines)
    assert verdict in lines[-1] and lines[-1].startswith("  => GRPO-Guard")
    assert all(math.isfinite(v) for v in m["paired_per_seed"])
