"""End-to-end tests of the training loop on a tiny backbone (tests/tiny_backbone.py)."""

import json
import math
from pathlib import Path

import pytest

from grpo_guard.cli import main
from grpo_guard.config import load_config
from grpo_guard.train.checkpoint import list_checkpoints
from grpo_guard.train.loop import PreflightError, RunDirError, TrainingStopped, train
from tiny_backbone import rows, tiny_cfg

TIMING = ("seconds", "preflight")


def strip_timing(row):
    return {k: v for k, v in row.items() if not any(t in k for t in TIMING)}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_run_writes_everything(tmp_path, cache):
    run = train(tiny_cfg(cache), tmp_path / "run", log=lambda *_: None)
    assert (run / "config.yaml").is_file()
    assert load_config(str(run / "config.yaml")) == tiny_cfg(cache)  # the resolved config round-trips
    rs = rows(run)
    assert [r["epoch"] for r in rs] == [0, 1, 2]
    for key in ("proxy_reward_mean", "proxy_reward_std", "wall_seconds", "loss", "lr", "clip_frac",
                "grad_norm_step", "step_stats", "eval/proxy_reward_mean", "monitor/hacking"):
        assert key in rs[-1], key
    assert rs[0]["preflight_max_abs_log_ratio"] == 0.0  # the on-policy ratio is exactly 1
    assert len(rs[1]["step_stats"]["clip_high_pos"]) == len(rs[1]["trained_steps"]) == 9
    assert [p.name for p in list_checkpoints(run)] == ["epoch_000002", "epoch_000003"]  # keep 2
    assert rs[-1]["wall_seconds"] >= rs[0]["wall_seconds"] > 0


def test_proxy_reward_rises(tmp_path, cache):
    cfg = tiny_cfg(cache, "train.epochs=12", "train.lr=3e-3", "loss.clip_range=1e-2", "log.checkpoint_every=0")
    rs = rows(train(cfg, tmp_path / "run", log=lambda *_: None))
    early = sum(r["proxy_reward_mean"] for r in rs[:3]) / 3
    late = sum(r["proxy_reward_mean"] for r in rs[-3:]) / 3
    assert late > early + 0.02, (early, late)


def test_resume_reproduces_the_uninterrupted_run(tmp_path, cache):
    full = train(tiny_cfg(cache, "train.epochs=4", "train.ema_decay=0.9", "loss.ratio_mode=ratio_norm",
                          "loss.step_weight=inv_dt", "loss.clip_range=1e-5"), tmp_path / "full", log=lambda *_: None)
    part = tmp_path / "part"
    train(tiny_cfg(cache, "train.epochs=2", "train.ema_decay=0.9", "loss.ratio_mode=ratio_norm",
                   "loss.step_weight=inv_dt", "loss.clip_range=1e-5"), part, log=lambda *_: None)
    with open(part / "metrics.jsonl", "a") as f:  # a torn line from a crash mid-write is ignored
        f.write('{"epoch": 2, "proxy_rew')
    train(tiny_cfg(cache, "train.epochs=4", "train.ema_decay=0.9", "loss.ratio_mode=ratio_norm",
                   "loss.step_weight=inv_dt", "loss.clip_range=1e-5"), part, resume=True, log=lambda *_: None)
    a, b = rows(full), rows(part)
    assert [r["epoch"] for r in b] == [0, 1, 2, 3]
    assert [strip_timing(r) for r in a] == [strip_timing(r) for r in b]


def test_output_dir_holding_a_run_is_refused(tmp_path, cache):
    run = train(tiny_cfg(cache, "train.epochs=1"), tmp_path / "run", log=lambda *_: None)
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(RunDirError, match="already holds a run"):
        train(tiny_cfg(cache, "train.epochs=1"), run, log=lambda *_: None)
    assert (run / "metrics.jsonl").read_text() == before
    with pytest.raises(RunDirError, match="holds no run"):
        train(tiny_cfg(cache), tmp_path / "empty", resume=True, log=lambda *_: None)


def test_preflight_catches_a_different_training_path(tmp_path, cache):
    cfg = tiny_cfg(cache, "backbone.name=tiny_backbone:make_dropout_backbone")
    with pytest.raises(PreflightError, match="ratio is not 1"):
        train(cfg, tmp_path / "run", log=lambda *_: None)
    assert not (tmp_path / "run").exists()  # a run that failed before its first epoch leaves nothing


@pytest.mark.parametrize("reward", ["make_nan_reward", "make_bad_shape_reward"])
def test_bad_rewards_skip_batches_then_stop_cleanly(tmp_path, cache, reward):
    # (eval off: the same reward failing on the base model's evaluation stops the run before training,
    # tests/test_reliability.py::test_a_failing_evaluation_is_skipped_and_training_goes_on)
    cfg = tiny_cfg(cache, f"rewards=[{{name: ink}}, {{name: 'tiny_backbone:{reward}', role: gold}}]",
                   "train.max_bad_batches=2", "train.epochs=5", "eval.every=0")
    messages = []
    with pytest.raises(TrainingStopped, match="2 consecutive bad reward batches"):
        train(cfg, tmp_path / "run", log=messages.append)
    rs = rows(tmp_path / "run")
    assert [r.get("skipped") for r in rs] == [True]  # epoch 0 skipped, the stop came at epoch 1
    assert any("skipped" in m for m in messages)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["epoch_000001"]


def test_kl_term_is_active(tmp_path, cache):
    rs = rows(train(tiny_cfg(cache, "loss.kl_coef=0.04", "train.lr=3e-3"), tmp_path / "run", log=lambda *_: None))
    assert rs[0]["kl"] > 0 and math.isfinite(rs[-1]["kl"])


# ---- the CLI ---------------------------------------------------------------------------------------

def test_cli_train_and_eval(tmp_path, cache, capsys):
    args = ["train", "--config", "flow_grpo", "--output-dir", str(tmp_path / "run"),
            "--set", "backbone.name=tiny_backbone:make_tiny_backbone", "--set", "rewards=[{name: ink}]",
            "--set", f"cache_dir={cache}", "--set", "eval.evaluator=null", "--set", "eval.samples_per_prompt=2",
            "--set", "sample.prompts_per_epoch=2", "--set", "sample.group_size=4", "--set", "train.epochs=2",
            "--set", "log.progress=false", "--set", "backbone.params={}"]
    assert main(args) == 0
    assert "run finished" in capsys.readouterr().out
    assert main(["train", "--resume", str(tmp_path / "run"), "--set", "train.epochs=3"]) == 0
    assert [r["epoch"] for r in rows(tmp_path / "run")] == [0, 1, 2]
    assert main(["eval", str(tmp_path / "run" / "checkpoints" / "epoch_000003")]) == 0
    assert main(["eval", str(tmp_path / "run" / "checkpoints" / "epoch_000003"), "--out", str(tmp_path / "e.json")]) == 0
    res = json.loads((tmp_path / "e.json").read_text())
    assert "eval/proxy_reward_mean" in res and res["checkpoint"].endswith("epoch_000003")


def test_without_a_terminal_progress_is_plain_lines_not_a_bar(tmp_path, cache, capsys, monkeypatch):
    import grpo_guard.train.loop as loop

    monkeypatch.setattr(loop, "PROGRESS_LINE_SECONDS", 0.0)  # a line after every epoch
    args = ["train", "--config", "flow_grpo", "--output-dir", str(tmp_path / "run"),
            "--set", "backbone.name=tiny_backbone:make_tiny_backbone", "--set", "rewards=[{name: ink}]",
            "--set", f"cache_dir={cache}", "--set", "eval.evaluator=null", "--set", "eval.samples_per_prompt=2",
            "--set", "sample.prompts_per_epoch=2", "--set", "sample.group_size=4", "--set", "train.epochs=3",
            "--set", "backbone.params={}"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "epochs:" not in err  # no tqdm bar in a captured (non-terminal) stderr
    assert [line.split(":")[0] for line in err.splitlines() if line.startswith("epoch ")] == [
        "epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert "evaluating the base model (" in err


@pytest.mark.parametrize("args, fragment", [
    (["train", "--output-dir", "X", "--set", "train.lrr=1"], "train.lrr"),
    (["train", "--output-dir", "X", "--config", "nope"], "no such config"),
    (["train", "--config", "grpo_guard"], "--output-dir"),
    (["train", "--resume", "X/missing"], "holds no run"),
    (["train", "--output-dir", "X", "--set", "sample.group_size=1"], "group_size"),
    (["eval", "X/nothing"], "no such directory"),
    (["train", "--output-dir", "X", "--set", "backbone.name=tiny_backbone:make_tiny_backbone",
      "--set", "backbone.params={bogus: 1}"], "backbone.params"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, args, fragment):
    args = [a.replace("X", str(tmp_path / "x")) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err
    assert not (tmp_path / "x").exists()


def test_bf16_autocast_keeps_float32_log_probs_and_ratio_one(tmp_path, cache):
    rs = rows(train(tiny_cfg(cache, "train.mixed_precision=bf16", "train.epochs=2"), tmp_path / "run",
                    log=lambda *_: None))
    assert rs[0]["preflight_max_abs_log_ratio"] == 0.0
    assert all(math.isfinite(r["loss"]) for r in rs)


@pytest.mark.parametrize("extra", [[], ["loss.ratio_mode=ratio_norm", "loss.step_weight=inv_dt", "loss.kl_coef=0.1"]])
def test_step_batched_forward_equals_one_step_per_call(tmp_path, cache, extra):
    """Any grouping of the training forward (train.max_forward_rows: several steps per call, or a slice
    of the minibatch per call) gives the same run as one step per call: same losses, ratio statistics
    and weights, to float tolerance."""
    runs = {}
    # one step per call; all 9 steps in one call; 2 steps per call; 3 samples of one step per call (16
    # rows per step: 8 samples x 2 CFG copies)
    for rows_bound in (0, 10_000, 40, 6):
        cfg = tiny_cfg(cache, *extra, f"train.max_forward_rows={rows_bound}", "train.epochs=3")
        runs[rows_bound] = tmp_path / f"r{rows_bound}"
        train(cfg, runs[rows_bound], log=lambda *_: None)
    ref = rows(runs[0])
    for bound in (10_000, 40, 6):
        got = rows(runs[bound])
        assert len(got) == len(ref)
        for a, b in zip(ref, got):
            for key in ("clip_frac", "raw_ratio_mean", "proxy_reward_mean", "kl"):
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), (bound, key)
            # the loss is a near-cancelling sum of -A r w over zero-mean advantages: compare it on the
            # scale of its terms (float32 rounding of the ratios differs with the batch composition)
            scale = 1e-6 * max(1.0, abs(a["loss"]))
            assert abs(b["loss"] - a["loss"]) < scale * 10, (bound, "loss")
            for key in ("ratio_std", "clip_high_pos", "bias_mean"):
                assert b["step_stats"][key] == pytest.approx(a["step_stats"][key], rel=1e-4, abs=1e-7, nan_ok=True)


def test_gold_rewards_alone_feed_the_monitor(tmp_path, cache, monkeypatch):
    """Without a set-level evaluator (real SD3 / Flux runs), the gold-role rewards are normalised to the
    base model and averaged, so the over-optimization monitor still has a gold signal."""
    from grpo_guard.golds import declare_golds
    from grpo_guard.train.evaluate import normalise_gold

    base = {"eval/a_mean": 2.0, "eval/b_mean": -1.0}
    golds = declare_golds(None, {"a": object(), "b": object()})
    out = normalise_gold({"eval/a_mean": 1.0, "eval/b_mean": -3.0}, base, golds)
    assert out == {"gold_norm/a": 0.5, "gold_normalized_avg": 0.5}  # b has a negative base: left out
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    cfg = tiny_cfg(cache, "rewards=[{name: ink}, {name: 'tiny_backbone:make_brightness_reward', role: gold}]",
                   "eval.every=1")
    run = tmp_path / "run"
    train(cfg, run, log=lambda *_: None)
    r = rows(run)
    base_eval = json.loads((run / "base_eval.json").read_text())
    assert base_eval["gold_normalized_avg"] == 1.0
    for row in r:
        assert row["gold_normalized_avg"] == pytest.approx(
            row["eval/tiny_backbone:make_brightness_reward_mean"]
            / base_eval["eval/tiny_backbone:make_brightness_reward_mean"])
        assert "monitor/best_gold" in row


def test_forward_chunks_cover_every_entry_once_within_the_bound():
    import torch

    from grpo_guard.train.update import forward_chunks

    idx = torch.arange(10, 17)  # 7 samples
    for bound, cfg in ((0, 2), (1000, 2), (30, 2), (14, 2), (5, 2), (1, 1), (3, 1)):
        chunks = forward_chunks(idx, 9, cfg, bound)
        seen = sorted((int(i), j) for sub, js in chunks for j in js for i in sub)
        assert seen == sorted((int(i), j) for i in idx for j in range(9)), (bound, cfg)
        if bound:
            assert all(len(js) * sub.numel() * cfg <= max(bound, cfg) for sub, js in chunks), (bound, cfg)


@pytest.mark.parametrize("sde_type", ["flow_grpo", "dance_grpo"])
def test_schedule_step_coefficients_are_the_per_row_values_bit_for_bit(sde_type):
    """The update gathers each row's SDE coefficients from the schedule's table, computed once and shared
    with the rollout; they must be exactly what sde_step computes per row from the row's sigmas (the
    on-policy ratio is then exactly 1, as the preflight checks)."""
    import torch

    from grpo_guard.core import flow_sigmas, sde_coefficients
    from grpo_guard.train.schedule import StepSchedule

    sigmas = flow_sigmas(10, 3.0)
    s = StepSchedule(sigmas, list(range(9)), list(range(10)), 0.7, sde_type)
    ks = torch.tensor([0, 3, 3, 9, 5, 0])
    state = torch.zeros(6, 4)
    got = s.step_coefficients(ks, state)
    want = sde_coefficients(sigmas[ks], sigmas[ks + 1], 0.7, sde_type)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    again = s.step_coefficients(ks.flip(0), state)  # the cached table, other rows
    assert all(torch.equal(g, w.flip(0)) for g, w in zip(again, want))
    # float64 states compute in float64, as sde_step does for them
    got64 = s.step_coefficients(ks, state.double())
    want64 = sde_coefficients(sigmas.double()[ks], sigmas.double()[ks + 1], 0.7, sde_type)
    assert all(g.dtype == torch.float64 and torch.equal(g, w) for g, w in zip(got64, want64))
    # an ODE step outside the SDE window has noise level 0: the Euler step's coefficients
    ode = StepSchedule(sigmas, [2], [2, 3], 0.7, sde_type).step_coefficients(torch.tensor([0, 2]), state[:2])
    assert ode.std[0] == 0 and ode.c_x[0] == 1 and ode.std[1] > 0


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3, float("nan")])
def test_clip_grad_norm_matches_torch_and_accelerate_bit_for_bit(scale):
    """The loop clips with its own ``clip_grad_norm_`` where accelerate's would add only per-call checks;
    gradients and norm must be exactly torch's and accelerate's (NaN gradients give a NaN norm, which
    makes the loop skip the update)."""
    import torch
    from accelerate import Accelerator

    from grpo_guard.train.update import clip_grad_norm_

    gen = torch.Generator().manual_seed(0)
    shapes = [(8, 256), (512, 8), (3,), (7, 5, 2)]

    def params():
        ps = [torch.nn.Parameter(torch.zeros(sh)) for sh in shapes] + [torch.nn.Parameter(torch.zeros(4))]  # no grad
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        return ps

    # one gradient stays finite and of order 1 (except under the bound)
    grads = [torch.randn(sh, generator=gen) * (scale if i != 2 or scale == 1e-3 else 1.0)
             for i, sh in enumerate(shapes)]
    ours, ref, acc = params(), params(), params()
    n_ours = clip_grad_norm_(ours, 1.0)
    n_ref = torch.nn.utils.clip_grad_norm_(ref, 1.0)
    n_acc = Accelerator(cpu=True).clip_grad_norm_(acc, 1.0)
    assert torch.equal(n_ours, n_ref) or (n_ours.isnan() and n_ref.isnan())
    assert torch.equal(n_ours, n_acc) or (n_ours.isnan() and n_acc.isnan())
    for a, b, c in zip(ours, ref, acc):
        if a.grad is None:
            assert b.grad is None and c.grad is None
            continue
        assert torch.equal(a.grad.nan_to_num(), b.grad.nan_to_num()) and torch.equal(a.grad.nan_to_num(),
                                                                                     c.grad.nan_to_num())
    if scale == 1e-3:  # under the bound: untouched
        assert all(torch.equal(p.grad, g) for p, g in zip(ours, grads))
