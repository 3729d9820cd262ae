"""Prompts with metadata: the ``jsonl`` source, its errors, and the metadata reaching every reward call with
its own prompt, in training and in evaluation."""

import json

import pytest
import torch

from grpo_guard.cli import main
from grpo_guard.prompts import PromptSet, load_prompt_set, read_prompt_jsonl
from grpo_guard.train.loop import train
from tiny_backbone import tiny_cfg

# the layout of GenEval's evaluation_metadata.jsonl and Flow-GRPO's train_metadata.jsonl
GENEVAL_LINES = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
    {"tag": "counting", "include": [{"class": "cat", "count": 3}], "exclude": [{"class": "cat", "count": 4}],
     "prompt": "a photo of three cats"},
    {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"},
    {"tag": "position", "include": [{"class": "dog", "count": 1}, {"class": "cup", "count": 1,
                                                                    "position": ["left of", 0]}],
     "prompt": "a photo of a cup left of a dog"},
]


def _write(path, rows, extra=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + extra)
    return path


def test_jsonl_prompts_keep_every_other_field_as_metadata(tmp_path):
    ps = read_prompt_jsonl(_write(tmp_path / "m.jsonl", GENEVAL_LINES, extra="\n  \n"))  # blank lines skipped
    assert ps.texts == [r["prompt"] for r in GENEVAL_LINES]
    assert ps.metadata == [{k: v for k, v in r.items() if k != "prompt"} for r in GENEVAL_LINES]
    texts, meta = ps.take([1, 1, 3])
    meta[0]["tag"] = "edited"  # a copy per sample: editing it changes neither the set nor the other sample
    assert texts == ["a photo of three cats"] * 2 + ["a photo of a cup left of a dog"]
    assert ps.metadata[1]["tag"] == meta[1]["tag"] == "counting"
    digits = load_prompt_set("digits")
    assert digits.texts[7] == "a handwritten 7" and digits.metadata[7] == {"label": 7}


@pytest.mark.parametrize(("line", "message"), [
    ("{\"prompt\": \"a cat\", ", "line 2: not valid JSON"),
    ("[\"a cat\"]", "line 2: expected a JSON object with a \"prompt\" field, got list"),
    ("{\"tag\": \"colors\"}", "line 2: needs a \"prompt\" field holding a non-empty string"),
    ("{\"prompt\": 3}", "line 2: needs a \"prompt\" field"),
    ("{\"prompt\": \"  \"}", "line 2: needs a \"prompt\" field"),
])
def test_a_bad_line_is_named_with_its_file_and_number(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GENEVAL_LINES[0]) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=f"prompts.path: {path} {message}"):
        read_prompt_jsonl(path)


def test_a_bad_prompt_file_stops_train_before_any_model_is_built(tmp_path, capsys, monkeypatch):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GENEVAL_LINES[0]) + "\nnot json\n")

    def no_model(*a, **k):
        raise AssertionError("a model was built before the prompt file was read")

    monkeypatch.setattr("grpo_guard.train.context.build_backbone", no_model)
    out = tmp_path / "run"
    code = main(["train", "--output-dir", str(out), "--set", "backbone.name=tiny_backbone:make_tiny_backbone",
                 "--set", f"prompts={{source: jsonl, path: '{path}'}}", "--set", f"cache_dir={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"{path} line 2: not valid JSON" in err[0]
    assert not out.exists()  # nothing written


CALLS: list[tuple[str, list[str], list[dict]]] = []


def make_metadata_probe(params, ctx):
    """A reward that records what it is called with (the class count of its metadata as the score)."""
    role = params.get("role", "proxy")

    def reward(images, prompts, metadata):
        CALLS.append((role, list(prompts), [dict(m) for m in metadata]))
        return torch.tensor([float(m["include"][0]["count"]) for m in metadata]) + images.mean((1, 2, 3))

    return reward


def make_metadata_probe_gold(params, ctx):
    return make_metadata_probe({"role": "gold"}, ctx)


def test_metadata_reaches_every_reward_call_with_its_own_prompt(tmp_path):
    path = _write(tmp_path / "m.jsonl", GENEVAL_LINES)
    CALLS.clear()
    cfg = tiny_cfg(tmp_path / "cache", "train.epochs=2", "eval.every=1", f"prompts={{source: jsonl, path: '{path}'}}",
                   "rewards=[{name: 'test_prompts:make_metadata_probe'},"
                   " {name: 'test_prompts:make_metadata_probe_gold', role: gold}]")
    train(cfg, tmp_path / "run", log=lambda *_: None)
    by_prompt = {r["prompt"]: {k: v for k, v in r.items() if k != "prompt"} for r in GENEVAL_LINES}
    # base evaluation + 2 training epochs + 2 evaluations, for the proxy and the gold reward each
    assert len(CALLS) == 2 * 5
    for _, prompts, metadata in CALLS:
        assert len(prompts) == len(metadata) > 0
        assert all(m == by_prompt[p] for p, m in zip(prompts, metadata)), (prompts, metadata)
    eval_calls = [c for c in CALLS if len(c[1]) == len(GENEVAL_LINES) * cfg.eval.samples_per_prompt]
    assert eval_calls and {p for c in eval_calls for p in c[1]} == set(by_prompt)  # every prompt evaluated
    assert isinstance(load_prompt_set("jsonl", str(path)), PromptSet)


def test_metadata_reaches_a_reward_behind_the_reward_server(tmp_path):
    """The same through ``serve-reward``'s HTTP protocol: the remote reward sends each prompt's metadata with
    its images, and the served reward receives them paired as in-process."""
    import threading

    from grpo_guard.rewards.server import make_reward_server

    path = _write(tmp_path / "m.jsonl", GENEVAL_LINES)
    CALLS.clear()
    server = make_reward_server(make_metadata_probe({}, None), "metadata_probe", port=0, log=lambda *_: None)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        cfg = tiny_cfg(tmp_path / "cache", "train.epochs=2", "eval.every=1", f"prompts={{source: jsonl, path: '{path}'}}",
                       f"rewards=[{{name: remote, params: {{url: '{url}', timeout: 20}}}}]")
        train(cfg, tmp_path / "run", log=lambda *_: None)
    finally:
        server.shutdown()
        server.server_close()
    by_prompt = {r["prompt"]: {k: v for k, v in r.items() if k != "prompt"} for r in GENEVAL_LINES}
    assert len(CALLS) >= 5  # the base evaluation, 2 epochs, 2 evaluations (the client may split batches)
    for _, prompts, metadata in CALLS:
        assert all(m == by_prompt[p] for p, m in zip(prompts, metadata)), (prompts, metadata)
