"""The built-in prompt generators: GenEval's families and metadata, OCR prompts, the seeded draw and the
split that never shares a prompt, and the CLI that writes them."""

import json
import re
from collections import Counter

import pytest

from grpo_guard.cli import main
from grpo_guard.prompt_sets import (COCO_CLASSES, GENEVAL_COLORS, GENEVAL_TAGS, POSITIONS, geneval_prompts,
                                    ocr_prompts, prompt_split)
from grpo_guard.prompts import read_prompt_jsonl


def test_coco_has_its_80_classes():
    assert len(COCO_CLASSES) == len(set(COCO_CLASSES)) == 80 and len(GENEVAL_COLORS) == 10


def test_geneval_prompts_carry_each_familys_metadata():
    rows = geneval_prompts(120, seed=3, split="all")
    assert Counter(r["tag"] for r in rows) == {t: 20 for t in GENEVAL_TAGS}  # the families in equal shares
    for r in rows:
        inc, p = r["include"], r["prompt"]
        assert p.startswith("a photo of ") and all(o["class"] in COCO_CLASSES for o in inc), r
        assert all(o["class"].split()[-1][:3] in p or o["class"] == "person" for o in inc), r  # every object named
        tag = r["tag"]
        if tag == "single_object":
            assert inc == [{"class": inc[0]["class"], "count": 1}] and "exclude" not in r
        elif tag == "two_object":
            assert len(inc) == 2 and inc[0]["class"] != inc[1]["class"] and all(o["count"] == 1 for o in inc)
        elif tag == "counting":
            n = inc[0]["count"]
            assert 2 <= n <= 4 and r["exclude"] == [{"class": inc[0]["class"], "count": n + 1}]
            assert {2: "two", 3: "three", 4: "four"}[n] in p
        elif tag == "colors":
            assert inc[0]["color"] in GENEVAL_COLORS and f"{inc[0]['color']} {inc[0]['class']}" in p
        elif tag == "position":
            rel, ref = inc[1]["position"]
            assert rel in POSITIONS and ref == 0 and "position" not in inc[0]
            assert p == f"a photo of {_article(inc[1]['class'])} {rel} {_article(inc[0]['class'])}"
        elif tag == "color_attr":
            assert len(inc) == 2 and inc[0]["color"] != inc[1]["color"]
            assert all(f"{o['color']} {o['class']}" in p for o in inc)


def _article(noun):
    return noun if noun in ("skis", "scissors") else ("an " if noun[0] in "aeiou" else "a ") + noun


def test_geneval_articles():
    texts = {r["prompt"] for r in geneval_prompts(600, seed=0, split="all")}
    assert not any(re.search(r"\ba [aeiou]", t) for t in texts)
    assert not any(re.search(r"\ban [^aeiou]", t) for t in texts)


def test_draws_are_seeded_distinct_and_the_splits_disjoint():
    a, b = geneval_prompts(200, seed=1), geneval_prompts(200, seed=1)
    assert a == b and geneval_prompts(200, seed=2) != a
    train = {r["prompt"] for r in a}
    test = {r["prompt"] for r in geneval_prompts(100, seed=1, split="test")}
    assert len(train) == 200 and len(test) == 100 and not train & test
    assert all(prompt_split(t) == "train" for t in train) and all(prompt_split(t) == "test" for t in test)
    # the split is a property of the prompt, not of the seed: another seed's test prompts are test prompts too
    other = {r["prompt"] for r in geneval_prompts(100, seed=9, split="test")}
    assert other != test and not other & train and all(prompt_split(t) == "test" for t in other)


def test_ocr_prompts_quote_their_text():
    rows = ocr_prompts(80, seed=0)
    assert Counter(r["words"] for r in rows) == {1: 20, 2: 20, 3: 20, 4: 20}
    for r in rows:
        assert f'"{r["text"]}"' in r["prompt"] and len(r["text"].split()) == r["words"]


def test_cli_writes_a_prompt_file_the_jsonl_source_reads(tmp_path, capsys):
    out = tmp_path / "geneval_train.jsonl"
    assert main(["prompts", "geneval", "--n", "30", "--seed", "4", "--out", str(out)]) == 0
    assert "wrote 30 geneval prompts" in capsys.readouterr().out
    ps = read_prompt_jsonl(out)
    rows = geneval_prompts(30, seed=4)
    assert ps.texts == [r["prompt"] for r in rows]
    assert ps.metadata == [{k: v for k, v in r.items() if k != "prompt"} for r in rows]
    assert all(json.loads(line) for line in out.read_text().splitlines())


def test_a_family_that_runs_out_leaves_the_rest_to_the_others():
    rows = geneval_prompts(1000, seed=0)  # far more than the ~64 single-object train prompts
    counts = Counter(r["tag"] for r in rows)
    assert len(rows) == len({r["prompt"] for r in rows}) == 1000
    assert counts["single_object"] == len({r["prompt"] for r in geneval_prompts(3000, split="all")
                                          if r["tag"] == "single_object" and prompt_split(r["prompt"]) == "train"})
    with pytest.raises(ValueError, match="could not draw 10 distinct test prompts"):
        geneval_prompts(10, split="test", test_fraction=1e-12)  # no prompt is in such a split


def test_cli_refuses_a_bad_request_in_one_line(tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    assert main(["prompts", "ocr", "--out", str(out), "--n", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "n: must be >= 1" in err[0] and not out.exists()
