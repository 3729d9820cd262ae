import json
import subprocess
import sys

import pytest

from grpo_guard import __version__
from grpo_guard.cli import main


def test_version_and_help_via_module():
    out = subprocess.run([sys.executable, "-m", "grpo_guard", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"grpo-guard {__version__}"
    out = subprocess.run([sys.executable, "-m", "grpo_guard", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "mechanism" in out.stdout


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out


def test_mechanism_writes_json_and_png(tmp_path, capsys):
    rc = main(["mechanism", "--dims", "1024", "--samples", "64", "--velocity-drift", "0.05",
               "--out", str(tmp_path / "m")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "gradient-norm spread" in printed
    result = json.loads((tmp_path / "m" / "mechanism.json").read_text())
    plain = result["ratio_stats"]["plain"]
    assert len(plain["count"]) == 9
    # the left shift grows towards the low-noise steps and the plain arm's gradient spread is large
    assert plain["bias_mean"][8] > plain["bias_mean"][0] > 0
    assert result["grad_norm_spread"]["plain"] > 15 > 2 > result["grad_norm_spread"]["grpo_guard"]
    assert (tmp_path / "m" / "mechanism.png").stat().st_size > 10_000
    assert not list((tmp_path / "m").glob("*.tmp*"))


@pytest.mark.parametrize("args, name", [
    (["--dims", "0"], "dims"),
    (["--trained-steps", "12"], "trained_steps"),
    (["--clip-guard", "0"], "clip_guard"),
    (["--velocity-drift", "-1"], "velocity_drift"),
])
def test_mechanism_bad_input_is_one_line_exit_2(tmp_path, capsys, args, name):
    assert main(["mechanism", *args, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and name in err
    assert not (tmp_path / "x").exists()  # nothing written


def test_unknown_option_exits_2():
    out = subprocess.run([sys.executable, "-m", "grpo_guard", "mechanism", "--bogus"], capture_output=True, text=True)
    assert out.returncode == 2 and "--bogus" in out.stderr
