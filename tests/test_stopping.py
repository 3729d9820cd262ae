"""Ctrl-C and SIGTERM stop every phase promptly (grpo_guard.stopping), and cache entries are never trusted
half-written (grpo_guard.cache_entry): the mechanism in process, then real ``grpo-guard`` subprocesses
signalled while pretraining, training a reward model, calibrating, in an epoch, and running a 2-worker
demo."""

import json
import os
import pickle
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from grpo_guard import stopping
from grpo_guard.cache_entry import read_entry, write_entry
from grpo_guard.world import generator as G
from grpo_guard.world.gold import train_or_load
from tiny_backbone import rows

TESTS = Path(__file__).resolve().parent


# ---- the mechanism, in process --------------------------------------------------------------------------

def test_a_first_signal_raises_at_once_outside_a_deferred_section_and_sets_the_flag_inside():
    with stopping.installed():
        with pytest.raises(stopping.StopRequested) as info:
            with stopping.phase("doing a long thing"):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # interrupted: the handler raises in this frame
        assert info.value.signum == signal.SIGTERM and "while doing a long thing" in str(info.value)
    with stopping.installed():  # a new outermost entry starts clean
        assert not stopping.requested()
        with stopping.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            assert stopping.requested() and stopping.stop_signal() == signal.SIGINT  # only the flag
            with pytest.raises(stopping.StopRequested, match="SIGINT"):
                stopping.raise_if_requested()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))
    e = pickle.loads(pickle.dumps(stopping.StopRequested(15, "x")))  # crosses from worker processes
    assert isinstance(e, stopping.StopRequested) and (e.signum, e.phase) == (15, "x")


SECOND_SIGNAL = """
import os, signal, sys, time
from grpo_guard import stopping
with stopping.installed(), stopping.deferred():
    print("ready", flush=True)
    time.sleep(60)
"""


def test_a_second_signal_exits_at_once():
    p = subprocess.Popen([sys.executable, "-c", SECOND_SIGNAL], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGTERM)  # deferred: only the flag
    time.sleep(0.3)
    assert p.poll() is None
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=5) == 143 and time.monotonic() - t0 < 2


# ---- cache entries ---------------------------------------------------------------------------------------

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", ["truncate weights", "truncate manifest", "no manifest", "flip a byte"])
def test_a_damaged_cache_entry_is_rebuilt_not_loaded(tmp_path, damage):
    config = G.GeneratorConfig(net="mlp", resolution=8, layout="pixels", steps=60)
    first, _ = G.pretrain(config, tmp_path)
    (stem,) = {p.with_suffix("") for p in tmp_path.glob("toy_generator-*.safetensors")}
    weights, manifest = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if damage == "truncate weights":
        _truncate(weights)
    elif damage == "truncate manifest":
        _truncate(manifest)
    elif damage == "no manifest":  # killed between the two writes
        manifest.unlink()
    else:
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
    notices = []
    assert G.load_state(stem, notices.append) is None  # never loaded
    assert len(notices) == 1 and "rebuilding" in notices[0] and not weights.exists() and not manifest.exists()
    again, report = G.pretrain(config, tmp_path)
    assert not report.from_cache  # rebuilt
    x = torch.randn(2, *config.latent_shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.net(x, torch.full((2,), 0.5), *again.text_encoder.encode(["a", "b"])),
                       first.net(x, torch.full((2,), 0.5), *first.text_encoder.encode(["a", "b"])))
    assert G.pretrain(config, tmp_path)[1].from_cache  # and the rebuilt entry is trusted


def test_the_world_networks_cache_entries_verify_their_manifest(tmp_path, capsys):
    """The reward models' and the gold classifier's entries (``train_or_load``): a truncated entry is
    retrained, with one notice."""
    from dataclasses import dataclass

    from grpo_guard.world.gold import TrainReport

    @dataclass(frozen=True)
    class Cfg:
        width: int = 3

    calls = []

    def fit():
        calls.append(1)
        torch.nn.init.constant_(model.weight, 0.5)
        return TrainReport(seconds=0.0, final_loss=0.1), {"acc": 1.0}

    model = torch.nn.Linear(3, 2)
    train_or_load("proxy-test", Cfg(), model, tmp_path, fit, summary=lambda m: "", verbose=False)
    train_or_load("proxy-test", Cfg(), model, tmp_path, fit, summary=lambda m: "", verbose=False)
    assert len(calls) == 1  # the second call loaded the entry
    (weights,) = tmp_path.glob("proxy-test-*.safetensors")
    _truncate(weights)
    meta = train_or_load("proxy-test", Cfg(), model, tmp_path, fit, summary=lambda m: "", verbose=False)
    assert len(calls) == 2 and meta["acc"] == 1.0 and "incomplete or corrupt" in capsys.readouterr().out
    assert read_entry(weights.with_suffix(""))[1]["acc"] == 1.0  # rewritten whole


def test_an_entry_is_written_tensors_first_and_manifest_last(tmp_path, monkeypatch):
    import grpo_guard.cache_entry as ce

    order = []
    real_replace = os.replace
    monkeypatch.setattr(ce.os, "replace", lambda a, b: (order.append(Path(b).suffix), real_replace(a, b)))
    write_entry(tmp_path / "e", {"w": torch.ones(3)}, {"k": 1})
    assert order == [".safetensors", ".json"] and not list(tmp_path.glob(".*.tmp"))
    assert read_entry(tmp_path / "e")[1] == {"k": 1}
    assert read_entry(tmp_path / "missing") is None


# ---- real subprocesses in each phase ----------------------------------------------------------------------

def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _start(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-u", "-m", "grpo_guard", *args], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _wait_for(p: subprocess.Popen, needle: str, timeout: float = 240) -> list[str]:
    """Read the process's output until a line contains ``needle``; returns the lines read."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
            break
        line = p.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} never printed:\n" + "".join(lines[-40:]))


def _children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _stop(p: subprocess.Popen, sig: int, group: bool = False) -> tuple[int, float, str]:
    """Send ``sig`` (to the whole process group for a terminal's Ctrl-C); returns (exit code, seconds, the
    rest of the output)."""
    t0 = time.monotonic()
    os.killpg(p.pid, sig) if group else p.send_signal(sig)
    rest, _ = p.communicate(timeout=60)
    p.stdout.close()
    return p.returncode, time.monotonic() - t0, rest


QUICK = ["--config", "quick_grpo_guard", "--set", "log.progress=false"]


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stop_while_pretraining_the_base_model(tmp_path, sig, code):
    run, cache = tmp_path / "run", tmp_path / "cache"
    p = _start(["train", *QUICK, "--output-dir", str(run), "--set", f"cache_dir={cache}",
                "--set", "backbone.params.pretrain_steps=200000"], start_new_session=True)
    _wait_for(p, "toy backbone: pretraining step")
    rc, seconds, rest = _stop(p, sig, group=sig == signal.SIGINT)
    assert rc == code and seconds < 5, rest
    line = [x for x in rest.splitlines() if "interrupted by" in x]
    assert len(line) == 1 and "pretraining the toy generator" in line[0] and "redoes it" in line[0], rest
    assert "Traceback" not in rest
    assert not list(cache.rglob("toy_generator-*")) and not run.exists()  # nothing half-written, nothing kept
    done = subprocess.run([sys.executable, "-m", "grpo_guard", "train", *QUICK, "--output-dir", str(run), "--set",
                           f"cache_dir={cache}", "--set", "train.epochs=2"], env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_stop_while_training_a_reward_model(tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    p = _start(["train", "--config", "quick_grpo_guard", "--output-dir", str(run), "--set", f"cache_dir={cache}",
                "--set", "rewards=[{name: toy_classifier, params: {epochs: 100000}}]"])  # progress lines on
    _wait_for(p, "training (nothing is cached before the end)")
    time.sleep(1.0)
    rc, seconds, rest = _stop(p, signal.SIGTERM)
    assert rc == 143 and seconds < 5, rest
    assert "while training the proxy classifier model" in rest and "Traceback" not in rest
    assert not list(cache.rglob("proxy-classifier-*")) and list(cache.rglob("toy_generator-*.json"))


@pytest.mark.slow
def test_stop_while_calibrating_then_the_study_finishes(tmp_path):
    out = tmp_path / "study"
    args = ["study", "--preset", "tiny", "--out", str(out), "--workers", "1", "--set", "backbone.params.n=96",
            "--set", f"cache_dir={tmp_path / 'cache'}"]
    p = _start(args)
    _wait_for(p, "calibrate flow_grpo -> ")
    time.sleep(0.5)
    rc, seconds, rest = _stop(p, signal.SIGTERM)
    assert rc == 143 and seconds < 5, rest
    assert "interrupted by SIGTERM" in rest and "run the same command again" in rest and "Traceback" not in rest
    done = subprocess.run([sys.executable, "-m", "grpo_guard", *args], env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "study.md").is_file()
    # a calibration whose metrics were cut short is run again, not trusted
    metrics = out / "multi" / "calibrate_grpo_guard" / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n")
    again = subprocess.run([sys.executable, "-m", "grpo_guard", *args], env=_env(), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0 and "calibration" in again.stderr and "is incomplete" in again.stderr
    assert len(metrics.read_text().splitlines()) == 2


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stop_in_an_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, sig, code):
    from grpo_guard.config import load_config
    from grpo_guard.train.loop import train

    world = ["backbone.name=tiny_backbone:make_tiny_backbone", "backbone.params={}", "rewards=[{name: ink}]",
             "eval.evaluator=null", "eval.every=2", "eval.samples_per_prompt=2", "sample.prompts_per_epoch=4",
             "sample.group_size=4", "log.progress=false", "log.checkpoint_every=50", "log.image_every=0",
             "train.lr=3e-3", "loss.clip_range=1e-3", "train.epochs=40", f"cache_dir={tmp_path / 'cache'}"]
    run = tmp_path / "run"
    p = _start(["train", "--config", "flow_grpo", "--output-dir", str(run), *[x for s in world for x in ("--set", s)]],
               start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not ((run / "metrics.jsonl").is_file() and len(rows(run)) >= 3):
        time.sleep(0.05)
    rc, seconds, rest = _stop(p, sig, group=sig == signal.SIGINT)
    assert rc == code and seconds < 5, rest
    assert f"interrupted by {sig.name}" in rest and "resume with --resume" in rest and "Traceback" not in rest
    assert 3 <= len(rows(run)) < 40
    r = subprocess.run([sys.executable, "-m", "grpo_guard", "train", "--resume", str(run)], env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    torch.set_num_threads(1)
    ref = train(load_config("flow_grpo", world), tmp_path / "ref", log=lambda *_: None)
    timing = ("seconds", "wall", "_s")
    strip = lambda row: {k: v for k, v in row.items() if not any(t in k for t in timing)}  # noqa: E731
    assert [strip(x) for x in rows(run)] == [strip(x) for x in rows(ref)]


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stop_a_two_worker_demo_leaves_no_orphan_and_resume_finishes_it(tmp_path, sig, code):
    out = tmp_path / "demo"
    args = ["demo", "--quick", "--epochs", "60", "--workers", "2", "--out", str(out), "--set",
            f"cache_dir={tmp_path / 'cache'}", "--set", "log.progress=false"]
    p = _start(args, start_new_session=True)
    # both workers' first runs under way (on a busy machine the second can start well after the first)
    firsts = [out / "runs" / run / "metrics.jsonl" for run in ("flow_grpo_s0", "flow_grpo_s1")]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not all(f.is_file() and len(f.read_text().splitlines()) >= 2
                                                  for f in firsts):
        time.sleep(0.1)
    workers = _children(p.pid)
    assert len([w for w in workers if _alive(w)]) >= 2
    rc, seconds, rest = _stop(p, sig, group=sig == signal.SIGINT)  # Ctrl-C reaches the whole process group
    assert rc == code and seconds < 5, rest[-3000:]
    assert "--resume" in rest and "Traceback" not in rest
    time.sleep(0.5)
    assert not [w for w in workers if _alive(w)]  # no orphan keeps running
    for run in ("flow_grpo_s0", "flow_grpo_s1"):
        n = len((out / "runs" / run / "metrics.jsonl").read_text().splitlines())
        assert 1 <= n < 60 and (out / "runs" / run / "checkpoints").is_dir(), run
    r = subprocess.run([sys.executable, "-m", "grpo_guard", *args, "--resume"], env=_env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for run in ("flow_grpo_s0", "flow_grpo_s1", "grpo_guard_s0", "grpo_guard_s1"):
        epochs = [json.loads(x)["epoch"] for x in (out / "runs" / run / "metrics.jsonl").read_text().splitlines()]
        assert epochs == list(range(60)), run


def test_a_stop_in_the_first_epochs_rollout_keeps_nothing(tmp_path, monkeypatch):
    """Before the first update there is nothing to checkpoint: the run that had not started is removed (the
    same command starts it again), not left with a checkpoint a --resume would be told about."""
    from grpo_guard.train import epoch as epoch_parts
    from grpo_guard.train.loop import train
    from tiny_backbone import tiny_cfg

    real = epoch_parts.score_batch

    def score_then_signal(ctx, batch, traj):
        if batch.epoch == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(ctx, batch, traj)

    monkeypatch.setattr("grpo_guard.train.loop.score_batch", score_then_signal)
    with pytest.raises(stopping.StopRequested, match="in the rewards of the first epoch"):
        train(tiny_cfg(tmp_path / "cache", "train.epochs=3"), tmp_path / "run", log=lambda *_: None)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
