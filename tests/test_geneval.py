"""The in-process GenEval reward: its rules on hand-made detections, family by family; the detector's pre- and
post-processing against the formulas and transformers' own post-processing; the model path on tiny random
Mask2Former and CLIP models loaded through ``from_pretrained``; and training the tiny SD3 pipeline on generated
GenEval prompts with it, in process and behind ``serve-reward``."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pytest
import torch

from helpers import save_tiny_clip, save_tiny_mask2former

from grpo_guard.backbones.tiny_pipelines import save_tiny_pipeline
from grpo_guard.config import load_config
from grpo_guard.prompt_sets import COCO_CLASSES, GENEVAL_COLORS, geneval_prompts, write_jsonl
from grpo_guard.rewards import REWARDS, RewardContext, build_reward
from grpo_guard.rewards.clip_rewards import RewardUnavailable
from grpo_guard.rewards.geneval import (BACKGROUND_GREY, IMAGENET_MEAN, IMAGENET_STD, class_names, detector_input,
                                        instance_detections, object_crop)
from grpo_guard.rewards.geneval_rules import Detection, check_metadata, judge, keep_detections, relative_position
from grpo_guard.train.loop import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def det(x1, y1, x2, y2, score=0.95):
    return Detection((x1, y1, x2, y2), score)


def no_colour(name, dets):
    raise AssertionError("colour asked for a prompt without colour")


def colours(table):
    """A colour classifier answering from ``table``: class -> colour (or a list, one per detection)."""
    def of(name, dets):
        c = table[name]
        return list(c[:len(dets)]) if isinstance(c, list) else [c] * len(dets)
    return of


# ---- rules, family by family ------------------------------------------------------------------------------------

SINGLE = {"tag": "single_object", "include": [{"class": "bench", "count": 1}]}
TWO = {"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}]}
COUNT3 = {"tag": "counting", "include": [{"class": "cat", "count": 3}], "exclude": [{"class": "cat", "count": 4}]}
RED_CAR = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}]}
CUP_LEFT_OF_DOG = {"tag": "position", "include": [{"class": "dog", "count": 1},
                                                  {"class": "cup", "count": 1, "position": ["left of", 0]}]}
RED_CAT_BLUE_DOG = {"tag": "color_attr", "include": [{"class": "cat", "count": 1, "color": "red"},
                                                     {"class": "dog", "count": 1, "color": "blue"}]}


def test_single_object():
    v = judge(SINGLE, {"bench": [det(0, 0, 10, 10, 0.5)]}, no_colour)
    assert v.passed and v.score == 1 and v.reasons == []
    v = judge(SINGLE, {"bench": [det(0, 0, 10, 10, 0.3)]}, no_colour)  # the threshold is strict: > 0.3
    assert not v.passed and v.score == 0 and v.reasons == ["expected bench>=1, found 0"]
    v = judge(SINGLE, {"bench": [det(0, 0, 10, 10), det(20, 0, 30, 10)], "cat": [det(0, 0, 5, 5)]}, no_colour)
    assert v.passed and v.score == 1  # extra objects are not GenEval's concern here (no exclude)


def test_two_objects():
    assert judge(TWO, {"cat": [det(0, 0, 9, 9)], "dog": [det(20, 0, 29, 9)]}, no_colour).passed
    v = judge(TWO, {"cat": [det(0, 0, 9, 9)], "dog": [det(20, 0, 29, 9, 0.2)]}, no_colour)
    assert not v.passed and v.score == 0.5 and v.reasons == ["expected dog>=1, found 0"]


def test_counting_uses_the_higher_threshold_and_the_exclude():
    three = [det(10 * i, 0, 10 * i + 8, 8, 0.95) for i in range(3)]
    assert judge(COUNT3, {"cat": three}, no_colour).score == 1
    low = three[:2] + [det(40, 0, 48, 8, 0.85)]  # 0.85 passes 0.3 but not the counting threshold 0.9
    v = judge(COUNT3, {"cat": low}, no_colour)
    assert not v.passed and v.score == pytest.approx((2 / 3 + 1) / 2)
    assert judge({**COUNT3, "tag": "two_object"}, {"cat": low}, no_colour).passed  # 0.3 for other families
    four = three + [det(50, 0, 58, 8, 0.99)]
    v = judge(COUNT3, {"cat": four}, no_colour)
    assert not v.passed and v.score == 0.5 and v.reasons == ["expected cat<4, found 4"]


def test_colour_is_asked_for_the_most_confident_objects_only():
    asked = []

    def record(name, dets):
        asked.append((name, [d.score for d in dets]))
        return ["red"] * len(dets)

    cars = [det(0, 0, 9, 9, 0.5), det(20, 0, 29, 9, 0.8)]
    assert judge(RED_CAR, {"car": cars}, record).passed
    assert asked == [("car", [0.8])]
    v = judge(RED_CAR, {"car": cars}, colours({"car": "blue"}))
    assert not v.passed and v.score == 0.5 and "expected red car>=1, found 0 red (blue)" in v.reasons[0]
    v = judge(RED_CAR, {}, no_colour)  # no car: the colour is not asked and earns nothing
    assert not v.passed and v.score == 0


def test_position():
    dog = det(60, 40, 100, 80)
    v = judge(CUP_LEFT_OF_DOG, {"dog": [dog], "cup": [det(0, 40, 30, 80)]}, no_colour)
    assert v.passed and v.score == 1
    v = judge(CUP_LEFT_OF_DOG, {"dog": [dog], "cup": [det(120, 40, 150, 80)]}, no_colour)
    assert not v.passed and v.score == pytest.approx(2 / 3)
    assert v.reasons == ["expected cup left of target, found right of"]
    v = judge(CUP_LEFT_OF_DOG, {"cup": [det(0, 40, 30, 80)]}, no_colour)
    assert not v.passed and v.score == pytest.approx(1 / 3)  # no dog: no target for the cup
    assert v.reasons == ["expected dog>=1, found 0", "no target for cup to be left of"]


def test_colour_attribution():
    found = {"cat": [det(0, 0, 9, 9)], "dog": [det(20, 0, 29, 9)]}
    assert judge(RED_CAT_BLUE_DOG, found, colours({"cat": "red", "dog": "blue"})).passed
    v = judge(RED_CAT_BLUE_DOG, found, colours({"cat": "blue", "dog": "red"}))  # swapped colours fail both
    assert not v.passed and v.score == 0.5 and len(v.reasons) == 2


def test_the_score_is_one_exactly_when_the_strict_verdict_passes():
    g = torch.Generator().manual_seed(0)
    metas = [SINGLE, TWO, COUNT3, RED_CAR, CUP_LEFT_OF_DOG, RED_CAT_BLUE_DOG]
    seen = set()
    for _ in range(400):
        meta = metas[int(torch.randint(len(metas), (1,), generator=g))]
        found = {}
        for name in ("bench", "cat", "dog", "car", "cup"):
            n = int(torch.randint(0, 5, (1,), generator=g))
            xy = torch.rand(n, 2, generator=g) * 100
            sc = torch.where(torch.rand(n, generator=g) < 0.8, 0.95, 0.5)  # most above both thresholds
            found[name] = [det(float(x), float(y), float(x) + 20, float(y) + 20, float(s)) for (x, y), s in zip(xy, sc)]
        table = {k: [("red", "blue")[int(i)] for i in torch.randint(0, 2, (16,), generator=g)] for k in found}
        v = judge(meta, found, colours(table))
        assert 0 <= v.score <= 1 and v.passed == (v.score == 1) and v.passed == (not v.reasons)
        seen.add((meta["tag"], v.passed))
    assert len(seen) == 12  # every family both passed and failed


def test_relative_position_by_hand():
    a, b = det(0, 0, 10, 10), det(30, 0, 40, 10)
    assert relative_position(a, b) == {"left of"} and relative_position(b, a) == {"right of"}
    # centres 20 apart in x, boxes 10 wide: the shrunk offset 20 - 0.1 * 20 = 18, over |o| = 20 -> dx = 0.9
    assert relative_position(det(0, 0, 10, 10), det(20, 20, 30, 30)) == {"above", "left of"}  # 0.9/sqrt2 > 0.5
    assert relative_position(det(0, 0, 10, 10), det(1, 0, 11, 10)) == set()  # offset 1 < 0.1 * 20: not beside
    assert relative_position(det(0, 0, 10, 10), det(0, 30, 10, 40)) == {"above"}
    # a mostly vertical offset with a small horizontal one: only the dominant relation (dx = -0.1)
    assert relative_position(det(0, 0, 10, 10), det(3, 30, 13, 40), threshold=0.0) == {"above"}


def test_keep_detections_orders_thresholds_and_caps():
    many = {"cat": [det(0, 0, 1, 1, s / 100) for s in range(100)], "dog": [det(0, 0, 1, 1, 0.1)]}
    kept = keep_detections(many, "single_object")
    assert list(kept) == ["cat"] and len(kept["cat"]) == 16
    assert [d.score for d in kept["cat"]] == [s / 100 for s in range(99, 83, -1)]
    assert len(keep_detections(many, "counting")["cat"]) == 9  # 0.91 .. 0.99


@pytest.mark.parametrize(("meta", "fragment"), [
    ({}, "has no 'include' list"),
    ({"include": []}, "has no 'include' list"),
    ({"include": [{"class": "cat"}]}, "include[0] must be"),
    ({"include": [{"class": "cat", "count": 0}]}, "include[0] must be"),
    ({"include": [{"class": "cat", "count": 1, "position": ["left of", 0]}]}, "include[0].position"),
    ({"include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["beside", 0]}]},
     "include[1].position"),
    ({"include": [{"class": "cat", "count": 1}], "exclude": [{"class": "cat"}]}, "exclude[0] must be"),
])
def test_bad_metadata_is_one_line(meta, fragment):
    with pytest.raises(ValueError, match="geneval: metadata of prompt 'a cat'") as e:
        check_metadata(meta, "a cat")
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_generated_prompts_are_valid_geneval_metadata():
    for row in geneval_prompts(120, seed=1, split="all"):
        check_metadata({k: v for k, v in row.items() if k != "prompt"}, row["prompt"])


# ---- detector pre- and post-processing -----------------------------------------------------------------------

def test_detector_input_resizes_normalises_and_pads():
    img = torch.rand(2, 3, 40, 70)
    x, (h, w) = detector_input(img, resolution=80, max_size=1333)
    assert (h, w) == (80, 140) and x.shape == (2, 3, 96, 160)
    assert torch.all(x[..., 80:, :] == 0) and torch.all(x[..., :, 140:] == 0)
    flat = detector_input(torch.full((1, 1, 32, 32), 0.5), resolution=32, max_size=32)[0]
    expected = (0.5 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(flat[0, :, 5, 5], expected)  # grey -> 3 channels, ImageNet normalisation
    _, size = detector_input(torch.rand(1, 3, 100, 400), resolution=800, max_size=1333)
    assert size == (333, 1333)  # the longer side caps the scale


def test_instance_detections_by_hand():
    # 2 queries, 3 classes + no-object; masks 4 x 5
    cls = torch.tensor([[4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 1.0]])
    masks = torch.full((2, 4, 5), -5.0)
    masks[0, 1:3, 1:4] = 2.0  # query 0: rows 1-2, cols 1-3
    masks[1, 0, 4] = 1.0      # query 1: one pixel
    labels, scores, boxes, binary = instance_detections(cls, masks, max_per_image=2)
    p0, p1 = cls.softmax(-1)[0, 0], cls.softmax(-1)[1, 2]
    assert labels.tolist() == [0, 2]
    assert torch.allclose(scores, torch.stack([p0 * torch.sigmoid(torch.tensor(2.0)),
                                               p1 * torch.sigmoid(torch.tensor(1.0))]))
    assert boxes.tolist() == [[1, 1, 4, 3], [4, 0, 5, 1]]
    assert binary[0].sum() == 6 and binary[1].sum() == 1
    _, _, boxes, _ = instance_detections(torch.tensor([[0.0, 5.0]]), torch.full((1, 3, 3), -1.0), 1)
    assert boxes.tolist() == [[0, 0, 0, 0]]  # an empty mask has an empty box


def test_object_crop_greys_the_background_and_crops_the_box():
    img = torch.rand(3, 10, 12)
    mask = torch.zeros(10, 12, dtype=torch.bool)
    mask[2:5, 3:6] = True
    crop = object_crop(img, Detection((2, 1, 7, 6), 0.9, mask))
    assert crop.shape == (3, 5, 5)
    assert torch.equal(crop[:, 1:4, 1:4], img[:, 2:5, 3:6])
    assert torch.all(crop[:, 0] == BACKGROUND_GREY)
    assert object_crop(img, Detection((0, 0, 0, 0), 0.9)).shape == (3, 1, 1)


def test_class_names_must_cover_coco():
    names = class_names({i: c.replace(" ", "_") for i, c in enumerate(COCO_CLASSES)})
    assert names[9] == "traffic light"
    with pytest.raises(ValueError, match="lack 1 of GenEval's COCO classes .toothbrush."):
        class_names({i: c for i, c in enumerate(COCO_CLASSES[:-1])})


# ---- the model path ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("geneval_models")
    det_path, det_model = save_tiny_mask2former(root / "mask2former")
    clip_path, clip_model, tok = save_tiny_clip(root / "clip", side=32)
    return {"detector": str(det_path), "clip": str(clip_path), "det_model": det_model, "clip_model": clip_model,
            "tok": tok}


def _params(models, **extra):
    return {"detector": models["detector"], "clip": models["clip"], "resolution": 64, **extra}


def test_registry_and_params(models, tmp_path):
    assert {"geneval", "geneval_strict"} <= set(REWARDS)
    ctx = RewardContext(cache_dir=tmp_path, device=torch.device("cpu"))
    with pytest.raises(ValueError, match=r"unknown params \['treshold'\]"):
        build_reward("geneval", {"treshold": 0.2}, ctx)
    with pytest.raises(ValueError, match="params.threshold: expected a confidence"):
        build_reward("geneval", _params(models, threshold=1.5), ctx)
    with pytest.raises(RewardUnavailable, match="local path '/no/such/detector' does not exist"):
        build_reward("geneval", {"detector": "/no/such/detector"}, ctx)


def test_the_detector_equals_transformers_post_processing(models):
    """At 384 x 384 (no resize, no padding) the detections equal transformers' own instance post-processing."""
    import transformers

    from grpo_guard.rewards.geneval import Mask2FormerDetector

    detector = Mask2FormerDetector(models["det_model"], torch.device("cpu"), torch.float32, resolution=384,
                                   max_per_image=10)
    images = torch.rand(2, 3, 384, 384, generator=torch.Generator().manual_seed(0))
    ours = detector.detect(images)
    x, _ = detector_input(images, 384, 1333)
    with torch.no_grad():
        out = models["det_model"](pixel_values=x)
    processor = getattr(transformers, "Mask2FormerImageProcessorPil", None) or transformers.Mask2FormerImageProcessor
    theirs = processor().post_process_instance_segmentation(out, threshold=0.0, return_binary_maps=True)
    for found, ref in zip(ours, theirs):
        mine = sorted((name, d.score) for name, ds in found.items() for d in ds if d.mask.any())
        expected = sorted((COCO_CLASSES[s["label_id"]], s["score"]) for s in ref["segments_info"])
        assert [n for n, _ in mine] == [n for n, _ in expected] and len(mine) > 0
        assert [s for _, s in mine] == pytest.approx([s for _, s in expected], abs=2e-6)  # theirs: 6 decimals


def test_colour_equals_clip_zero_shot_by_hand(models, tmp_path):
    """The colour of a full-image detection is CLIP's zero-shot argmax over GenEval's colours, computed here with
    CLIPModel's own forward."""
    from grpo_guard.rewards.geneval import COLOUR_TEMPLATES, ClipColourClassifier
    from grpo_guard.rewards.clip_rewards import CLIP_MEAN, CLIP_STD, ClipEmbedder

    model, tok = models["clip_model"], models["tok"]
    clf = ClipColourClassifier(ClipEmbedder(model, tok, torch.device("cpu"), torch.float32))
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    got = [clf(img, "cat", [Detection((0, 0, 32, 32), 0.9)])[0] for img in images]
    with torch.no_grad():
        texts = [t.format(colour=c, object="cat") for c in GENEVAL_COLORS for t in COLOUR_TEMPLATES]
        enc = tok(texts, padding=True, return_tensors="pt")
        px = (images - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=px)
        t = out.text_embeds.view(10, 3, -1).mean(1)  # CLIPModel's embeddings come normalised
        i = out.image_embeds
    expected = [GENEVAL_COLORS[k] for k in (i @ torch.nn.functional.normalize(t, dim=-1).t()).argmax(-1).tolist()]
    assert got == expected and len(set(got)) > 1


def test_geneval_and_strict_share_one_engine_and_agree(models, tmp_path):
    ctx = RewardContext(cache_dir=tmp_path, device=torch.device("cpu"))
    params = _params(models, threshold=0.0, counting_threshold=0.0)  # random weights: every detection counts
    score, strict = build_reward("geneval", params, ctx), build_reward("geneval_strict", params, ctx)
    assert score.engine is strict.engine
    rows = geneval_prompts(12, seed=3, split="all")
    prompts, meta = [r["prompt"] for r in rows], [{k: v for k, v in r.items() if k != "prompt"} for r in rows]
    images = torch.rand(12, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    calls = []
    detect = score.engine.detector.detect
    score.engine.detector.detect = lambda x: calls.append(len(x)) or detect(x)
    s, p = score(images, prompts, meta), strict(images, prompts, meta)
    assert calls == [12]  # the second reward reuses the first one's detections
    assert s.shape == p.shape == (12,) and torch.all((0 <= s) & (s <= 1))
    assert torch.equal(p == 1, s == 1) and set(p.tolist()) <= {0.0, 1.0}
    assert len(set(s.tolist())) > 1  # the random detector gives varied scores
    score(images[:4], prompts[:4], meta[:4])
    assert calls == [12, 4]
    with pytest.raises(ValueError, match="has no 'include' list"):
        score(images[:1], ["a cat"], [{}])


# ---- training on generated prompts ---------------------------------------------------------------------------

CALLS: list[tuple[list[str], list[dict]]] = []


def make_recording_geneval(params, ctx):
    """The real ``geneval`` reward, recording the prompts and metadata of every call."""
    from grpo_guard.rewards.geneval import make_geneval

    reward = make_geneval(params, ctx)

    def call(images, prompts, metadata):
        CALLS.append((list(prompts), [dict(m) for m in metadata]))
        return reward(images, prompts, metadata)

    return call


def _sd3_cfg(tmp_path, prompts_file, rewards):
    pipe = save_tiny_pipeline("sd3", tmp_path / "sd3")
    return load_config("grpo_guard", [
        f"backbone={{name: sd3, params: {{pretrained: '{pipe}', resolution: 64, lora_rank: 4, lora_alpha: 8}}}}",
        f"prompts={{source: jsonl, path: '{prompts_file}'}}", f"rewards={rewards}", "eval.evaluator=null",
        "eval.every=1", "eval.samples_per_prompt=1", "sample.num_steps=3", "sample.prompts_per_epoch=2",
        "sample.group_size=3", "sample.batch_size=6", "train.epochs=2", "train.lr=1e-2", "log.progress=false",
        f"cache_dir={tmp_path / 'c'}"])


def _check_calls(rows):
    by_prompt = {r["prompt"]: {k: v for k, v in r.items() if k != "prompt"} for r in rows}
    assert len(CALLS) >= 5  # base evaluation, 2 epochs, 2 evaluations
    for prompts, metadata in CALLS:
        assert prompts and all(m == by_prompt[p] for p, m in zip(prompts, metadata)), (prompts, metadata)
    assert {p for prompts, _ in CALLS for p in prompts} == set(by_prompt)


def _metrics(run: Path):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_tiny_sd3_trains_on_generated_geneval_prompts(models, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    rows = geneval_prompts(6, seed=0, split="train")
    path = write_jsonl(rows, tmp_path / "geneval.jsonl")
    params = json.dumps(_params(models, threshold=0.0, counting_threshold=0.0))
    CALLS.clear()
    cfg = _sd3_cfg(tmp_path, path, f"[{{name: 'test_geneval:make_recording_geneval', params: {params}}},"
                                    f" {{name: geneval_strict, role: gold, params: {params}}}]")
    train(cfg, tmp_path / "run", log=lambda *_: None)
    _check_calls(rows)
    ms = _metrics(tmp_path / "run")
    assert [m["epoch"] for m in ms] == [0, 1]
    assert all(math.isfinite(m["reward/test_geneval:make_recording_geneval_mean"]) for m in ms)
    assert all(0 <= m["eval/geneval_strict_mean"] <= 1 for m in ms if "eval/geneval_strict_mean" in m)


def test_tiny_sd3_trains_with_geneval_behind_the_reward_server(models, tmp_path):
    from grpo_guard.rewards.server import make_reward_server

    rows = geneval_prompts(6, seed=1, split="train")
    path = write_jsonl(rows, tmp_path / "geneval.jsonl")
    CALLS.clear()
    reward = make_recording_geneval(_params(models, threshold=0.0, counting_threshold=0.0),
                                    RewardContext(cache_dir=tmp_path, device=torch.device("cpu")))
    server = make_reward_server(reward, "geneval", port=0, log=lambda *_: None)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        train(_sd3_cfg(tmp_path, path, f"[{{name: remote, params: {{url: '{url}', timeout: 60}}}}]"),
              tmp_path / "run", log=lambda *_: None)
    finally:
        server.shutdown()
        server.server_close()
    _check_calls(rows)
    ms = _metrics(tmp_path / "run")
    assert [m["epoch"] for m in ms] == [0, 1] and all(0 <= m["reward/remote_mean"] <= 1 for m in ms)


def test_eval_with_the_papers_protocol_writes_the_geneval_table(models, tmp_path, monkeypatch, capsys):
    from grpo_guard.cli import main

    rows = geneval_prompts(12, seed=2, split="all")
    path = write_jsonl(rows, tmp_path / "geneval.jsonl")
    params = json.dumps(_params(models, threshold=0.0, counting_threshold=0.0))
    cfg = _sd3_cfg(tmp_path, path, f"[{{name: geneval, params: {params}}}]")
    cfg.train.epochs, cfg.eval.every = 1, 0
    run = train(cfg, tmp_path / "run", log=lambda *_: None)
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    test = write_jsonl(geneval_prompts(12, seed=5, split="all"), tmp_path / "test.jsonl")
    capsys.readouterr()
    assert main(["eval", str(ckpt), "--protocol", "paper", "--prompts", str(test)]) == 0
    out = json.loads(capsys.readouterr().out)
    table = json.loads((run / "paper_eval.json").read_text())
    assert out["paper_table"] == table and table["images"] == 12 and table["tasks"] == ["GenEval"]
    fams = {k: v for k, v in table["geneval"].items() if k != "overall"}
    assert set(fams) == {json.loads(x)["tag"] for x in test.read_text().splitlines()}
    assert table["geneval"]["overall"] == pytest.approx(sum(fams.values()) / len(fams))
    assert all(0 <= v <= 1 for v in fams.values())
    assert "| GenEval overall |" in (run / "paper_eval.md").read_text()
    # the protocol samples with the ODE at 40 steps: the evaluation differs from the run's own (SDE, 3 steps)
    assert main(["eval", str(ckpt), "--prompts", str(test)]) == 0
    own = json.loads(capsys.readouterr().out)
    assert own["eval/geneval_mean"] != out["eval/geneval_mean"]
    assert main(["eval", str(ckpt), "--protocol", "paper"]) == 0  # the run's own prompts work too
    capsys.readouterr()


def test_paper_protocol_needs_a_paper_task(tmp_path, capsys):
    from grpo_guard.cli import main
    from tiny_backbone import tiny_cfg

    run = train(tiny_cfg(tmp_path / "c", "train.epochs=1", "eval.every=0"), tmp_path / "run", log=lambda *_: None)
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    capsys.readouterr()
    assert main(["eval", str(ckpt), "--protocol", "paper"]) == 2
    err = capsys.readouterr().err.strip()
    assert "hold none of the paper's tasks (geneval, ocr, pickscore)" in err and len(err.splitlines()) == 1
