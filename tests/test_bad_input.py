"""Bad input: every case is answered by ONE line on stderr that names the problem, exit code 2, and
nothing written. The table in docs/reliability.md is printed from CASES by
``python tests/test_bad_input.py`` (it runs every case and shows the real message).

Property-based tests (hypothesis) over config overrides: whatever ``--set`` a user types, loading a
config either succeeds or raises ConfigError with a one-line message naming a key; never another
exception.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpo_guard.cli import main
from grpo_guard.config import ConfigError, load_config

TESTS = Path(__file__).resolve().parent
TINY = ["--set", "backbone.name=tiny_backbone:make_tiny_backbone", "--set", "backbone.params={}",
        "--set", "rewards=[{name: ink}]", "--set", "eval.evaluator=null", "--set", "log.progress=false"]


def _files(root: Path) -> dict[str, Path]:
    """Input files some cases point at."""
    f = {}
    f["bad_yaml"] = root / "bad.yaml"
    f["bad_yaml"].write_text("train: [1, 2\n")
    f["list_yaml"] = root / "list.yaml"
    f["list_yaml"].write_text("- 1\n- 2\n")
    f["cycle_a"] = root / "cycle_a.yaml"
    f["cycle_a"].write_text(f"inherit: {root / 'cycle_b.yaml'}\n")
    (root / "cycle_b.yaml").write_text(f"inherit: {f['cycle_a']}\n")
    f["empty_prompts"] = root / "empty.txt"
    f["empty_prompts"].write_text("\n  \n")
    f["latin1_prompts"] = root / "latin1.txt"
    f["latin1_prompts"].write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    f["a_file"] = root / "a_file"
    f["a_file"].write_text("x")
    f["held_run"] = root / "held_run"
    f["held_run"].mkdir()
    (f["held_run"] / "config.yaml").write_text("seed: 0\n")
    f["bad_ckpt"] = root / "run" / "checkpoints" / "epoch_000001"
    f["bad_ckpt"].mkdir(parents=True)
    (root / "run" / "config.yaml").write_text("seed: 0\n")
    (f["bad_ckpt"] / "trainable.safetensors").write_bytes(b"\x00" * 10)
    (f["bad_ckpt"] / "manifest.json").write_text('{"files": {"trainable.safetensors": "0"}}')
    f["nonempty"] = root / "nonempty"
    f["nonempty"].mkdir()
    (f["nonempty"] / "x").write_text("x")
    return f


OUT = "<root>/out"
#: (what is wrong, argv (formatted with the _files paths and root), a fragment of the expected message)
CASES: list[tuple[str, list[str], str]] = [
    ("train without an output directory", ["train", *TINY], "--output-dir is required"),
    ("--resume together with --config", ["train", "--resume", "<root>/x", "--config", "flow_grpo"], "exclusive"),
    ("--resume of a directory without a run", ["train", "--resume", "<root>/nothing"], "holds no run"),
    ("unknown config name", ["train", "--config", "flow_grpoo", "--output-dir", OUT], "no such config"),
    ("config file that is not YAML", ["train", "--config", "<bad_yaml>", "--output-dir", OUT], "not valid YAML"),
    ("config file holding a list", ["train", "--config", "<list_yaml>", "--output-dir", OUT], "mapping"),
    ("config inheritance cycle", ["train", "--config", "<cycle_a>", "--output-dir", OUT], "cycle"),
    ("--set without '='", ["train", "--output-dir", OUT, "--set", "train.lr"], "expected KEY=VALUE"),
    ("--set with an empty key part", ["train", "--output-dir", OUT, "--set", "train..lr=1"], "bad key"),
    ("unknown config key", ["train", "--output-dir", OUT, "--set", "train.lrr=1e-4"], "train.lrr"),
    ("value of the wrong type", ["train", "--output-dir", OUT, "--set", "train.lr=fast"], "train.lr"),
    ("negative learning rate", ["train", "--output-dir", OUT, "--set", "train.lr=-1"], "train.lr"),
    ("group of one sample", ["train", "--output-dir", OUT, "--set", "sample.group_size=1"], "sample.group_size"),
    ("zero sampling steps", ["train", "--output-dir", OUT, "--set", "sample.num_steps=0"], "sample.num_steps"),
    ("zero noise level", ["train", "--output-dir", OUT, "--set", "sample.noise_level=0"], "sample.noise_level"),
    ("updates that do not divide the batch", ["train", "--output-dir", OUT, "--set", "train.updates_per_epoch=3"],
     "train.updates_per_epoch"),
    ("unknown ratio mode", ["train", "--output-dir", OUT, "--set", "loss.ratio_mode=guard"], "loss.ratio_mode"),
    ("unknown step weight", ["train", "--output-dir", OUT, "--set", "loss.step_weight=dt"], "loss.step_weight"),
    ("zero clip range", ["train", "--output-dir", OUT, "--set", "loss.clip_range=0"], "clip_range"),
    ("negative KL coefficient", ["train", "--output-dir", OUT, "--set", "loss.kl_coef=-0.1"], "loss.kl_coef"),
    ("unknown mixed precision", ["train", "--output-dir", OUT, "--set", "train.mixed_precision=fp8"],
     "train.mixed_precision"),
    ("negative forward-row bound", ["train", "--output-dir", OUT, "--set", "train.max_forward_rows=-1"],
     "train.max_forward_rows"),
    ("SDE window outside the schedule", ["train", "--output-dir", OUT, "--set", "sample.sde_window=[3, 40]"],
     "sample.sde_window"),
    ("no proxy reward", ["train", "--output-dir", OUT, "--set", "rewards=[{name: ink, role: gold}]"], "rewards"),
    ("unknown reward role", ["train", "--output-dir", OUT, "--set", "rewards=[{name: ink, role: judge}]"],
     "rewards[0].role"),
    ("the same reward twice", ["train", "--output-dir", OUT, "--set", "rewards=[{name: ink}, {name: ink}]"],
     "unique"),
    ("unknown reward", ["train", "--output-dir", OUT, *TINY, "--set", "rewards=[{name: pickscor}]"], "pickscor"),
    ("unknown reward option", ["train", "--output-dir", OUT, *TINY, "--set",
                               "rewards=[{name: spectral_proxy, params: {weight: 2}}]"], "weight"),
    ("unknown backbone", ["train", "--output-dir", OUT, "--set", "backbone.name=sd4"], "sd4"),
    ("unknown backbone option", ["train", "--output-dir", OUT, "--set", "backbone.params.nett=mlp"], "nett"),
    ("unknown evaluator", ["train", "--output-dir", OUT, *TINY, "--set", "eval.evaluator=fid"], "fid"),
    ("prompt file missing", ["train", "--output-dir", OUT, "--set", "prompts={source: file, path: /no/such.txt}"],
     "prompts.path"),
    ("prompt file with no prompts", ["train", "--output-dir", OUT, *TINY, "--set",
                                     "prompts={source: file, path: '<empty_prompts>'}"], "holds no prompts"),
    ("prompt file not UTF-8", ["train", "--output-dir", OUT, *TINY, "--set",
                               "prompts={source: file, path: '<latin1_prompts>'}"], "not UTF-8"),
    ("unknown prompt source", ["train", "--output-dir", OUT, "--set", "prompts.source=web"], "prompts.source"),
    ("output directory is a file", ["train", *TINY, "--output-dir", "<a_file>"], "not a directory"),
    ("output directory holds another run", ["train", *TINY, "--output-dir", "<held_run>"], "already holds a run"),
    ("evaluating a missing checkpoint", ["eval", "<root>/run/checkpoints/epoch_000009"], "epoch_000009"),
    ("evaluating a corrupted checkpoint", ["eval", "<bad_ckpt>"], "checksum"),
    ("report of a missing run directory", ["report", "<root>/nope", "--out", OUT], "nope"),
    ("demo into a non-empty directory", ["demo", "--out", "<nonempty>"], "not empty"),
    ("unknown study preset", ["study", "--preset", "digit", "--out", OUT], "--preset"),
    ("unknown study arm", ["study", "--preset", "tiny", "--out", OUT, "--arms", "ppo"], "ppo"),
    ("study seeds that are not integers", ["study", "--preset", "tiny", "--out", OUT, "--seeds", "a,b"], "--seeds"),
    ("mechanism with zero dimensions", ["mechanism", "--dims", "0"], "dims"),
    ("reward server on a public address without a token", ["serve-reward", "ink", "--host", "0.0.0.0"], "token"),
    ("reward server for an unknown reward", ["serve-reward", "pickscor"], "pickscor"),
    ("export of a run without a checkpoint", ["export", "<held_run>", "--out", OUT], "no valid checkpoint"),
    ("bench with one epoch", ["bench", "--out", OUT, "--epochs", "1"], "--epochs"),
]


def _subst(argv: list[str], paths: dict[str, str]) -> list[str]:
    out = []
    for a in argv:
        for k, v in paths.items():
            a = a.replace(f"<{k}>", v)
        out.append(a)
    return out


def _run(case_argv, root: Path, capsys) -> tuple[int, str]:
    paths = {"root": str(root), **{k: str(v) for k, v in _files_paths(root).items()}}
    code = main(_subst(case_argv, paths))
    return code, capsys.readouterr().err


def _files_paths(root: Path) -> dict[str, Path]:
    return {"bad_yaml": root / "bad.yaml", "list_yaml": root / "list.yaml", "cycle_a": root / "cycle_a.yaml",
            "empty_prompts": root / "empty.txt", "latin1_prompts": root / "latin1.txt", "a_file": root / "a_file",
            "held_run": root / "held_run", "bad_ckpt": root / "run" / "checkpoints" / "epoch_000001",
            "nonempty": root / "nonempty"}


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("what,argv,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, monkeypatch, what, argv, fragment):
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    _files(tmp_path)
    before = _snapshot(tmp_path)
    code, err = _run(argv, tmp_path, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (what, err)
    assert len(lines) == 1, (what, err)
    assert lines[0].startswith("grpo-guard ") and "error:" in lines[0], lines[0]
    assert fragment in lines[0], (what, lines[0])
    assert "Traceback" not in err
    assert _snapshot(tmp_path) == before, (what, _snapshot(tmp_path) - before)  # nothing written


def test_at_least_30_cases():
    assert len(CASES) >= 30


# ---- property-based: config overrides -------------------------------------------------------------------

_KEYS = ["seed", "train.lr", "train.epochs", "train.updates_per_epoch", "sample.group_size", "sample.num_steps",
         "sample.noise_level", "sample.sde_window", "loss.clip_range", "loss.ratio_mode", "loss.kl_coef", "rewards",
         "rewards.0.weight", "backbone.params", "eval.every", "monitor.drop", "train.adam_betas", "prompts.source",
         "train.mixed_precision", "log.keep_checkpoints", "nonexistent.key", "train", "sample.shift.x"]
_VALUES = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.text(max_size=12), st.just("null"), st.just("[1, 2"), st.just("{a: 1}"), st.just("[]"),
                    st.just("[0.9, 0.999]"), st.just("plain"), st.just("ratio_norm"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(_KEYS), _VALUES), max_size=4))
def test_any_override_loads_or_raises_a_one_line_config_error(overrides):
    items = [f"{k}={v}" for k, v in overrides]
    try:
        load_config("flow_grpo", items)
    except ConfigError as e:
        msg = str(e)
        assert msg and "\n" not in msg
        assert ":" in msg  # "<key>: <problem>"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_any_override_string_is_parsed_or_rejected_cleanly(item):
    try:
        load_config(None, [item])
    except ConfigError as e:
        assert "\n" not in str(e)


if __name__ == "__main__":  # print the docs/reliability.md table with the real messages
    import contextlib
    import io
    import tempfile

    sys.path.insert(0, str(TESTS))
    os.environ["HF_HUB_OFFLINE"] = "1"
    print("| # | bad input | command | message (exit code) |\n|---|---|---|---|")
    for i, (what, argv, _) in enumerate(CASES, 1):
        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            _files(root)
            cwd = os.getcwd()
            os.chdir(root)
            real = _subst(argv, {"root": d, **{k: str(v) for k, v in _files_paths(root).items()}})
            shown = _subst(argv, {"root": "DIR", **{k: str(v.relative_to(root)) for k, v in _files_paths(root).items()}})
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(real)
            os.chdir(cwd)
            msg = err.getvalue().strip().replace(d, "DIR").replace("|", "\\|")
            cmd = " ".join(shown).replace(" ".join(TINY), "[tiny test backbone]").replace("|", "\\|")
            print(f"| {i} | {what} | `grpo-guard {cmd}` | {msg} ({code}) |")


# ---- property-based: reward-server payloads ----------------------------------------------------------

def _npy_b64(array) -> str:
    import base64
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return base64.b64encode(buf.getvalue()).decode()


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=4), max_leaves=12)


@st.composite
def _payloads(draw):
    """Bodies of POST /score: raw bytes, arbitrary JSON, and near-valid requests with a random npy array."""
    import json as _json

    import numpy as np

    kind = draw(st.sampled_from(["bytes", "json", "near"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return _json.dumps(draw(_JSON)).encode()
    n = draw(st.integers(0, 5))
    shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=5))
    dtype = draw(st.sampled_from(["float32", "float64", "int64", "uint8", "object", "bool"]))
    if dtype == "object":
        array = np.empty(shape, dtype=object)
    else:
        array = draw(st.sampled_from([np.zeros, np.ones])) (shape, dtype=dtype)
        if dtype.startswith("float") and array.size and draw(st.booleans()):
            array.flat[0] = draw(st.sampled_from([np.nan, np.inf, -1.0, 2.0]))
    body = {"prompts": draw(st.lists(st.text(max_size=5), min_size=n, max_size=n)),
            "images": {"format": draw(st.sampled_from(["npy", "png", "jpg", 3])), "data": _npy_b64(array)}}
    if draw(st.booleans()):
        body[draw(st.sampled_from(["metadata", "extra"]))] = draw(_JSON)
    return _json.dumps(body).encode()


@settings(max_examples=300, deadline=None)
@given(_payloads())
def test_any_reward_server_payload_is_decoded_or_refused_cleanly(body):
    """Whatever a client sends, the server's validator returns a valid float32 batch in [0, 1] with one
    prompt per image, or refuses with a 4xx status and a one-line message; never another exception."""
    import numpy as np

    from grpo_guard.rewards.score_request import RequestError, parse_score_request

    try:
        images, prompts, metadata = parse_score_request(body, max_batch=4)
    except RequestError as e:
        assert 400 <= e.status < 500 and e.message and "\n" not in e.message
        return
    assert images.dtype == np.float32 and images.ndim == 4 and images.shape[0] == len(prompts) == len(metadata)
    assert 1 <= len(prompts) <= 4 and np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
