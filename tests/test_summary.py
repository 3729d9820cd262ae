"""The run summary: every figure read back from the run's own files, written atomically, also when a signal
stops the run."""

import json
import os
import signal

import pytest

from grpo_guard.train import epoch as epoch_parts
from grpo_guard.train.loop import TrainingInterrupted, train
from grpo_guard.train.summary import format_summary, summarise_run
from tiny_backbone import rows, tiny_cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("summary")
    cfg = tiny_cfg(d / "cache", "train.epochs=6", "train.inner_epochs=2", "train.lr=3e-3", "eval.every=2",
                   "rewards=[{name: ink}, {name: jpeg_compressibility, role: gold}]")
    lines = []
    out = train(cfg, d / "run", log=lines.append)
    return out, lines


def test_summary_figures_equal_the_metrics(run):
    out, lines = run
    s = json.loads((out / "summary.json").read_text())
    rs = rows(out)
    proxies = [r["proxy_reward_mean"] for r in rs]
    assert s["epochs"] == len(rs) == 6 and not s["interrupted"]
    assert s["proxy"] == {"first": proxies[0], "last": proxies[-1], "best": max(proxies),
                          "best_epoch": proxies.index(max(proxies))}
    evals = [r for r in rs if "eval/proxy_reward_mean" in r]
    base = json.loads((out / "base_eval.json").read_text())
    assert s["eval_proxy"]["base"] == base["eval/proxy_reward_mean"]
    assert s["eval_proxy"]["final"] == evals[-1]["eval/proxy_reward_mean"]
    gold = s["golds"]["eval/jpeg_compressibility_mean"]
    assert gold["final"] == evals[-1]["eval/jpeg_compressibility_mean"]
    assert gold["base"] == base["eval/jpeg_compressibility_mean"]
    assert "eval/ink_mean" not in s["golds"]  # a proxy is not a gold
    assert s["preflight"] == {"passed": True, "max_abs_log_ratio": rs[0]["preflight_max_abs_log_ratio"]}
    spreads = [r["grad_norm_spread"] for r in rs]
    assert s["grad_norm_spread"]["mean"] == pytest.approx(sum(spreads) / len(spreads))
    high_pos = [sum(r["step_stats"]["clip_high_pos"]) / len(r["step_stats"]["clip_high_pos"]) for r in rs]
    assert s["clip_by_sign"]["clip_high_pos"] == pytest.approx(sum(high_pos) / len(high_pos))
    assert s["wall_seconds"] == rs[-1]["wall_seconds"]
    assert s["monitor"]["hacking"] == any(r["monitor/hacking"] for r in rs)
    # what the run printed at its end is the formatted summary of the same file
    assert lines[-1] == format_summary(s)
    assert "grpo-guard report" in lines[-1] and f"{proxies[0]:.4g} -> {proxies[-1]:.4g}" in lines[-1]
    assert not list(out.glob(".summary.json.tmp"))  # written through a temporary file, then renamed


def test_a_run_stopped_by_a_signal_writes_its_summary_marked_interrupted(tmp_path, monkeypatch):
    real = epoch_parts.score_batch

    def score_then_signal(ctx, batch, traj):
        if batch.epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # before any update: the loop drops the epoch, checkpoints, stops
        return real(ctx, batch, traj)

    monkeypatch.setattr("grpo_guard.train.loop.score_batch", score_then_signal)
    with pytest.raises(TrainingInterrupted):
        train(tiny_cfg(tmp_path / "cache", "train.epochs=5"), tmp_path / "run", log=lambda *_: None)
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["interrupted"] and s["epochs"] == 1 == len(rows(tmp_path / "run"))
    assert (tmp_path / "run" / "checkpoints" / "epoch_000001").is_dir()  # the state at the dropped epoch's start
    assert s == json.loads(json.dumps(summarise_run(tmp_path / "run", interrupted=True)))


def test_study_and_eval_reuse_the_summary(run, capsys):
    """``study`` prints a run's summary in one line, ``eval`` prints a checkpoint's golds as the summary's gold
    lines (beside its JSON on stdout)."""
    from grpo_guard.cli import main
    from grpo_guard.train.summary import format_summary_line

    out, _ = run
    s = summarise_run(out)
    line = format_summary_line(s)
    assert line.startswith("run, proxy ") and f"{s['proxy']['last']:.3g}" in line and "grad-norm spread" in line
    assert main(["eval", str(out / "checkpoints" / "epoch_000006")]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    gold, base = result["eval/jpeg_compressibility_mean"], json.loads((out / "base_eval.json").read_text())
    assert "base -> epoch_000006" in captured.err
    assert f"{base['eval/jpeg_compressibility_mean']:.4g} -> {gold:.4g}" in captured.err
