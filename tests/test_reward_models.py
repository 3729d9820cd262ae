"""Reward-model adapters (PickScore, CLIP score, aesthetic, JPEG, ImageReward, HPSv2, OCR).

The CLIP rewards are checked with tiny randomly initialised CLIP models saved with
``save_pretrained`` and loaded back through the adapters' own ``from_pretrained`` path; nothing here
uses real weights. ImageReward and HPSv2 have their own files (checked against reference
implementations); OCR is checked for its one-line errors and its rule with a stand-in engine."""

from __future__ import annotations

import io
import sys
import types

import numpy as np
import pytest
import torch

from helpers import save_tiny_clip

from grpo_guard.rewards import REWARDS, RewardContext, build_reward
from grpo_guard.rewards.clip_rewards import CLIP_MEAN, CLIP_STD, RewardUnavailable, clip_preprocess
from grpo_guard.rewards.ocr import levenshtein, ocr_text_reward, quoted_text

NEW = ["pickscore", "clip_score", "aesthetic", "jpeg_compressibility", "jpeg_incompressibility", "imagereward",
       "hpsv2", "ocr"]
PROJ = 16  # the tiny CLIP's projection dim = the tiny aesthetic MLP's input dim
SIDE = 32  # the tiny CLIP's input size
PROMPTS = ["a red cat", "a photo of a dog", "a red cat", "an old tree"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ctx(tmp_path):
    return RewardContext(cache_dir=tmp_path, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """(directory, model, tokenizer) of a tiny random CLIP saved with save_pretrained; logit scale exp(4) = 54.6,
    so that the scale is really used."""
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), proj=PROJ, side=SIDE, logit_scale=4.0)


def _smooth(b=4, side=SIDE, c=3, seed=0):
    """Smooth images: random 4x4 colour fields upsampled (bilinear) to ``side``."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, c, 4, 4, generator=g)
    return torch.nn.functional.interpolate(low, size=(side, side), mode="bilinear", align_corners=True)


@torch.no_grad()
def _by_hand(model, tok, images, prompts):
    """CLIPModel's own forward on images already at the input size (normalisation only)."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    enc = tok(prompts, padding=True, return_tensors="pt")
    return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                 pixel_values=(images - mean) / std)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------- registry


def test_registry_names_resolve():
    from grpo_guard.registry import resolve

    for name in NEW:
        assert name in REWARDS
        assert callable(resolve(REWARDS, name, "reward"))


def test_import_loads_no_model_library():
    import subprocess

    code = ("import sys, grpo_guard.rewards.clip_rewards, grpo_guard.rewards.ocr, grpo_guard.rewards.hpsv2, grpo_guard.rewards.imagereward, grpo_guard.rewards.jpeg; "
            "print([m for m in ('transformers', 'ImageReward', 'hpsv2', 'paddleocr') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", NEW)
def test_unknown_params_rejected(name, tmp_path):
    with pytest.raises(ValueError, match="bogus") as e:
        build_reward(name, {"bogus": 1, "model_id": "x"}, _ctx(tmp_path))
    assert "model_id" in _one_line(e)


# ---------------------------------------------------------------------------------------------- CLIP rewards


def test_pickscore_equals_formula(tiny_clip, tmp_path):
    path, model, tok = tiny_clip
    r = build_reward("pickscore", {"model": str(path), "processor": str(path)}, _ctx(tmp_path))
    images = _smooth()
    s = r(images, PROMPTS, [{}] * 4)
    assert s.shape == (4,) and s.dtype == torch.float32 and s.device.type == "cpu" and torch.isfinite(s).all()
    assert not s.requires_grad
    expected = _by_hand(model, tok, images, PROMPTS).logits_per_image.diagonal() / 26
    torch.testing.assert_close(s, expected, atol=1e-5, rtol=1e-4)
    # scale is a param: scale 1 gives logit_scale.exp() * cos
    r1 = build_reward("pickscore", {"model": str(path), "processor": str(path), "scale": 1.0}, _ctx(tmp_path))
    torch.testing.assert_close(r1(images, PROMPTS, [{}] * 4), 26 * expected, atol=1e-4, rtol=1e-4)


def test_clip_score_equals_cosine(tiny_clip, tmp_path):
    path, model, tok = tiny_clip
    # processor defaults to the model directory for clip_score
    r = build_reward("clip_score", {"model": str(path), "scale": 2.5}, _ctx(tmp_path))
    images = _smooth(seed=1)
    out = _by_hand(model, tok, images, PROMPTS)
    cos = (out.image_embeds * out.text_embeds).sum(-1)  # both L2-normalised by CLIPModel
    torch.testing.assert_close(r(images, PROMPTS, [{}] * 4), 2.5 * cos, atol=1e-5, rtol=1e-4)


def test_preprocessing_resolution_grey_and_batches(tiny_clip, tmp_path):
    path, _, _ = tiny_clip
    r = build_reward("clip_score", {"model": str(path), "batch_size": 3}, _ctx(tmp_path))
    big = _smooth(seed=2, side=128)
    small = torch.nn.functional.interpolate(big, size=(64, 64), mode="area")
    s_big, s_small = r(big, PROMPTS, [{}] * 4), r(small, PROMPTS, [{}] * 4)
    torch.testing.assert_close(s_big, s_small, atol=0.02, rtol=0)
    # grey input == the same image repeated to RGB
    grey = _smooth(seed=3, side=48, c=1)
    torch.testing.assert_close(r(grey, PROMPTS, [{}] * 4), r(grey.repeat(1, 3, 1, 1), PROMPTS, [{}] * 4))
    # batch splitting (3) gives what one batch gives
    r_one = build_reward("clip_score", {"model": str(path), "batch_size": 64}, _ctx(tmp_path))
    torch.testing.assert_close(r_one(big, PROMPTS, [{}] * 4), s_big, atol=1e-6, rtol=0)
    # a non-square image works (resize the short side, center crop)
    assert r(torch.rand(2, 3, 40, 72), PROMPTS[:2], [{}] * 2).shape == (2,)
    with pytest.raises(ValueError, match="prompt"):
        r(big, PROMPTS[:3], [{}] * 3)


def test_clip_preprocess_matches_processor_steps():
    x = torch.rand(2, 1, 20, 30)
    y = clip_preprocess(x, 16)
    assert y.shape == (2, 3, 16, 16)
    # at the input size it only normalises
    z = torch.rand(1, 3, 16, 16)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(clip_preprocess(z, 16), (z - mean) / std)
    # short side resized, then the center cropped: a 16 x 32 image keeps its middle 16 columns
    wide = torch.rand(1, 3, 16, 32)
    torch.testing.assert_close(clip_preprocess(wide, 16), (wide[..., 8:24] - mean) / std)


def test_bfloat16_close_to_float32(tiny_clip, tmp_path):
    path, _, _ = tiny_clip
    p = {"model": str(path), "processor": str(path)}
    images = _smooth(seed=4)
    s32 = build_reward("pickscore", p, _ctx(tmp_path))(images, PROMPTS, [{}] * 4)
    s16 = build_reward("pickscore", {**p, "dtype": "bfloat16"}, _ctx(tmp_path))(images, PROMPTS, [{}] * 4)
    assert s16.dtype == torch.float32
    torch.testing.assert_close(s16, s32, atol=0.05, rtol=0)
    with pytest.raises(ValueError, match="dtype"):
        build_reward("pickscore", {**p, "dtype": "int8"}, _ctx(tmp_path))


def _save_mlp(tmp_path, seed=0, in_dim=PROJ):
    from safetensors.torch import save_file

    from grpo_guard.rewards.clip_rewards import AestheticMLP

    torch.manual_seed(seed)
    mlp = AestheticMLP([in_dim, 32, 8, 4, 2, 1])
    sd = {k: v.contiguous() for k, v in mlp.state_dict().items()}
    assert sorted(sd) == sorted(f"layers.{i}.{k}" for i in (0, 2, 4, 6, 7) for k in ("weight", "bias"))
    pth, st = tmp_path / "mlp.pth", tmp_path / "mlp.safetensors"
    torch.save(sd, pth)
    save_file(sd, str(st))
    return sd, pth, st


def test_aesthetic_equals_mlp_on_normalised_embedding(tiny_clip, tmp_path):
    path, model, tok = tiny_clip
    sd, pth, st = _save_mlp(tmp_path)
    images = _smooth(seed=5)
    with torch.no_grad():
        emb = _by_hand(model, tok, images, PROMPTS).image_embeds  # normalised projected image embedding
        h = emb
        for i in (0, 2, 4, 6, 7):  # linear layers, no activations; dropout is off in eval
            h = h @ sd[f"layers.{i}.weight"].T + sd[f"layers.{i}.bias"]
    expected = h.squeeze(-1)
    for f in (pth, st):
        r = build_reward("aesthetic", {"model": str(path), "mlp": str(f)}, _ctx(tmp_path))
        s = r(images, ["unused"] * 4, [{}] * 4)
        assert s.shape == (4,) and s.dtype == torch.float32
        torch.testing.assert_close(s, expected, atol=1e-5, rtol=1e-4)
    # the prompt does not matter
    torch.testing.assert_close(r(images, PROMPTS, [{}] * 4), s)
    # default location: CACHE_DIR/aesthetic/sac+logos+ava1-l14-linearMSE.pth
    (tmp_path / "aesthetic").mkdir()
    (tmp_path / "aesthetic" / "sac+logos+ava1-l14-linearMSE.pth").write_bytes(pth.read_bytes())
    r = build_reward("aesthetic", {"model": str(path)}, _ctx(tmp_path))
    torch.testing.assert_close(r(images, PROMPTS, [{}] * 4), expected, atol=1e-5, rtol=1e-4)


def test_aesthetic_errors(tiny_clip, tmp_path):
    path, _, _ = tiny_clip
    with pytest.raises(RewardUnavailable, match="improved-aesthetic-predictor") as e:
        build_reward("aesthetic", {"model": str(path)}, _ctx(tmp_path))  # no MLP file in the cache
    _one_line(e)
    _, wrong, _ = _save_mlp(tmp_path, in_dim=PROJ + 1)
    with pytest.raises(ValueError, match="17-dim") as e:
        build_reward("aesthetic", {"model": str(path), "mlp": str(wrong)}, _ctx(tmp_path))
    _one_line(e)
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="not an aesthetic-predictor MLP"):
        build_reward("aesthetic", {"model": str(path), "mlp": str(bad)}, _ctx(tmp_path))
    pickled = tmp_path / "pickled.pth"  # weights_only=True refuses arbitrary objects
    torch.save({"layers.0.weight": types.SimpleNamespace(a=1)}, pickled)
    with pytest.raises(RewardUnavailable, match="cannot read") as e:
        build_reward("aesthetic", {"model": str(path), "mlp": str(pickled)}, _ctx(tmp_path))
    _one_line(e)


def test_missing_hub_model_offline_one_line(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError) as e:
        build_reward("pickscore", {"cache_dir": str(tmp_path / "hf")}, _ctx(tmp_path))
    msg = _one_line(e)
    assert isinstance(e.value, RewardUnavailable)
    assert "'yuvalkirstain/PickScore_v1'" in msg and "download" in msg and "local" in msg


def test_missing_local_path_one_line(tmp_path):
    with pytest.raises(RewardUnavailable, match="does not exist") as e:
        build_reward("clip_score", {"model": str(tmp_path / "nope")}, _ctx(tmp_path))
    assert "nope" in _one_line(e)


# ---------------------------------------------------------------------------------------------- JPEG


def _pil_kb(image, quality):
    from PIL import Image

    arr = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    pil = Image.fromarray(arr[0].numpy()) if arr.shape[0] == 1 else Image.fromarray(arr.permute(1, 2, 0).numpy())
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality)
    return len(buf.getvalue()) / 1000


@pytest.mark.parametrize("c", [3, 1])
def test_jpeg_flat_beats_noise_and_matches_pil(c, tmp_path):
    g = torch.Generator().manual_seed(0)
    flat = torch.full((1, c, 64, 64), 0.4)
    noise = torch.rand(1, c, 64, 64, generator=g)
    images = torch.cat([flat, noise])
    comp = build_reward("jpeg_compressibility", {}, _ctx(tmp_path))
    incomp = build_reward("jpeg_incompressibility", {"quality": 80}, _ctx(tmp_path))
    s = comp(images, ["x", "y"], [{}, {}])
    assert s.shape == (2,) and s.dtype == torch.float32
    assert s[0] > s[1] and (s < 0).all()
    assert s.tolist() == pytest.approx([-_pil_kb(im, 95) for im in images], abs=1e-6)
    s80 = incomp(images, ["x", "y"], [{}, {}])
    assert s80.tolist() == pytest.approx([_pil_kb(im, 80) for im in images], abs=1e-6)
    assert s80[1] < -s[1]  # lower quality, smaller file


def test_jpeg_quality_checked(tmp_path):
    for q in (0, 101, 9.5):
        with pytest.raises(ValueError, match="quality"):
            build_reward("jpeg_compressibility", {"quality": q}, _ctx(tmp_path))


# ---------------------------------------------------------------------------------------------- optional


@pytest.mark.parametrize(("engine", "module", "install"), [("paddleocr", "paddleocr", "paddleocr paddlepaddle"),
                                                          ("rapidocr", "rapidocr_onnxruntime", "rapidocr-onnxruntime")])
def test_ocr_engine_missing_one_line(tmp_path, monkeypatch, engine, module, install):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(RewardUnavailable) as e:
        build_reward("ocr", {"engine": engine}, _ctx(tmp_path))
    msg = _one_line(e)
    assert f"pip install {install}" in msg and "ocr" in msg


def test_ocr_rule_and_stand_in_engine(tmp_path):
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == 3 and levenshtein("abc", "abc") == 0
    assert ocr_text_reward("Hello World", "hello world") == 1.0
    assert ocr_text_reward("xx hello world yy", "Hello world") == 1.0
    assert ocr_text_reward("helo", "hello") == pytest.approx(0.8)
    assert ocr_text_reward("zzzzzzzzzzzz", "hi") == 0.0
    assert quoted_text('a sign that says "Open Late" in neon') == "Open Late"
    with pytest.raises(ValueError, match="quoted"):
        quoted_text("no quotes here")

    seen = []

    def engine(rgb):  # bright images "read" as HELO, dark ones as nothing; one low-confidence box
        seen.append((rgb.shape, rgb.dtype.name))
        return [("HEL", 0.9), ("O", 0.8), ("junk", 0.0)] if rgb.mean() > 127 else []

    images = torch.cat([torch.ones(1, 1, 16, 16), torch.zeros(1, 1, 16, 16), torch.ones(1, 1, 16, 16)])
    prompts = ['a sign saying "hello"', 'a sign saying "hello"', "whatever"]
    r = build_reward("ocr", {"engine": engine, "target": "metadata:text"}, _ctx(tmp_path))
    s = r(images, prompts, [{"text": "helo"}, {"text": "helo"}, {"text": "hel"}])
    assert s.tolist() == pytest.approx([1.0, 0.0, 1.0])
    assert seen[0] == ((16, 16, 3), "uint8")
    r = build_reward("ocr", {"engine": engine}, _ctx(tmp_path))
    assert r(images[:2], prompts[:2], [{}, {}]).tolist() == pytest.approx([0.8, 0.0])
    with pytest.raises(ValueError, match="target"):
        build_reward("ocr", {"engine": engine, "target": "metadata:"}, _ctx(tmp_path))


# ---------------------------------------------------------------------------------------------- real OCR


def _render(texts, size=(256, 64)):
    """Black text on white in Pillow's built-in scalable font (no system font needed): (B, 3, H, W) in [0, 1]."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=28)
    out = []
    for t in texts:
        img = Image.new("RGB", size, "white")
        ImageDraw.Draw(img).text((12, 14), t, fill="black", font=font)
        out.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255)
    return torch.stack(out)


def test_ocr_reads_rendered_text_with_the_real_engine_offline(tmp_path):
    """The default engine (RapidOCR's PP-OCRv4 models, shipped in its wheel) reads PIL renders: the prompt's
    own text scores >= 0.9, another prompt's text clearly lower, a blank image 0."""
    reward = build_reward("ocr", {}, _ctx(tmp_path))
    texts = ["hello world", "Open Late", "coffee", "grpo guard 42"]
    images = torch.cat([_render(texts), torch.ones(1, 3, 64, 256)])
    right = reward(images, [f'a sign that says "{t}"' for t in texts] + ['a sign that says "empty"'],
                   [{} for _ in range(5)])
    assert (right[:4] >= 0.9).all(), right.tolist()
    assert right[4] == 0.0
    wrong = reward(images[:4], [f'a sign that says "{t}"' for t in ["sunny bakery", "river", "zebra crossing", "moon"]],
                   [{} for _ in range(4)])
    assert (wrong <= right[:4] - 0.4).all(), (right.tolist(), wrong.tolist())
