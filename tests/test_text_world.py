"""The text world at tiny sizes: the renderer, the character encoder's centred index, the U-Net, pretraining and its
cache, the backbone, the OCR proxy's batched recognition and character filter, the golds, and the real engine
reading the world's clean renders."""

import json
import random

import numpy as np
import pytest
import torch

from grpo_guard.backbones import BackboneContext, build_backbone
from grpo_guard.backbones.text import TextBackbone
from grpo_guard.config import load_config
from grpo_guard.prompts import load_prompt_set
from grpo_guard.rewards import RewardContext, build_evaluator, build_reward
from grpo_guard.rewards.ocr import charset_filter
from grpo_guard.rewards.text import best_clean_match, paper_mask, speckle, total_variation
from grpo_guard.study import PRESETS
from grpo_guard.world.text_generator import TextGeneratorConfig, pretrain_text_generator
from grpo_guard.world.text_reader import ReaderConfig, train_text_reader
from grpo_guard.world.text_render import (ALPHABET, FONT_NAMES, RenderStyle, clean_style, random_strings, random_style,
                                          render_batch, render_text, text_from_prompt, text_prompt, text_prompt_set)
from grpo_guard.world.text_unet import CharEncoder, TextUNet, sincos_2d

TINY = {"height": 16, "width": 32, "min_len": 2, "max_len": 3, "channels": [8, 8, 8], "token_dim": 16, "steps": 3,
        "batch_size": 4, "warmup": 1}


def _ctx(tmp_path, verbose=False):
    return RewardContext(cache_dir=tmp_path, device=torch.device("cpu"), verbose=verbose)


# ---------------------------------------------------------------------------------------------- renderer


def test_renders_are_dark_text_on_light_paper_and_seeded():
    img = render_text("kqz", 16, 64, RenderStyle())
    assert img.shape == (16, 64) and img.dtype == np.float32
    assert img.min() < 0.2 and img.max() == 1.0
    assert (img[:, :4] == 1.0).all() and (img[:, -4:] == 1.0).all()  # centred: blank margins
    rng_a, rng_b = random.Random(3), random.Random(3)
    a = render_batch(["abc", "xyz"], 16, 64, [random_style(rng_a) for _ in range(2)])
    b = render_batch(["abc", "xyz"], 16, 64, [random_style(rng_b) for _ in range(2)])
    assert a.shape == (2, 1, 16, 64) and torch.equal(a, b)
    moved = render_text("kqz", 16, 64, RenderStyle(dx=2))
    assert np.allclose(moved[:, 2:], img[:, :-2], atol=1e-6)  # dx moves the text right by dx px
    for font in FONT_NAMES:
        assert render_text("abc", 16, 64, RenderStyle(font=font)).min() < 0.5


def test_strings_prompts_and_the_prompt_source():
    rng = random.Random(0)
    strings = random_strings(200, rng, 3, 5)
    assert all(3 <= len(s) <= 5 and set(s) <= set(ALPHABET) for s in strings)
    assert {len(s) for s in strings} == {3, 4, 5}
    assert not set("ijl") & set(ALPHABET)
    assert text_from_prompt(text_prompt("abc")) == "abc" and text_from_prompt("") == ""
    with pytest.raises(ValueError, match="not a text-world prompt"):
        text_from_prompt("a handwritten 7")
    fixed = text_prompt_set()
    assert len(set(fixed)) == len(fixed) == 32 and fixed == text_prompt_set()
    prompts = load_prompt_set("text")
    assert prompts.texts == [text_prompt(t) for t in fixed] and prompts.metadata[0] == {"text": fixed[0]}


# ---------------------------------------------------------------------------------------------- networks


def test_character_tokens_carry_the_centred_index():
    enc = CharEncoder(max_len=5, dim=16)
    ids, idx = enc.tokenize([text_prompt("ab"), text_prompt("abcde"), ""])
    centre = enc.max_len - 1
    # slot k of a string of n has index 2k - (n - 1): the middle of every string sits on the same index
    assert (idx[0, 1:3] - centre).tolist() == [-1, 1]
    assert (idx[1, 1:6] - centre).tolist() == [-4, -2, 0, 2, 4]
    assert ids[0, 1:3].tolist() == [ALPHABET.index("a"), ALPHABET.index("b")]
    assert ids[2, 1:].tolist() == [len(ALPHABET)] * 5  # the null prompt: padding only
    embeds, pooled = enc.encode([text_prompt("ab"), ""])
    assert embeds.shape == (2, 6, 16) and pooled.shape == (2, 16)
    with pytest.raises(ValueError, match="characters"):
        enc.tokenize([text_prompt("abcdef")])
    with pytest.raises(ValueError, match="characters"):
        enc.tokenize([text_prompt("Ab1")])


def test_unet_shapes_and_position_code():
    pe = sincos_2d(4, 8, 16)
    assert pe.shape == (32, 16) and len({tuple(r) for r in pe.tolist()}) == 32  # every position distinct
    net = TextUNet((1, 16, 32), token_dim=16, channels=(8, 8, 8))
    enc = CharEncoder(max_len=3, dim=16)
    e, p = enc.encode([text_prompt("ab")] * 3)
    out = net(torch.randn(3, 1, 16, 32), torch.rand(3), e, p)
    assert out.shape == (3, 1, 16, 32) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="multiples of 4"):
        TextUNet((1, 18, 32))


def test_pretraining_is_cached_and_reloaded(tmp_path):
    config = TextGeneratorConfig(**{**TINY, "channels": (8, 8, 8)})
    lines = []
    state = pretrain_text_generator(config, tmp_path, log=lines.append, log_every=0.0)
    assert not state.from_cache and len(lines) == 1 + config.steps and "step 3/3" in lines[-1]
    assert lines[0] == f"the 16 x 32 generator, 3 steps (cached in {tmp_path} at the end)"
    again = pretrain_text_generator(config, tmp_path)
    assert again.from_cache
    for a, b in zip(state.net.state_dict().values(), again.net.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="min_len"):
        TextGeneratorConfig(min_len=4, max_len=3)


# ---------------------------------------------------------------------------------------------- backbone


@pytest.mark.parametrize("lora_rank", [None, 2])
def test_text_backbone_trains_the_unet_and_starts_at_the_base(tmp_path, lora_rank):
    bb = build_backbone("text", {**TINY, "lora_rank": lora_rank}, BackboneContext(tmp_path, torch.device("cpu"),
                                                                                     verbose=False))
    assert isinstance(bb, TextBackbone) and bb.latent_shape == (1, 16, 32)
    cond = bb.encode_prompts([text_prompt("ab"), text_prompt("kqz")])
    x, s = torch.randn(2, 1, 16, 32), torch.full((2,), 0.5)
    v = bb(x, s, cond, 1.0)
    with bb.reference():
        assert torch.allclose(bb(x, s, cond, 1.0), v, atol=1e-5)  # the trainable part starts at the base model
    assert v.shape == x.shape
    assert bb(x, s, cond, 2.0).shape == x.shape  # classifier-free guidance with the null prompt
    names = [n for n, p in bb.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("net.") for n in names)
    if lora_rank:
        assert all("lora_" in n for n in names)
    lat = torch.linspace(-2, 2, 16 * 32).view(1, 1, 16, 32)
    assert torch.equal(bb.decode(lat), ((lat + 1) / 2).clamp(0, 1))  # +1 is white paper, -1 black ink
    with pytest.raises(ValueError, match="unknown option"):
        build_backbone("text", {"hieght": 16}, BackboneContext(tmp_path, torch.device("cpu"), verbose=False))


# ---------------------------------------------------------------------------------------------- proxy


def test_batched_recognition_and_the_character_filter(tmp_path):
    keep = charset_filter("a-z0-9")
    assert keep("Ab-C 9ä!") == "abc9"
    assert charset_filter(None)("AbC") == "abc"
    calls = []

    def read_lines(arrays):  # a stand-in for the engine's recognition: one line per image
        calls.append(len(arrays))
        return [("K-Q.Z", 0.9) if a.mean() > 127 else ("", 0.0) for a in arrays]

    from grpo_guard.rewards.ocr import OcrReward

    reward = OcrReward(read_lines, "quoted", 0.0, batched=True, charset="a-z0-9")
    images = torch.cat([torch.ones(2, 1, 16, 32), torch.zeros(1, 1, 16, 32)])
    scores = reward(images, [text_prompt("kqz"), text_prompt("kqa"), text_prompt("kqz")])
    assert calls == [3]  # one batch
    assert scores.tolist() == pytest.approx([1.0, 2 / 3, 0.0])
    assert reward.read(images) == ["kqz", "kqz", ""]
    with pytest.raises(ValueError, match="recognition_only"):
        build_reward("ocr", {"engine": read_lines, "recognition_only": True}, _ctx(tmp_path))
    with pytest.raises(ValueError, match="charset"):
        build_reward("ocr", {"charset": ""}, _ctx(tmp_path))


def test_the_real_engine_reads_the_worlds_clean_renders(tmp_path):
    """The proxy as the text world runs it (RapidOCR's PP-OCRv4 recognition, offline, shipped in its wheel) reads
    clean renders of the world's strings in every font: at least 90% exactly, and a blank image scores 0."""
    reward = build_reward("ocr", {"recognition_only": True, "charset": "a-z0-9"}, _ctx(tmp_path))
    rng = random.Random(0)
    strings = random_strings(40, rng, 3, 5)
    images = render_batch(strings, 16, 64, [clean_style(rng, FONT_NAMES[i % len(FONT_NAMES)]) for i in range(40)])
    reads = reward.read(images)
    exact = np.mean([r == s for r, s in zip(reads, strings)])
    assert exact >= 0.9, list(zip(strings, reads))
    scores = reward(torch.cat([images, torch.ones(1, 1, 16, 64)]), [text_prompt(s) for s in strings + ["abc"]])
    assert scores[:40].mean() >= 0.95 and scores[40] == 0.0
    wrong = reward(images, [text_prompt(s) for s in strings[1:] + strings[:1]])
    assert wrong.mean() < scores[:40].mean() - 0.4


# ---------------------------------------------------------------------------------------------- golds


def test_clean_match_finds_the_shift_and_texture_terms_see_specks():
    templates = render_batch(["kqz"] * 2, 16, 64, [RenderStyle(font="aileron"), RenderStyle(font="dejavu_serif")])
    shifted = torch.from_numpy(render_text("kqz", 16, 64, RenderStyle(font="dejavu_serif", dx=3, dy=2)))[None]
    r, best = best_clean_match(shifted, templates)
    assert r == pytest.approx(1.0, abs=1e-5) and torch.allclose(best, shifted, atol=1e-5)
    other = torch.from_numpy(render_text("bvw", 16, 64, RenderStyle(font="dejavu_serif")))[None]
    assert best_clean_match(other, templates)[0] < 0.6
    g = torch.Generator().manual_seed(0)
    specks = shifted.clone()
    specks[(torch.rand(specks.shape, generator=g) < 0.05)] = 0.0
    paper = paper_mask(best[None])
    assert speckle(shifted[None], paper) == 0.0 and speckle(specks[None], paper) > 0.02
    assert total_variation(specks[None]) > total_variation(shifted[None])


def test_text_gold_on_clean_renders_and_on_noise(tmp_path):
    ev = build_evaluator("text_gold", {"reader": {"steps": 2, "pool_size": 16, "batch_size": 8}}, _ctx(tmp_path))
    assert (tmp_path / "text").is_dir()  # the reader is cached with the world's models
    strings = ["kqz", "bvw"]
    prompts = [text_prompt(s) for s in strings for _ in range(2)]
    clean = render_batch([text_from_prompt(p) for p in prompts], 16, 64, [RenderStyle()] * 4)
    res = ev(clean, prompts)
    assert set(res) == set(ev.higher_is_better)
    assert res["fidelity"] == pytest.approx(1.0, abs=1e-5) and res["tv_mismatch"] == pytest.approx(0.0, abs=1e-4)
    assert res["diversity"] == 0.0  # two identical images per prompt
    noisy = (clean + 0.3 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    worse = ev(noisy, prompts)
    assert worse["fidelity"] < res["fidelity"] - 0.1 and worse["speckle"] > res["speckle"]
    assert worse["tv_mismatch"] > 0.3 and worse["diversity"] > 0
    with pytest.raises(ValueError, match="16, 64"):
        ev(torch.ones(2, 1, 8, 8), prompts[:2])
    with pytest.raises(ValueError, match="reader"):
        build_evaluator("text_gold", {"reader": {"stpes": 2}}, _ctx(tmp_path))


@pytest.mark.slow
def test_reader_learns_clean_renders(tmp_path):
    """The second reading's recogniser, trained for a third of its steps (500, about 45 s), reads most clean
    renders of 1-5 letters exactly (0.80 measured)."""
    config = ReaderConfig(steps=500, pool_size=2000, seed=1)
    reader = train_text_reader(config, tmp_path)
    rng = random.Random(7)
    strings = random_strings(64, rng, 1, 5)
    reads = reader.read(render_batch(strings, 16, 64, [clean_style(rng) for _ in strings]))
    assert np.mean([r == s for r, s in zip(reads, strings)]) >= 0.6
    again = train_text_reader(config, tmp_path)  # from the cache
    assert again.read(render_batch(strings[:4], 16, 64, [RenderStyle()] * 4)) == \
        reader.read(render_batch(strings[:4], 16, 64, [RenderStyle()] * 4))


# ---------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("arm", PRESETS["text"].arms)
def test_the_text_preset_loads_for_every_arm(arm):
    plan = PRESETS["text"]
    cfg = load_config(arm, [*plan.world, *plan.conditions[0].overrides])
    assert cfg.backbone.name == "text" and cfg.prompts.source == "text" and cfg.eval.evaluator == "text_gold"
    assert cfg.rewards[0].name == "ocr" and cfg.rewards[0].params["recognition_only"] is True
    assert cfg.loss.ratio_mode == load_config(arm).loss.ratio_mode  # the world leaves the method alone
    assert cfg.train.adv_std == load_config(arm).train.adv_std


def test_a_study_shows_the_pretraining_progress_of_the_text_world(tmp_path):
    """Building the world's models before parallel runs (grpo_guard.parallel) passes the pretraining's and the
    reader's progress lines to the study's log."""
    from grpo_guard.parallel import build_world_cache

    cfg = load_config("text_flow_grpo", [f"cache_dir={tmp_path}", f"backbone.params={json.dumps(TINY)}",
                                          "eval.evaluator_params={reader: {steps: 2, pool_size: 8}}"])
    lines = []
    build_world_cache(cfg, "tiny", log=lines.append)
    assert any("text backbone: pretraining step 3/3" in ln for ln in lines), lines
    assert any("text gold: reader step 2/2" in ln for ln in lines), lines
    lines.clear()
    build_world_cache(cfg, "tiny", log=lines.append)  # cached: nothing to say
    assert not any("pretraining step 1/" in ln or "reader step" in ln for ln in lines), lines


def test_a_tiny_text_world_run_end_to_end(tmp_path):
    """`train` on a tiny text world with the real engine as the proxy: the base model's grid and the later ones
    are saved, every gold is logged at every evaluation, and golds.json names fidelity the primary gold."""
    from grpo_guard.train.loop import train

    cfg = load_config("text_grpo_guard", [
        f"cache_dir={tmp_path / 'cache'}",
        f"backbone.params={json.dumps(dict(TINY, width=64, max_len=5, lora_rank=None))}",
        "eval.evaluator_params={reader: {steps: 2, pool_size: 8}}", "train.epochs=2", "eval.every=1",
        "log.image_every=1", "sample.prompts_per_epoch=2", "sample.group_size=4", "sample.batch_size=8",
        "eval.samples_per_prompt=2", "log.progress=false"])
    train(cfg, tmp_path / "run", log=lambda *_: None)
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "images").iterdir()) == ["epoch_0000.png", "epoch_0001.png", "epoch_0002.png"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for key in ("eval/proxy_reward_mean", "gold/fidelity", "gold/second_reading", "gold/speckle", "gold/diversity"):
        assert all(key in r for r in rows), key
    assert json.loads((run / "golds.json").read_text())["metrics"][0]["key"] == "gold/fidelity"
    from grpo_guard.report import build_report

    build_report([run], tmp_path / "report")
    assert (tmp_path / "report" / "figures" / "grid_comparison.png").is_file()
    assert "same prompts and noise" in (tmp_path / "report" / "report.html").read_text()
