"""``grpo-guard bench``: the target table on synthetic figures (fast), and the quick benchmark end to end
(slow): the reference-style loop reproduces our losses, the network clock and the floor are measured,
memory is recorded, and the JSON and the table are written."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from grpo_guard.bench import format_table, targets


def _res(overhead=1.05, ours_over_ref=0.6, loss_diff=1e-8, rss=(500.0, 501.0), window=0.45, exponent=1.0):
    return {"settings": [{"name": "s", "epoch_s": 1.0, "rollout_s": 0.3, "update_s": 0.7, "images_per_s": 10.0,
                          "trained_steps_per_s": 50.0, "peak_rss_mb": 500.0, "rollout_floor_s": 0.3,
                          "update_floor_s": 0.6, "overhead": 1 / 0.9, "network_s": 1 / overhead,
                          "insitu_overhead": overhead, "ref_epoch_s": 1 / ours_over_ref,
                          "ours_over_reference": ours_over_ref, "max_loss_diff": loss_diff}],
            "scaling": {"group_size": {"points": [{"value": 4, "epoch_s": 1, "peak_rss_mb": 1}],
                                       "time_exponent": exponent, "memory_exponent": 0.4}},
            "memory": {"name": "memory-200", "rss_curve_mb": [[0, rss[0]], [180, rss[1]]]},
            "sde_window": {"full_update_s": 1.0, "half_update_s": window, "trained_steps": [9, 4],
                           "update_ratio": window, "steps_ratio": 4 / 9}}


def test_targets_met_and_missed():
    met = {t: ok for t, _, ok in targets(_res())}
    assert all(met.values()) and len(met) == 5
    missed = targets(_res(overhead=1.3, ours_over_ref=0.8, rss=(500.0, 700.0), window=0.9, exponent=1.5))
    assert len(missed) == 5 and not any(ok for _, _, ok in missed)
    growth = targets(_res(rss=(500.0, 900.0)))
    assert [ok for t, _, ok in growth if t.startswith("memory")] == [False]
    # judged after the warm-up epochs when the curve has them: growth during the warm-up is not a leak,
    # growth after it is (also when the RSS falls back by the last sample)
    res = _res()
    res["memory"]["rss_curve_mb"] = [[0, 500.0], [5, 560.0], [20, 561.0], [180, 562.0]]
    assert [(t, ok) for t, _, ok in targets(res) if t.startswith("memory")] == [("memory flat over epochs 5-180", True)]
    res["memory"]["rss_curve_mb"] = [[0, 500.0], [5, 560.0], [100, 700.0], [180, 561.0]]
    assert [ok for t, _, ok in targets(res) if t.startswith("memory")] == [False]
    assert not targets(_res(loss_diff=1e-3))[1][2]  # losses that differ fail the reference target
    table = format_table(_res(overhead=1.3))
    assert "| s: overhead <= 1.10 | isolated floor 1.11, in situ 1.30 | NO |" in table
    res = _res(window=0.47)
    res["sde_window"]["update_ratio_epochs"] = [0.52, 0.47, 0.45]
    want = "update time x0.47 for trained steps x0.44 (median of 3 epochs in turns: 0.52, 0.47, 0.45)"
    assert want in format_table(res)


@pytest.mark.slow
def test_quick_bench_end_to_end(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "grpo_guard", "bench", "--out", str(tmp_path / "b"), "--quick",
                        "--epochs", "3", "--set", f"cache_dir={tmp_path / 'cache'}"],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "b" / "bench.json").read_text())
    (s,) = res["settings"]
    # the MLP world's main measurements run EPOCH_FACTOR (5) times the bench's epochs
    assert s["name"] == "toy-mlp-8px" and s["epochs"] == 15 and len(s["epoch_s_all"]) == 15
    assert s["max_loss_diff"] < 1e-5 and len(s["ref_losses"]) == 15  # the reference loop computes our losses
    # paired: one reference epoch after each of ours, the ratio is the median of the pairs after the first
    assert len(s["ours_over_reference_pairs"]) == 14
    assert s["ours_over_reference"] == pytest.approx(float(np.median(s["ours_over_reference_pairs"])))
    assert 0 < s["network_s"] <= s["epoch_s"]  # the network runs inside the epoch
    assert s["rollout_floor_s"] > 0 and s["update_floor_s"] > 0 and s["overhead"] > 0
    assert [e for e, _ in res["memory"]["rss_curve_mb"]] == [0, 5, 20]
    assert {t["target"] for t in res["targets"]} >= {"toy-mlp-8px: overhead <= 1.10"}
    assert "| target | measured | met |" in r.stdout and "toy-mlp-8px" in r.stdout
    assert (tmp_path / "b" / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the figure, after the JSON


@pytest.mark.slow
def test_bench_of_chosen_settings_only(tmp_path):
    """``--settings``: only the named settings' main measurements (floor, in situ, paired reference), no
    sweeps, SDE window or memory run; the table and the JSON name the device the runs trained on."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "grpo_guard", "bench", "--out", str(tmp_path / "b"), "--settings",
                        "toy-mlp-8px", "--epochs", "2", "--set", f"cache_dir={tmp_path / 'cache'}"],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "b" / "bench.json").read_text())
    (s,) = res["settings"]
    assert s["name"] == "toy-mlp-8px" and s["epochs"] == 10 and len(s["ref_losses"]) == 10
    assert s["max_loss_diff"] < 1e-5 and s["overhead"] > 0
    assert s["device"] == res["machine"]["device"] == "cpu" and s["peak_gpu_mb"] is None
    assert res["memory"] is None and res["scaling"] == {} and res["sde_window"] is None
    assert not any(t["target"].startswith("memory") for t in res["targets"])
    assert r.stdout.startswith("device: cpu") and "[bench] memory" not in r.stderr


@pytest.mark.slow
def test_bench_under_bf16_autocast(tmp_path):
    """With ``train.mixed_precision=bf16`` the floor and the reference loop run under the same autocast as
    ``train()`` (the reference reproduces epoch 0's loss), and only epoch 0 is compared: the two trainings
    drift apart in half precision."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "grpo_guard", "bench", "--out", str(tmp_path / "b"), "--settings",
                        "toy-mlp-8px", "--epochs", "2", "--set", f"cache_dir={tmp_path / 'cache'}",
                        "--set", "train.mixed_precision=bf16"], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    (s,) = json.loads((tmp_path / "b" / "bench.json").read_text())["settings"]
    assert s["mixed_precision"] == "bf16" and s["loss_epochs_compared"] == 1
    assert s["max_loss_diff"] == pytest.approx(abs(s["losses"][0] - s["ref_losses"][0]))
    assert s["max_loss_diff"] <= s["loss_tolerance"] == pytest.approx(max(0.01 * abs(s["losses"][0]), 1e-5))
    assert "(epoch 0 only: bf16)" in r.stdout


def test_loss_agreement_compares_every_epoch_in_float32_and_epoch_0_in_half_precision():
    from grpo_guard.bench import LOSS_TOLERANCE
    from grpo_guard.bench.measure import _loss_agreement

    ours, ref = [0.5, 0.2, 0.3], [0.5 + 1e-7, 0.2 - 3e-7, 0.1]
    assert _loss_agreement(ours, ref, "no") == {"max_loss_diff": pytest.approx(0.2), "loss_epochs_compared": 3,
                                                "loss_tolerance": LOSS_TOLERANCE}
    half = _loss_agreement(ours, ref, "bf16")
    assert half == {"max_loss_diff": pytest.approx(1e-7), "loss_epochs_compared": 1, "loss_tolerance": 0.005}
    res = _res(loss_diff=half["max_loss_diff"])
    res["settings"][0].update({**half, "epochs": 3, "mixed_precision": "bf16"})
    (fig, ok), = [(f, ok) for t, f, ok in targets(res) if "reference" in t]
    assert ok and fig.endswith("(epoch 0 only: bf16)")
    res["settings"][0]["max_loss_diff"] = 0.006  # beyond 1% of epoch 0's loss
    assert not [ok for t, _, ok in targets(res) if "reference" in t][0]


def test_unknown_setting_is_refused_before_anything_runs(tmp_path):
    r = subprocess.run([sys.executable, "-m", "grpo_guard", "bench", "--out", str(tmp_path / "b"), "--settings",
                        "toy-mlp-8px,sd3-huge"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unknown sd3-huge" in r.stderr and "toy-mlp-8px, toy-sd3-32px" in r.stderr
    assert not (tmp_path / "b").exists()


def test_clocks_wait_for_cuda_and_not_for_the_cpu(monkeypatch):
    """On CUDA every clock read waits for the queued kernels (else it would time their launches): the
    network clock syncs before and after each timed call, ``_timeit`` around each repeat; on the CPU
    nothing syncs. (No GPU here: ``torch.cuda.synchronize`` is replaced by a recorder.)"""
    import torch

    from grpo_guard.bench import measure as bench

    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    clock = bench._NetworkClock(torch.device("cuda"))
    timed = clock._timed(lambda: events.append("call"))
    timed()
    assert events == ["sync", "call", "sync"] and clock.total > 0
    clock.paused = True  # a paused clock (the paired reference epoch) adds no time, and need not wait
    events.clear()
    before = clock.total
    timed()
    assert events == ["sync", "call"] and clock.total == before
    events.clear()
    bench._timeit(lambda: events.append("call"), repeat=2, device=torch.device("cuda"))
    assert events == ["sync", "call", "sync"] * 2
    events.clear()
    bench._NetworkClock(torch.device("cpu"))._timed(lambda: events.append("call"))()
    bench._timeit(lambda: events.append("call"), repeat=1, device=torch.device("cpu"))
    assert events == ["call", "call"]


def test_table_and_targets_show_gpu_memory_when_measured():
    res = _res()
    res["settings"][0].update({"device": "cuda", "peak_gpu_mb": 812.4})
    res["memory"]["gpu_curve_mb"] = [[0, 100.0], [5, 120.0], [180, 121.0]]
    table = format_table(res)
    assert table.startswith("device: cuda") and "| 500 (GPU 812) |" in table
    assert "GPU memory allocated over 200 epochs (epoch: MB): 0: 100, 5: 120, 180: 121" in table
    met = {t: ok for t, _, ok in targets(res)}
    assert met["GPU memory flat over epochs 5-180"] and met["memory flat over epochs 0-180"]
    res["memory"]["gpu_curve_mb"][-1] = [180, 400.0]  # growth on the device is a leak too
    assert not {t: ok for t, _, ok in targets(res)}["GPU memory flat over epochs 5-180"]
    assert "GPU" not in format_table(_res())  # a CPU run says nothing of a GPU


def test_bad_override_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "grpo_guard", "bench", "--out", str(tmp_path), "--quick",
                        "--set", "train.no_such_key=1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no_such_key" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "bench.json").exists()


def test_every_setting_resolves_its_placeholders_and_loads(tmp_path):
    """Each setting's overrides, after substitution, form a valid config with the user's overrides last."""
    from grpo_guard.bench import SETTINGS, make_spec
    from grpo_guard.config import load_config

    (tmp_path / "prompts.txt").write_text("a cat\n")
    for name, (config, ov) in SETTINGS.items():
        spec = make_spec(name, config, ov, tiny=tmp_path / "tiny", prompts=tmp_path / "prompts.txt", epochs=3,
                         user_overrides=["train.lr=2e-4"])
        assert not any("{" + key + "}" in o for o in spec["overrides"] for key in ("tiny_sd3", "prompts")), name
        assert spec["overrides"][-1] == "train.lr=2e-4"
        if "{tiny_sd3}" not in " ".join(ov):  # the SD3 ones need a saved pipeline; their text is checked above
            cfg = load_config(config, spec["overrides"])
            assert cfg.train.epochs == 3 and cfg.train.lr == 2e-4 and cfg.eval.every == 0


def _mlp_spec(name, tmp_path, epochs, extra=()):
    from grpo_guard.bench import SETTINGS, make_spec

    config, ov = SETTINGS["toy-mlp-8px"]
    ov = [o.replace("pretrain_steps: 300", "pretrain_steps: 20") for o in ov]
    return make_spec(name, config, ov, tiny=tmp_path, prompts=tmp_path, epochs=epochs,
                     user_overrides=[f"cache_dir={tmp_path / 'cache'}", *extra])


def test_runs_in_turns_never_overlap(tmp_path):
    """Two real runs in child processes take turns epoch by epoch: each writes all its rows, and every
    epoch of one run starts after the other run's previous epoch ended (the SDE-window measurement)."""
    from grpo_guard.bench.measure import _run_in_turns

    a, b = _run_in_turns([_mlp_spec("a", tmp_path, 2), _mlp_spec("b", tmp_path, 2, ["sample.sde_window=[0, 5]"])])
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [0, 1]
    order = sorted([(r["written_at"], r["epoch_seconds"], name) for name, rs in (("a", a), ("b", b)) for r in rs])
    assert [name for *_, name in order] == ["a", "b"] * 2
    for (end_prev, _, _), (end, secs, _) in zip(order, order[1:]):
        assert end - secs >= end_prev - 0.01  # this epoch began after the previous row was written
    assert all(r["update_seconds"] > 0 for r in a + b)


def test_a_failing_run_in_turns_names_its_setting(tmp_path):
    from grpo_guard.bench import BenchError
    from grpo_guard.bench.measure import _run_in_turns

    with pytest.raises(BenchError, match="bench: broken failed: .*no_such_key"):
        _run_in_turns([_mlp_spec("broken", tmp_path, 2, ["train.no_such_key=1"]), _mlp_spec("fine", tmp_path, 2)])


def test_window_ratio_drops_the_warmup_epoch():
    from grpo_guard.bench import window_ratio

    w = window_ratio([[9.0, 2.0, 2.0, 4.0], [1.0, 1.0, 0.9, 2.2]])
    assert w["update_ratio_epochs"] == pytest.approx([0.5, 0.45, 0.55])
    assert w["update_ratio"] == pytest.approx(0.5)
    assert (w["full_update_s"], w["half_update_s"]) == (2.0, 1.0)


def test_loop_time_script_times_every_part(tmp_path):
    """``benchmarks/loop_time.py`` finds every part it times where the loop looks it up (a renamed function
    breaks it here), and each part's own time, network calls excluded, is not negative."""
    import re
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "loop_time.py"
    r = subprocess.run([sys.executable, str(script), "toy-mlp-8px", "--epochs", "3", "--out", str(tmp_path / "b"),
                        "--set", f"cache_dir={tmp_path / 'cache'}"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    times = {m.group(1).strip(): float(m.group(2))
             for m in re.finditer(r"^\s+(\S.*?)\s+(-?\d+\.\d+)(?:\s+\(|$)", r.stdout, re.M)}
    for label in ("per-sample noise", "rollout()", "update_policy()", "policy_loss", "gradient clip",
                  "per-step ratio diagnostics", "metrics row written", "reward toy_classifier", "loop, untimed",
                  "network: backward"):
        assert label in times, (label, r.stdout)
    assert all(v >= 0 for k, v in times.items() if k != "loop, untimed"), r.stdout
    assert times["network"] > times["rollout()"] + times["update_policy()"]  # own times, without the network
    assert float(re.search(r"in-situ overhead (\d+\.\d+)", r.stdout).group(1)) > 1.0


def _full_res():
    res = _res(window=0.49)
    res["settings"][0].update({"ours_over_reference_pairs": [0.55, 0.6, 0.62]})
    res["scaling"] = {axis: {"points": [{"value": v, "epoch_s": v / 4, "peak_rss_mb": 500 + 10 * v} for v in values],
                             "time_exponent": 1.0, "memory_exponent": 0.3}
                      for axis, values in (("group_size", [4, 8, 16]), ("num_steps", [5, 10, 20]))}
    res["sde_window"]["update_ratio_epochs"] = [0.5, 0.47, 0.49]
    res.update({"machine": {"cores": 2, "torch": "x"}, "date": "2026-12-02", "epochs": 6})
    return res


@pytest.mark.parametrize("quick", [False, True])
def test_bench_figure_draws_full_and_quick_results(tmp_path, quick):
    from PIL import Image

    from grpo_guard.bench.figure import fig_bench

    res = _full_res()
    if quick:  # --quick measures no scaling and no SDE window, and may pair no reference loop
        res["scaling"], res["sde_window"] = {}, None
        for key in ("ours_over_reference", "ours_over_reference_pairs"):
            res["settings"][0].pop(key)
    path = fig_bench(res, tmp_path / "fig" / "bench.png")
    assert path == tmp_path / "fig" / "bench.png" and not list(path.parent.glob(".*tmp"))
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 1000 and im.height > 500


def test_bench_figure_redraws_from_json_and_refuses_a_bad_file(tmp_path, capsys):
    from grpo_guard.bench.figure import main

    (tmp_path / "bench.json").write_text(json.dumps(_full_res()))
    assert main([str(tmp_path / "bench.json")]) == 0
    assert (tmp_path / "bench.png").is_file()
    (tmp_path / "bad.json").write_text("{not json")
    assert main([str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(str(tmp_path / "bad.json")) and "\n" not in err
    assert main([]) == 2
