"""Fault tolerance (docs/reliability.md): kills at random points, signals, corrupted checkpoints, a full
disk, NaN updates, a second run on the same directory."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from grpo_guard.config import load_config
from grpo_guard.train import checkpoint as ckpt_mod
from grpo_guard.train.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, verify_checkpoint
from grpo_guard.train.loop import OutputWriteError, RunDirError, TrainingStopped, train
from grpo_guard.train.runlog import MetricsLog
from tiny_backbone import rows

TESTS = Path(__file__).resolve().parent
TIMING = ("seconds", "preflight")  # a resumed process re-runs the preflight
BASE = ["backbone.name=tiny_backbone:make_tiny_backbone", "backbone.params={}", "rewards=[{name: ink}]", "eval.evaluator=null",
        "eval.samples_per_prompt=2", "eval.every=2", "sample.prompts_per_epoch=4", "sample.group_size=4",
        "log.progress=false", "log.checkpoint_every=1", "log.image_every=0", "train.lr=3e-3",
        "loss.clip_range=1e-3", "train.grad_norm_every=0"]


def cfg_for(cache, *extra):
    return load_config("flow_grpo", [*BASE, f"cache_dir={cache}", *extra])


def strip(row):
    return {k: v for k, v in row.items() if not any(t in k for t in TIMING)}


def quiet(*_):
    pass


# ---- checkpoints --------------------------------------------------------------------------------------

def test_corrupted_and_truncated_checkpoints_are_detected_and_skipped(tmp_path):
    run = tmp_path / "run"
    train(cfg_for(tmp_path / "c", "train.epochs=4", "log.keep_checkpoints=3"), run, log=quiet)
    ckpts = list_checkpoints(run)
    assert [p.name for p in ckpts] == ["epoch_000002", "epoch_000003", "epoch_000004"]  # the last K kept
    for p in ckpts:
        verify_checkpoint(p)
    # flip a byte in the newest, truncate the one before: both are reported and skipped
    f = ckpts[-1] / "trainable.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        verify_checkpoint(ckpts[-1])
    g = ckpts[-2] / "optimizer.safetensors"
    g.write_bytes(g.read_bytes()[:100])
    msgs = []
    assert latest_checkpoint(run, log=msgs.append) == ckpts[0]
    assert len(msgs) == 2 and all("skipping checkpoint" in m for m in msgs)
    (ckpts[0] / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        verify_checkpoint(ckpts[0])
    # resume with no valid checkpoint left: starts again from epoch 0 and finishes
    train(cfg_for(tmp_path / "c", "train.epochs=4", "log.keep_checkpoints=3"), run, resume=True, log=msgs.append)
    assert any("no valid checkpoint" in m for m in msgs)
    assert [r["epoch"] for r in rows(run)] == [0, 1, 2, 3]


def test_resume_falls_back_to_the_previous_good_checkpoint_and_matches(tmp_path):
    # with a memory bound on the training forward: the resumed run keeps the bytes per row measured on
    # the run's first call (a new measurement would group the first resumed minibatch differently)
    mem = ["train.max_forward_mb=1024", "train.max_forward_rows=0"]
    cfg = cfg_for(tmp_path / "c", "train.epochs=4", *mem)
    ref = tmp_path / "ref"
    train(cfg, ref, log=quiet)
    run = tmp_path / "run"
    train(cfg_for(tmp_path / "c", "train.epochs=3", *mem), run, log=quiet)
    newest = list_checkpoints(run)[-1]
    (newest / "state.json").write_text("{}")  # corrupted: fails its checksum
    msgs = []
    train(cfg, run, resume=True, log=msgs.append)
    assert any("resumed from" in m and "epoch_000002" in m for m in msgs)
    assert not any("training forward:" in m for m in msgs)  # measured once, in the first process
    assert [strip(r) for r in rows(run)] == [strip(r) for r in rows(ref)]
    assert [("forward_mb_per_row" in r) for r in rows(run)] == [True, False, False, False]


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    real = ckpt_mod.save_file
    calls = {"n": 0}

    def flaky(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:  # 2 files per checkpoint: the second checkpoint's optimizer file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(ckpt_mod, "save_file", flaky)
    run = tmp_path / "run"
    with pytest.raises(OutputWriteError, match=r"epoch 2 .*No space left on device.*epoch_000001 is intact"):
        train(cfg_for(tmp_path / "c", "train.epochs=4"), run, log=quiet)
    assert [p.name for p in list_checkpoints(run)] == ["epoch_000001"]
    verify_checkpoint(list_checkpoints(run)[0])
    assert not list((run / "checkpoints").glob(".tmp_*"))  # the half-written one is removed
    monkeypatch.setattr(ckpt_mod, "save_file", real)
    train(cfg_for(tmp_path / "c", "train.epochs=4"), run, resume=True, log=quiet)
    assert [r["epoch"] for r in rows(run)] == [0, 1, 2, 3]


def test_unwritable_metrics_is_a_clear_error(tmp_path, monkeypatch):
    def fail(self, row):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(MetricsLog, "append", fail)
    with pytest.raises(OutputWriteError, match="metrics.jsonl .*Read-only file system.*no checkpoint"):
        train(cfg_for(tmp_path / "c", "train.epochs=2"), tmp_path / "run", log=quiet)


def test_stale_temporary_checkpoint_dirs_are_cleaned(tmp_path):
    run = tmp_path / "run"
    train(cfg_for(tmp_path / "c", "train.epochs=1"), run, log=quiet)
    stale = run / "checkpoints" / ".tmp_epoch_000007"
    stale.mkdir()
    (stale / "trainable.safetensors").write_bytes(b"half")
    train(cfg_for(tmp_path / "c", "train.epochs=2"), run, resume=True, log=quiet)
    assert not stale.exists()


# ---- NaN / Inf ---------------------------------------------------------------------------------------

def _nan_cfg(cache, nan_from, nan_to, *extra):
    # the tests count training calls: all trained steps of a minibatch in one call from the first epoch on
    return cfg_for(cache, "backbone.name=tiny_backbone:make_nan_backbone",
                   f"backbone.params={{nan_from: {nan_from}, nan_to: {nan_to}}}", "train.max_forward_mb=0",
                   "train.max_forward_rows=512", *extra)


def test_transient_nan_updates_are_skipped_and_counted(tmp_path):
    # 2 updates x 1 forward (all 9 trained steps in one call) = 2 training forwards per epoch: calls 2, 3
    # are epoch 1
    run = tmp_path / "run"
    msgs = []
    train(_nan_cfg(tmp_path / "c", 2, 4, "train.epochs=4"), run, log=msgs.append)
    r = rows(run)
    assert [x["epoch"] for x in r] == [0, 1, 2, 3]
    assert r[1]["skipped_updates"] == 2 and "skipped_updates" not in r[0] and r[3].get("skipped_updates") is None
    assert any("2 of 2 updates skipped" in m for m in msgs)
    assert all(v is not None for v in [r[2]["loss"], r[3]["loss"]])
    e1 = load_file(run / "checkpoints" / "epoch_000004" / "trainable.safetensors")
    assert all(bool(torch.isfinite(v).all()) for v in e1.values())


def test_persistent_nan_stops_cleanly_with_the_last_good_state(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TrainingStopped, match="2 consecutive epochs without a finite update"):
        train(_nan_cfg(tmp_path / "c", 2, 10**9, "train.epochs=6", "train.max_bad_batches=2",
                       "log.keep_checkpoints=5"), run, log=quiet)
    names = [p.name for p in list_checkpoints(run)]
    assert names[-1] == "epoch_000002"
    good = load_file(run / "checkpoints" / "epoch_000001" / "trainable.safetensors")
    last = load_file(run / "checkpoints" / "epoch_000002" / "trainable.safetensors")
    assert all(torch.equal(good[k], last[k]) for k in good)  # the skipped updates changed nothing


# ---- a reward that fails during evaluation --------------------------------------------------------------

def test_a_failing_evaluation_is_skipped_and_training_goes_on(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    # the evaluation set is 10 digit prompts x 2 samples = 20 images; training batches are 16
    cfg = cfg_for(tmp_path / "c", "train.epochs=4", "eval.every=2",
                  "rewards=[{name: ink}, {name: 'tiny_backbone:make_fails_on_size_reward', role: gold, "
                  "params: {size: 20}}]")
    msgs = []
    with pytest.raises(TrainingStopped, match="base model's evaluation failed.*unreachable"):
        train(cfg, tmp_path / "run", log=msgs.append)
    assert not (tmp_path / "run").exists()  # failed before its first epoch: nothing left
    # the base evaluation works, a later one fails: skipped with a message, the run finishes
    cfg = cfg_for(tmp_path / "c", "train.epochs=4", "eval.every=2",
                  "rewards=[{name: ink}, {name: 'tiny_backbone:make_fails_on_size_reward', role: gold, "
                  "params: {size: 20, skip_first: 1}}]")
    msgs.clear()
    train(cfg, tmp_path / "run2", log=msgs.append)
    r = rows(tmp_path / "run2")
    assert [x["epoch"] for x in r] == [0, 1, 2, 3]
    assert "unreachable" in r[1]["eval_error"] and "unreachable" in r[3]["eval_error"]
    assert "eval/proxy_reward_mean" not in r[1] and sum("evaluation skipped" in m for m in msgs) == 2


# ---- two runs, one directory --------------------------------------------------------------------------

def test_a_second_run_on_a_locked_directory_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(str(holder.pid))
        with pytest.raises(RunDirError, match=f"in use by another run \\(pid {holder.pid}\\)"):
            train(cfg_for(tmp_path / "c", "train.epochs=1"), run, log=quiet)
    finally:
        holder.kill()
        holder.wait()
    (run / ".lock").write_text(str(holder.pid))  # a stale lock (dead pid) is taken over
    train(cfg_for(tmp_path / "c", "train.epochs=1"), run, log=quiet)
    assert not (run / ".lock").exists()


# ---- processes: signals and kills ----------------------------------------------------------------------

def _cli(tmp_path, *args, fault=None):
    """The ``grpo-guard train`` command line and environment; a new run gets the test config."""
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("GRPO_GUARD_FAULT", None)
    if fault:
        env["GRPO_GUARD_FAULT"] = fault
    cmd = [sys.executable, "-m", "grpo_guard", "train", *args]
    if "--resume" not in args:  # a resumed run keeps its own config.yaml
        cmd += ["--config", "flow_grpo", *[x for s in [*BASE, f"cache_dir={tmp_path / 'cache'}"] for x in ("--set", s)]]
    return cmd, env


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_writes_a_checkpoint_then_exits_cleanly(tmp_path, sig, code):
    run = tmp_path / "run"
    cmd, env = _cli(tmp_path, "--output-dir", str(run), "--set", "train.epochs=400", "--set", "log.checkpoint_every=100")
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "metrics.jsonl").is_file() and rows(run)):
        time.sleep(0.2)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert p.returncode == code, err[-2000:]
    assert f"interrupted by {sig.name}" in err and "resume with --resume" in err
    done = len(rows(run))
    assert 1 <= done < 400
    assert list_checkpoints(run)[-1].name == f"epoch_{done:06d}"  # the epoch it was in was finished and saved
    assert not (run / ".lock").exists()


#: one after another on the same 8-epoch run (2 updates and one checkpoint per epoch, evaluation every 2)
FAULTS = ["rollout:2", "update:3", "checkpoint_write:1", "metrics_write:2", "checkpoint_write:4", "eval:1",
          "update:3", "rollout:1", "checkpoint_write:2", "metrics_write:1"]


@pytest.mark.slow
def test_sigkill_at_ten_points_then_resume_equals_an_uninterrupted_run(tmp_path):
    """SIGKILL during rollout, update, checkpoint writing, metrics writing and evaluation (10 points, one
    after another on the same run), resuming after each: the final metrics equal an uninterrupted run's."""
    epochs = ["--set", "train.epochs=8"]
    ref = tmp_path / "ref"
    cmd, env = _cli(tmp_path, "--output-dir", str(ref), *epochs)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "run"
    kills = 0
    for i, fault in enumerate(FAULTS):
        args = ("--output-dir", str(run), *epochs) if i == 0 else ("--resume", str(run))
        cmd, env = _cli(tmp_path, *args, fault=fault)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == -signal.SIGKILL, (fault, r.returncode, r.stderr[-2000:])
        kills += 1
        for p in list_checkpoints(run):  # every checkpoint left behind verifies
            verify_checkpoint(p)
    assert kills == len(FAULTS)
    cmd, env = _cli(tmp_path, "--resume", str(run))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [strip(x) for x in rows(run)] == [strip(x) for x in rows(ref)]


def test_nothing_unpickles():
    """Security: no pickle, no unsafe YAML loader, and torch.load only with weights_only=True (for the
    published .pth weights of some reward models) anywhere in the package."""
    import re

    src = Path(__file__).resolve().parents[1] / "src" / "grpo_guard"
    offenders = []
    for f in src.rglob("*.py"):
        code = f.read_text()
        for needle in ("import pickle", "pickle.load", "yaml.load(", "yaml.unsafe_load", "import dill"):
            if needle in code:
                offenders.append(f"{f.name}: {needle}")
        for m in re.finditer(r"torch\.load\(", code):
            depth, i = 1, m.end()
            while depth and i < len(code):
                depth += {"(": 1, ")": -1}.get(code[i], 0)
                i += 1
            if "weights_only=True" not in code[m.end():i]:
                offenders.append(f"{f.name}: torch.load without weights_only=True")
    assert not offenders


def test_training_interrupted_survives_pickling():
    """It crosses from the demo's and study's worker processes to the parent with its signal number."""
    import pickle

    from grpo_guard.train.loop import TrainingInterrupted

    e = pickle.loads(pickle.dumps(TrainingInterrupted("interrupted by SIGTERM", 15)))
    assert isinstance(e, TrainingInterrupted) and e.signum == 15 and str(e) == "interrupted by SIGTERM"
