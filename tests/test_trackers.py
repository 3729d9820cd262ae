"""Experiment trackers: a run's scalars, per-step statistics and image grids read back from the TensorBoard event
file and from the offline W&B run directory; a tracker that cannot start is one clear line before training."""

import json
import sys

import pytest

from grpo_guard.cli import main
from grpo_guard.train.loop import train
from grpo_guard.train.trackers import flatten_row
from tiny_backbone import rows, tiny_cfg

RUN = ("train.epochs=3", "eval.every=1", "log.image_every=1", "train.inner_epochs=2")


def test_flatten_row_names_the_per_step_statistics():
    row = {"epoch": 4, "loss": 0.5, "monitor/hacking": False, "skipped": None, "trained_steps": [2, 5],
           "step_stats": {"clip_high_pos": [0.1, float("nan")]}, "grad_norm_step": [1.0, 2.0], "eval/x_mean": 3}
    assert flatten_row(row) == {"loss": 0.5, "eval/x_mean": 3.0, "steps/clip_high_pos/step_2": 0.1,
                                "steps/grad_norm/step_2": 1.0, "steps/grad_norm/step_5": 2.0}


def test_tensorboard_event_file_holds_the_runs_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(tiny_cfg(tmp_path / "c", *RUN, "log.trackers=[tensorboard]"), tmp_path / "run", log=lambda *_: None)
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    want = rows(run)
    loss = acc.Scalars("loss")
    assert [e.step for e in loss] == [0, 1, 2]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in want], rel=1e-6)
    k = want[1]["trained_steps"][0]
    clip = acc.Scalars(f"steps/clip_high_pos/step_{k}")
    assert clip[1].value == pytest.approx(want[1]["step_stats"]["clip_high_pos"][0], rel=1e-6)
    assert [e.step for e in acc.Images("images/eval")] == [0, 1, 2]


def _wandb_history(path):
    """The history rows of an offline W&B run file: wandb's record log (a ":W&B" header, then LevelDB-style
    records of 7-byte headers in 32 KiB blocks), each record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, buf, rows = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def test_wandb_offline_run_directory_holds_the_runs_metrics(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = train(tiny_cfg(tmp_path / "c", *RUN, "log.trackers=[wandb]"), tmp_path / "run", log=lambda *_: None)
    run_id = (run / "wandb_id").read_text().strip()
    offline = list((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 1
    history = [h for h in _wandb_history(offline[0] / f"run-{run_id}.wandb") if "loss" in h]
    want = rows(run)
    assert [h["_step"] for h in history] == [0, 1, 2]
    assert [h["loss"] for h in history] == pytest.approx([r["loss"] for r in want], rel=1e-6)
    k = want[1]["trained_steps"][0]
    assert history[1][f"steps/clip_high_pos/step_{k}"] == pytest.approx(want[1]["step_stats"]["clip_high_pos"][0])
    assert len(list(offline[0].rglob("files/media/images/**/*.png"))) == 3  # one grid per evaluation
    assert len(list(offline[0].rglob("files/media/table/**/*.table.json"))) == 3  # the per-step tables


def test_a_tracker_that_is_not_installed_stops_the_run_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    out = tmp_path / "run"
    code = main(["train", "--output-dir", str(out), "--set", "backbone.name=tiny_backbone:make_tiny_backbone",
                 "--set", "rewards=[{name: ink}]", "--set", "eval.evaluator=null", "--set", f"cache_dir={tmp_path}",
                 "--set", "log.trackers=[wandb]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install 'grpo-guard[trackers]'" in err[0]
    assert not out.exists()
    assert main(["train", "--output-dir", str(out), "--set", "log.trackers=[mlflow]"]) == 2
    assert "unknown tracker 'mlflow'" in capsys.readouterr().err
